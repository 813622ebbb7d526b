//! The live configuration (`/routes`, `/providers`, `POST /reload`) and the
//! inbound request log (`/requests`).

use super::{bad, AdminState};
use crate::admin::view::{
    ErrorBody, ProviderView, ReloadResult, RequestFilter, RequestRecord, RouteView,
};
use crate::http::error::ApiError;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;

/// Recent inbound requests that started nothing (rejected or ignored).
#[utoipa::path(get, path = "/requests", tag = "config", params(RequestFilter),
    responses((status = 200, body = [RequestRecord]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn requests(
    State(st): State<AdminState>,
    q: Result<Query<RequestFilter>, QueryRejection>,
) -> Result<Json<Vec<RequestRecord>>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    Ok(Json(st.admin.recent_requests(q).await?))
}

/// The live routes, every secret as `"***"`.
#[utoipa::path(get, path = "/routes", tag = "config",
    responses((status = 200, body = [RouteView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn routes(State(st): State<AdminState>) -> Result<Json<Vec<RouteView>>, ApiError> {
    Ok(Json(st.admin.routes().await?))
}

/// The live providers, every secret as `"***"`.
#[utoipa::path(get, path = "/providers", tag = "config",
    responses((status = 200, body = [ProviderView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn providers(
    State(st): State<AdminState>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    Ok(Json(st.admin.providers().await?))
}

/// Reloads the config file like SIGHUP; 422 lists every problem of a bad one.
#[utoipa::path(post, path = "/reload", tag = "config",
    responses((status = 200, body = ReloadResult), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn reload(State(st): State<AdminState>) -> Result<Json<ReloadResult>, ApiError> {
    match st.admin.reload().await {
        Ok(r) => Ok(Json(r)),
        Err(crate::reload::ReloadError::Invalid(e)) => Err(ApiError::InvalidConfig(e.0)),
        Err(e) => Err(ApiError::Status(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}
