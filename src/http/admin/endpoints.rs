//! `/endpoints`: callback endpoints, pause, resume, test.

use super::{bad, AdminState};
use crate::admin::view::{EndpointView, ErrorBody, TestResult};
use crate::http::error::ApiError;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;

/// Every configured callback endpoint.
#[utoipa::path(get, path = "/endpoints", tag = "endpoints",
    responses((status = 200, body = [EndpointView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(st): State<AdminState>,
) -> Result<Json<Vec<EndpointView>>, ApiError> {
    Ok(Json(st.admin.endpoints().await?))
}

/// Holds deliveries to the endpoint until resumed (nothing is dropped).
#[utoipa::path(post, path = "/endpoints/{id}/pause", tag = "endpoints", params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn pause(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<EndpointView>, ApiError> {
    let Path(id) = id.map_err(|e| bad(e.body_text()))?;
    Ok(Json(st.admin.pause_endpoint(&id).await?))
}

/// Lets held deliveries to the endpoint flow again.
#[utoipa::path(post, path = "/endpoints/{id}/resume", tag = "endpoints", params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn resume(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<EndpointView>, ApiError> {
    let Path(id) = id.map_err(|e| bad(e.body_text()))?;
    Ok(Json(st.admin.resume_endpoint(&id).await?))
}

/// Sends a signed `test` event now and answers with the attempt's outcome.
#[utoipa::path(post, path = "/endpoints/{id}/test", tag = "endpoints", params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = TestResult), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn test(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TestResult>, ApiError> {
    let Path(id) = id.map_err(|e| bad(e.body_text()))?;
    Ok(Json(st.admin.test_endpoint(&id).await?))
}
