//! The steps the scheduler takes on one claimed run: start (or reconcile an
//! interrupted start), poll, fetch output, cancel (callbacks: `deliver.rs`). Every
//! vendor detail stays behind the provider interface; every outcome is a
//! transition of [`Run`], persisted before the step ends.

use super::{Scheduler, MAX_PROVIDER_RETRY_AFTER};
use crate::backoff;
use crate::config::{RouteSettings, SchedulerSettings};
use crate::providers::{
    CancelOutcome, CancelSupport, FailureKind, PollRequest, ProviderError, ReconcileRequest,
    Reconciled, StartRequest,
};
use crate::run::{IllegalTransition, Phase, Run, RunStatus, Target};
use crate::store::{RunQuery, StoreError};
use crate::time::Timestamp;
use serde_json::json;
use std::time::Duration;

/// Runs examined for vendor run ids other runs own (reconciliation).
const OWNERS_SCANNED: usize = 1_000;

/// What other runs of a workflow claim (reconciliation).
#[derive(Default)]
struct Claims {
    /// Vendor run ids other runs track.
    owned: Vec<String>,
    /// Other runs starting without a vendor run id yet.
    starting: usize,
    /// Candidates of other runs that ended `start_uncertain`.
    contested: Vec<String>,
}

/// Logs a transition the run refused: a scheduler bug, never a crash.
fn checked(run: &Run, r: Result<(), IllegalTransition>) {
    if let Err(e) = r {
        tracing::error!(run_id = %run.id(), error = %e, "illegal run transition skipped");
    }
}

impl Scheduler {
    /// The callback targets of a route.
    pub(super) fn targets(route: Option<&RouteSettings>) -> Vec<Target> {
        route
            .map(|r| {
                r.callbacks
                    .iter()
                    .map(|c| Target {
                        url: c.url.clone(),
                        events: c.events.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn retry_at(
        &self,
        s: &SchedulerSettings,
        run: &Run,
        now: Timestamp,
        retry_after: Option<Duration>,
    ) -> Timestamp {
        let ours = backoff::exponential(run.failures() + 1, s.retry_base, s.retry_max, 0.2);
        now.plus(backoff::honour_retry_after(
            ours,
            retry_after,
            MAX_PROVIDER_RETRY_AFTER,
        ))
    }

    /// The next poll: `poll_interval` at first, growing linearly with the
    /// run's age past `poll_slowdown_after`, capped at `max_poll_interval`.
    fn next_poll(s: &SchedulerSettings, run: &Run, now: Timestamp) -> Timestamp {
        let age = now.since(run.started_at().unwrap_or(run.created_at()));
        let interval = backoff::poll_interval(
            age,
            s.poll_interval,
            s.poll_slowdown_after,
            s.max_poll_interval,
        );
        now.plus(backoff::spread(interval, 0.1))
    }

    /// Ends the run as `timed_out` if its deadline (or its waiting limit)
    /// has passed.
    fn expire(
        run: &mut Run,
        now: Timestamp,
        route: Option<&RouteSettings>,
        targets: &[Target],
    ) -> bool {
        if let (Some(since), Some(limit)) =
            (run.waiting_since(), route.and_then(|r| r.waiting_timeout))
        {
            if run.status() == RunStatus::Waiting && now >= since.plus(limit) {
                tracing::warn!(run_id = %run.id(), "run waited too long for a person; timed out");
                let r = run.waiting_timed_out(now, limit, targets);
                checked(run, r);
                return true;
            }
        }
        if now < run.deadline() {
            return false;
        }
        let limit = run.deadline().since(run.created_at());
        tracing::warn!(run_id = %run.id(), phase = ?run.phase(), "run timed out");
        let r = run.time_out(now, limit, targets);
        checked(run, r);
        true
    }

    /// The run's provider is gone from the config (a reload may bring it
    /// back): retry with backoff until the run times out.
    async fn provider_missing(
        &self,
        s: &SchedulerSettings,
        mut run: Run,
        now: Timestamp,
    ) -> Result<Run, StoreError> {
        let at = self.retry_at(s, &run, now, None);
        let error = format!("provider {:?} is not configured", run.provider());
        tracing::error!(run_id = %run.id(), %error, "cannot work on run");
        run.failed_call(now, error, at);
        self.saved(run).await
    }

    /// What other runs of the same provider and workflow claim: the vendor
    /// run ids they own, and how many of them are starting without a
    /// vendor run id yet (a start in flight, or interrupted too). Those may
    /// own any unowned candidate, so a single candidate is not proof that
    /// it is this run's: adopting it could track another run's vendor run
    /// (seen in `tests/crash_loop.rs` under CPU load, where several starts
    /// of one workflow were interrupted by the same kill). A run that
    /// ended `start_uncertain` keeps claiming its candidates (returned as
    /// contested): one of them is likely its own vendor run, so another run
    /// adopting it could track the wrong vendor run (seen in
    /// `tests/crash_loop.rs`: two interrupted starts, the first ends
    /// uncertain because the second is still starting, then the second
    /// found no claimant left and adopted the first one's vendor run).
    fn claims_elsewhere(&self, run: &Run) -> Result<Claims, StoreError> {
        let q = RunQuery {
            provider: Some(run.provider().to_string()),
            limit: OWNERS_SCANNED,
            ..Default::default()
        };
        let mut c = Claims::default();
        for r in self.store.list_runs(&q)? {
            if r.id() == run.id() || r.workflow_id() != run.workflow_id() {
                continue;
            }
            match r.vendor_run_id() {
                Some(v) => c.owned.push(v.clone()),
                None if r.phase() == Phase::Starting => c.starting += 1,
                None => {
                    if let Some(e) = r
                        .error()
                        .as_ref()
                        .filter(|e| e["code"] == "start_uncertain")
                    {
                        let listed = e["candidates"].as_array().into_iter().flatten();
                        c.contested
                            .extend(listed.filter_map(|v| v.as_str().map(str::to_string)));
                    }
                }
            }
        }
        Ok(c)
    }

    /// Whether an earlier start attempt of `run` may have created a vendor
    /// run: one recorded as unsure (a crash, a timeout, a 5xx), or, with an
    /// idempotent start (whose attempts are not recorded), an `accepted`
    /// run accepted before this process began: an earlier process may have
    /// been killed during its start. Such a run is not canceled locally:
    /// the start is repeated (same key: it returns the vendor run the lost
    /// attempt created, or creates one) and the vendor run is canceled.
    /// Assumes the wall clock does not step back across a restart.
    fn may_have_started(&self, run: &Run, idempotent: bool) -> bool {
        match run.phase() {
            Phase::Starting => run.start_unsure(),
            Phase::Accepted => idempotent && run.created_at() < self.booted_at,
            _ => false,
        }
    }

    pub(super) async fn start(&self, mut run: Run) -> Result<Run, StoreError> {
        let topo = self.topology.load();
        let s = &topo.settings.scheduler;
        let route = topo.settings.routes.get(run.route());
        let targets = Self::targets(route);
        let now = self.now();
        if Self::expire(&mut run, now, route, &targets) {
            return self.saved(run).await;
        }
        let provider = topo.providers.get(run.provider()).cloned();
        let idempotent = provider
            .as_ref()
            .is_some_and(|p| p.capabilities().idempotent_start);
        if run.cancel_requested() && !self.may_have_started(&run, idempotent) {
            // Nothing reached the vendor (or it certainly created nothing).
            tracing::info!(run_id = %run.id(), "run canceled before it started");
            let r = run.canceled(now, None, true, &targets);
            checked(&run, r);
            return self.saved(run).await;
        }
        let Some(provider) = provider else {
            return self.provider_missing(s, run, now).await;
        };
        let caps = provider.capabilities();
        if run.phase() == Phase::Starting && run.start_unsure() && !caps.idempotent_start {
            // An earlier attempt may have created a vendor run: find it
            // before starting again, never guess.
            if !caps.reconcile {
                tracing::warn!(run_id = %run.id(), "interrupted start cannot be reconciled (no runs listing)");
                let r = run.start_uncertain(now, Vec::new(), &targets);
                checked(&run, r);
                return self.saved(run).await;
            }
            let req = ReconcileRequest {
                workflow_id: run.workflow_id(),
                since: run.start_began_at().unwrap_or(run.created_at()),
            };
            let result = timed(run.provider(), "reconcile", provider.reconcile(req)).await;
            let now = self.now();
            match result {
                Ok(Reconciled::Candidates(found)) => {
                    let Claims {
                        owned,
                        starting: claimants,
                        contested,
                    } = match self.claims_elsewhere(&run) {
                        Ok(c) => c,
                        Err(e) => {
                            // Without the other runs' claims no candidate
                            // is safe to adopt: retry later.
                            tracing::warn!(run_id = %run.id(), error = %e, "cannot list runs for reconciliation");
                            let at = self.retry_at(s, &run, now, None);
                            run.failed_call(now, format!("reconcile: {e}"), at);
                            return self.saved(run).await;
                        }
                    };
                    let mine: Vec<String> =
                        found.into_iter().filter(|v| !owned.contains(v)).collect();
                    match mine.len() {
                        0 => {
                            tracing::info!(run_id = %run.id(), "interrupted start created no vendor run; starting again");
                            run.start_not_created();
                        }
                        1 if claimants > 0 || contested.contains(&mine[0]) => {
                            tracing::warn!(run_id = %run.id(), starting_elsewhere = claimants, contested = contested.contains(&mine[0]), "interrupted start is ambiguous: other starts of this workflow may own the one candidate; failing with start_uncertain");
                            let r = run.start_uncertain(now, mine, &targets);
                            checked(&run, r);
                            return self.saved(run).await;
                        }
                        1 => {
                            let vid = mine.into_iter().next().unwrap_or_default();
                            tracing::info!(run_id = %run.id(), vendor_run_id = %vid, "interrupted start reconciled: adopting the vendor run");
                            let next = Self::next_poll(s, &run, now);
                            let r = run.adopted(now, vid, next, &targets);
                            checked(&run, r);
                            return self.saved(run).await;
                        }
                        n => {
                            tracing::warn!(run_id = %run.id(), candidates = n, "interrupted start is ambiguous; failing with start_uncertain");
                            let r = run.start_uncertain(now, mine, &targets);
                            checked(&run, r);
                            return self.saved(run).await;
                        }
                    }
                }
                Ok(Reconciled::TooMany) => {
                    let r = run.start_uncertain(now, Vec::new(), &targets);
                    checked(&run, r);
                    return self.saved(run).await;
                }
                Err(
                    ProviderError::NotFound { detail, body }
                    | ProviderError::Rejected { detail, body },
                ) => {
                    let r = run.start_rejected(now, &detail, body, &targets);
                    checked(&run, r);
                    return self.saved(run).await;
                }
                Err(e) => {
                    self.provider_failed(s, &mut run, now, "reconcile", e);
                    return self.saved(run).await;
                }
            }
        }
        // A start without a reliable idempotency key persists its intent
        // first: after a crash that record is what reconciliation finds, so
        // the start is reconciled, never skipped nor blindly repeated. An
        // idempotent start needs no record (issue 10): after a crash the run
        // is still `accepted` (or `starting` from a failed attempt) and due,
        // and the start is repeated with the same key, which returns the
        // vendor run the lost attempt created. A new run is never started
        // before its create is durable: the store lists it as due only
        // then (see `Store::due`), so a kill -9 cannot take back a run
        // whose vendor run was started.
        let guard = self.retry_at(s, &run, now, None);
        if let Err(e) = run.begin_start(now, guard) {
            tracing::error!(run_id = %run.id(), error = %e, "illegal run transition skipped");
            return Ok(run);
        }
        if !caps.idempotent_start {
            self.persist(&mut run).await?;
        }

        let req = StartRequest {
            run_id: run.id(),
            workflow_id: run.workflow_id(),
            inputs: run.inputs(),
        };
        let result = timed(run.provider(), "start", provider.start(req)).await;
        let now = self.now();
        match result {
            Ok(started) => {
                self.provider_answered(run.provider());
                tracing::info!(run_id = %run.id(), vendor_run_id = %started.vendor_run_id, "run started");
                let next = Self::next_poll(s, &run, now);
                let r = run.started(
                    now,
                    started.vendor_run_id,
                    started.observation,
                    next,
                    &targets,
                );
                checked(&run, r);
            }
            Err(
                ProviderError::NotFound { detail, body } | ProviderError::Rejected { detail, body },
            ) => {
                tracing::warn!(run_id = %run.id(), provider = %run.provider(), %detail, "vendor rejected the start");
                let r = run.start_rejected(now, &detail, body, &targets);
                checked(&run, r);
            }
            Err(e) => {
                // A refusal or a limit answer created nothing; a timeout or
                // a vendor failure may have.
                if matches!(
                    e.kind(),
                    FailureKind::Busy | FailureKind::Unauthorized | FailureKind::RateLimited
                ) {
                    run.start_not_created();
                }
                self.provider_failed(s, &mut run, now, "start", e);
            }
        }
        self.saved(run).await
    }

    /// Tracking: delivers due `run.waiting` events, asks for a requested
    /// cancel, and polls when the poll is due.
    /// A step that changes only the run's quiet fields (a poll that
    /// changed nothing) is saved with `save_quiet`: a restart does not need it.
    pub(super) async fn track(&self, mut run: Run) -> Result<Run, StoreError> {
        let loaded = run.clone();
        let now = self.now();
        if run.deliveries().iter().any(|d| d.is_due(now)) {
            self.send_due(&mut run).await;
        }
        if run.cancel_requested() {
            return self.cancel(run).await;
        }
        if run.next_poll_at().is_none_or(|t| t <= self.now()) || now >= run.deadline() {
            return self.poll(run, &loaded).await;
        }
        run.replan(self.now());
        self.saved_after(run, &loaded).await
    }

    pub(super) async fn cancel(&self, mut run: Run) -> Result<Run, StoreError> {
        let topo = self.topology.load();
        let s = &topo.settings.scheduler;
        let targets = Self::targets(topo.settings.routes.get(run.route()));
        let now = self.now();
        let (Some(provider), Some(vendor_id)) = (
            topo.providers.get(run.provider()).cloned(),
            run.vendor_run_id().clone(),
        ) else {
            return self.provider_missing(s, run, now).await;
        };
        if provider.capabilities().cancel == CancelSupport::LocalOnly {
            tracing::info!(run_id = %run.id(), "provider has no cancel: canceled locally, the vendor run may continue");
            let r = run.canceled(now, None, true, &targets);
            checked(&run, r);
            return self.saved(run).await;
        }
        let req = PollRequest {
            workflow_id: run.workflow_id(),
            vendor_run_id: &vendor_id,
        };
        let result = timed(run.provider(), "cancel", provider.cancel(req)).await;
        let now = self.now();
        let soon = now.plus(s.poll_interval);
        match result {
            Ok(CancelOutcome::Canceled(obs)) => {
                self.provider_answered(run.provider());
                tracing::info!(run_id = %run.id(), "run canceled");
                let r = run.canceled(now, obs, false, &targets);
                checked(&run, r);
            }
            Ok(CancelOutcome::Pending) => {
                tracing::info!(run_id = %run.id(), "cancel accepted by the vendor; polling until it shows");
                run.cancel_pending(now, soon);
            }
            Ok(CancelOutcome::Refused(reason)) => {
                tracing::info!(run_id = %run.id(), "vendor refused the cancel");
                run.cancel_refused(now, reason, soon);
            }
            Ok(CancelOutcome::AlreadyEnded) => {
                let reason = json!({"message": "the vendor says the run had already ended"});
                run.cancel_refused(now, reason, now);
            }
            Err(ProviderError::NotFound { detail, body }) => {
                let r = run.vendor_run_not_found(now, &detail, body, &targets);
                checked(&run, r);
            }
            Err(ProviderError::Rejected { detail: _, body }) => {
                run.cancel_refused(now, body, soon);
            }
            Err(e) => self.provider_failed(s, &mut run, now, "cancel", e),
        }
        self.saved(run).await
    }

    /// A poll of `run` (`loaded` is the run as the step found it).
    async fn poll(&self, mut run: Run, loaded: &Run) -> Result<Run, StoreError> {
        let topo = self.topology.load();
        let s = &topo.settings.scheduler;
        let route = topo.settings.routes.get(run.route());
        let targets = Self::targets(route);
        let now = self.now();
        if Self::expire(&mut run, now, route, &targets) {
            return self.saved(run).await;
        }
        let (Some(provider), Some(vendor_id)) = (
            topo.providers.get(run.provider()).cloned(),
            run.vendor_run_id().clone(),
        ) else {
            return self.provider_missing(s, run, now).await;
        };
        let req = PollRequest {
            workflow_id: run.workflow_id(),
            vendor_run_id: &vendor_id,
        };
        let mut result = timed(run.provider(), "poll", provider.poll(req)).await;
        if let Ok(obs) = &mut result {
            if obs.status == RunStatus::Succeeded && provider.capabilities().output_request {
                match timed(run.provider(), "output", provider.output(req)).await {
                    Ok(out) => obs.output = out,
                    Err(e) => result = Err(e),
                }
            }
        }
        let now = self.now();
        match result {
            Ok(obs) => {
                self.provider_answered(run.provider());
                if obs.unknown && run.first_unknown_status() {
                    tracing::warn!(
                        run_id = %run.id(), provider = %run.provider(),
                        raw_status = obs.raw_status.as_deref().unwrap_or_default(),
                        "unknown vendor status, counted as running (logged once per run)"
                    );
                }
                if obs.status.is_terminal() {
                    tracing::info!(run_id = %run.id(), status = obs.status.as_str(), "run finished");
                }
                let mut next = Self::next_poll(s, &run, now);
                if obs.status == RunStatus::Waiting {
                    if let Some(limit) = route.and_then(|r| r.waiting_timeout) {
                        let since = run.waiting_since().unwrap_or(now);
                        next = next.min(since.plus(limit));
                    }
                }
                let r = run.observed(now, obs, next, &targets);
                checked(&run, r);
            }
            Err(ProviderError::NotFound { detail, body }) => {
                let r = run.vendor_run_not_found(now, &detail, body, &targets);
                checked(&run, r);
            }
            // Anything else on a status check: the run may still be fine;
            // keep trying with backoff until the run times out.
            Err(e) => self.provider_failed(s, &mut run, now, "poll", e),
        }
        self.saved_after(run, loaded).await
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
    /// [`VENDOR_LOG_EVERY`]), reports refused credentials to `/readyz`, and
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
        let (detail, retry_after) = match e {
            ProviderError::Transient {
                detail,
                retry_after,
                ..
            }
            | ProviderError::Busy {
                detail,
                retry_after,
            } => (detail, retry_after),
            ProviderError::Unauthorized {
                detail,
                vendor_code,
            } => {
                self.health
                    .provider_refused(run.provider(), vendor_code, detail.clone());
                (detail, None)
            }
            ProviderError::NotFound { detail, .. } | ProviderError::Rejected { detail, .. } => {
                (format!("{call} refused: {detail}"), None)
            }
        };
        let key = format!("{}/{}", run.provider(), kind.as_str());
        if let Some(suppressed) = self.vendor_log.allow(&key) {
            if kind == FailureKind::Unauthorized {
                tracing::error!(
                    provider = %run.provider(), run_id = %run.id(), call, kind = kind.as_str(),
                    suppressed, error = %detail,
                    "vendor refused our credentials; retrying with backoff until the run's deadline"
                );
            } else {
                tracing::warn!(
                    provider = %run.provider(), run_id = %run.id(), call, kind = kind.as_str(),
                    suppressed, error = %detail,
                    "vendor call failed; retrying with backoff"
                );
            }
        }
        let at = self.retry_at(s, run, now, retry_after);
        run.failed_call(now, detail, at);
    }
}

/// Runs one vendor call, counting it and its latency by provider, call and
/// result (`ok` or the failure kind).
async fn timed<T>(
    provider: &str,
    call: &'static str,
    fut: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    let t0 = std::time::Instant::now();
    let result = fut.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind().as_str(),
    };
    let provider = provider.to_string();
    metrics::counter!("runbridge_vendor_calls_total", "provider" => provider.clone(), "call" => call, "result" => outcome)
        .increment(1);
    metrics::histogram!("runbridge_vendor_call_seconds", "provider" => provider, "call" => call)
        .record(t0.elapsed().as_secs_f64());
    result
}
