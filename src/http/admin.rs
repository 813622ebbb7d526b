//! The operator API: runs with their vendor status history and deliveries,
//! behind a bearer token. Handlers stay thin: auth, one store call, JSON.

use super::error::ApiError;
use crate::run::{RunId, RunStatus};
use crate::signing::ct_eq;
use crate::store::{RunQuery, Store};
use crate::topology::SharedTopology;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub topology: SharedTopology,
}

/// `GET /runs`, `GET /runs/{id}`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .with_state(state)
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
    Ok(Json(serde_json::to_value(run).unwrap_or(Value::Null)))
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
    };
    let store = state.store.clone();
    let runs = tokio::task::spawn_blocking(move || store.list_runs(&q))
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))??;
    let next = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Json(json!({ "runs": runs, "next": next })))
}
