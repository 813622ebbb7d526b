//! The operator API over HTTP: thin handlers per resource (auth is a layer,
//! each handler parses, makes one [`Admin`] call and answers JSON). Every
//! path needs a bearer token (read tokens may only `GET`), every `POST`
//! honours `Idempotency-Key`; `/openapi.json` is public.

mod config;
mod deliveries;
mod endpoints;
pub mod openapi;
mod runs;

use super::auth::bearer_token;
use super::error::ApiError;
use crate::admin::idempotency::{self, Claim, Idempotency, Stored};
use crate::admin::{Admin, AdminError};
use crate::config::Role;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use std::sync::Arc;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    pub admin: Admin,
    /// Answers kept for `Idempotency-Key` repeats.
    pub idempotency: Arc<Idempotency>,
}

/// The header naming a POST's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer given again for a repeated `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Every admin path, behind the token layer, plus the public `/openapi.json`.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/replay", post(runs::replay))
        .route(
            "/runs/{id}/deliveries/{index}/redeliver",
            post(runs::redeliver),
        )
        .route("/deliveries", get(deliveries::list))
        .route("/routes/{route}/recover", post(deliveries::recover))
        .route("/recoveries/{id}", get(deliveries::recovery))
        .route("/endpoints", get(endpoints::list))
        .route("/endpoints/{id}/pause", post(endpoints::pause))
        .route("/endpoints/{id}/resume", post(endpoints::resume))
        .route("/endpoints/{id}/test", post(endpoints::test))
        .route("/requests", get(config::requests))
        .route("/routes", get(config::routes))
        .route("/providers", get(config::providers))
        .route("/reload", post(config::reload))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    api.route("/openapi.json", get(openapi::serve))
}

/// The token layer: 401 without a valid token, 403 `forbidden` for a read
/// token on anything but `GET`/`HEAD`, and `Idempotency-Key` on POSTs.
async fn guard(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_string);
    let role = match st.admin.authenticate(token.as_deref()) {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if !reads && role == Role::Read {
        return ApiError::from(AdminError::Forbidden).into_response();
    }
    let key = req
        .headers()
        .get(IDEMPOTENCY_KEY)
        .map(|v| v.to_str().map(str::to_string));
    let key = match key {
        None => return next.run(req).await,
        Some(Ok(k)) if !k.is_empty() && k.len() <= idempotency::MAX_KEY_LEN => k,
        Some(_) => {
            return ApiError::from(AdminError::BadRequest(format!(
                "Idempotency-Key must be 1 to {} visible ASCII characters",
                idempotency::MAX_KEY_LEN
            )))
            .into_response()
        }
    };
    if reads {
        return next.run(req).await;
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let token = token.unwrap_or_default();
    let method = req.method().as_str().to_string();
    loop {
        match st.idempotency.claim(&token, &method, &path, &key) {
            Claim::Repeat(slot) => {
                if let Some(stored) = idempotency::wait(slot).await {
                    return replayed(stored);
                }
                // The first was cut off without an answer: claim again.
            }
            Claim::First(pending) => {
                let resp = next.run(req).await;
                let (parts, body) = resp.into_parts();
                let bytes = match body.collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) => {
                        return ApiError::from(AdminError::Internal(format!(
                            "reading the answer failed: {e}"
                        )))
                        .into_response()
                    }
                };
                pending.finish(Stored {
                    status: parts.status.as_u16(),
                    body: bytes.clone(),
                });
                return Response::from_parts(parts, axum::body::Body::from(bytes));
            }
        }
    }
}

/// A kept answer, given again.
fn replayed(s: Stored) -> Response {
    let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK);
    let mut resp = (status, s.body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// A path or query the extractor refused: 400 in our shape.
fn bad<E: std::fmt::Display>(e: E) -> ApiError {
    ApiError::Admin(AdminError::BadRequest(e.to_string()))
}
