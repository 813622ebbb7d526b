//! Drives every unfinished run: claims due runs from the store's due index,
//! works on each (start, poll, or deliver callbacks) with bounded
//! concurrency, and persists every transition before moving on.
//!
//! Idle means asleep until the earliest due time or a wake-up (a new run, a
//! finished step). A restart needs no recovery pass: every unfinished run,
//! including one whose start was in flight, still has its due entry.
//!
//! Store faults: a transition that fails to persist after a vendor call or a
//! callback keeps its claim and retries the save with backoff
//! ([`Scheduler::persist`]) until it succeeds or shutdown; the step is never
//! redone because a save failed. While the store reports a fault no new runs
//! are claimed.

use crate::backoff;
use crate::config::{RouteSettings, SchedulerSettings};
use crate::delivery;
use crate::health::Health;
use crate::providers::{FailureKind, PollRequest, ProviderError, StartRequest};
use crate::run::{Observation, Phase, Run, RunId, RunStatus};
use crate::secret::redact_url;
use crate::store::{Store, StoreError};
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
/// How often the sweeper proves it is alive (the watchdog and `/readyz`
/// look at its heartbeat), independent of how often it sweeps.
const SWEEPER_BEAT: Duration = Duration::from_secs(1);
/// Test hook, inert unless set: after this long (a duration like `2s`) the
/// scheduler loop stops beating and claiming, as a stuck loop would, so
/// tests can watch `/readyz` and the systemd watchdog react.
pub const TEST_STALL_ENV: &str = "RUNBRIDGE_TEST_STALL_SCHEDULER_AFTER";
const SWEEP_BUDGET: usize = 10_000;
/// Backoff of a failed save (exponential with jitter): the first retry
/// comes soon, a lasting fault costs one save per run every few seconds.
const PERSIST_RETRY_FIRST: Duration = Duration::from_millis(100);
const PERSIST_RETRY_MAX: Duration = Duration::from_secs(4);
/// How often the loop looks at a faulted store again before claiming.
const FAULT_RECHECK_FIRST: Duration = Duration::from_millis(100);
const FAULT_RECHECK_MAX: Duration = Duration::from_secs(2);
/// Store trouble is logged once per this interval, with a count.
const STORE_LOG_EVERY: Duration = Duration::from_secs(10);
/// A failing callback endpoint is logged at most once per route per this
/// interval (with the count suppressed since).
const DELIVERY_LOG_EVERY: Duration = Duration::from_secs(10);
/// Run ids kept for the shutdown message about unpersisted transitions.
const UNPERSISTED_KEPT: usize = 20;

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
    /// Cancelled when the loop stops: ends the save retries of steps.
    stopping: CancellationToken,
    /// Throttles store-trouble log lines (one per interval, with a count).
    store_log: Throttle,
    /// Transitions given up at shutdown: how many, and the first run ids.
    unpersisted: Mutex<(usize, Vec<RunId>)>,
    /// Throttles vendor-failure log lines per provider and kind.
    vendor_log: Throttle,
    /// Throttles "callback failed, will retry" lines per route.
    delivery_log: Throttle,
    /// When the test hook [`TEST_STALL_ENV`] makes the loop stall.
    stall_at: Option<tokio::time::Instant>,
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
            stopping: CancellationToken::new(),
            store_log: Throttle::new(STORE_LOG_EVERY),
            unpersisted: Mutex::new((0, Vec::new())),
            vendor_log: Throttle::new(VENDOR_LOG_EVERY),
            delivery_log: Throttle::new(DELIVERY_LOG_EVERY),
            stall_at: std::env::var(TEST_STALL_ENV)
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok())
                .map(|d| tokio::time::Instant::now() + d),
        })
    }

    /// Transitions that could not be persisted before shutdown: how many,
    /// and the first few run ids (for the exit message; those runs resume
    /// from their last durable state on the next start).
    pub fn unpersisted(&self) -> (usize, Vec<RunId>) {
        self.unpersisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Claims and works due runs until `cancel` fires. In-flight steps are
    /// left to finish; await [`Scheduler::drain`] for them.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let _stop = self.stopping.clone().drop_guard();
        let mut fault_wait = Duration::ZERO;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            if self
                .stall_at
                .is_some_and(|at| tokio::time::Instant::now() >= at)
            {
                tracing::warn!("{TEST_STALL_ENV} is set: the scheduler loop stalls now");
                cancel.cancelled().await;
                break;
            }
            self.health.beat("scheduler");
            if let Some(fault) = self.store.fault() {
                // Claim nothing while the store cannot write: a step would
                // only call a vendor and then fail to record it.
                fault_wait = (fault_wait * 2).clamp(FAULT_RECHECK_FIRST, FAULT_RECHECK_MAX);
                if let Some(suppressed) = self.store_log.allow("claims") {
                    tracing::warn!(
                        since = %fault.since,
                        error = %fault.error,
                        suppressed,
                        "store is faulted: claiming no runs until it recovers"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(fault_wait) => {}
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
            fault_wait = Duration::ZERO;
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
                            // Every line logged while working on the run carries its id.
                            let span = tracing::info_span!("run", run_id = %id);
                            self.tracker.spawn(tracing::Instrument::instrument(
                                async move {
                                    claim.scheduler.step(at, id).await;
                                    drop(claim);
                                },
                                span,
                            ));
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
        let mut next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
        loop {
            self.health.beat("sweeper");
            tokio::select! {
                _ = tokio::time::sleep(SWEEPER_BEAT) => {}
                _ = cancel.cancelled() => break,
            }
            if tokio::time::Instant::now() < next_sweep {
                continue;
            }
            next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
            if self.store.fault().is_some() {
                continue;
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
                metrics::histogram!("runbridge_scheduler_lag_seconds")
                    .record(now.since(at).as_secs_f64());
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
            if let Some(suppressed) = self.store_log.allow("step") {
                tracing::error!(run_id = %id, error = %e, suppressed, "cannot persist run; it resumes from its last durable state");
            }
        }
    }

    /// Persists a transition the step has already acted on. A failed save
    /// is retried with backoff while the run stays claimed, until it
    /// succeeds or shutdown: the vendor call or callback that produced this
    /// state is never repeated because a save failed.
    async fn persist(&self, run: &Run) -> Result<(), StoreError> {
        let mut attempt = 0u32;
        loop {
            let error = match self.store.save_run(run).await {
                Ok(()) => {
                    if attempt > 0 {
                        tracing::debug!(run_id = %run.id, retries = attempt, "run persisted after retries");
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            if matches!(error, StoreError::Closed) || self.stopping.is_cancelled() {
                self.gave_up(run.id);
                return Err(error);
            }
            attempt = attempt.saturating_add(1);
            if let Some(suppressed) = self.store_log.allow("persist") {
                tracing::warn!(
                    run_id = %run.id,
                    %error,
                    suppressed,
                    "cannot persist a run transition; retrying the save with backoff (the step is not redone)"
                );
            }
            let delay = backoff::exponential(attempt, PERSIST_RETRY_FIRST, PERSIST_RETRY_MAX, 0.3);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stopping.cancelled() => {
                    self.gave_up(run.id);
                    return Err(error);
                }
            }
        }
    }

    fn gave_up(&self, id: RunId) {
        let mut u = self.unpersisted.lock().unwrap_or_else(|p| p.into_inner());
        u.0 += 1;
        if u.1.len() < UNPERSISTED_KEPT {
            u.1.push(id);
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
        metrics::counter!("runbridge_runs_total", "status" => "timed_out").increment(1);
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
        self.persist(&run).await
    }

    async fn start(&self, mut run: Run) -> Result<(), crate::store::StoreError> {
        let topo = self.topology.load();
        let s = &topo.settings.scheduler;
        let route = topo.settings.routes.get(&run.route);
        let now = Timestamp::now();
        if Self::expire(&mut run, now, &Self::callbacks(route)) {
            return self.persist(&run).await;
        }
        let Some(provider) = topo.providers.get(&run.provider).cloned() else {
            return self.provider_missing(s, run, now).await;
        };
        // Persist the intent first: after a crash the start is repeated with
        // the same idempotency key, never skipped.
        let guard = self.retry_at(s, &run, now, None);
        run.begin_start(now, guard);
        self.persist(&run).await?;

        let req = StartRequest {
            run_id: run.id,
            workflow_id: &run.workflow_id,
            inputs: &run.inputs,
        };
        let t0 = std::time::Instant::now();
        let result = provider.start(req).await;
        vendor_call(&run.provider, "start", &result, t0);
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
                metrics::counter!("runbridge_runs_total", "status" => "failed").increment(1);
                run.finish(now, obs, &Self::callbacks(route));
            }
        }
        self.persist(&run).await
    }

    async fn poll(&self, mut run: Run) -> Result<(), crate::store::StoreError> {
        let topo = self.topology.load();
        let s = &topo.settings.scheduler;
        let callbacks = Self::callbacks(topo.settings.routes.get(&run.route));
        let now = Timestamp::now();
        if Self::expire(&mut run, now, &callbacks) {
            return self.persist(&run).await;
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
        let t0 = std::time::Instant::now();
        let result = provider.poll(req).await;
        vendor_call(&run.provider, "poll", &result, t0);
        let now = Timestamp::now();
        match result {
            Ok(obs) => {
                self.provider_answered(&run.provider);
                if obs.status.is_terminal() {
                    tracing::info!(run_id = %run.id, status = obs.status.as_str(), "run finished");
                    metrics::counter!("runbridge_runs_total", "status" => obs.status.as_str())
                        .increment(1);
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
                metrics::counter!("runbridge_runs_total", "status" => "failed").increment(1);
                run.finish(now, obs, &callbacks);
            }
            Err(e @ ProviderError::Rejected { .. }) => {
                // Any other 4xx on a status check: the run may still be
                // fine; keep trying with backoff until the run times out.
                self.provider_failed(s, &mut run, now, "poll", e);
            }
        }
        self.persist(&run).await
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
                    metrics::histogram!("runbridge_delivery_attempt_seconds")
                        .record(o.attempt.duration_ms as f64 / 1000.0);
                    let reason = o
                        .attempt
                        .status_code
                        .map(|c| format!("HTTP {c}"))
                        .or_else(|| o.attempt.error.clone())
                        .unwrap_or_else(|| "failed".into());
                    if o.succeeded {
                        metrics::counter!("runbridge_deliveries_total", "outcome" => "delivered")
                            .increment(1);
                        tracing::info!(run_id = %run.id, url = %redact_url(&d.url), "callback delivered");
                    } else if let Some(at) = next {
                        metrics::counter!("runbridge_deliveries_total", "outcome" => "retry")
                            .increment(1);
                        if let Some(suppressed) = self.delivery_log.allow(&run.route) {
                            tracing::warn!(
                                run_id = %run.id,
                                url = %redact_url(&d.url),
                                attempt = d.attempts.len() + 1,
                                reason = %reason,
                                next_attempt = %at,
                                suppressed,
                                "callback attempt failed; will retry"
                            );
                        }
                    } else {
                        let outcome = if o.gone { "gone" } else { "dead" };
                        metrics::counter!("runbridge_deliveries_total", "outcome" => outcome)
                            .increment(1);
                        tracing::warn!(run_id = %run.id, url = %redact_url(&d.url), reason = %reason, "callback dead after last attempt");
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
        self.persist(&run).await
    }
}

/// Counts a vendor call and its latency by provider, call and result.
fn vendor_call<T>(
    provider: &str,
    call: &'static str,
    result: &Result<T, ProviderError>,
    t0: std::time::Instant,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(ProviderError::Transient { .. }) => "transient",
        Err(ProviderError::Unauthorized { .. }) => "unauthorized",
        Err(ProviderError::Rejected { .. }) => "rejected",
    };
    let provider = provider.to_string();
    metrics::counter!("runbridge_vendor_calls_total", "provider" => provider.clone(), "call" => call, "result" => outcome)
        .increment(1);
    metrics::histogram!("runbridge_vendor_call_seconds", "provider" => provider, "call" => call)
        .record(t0.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    //! The save backoff with an error-injecting store; the real disk fault
    //! is in tests/storefault.rs.
    use super::*;
    use crate::providers::{Provider, Started};
    use crate::run::RunSpec;
    use crate::store::sled::SledStore;
    use crate::store::{Created, DedupeKey, RunQuery};
    use crate::topology::Topology;
    use async_trait::async_trait;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A sled store whose `save_run` fails while its script says so.
    struct Flaky {
        inner: SledStore,
        script: Mutex<VecDeque<bool>>,
        saves: AtomicUsize,
    }

    #[async_trait]
    impl Store for Flaky {
        async fn create_run(
            &self,
            run: &Run,
            dedupe: Option<DedupeKey>,
        ) -> Result<Created, StoreError> {
            self.inner.create_run(run, dedupe).await
        }
        async fn save_run(&self, run: &Run) -> Result<(), StoreError> {
            self.saves.fetch_add(1, Ordering::SeqCst);
            if self.script.lock().unwrap().pop_front() == Some(true) {
                return Err(StoreError::Unavailable("injected".into()));
            }
            self.inner.save_run(run).await
        }
        fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
            self.inner.get_run(id)
        }
        fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>, StoreError> {
            self.inner.list_runs(q)
        }
        fn due(
            &self,
            until: Timestamp,
            limit: usize,
            skip: &dyn Fn(RunId) -> bool,
        ) -> Result<Vec<(Timestamp, RunId)>, StoreError> {
            self.inner.due(until, limit, skip)
        }
        fn unfinished_at_open(&self) -> usize {
            0
        }
        async fn forget_due(&self, at: Timestamp, id: RunId) -> Result<(), StoreError> {
            self.inner.forget_due(at, id).await
        }
        async fn sweep_dedupe(&self, now: Timestamp, budget: usize) -> Result<usize, StoreError> {
            self.inner.sweep_dedupe(now, budget).await
        }
        async fn close(&self) -> Result<(), StoreError> {
            self.inner.close().await
        }
    }

    /// A vendor that counts its starts.
    #[derive(Default)]
    struct Counting {
        starts: AtomicUsize,
    }

    #[async_trait]
    impl Provider for Counting {
        async fn start(&self, _: StartRequest<'_>) -> Result<Started, ProviderError> {
            self.starts.fetch_add(1, Ordering::SeqCst);
            Ok(Started {
                vendor_run_id: "v1".into(),
                observation: Observation {
                    status: RunStatus::Running,
                    raw_status: None,
                    output: None,
                    error: None,
                },
            })
        }
        async fn poll(&self, _: PollRequest<'_>) -> Result<Observation, ProviderError> {
            Err(ProviderError::Transient {
                kind: crate::providers::FailureKind::Other,
                detail: "not used".into(),
                retry_after: None,
            })
        }
    }

    /// A scheduler over a flaky store with `script`, a counting vendor `p`,
    /// and one accepted run due now.
    async fn setup(
        dir: &std::path::Path,
        script: &[bool],
    ) -> (Arc<Scheduler>, Arc<Flaky>, Arc<Counting>, Run) {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str("", config::FileFormat::Toml))
            .build()
            .unwrap();
        let settings = crate::config::Settings::from_config(cfg).unwrap();
        let client = reqwest::Client::new();
        let vendor = Arc::new(Counting::default());
        let mut topo = Topology::new(settings, &client);
        topo.providers.insert("p".into(), vendor.clone());
        let store = Arc::new(Flaky {
            inner: SledStore::open(dir, 1 << 20).unwrap(),
            script: Mutex::new(script.iter().copied().collect()),
            saves: AtomicUsize::new(0),
        });
        let now = Timestamp::now();
        let run = Run::accepted(
            RunId::new(),
            RunSpec::example(),
            now,
            now.plus(Duration::from_secs(3600)),
        );
        store.create_run(&run, None).await.unwrap();
        let scheduler = Scheduler::new(
            store.clone(),
            crate::topology::shared(topo),
            client,
            Arc::new(Notify::new()),
            Arc::new(Health::default()),
        );
        (scheduler, store, vendor, run)
    }

    #[tokio::test]
    async fn a_failed_save_after_the_vendor_call_is_retried_not_the_call() {
        let dir = tempfile::tempdir().unwrap();
        // begin_start saves; the vendor is called; the next 3 saves fail.
        let (s, store, vendor, run) = setup(dir.path(), &[false, true, true, true]).await;
        let t0 = std::time::Instant::now();
        s.step(run.due_at.unwrap(), run.id).await;
        let took = t0.elapsed();
        assert_eq!(
            vendor.starts.load(Ordering::SeqCst),
            1,
            "start not repeated"
        );
        assert_eq!(store.saves.load(Ordering::SeqCst), 5);
        let saved = store.get_run(run.id).unwrap().unwrap();
        assert_eq!(saved.phase, Phase::Tracking);
        assert_eq!(saved.vendor_run_id.as_deref(), Some("v1"));
        // 100 + 200 + 400 ms, +-30 %: backoff, not a tight loop.
        assert!(took >= Duration::from_millis(450), "retried after {took:?}");
        assert_eq!(s.unpersisted().0, 0);
    }

    #[tokio::test]
    async fn a_start_whose_intent_cannot_be_saved_calls_no_vendor() {
        let dir = tempfile::tempdir().unwrap();
        let (s, store, vendor, run) = setup(dir.path(), &[true; 100]).await;
        // Shutdown while the save of the intent keeps failing.
        let stopper = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stopper.stopping.cancel();
        });
        s.step(run.due_at.unwrap(), run.id).await;
        assert_eq!(
            vendor.starts.load(Ordering::SeqCst),
            0,
            "persist before act"
        );
        let saves = store.saves.load(Ordering::SeqCst);
        assert!((1..=4).contains(&saves), "{saves} saves in 300 ms: backoff");
        assert_eq!(s.unpersisted(), (1, vec![run.id]));
        let stored = store.get_run(run.id).unwrap().unwrap();
        assert_eq!(stored.phase, Phase::Accepted, "last durable state kept");
    }
}
