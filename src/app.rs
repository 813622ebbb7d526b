//! Wiring: open the store, build the topology, serve HTTP, run the
//! scheduler, and shut all of it down in order.

use crate::config::Settings;
use crate::health::Health;
use crate::http::{self, EdgeState};
use crate::ingress::inflight::{Gate, GatedStore};
use crate::scheduler::Scheduler;
use crate::store::sled::SledStore;
use crate::store::Store;
use crate::topology::{self, Topology};
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
    /// The daemon ran, but its final state could not be made durable (a
    /// store fault at shutdown): exit non-zero and say what was lost.
    #[error("{0}")]
    Unflushed(String),
}

/// The part of the shutdown timeout kept for closing the store (at most a
/// tenth of it), so a drain that uses up its time cannot push the exit past
/// the timeout; a healthy close takes milliseconds.
const CLOSE_RESERVE: Duration = Duration::from_millis(250);

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

/// Runs the daemon until `shutdown` fires, then drains within the
/// configured bound. `on_ready` gets the bound address once the store is
/// open and the listener is accepting.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), StartupError> {
    let storage = settings.storage.clone();
    let sled: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || SledStore::open(&storage.path, storage.cache_capacity))
            .await
            .map_err(|e| crate::store::StoreError::Backend(e.to_string()))??,
    );
    // Routes' max_in_flight: counted around the store (see ingress::inflight).
    let wake = Arc::new(Notify::new());
    let gate = Arc::new(Gate::new(wake.clone()));
    gate.rebuild(&*sled, &settings)?;
    let store: Arc<dyn Store> = Arc::new(GatedStore::new(sled, gate.clone()));
    let unfinished = store.unfinished_at_open();
    let client = http_client()?;
    let server = settings.server.clone();
    let topology = topology::shared(Topology::new(settings, &client));

    let health = Arc::new(Health::default());
    let fds = http::conn::raise_descriptor_limit();
    let cap = http::conn::connection_cap(fds.soft, server.max_connections);
    tracing::info!(
        soft_before = fds.soft_before,
        soft = fds.soft,
        hard = fds.hard,
        max_connections = cap,
        configured_max_connections = server.max_connections,
        body_buffer_limit = server.body_buffer_limit,
        "descriptor limit (soft raised to hard) and the connection cap below it"
    );
    let app = http::router(EdgeState {
        store: store.clone(),
        topology: topology.clone(),
        health: health.clone(),
        wake: wake.clone(),
        budget: http::body::BodyBudget::new(server.body_buffer_limit, health.clone()),
        gate,
    });
    let listener = http::conn::bind(server.listen).map_err(|source| StartupError::Bind {
        addr: server.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: server.listen,
        source,
    })?;

    let edge = http::conn::Edge {
        router: app,
        server: server.clone(),
        cap,
        health: health.clone(),
    };
    let scheduler = Scheduler::new(store.clone(), topology.clone(), client, wake, health);
    let sched_task = tokio::spawn(scheduler.clone().run(shutdown.clone()));
    let sweep_task = tokio::spawn(scheduler.clone().sweep(shutdown.clone()));
    let http = tokio::spawn(http::conn::serve(listener, edge, shutdown.clone()));
    tracing::info!(%addr, unfinished, "runbridge ready");
    on_ready(addr);

    shutdown.cancelled().await;
    // Checked: `Instant + Duration` panics on overflow.
    let now = tokio::time::Instant::now();
    let hard_deadline = now
        .checked_add(server.shutdown_timeout)
        .unwrap_or(now + Duration::from_secs(86_400 * 365));
    let deadline = hard_deadline - (server.shutdown_timeout / 10).min(CLOSE_RESERVE);
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
    let (lost, ids) = scheduler.unpersisted();
    let left = hard_deadline.saturating_duration_since(tokio::time::Instant::now());
    let closed = match tokio::time::timeout(left, store.close()).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the store did not close within {}",
            humantime::format_duration(left)
        )),
    };
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let what = if lost == 0 {
        String::new()
    } else {
        format!(
            "{lost} run transition(s) could not be persisted (runs {}{}); ",
            ids.join(", "),
            if lost > ids.len() { ", ..." } else { "" }
        )
    };
    match closed {
        Ok(()) if lost == 0 => {
            tracing::info!("store flushed; bye");
            Ok(())
        }
        Ok(()) => {
            tracing::warn!("store flushed, but {what}they resume from their last durable state on the next start");
            Ok(())
        }
        Err(e) => Err(StartupError::Unflushed(format!(
            "shutdown during a store fault: {what}the final flush failed ({e}). \
             Nothing acknowledged is lost: on the next start every run resumes from its last durable state \
             (a start is repeated with the same idempotency key; a callback may be sent again with the same webhook-id)"
        ))),
    }
}
