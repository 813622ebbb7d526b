//! The axum edge, and the only place with HTTP server types: the webhook
//! endpoint, health and readiness, the admin API, and the one mapping of
//! errors to JSON answers ([`error`]).

pub mod admin;
pub mod body;
pub mod conn;
pub mod error;
pub mod tls;
pub mod ui;

use crate::health::Health;
use crate::ingress::{self, Headers, IngressError};
use crate::store::Store;
use crate::time::Timestamp;
use crate::topology::SharedTopology;
use admin::AdminState;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use body::{BodyBudget, ReadError};
use error::ApiError;
use http_body_util::BodyExt;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Longest request target (path and query) we accept; longer gets a JSON
/// 414. hyper itself refuses targets over 65,534 bytes with a bare 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// What the edge's handlers share.
#[derive(Clone)]
pub struct EdgeState {
    pub store: Arc<dyn Store>,
    pub topology: SharedTopology,
    pub health: Arc<Health>,
    /// Notified when a new run is due (wakes the scheduler).
    pub wake: Arc<Notify>,
    /// The global bound on buffered body bytes.
    pub budget: BodyBudget,
    /// Counts runs of routes with `max_in_flight`.
    pub gate: Arc<ingress::inflight::Gate>,
    /// Reloads the configuration (`POST /reload`).
    pub reloader: Arc<crate::reload::Reloader>,
    /// Renders `/metrics`; `None` when no recorder could be installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Throttles the log line about rejected webhooks, per route and reason.
    pub reject_log: Arc<crate::throttle::Throttle>,
    /// The admin operations (the API and the console call these).
    pub admin: crate::admin::Admin,
}

impl EdgeState {
    /// A rejected webhook: counted, and logged at most once per route and
    /// reason per interval (a flood must not fill the disk).
    fn rejected(&self, route: &str, code: &'static str, reason: &str, status: StatusCode) {
        self.admin.requests().record(
            route,
            crate::admin::view::RequestOutcome::Rejected,
            status.as_u16(),
            Some(code),
            reason,
        );
        metrics::counter!("runbridge_triggers_total", "route" => route.to_string(), "outcome" => code)
            .increment(1);
        if let Some(suppressed) = self.reject_log.allow(&format!("{route}/{code}")) {
            tracing::warn!(route, error = code, reason, suppressed, "webhook rejected");
        }
    }
}

/// What ingress sees of a request besides its body: headers, the decoded
/// query and the peer address (set by `conn.rs` as [`ConnectInfo`]).
struct HeaderView<'a> {
    headers: &'a HeaderMap,
    query: Vec<(String, String)>,
    peer: Option<IpAddr>,
}

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn raw(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(HeaderValue::as_bytes)
    }

    fn all(&self, name: &str) -> Vec<&str> {
        // An unreadable line is kept (empty) so a chain reader sees it is
        // there and trusts nothing left of it.
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect()
    }

    fn query(&self, name: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn peer(&self) -> Option<IpAddr> {
        self.peer
    }
}

/// What reading and checking a hook request ends in, before the store.
/// Marks a hook answer whose outcome was already counted (ignored by the
/// filter, a challenge), so the status code alone does not label it.
#[derive(Clone, Copy)]
struct Counted;

enum Checked {
    /// Refused before the body was read (or while reading it).
    Early(IngressError),
    Ready(ingress::Outcome),
}

/// `POST /hooks/{route}`, counted and with its rejections logged (a route
/// name that is not configured is labelled `(unknown)`, so arbitrary paths
/// cannot grow the metrics).
async fn hook(
    State(st): State<EdgeState>,
    route: Result<Path<String>, PathRejection>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(route) = route.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let label = {
        let topo = st.topology.load();
        if topo.settings.routes.contains_key(&route) && !topo.retired_routes.contains(&route) {
            route.clone()
        } else {
            "(unknown)".to_string()
        }
    };
    let query = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let result = checked_hook(&st, &route, &label, query, peer, headers, body).await;
    match &result {
        Ok(resp) if resp.extensions().get::<Counted>().is_some() => {}
        Ok(resp) => {
            let outcome = match resp.status() {
                StatusCode::ACCEPTED => "accepted",
                StatusCode::OK => "duplicate",
                s => error::code_for_status(s),
            };
            if resp.status().is_success() {
                metrics::counter!("runbridge_triggers_total", "route" => label, "outcome" => outcome)
                    .increment(1);
            }
        }
        Err(e) => st.rejected(&label, e.code(), &e.to_string(), e.status()),
    }
    result
}

/// The hook itself. `request_timeout` bounds reading and verifying; once
/// the run is handed to the store the answer waits for the write's
/// outcome, so a 2xx always has its run and an error never leaves one.
async fn checked_hook(
    st: &EdgeState,
    route: &str,
    label: &str,
    query: Vec<(String, String)>,
    peer: Option<IpAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let route = route.to_string();
    let topo = st.topology.load_full();
    if topo.retired_routes.contains(&route) {
        // Removed by a reload; kept only for its unfinished runs.
        return Err(IngressError::RouteNotFound(route).into());
    }
    let settings = &topo.settings;
    let timeout = settings.server.request_timeout;
    let now = Timestamp::now();
    let view = HeaderView {
        headers: &headers,
        query,
        peer,
    };
    let mut held = st.budget.hold();
    let checked = tokio::time::timeout(timeout, async {
        if let Err(e) = ingress::before_body(settings, &route, &view, now) {
            return Ok(Checked::Early(e));
        }
        let limit = settings.server.body_limit;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let bytes = match body::read_limited(body, limit, declared, &mut held).await {
            Ok(b) => b,
            Err(ReadError::TooLarge) => {
                return Ok(Checked::Early(IngressError::PayloadTooLarge(limit)))
            }
            Err(ReadError::Io(e)) => {
                return Err(ApiError::BadRequest(format!(
                    "could not read the body: {e}"
                )))
            }
        };
        match ingress::prepare(settings, &route, &view, &bytes, now) {
            Ok(o) => Ok(Checked::Ready(o)),
            // Refused after the whole body was read: an ordinary answer.
            Err(e) => Err(ApiError::from(e)),
        }
    })
    .await;
    let prepared = match checked {
        Err(_) => return Err(ApiError::Timeout(timeout)),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Checked::Early(e))) => {
            let e = ApiError::from(e);
            st.rejected(label, e.code(), &e.to_string(), e.status());
            return Ok(unread_body(e));
        }
        Ok(Ok(Checked::Ready(ingress::Outcome::Run(p)))) => p,
        Ok(Ok(Checked::Ready(ingress::Outcome::Ignored { status, reason }))) => {
            st.health.edge.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(route = %route, reason = %reason, "request ignored by the route's filter");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            st.admin.requests().record(
                label,
                crate::admin::view::RequestOutcome::Ignored,
                status.as_u16(),
                None,
                &reason,
            );
            metrics::counter!("runbridge_triggers_total", "route" => label.to_string(), "outcome" => "ignored")
                .increment(1);
            let body = Json(json!({ "ignored": true, "reason": reason }));
            return Ok((status, Extension(Counted), body).into_response());
        }
        Ok(Ok(Checked::Ready(ingress::Outcome::Challenge(c)))) => {
            metrics::counter!("runbridge_triggers_total", "route" => label.to_string(), "outcome" => "challenge")
                .increment(1);
            let body = Json(json!({ "challenge": c }));
            return Ok((StatusCode::OK, Extension(Counted), body).into_response());
        }
    };
    // No deadline from here on: the write's outcome decides the answer.
    let accepted = ingress::persist(&*st.store, &st.gate, *prepared).await?;
    drop(held);
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

/// An early rejection that may leave the request body unread: the rest is
/// drained in the background (lingering close) while the answer goes out,
/// and the connection closes after it, so say so.
fn unread_body(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
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
        "callback_breakers_open": st.health.open_breakers(),
        "edge": {
            "connections": edge.connections.load(Ordering::Relaxed),
            "body_bytes_buffered": edge.body_bytes.load(Ordering::Relaxed),
            "body_bytes_buffered_peak": edge.body_bytes_peak.load(Ordering::Relaxed),
            "ignored_by_filters": edge.ignored.load(Ordering::Relaxed),
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

/// `GET /metrics`: Prometheus text format, rendered by the exporter; the
/// edge gauges kept in [`Health`] are copied in at scrape time.
async fn metrics_text(State(st): State<EdgeState>) -> Response {
    let Some(handle) = &st.metrics else {
        return ApiError::Status(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not available in this process".into(),
        )
        .into_response();
    };
    let edge = &st.health.edge;
    metrics::gauge!("runbridge_edge_connections")
        .set(edge.connections.load(Ordering::Relaxed) as f64);
    metrics::gauge!("runbridge_edge_body_bytes_buffered")
        .set(edge.body_bytes.load(Ordering::Relaxed) as f64);
    metrics::gauge!("runbridge_edge_body_bytes_buffered_peak")
        .set(edge.body_bytes_peak.load(Ordering::Relaxed) as f64);
    for (name, state) in st.health.loops() {
        metrics::gauge!("runbridge_loop_alive", "loop" => name).set(if state.ok {
            1.0
        } else {
            0.0
        });
    }
    metrics::gauge!("runbridge_store_faulted").set(if st.store.fault().is_some() {
        1.0
    } else {
        0.0
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    let body = json!({ "error": "not_found", "message": "no such endpoint; webhooks go to POST /hooks/{route}" });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// `/healthz`, `/readyz` and `/metrics`, for [`router`] or, with
/// `server.ops_listen`, a listener of their own.
fn ops_routes(st: EdgeState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(st)
}

/// The router of the `server.ops_listen` listener: the ops endpoints only.
pub fn ops_router(st: EdgeState) -> Router {
    ops_routes(st)
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
}

/// The HTTP surface: every answer, including the router's own 404/405 and
/// extractor rejections, is JSON of the documented shape. With `with_ops`
/// false, `/healthz`, `/readyz` and `/metrics` are left to [`ops_router`].
pub fn router(st: EdgeState, with_ops: bool) -> Router {
    let server = st.topology.load().settings.server.clone();
    let admin = AdminState {
        admin: st.admin.clone(),
        idempotency: Default::default(),
    };
    let (st_admin, st_topology) = (st.admin.clone(), st.topology.clone());
    let ops = if with_ops {
        ops_routes(st.clone())
    } else {
        Router::new()
    };
    let limits = HeaderLimits {
        max_headers: server.max_headers,
        max_header_bytes: server.max_header_bytes,
    };
    Router::new()
        .route("/hooks/{route}", post(hook))
        .with_state(st)
        .merge(ops)
        .merge(admin::router(admin))
        .merge(ui::router(ui::UiState::new(st_admin, st_topology)))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(server.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            server.request_timeout,
            deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(limits, header_limits))
        .layer(axum::middleware::map_response(json_errors))
}

/// Bounds a whole request (slow senders included) and answers like every
/// other error. Hooks keep their own deadline (see [`hook`]): theirs stops
/// where the store write starts.
async fn deadline(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path().starts_with("/hooks/") {
        return next.run(req).await;
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

#[derive(Clone, Copy)]
struct HeaderLimits {
    max_headers: usize,
    max_header_bytes: usize,
}

/// `server.max_headers`, `server.max_header_bytes` and [`MAX_URI_BYTES`],
/// answered in JSON. hyper's parser enforces looser backstops itself
/// (see `conn::hyper_backstops`) with bare answers.
async fn header_limits(
    State(l): State<HeaderLimits>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        let msg = format!("the request target is longer than {MAX_URI_BYTES} bytes");
        return close_after(ApiError::Status(StatusCode::URI_TOO_LONG, msg));
    }
    if req.headers().len() > l.max_headers {
        let msg = format!("more than {} header fields", l.max_headers);
        return close_after(ApiError::Status(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            msg,
        ));
    }
    let bytes = req.method().as_str().len()
        + uri_len
        + 12
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if bytes > l.max_header_bytes {
        let msg = format!(
            "request line and headers exceed {} bytes",
            l.max_header_bytes
        );
        return close_after(ApiError::Status(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            msg,
        ));
    }
    next.run(req).await
}

fn close_after(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Rewrites every error answer that is not JSON yet (axum's 405 with an
/// empty body, path and query rejections in text/plain...) into the
/// documented shape, keeping its status and headers (`Allow` on a 405).
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // The console's (`/ui`) error pages are HTML on purpose.
        .is_some_and(|c| c.starts_with("application/json") || c.starts_with("text/html"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match http_body_util::Limited::new(body, 4096).collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if !text.is_empty() {
        text
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        let allow = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        format!("method not allowed here; allowed: {allow}")
    } else {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    };
    let rewritten = ApiError::Status(status, message).into_response();
    let (new_parts, new_body) = rewritten.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (k, v) in new_parts.headers.iter() {
        parts.headers.insert(k.clone(), v.clone());
    }
    Response::from_parts(parts, new_body)
}
