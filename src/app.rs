//! Wiring: open the store, build the topology, serve HTTP, run the
//! scheduler, and shut all of it down in order.

use crate::admin::{self, AdminState};
use crate::config::Settings;
use crate::error::ApiError;
use crate::ingress::{self, Headers, IngressError};
use crate::scheduler::Scheduler;
use crate::store::sled::SledStore;
use crate::store::Store;
use crate::time::Timestamp;
use crate::topology::{self, SharedTopology, Topology};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

#[derive(Clone)]
struct HookState {
    store: Arc<dyn Store>,
    topology: SharedTopology,
    wake: Arc<Notify>,
}

struct HeaderView<'a>(&'a HeaderMap);

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The one outbound HTTP client: bounded timeouts, no redirects (a 3xx is a
/// failed callback, and redirects would bypass future SSRF checks), no
/// ambient proxies.
pub fn http_client() -> Result<reqwest::Client, StartupError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(crate::delivery::AGENT)
        .build()
        .map_err(|e| StartupError::Client(e.to_string()))
}

async fn hook(
    State(st): State<HookState>,
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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn not_found() -> Response {
    let body = json!({ "error": "not_found", "message": "no such endpoint; webhooks go to POST /hooks/{route}" });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// The HTTP surface.
fn router(
    hooks: HookState,
    admin: AdminState,
    body_limit: usize,
    request_timeout: Duration,
) -> Router {
    Router::new()
        .route("/hooks/{route}", post(hook))
        .with_state(hooks)
        .route("/healthz", get(healthz))
        .merge(admin::router(admin))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
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

/// Runs the daemon until `shutdown` fires, then drains within the
/// configured bound. `on_ready` gets the bound address once the store is
/// open and the listener is accepting.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), StartupError> {
    let storage = settings.storage.clone();
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || SledStore::open(&storage.path, storage.cache_capacity))
            .await
            .map_err(|e| crate::store::StoreError::Backend(e.to_string()))??,
    );
    let unfinished = store.unfinished_at_open();
    let client = http_client()?;
    let server = settings.server.clone();
    let topology = topology::shared(Topology::new(settings, &client));
    let wake = Arc::new(Notify::new());

    let app = router(
        HookState {
            store: store.clone(),
            topology: topology.clone(),
            wake: wake.clone(),
        },
        AdminState {
            store: store.clone(),
            topology: topology.clone(),
        },
        server.body_limit,
        server.request_timeout,
    );
    let listener = tokio::net::TcpListener::bind(server.listen)
        .await
        .map_err(|source| StartupError::Bind {
            addr: server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: server.listen,
        source,
    })?;

    let scheduler = Scheduler::new(store.clone(), topology.clone(), client, wake);
    let sched_task = tokio::spawn(scheduler.clone().run(shutdown.clone()));
    let sweep_task = tokio::spawn(scheduler.clone().sweep(shutdown.clone()));
    let http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(%addr, unfinished, "runbridge ready");
    on_ready(addr);

    shutdown.cancelled().await;
    let deadline = tokio::time::Instant::now() + server.shutdown_timeout;
    tracing::info!("shutting down: no new requests; finishing in-flight work");
    if tokio::time::timeout_at(deadline, http).await.is_err() {
        tracing::warn!("open connections outlived the shutdown timeout");
    }
    let _ = sched_task.await;
    let _ = sweep_task.await;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if !scheduler.drain(left).await {
        tracing::warn!(
            "some runs were still in flight; they resume from the store on the next start"
        );
    }
    store.close().await?;
    tracing::info!("store flushed; bye");
    Ok(())
}
