//! [`Receiver`]: a callback endpoint that verifies Standard Webhooks signatures, what it records, and the callback envelope check.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{header_str, is_rfc3339, poll_until, unix_now, verify_standard_webhooks, DEADLINE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers 200 to correctly signed callbacks.
    Healthy,
    /// Answers 500.
    Failing,
    /// Listener closed: connections are refused.
    Down,
}

#[derive(Clone, Debug)]
pub struct CallbackRecord {
    pub at: Instant,
    pub path: String,
    pub webhook_id: String,
    pub webhook_timestamp: String,
    pub signature: String,
    pub signature_valid: bool,
    pub timestamp_fresh: bool,
    pub content_type: Option<String>,
    pub raw: String,
    pub body: Value,
    pub responded: u16,
    /// Every header as received (names lower case).
    pub headers: Vec<(String, String)>,
}

impl CallbackRecord {
    pub fn run_id(&self) -> Option<&str> {
        self.body["data"]["run_id"].as_str()
    }
    pub fn event_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.responded)
    }
}

struct RxState {
    mode: Mode,
    script: VecDeque<(u16, Option<String>)>,
    records: Vec<CallbackRecord>,
}

struct RxInner {
    secret: String,
    state: Mutex<RxState>,
    changed: watch::Sender<u64>,
    /// Requests being answered now, and the most ever at once.
    in_flight: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    /// How long each answer takes (milliseconds), so concurrency shows.
    delay_ms: std::sync::atomic::AtomicU64,
}

pub struct Receiver {
    inner: Arc<RxInner>,
    pub port: u16,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

async fn receiver_handler(
    State(inner): State<Arc<RxInner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use std::sync::atomic::Ordering::SeqCst;
    let now = inner.in_flight.fetch_add(1, SeqCst) + 1;
    inner.peak.fetch_max(now, SeqCst);
    let delay = inner.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    inner.in_flight.fetch_sub(1, SeqCst);
    let id = header_str(&headers, "webhook-id").unwrap_or_default();
    let ts = header_str(&headers, "webhook-timestamp").unwrap_or_default();
    let sig = header_str(&headers, "webhook-signature").unwrap_or_default();
    let signature_valid =
        !id.is_empty() && verify_standard_webhooks(&inner.secret, &id, &ts, &body, &sig);
    let timestamp_fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (unix_now() - t).abs() <= 300);
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (code, retry_after) = {
        let mut st = inner.state.lock().unwrap();
        let (code, retry_after) = if !signature_valid || !timestamp_fresh {
            (401, None)
        } else if let Some(scripted) = st.script.pop_front() {
            scripted
        } else if st.mode == Mode::Failing {
            (500, None)
        } else {
            (200, None)
        };
        st.records.push(CallbackRecord {
            at: Instant::now(),
            path: uri.path().to_string(),
            webhook_id: id,
            webhook_timestamp: ts,
            signature: sig,
            signature_valid,
            timestamp_fresh,
            content_type: header_str(&headers, "content-type"),
            raw: String::from_utf8_lossy(&body).to_string(),
            body: json_body,
            responded: code,
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
        });
        (code, retry_after)
    };
    inner.changed.send_modify(|n| *n += 1);
    let mut resp = (
        StatusCode::from_u16(code).unwrap(),
        Json(json!({ "received": code < 300 })),
    )
        .into_response();
    if let Some(ra) = retry_after {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_str(&ra).unwrap());
    }
    resp
}

fn serve_receiver(
    listener: TcpListener,
    inner: Arc<RxInner>,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let app = Router::new().fallback(receiver_handler).with_state(inner);
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    (tx, handle)
}

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        let inner = Arc::new(RxInner {
            secret: secret.into(),
            state: Mutex::new(RxState {
                mode: Mode::Healthy,
                script: VecDeque::new(),
                records: Vec::new(),
            }),
            changed: watch::channel(0).0,
            in_flight: Default::default(),
            peak: Default::default(),
            delay_ms: Default::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let port = listener.local_addr().unwrap().port();
        let server = Some(serve_receiver(listener, inner.clone()));
        Receiver {
            inner,
            port,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/cb", self.port)
    }

    pub fn mode(&self) -> Mode {
        self.inner.state.lock().unwrap().mode
    }

    /// Switches mode; `Down` closes the listener and every connection,
    /// leaving `Down` binds the same port again.
    pub async fn set_mode(&mut self, mode: Mode) {
        let was = self.mode();
        self.inner.state.lock().unwrap().mode = mode;
        if mode == Mode::Down && was != Mode::Down {
            if let Some((tx, handle)) = self.server.take() {
                let _ = tx.send(());
                let abort = handle.abort_handle();
                if tokio::time::timeout(Duration::from_secs(10), handle)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            }
        } else if mode != Mode::Down && was == Mode::Down {
            let port = self.port;
            let listener = poll_until(
                &format!("re-binding receiver port {port}"),
                DEADLINE,
                || async move {
                    TcpListener::bind(("127.0.0.1", port))
                        .await
                        .map_err(|e| e.to_string())
                },
            )
            .await;
            self.server = Some(serve_receiver(listener, self.inner.clone()));
        }
    }

    /// Answers the next callbacks with these (status, Retry-After) pairs,
    /// before falling back to the mode.
    pub fn script(&self, responses: &[(u16, Option<&str>)]) {
        let mut st = self.inner.state.lock().unwrap();
        for (code, ra) in responses {
            st.script.push_back((*code, ra.map(str::to_string)));
        }
    }

    /// Makes every answer take `d` (so concurrent requests overlap).
    pub fn set_delay(&self, d: Duration) {
        self.inner
            .delay_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// The most requests the receiver was answering at once.
    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn records(&self) -> Vec<CallbackRecord> {
        self.inner.state.lock().unwrap().records.clone()
    }

    /// Every request received for `run_id` (any response).
    pub fn for_run(&self, run_id: &str) -> Vec<CallbackRecord> {
        self.records()
            .into_iter()
            .filter(|r| r.run_id() == Some(run_id))
            .collect()
    }

    /// Requests whose signature or timestamp did not verify.
    pub fn invalid(&self) -> Vec<CallbackRecord> {
        self.records()
            .into_iter()
            .filter(|r| !r.signature_valid || !r.timestamp_fresh)
            .collect()
    }

    fn summary(&self) -> String {
        self.records()
            .iter()
            .map(|r| {
                format!(
                    "[{} id={} run={:?} type={} -> {}{}]",
                    r.path,
                    r.webhook_id,
                    r.run_id(),
                    r.event_type(),
                    r.responded,
                    if r.signature_valid {
                        ""
                    } else {
                        " BAD SIGNATURE"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Waits (up to [`DEADLINE`]) until `f` finds what it looks for among the records.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&[CallbackRecord]) -> Option<T>,
    ) -> T {
        let mut sub = self.inner.changed.subscribe();
        let end = Instant::now() + DEADLINE;
        loop {
            {
                let st = self.inner.state.lock().unwrap();
                if let Some(v) = f(&st.records) {
                    return v;
                }
            }
            let rem = end.saturating_duration_since(Instant::now());
            if rem.is_zero() {
                panic!(
                    "timed out after {DEADLINE:?} waiting for {what}; callbacks received: {}",
                    self.summary()
                );
            }
            let _ = tokio::time::timeout(rem, sub.changed()).await;
        }
    }

    /// Waits for a callback of `run_id` that was answered 2xx.
    pub async fn wait_delivered(&self, run_id: &str) -> CallbackRecord {
        self.wait_until(&format!("a delivered callback for run {run_id}"), |recs| {
            recs.iter()
                .find(|r| r.ok() && r.run_id() == Some(run_id))
                .cloned()
        })
        .await
    }

    /// Waits until at least `n` requests for `run_id` were answered `code`.
    pub async fn wait_responses(&self, run_id: &str, code: u16, n: usize) -> Vec<CallbackRecord> {
        self.wait_until(
            &format!("{n} callbacks for run {run_id} answered {code}"),
            |recs| {
                let v: Vec<_> = recs
                    .iter()
                    .filter(|r| r.run_id() == Some(run_id) && r.responded == code)
                    .cloned()
                    .collect();
                (v.len() >= n).then_some(v)
            },
        )
        .await
    }
}

/// Checks the envelope and the fields every callback must carry.
pub fn assert_callback_envelope(
    cb: &CallbackRecord,
    run_id: &str,
    route: &str,
    workflow_id: &str,
    delivery: &str,
) {
    assert!(cb.signature_valid, "callback signature must verify: {cb:?}");
    assert!(
        cb.timestamp_fresh,
        "webhook-timestamp must be current unix seconds: {cb:?}"
    );
    assert!(
        cb.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "callback content type should be application/json: {cb:?}"
    );
    let data = cb.data();
    let status = data["status"].as_str().unwrap_or_default();
    assert_eq!(
        cb.event_type(),
        format!("run.{status}"),
        "type must match data.status: {}",
        cb.raw
    );
    assert!(
        is_rfc3339(&cb.body["timestamp"]),
        "timestamp must be RFC 3339: {}",
        cb.raw
    );
    assert_eq!(data["run_id"], json!(run_id), "{}", cb.raw);
    assert_eq!(data["route"], json!(route), "{}", cb.raw);
    assert_eq!(data["provider"], json!("slate"), "{}", cb.raw);
    assert_eq!(data["workflow_id"], json!(workflow_id), "{}", cb.raw);
    assert_eq!(data["delivery_id"], json!(delivery), "{}", cb.raw);
    assert!(
        is_rfc3339(&data["created_at"]),
        "data.created_at: {}",
        cb.raw
    );
    assert!(
        is_rfc3339(&data["finished_at"]),
        "data.finished_at: {}",
        cb.raw
    );
    for key in [
        "run_id",
        "route",
        "provider",
        "workflow_id",
        "vendor_run_id",
        "status",
        "raw_status",
        "output",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "delivery_id",
    ] {
        assert!(
            data.get(key).is_some(),
            "callback data lacks `{key}`: {}",
            cb.raw
        );
    }
}
