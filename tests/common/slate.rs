//! [`FakeSlate`]: an in-process Slate API, and the create calls and runs it records.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::{header_str, rfc3339_now, SLATE_PREFIX, SLATE_TOKEN};

#[derive(Clone, Debug)]
pub struct CreateCall {
    pub at: Instant,
    pub workflow_id: String,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    pub authorized: bool,
    pub inputs: Option<Value>,
    pub status: u16,
    pub run_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct FakeRun {
    pub id: String,
    pub workflow_id: String,
    pub key: Option<String>,
    pub inputs: Value,
    pub polls: u32,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub last_status: &'static str,
    pub canceled: bool,
}

impl FakeRun {
    pub fn share_url(&self) -> String {
        format!("https://app.slatehq.ai/share/{}", self.id)
    }
}

#[derive(Default)]
struct SlateState {
    runs: HashMap<String, FakeRun>,
    idem: HashMap<(String, String), String>,
    key_workflow: HashMap<String, String>,
    creates: Vec<CreateCall>,
    gets: usize,
    cancels: Vec<String>,
    unexpected: Vec<String>,
    create_delay: HashMap<String, Duration>,
    holds_released: bool,
    calls_429: u32,
    next_id: u64,
}

struct SlateInner {
    state: Mutex<SlateState>,
}

/// In-process Slate API (see shared/seeds/000_*, 001_*). Behaviour by
/// workflow id:
/// * `wf_ok*`: QUEUED, STARTING, RUNNING, then COMPLETED with
///   `{"share_url": ...}` from the 4th poll on.
/// * `wf_fail`: QUEUED, RUNNING, then FAILED with WORKFLOW_FAILED.
/// * `wf_cancel`: QUEUED, then CANCELED.
/// * `wf_slow`: QUEUED, then RUNNING forever.
/// * `wf_hold*`: QUEUED, then RUNNING until [`FakeSlate::release_holds`], then COMPLETED.
/// * `wf_ten`: QUEUED, RUNNING, then COMPLETED at exactly the 10th poll (a
///   run whose durable writes per poll are counted).
/// * `wf_bad`: create answers 400 `{"error":"inputs must be an object"}`.
/// * `wf_429`: 1st create 429 + `Retry-After: 1`, 2nd 503, then like `wf_ok`.
/// * anything else: create answers 404.
#[derive(Clone)]
pub struct FakeSlate {
    inner: Arc<SlateInner>,
    pub addr: SocketAddr,
}

fn terminal(status: &str) -> bool {
    matches!(status, "COMPLETED" | "FAILED" | "CANCELED")
}

fn known_workflow(wf: &str) -> bool {
    wf.starts_with("wf_ok")
        || wf.starts_with("wf_hold")
        || matches!(
            wf,
            "wf_fail" | "wf_cancel" | "wf_slow" | "wf_bad" | "wf_429" | "wf_ten"
        )
}

/// Vendor status of a run of `wf` at its `polls`-th poll (0 = not yet polled).
fn status_at(wf: &str, polls: u32, released: bool) -> &'static str {
    if polls <= 1 {
        return "QUEUED";
    }
    if wf == "wf_ten" {
        return if polls >= 10 { "COMPLETED" } else { "RUNNING" };
    }
    if wf.starts_with("wf_ok") || wf == "wf_429" {
        match polls {
            2 => "STARTING",
            3 => "RUNNING",
            _ => "COMPLETED",
        }
    } else if wf.starts_with("wf_hold") {
        if released {
            "COMPLETED"
        } else {
            "RUNNING"
        }
    } else {
        match (wf, polls) {
            ("wf_fail", 2) => "RUNNING",
            ("wf_fail", _) => "FAILED",
            ("wf_cancel", _) => "CANCELED",
            _ => "RUNNING",
        }
    }
}

fn slate_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

fn run_json(run: &FakeRun) -> Value {
    let status = run.last_status;
    let started = status != "QUEUED";
    json!({
        "run_id": run.id,
        "workflow_id": run.workflow_id,
        "status": status,
        "workspace_id": if started { json!(4521) } else { Value::Null },
        "workflow_execution_id": if started { json!(format!("exec_{}", run.id)) } else { Value::Null },
        "output": if status == "COMPLETED" { json!({ "share_url": run.share_url() }) } else { Value::Null },
        "error": if status == "FAILED" {
            json!({ "code": "WORKFLOW_FAILED", "message": "workflow failed" })
        } else {
            Value::Null
        },
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "completed_at": run.completed_at,
        "metadata": Value::Null,
    })
}

#[allow(clippy::result_large_err)]
async fn slate_create(
    State(s): State<Arc<SlateInner>>,
    UrlPath(wf): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let denied = slate_auth(&headers);
    let authorized = denied.is_none();
    let key = header_str(&headers, "idempotency-key");
    let content_type = header_str(&headers, "content-type");
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let inputs = parsed.as_ref().and_then(|v| v.get("inputs")).cloned();
    let (resp, delay) = {
        let mut st = s.state.lock().unwrap();
        let delay = st.create_delay.get(&wf).copied();
        let mut call = CreateCall {
            at: Instant::now(),
            workflow_id: wf.clone(),
            idempotency_key: key.clone(),
            content_type,
            authorized,
            inputs: inputs.clone(),
            status: 0,
            run_id: None,
        };
        let resp: Result<(StatusCode, FakeRun), Response> = (|| {
            if let Some(denied) = denied {
                return Err(denied);
            }
            if wf == "wf_bad" || !inputs.as_ref().is_some_and(Value::is_object) {
                return Err((
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "error": "inputs must be an object" })),
                )
                    .into_response());
            }
            if !known_workflow(&wf) {
                return Err(slate_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "workflow not found",
                ));
            }
            if wf == "wf_429" {
                st.calls_429 += 1;
                match st.calls_429 {
                    1 => {
                        let mut r = slate_error(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limited",
                            "concurrent run limit exceeded",
                        );
                        r.headers_mut()
                            .insert("retry-after", HeaderValue::from_static("1"));
                        return Err(r);
                    }
                    2 => {
                        return Err(slate_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "try again later",
                        ))
                    }
                    _ => {}
                }
            }
            if let Some(k) = &key {
                if let Some(other) = st.key_workflow.get(k) {
                    if other != &wf {
                        return Err(slate_error(
                            StatusCode::CONFLICT,
                            "idempotency_conflict",
                            "Idempotency-Key reused with a different workflowId",
                        ));
                    }
                }
                if let Some(id) = st.idem.get(&(wf.clone(), k.clone())) {
                    return Ok((StatusCode::ACCEPTED, st.runs[id].clone()));
                }
            }
            st.next_id += 1;
            let id = format!("8c5e0f8a-2b35-4c1f-9b6a-{:012x}", st.next_id);
            let now = rfc3339_now();
            let run = FakeRun {
                id: id.clone(),
                workflow_id: wf.clone(),
                key: key.clone(),
                inputs: inputs.clone().unwrap_or(Value::Null),
                polls: 0,
                created_at: now.clone(),
                updated_at: now,
                completed_at: None,
                last_status: "QUEUED",
                canceled: false,
            };
            st.runs.insert(id.clone(), run.clone());
            if let Some(k) = &key {
                st.idem.insert((wf.clone(), k.clone()), id.clone());
                st.key_workflow.insert(k.clone(), wf.clone());
            }
            Ok((StatusCode::ACCEPTED, run))
        })();
        let resp = match resp {
            Ok((code, run)) => {
                call.run_id = Some(run.id.clone());
                (
                    code,
                    Json(json!({
                        "run_id": run.id,
                        "status": run.last_status,
                        "workspace_id": Value::Null,
                        "workflow_execution_id": Value::Null,
                        "status_url": format!("{SLATE_PREFIX}/workflow-runs/{}", run.id),
                    })),
                )
                    .into_response()
            }
            Err(r) => r,
        };
        call.status = resp.status().as_u16();
        st.creates.push(call);
        (resp, delay)
    };
    // The run (if any) is created before the delay: a daemon killed while
    // waiting here has a vendor run it never heard about.
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    resp
}

/// Slate's bearer-token check: the 401 answer, or `None` when authorized.
fn slate_auth(headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {SLATE_TOKEN}");
    (header_str(headers, "authorization").as_deref() != Some(expected.as_str())).then(|| {
        slate_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or invalid Bearer token",
        )
    })
}

async fn slate_get(
    State(s): State<Arc<SlateInner>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = slate_auth(&headers) {
        return denied;
    }
    let mut st = s.state.lock().unwrap();
    st.gets += 1;
    let released = st.holds_released;
    let Some(run) = st.runs.get_mut(&id) else {
        return slate_error(StatusCode::NOT_FOUND, "not_found", "run not found");
    };
    if !terminal(run.last_status) {
        run.polls += 1;
        let next = if run.canceled {
            "CANCELED"
        } else {
            status_at(&run.workflow_id, run.polls, released)
        };
        if next != run.last_status {
            run.last_status = next;
            run.updated_at = rfc3339_now();
            if terminal(next) {
                run.completed_at = Some(run.updated_at.clone());
            }
        }
    }
    Json(run_json(run)).into_response()
}

async fn slate_cancel(
    State(s): State<Arc<SlateInner>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = slate_auth(&headers) {
        return denied;
    }
    let mut st = s.state.lock().unwrap();
    st.cancels.push(id.clone());
    let Some(run) = st.runs.get_mut(&id) else {
        return slate_error(StatusCode::NOT_FOUND, "not_found", "run not found");
    };
    if run.last_status != "QUEUED" {
        return slate_error(
            StatusCode::CONFLICT,
            "conflict",
            "run can only be canceled while QUEUED",
        );
    }
    run.canceled = true;
    run.last_status = "CANCELED";
    run.updated_at = rfc3339_now();
    run.completed_at = Some(run.updated_at.clone());
    Json(json!({ "run_id": run.id, "status": "CANCELED", "completed_at": run.completed_at }))
        .into_response()
}

async fn slate_fallback(
    State(s): State<Arc<SlateInner>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    s.state
        .lock()
        .unwrap()
        .unexpected
        .push(format!("{method} {uri}"));
    slate_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

impl FakeSlate {
    pub async fn start() -> FakeSlate {
        let inner = Arc::new(SlateInner {
            state: Mutex::new(SlateState::default()),
        });
        let app = Router::new()
            .route(
                &format!("{SLATE_PREFIX}/workflows/{{workflow_id}}/runs"),
                post(slate_create),
            )
            .route(
                &format!("{SLATE_PREFIX}/workflow-runs/{{run_id}}"),
                get(slate_get),
            )
            .route(
                &format!("{SLATE_PREFIX}/workflow-runs/{{run_id}}/cancel"),
                post(slate_cancel),
            )
            .fallback(slate_fallback)
            .with_state(inner.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake slate");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSlate { inner, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}{SLATE_PREFIX}", self.addr)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, SlateState> {
        self.inner.state.lock().unwrap()
    }

    /// Delay before answering creates of `workflow_id` (the run is created first).
    pub fn set_create_delay(&self, workflow_id: &str, d: Duration) {
        self.st().create_delay.insert(workflow_id.into(), d);
    }

    pub fn clear_create_delay(&self, workflow_id: &str) {
        self.st().create_delay.remove(workflow_id);
    }

    /// Lets every `wf_hold*` run complete at its next poll.
    pub fn release_holds(&self) {
        self.st().holds_released = true;
    }

    pub fn create_calls(&self) -> Vec<CreateCall> {
        self.st().creates.clone()
    }

    pub fn create_count(&self) -> usize {
        self.st().creates.len()
    }

    /// Number of distinct vendor runs created.
    pub fn distinct_runs(&self) -> usize {
        self.st().runs.len()
    }

    pub fn runs(&self) -> Vec<FakeRun> {
        self.st().runs.values().cloned().collect()
    }

    pub fn run(&self, vendor_id: &str) -> Option<FakeRun> {
        self.st().runs.get(vendor_id).cloned()
    }

    /// Create calls per Idempotency-Key (calls without a key are under "").
    pub fn calls_per_key(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for c in self.st().creates.iter() {
            *m.entry(c.idempotency_key.clone().unwrap_or_default())
                .or_insert(0) += 1;
        }
        m
    }

    /// Distinct vendor runs per Idempotency-Key.
    pub fn runs_per_key(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.st().runs.values() {
            *m.entry(r.key.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    }

    pub fn poll_count(&self) -> usize {
        self.st().gets
    }

    pub fn cancel_calls(&self) -> Vec<String> {
        self.st().cancels.clone()
    }

    pub fn unexpected_requests(&self) -> Vec<String> {
        self.st().unexpected.clone()
    }
}
