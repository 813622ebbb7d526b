//! Wiring: open the store, build the topology, serve HTTP, run the
//! scheduler, and shut all of it down in order.

use crate::config::Settings;
use crate::health::Health;
use crate::http::{self, EdgeState};
use crate::ingress::inflight::{Gate, GatedStore};
use crate::scheduler::Scheduler;
use crate::store::sled::SledStore;
use crate::store::Store;
use crate::topology::{self, SharedTopology, Topology};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The store could not be opened (in use, unreadable...).
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The listener could not be bound (or the one systemd passed is unusable).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The outbound HTTP client could not be built (no CA certificates...).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The TLS certificate or key could not be loaded.
    #[error("server.tls: {0}")]
    Tls(String),
    /// The daemon ran, but its final state could not be made durable (a
    /// store fault at shutdown): exit non-zero and say what was lost.
    #[error("{0}")]
    Unflushed(String),
}

/// The part of the shutdown timeout kept for closing the store (at most a
/// tenth of it), so a drain that uses up its time cannot push the exit past
/// the timeout; a healthy close takes milliseconds.
const CLOSE_RESERVE: Duration = Duration::from_millis(250);

/// The outbound client settings shared by vendor calls and callbacks:
/// bounded timeouts, no redirects (a 3xx is a failed call, and a redirect
/// would bypass the SSRF guard), no ambient proxies.
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(crate::delivery::AGENT)
}

/// The client for vendor calls. Vendor base URLs are set by the operator,
/// so this client has no SSRF guard (a vendor on the local network works).
pub fn http_client() -> Result<reqwest::Client, StartupError> {
    client_builder()
        .build()
        .map_err(|e| StartupError::Client(e.to_string()))
}

/// The client for callbacks, whose URLs users configure: its resolver
/// refuses special-purpose addresses unless the current topology's
/// `delivery.allow_destinations` admits them (read per lookup, so a reload
/// applies).
pub fn callback_client(topology: &SharedTopology) -> Result<reqwest::Client, StartupError> {
    let topology = topology.clone();
    let allow: crate::delivery::guard::AllowSource =
        Arc::new(move || topology.load().settings.delivery.allow_destinations.clone());
    crate::delivery::callback_client(client_builder(), allow)
        .map_err(|e| StartupError::Client(e.to_string()))
}

/// Test hook, inert unless set: how long a loop may go without a beat
/// before it counts as stuck (a duration like `5s`; default 60 s), so tests
/// see `/readyz` and the watchdog react to a stall within seconds.
pub const TEST_LOOP_STALL_ENV: &str = "RUNBRIDGE_TEST_LOOP_STALL";

/// How often removed routes and providers are checked for unfinished runs.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often the due-queue depth gauge is refreshed.
const DEPTH_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder behind the `metrics` facade, once per
/// process; `None` (and a warning) if one is installed already.
fn metrics_recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics is off");
                    None
                }
            }
        })
        .clone()
}

/// Binds `addr`, or takes the socket systemd passed (socket activation)
/// when `activated` is set.
fn open_listener(addr: SocketAddr, activated: bool) -> Result<std::net::TcpListener, StartupError> {
    let bind_err = |source| StartupError::Bind { addr, source };
    if activated {
        if let Some(l) = crate::signal::activated_listener().map_err(bind_err)? {
            tracing::info!(
                "serving the socket systemd passed (socket activation); server.listen is not used"
            );
            return Ok(l);
        }
    }
    http::conn::bind(addr).map_err(bind_err)
}

/// Runs the daemon until `shutdown` fires, then drains within the
/// configured bound. `on_ready` gets the bound address once the store is
/// open and the listener is accepting. Each message on `reload` reloads
/// `config_path` (SIGHUP).
pub async fn run(
    settings: Settings,
    config_path: PathBuf,
    reload: mpsc::UnboundedReceiver<()>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), StartupError> {
    let metrics = metrics_recorder();
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

    let stall = std::env::var(TEST_LOOP_STALL_ENV)
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(crate::health::LOOP_STALL);
    let health = Arc::new(Health::with_stall(stall));
    let tls = match &server.tls {
        Some(t) => Some(http::tls::TlsHandle::load(t).map_err(StartupError::Tls)?),
        None => None,
    };
    let mut reloader =
        crate::reload::Reloader::new(config_path, client.clone(), topology.clone(), store.clone());
    if let Some(handle) = tls.clone() {
        // A renewed certificate: read on every reload, served to the next
        // connection.
        reloader.on_reload(Box::new(move |s: &Settings| {
            let Some(t) = &s.server.tls else {
                return Ok(());
            };
            handle.reload(t).map_err(|message| crate::config::Problem {
                key: "server.tls".into(),
                message,
            })
        }));
    }
    let reloader = Arc::new(reloader);
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
    let callbacks = callback_client(&topology)?;
    let scheduler = Scheduler::new(
        store.clone(),
        topology.clone(),
        callbacks.clone(),
        wake.clone(),
        health.clone(),
    );
    let requests = Arc::new(crate::admin::requests::RequestRing::new(
        topology.load().settings.admin.recent_requests,
    ));
    let admin = crate::admin::Admin::new(crate::admin::AdminParts {
        store: store.clone(),
        topology: topology.clone(),
        wake: wake.clone(),
        reloader: reloader.clone(),
        health: health.clone(),
        requests,
        scheduler: scheduler.clone(),
        client: callbacks,
        gate: gate.clone(),
    });
    match admin.load_paused().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            paused = n,
            "callback endpoints paused by an operator stay paused"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read the paused endpoints; none is paused"),
    }
    let state = EdgeState {
        store: store.clone(),
        topology: topology.clone(),
        health: health.clone(),
        wake: wake.clone(),
        budget: http::body::BodyBudget::new(server.body_buffer_limit, health.clone()),
        reloader: reloader.clone(),
        metrics,
        reject_log: Arc::new(crate::throttle::Throttle::new(Duration::from_secs(10))),
        gate,
        admin,
    };
    let app = http::router(state.clone(), server.ops_listen.is_none());
    let listener = open_listener(server.listen, true)?;
    let addr = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: server.listen,
        source,
    })?;
    let ops = match server.ops_listen {
        Some(ops_addr) => {
            let l = open_listener(ops_addr, false)?;
            let bound = l.local_addr().map_err(|source| StartupError::Bind {
                addr: ops_addr,
                source,
            })?;
            Some((l, bound))
        }
        None => None,
    };

    let edge = http::conn::Edge {
        router: app,
        server: server.clone(),
        cap,
        health: health.clone(),
        tls,
    };
    let ops_http = ops.map(|(l, bound)| {
        tracing::info!(%bound, "serving /healthz, /readyz and /metrics on server.ops_listen");
        let ops_edge = http::conn::Edge {
            router: http::ops_router(state.clone()),
            server: server.clone(),
            cap: cap.min(1024),
            health: health.clone(),
            tls: None,
        };
        tokio::spawn(http::conn::serve(l, ops_edge, shutdown.clone()))
    });
    tokio::spawn(scheduler.alerts().run(shutdown.clone()));
    let sched_task = tokio::spawn(scheduler.clone().run(shutdown.clone()));
    let sweep_task = tokio::spawn(scheduler.clone().sweep(shutdown.clone()));
    let http = tokio::spawn(http::conn::serve(listener, edge, shutdown.clone()));
    tokio::spawn(crate::signal::watchdog(health, shutdown.clone()));
    tokio::spawn(reloads(reloader, shutdown.clone(), reload));
    tokio::spawn(due_depth(store.clone(), shutdown.clone()));
    tracing::info!(%addr, unfinished, "runbridge ready");
    on_ready(addr);
    crate::signal::ready("serving");

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
    if let Some(ops_http) = ops_http {
        let _ = tokio::time::timeout_at(deadline, ops_http).await;
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

/// Reloads on every SIGHUP (`next` yields one per signal), and drops
/// removed routes and providers once their last run is done.
async fn reloads(
    reloader: Arc<crate::reload::Reloader>,
    stop: CancellationToken,
    mut next: mpsc::UnboundedReceiver<()>,
) {
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            got = next.recv() => match got {
                Some(()) => { let _ = reloader.reload().await; }
                None => return,
            },
            _ = prune.tick() => reloader.prune().await,
            _ = stop.cancelled() => return,
        }
    }
}

/// Keeps the `runbridge_due_queue_depth` gauge (runs waiting in the due
/// index, unfinished runs) fresh.
async fn due_depth(store: Arc<dyn Store>, stop: CancellationToken) {
    loop {
        if let Ok(n) = store.due_len() {
            metrics::gauge!("runbridge_due_queue_depth").set(n as f64);
        }
        tokio::select! {
            _ = tokio::time::sleep(DEPTH_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}
