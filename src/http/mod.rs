//! The axum edge, and the only place with HTTP server types: the webhook
//! endpoint, health and readiness, the admin API, and the one mapping of
//! errors to JSON answers ([`error`]).

pub mod admin;
pub mod error;

use crate::health::Health;
use crate::ingress::{self, Headers, IngressError};
use crate::store::Store;
use crate::time::Timestamp;
use crate::topology::SharedTopology;
use admin::AdminState;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// What the edge's handlers share.
#[derive(Clone)]
pub struct EdgeState {
    pub store: Arc<dyn Store>,
    pub topology: SharedTopology,
    pub health: Arc<Health>,
    /// Notified when a new run is due (wakes the scheduler).
    pub wake: Arc<Notify>,
}

struct HeaderView<'a>(&'a HeaderMap);

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn hook(
    State(st): State<EdgeState>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let topo = st.topology.load_full();
    if !topo.settings.routes.contains_key(&route) {
        return Ok(unread_body(IngressError::RouteNotFound(route)));
    }
    let limit = topo.settings.server.body_limit;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(unread_body(IngressError::PayloadTooLarge(limit)));
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Ok(unread_body(IngressError::PayloadTooLarge(limit)));
        }
        Err(e) => {
            return Err(ApiError::BadRequest(format!(
                "could not read the body: {e}"
            )))
        }
    };
    let accepted = ingress::accept(
        &topo.settings,
        &*st.store,
        &route,
        &HeaderView(&headers),
        &bytes,
        Timestamp::now(),
    )
    .await?;
    let status = if accepted.duplicate {
        StatusCode::OK
    } else {
        st.wake.notify_one();
        tracing::info!(run_id = %accepted.run_id, route = %route, "run accepted");
        StatusCode::ACCEPTED
    };
    let status_url = format!("/runs/{}", accepted.run_id);
    let body = json!({ "run_id": accepted.run_id.to_string(), "status_url": status_url });
    Ok((status, [(header::LOCATION, status_url)], Json(body)).into_response())
}

/// An early rejection that leaves the request body unread: hyper will close
/// the connection, so say so and the client won't reuse it for a next request.
fn unread_body(e: IngressError) -> Response {
    let mut resp = ApiError::from(e).into_response();
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// Liveness: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Readiness: the store can write and every loop is alive. Vendor credential
/// problems are listed but do not make the instance unready.
async fn readyz(State(st): State<EdgeState>) -> Response {
    let fault = st.store.fault();
    let loops = st.health.loops();
    let ready = fault.is_none() && loops.values().all(|l| l.ok);
    let edge = &st.health.edge;
    let topo = st.topology.load();
    let body = json!({
        "status": if ready { "ready" } else { "unready" },
        "version": env!("CARGO_PKG_VERSION"),
        "store": match &fault {
            None => json!({ "ok": true }),
            Some(f) => json!({ "ok": false, "fault": f }),
        },
        "loops": loops,
        "providers": st.health.provider_problems(),
        "edge": {
            "connections": edge.connections.load(Ordering::Relaxed),
            "body_bytes_buffered": edge.body_bytes.load(Ordering::Relaxed),
            "body_bytes_buffered_peak": edge.body_bytes_peak.load(Ordering::Relaxed),
            "body_limit": topo.settings.server.body_limit,
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    let body = json!({ "error": "not_found", "message": "no such endpoint; webhooks go to POST /hooks/{route}" });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// The HTTP surface.
pub fn router(st: EdgeState) -> Router {
    let server = st.topology.load().settings.server.clone();
    let admin = AdminState {
        store: st.store.clone(),
        topology: st.topology.clone(),
    };
    Router::new()
        .route("/hooks/{route}", post(hook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(st)
        .merge(admin::router(admin))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(server.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            server.request_timeout,
            deadline,
        ))
}

/// Bounds a whole request (slow senders included) and answers like every
/// other error. A hook cut off while its run is being persisted may still be
/// persisted: the sender's retry then meets the dedupe record.
async fn deadline(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}
