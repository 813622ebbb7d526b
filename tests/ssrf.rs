//! Safe delivery: callbacks to loopback, private and metadata addresses,
//! by name (through the test resolver) and by literal, are refused, recorded
//! with the reason and not retried; `delivery.allow_destinations` admits
//! them; a receiver's answer is read only up to `delivery.max_response_bytes`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST_DNS: &str = "evil-loop.test=127.0.0.1,evil-private.test=10.0.0.1,\
                        evil-meta.test=169.254.169.254,ok.test=127.0.0.1";

async fn start(cfg: &Config) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = cfg.render(dir.path());
    Daemon::start_with_env(dir, &text, &[("RUNBRIDGE_TEST_DNS", TEST_DNS)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_destinations_by_name_and_literal_are_recorded_and_not_retried() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let port = rx
        .url()
        .trim_start_matches("http://127.0.0.1:")
        .replace("/cb", "");
    let urls = [
        (format!("http://evil-loop.test:{port}/cb"), "loopback"),
        (format!("http://evil-private.test:{port}/cb"), "private"),
        ("http://evil-meta.test/latest".to_string(), "metadata"),
        (format!("http://2130706433:{port}/cb"), "loopback"),
        (format!("http://0177.0.0.1:{port}/cb"), "loopback"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/cb"),
            "IPv4-mapped",
        ),
        ("http://169.254.169.254/latest".to_string(), "metadata"),
        ("http://[fd00:ec2::254]/latest".to_string(), "metadata"),
    ];
    let mut route = RouteCfg::new("gh", "wf_ok");
    for (u, _) in &urls {
        route = route.callback(u);
    }
    let mut cfg = Config::new(&slate).route(route);
    cfg.allow_destinations = Vec::new();
    let d = start(&cfg).await;
    let id = d.trigger("gh", "ssrf-1", "acme/ssrf").await;
    let run = d.wait_done(&id).await;
    let deliveries = run["deliveries"].as_array().cloned().unwrap_or_default();
    assert_eq!(deliveries.len(), urls.len(), "{run}");
    // Deliveries keep the order of the callbacks (the config loader
    // normalises literal hosts: `2130706433` is stored as `127.0.0.1`).
    for ((u, why), dl) in urls.iter().zip(&deliveries) {
        assert_eq!(dl["state"], "refused", "{u}: {dl}");
        let attempts = dl["attempts"].as_array().cloned().unwrap_or_default();
        assert_eq!(attempts.len(), 1, "refused once, never retried: {dl}");
        let err = attempts[0]["error"].as_str().unwrap_or_default();
        assert!(
            err.starts_with("refused: ") && err.contains(why),
            "{u}: {err}"
        );
        assert!(dl["next_attempt_at"].is_null(), "{dl}");
    }
    // Nothing reached the receiver, and nothing is retried later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.records().is_empty(), "{:?}", rx.records().len());
    let again = d.get_run(&id).await;
    for dl in again["deliveries"].as_array().cloned().unwrap_or_default() {
        assert_eq!(dl["attempts"].as_array().map(|a| a.len()), Some(1), "{dl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_destinations_admits_a_name_and_a_literal_but_nothing_else() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let port = rx
        .url()
        .trim_start_matches("http://127.0.0.1:")
        .replace("/cb", "");
    let by_name = format!("http://ok.test:{port}/cb");
    let private = format!("http://evil-private.test:{port}/cb");
    let mut cfg = Config::new(&slate).route(
        RouteCfg::new("gh", "wf_ok")
            .callback(&by_name)
            .callback(&rx.url())
            .callback(&private),
    );
    cfg.allow_destinations = vec!["127.0.0.1/32".into()];
    let d = start(&cfg).await;
    let id = d.trigger("gh", "ssrf-2", "acme/ssrf").await;
    rx.wait_delivered(&id).await;
    let run = d.wait_done(&id).await;
    let state = |u: &str| -> Value {
        run["deliveries"]
            .as_array()
            .and_then(|ds| ds.iter().find(|x| x["url"] == u))
            .map(|x| x["state"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(state(&by_name), "delivered", "{run}");
    assert_eq!(state(&rx.url()), "delivered", "{run}");
    assert_eq!(state(&private), "refused", "{run}");
}

/// A receiver that answers 200 with a 200 MB body, streamed from one 64 KiB
/// buffer (never allocated whole); returns its URL and the bytes it wrote.
async fn endless_receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let w = written.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                // Read the request head and (small) body.
                let mut buf = vec![0u8; 65_536];
                let mut got = Vec::new();
                loop {
                    let n = match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    got.extend_from_slice(&buf[..n]);
                    if let Some(head_end) = got.windows(4).position(|x| x == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                const TOTAL: u64 = 200 * 1024 * 1024;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {TOTAL}\r\n\r\n");
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 65_536];
                let mut sent = 0u64;
                while sent < TOTAL {
                    if sock.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len() as u64;
                    w.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (format!("http://127.0.0.1:{port}/cb"), written)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_200_mb_answer_is_read_only_up_to_the_bound() {
    let slate = FakeSlate::start().await;
    let (url, written) = endless_receiver().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&url));
    let d = start(&cfg).await;
    let id = d.trigger("gh", "big-1", "acme/big").await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["deliveries"][0]["state"], "delivered", "{run}");
    let text = d
        .http
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let read = metric(
        &text,
        "runbridge_response_bytes_read_total{from=\"receiver\"}",
    );
    // The default bound is 64 KiB; one chunk past it may have been read.
    assert!(
        read >= 1.0 && read <= (64 * 1024 + 64 * 1024) as f64,
        "bytes read {read}\n{text}"
    );
    let sent = written.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 100 * 1024 * 1024,
        "the daemon stopped reading long before 200 MB (the server wrote {sent} bytes before the connection closed)"
    );
    let peak = peak_rss_kib(d.pid());
    assert!(peak > 0 && peak < 150 * 1024, "peak RSS {peak} KiB");
}
