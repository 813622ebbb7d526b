//! A fake Retab in both API shapes, from its docs (shared/providers.md
//! section 3). `seed`: `Api-Key` auth, `POST /v1/workflows/{id}/run`, flat
//! run with `status`, `final_outputs`, `error`/`error_stage`, waiting
//! status `waiting_for_human`. `current`: Bearer auth,
//! `POST /v1/workflows/runs` with `workflow_id` in the body, status in
//! `lifecycle` (`awaiting_review` waits), outputs from the steps endpoint.
//! Errors are FastAPI's `{"detail": ...}`. Cancel is asynchronous
//! (`cancellation_requested`, the run shows `cancelled` on the next poll).

use super::fake::{Core, FakeRun, Phase};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;

pub const KEY: &str = "sk_retab_test_0123456789abcdef";

#[derive(Clone)]
struct St {
    core: Core,
    seed: bool,
}

/// The fake.
#[derive(Clone)]
pub struct FakeRetab {
    pub core: Core,
    pub addr: std::net::SocketAddr,
    pub seed: bool,
}

fn detail(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"detail": msg}))).into_response()
}

fn spell(p: Phase, seed: bool) -> &'static str {
    match p {
        Phase::Queued => "pending",
        Phase::Running => "running",
        Phase::Waiting if seed => "waiting_for_human",
        Phase::Waiting => "awaiting_review",
        Phase::Succeeded => "completed",
        Phase::Failed => "error",
        Phase::Canceled => "cancelled",
    }
}

fn run_json(r: &FakeRun, seed: bool) -> Value {
    let failed = r.phase == Phase::Failed;
    if seed {
        json!({
            "id": r.id, "workflow_id": r.workflow_id, "status": spell(r.phase, true),
            "execution_phase": "running", "created_at": r.created_at,
            "final_outputs": if r.phase == Phase::Succeeded { json!({"end_1": {"label": "Invoice", "json_data": {"total": 42}}}) } else { Value::Null },
            "error": if failed { json!("extraction failed: document unreadable") } else { Value::Null },
            "error_stage": if failed { json!("execution") } else { Value::Null },
            "steps": [],
        })
    } else {
        let mut lifecycle = json!({"status": spell(r.phase, false)});
        if failed {
            lifecycle["message"] = json!("extraction failed: document unreadable");
            lifecycle["category"] = json!("permanent");
            lifecycle["stage"] = json!("execution");
        }
        json!({
            "id": r.id, "workflow_id": r.workflow_id, "workflow_version_id": "ver_1",
            "trigger": {"type": "api"}, "lifecycle": lifecycle,
            "timing": {"created_at": r.created_at, "started_at": r.created_at, "completed_at": null},
            "inputs": {}, "metadata": r.body.get("metadata").cloned().unwrap_or(json!({})),
        })
    }
}

fn authorized(st: &St, h: &HeaderMap) -> bool {
    let want = if st.seed {
        ("api-key", KEY.to_string())
    } else {
        ("authorization", format!("Bearer {KEY}"))
    };
    h.get(want.0).and_then(|v| v.to_str().ok()) == Some(want.1.as_str())
}

async fn create_seed(
    State(st): State<St>,
    UrlPath(wf): UrlPath<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    st.core.saw_request();
    if !authorized(&st, &h) {
        return detail(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match st.core.create(&wf, body, 0).await {
        Ok(Some(mut r)) => {
            r.phase = Phase::Running;
            Json(run_json(&r, true)).into_response()
        }
        _ => detail(StatusCode::SERVICE_UNAVAILABLE, "try again"),
    }
}

async fn create_current(State(st): State<St>, h: HeaderMap, body: axum::body::Bytes) -> Response {
    st.core.saw_request();
    if !authorized(&st, &h) {
        return detail(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(wf) = body["workflow_id"].as_str().map(str::to_string) else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "workflow_id is required");
    };
    match st.core.create(&wf, body, 0).await {
        Ok(Some(r)) => Json(run_json(&r, false)).into_response(),
        _ => detail(StatusCode::SERVICE_UNAVAILABLE, "try again"),
    }
}

async fn status(State(st): State<St>, UrlPath(id): UrlPath<String>, h: HeaderMap) -> Response {
    st.core.saw_request();
    if !authorized(&st, &h) {
        return detail(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    match st.core.poll(&id) {
        Some(r) => Json(run_json(&r, st.seed)).into_response(),
        None => detail(StatusCode::NOT_FOUND, "Workflow run not found"),
    }
}

async fn steps(State(st): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    st.core.saw_request();
    if q.get("run_id").is_none_or(|id| st.core.get(id).is_none()) {
        return detail(StatusCode::NOT_FOUND, "Workflow run not found");
    }
    Json(json!({"data": [
        {"step_id": "extract_1", "status": "completed", "handle_outputs": {"output": {"total": 42}}}
    ]}))
    .into_response()
}

async fn cancel(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    st.core.saw_request();
    match st.core.cancel(&id, false) {
        Some(before) => {
            let status = if before.phase.terminal() {
                "cancellation_failed"
            } else {
                "cancellation_requested"
            };
            Json(json!({"run": run_json(&before, st.seed), "cancellation_status": status, "redis_available": true})).into_response()
        }
        None => detail(StatusCode::NOT_FOUND, "Workflow run not found"),
    }
}

async fn list(State(st): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    st.core.saw_request();
    let wf = q.get("workflow_id").cloned().unwrap_or_default();
    let runs: Vec<Value> = st
        .core
        .list(&wf)
        .iter()
        .map(|r| run_json(r, st.seed))
        .collect();
    Json(json!({"data": runs, "list_metadata": {"before": null, "after": null}})).into_response()
}

impl FakeRetab {
    pub async fn start(seed: bool) -> FakeRetab {
        let core = Core::new("wfr_");
        let st = St {
            core: core.clone(),
            seed,
        };
        let app = Router::new()
            .route("/v1/workflows/{wf}/run", post(create_seed))
            .route("/v1/workflows/runs", post(create_current).get(list))
            .route("/v1/workflows/runs/{id}", get(status))
            .route("/v1/workflows/runs/{id}/cancel", post(cancel))
            .route("/v1/workflows/steps", get(steps))
            .with_state(st);
        let addr = Core::serve(app).await;
        FakeRetab { core, addr, seed }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kind = "retab"` provider block named `v` in this fake's shape.
    pub fn provider(&self) -> String {
        let shape = if self.seed { "seed" } else { "current" };
        format!(
            "[providers.v]\nkind = \"retab\"\napi_shape = \"{shape}\"\nbase_url = \"{}\"\ntoken = \"{KEY}\"\ntimeout = \"2s\"\n",
            self.base_url()
        )
    }
}
