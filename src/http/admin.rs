//! The operator API: runs with their vendor status history and deliveries,
//! behind a bearer token. Handlers stay thin: auth, one store call, JSON.

use super::error::ApiError;
use crate::run::{CancelPhase, Phase, Run, RunId, RunStatus};
use crate::secret::{redact_url, Redactor};
use crate::signing::ct_eq;
use crate::store::{RunQuery, Store};
use crate::time::Timestamp;
use crate::topology::SharedTopology;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub topology: SharedTopology,
    /// Reloads the config file (`POST /reload`).
    pub reloader: Arc<crate::reload::Reloader>,
    /// Wakes the scheduler (a cancel request is due at once).
    pub wake: Arc<Notify>,
}

/// How long `POST /runs/{id}/cancel` waits for the vendor's answer before
/// answering `202` with the cancel still in progress.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// `GET /runs`, `GET /runs/{id}`, `POST /runs/{id}/cancel`, `POST /reload`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/reload", post(reload))
        .with_state(state)
}

/// Persists a cancel request (so a crash mid-cancel finishes it after a
/// restart), wakes the scheduler, which asks the vendor, and answers with
/// what the vendor said: `200` canceled, `202` pending (or not yet
/// answered), `409` refused with the vendor's reason or already ended.
async fn cancel_run(
    State(state): State<AdminState>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&state, &headers)?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let run_id: RunId = id.parse().map_err(|_| ApiError::RunNotFound(id.clone()))?;
    let load = |store: Arc<dyn Store>| async move {
        tokio::task::spawn_blocking(move || store.get_run(run_id))
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?
            .map_err(ApiError::from)
    };
    let mut run = load(state.store.clone())
        .await?
        .ok_or(ApiError::RunNotFound(id.clone()))?;
    if run.request_cancel(Timestamp::now()).is_err() {
        return Ok(cancel_answer(&run));
    }
    state.store.save_run(&run).await?;
    state.wake.notify_one();
    let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
    loop {
        let settled = run
            .cancel()
            .as_ref()
            .is_none_or(|c| c.phase != CancelPhase::Requested);
        if settled || tokio::time::Instant::now() >= deadline {
            return Ok(cancel_answer(&run));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(r) = load(state.store.clone()).await? {
            run = r;
        }
    }
}

fn cancel_answer(run: &Run) -> (StatusCode, Json<Value>) {
    let id = run.id().to_string();
    let status = run.status().as_str();
    match &run.cancel() {
        Some(c) if c.phase == CancelPhase::Done || run.status() == RunStatus::Canceled => (
            StatusCode::OK,
            Json(json!({"run_id": id, "status": status, "cancel": "canceled",
                "vendor_run_may_continue": c.local_only})),
        ),
        Some(c) if !run.is_unfinished() || run.phase() == Phase::Terminal => {
            let _ = c;
            (
                StatusCode::CONFLICT,
                Json(
                    json!({"error": "run_ended", "message": format!("the run already ended {status}"), "run_id": id, "status": status}),
                ),
            )
        }
        Some(c) if c.phase == CancelPhase::Refused => (
            StatusCode::CONFLICT,
            Json(
                json!({"error": "cancel_refused", "message": "the provider refused to cancel the run",
                "run_id": id, "status": status, "vendor_reason": c.reason}),
            ),
        ),
        Some(c) => (
            StatusCode::ACCEPTED,
            Json(json!({"run_id": id, "status": status,
                "cancel": if c.phase == CancelPhase::Pending { "pending" } else { "requested" }})),
        ),
        None => (
            StatusCode::CONFLICT,
            Json(
                json!({"error": "run_ended", "message": format!("the run already ended {status}"), "run_id": id, "status": status}),
            ),
        ),
    }
}

/// `POST /reload`: like SIGHUP, but answers with what happened: `200` with
/// the report, or `422` listing every problem of the new file.
async fn reload(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    match state.reloader.reload().await {
        Ok(report) => Ok(Json(json!({ "status": "reloaded", "report": report }))),
        Err(crate::reload::ReloadError::Invalid(e)) => Err(ApiError::InvalidConfig(e.0)),
        Err(e) => Err(ApiError::Status(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let topo = state.topology.load();
    let Some(token) = &topo.settings.server.admin_token else {
        return Err(ApiError::AdminDisabled);
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::AdminUnauthorized)?;
    if ct_eq(given.trim().as_bytes(), token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::AdminUnauthorized)
    }
}

async fn get_run(
    State(state): State<AdminState>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let run_id: RunId = id.parse().map_err(|_| ApiError::RunNotFound(id.clone()))?;
    let store = state.store.clone();
    let run = tokio::task::spawn_blocking(move || store.get_run(run_id))
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))??
        .ok_or(ApiError::RunNotFound(id))?;
    let redactor = state.topology.load().redactor.clone();
    Ok(Json(present(&run, &redactor)))
}

/// A run as the admin API shows it: callback URLs without userinfo or
/// query values (the record keeps them whole, delivery needs them), and
/// known secrets scrubbed again, which also covers records written before
/// a secret was configured.
fn present(run: &Run, redactor: &Redactor) -> Value {
    let v = redactor.scrub_json(serde_json::to_value(run).unwrap_or(Value::Null));
    // A receiver may echo its URL (with the token in its query) in an answer.
    let url_secrets = Redactor::new(
        run.deliveries()
            .iter()
            .flat_map(|d| url_secrets(&d.url))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    );
    let mut v = url_secrets.scrub_json(v);
    if let Some(ds) = v.get_mut("deliveries").and_then(Value::as_array_mut) {
        for d in ds {
            if let Some(url) = d.get_mut("url") {
                let shown = url.as_str().map(redact_url).unwrap_or_default();
                *url = Value::String(shown);
            }
        }
    }
    v
}

/// The query values and password of a URL: what [`redact_url`] hides.
fn url_secrets(url: &str) -> Vec<String> {
    let Ok(u) = reqwest::Url::parse(url) else {
        return Vec::new();
    };
    let mut out: Vec<String> = u.query_pairs().map(|(_, v)| v.into_owned()).collect();
    out.extend(u.password().map(str::to_string));
    out
}

/// Query of `GET /runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    route: Option<String>,
    status: Option<String>,
    /// Cursor: the `next` of the previous page.
    before: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(
    State(state): State<AdminState>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let Query(p) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let status = p
        .status
        .as_deref()
        .map(str::parse::<RunStatus>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let before = p
        .before
        .as_deref()
        .map(str::parse::<RunId>)
        .transpose()
        .map_err(|_| ApiError::BadRequest("before must be a run id".into()))?;
    let limit = p.limit.unwrap_or(50).clamp(1, 1000);
    let q = RunQuery {
        route: p.route,
        status,
        before,
        limit,
        ..Default::default()
    };
    let store = state.store.clone();
    let runs = tokio::task::spawn_blocking(move || store.list_runs(&q))
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))??;
    let next = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.id().to_string()))
        .flatten();
    let redactor = state.topology.load().redactor.clone();
    let runs: Vec<Value> = runs.iter().map(|r| present(r, &redactor)).collect();
    Ok(Json(json!({ "runs": runs, "next": next })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Attempt, Observation, RunSpec, Target};

    #[test]
    fn runs_are_shown_without_url_tokens_or_known_secrets() {
        let mut run = Run::accepted(
            RunId::new(),
            RunSpec::example(),
            Timestamp(1_000),
            Timestamp(99_000),
        );
        let url = "https://user:pa55word@h.example/cb?token=cbtok_123456&v=1";
        run.finish(
            Timestamp(2_000),
            Observation {
                status: RunStatus::Failed,
                raw_status: None,
                output: Some(json!({"echo": "Bearer slat_secret_1"})),
                error: None,
                unknown: false,
            },
            &[Target {
                url: url.to_string(),
                events: vec!["run.failed".into()],
            }],
        )
        .unwrap();
        run.record_attempt(
            0,
            Attempt {
                at: Timestamp(2_001),
                duration_ms: 1,
                status_code: Some(500),
                error: None,
                response: Some(format!("no such hook: {url}")),
            },
            false,
            Some(Timestamp(3_000)),
        );
        let shown = present(&run, &Redactor::new(["slat_secret_1"])).to_string();
        for secret in ["cbtok_123456", "pa55word", "slat_secret_1"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("\"url\":\"https://h.example/cb?token=***&v=***\""),
            "{shown}"
        );
        assert_eq!(
            run.deliveries()[0].url,
            url,
            "the record keeps the full URL"
        );
    }
}
