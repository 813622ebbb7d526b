//! A fake OnePin written from its docs (shared/providers.md section 2):
//! `{data, meta}` envelope, lowercase statuses (`paused` waits), errors as
//! `{"error":{"code","message","details"},"meta"}`, output per sink node at
//! `/outputs`, idempotent cancel, a runs listing, no idempotency key, and
//! a 409 when another run of the workflow is active (`wf_busy*`: the first
//! two creates).

use super::fake::{Core, FakeRun, Phase};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub const TOKEN: &str = "op_live_testtoken0123456789abcdefABCD";

/// The fake.
#[derive(Clone)]
pub struct FakeOnePin {
    pub core: Core,
    pub addr: std::net::SocketAddr,
}

fn meta() -> Value {
    json!({"request_id": "req_1", "timestamp": super::fake::rfc3339(std::time::SystemTime::now())})
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message, "details": []}, "meta": meta()})),
    )
        .into_response()
}

fn spell(p: Phase) -> &'static str {
    match p {
        Phase::Queued => "pending",
        Phase::Running => "running",
        Phase::Waiting => "paused",
        Phase::Succeeded => "completed",
        Phase::Failed => "failed",
        Phase::Canceled => "cancelled",
    }
}

fn run_out(r: &FakeRun) -> Value {
    json!({
        "id": r.id, "workflow_id": r.workflow_id, "status": spell(r.phase), "run_number": 1,
        "token_cost": 0, "total_nodes": 3, "total_steps": 3, "finished_steps": r.polls.min(3),
        "usage_summary": {}, "started_at": r.created_at, "completed_at": null,
        "pause_requested_at": null, "paused_at": null, "created_at": r.created_at,
        "updated_at": r.created_at,
        "error": if r.phase == Phase::Failed { json!("node tts_1 failed: voice not found") } else { Value::Null },
        "has_export": false, "triggered_by": {"user_id": if r.foreign { "u_human" } else { "u_api" }, "user_name": "x"},
    })
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

async fn create(
    State(c): State<Core>,
    UrlPath(wf): UrlPath<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    c.saw_request();
    if !authorized(&h) {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "invalid API key");
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match c.create(&wf, body, 2).await {
        Err(()) => error(
            StatusCode::CONFLICT,
            "CONFLICT",
            "another run of this workflow is already active",
        ),
        Ok(None) => error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "try again"),
        Ok(Some(r)) => (
            StatusCode::ACCEPTED,
            Json(json!({"data": run_out(&r), "meta": meta()})),
        )
            .into_response(),
    }
}

async fn status(
    State(c): State<Core>,
    UrlPath((_wf, id)): UrlPath<(String, String)>,
    h: HeaderMap,
) -> Response {
    c.saw_request();
    if !authorized(&h) {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "invalid API key");
    }
    match c.poll(&id) {
        Some(r) => Json(json!({"data": run_out(&r), "meta": meta()})).into_response(),
        None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "run not found"),
    }
}

async fn outputs(State(c): State<Core>, UrlPath((_wf, id)): UrlPath<(String, String)>) -> Response {
    c.saw_request();
    let Some(r) = c.get(&id) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "run not found");
    };
    Json(json!({"data": {"run_id": r.id, "run_status": spell(r.phase), "credits": 3, "outputs": [
        {"node_id": "sink_1", "node_type": "audio_out", "display_name": "Narration", "status": "completed",
         "lines": [{"text": "hello"}, {"text": "world"}], "line_count": 2, "truncated": true}
    ]}, "meta": meta()}))
    .into_response()
}

async fn cancel(State(c): State<Core>, UrlPath((_wf, id)): UrlPath<(String, String)>) -> Response {
    c.saw_request();
    if !c.cancel_gate().await {
        return error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "try again");
    }
    match c.cancel(&id, true) {
        Some(_) => {
            Json(json!({"data": run_out(&c.get(&id).unwrap()), "meta": meta()})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "run not found"),
    }
}

async fn list(State(c): State<Core>, UrlPath(wf): UrlPath<String>) -> Response {
    c.saw_request();
    let runs: Vec<Value> = c.list(&wf).iter().map(run_out).collect();
    let total = runs.len();
    Json(json!({"data": runs, "meta": meta(), "pagination": {"next": null, "prev": null, "limit": 100, "total": total}})).into_response()
}

impl FakeOnePin {
    pub async fn start() -> FakeOnePin {
        let core = Core::new("run_");
        let app = Router::new()
            .route("/api/v1/workflows/{wf}/runs", post(create).get(list))
            .route("/api/v1/workflows/{wf}/runs/{id}/status", get(status))
            .route("/api/v1/workflows/{wf}/runs/{id}/outputs", get(outputs))
            .route("/api/v1/workflows/{wf}/runs/{id}/cancel", post(cancel))
            .with_state(core.clone());
        let addr = Core::serve(app).await;
        FakeOnePin { core, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kind = "onepin"` provider block named `v`.
    pub fn provider(&self) -> String {
        format!(
            "[providers.v]\nkind = \"onepin\"\nbase_url = \"{}\"\ntoken = \"{TOKEN}\"\nworkspace_id = \"ws_1\"\ntimeout = \"2s\"\n",
            self.base_url()
        )
    }
}
