//! Request bodies at the edge: a global budget of buffered body bytes (a
//! semaphore on bytes, so unauthenticated senders cannot exhaust memory),
//! and lingering close (an early answer reaches a sender that writes its
//! whole body before reading).

use crate::health::Health;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bound on request body bytes buffered at once across all requests
/// (`server.body_buffer_limit`), reflected in the edge gauges.
#[derive(Clone)]
pub struct BodyBudget {
    sem: Arc<Semaphore>,
    health: Arc<Health>,
}

/// Body bytes one request holds from the budget; released on drop, which
/// happens when the request is done.
pub struct Held {
    budget: BodyBudget,
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl BodyBudget {
    /// A budget of `limit` bytes (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(limit: usize, health: Arc<Health>) -> Self {
        BodyBudget {
            sem: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
            health,
        }
    }

    /// An empty holding to grow as bytes are buffered.
    pub fn hold(&self) -> Held {
        Held {
            budget: self.clone(),
            permit: None,
            bytes: 0,
        }
    }
}

impl Held {
    /// Waits (first come, first served) until `n` more bytes fit the budget.
    pub async fn grow(&mut self, n: usize) {
        let mut left = n;
        while left > 0 {
            let chunk = u32::try_from(left).unwrap_or(u32::MAX);
            let Ok(p) = self.budget.sem.clone().acquire_many_owned(chunk).await else {
                // The semaphore is never closed; nothing to account if it were.
                return;
            };
            match &mut self.permit {
                Some(held) => held.merge(p),
                None => self.permit = Some(p),
            }
            self.bytes += u64::from(chunk);
            self.budget.health.edge.body_add(u64::from(chunk));
            left -= chunk as usize;
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.health.edge.body_sub(self.bytes);
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Larger than the limit.
    TooLarge,
    /// The connection failed while reading.
    Io(String),
}

/// Reads a whole body of at most `limit` bytes, holding budget for each
/// byte before it is buffered (the declared length up front).
pub async fn read_limited<B>(
    mut body: B,
    limit: usize,
    declared: Option<usize>,
    held: &mut Held,
) -> Result<Bytes, ReadError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if let Some(n) = declared {
        if n > limit {
            return Err(ReadError::TooLarge);
        }
        held.grow(n).await;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Io(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = buf.len().saturating_add(data.len());
        if total > limit {
            return Err(ReadError::TooLarge);
        }
        let need = (total as u64).saturating_sub(held.bytes());
        if need > 0 {
            held.grow(usize::try_from(need).unwrap_or(usize::MAX)).await;
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// How much of an unread body is read and discarded after an early answer.
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    /// Discard at most this many bytes (`server.linger_bytes`)...
    pub bytes: u64,
    /// ...for at most this long (`server.linger_timeout`).
    pub timeout: Duration,
}

/// A request body that, when dropped before its end (the handler answered
/// without reading it all: 404, 405, 401, 413, 408...), hands the rest to a
/// task that reads and discards it up to [`Linger`], like nginx's lingering
/// close. Without that, the server closes while the sender is still writing,
/// the sender's kernel gets a reset, and a client that writes its whole
/// body before reading sees a broken pipe instead of the answer.
pub struct LingerBody {
    inner: Option<hyper::body::Incoming>,
    linger: Linger,
    ended: bool,
}

impl LingerBody {
    /// Wraps hyper's request body.
    pub fn new(inner: hyper::body::Incoming, linger: Linger) -> Self {
        LingerBody {
            inner: Some(inner),
            linger,
            ended: false,
        }
    }
}

impl HttpBody for LingerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.ended = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

impl Drop for LingerBody {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body, self.linger));
        }
    }
}

/// Reads and discards a body until its end, `linger.bytes` or `linger.timeout`.
async fn drain(mut body: hyper::body::Incoming, linger: Linger) {
    let deadline = tokio::time::Instant::now() + linger.timeout;
    let mut seen: u64 = 0;
    while seen <= linger.bytes {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    seen = seen.saturating_add(d.len() as u64);
                }
            }
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn budget_holds_and_releases_with_the_gauge() {
        let health = Arc::new(Health::default());
        let budget = BodyBudget::new(100, health.clone());
        let mut a = budget.hold();
        let body = read_limited(Full::new(Bytes::from(vec![1u8; 60])), 80, None, &mut a)
            .await
            .unwrap();
        assert_eq!(body.len(), 60);
        assert_eq!(health.edge.body_bytes.load(Ordering::Relaxed), 60);
        let mut b = budget.hold();
        let more = tokio::time::timeout(Duration::from_millis(50), b.grow(50)).await;
        assert!(more.is_err(), "60 + 50 exceeds the 100-byte budget");
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), b.grow(50))
            .await
            .unwrap();
        drop(b);
        assert_eq!(health.edge.body_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(health.edge.body_bytes_peak.load(Ordering::Relaxed), 60);
    }

    #[tokio::test]
    async fn over_the_limit_is_refused() {
        let budget = BodyBudget::new(1000, Arc::new(Health::default()));
        let mut h = budget.hold();
        let r = read_limited(Full::new(Bytes::from(vec![1u8; 11])), 10, None, &mut h).await;
        assert!(matches!(r, Err(ReadError::TooLarge)));
        let r = read_limited(Full::new(Bytes::new()), 10, Some(11), &mut h).await;
        assert!(matches!(r, Err(ReadError::TooLarge)));
    }
}
