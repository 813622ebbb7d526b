//! `/runs`: list, show, cancel, replay, redeliver.

use super::{bad, AdminState};
use crate::admin::view::{
    CancelResult, DeliveryView, ErrorBody, RunDetail, RunFilter, RunPage, RunSummary,
};
use crate::http::error::ApiError;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

/// Runs matching every given filter, newest first, a page at a time.
#[utoipa::path(get, path = "/runs", tag = "runs", params(RunFilter),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(st): State<AdminState>,
    q: Result<Query<RunFilter>, QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    Ok(Json(st.admin.list_runs(q).await?))
}

/// One run: history, events, deliveries and every attempt.
#[utoipa::path(get, path = "/runs/{id}", tag = "runs", params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = RunDetail), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn show(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunDetail>, ApiError> {
    let Path(id) = id.map_err(|e| bad(e.body_text()))?;
    Ok(Json(st.admin.get_run(&id).await?))
}

/// Cancels a run: 200 canceled, 202 still in progress, 409 refused or ended.
#[utoipa::path(post, path = "/runs/{id}/cancel", tag = "runs", params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = CancelResult), (status = 202, body = CancelResult),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn cancel(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<CancelResult>), ApiError> {
    let Path(id) = id.map_err(|e| bad(e.body_text()))?;
    let out = st.admin.cancel_run(&id).await?;
    let status = if out.done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(out.result)))
}

/// Starts a new run with the same route, workflow and inputs, linked to this one.
#[utoipa::path(post, path = "/runs/{id}/replay", tag = "runs", params(("id" = String, Path, description = "run id")),
    responses((status = 201, body = RunSummary), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn replay(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<RunSummary>), ApiError> {
    let Path(id) = id.map_err(|e| bad(e.body_text()))?;
    Ok((StatusCode::CREATED, Json(st.admin.replay_run(&id).await?)))
}

/// A new attempt of one delivery now (also dead or delivered), same `webhook-id`.
#[utoipa::path(post, path = "/runs/{id}/deliveries/{index}/redeliver", tag = "deliveries",
    params(("id" = String, Path, description = "run id"), ("index" = u32, Path, description = "delivery index in the run")),
    responses((status = 202, body = DeliveryView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn redeliver(
    State(st): State<AdminState>,
    p: Result<Path<(String, u32)>, PathRejection>,
) -> Result<(StatusCode, Json<DeliveryView>), ApiError> {
    let Path((id, index)) = p.map_err(|e| bad(e.body_text()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(st.admin.redeliver(&id, index).await?),
    ))
}
