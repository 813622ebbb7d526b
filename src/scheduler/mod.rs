//! Drives every unfinished run: claims due runs from the store's due index,
//! works on each (start, poll, or deliver callbacks) with bounded
//! concurrency, and persists every transition a restart needs before
//! moving on (issue 10): the accepted run (ingress), `starting` before a
//! start without an idempotency key, `started`, every status change or
//! failure, the terminal state (before its callbacks are sent, in the same
//! step), delivery results. A poll that changed nothing is a quiet save
//! (memory only); an idempotent start records nothing before its call
//! (after a crash the run is still `accepted` and the start repeats with
//! the same key).
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

mod deliver;
pub mod lateness;
mod operator;
mod steps;

pub use operator::ModifyError;
#[cfg(test)]
mod tests;

use crate::backoff;
use crate::health::Health;
use crate::run::{Phase, Run, RunId};
use crate::store::{Store, StoreError};
use crate::throttle::Throttle;
use crate::time::Timestamp;
use crate::topology::SharedTopology;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a provider's `Retry-After` may push a retry out.
pub(super) const MAX_PROVIDER_RETRY_AFTER: Duration = Duration::from_secs(3600);
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
/// How often the sweeper proves it is alive (the watchdog and `/readyz`
/// look at its heartbeat), independent of how often it sweeps.
const SWEEPER_BEAT: Duration = Duration::from_secs(1);
/// Test hook, inert unless set: after this long (a duration like `2s`) the
/// scheduler loop stops beating and claiming, as a stuck loop would, so
/// tests can watch `/readyz` and the systemd watchdog react.
pub const TEST_STALL_ENV: &str = "RUNBRIDGE_TEST_STALL_SCHEDULER_AFTER";
/// A failing callback endpoint is logged at most once per route per this
/// interval (with the count suppressed since).
const DELIVERY_LOG_EVERY: Duration = Duration::from_secs(10);
/// Backoff of a failed save (exponential with jitter): the first retry
/// comes soon, a lasting fault costs one save per run every few seconds.
const PERSIST_RETRY_FIRST: Duration = Duration::from_millis(100);
const PERSIST_RETRY_MAX: Duration = Duration::from_secs(4);
/// How often the loop looks at a faulted store again before claiming.
const FAULT_RECHECK_FIRST: Duration = Duration::from_millis(100);
const FAULT_RECHECK_MAX: Duration = Duration::from_secs(2);
/// Store trouble is logged once per this interval, with a count.
const STORE_LOG_EVERY: Duration = Duration::from_secs(10);
/// Run ids kept for the shutdown message about unpersisted transitions.
const UNPERSISTED_KEPT: usize = 20;

/// Where the scheduler reads the time: the wall clock, or a test's.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

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
    /// The time source (a controllable clock in unit tests).
    clock: Clock,
    /// How late steps begin against their due time.
    lateness: lateness::Lateness,
    /// When this scheduler was made (on its clock): an `accepted` run
    /// created earlier may have had an unrecorded idempotent start in
    /// flight when an earlier process died.
    booted_at: Timestamp,
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
    /// Per callback endpoint: limiter and breaker (in memory, empty at start).
    endpoints: crate::delivery::endpoint::Endpoints,
    /// Endpoints an operator paused (their deliveries are held).
    paused: Arc<crate::delivery::pause::Paused>,
    /// Reports dead deliveries (metric, log, optional operator alert).
    alerts: Arc<crate::delivery::alert::Alerts>,
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
        Self::with_clock(
            store,
            topology,
            client,
            wake,
            health,
            Arc::new(Timestamp::now),
        )
    }

    /// A scheduler reading the time from `clock` (unit tests control it).
    pub fn with_clock(
        store: Arc<dyn Store>,
        topology: SharedTopology,
        client: reqwest::Client,
        wake: Arc<Notify>,
        health: Arc<Health>,
        clock: Clock,
    ) -> Arc<Self> {
        let concurrency = topology.load().settings.scheduler.concurrency;
        let alerts = Arc::new(crate::delivery::alert::Alerts::new(
            topology.clone(),
            client.clone(),
        ));
        Arc::new(Scheduler {
            paused: Default::default(),
            alerts,
            booted_at: clock(),
            clock,
            lateness: lateness::Lateness::default(),
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
            endpoints: Default::default(),
            vendor_log: Throttle::new(VENDOR_LOG_EVERY),
            delivery_log: Throttle::new(DELIVERY_LOG_EVERY),
            stall_at: std::env::var(TEST_STALL_ENV)
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok())
                .map(|d| tokio::time::Instant::now() + d),
        })
    }

    /// The current time as this scheduler sees it.
    fn now(&self) -> Timestamp {
        (self.clock)()
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
            let now = self.now();
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

    /// Removes expired dedupe records and finished runs past
    /// `storage.retention` in small slices until `cancel` fires, so the
    /// store stays bounded under steady load.
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
            // Retention: finished runs older than storage.retention, in a
            // bounded slice per pass (read per pass, so a reload applies).
            let retention = self.topology.load().settings.storage.retention;
            let before = self.now().minus(retention);
            match self.store.sweep_finished(before, SWEEP_BUDGET).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("runbridge_runs_removed_total").increment(n as u64);
                    tracing::debug!(removed = n, "finished runs past retention removed");
                }
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
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
    /// Step lateness since the last call (the benchmark reads it).
    pub fn take_lateness(&self) -> lateness::LatenessSummary {
        self.lateness.take()
    }

    async fn step(&self, at: Timestamp, id: RunId) {
        self.lateness.record(self.now().since(at));
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
            Some(run) if run.due_at() != Some(at) => self.store.forget_due(at, id).await,
            Some(run) if run.phase() == Phase::Done => self.store.forget_due(at, id).await,
            Some(run) => self.work(run).await,
        };
        if let Err(e) = result {
            if let Some(suppressed) = self.store_log.allow("step") {
                tracing::error!(run_id = %id, error = %e, suppressed, "cannot persist run; it resumes from its last durable state");
            }
        }
    }

    /// Works on a claimed run by its phase. A start that found a vendor
    /// run to cancel (a repeated or reconciled start) asks for the cancel
    /// at once; a step that ended the run sends the callbacks due now
    /// right after the terminal state is durable, still holding the claim,
    /// instead of waiting for the loop to claim the run again.
    async fn work(&self, run: Run) -> Result<(), StoreError> {
        let mut run = match run.phase() {
            Phase::Accepted | Phase::Starting => self.start(run).await?,
            Phase::Tracking => self.track(run).await?,
            Phase::Terminal | Phase::Done => return self.deliver(run).await.map(drop),
        };
        if run.phase() == Phase::Tracking && run.cancel_requested() {
            run = self.cancel(run).await?;
        }
        if run.phase() == Phase::Terminal && run.deliveries().iter().any(|d| d.is_due(self.now())) {
            self.deliver(run).await?;
        }
        Ok(())
    }

    /// [`Scheduler::persist`], handing the run back (a step's last save).
    async fn saved(&self, mut run: Run) -> Result<Run, StoreError> {
        self.persist(&mut run).await?;
        Ok(run)
    }

    /// Saves what a step made of `loaded` (the run as the step found it):
    /// a change of quiet fields only ([`Run::changed_only_quietly`]: a poll
    /// whose answer changed nothing, a replan that moves only due and poll
    /// times) goes to [`Store::save_quiet`], which a restart does not need;
    /// anything else is persisted durably.
    async fn saved_after(&self, mut run: Run, loaded: &Run) -> Result<Run, StoreError> {
        self.persist_as(&mut run, Some(loaded)).await?;
        Ok(run)
    }

    /// Persists a transition the step has already acted on. A failed save
    /// is retried with backoff while the run stays claimed, until it
    /// succeeds or shutdown: the vendor call or callback that produced this
    /// state is never repeated because a save failed.
    async fn persist(&self, run: &mut Run) -> Result<(), StoreError> {
        self.persist_as(run, None).await
    }

    /// [`Scheduler::persist`], with `save_quiet` when `run` differs from
    /// `loaded` only quietly.
    async fn persist_as(&self, run: &mut Run, loaded: Option<&Run>) -> Result<(), StoreError> {
        let quiet = loaded.is_some_and(|l| run.changed_only_quietly(l));
        let mut attempt = 0u32;
        loop {
            let saved = if quiet {
                self.store.save_quiet(run).await
            } else {
                self.store.save_run(run).await
            };
            let error = match saved {
                Ok(()) => {
                    // The step that ended the run stamps finished_at with the
                    // same instant as its update: count each run once, durable.
                    if run.status().is_terminal() && run.finished_at() == Some(run.updated_at()) {
                        metrics::counter!("runbridge_runs_total", "status" => run.status().as_str())
                            .increment(1);
                    }
                    if attempt > 0 {
                        tracing::debug!(run_id = %run.id(), retries = attempt, "run persisted after retries");
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            if matches!(error, StoreError::Closed) || self.stopping.is_cancelled() {
                self.gave_up(run.id());
                return Err(error);
            }
            attempt = attempt.saturating_add(1);
            if let Some(suppressed) = self.store_log.allow("persist") {
                tracing::warn!(
                    run_id = %run.id(),
                    %error,
                    suppressed,
                    "cannot persist a run transition; retrying the save with backoff (the step is not redone)"
                );
            }
            let delay = backoff::exponential(attempt, PERSIST_RETRY_FIRST, PERSIST_RETRY_MAX, 0.3);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stopping.cancelled() => {
                    self.gave_up(run.id());
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
}
