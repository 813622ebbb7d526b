//! Drives every unfinished run: claims due runs from the store's due index,
//! works on each (start, poll, or deliver callbacks) with bounded
//! concurrency, and persists every transition before moving on.
//!
//! Idle means asleep until the earliest due time or a wake-up (a new run, a
//! finished step). A restart needs no recovery pass: every unfinished run,
//! including one whose start was in flight, still has its due entry.

use crate::backoff;
use crate::config::{RouteSettings, SchedulerSettings};
use crate::delivery;
use crate::health::Health;
use crate::providers::{FailureKind, PollRequest, ProviderError, StartRequest};
use crate::run::{Observation, Phase, Run, RunId, RunStatus};
use crate::secret::redact_url;
use crate::store::Store;
use crate::throttle::Throttle;
use crate::time::Timestamp;
use crate::topology::SharedTopology;
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a provider's `Retry-After` may push a retry out.
const MAX_PROVIDER_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// A vendor failure of one kind is logged at most once per provider per
/// this interval (with the count suppressed since): a vendor outage must
/// stay visible without flooding the log.
const VENDOR_LOG_EVERY: Duration = Duration::from_secs(60);
/// Longest the loop sleeps without looking at the due index again.
const MAX_IDLE: Duration = Duration::from_secs(5);
/// How often the dedupe sweep runs, and how many records one pass examines:
/// 1,000 records/s keeps a week of 1M deliveries a day swept within hours.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
const SWEEP_BUDGET: usize = 10_000;

/// A claimed run: while it lives the run is in flight and holds a permit.
/// Dropping it (even while unwinding from a panic) releases both and wakes
/// the loop, so a run can never stay claimed by a step that is gone.
struct Claim {
    scheduler: Arc<Scheduler>,
    id: RunId,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Permit and claim first, wake-up last: the loop must see the free
        // permit when it wakes, or it would wait for a wake-up that never comes.
        drop(self.permit.take());
        self.scheduler.release(self.id);
        self.scheduler.wake.notify_one();
    }
}

/// The scheduler. Cheap to share; [`Scheduler::run`] is its loop.
pub struct Scheduler {
    store: Arc<dyn Store>,
    topology: SharedTopology,
    client: reqwest::Client,
    wake: Arc<Notify>,
    in_flight: Mutex<HashSet<RunId>>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    health: Arc<Health>,
    vendor_log: Throttle,
}

impl Scheduler {
    /// A scheduler over `store`; `wake` is notified by whoever adds due work.
    pub fn new(
        store: Arc<dyn Store>,
        topology: SharedTopology,
        client: reqwest::Client,
        wake: Arc<Notify>,
        health: Arc<Health>,
    ) -> Arc<Self> {
        let concurrency = topology.load().settings.scheduler.concurrency;
        Arc::new(Scheduler {
            store,
            topology,
            client,
            wake,
            in_flight: Mutex::new(HashSet::new()),
            permits: Arc::new(Semaphore::new(concurrency)),
            tracker: TaskTracker::new(),
            health,
            vendor_log: Throttle::new(VENDOR_LOG_EVERY),
        })
    }

    /// Claims and works due runs until `cancel` fires. In-flight steps are
    /// left to finish; await [`Scheduler::drain`] for them.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            if cancel.is_cancelled() {
                break;
            }
            self.health.beat("scheduler");
            let now = Timestamp::now();
            let free = self.permits.available_permits();
            let mut launched = 0;
            if free > 0 {
                match self.claim(now, free) {
                    Ok(ids) => {
                        for (at, id) in ids {
                            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                                self.release(id);
                                continue;
                            };
                            launched += 1;
                            let claim = Claim {
                                scheduler: self.clone(),
                                id,
                                permit: Some(permit),
                            };
                            self.tracker.spawn(async move {
                                claim.scheduler.step(at, id).await;
                                drop(claim);
                            });
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reading the due index failed"),
                }
            }
            if free == 0 || launched == free {
                // Saturated: the next wake-up comes from a finished step
                // (Notify keeps a permit, so none is lost; MAX_IDLE bounds
                // the wait all the same).
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(MAX_IDLE) => {}
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
            let sleep = self.idle_time(now);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                _ = cancel.cancelled() => break,
            }
        }
    }

    /// Removes expired dedupe records in small slices until `cancel` fires,
    /// so the dedupe tree stays bounded by `dedupe_ttl` worth of deliveries.
    pub async fn sweep(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            self.health.beat("sweeper");
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = cancel.cancelled() => break,
            }
            match self
                .store
                .sweep_dedupe(Timestamp::now(), SWEEP_BUDGET)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "expired dedupe records swept"),
                Err(e) => tracing::warn!(error = %e, "dedupe sweep failed"),
            }
        }
    }

    /// Waits for in-flight steps, at most `limit`. Returns whether all finished.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }

    fn claim(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, RunId)>, crate::store::StoreError> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut claimed = Vec::with_capacity(limit);
        for (at, id) in self.store.due(now, limit, &|id| in_flight.contains(&id))? {
            // A run can have a second, stale entry; claim it once.
            if in_flight.insert(id) {
                claimed.push((at, id));
            }
        }
        Ok(claimed)
    }

    fn release(&self, id: RunId) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Time until the earliest due run that is not already being worked on.
    fn idle_time(&self, now: Timestamp) -> Duration {
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match self
            .store
            .due(Timestamp(u64::MAX), 1, &|id| in_flight.contains(&id))
        {
            Ok(next) => next
                .first()
                .map(|(at, _)| at.since(now).min(MAX_IDLE))
                .unwrap_or(MAX_IDLE),
            Err(_) => MAX_IDLE,
        }
    }

    /// One unit of work on one run (claimed through its due entry at `at`),
    /// persisted before returning.
    async fn step(&self, at: Timestamp, id: RunId) {
        let run = match self.store.get_run(id) {
            Ok(run) => run,
            Err(e) => {
                tracing::error!(run_id = %id, error = %e, "cannot load run");
                return;
            }
        };
        let result = match run {
            // An entry a crash left behind; the run's own entry is elsewhere.
            None => self.store.forget_due(at, id).await,
            Some(run) if run.due_at != Some(at) => self.store.forget_due(at, id).await,
            Some(run) => match run.phase {
                Phase::Accepted | Phase::Starting => self.start(run).await,
                Phase::Tracking => self.poll(run).await,
                Phase::Terminal => self.deliver(run).await,
                Phase::Done => self.store.forget_due(at, id).await,
            },
        };
        if let Err(e) = result {
            tracing::error!(run_id = %id, error = %e, "cannot persist run; it will be retried");
        }
    }

    fn callbacks(route: Option<&RouteSettings>) -> Vec<String> {
        route
            .map(|r| r.callbacks.iter().map(|c| c.url.clone()).collect())
            .unwrap_or_default()
    }

    fn retry_at(
        &self,
        s: &SchedulerSettings,
        run: &Run,
        now: Timestamp,
        retry_after: Option<Duration>,
    ) -> Timestamp {
        let ours = backoff::exponential(run.failures + 1, s.retry_base, s.retry_max, 0.2);
        now.plus(backoff::honour_retry_after(
            ours,
            retry_after,
            MAX_PROVIDER_RETRY_AFTER,
        ))
    }

    /// The next poll: `poll_interval` at first, growing linearly with the
    /// run's age past `poll_slowdown_after`, capped at `max_poll_interval`.
    fn next_poll(s: &SchedulerSettings, run: &Run, now: Timestamp) -> Timestamp {
        let age = now.since(run.started_at.unwrap_or(run.created_at));
        let interval = backoff::poll_interval(
            age,
            s.poll_interval,
            s.poll_slowdown_after,
            s.max_poll_interval,
        );
        now.plus(backoff::spread(interval, 0.1))
    }

    /// Ends the run as `timed_out` if its deadline has passed.
    fn expire(run: &mut Run, now: Timestamp, callbacks: &[String]) -> bool {
        if now < run.deadline {
            return false;
        }
        let limit = run.deadline.since(run.created_at);
        tracing::warn!(run_id = %run.id, phase = ?run.phase, "run timed out");
        run.time_out(now, limit, callbacks);
        true
    }

    /// The run's provider is gone from the config (a reload may bring it
    /// back): retry with backoff until the run times out.
    async fn provider_missing(
        &self,
        s: &SchedulerSettings,
        mut run: Run,
        now: Timestamp,
    ) -> Result<(), crate::store::StoreError> {
        let at = self.retry_at(s, &run, now, None);
        let error = format!("provider {:?} is not configured", run.provider);
        tracing::error!(run_id = %run.id, %error, "cannot work on run");
        run.failed_call(now, error, at);
        self.store.save_run(&run).await
    }

    async fn start(&self, mut run: Run) -> Result<(), crate::store::StoreError> {
        let topo = self.topology.load();
        let s = &topo.settings.scheduler;
        let route = topo.settings.routes.get(&run.route);
        let now = Timestamp::now();
        if Self::expire(&mut run, now, &Self::callbacks(route)) {
            return self.store.save_run(&run).await;
        }
        let Some(provider) = topo.providers.get(&run.provider).cloned() else {
            return self.provider_missing(s, run, now).await;
        };
        // Persist the intent first: after a crash the start is repeated with
        // the same idempotency key, never skipped.
        let guard = self.retry_at(s, &run, now, None);
        run.begin_start(now, guard);
        self.store.save_run(&run).await?;

        let req = StartRequest {
            run_id: run.id,
            workflow_id: &run.workflow_id,
            inputs: &run.inputs,
        };
        let result = provider.start(req).await;
        let now = Timestamp::now();
        match result {
            Ok(started) => {
                self.provider_answered(&run.provider);
                tracing::info!(run_id = %run.id, vendor_run_id = %started.vendor_run_id, "run started");
                let next = Self::next_poll(s, &run, now);
                run.started(now, started.vendor_run_id, started.observation, next);
            }
            Err(e @ (ProviderError::Transient { .. } | ProviderError::Unauthorized { .. })) => {
                self.provider_failed(s, &mut run, now, "start", e);
            }
            Err(ProviderError::Rejected { status, body }) => {
                tracing::warn!(run_id = %run.id, provider = %run.provider, http_status = status, "vendor rejected the start");
                let error = json!({
                    "code": "START_REJECTED",
                    "message": format!("the provider refused to start the run (HTTP {status})"),
                    "http_status": status,
                    "vendor_error": body,
                });
                let obs = Observation {
                    status: RunStatus::Failed,
                    raw_status: None,
                    output: None,
                    error: Some(error),
                };
                run.finish(now, obs, &Self::callbacks(route));
            }
        }
        self.store.save_run(&run).await
    }

    async fn poll(&self, mut run: Run) -> Result<(), crate::store::StoreError> {
        let topo = self.topology.load();
        let s = &topo.settings.scheduler;
        let callbacks = Self::callbacks(topo.settings.routes.get(&run.route));
        let now = Timestamp::now();
        if Self::expire(&mut run, now, &callbacks) {
            return self.store.save_run(&run).await;
        }
        let (Some(provider), Some(vendor_id)) = (
            topo.providers.get(&run.provider).cloned(),
            run.vendor_run_id.clone(),
        ) else {
            return self.provider_missing(s, run, now).await;
        };
        let req = PollRequest {
            workflow_id: &run.workflow_id,
            vendor_run_id: &vendor_id,
        };
        let result = provider.poll(req).await;
        let now = Timestamp::now();
        match result {
            Ok(obs) => {
                self.provider_answered(&run.provider);
                if obs.status.is_terminal() {
                    tracing::info!(run_id = %run.id, status = obs.status.as_str(), "run finished");
                }
                let next = Self::next_poll(s, &run, now);
                run.observed(now, obs, next, &callbacks);
            }
            Err(e @ (ProviderError::Transient { .. } | ProviderError::Unauthorized { .. })) => {
                self.provider_failed(s, &mut run, now, "poll", e);
            }
            Err(ProviderError::Rejected {
                status: status @ (404 | 410),
                body,
            }) => {
                let obs = Observation {
                    status: RunStatus::Failed,
                    raw_status: run.raw_status.clone(),
                    output: None,
                    error: Some(json!({
                        "code": "VENDOR_RUN_NOT_FOUND",
                        "message": format!("the provider no longer knows this run (HTTP {status})"),
                        "vendor_error": body,
                    })),
                };
                run.finish(now, obs, &callbacks);
            }
            Err(e @ ProviderError::Rejected { .. }) => {
                // Any other 4xx on a status check: the run may still be
                // fine; keep trying with backoff until the run times out.
                self.provider_failed(s, &mut run, now, "poll", e);
            }
        }
        self.store.save_run(&run).await
    }

    /// A provider call succeeded: a credential problem of its provider is over.
    fn provider_answered(&self, provider: &str) {
        if let Some(p) = self.health.provider_ok(provider) {
            tracing::info!(
                provider,
                failures = p.failures,
                "vendor accepts our credentials again"
            );
        }
    }

    /// A provider call failed in a way worth retrying: records it in the
    /// run's `last_error`, logs it (at most once per provider and kind per
    /// [`VENDOR_LOG_EVERY`]), reports refused credentials to [`Health`], and
    /// schedules the retry with a growing backoff (never past the deadline).
    fn provider_failed(
        &self,
        s: &SchedulerSettings,
        run: &mut Run,
        now: Timestamp,
        call: &'static str,
        e: ProviderError,
    ) {
        let kind = e.kind();
        let (detail, retry_after, http_status) = match e {
            ProviderError::Transient {
                detail,
                retry_after,
                ..
            } => (detail, retry_after, None),
            ProviderError::Unauthorized { status, detail } => {
                self.health
                    .provider_refused(&run.provider, status, detail.clone());
                (detail, None, Some(status))
            }
            ProviderError::Rejected { status, .. } => (
                format!("{call} refused with HTTP {status}"),
                None,
                Some(status),
            ),
        };
        let key = format!("{}/{}", run.provider, kind.as_str());
        if let Some(suppressed) = self.vendor_log.allow(&key) {
            if kind == FailureKind::Unauthorized {
                tracing::error!(
                    provider = %run.provider, run_id = %run.id, call, kind = kind.as_str(),
                    http_status, suppressed, error = %detail,
                    "vendor refused our credentials; retrying with backoff until the run's deadline"
                );
            } else {
                tracing::warn!(
                    provider = %run.provider, run_id = %run.id, call, kind = kind.as_str(),
                    http_status, suppressed, error = %detail,
                    "vendor call failed; retrying with backoff"
                );
            }
        }
        let at = self.retry_at(s, run, now, retry_after);
        run.failed_call(now, detail, at);
    }

    async fn deliver(&self, mut run: Run) -> Result<(), crate::store::StoreError> {
        let topo = self.topology.load();
        let ds = topo.settings.delivery.clone();
        let route = topo.settings.routes.get(&run.route);
        let now = Timestamp::now();
        let body = delivery::event_body(&run);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, d) in run.deliveries.iter().enumerate() {
            if !d.is_due(now) {
                continue;
            }
            let key = route
                .and_then(|r| r.callbacks.iter().find(|c| c.url == d.url))
                .map(|c| c.key.clone());
            let (client, url, id, body, timeout) = (
                self.client.clone(),
                d.url.clone(),
                d.webhook_id.clone(),
                body.clone(),
                ds.timeout,
            );
            tasks.spawn(async move {
                let outcome = match key {
                    Some(key) => {
                        Some(delivery::attempt(&client, &url, &key, &id, body, timeout).await)
                    }
                    None => None,
                };
                (i, outcome)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((i, outcome)) = joined else { continue };
            let now = Timestamp::now();
            let Some(d) = run.deliveries.get_mut(i) else {
                continue;
            };
            match outcome {
                Some(o) => {
                    let next = if o.succeeded {
                        None
                    } else {
                        delivery::next_attempt(now, d.attempts.len() + 1, &o, &ds)
                    };
                    if o.succeeded {
                        tracing::info!(run_id = %run.id, url = %redact_url(&d.url), "callback delivered");
                    } else if next.is_none() {
                        tracing::warn!(run_id = %run.id, url = %redact_url(&d.url), "callback dead after last attempt");
                    }
                    d.record(o.attempt, o.succeeded, next);
                }
                None => {
                    let attempt = crate::run::Attempt {
                        at: now,
                        duration_ms: 0,
                        status_code: None,
                        error: Some("callback is no longer configured for this route".into()),
                        response: None,
                    };
                    d.record(attempt, false, None);
                }
            }
        }
        run.settle_deliveries(Timestamp::now());
        self.store.save_run(&run).await
    }
}
