//! Bounded reads of answers from outside: a receiver or a vendor may answer
//! with an endless body, so answers are read chunk by chunk up to a bound
//! and the rest is never read (the connection is dropped).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of receivers' answers read since start (also the metric
/// `runbridge_response_bytes_read_total{from="receiver"}`): shows that a
/// huge answer is cut at `delivery.max_response_bytes`.
pub static RECEIVER_BYTES_READ: AtomicU64 = AtomicU64::new(0);

/// Bytes of vendors' answers read since start (metric label
/// `from="vendor"`), cut at each provider's `max_response_bytes`.
pub static VENDOR_BYTES_READ: AtomicU64 = AtomicU64::new(0);

/// Reads at most `max` bytes of `resp`'s body, counting what was read in
/// `counter`; `true` when the body went on past the bound. A body broken
/// midway is an error, as it was when read whole.
pub async fn bounded(
    mut resp: reqwest::Response,
    max: u64,
    counter: &AtomicU64,
    from: &'static str,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let cap = usize::try_from(max).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    loop {
        let Some(chunk) = resp.chunk().await? else {
            return Ok((out, false));
        };
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        metrics::counter!("runbridge_response_bytes_read_total", "from" => from)
            .increment(chunk.len() as u64);
        let room = cap.saturating_sub(out.len());
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every connection with `total` bytes of body,
    /// written from one small buffer.
    async fn streaming(total: u64) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = [b'y'; 16 * 1024];
                    let mut sent = 0;
                    while sent < total {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                        sent += chunk.len() as u64;
                    }
                });
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn a_long_answer_is_cut_at_the_bound_and_the_rest_never_read() {
        let url = streaming(50 * 1024 * 1024).await;
        let resp = reqwest::get(&url).await.unwrap();
        let counter = AtomicU64::new(0);
        let (body, cut) = bounded(resp, 1024 * 1024, &counter, "vendor")
            .await
            .unwrap();
        assert!(cut);
        assert_eq!(body.len(), 1024 * 1024);
        let read = counter.load(Ordering::Relaxed);
        assert!(
            (1024 * 1024..2 * 1024 * 1024).contains(&read),
            "read {read} bytes"
        );

        let url = streaming(32 * 1024).await;
        let resp = reqwest::get(&url).await.unwrap();
        let (body, cut) = bounded(resp, 1024 * 1024, &counter, "vendor")
            .await
            .unwrap();
        assert!(!cut);
        assert_eq!(body.len(), 32 * 1024);
    }
}
