//! A fake Altostrat (SDX Workflows) from its docs (shared/providers.md
//! section 4): bare run objects `{id: "fl_run_...", status, error_message,
//! logs[]}`, output is the last log entry's `output`,
//! `awaiting_ui_interaction` waits, no cancel endpoint, and a Laravel-style
//! executions listing (`data`, `links`, `meta`), newest first.

use super::fake::{Core, FakeRun, Phase};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub const TOKEN: &str = "tok_1:team_1:altostratsecret99";

/// The fake.
#[derive(Clone)]
pub struct FakeAltostrat {
    pub core: Core,
    pub addr: std::net::SocketAddr,
}

fn spell(p: Phase) -> &'static str {
    match p {
        Phase::Queued => "pending",
        Phase::Running => "running",
        Phase::Waiting => "awaiting_ui_interaction",
        Phase::Succeeded => "completed",
        Phase::Failed => "failed",
        // Altostrat has no canceled status; the fake never reaches it.
        Phase::Canceled => "failed",
    }
}

fn run_json(r: &FakeRun, logs: bool) -> Value {
    let done = r.phase.terminal();
    let mut v = json!({
        "id": r.id, "status": spell(r.phase),
        "error_message": if r.phase == Phase::Failed { json!("Step 'Send email' failed: SMTP refused") } else { Value::Null },
        "started_at": r.created_at, "created_at": r.created_at,
        "completed_at": if done { json!(r.created_at) } else { Value::Null },
        "duration_in_seconds": if done { json!(1) } else { Value::Null },
    });
    if logs {
        let mut entries = vec![
            json!({"id": 1, "node_id": "trigger", "component_id": "c1", "status": "success", "output": {"received": true}, "created_at": r.created_at}),
        ];
        if r.phase == Phase::Succeeded {
            entries.push(json!({"id": 2, "node_id": "final", "component_id": "c2", "status": "success", "output": {"ticket": "T-42"}, "created_at": r.created_at}));
        }
        v["logs"] = json!(entries);
    }
    v
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"message": "Unauthenticated."})),
    )
        .into_response()
}

async fn execute(
    State(c): State<Core>,
    UrlPath(wf): UrlPath<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    c.saw_request();
    if !authorized(&h) {
        return unauthorized();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match c.create(&wf, body, 0).await {
        Ok(Some(r)) => (StatusCode::ACCEPTED, Json(run_json(&r, true))).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"message": "try again"})),
        )
            .into_response(),
    }
}

async fn status(State(c): State<Core>, UrlPath(id): UrlPath<String>, h: HeaderMap) -> Response {
    c.saw_request();
    if !authorized(&h) {
        return unauthorized();
    }
    match c.poll(&id) {
        Some(r) => Json(run_json(&r, true)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Not found."})),
        )
            .into_response(),
    }
}

async fn executions(State(c): State<Core>, UrlPath(wf): UrlPath<String>) -> Response {
    c.saw_request();
    let runs: Vec<Value> = c.list(&wf).iter().map(|r| run_json(r, false)).collect();
    let n = runs.len();
    Json(json!({"data": runs, "links": {"first": null, "last": null, "prev": null, "next": null},
        "meta": {"current_page": 1, "from": 1, "last_page": 1, "path": "", "per_page": 100, "to": n, "total": n}}))
    .into_response()
}

impl FakeAltostrat {
    pub async fn start() -> FakeAltostrat {
        let core = Core::new("fl_run_");
        let app = Router::new()
            .route("/workflows/{wf}/execute", post(execute))
            .route("/workflows/runs/{id}", get(status))
            .route("/workflows/{wf}/executions", get(executions))
            .with_state(core.clone());
        let addr = Core::serve(app).await;
        FakeAltostrat { core, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kind = "altostrat"` provider block named `v`.
    pub fn provider(&self) -> String {
        format!(
            "[providers.v]\nkind = \"altostrat\"\nbase_url = \"{}\"\ntoken = \"{TOKEN}\"\ntimeout = \"2s\"\n",
            self.base_url()
        )
    }
}
