//! `/deliveries` across runs, and route recovery.

use super::{bad, AdminState};
use crate::admin::view::{DeliveryFilter, DeliveryPage, ErrorBody, RecoverParams, Recovery};
use crate::http::error::ApiError;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

/// Deliveries that need attention (failing, dead), newest run first.
#[utoipa::path(get, path = "/deliveries", tag = "deliveries", params(DeliveryFilter),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(st): State<AdminState>,
    q: Result<Query<DeliveryFilter>, QueryRejection>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    Ok(Json(st.admin.list_deliveries(q).await?))
}

/// Redelivers every failing or dead delivery of a route since a time, paced.
#[utoipa::path(post, path = "/routes/{route}/recover", tag = "deliveries",
    params(("route" = String, Path, description = "route name"), RecoverParams),
    responses((status = 202, body = Recovery), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn recover(
    State(st): State<AdminState>,
    route: Result<Path<String>, PathRejection>,
    q: Result<Query<RecoverParams>, QueryRejection>,
) -> Result<(StatusCode, Json<Recovery>), ApiError> {
    let Path(route) = route.map_err(|e| bad(e.body_text()))?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(st.admin.recover(&route, &q.since).await?),
    ))
}

/// A recovery's progress.
#[utoipa::path(get, path = "/recoveries/{id}", tag = "deliveries", params(("id" = String, Path, description = "recovery id")),
    responses((status = 200, body = Recovery), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn recovery(
    State(st): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Recovery>, ApiError> {
    let Path(id) = id.map_err(|e| bad(e.body_text()))?;
    Ok(Json(st.admin.recovery(&id).await?))
}
