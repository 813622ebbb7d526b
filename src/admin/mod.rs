//! The operators' domain layer: every admin operation (list and show runs,
//! cancel, replay, redeliver, recover, pause endpoints, inbound request
//! log, live config) as one method of [`Admin`], returning the API's view
//! types ([`view`]). The HTTP handlers (`http/admin/`) and the console
//! (`http/ui/`) both call these methods; neither talks to the store.
//!
//! Nothing here knows HTTP: errors are [`AdminError`], which the edge maps
//! to its one JSON error shape.

mod endpoints;
pub mod idempotency;
mod present;
mod recover;
pub mod requests;
mod runs;
pub mod view;

use crate::config::Role;
use crate::health::Health;
use crate::run::{CancelPhase, RunId};
use crate::signing::ct_eq;
use crate::store::{Store, StoreError};
use crate::time::Timestamp;
use crate::topology::SharedTopology;
use requests::RequestRing;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use view::*;

/// Why an admin operation did not happen. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No token, or not one of the configured ones (401).
    #[error("missing or invalid admin token")]
    Unauthorized,
    /// No admin token is configured at all (403 `admin_disabled`).
    #[error("the admin API is disabled; set [[admin.tokens]] or server.admin_token")]
    Disabled,
    /// A read token asked to change something (403 `forbidden`).
    #[error("this token may only read (role = \"read\")")]
    Forbidden,
    /// 404 with a code naming what is missing (`run_not_found`...).
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// 400: the request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 409 with a code: the request is valid but the state does not allow it.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 409 like `Conflict`, with more fields for the body (a cancel's
    /// `run_id`, `status` and the vendor's reason).
    #[error("{message}")]
    ConflictWith {
        code: &'static str,
        message: String,
        extra: serde_json::Map<String, serde_json::Value>,
    },
    /// 503: the store cannot answer now (retry later).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500: something failed that is not the caller's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdminError {
    fn run_not_found(id: &str) -> Self {
        AdminError::NotFound {
            code: "run_not_found",
            message: format!("no run with id {id:?}"),
        }
    }
}

/// The result type of every [`Admin`] method.
pub type AdminResult<T> = Result<T, AdminError>;

/// What [`Admin`] is built from (by `app.rs`).
pub struct AdminParts {
    pub store: Arc<dyn Store>,
    pub topology: SharedTopology,
    /// Wakes the scheduler (a cancel or redelivery is due at once).
    pub wake: Arc<Notify>,
    pub reloader: Arc<crate::reload::Reloader>,
    pub health: Arc<Health>,
    /// The ring of inbound requests that started nothing.
    pub requests: Arc<RequestRing>,
    /// Operators' changes to runs go through the scheduler's claims.
    pub scheduler: Arc<crate::scheduler::Scheduler>,
    /// The guarded callback client (endpoint tests).
    pub client: reqwest::Client,
    /// Routes' `max_in_flight` (a replay counts like a trigger).
    pub gate: Arc<crate::ingress::inflight::Gate>,
}

/// The admin operations. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    topology: SharedTopology,
    wake: Arc<Notify>,
    reloader: Arc<crate::reload::Reloader>,
    health: Arc<Health>,
    requests: Arc<RequestRing>,
    scheduler: Arc<crate::scheduler::Scheduler>,
    client: reqwest::Client,
    gate: Arc<crate::ingress::inflight::Gate>,
    recoveries: recover::Recoveries,
    /// Serializes pause/resume, so the persisted set matches memory.
    pause_lock: tokio::sync::Mutex<()>,
}

/// How long `cancel_run` waits for the vendor's answer before answering
/// with the cancel still in progress.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// Default and largest page of `GET /runs` and `GET /deliveries`.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// What became of a cancel request: `done` (200) or still going (202).
#[derive(Debug, Clone)]
pub struct CancelOutcome {
    pub result: CancelResult,
    /// The run ended canceled (otherwise the vendor has not answered yet).
    pub done: bool,
}

impl Admin {
    /// The admin layer over the daemon's parts.
    pub fn new(parts: AdminParts) -> Self {
        Admin {
            inner: Arc::new(Inner {
                store: parts.store,
                topology: parts.topology,
                wake: parts.wake,
                reloader: parts.reloader,
                health: parts.health,
                requests: parts.requests,
                scheduler: parts.scheduler,
                client: parts.client,
                gate: parts.gate,
                recoveries: Default::default(),
                pause_lock: Default::default(),
            }),
        }
    }

    /// The ring `GET /requests` reads (the hook handler records into it).
    pub fn requests(&self) -> &Arc<RequestRing> {
        &self.inner.requests
    }

    /// The role of a bearer token (constant-time compare against every
    /// configured token), for the API and the console's sign-in.
    pub fn authenticate(&self, token: Option<&str>) -> AdminResult<Role> {
        let topo = self.inner.topology.load();
        let tokens = &topo.settings.admin.tokens;
        if tokens.is_empty() {
            return Err(AdminError::Disabled);
        }
        let given = token.ok_or(AdminError::Unauthorized)?;
        // Every token is compared (no early exit on the first match).
        let mut role = None;
        for t in tokens {
            if ct_eq(given.as_bytes(), t.token.expose().as_bytes()) && role.is_none() {
                role = Some(t.role);
            }
        }
        role.ok_or(AdminError::Unauthorized)
    }

    /// Runs a blocking store read off the async threads; a failed task is
    /// an internal error (500), a store error a 503.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> AdminResult<T> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| AdminError::Internal(format!("a blocking task failed: {e}")))?
            .map_err(AdminError::from)
    }

    fn parse_run_id(id: &str) -> AdminResult<RunId> {
        id.parse().map_err(|_| AdminError::run_not_found(id))
    }

    async fn load_run(&self, id: &str) -> AdminResult<crate::run::Run> {
        let run_id = Self::parse_run_id(id)?;
        self.blocking(move |s| s.get_run(run_id))
            .await?
            .ok_or_else(|| AdminError::run_not_found(id))
    }

    /// `GET /runs`: runs matching every given filter, newest first.
    pub async fn list_runs(&self, filter: RunFilter) -> AdminResult<RunPage> {
        let q = present::run_query(&filter, Timestamp::now())?;
        let limit = q.limit;
        let runs = self.blocking(move |s| s.list_runs(&q)).await?;
        let next_cursor = (runs.len() == limit)
            .then(|| runs.last().map(|r| r.id().to_string()))
            .flatten();
        let redactor = self.inner.topology.load().redactor.clone();
        Ok(RunPage {
            runs: runs
                .iter()
                .map(|r| {
                    let mut s = present::summary(r);
                    s.raw_status = s.raw_status.map(|v| redactor.scrub(&v));
                    s
                })
                .collect(),
            next_cursor,
        })
    }

    /// `GET /runs/{id}`: the run, its history, events and every attempt.
    pub async fn get_run(&self, id: &str) -> AdminResult<RunDetail> {
        let run = self.load_run(id).await?;
        let redactor = self.inner.topology.load().redactor.clone();
        Ok(present::detail(&run, &redactor))
    }

    /// `POST /runs/{id}/cancel`: persists a cancel request (a crash
    /// mid-cancel finishes it after a restart), wakes the scheduler, which
    /// asks the vendor, and waits a while for its answer. The request is
    /// made through the scheduler's hold on the run, so it cannot race a
    /// step's save (neither is lost); a step that holds the run longer
    /// than [`CANCEL_WAIT`] makes it answer `409 run_busy` (retry).
    pub async fn cancel_run(&self, id: &str) -> AdminResult<CancelOutcome> {
        let run_id = Self::parse_run_id(id)?;
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        let now = Timestamp::now();
        let mut run = self
            .inner
            .scheduler
            .modify_run_by(run_id, deadline, |r| {
                let before = r.cancel().clone();
                let asked = r.request_cancel(now).is_ok();
                Ok::<_, std::convert::Infallible>(asked && *r.cancel() != before)
            })
            .await
            .map_err(|e| match e {
                crate::scheduler::ModifyError::NotFound => AdminError::run_not_found(id),
                e => e.into(),
            })?;
        self.inner.wake.notify_one();
        loop {
            let settled = run
                .cancel()
                .as_ref()
                .is_none_or(|c| c.phase != CancelPhase::Requested);
            if settled || tokio::time::Instant::now() >= deadline {
                return present::cancel_outcome(&run);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(r) = self.load_run(id).await {
                run = r;
            }
        }
    }

    /// `GET /deliveries`: failing or dead deliveries across runs, newest
    /// run first.
    pub async fn list_deliveries(&self, filter: DeliveryFilter) -> AdminResult<DeliveryPage> {
        let q = present::delivery_query(&filter)?;
        let limit = q.limit;
        let found = self.blocking(move |s| s.list_deliveries(&q)).await?;
        let next_cursor = (found.len() == limit)
            .then(|| found.last().map(|(r, i)| format!("{}.{i}", r.id())))
            .flatten();
        let redactor = self.inner.topology.load().redactor.clone();
        Ok(DeliveryPage {
            deliveries: found
                .iter()
                .filter_map(|(r, i)| present::delivery_item(r, *i as usize, &redactor))
                .collect(),
            next_cursor,
        })
    }

    /// `GET /requests`: recent inbound requests that started nothing.
    pub async fn recent_requests(&self, filter: RequestFilter) -> AdminResult<Vec<RequestRecord>> {
        self.inner.requests.list(&filter)
    }

    /// `GET /routes`: the live routes, secrets hidden.
    pub async fn routes(&self) -> AdminResult<Vec<RouteView>> {
        Ok(present::routes(&self.inner.topology.load()))
    }

    /// `GET /providers`: the live providers, secrets hidden.
    pub async fn providers(&self) -> AdminResult<Vec<ProviderView>> {
        Ok(present::providers(&self.inner.topology.load()))
    }

    /// `POST /reload`: like SIGHUP, answering with what happened.
    pub async fn reload(&self) -> Result<ReloadResult, crate::reload::ReloadError> {
        let report = self.inner.reloader.reload().await?;
        Ok(ReloadResult {
            status: "reloaded".into(),
            report: ReloadReportView {
                routes: report.routes,
                providers: report.providers,
                restart_needed: report
                    .restart_needed
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                retired_routes: report.retired_routes,
                retired_providers: report.retired_providers,
            },
        })
    }
}

pub use crate::delivery::pause::endpoint_id;
