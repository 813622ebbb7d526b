//! Reloading the configuration (SIGHUP, `POST /reload`): the new file is
//! loaded and checked, then routes, providers, callbacks and secrets are
//! swapped in atomically through the topology handle. Runs in flight look
//! their route and provider up by name at each step, so they use the new
//! definitions. A route or provider the new config drops stops taking
//! triggers at once but stays in the topology, unserved, until its last
//! unfinished run is done.
//!
//! What needs a restart (the listeners, the store, the connection limits,
//! the scheduler's concurrency) keeps its running value; the reload says
//! which changed keys it left alone.

use crate::config::{ConfigError, Problem, ServerSettings, Settings};
use crate::store::Store;
use crate::time::Timestamp;
use crate::topology::{SharedTopology, Topology};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

/// What a successful reload changed and what it left for a restart.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Routes served now.
    pub routes: usize,
    /// Providers configured now.
    pub providers: usize,
    /// Changed keys that need a restart; their old values stay in use.
    pub restart_needed: Vec<&'static str>,
    /// Removed routes kept, unserved, until their unfinished runs are done.
    pub retired_routes: Vec<String>,
    /// Removed providers kept until their unfinished runs are done.
    pub retired_providers: Vec<String>,
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration has problems (every one is listed).
    #[error("the new configuration has {} problem(s)", .0 .0.len())]
    Invalid(ConfigError),
    /// Looking for the unfinished runs of removed routes failed.
    #[error("cannot check the store for unfinished runs: {0}")]
    Store(String),
}

/// Applies a part of a checked new configuration that lives outside the
/// topology (the TLS certificate); an error refuses the reload, keyed by
/// the config key it names.
pub type ReloadHook = Box<dyn Fn(&Settings) -> Result<(), Problem> + Send + Sync>;

/// Reloads one config file into one topology; reloads run one at a time.
pub struct Reloader {
    hooks: Vec<ReloadHook>,
    path: PathBuf,
    client: reqwest::Client,
    topology: SharedTopology,
    store: Arc<dyn Store>,
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader of `path` into `topology`; `store` says which removed
    /// routes and providers still have unfinished runs.
    pub fn new(
        path: PathBuf,
        client: reqwest::Client,
        topology: SharedTopology,
        store: Arc<dyn Store>,
    ) -> Self {
        Reloader {
            hooks: Vec::new(),
            path,
            client,
            topology,
            store,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Adds a hook run on every reload once the new file checked out.
    pub fn on_reload(&mut self, hook: ReloadHook) {
        self.hooks.push(hook);
    }

    /// Loads, checks and swaps in the configuration file. Every problem of
    /// an invalid file is logged and returned; the running config stays.
    /// Sends `RELOADING=1` and then `READY=1` to systemd around it.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.lock.lock().await;
        crate::signal::reloading();
        let result = self.reload_locked().await;
        match &result {
            Ok(r) => {
                metrics::counter!("runbridge_reloads_total", "outcome" => "ok").increment(1);
                tracing::info!(
                    routes = r.routes,
                    providers = r.providers,
                    retired_routes = ?r.retired_routes,
                    retired_providers = ?r.retired_providers,
                    "configuration reloaded"
                );
                for key in &r.restart_needed {
                    tracing::warn!(
                        key,
                        "changed in the config file, but takes effect only after a restart; the running value stays"
                    );
                }
            }
            Err(ReloadError::Invalid(e)) => {
                metrics::counter!("runbridge_reloads_total", "outcome" => "invalid").increment(1);
                for p in &e.0 {
                    tracing::error!(key = %p.key, problem = %p.message, "reload refused: configuration problem");
                }
                tracing::error!(
                    problems = e.0.len(),
                    "reload refused; the running configuration stays"
                );
            }
            Err(e) => {
                metrics::counter!("runbridge_reloads_total", "outcome" => "error").increment(1);
                tracing::error!(error = %e, "reload failed; the running configuration stays");
            }
        }
        crate::signal::ready("serving");
        result
    }

    async fn reload_locked(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.path.clone();
        let mut new = tokio::task::spawn_blocking(move || Settings::load(&path))
            .await
            .map_err(|e| ReloadError::Store(e.to_string()))?
            .map_err(ReloadError::Invalid)?;
        let old = self.topology.load_full();
        let restart_needed = keep_restart_keys(&old.settings, &mut new);

        // Removed routes and providers that unfinished runs still use stay.
        let mut gone_routes: BTreeSet<String> = old
            .settings
            .routes
            .keys()
            .filter(|n| !new.routes.contains_key(*n))
            .cloned()
            .collect();
        let mut gone_providers: BTreeSet<String> = old
            .settings
            .providers
            .keys()
            .filter(|n| !new.providers.contains_key(*n))
            .cloned()
            .collect();
        if !gone_routes.is_empty() || !gone_providers.is_empty() {
            let (routes, providers) = self.in_use().await?;
            gone_routes.retain(|r| routes.contains(r));
            gone_providers.retain(|p| providers.contains(p));
        }
        for r in &gone_routes {
            if let Some(s) = old.settings.routes.get(r) {
                new.routes.insert(r.clone(), s.clone());
            }
        }
        for p in &gone_providers {
            if let Some(s) = old.settings.providers.get(p) {
                new.providers.insert(p.clone(), s.clone());
            }
        }
        // Last before the swap: a refused hook leaves everything as it was.
        let problems: Vec<Problem> = self.hooks.iter().filter_map(|h| h(&new).err()).collect();
        if !problems.is_empty() {
            return Err(ReloadError::Invalid(ConfigError(problems)));
        }
        let mut topo = Topology::new(new, &self.client);
        topo.retired_routes = gone_routes.clone();
        topo.retired_providers = gone_providers.clone();
        let report = ReloadReport {
            routes: topo.settings.routes.len() - gone_routes.len(),
            providers: topo.settings.providers.len() - gone_providers.len(),
            restart_needed,
            retired_routes: gone_routes.into_iter().collect(),
            retired_providers: gone_providers.into_iter().collect(),
        };
        self.topology.store(Arc::new(topo));
        Ok(report)
    }

    /// Drops retired routes and providers whose last unfinished run is
    /// done. Cheap when nothing is retired; otherwise one pass over the
    /// unfinished runs.
    pub async fn prune(&self) {
        let _one = self.lock.lock().await;
        let current = self.topology.load_full();
        if current.retired_routes.is_empty() && current.retired_providers.is_empty() {
            return;
        }
        let (routes, providers) = match self.in_use().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check retired routes for unfinished runs");
                return;
            }
        };
        let drop_routes: Vec<String> = current
            .retired_routes
            .iter()
            .filter(|r| !routes.contains(*r))
            .cloned()
            .collect();
        let drop_providers: Vec<String> = current
            .retired_providers
            .iter()
            .filter(|p| !providers.contains(*p))
            .cloned()
            .collect();
        if drop_routes.is_empty() && drop_providers.is_empty() {
            return;
        }
        let mut settings = current.settings.clone();
        for r in &drop_routes {
            settings.routes.remove(r);
        }
        for p in &drop_providers {
            settings.providers.remove(p);
        }
        let mut topo = Topology::new(settings, &self.client);
        topo.retired_routes = current.retired_routes.clone();
        topo.retired_providers = current.retired_providers.clone();
        for r in &drop_routes {
            topo.retired_routes.remove(r);
        }
        for p in &drop_providers {
            topo.retired_providers.remove(p);
        }
        self.topology.store(Arc::new(topo));
        tracing::info!(routes = ?drop_routes, providers = ?drop_providers, "removed routes and providers dropped: their last run is done");
    }

    /// Route and provider names of every unfinished run (each has a due entry).
    async fn in_use(&self) -> Result<(BTreeSet<String>, BTreeSet<String>), ReloadError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut routes = BTreeSet::new();
            let mut providers = BTreeSet::new();
            let due = store.due(Timestamp(u64::MAX), usize::MAX, &|_| false)?;
            for (_, id) in due {
                if let Some(run) = store.get_run(id)? {
                    if run.phase() != crate::run::Phase::Done {
                        routes.insert(run.route().to_string());
                        providers.insert(run.provider().to_string());
                    }
                }
            }
            Ok::<_, crate::store::StoreError>((routes, providers))
        })
        .await
        .map_err(|e| ReloadError::Store(e.to_string()))?
        .map_err(|e| ReloadError::Store(e.to_string()))
    }
}

/// Puts the running values back into `new` for every key that needs a
/// restart, and names the ones the file changed. Of `[server]`, only
/// `admin_token`, `body_limit`, `request_timeout` (for webhooks) and the
/// files of `tls` take effect on reload.
fn keep_restart_keys(old: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let (o, n) = (&old.server, &new.server);
    let checks: [(&'static str, bool); 11] = [
        ("server.listen", o.listen != n.listen),
        ("server.ops_listen", o.ops_listen != n.ops_listen),
        (
            "server.shutdown_timeout",
            o.shutdown_timeout != n.shutdown_timeout,
        ),
        (
            "server.header_read_timeout",
            o.header_read_timeout != n.header_read_timeout,
        ),
        ("server.idle_timeout", o.idle_timeout != n.idle_timeout),
        (
            "server.max_connections",
            o.max_connections != n.max_connections,
        ),
        ("server.max_headers", o.max_headers != n.max_headers),
        (
            "server.max_header_bytes",
            o.max_header_bytes != n.max_header_bytes,
        ),
        (
            "server.body_buffer_limit",
            o.body_buffer_limit != n.body_buffer_limit,
        ),
        ("server.linger_bytes", o.linger_bytes != n.linger_bytes),
        (
            "server.linger_timeout",
            o.linger_timeout != n.linger_timeout,
        ),
    ];
    changed.extend(checks.iter().filter(|(_, c)| *c).map(|(k, _)| *k));
    // Turning TLS on or off changes the listener; new files for it do not.
    let tls_switch = old.server.tls.is_some() != new.server.tls.is_some();
    if tls_switch {
        changed.push("server.tls");
    }
    if old.storage.path != new.storage.path {
        changed.push("storage.path");
    }
    if old.storage.cache_capacity != new.storage.cache_capacity {
        changed.push("storage.cache_capacity");
    }
    if old.scheduler.concurrency != new.scheduler.concurrency {
        changed.push("scheduler.concurrency");
    }
    new.server = ServerSettings {
        admin_token: new.server.admin_token.clone(),
        body_limit: new.server.body_limit,
        request_timeout: new.server.request_timeout,
        tls: if tls_switch {
            old.server.tls.clone()
        } else {
            new.server.tls.clone()
        },
        ..old.server.clone()
    };
    new.storage = old.storage.clone();
    new.scheduler.concurrency = old.scheduler.concurrency;
    changed
}
