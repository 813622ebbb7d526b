//! The run: one record per accepted webhook, and the explicit state machine
//! that moves it from accepted to callbacks done.
//!
//! Everything here is pure: transitions take `now` and return nothing but the
//! changed record. The scheduler does the I/O and persists every transition
//! before acting on it. Each part of a run lives in its own file: `id.rs`,
//! `status.rs`, `delivery.rs` (events and callbacks), `cancel.rs`.

mod access;
mod cancel;
mod delivery;
mod id;
mod quiet;
mod record;
mod status;
#[cfg(test)]
mod tests;

pub use cancel::{CancelPhase, CancelRequest, IllegalTransition};
pub use delivery::{
    Attempt, Delivery, DeliveryState, EventRecord, Target, DEFAULT_EVENTS, EVENT_TYPES,
};
pub use id::RunId;
pub use quiet::QuietState;
pub use record::{Fixed, FixedRef, State, StateRef};
pub use status::{Observation, Phase, RunStatus, StatusChange};

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a trigger asks for: the parts of a run fixed at acceptance.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub route: String,
    pub provider: String,
    pub workflow_id: String,
    pub inputs: Value,
    pub delivery_id: Option<String>,
}

#[cfg(test)]
impl RunSpec {
    /// A spec for tests: route `r`, provider `p`, workflow `wf`.
    pub fn example() -> Self {
        RunSpec {
            route: "r".into(),
            provider: "p".into(),
            workflow_id: "wf".into(),
            inputs: Value::Object(Default::default()),
            delivery_id: None,
        }
    }
}

/// The durable record of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    id: RunId,
    route: String,
    provider: String,
    workflow_id: String,
    inputs: Value,
    /// The trigger's delivery id (dedupe header value), if it had one.
    delivery_id: Option<String>,
    phase: Phase,
    status: RunStatus,
    raw_status: Option<String>,
    vendor_run_id: Option<String>,
    output: Option<Value>,
    error: Option<Value>,
    created_at: Timestamp,
    updated_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    /// After this the run ends as `timed_out`.
    deadline: Timestamp,
    /// Consecutive failed provider calls (drives backoff; reset on success).
    failures: u32,
    /// Start calls made (more than one means retries with the same key).
    start_attempts: u32,
    polls: u32,
    /// The last transient error, for operators.
    last_error: Option<String>,
    history: Vec<StatusChange>,
    deliveries: Vec<Delivery>,
    /// When the scheduler must next act on this run; `None` once done.
    due_at: Option<Timestamp>,
    /// When the first start attempt was recorded (reconciliation looks for
    /// vendor runs created since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_began_at: Option<Timestamp>,
    /// A start attempt may have created a vendor run we do not know of (a
    /// crash or a lost answer); a non-idempotent provider reconciles first.
    #[serde(default)]
    start_unsure: bool,
    /// When the current waiting spell began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    waiting_since: Option<Timestamp>,
    /// An unknown vendor status was logged for this run already.
    #[serde(default)]
    unknown_status_logged: bool,
    /// The next status check while tracking (deliveries of `run.waiting`
    /// may be due earlier); `None` in older records: `due_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    poll_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cancel: Option<CancelRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<EventRecord>,
    /// The run this one replays (an operator's `POST /runs/{id}/replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replay_of: Option<RunId>,
    /// Runs started by replaying this one (the latest [`MAX_REPLAYS_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replays: Vec<RunId>,
}

/// A delivery index the run does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {id} has no delivery {index}")]
pub struct NoSuchDelivery {
    pub id: RunId,
    pub index: usize,
}

/// Replay links kept on the replayed run (the new runs keep theirs).
pub const MAX_REPLAYS_KEPT: usize = 20;

impl Run {
    /// A freshly accepted run, due immediately.
    pub fn accepted(id: RunId, spec: RunSpec, now: Timestamp, deadline: Timestamp) -> Self {
        Run {
            id,
            route: spec.route,
            provider: spec.provider,
            workflow_id: spec.workflow_id,
            inputs: spec.inputs,
            delivery_id: spec.delivery_id,
            phase: Phase::Accepted,
            status: RunStatus::Queued,
            raw_status: None,
            vendor_run_id: None,
            output: None,
            error: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            deadline,
            failures: 0,
            start_attempts: 0,
            polls: 0,
            last_error: None,
            history: Vec::new(),
            deliveries: Vec::new(),
            due_at: Some(now),
            start_began_at: None,
            start_unsure: false,
            waiting_since: None,
            unknown_status_logged: false,
            poll_at: None,
            cancel: None,
            events: Vec::new(),
            replay_of: None,
            replays: Vec::new(),
        }
    }

    /// A new run replaying `of` (same route, workflow and inputs): the
    /// link is kept on the new run and shown with both.
    pub fn replaying(mut self, of: RunId) -> Self {
        self.replay_of = Some(of);
        self
    }

    /// Notes a replay of this run (the latest [`MAX_REPLAYS_KEPT`] are kept).
    pub fn add_replay(&mut self, id: RunId) {
        self.replays.push(id);
        if self.replays.len() > MAX_REPLAYS_KEPT {
            let extra = self.replays.len() - MAX_REPLAYS_KEPT;
            self.replays.drain(..extra);
        }
    }

    /// A freshly accepted run that a route's rate queue holds until `at`:
    /// it stays `accepted` and comes due at its turn. Consumes the new run,
    /// so it cannot be applied to one already under way.
    pub fn due_from(mut self, at: Timestamp) -> Self {
        self.due_at = Some(at.max(self.created_at));
        self
    }

    /// Accepted/Starting -> Starting: a start call is about to be made. If we
    /// crash during it, the run is due again at `retry_at` and the start is
    /// repeated with the same idempotency key.
    pub fn begin_start(
        &mut self,
        now: Timestamp,
        retry_at: Timestamp,
    ) -> Result<(), IllegalTransition> {
        self.expect(&[Phase::Accepted, Phase::Starting], "begin a start")?;
        self.phase = Phase::Starting;
        self.status = RunStatus::Starting;
        self.start_attempts += 1;
        self.start_began_at.get_or_insert(now);
        self.start_unsure = true;
        self.touch(now, Some(retry_at));
        Ok(())
    }

    /// Starting: the last start attempt certainly created nothing (the
    /// vendor answered with a refusal or a busy/limit answer).
    pub fn start_not_created(&mut self) {
        self.start_unsure = false;
    }

    /// Starting -> Tracking: a reconciliation found our vendor run.
    pub fn adopted(
        &mut self,
        now: Timestamp,
        vendor_run_id: String,
        next_poll: Timestamp,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        let obs = Observation::local(RunStatus::Queued, None, None);
        self.started(now, vendor_run_id, obs, next_poll, targets)
    }

    fn expect(&self, phases: &[Phase], what: &'static str) -> Result<(), IllegalTransition> {
        if phases.contains(&self.phase) {
            Ok(())
        } else {
            Err(IllegalTransition {
                id: self.id,
                phase: self.phase,
                what,
            })
        }
    }

    /// Starting -> Tracking: the vendor accepted the run. Records a
    /// `run.started` event for the targets that asked for it (only here,
    /// so it is sent once per run).
    pub fn started(
        &mut self,
        now: Timestamp,
        vendor_run_id: String,
        obs: Observation,
        next_poll: Timestamp,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        self.expect(&[Phase::Starting], "record a started vendor run")?;
        self.phase = Phase::Tracking;
        self.vendor_run_id = Some(vendor_run_id);
        self.started_at = Some(now);
        self.start_unsure = false;
        self.failures = 0;
        self.last_error = None;
        self.observe_status(now, &obs);
        self.add_event(now, "run.started", targets);
        self.plan(now, Some(next_poll.min(self.deadline)));
        Ok(())
    }

    /// Tracking: a poll answered. Terminal observations end the run.
    pub fn observed(
        &mut self,
        now: Timestamp,
        obs: Observation,
        next_poll: Timestamp,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        self.expect(&[Phase::Tracking], "record a status")?;
        self.polls += 1;
        self.failures = 0;
        self.last_error = None;
        if obs.status.is_terminal() {
            return self.finish(now, obs, targets);
        }
        self.observe_status(now, &obs);
        // A waiting spell begins at the first status check that shows it
        // (also when the start answer already said waiting).
        if obs.status != RunStatus::Waiting {
            self.waiting_since = None;
        } else if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
            self.add_event(now, "run.waiting", targets);
        }
        self.plan(now, Some(next_poll.min(self.deadline)));
        Ok(())
    }

    /// The next time a poll of a tracked run is due.
    pub fn next_poll_at(&self) -> Option<Timestamp> {
        self.poll_at.or(self.due_at)
    }

    /// Tracking: the due time is the earlier of the next poll and the next
    /// pending delivery (a `run.waiting` event).
    fn plan(&mut self, now: Timestamp, poll: Option<Timestamp>) {
        self.poll_at = poll;
        let next_delivery = self
            .deliveries
            .iter()
            .filter(|d| d.state.is_open())
            .filter_map(|d| d.next_attempt_at)
            .min();
        let due = match (poll, next_delivery) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.touch(now, due);
    }

    /// Records an event and a delivery for every target subscribed to it,
    /// except URLs that answered 410 Gone earlier in this run.
    fn add_event(&mut self, now: Timestamp, kind: &str, targets: &[Target]) {
        let subscribed: Vec<&Target> = targets
            .iter()
            .filter(|t| t.events.iter().any(|e| e == kind))
            .filter(|t| !self.is_gone(&t.url))
            .collect();
        if subscribed.is_empty() {
            return;
        }
        let id = format!("{}_{}", self.id.webhook_id(), self.events.len() + 1);
        self.events.push(EventRecord {
            id: id.clone(),
            kind: kind.to_string(),
            at: now,
            status: self.status,
            raw_status: self.raw_status.clone(),
        });
        for t in subscribed {
            self.deliveries.push(Delivery {
                url: t.url.clone(),
                webhook_id: id.clone(),
                state: DeliveryState::Pending,
                attempts: Vec::new(),
                next_attempt_at: Some(now),
                event_id: Some(id.clone()),
            });
        }
    }

    /// Whether `url` answered 410 Gone to an event of this run.
    pub fn is_gone(&self, url: &str) -> bool {
        self.deliveries
            .iter()
            .any(|d| d.url == url && d.state == DeliveryState::Gone)
    }

    /// A receiver answered 410 Gone: this delivery and every other pending
    /// one of this run to the same URL end `gone` (the later ones without an
    /// attempt), and no later event of the run goes there.
    pub fn callback_gone(&mut self, i: usize, attempt: Attempt) {
        let Some(d) = self.deliveries.get_mut(i) else {
            return;
        };
        d.attempts.push(attempt);
        let url = d.url.clone();
        for d in self.deliveries.iter_mut().filter(|d| d.url == url) {
            if d.state.is_open() {
                d.state = DeliveryState::Gone;
                d.next_attempt_at = None;
            }
        }
    }

    /// The event a delivery carries, or `None` for the run's terminal event.
    pub fn event_of(&self, d: &Delivery) -> Option<&EventRecord> {
        let id = d.event_id.as_ref()?;
        self.events.iter().find(|e| &e.id == id)
    }

    /// Tracking: deliveries of non-terminal events were attempted; plans
    /// the next step.
    pub fn replan(&mut self, now: Timestamp) {
        if self.phase == Phase::Tracking {
            let poll = self.next_poll_at();
            self.plan(now, poll);
        } else {
            self.settle_deliveries(now);
        }
    }

    /// Records a cancel request. Refused for a run that already ended.
    pub fn request_cancel(&mut self, now: Timestamp) -> Result<(), IllegalTransition> {
        self.expect(
            &[Phase::Accepted, Phase::Starting, Phase::Tracking],
            "cancel",
        )?;
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| matches!(c.phase, CancelPhase::Requested | CancelPhase::Pending))
        {
            return Ok(());
        }
        self.cancel = Some(CancelRequest {
            requested_at: now,
            phase: CancelPhase::Requested,
            reason: None,
            local_only: false,
        });
        self.touch(now, Some(now));
        if self.phase == Phase::Tracking {
            self.poll_at = Some(now);
        }
        Ok(())
    }

    /// Whether a cancel waits for the vendor to be asked.
    pub fn cancel_requested(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.phase == CancelPhase::Requested)
    }

    /// The vendor accepted the cancel; keep polling until it shows.
    pub fn cancel_pending(&mut self, now: Timestamp, next_poll: Timestamp) {
        if let Some(c) = &mut self.cancel {
            c.phase = CancelPhase::Pending;
        }
        self.plan(now, Some(next_poll.min(self.deadline)));
    }

    /// The vendor refused the cancel (or the run had ended); the run goes on.
    pub fn cancel_refused(&mut self, now: Timestamp, reason: Value, next_poll: Timestamp) {
        if let Some(c) = &mut self.cancel {
            c.phase = CancelPhase::Refused;
            c.reason = Some(reason);
        }
        self.plan(now, Some(next_poll.min(self.deadline)));
    }

    /// Ends the run canceled. `local_only`: the vendor has no cancel (or the
    /// run never reached it), so the record and callback say the vendor run
    /// may still be going.
    pub fn canceled(
        &mut self,
        now: Timestamp,
        obs: Option<Observation>,
        local_only: bool,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        let vendor_started = self.vendor_run_id.is_some();
        let error = local_only.then(|| {
            serde_json::json!({
                "code": "CANCELED_LOCALLY",
                "message": if vendor_started {
                    "canceled by runbridge only: the provider has no cancel, so the vendor run may still be going"
                } else {
                    "canceled before the vendor run was started"
                },
            })
        });
        let obs = obs.unwrap_or_else(|| {
            Observation::local(RunStatus::Canceled, self.raw_status.clone(), error.clone())
        });
        if let Some(c) = &mut self.cancel {
            c.phase = CancelPhase::Done;
            c.local_only = local_only && vendor_started;
        }
        let obs = Observation {
            error: obs.error.or(error),
            status: RunStatus::Canceled,
            ..obs
        };
        self.finish(now, obs, targets)
    }

    /// The vendor refused to start the run: it ends `failed` with the
    /// vendor's answer.
    pub fn start_rejected(
        &mut self,
        now: Timestamp,
        detail: &str,
        body: Value,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        let error = serde_json::json!({
            "code": "START_REJECTED",
            "message": format!("the provider refused to start the run: {detail}"),
            "vendor_error": body,
        });
        self.finish(
            now,
            Observation::local(RunStatus::Failed, None, Some(error)),
            targets,
        )
    }

    /// An interrupted start could not be reconciled: several vendor runs
    /// could be ours (or the listing could not tell), so none is adopted.
    pub fn start_uncertain(
        &mut self,
        now: Timestamp,
        candidates: Vec<String>,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        let error = serde_json::json!({
            "code": "start_uncertain",
            "message": "an interrupted start may have created a vendor run, and runbridge cannot tell which (if any) is ours; none was adopted and none started",
            "candidates": candidates,
        });
        self.finish(
            now,
            Observation::local(RunStatus::Failed, None, Some(error)),
            targets,
        )
    }

    /// The vendor no longer knows the tracked run.
    pub fn vendor_run_not_found(
        &mut self,
        now: Timestamp,
        detail: &str,
        body: Value,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        let error = serde_json::json!({
            "code": "VENDOR_RUN_NOT_FOUND",
            "message": format!("the provider no longer knows this run: {detail}"),
            "vendor_error": body,
        });
        let raw = self.raw_status.clone();
        self.finish(
            now,
            Observation::local(RunStatus::Failed, raw, Some(error)),
            targets,
        )
    }

    /// Ends the run `timed_out` when it waited for a person longer than `limit`.
    pub fn waiting_timed_out(
        &mut self,
        now: Timestamp,
        limit: std::time::Duration,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        let error = serde_json::json!({
            "code": "WAITING_TIMED_OUT",
            "message": format!("run waited for a person longer than {}", humantime::format_duration(limit)),
        });
        let raw = self.raw_status.clone();
        self.finish(
            now,
            Observation::local(RunStatus::TimedOut, raw, Some(error)),
            targets,
        )
    }

    /// A provider call failed transiently; try again at `retry_at`.
    pub fn failed_call(&mut self, now: Timestamp, error: String, retry_at: Timestamp) {
        self.failures += 1;
        self.last_error = Some(error);
        let at = retry_at.min(self.deadline);
        if self.phase == Phase::Tracking {
            self.plan(now, Some(at));
        } else {
            self.touch(now, Some(at));
        }
    }

    /// Any phase before terminal -> Terminal, with deliveries created for
    /// every callback URL (or Done when there are none).
    pub fn finish(
        &mut self,
        now: Timestamp,
        obs: Observation,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        self.expect(
            &[Phase::Accepted, Phase::Starting, Phase::Tracking],
            "finish",
        )?;
        self.observe_status(now, &obs);
        self.output = obs.output;
        self.error = obs.error;
        self.finished_at = Some(now);
        self.phase = Phase::Terminal;
        self.poll_at = None;
        self.waiting_since = None;
        if let Some(c) = &mut self.cancel {
            if obs.status == RunStatus::Canceled {
                c.phase = CancelPhase::Done;
            }
        }
        self.add_event(now, obs.status.event_type(), targets);
        self.touch(now, Some(now));
        self.settle_deliveries(now);
        Ok(())
    }

    /// Ends the run as `timed_out` because its deadline passed.
    pub fn time_out(
        &mut self,
        now: Timestamp,
        limit: std::time::Duration,
        targets: &[Target],
    ) -> Result<(), IllegalTransition> {
        let error = serde_json::json!({
            "code": "TIMED_OUT",
            "message": format!("run not terminal after {}", humantime::format_duration(limit)),
        });
        let obs = Observation::local(RunStatus::TimedOut, self.raw_status.clone(), Some(error));
        self.finish(now, obs, targets)
    }

    /// Terminal: recomputes when the next delivery is due, or moves to Done
    /// when no delivery is pending.
    pub fn settle_deliveries(&mut self, now: Timestamp) {
        let next = self
            .deliveries
            .iter()
            .filter(|d| d.state.is_open())
            .filter_map(|d| d.next_attempt_at)
            .min();
        match next {
            Some(at) => self.touch(now, Some(at)),
            None => {
                self.phase = Phase::Done;
                self.touch(now, None);
            }
        }
    }

    /// An operator's redelivery of delivery `i` (in any state, also dead
    /// or delivered): it is pending again and due now, with the same
    /// `webhook-id`, and a done run goes back to delivering. The retry
    /// schedule goes on from the attempts already made, so a delivery past
    /// its schedule gets this one attempt.
    pub fn redeliver(&mut self, i: usize, now: Timestamp) -> Result<(), NoSuchDelivery> {
        let d = self.deliveries.get_mut(i).ok_or(NoSuchDelivery {
            id: self.id,
            index: i,
        })?;
        d.state = DeliveryState::Pending;
        d.next_attempt_at = Some(now);
        if self.phase == Phase::Done {
            self.phase = Phase::Terminal;
        }
        self.replan(now);
        Ok(())
    }

    /// Its endpoint was resumed: every open delivery to `url` is due now.
    /// Returns whether anything changed.
    pub fn release_held(&mut self, url: &str, now: Timestamp) -> bool {
        let mut changed = false;
        for d in self.deliveries.iter_mut().filter(|d| d.url == url) {
            if d.state.is_open() && d.next_attempt_at.is_none_or(|t| t > now) {
                d.next_attempt_at = Some(now);
                changed = true;
            }
        }
        if changed {
            self.replan(now);
        }
        changed
    }

    /// Whether the run still needs the scheduler.
    pub fn is_unfinished(&self) -> bool {
        self.phase != Phase::Done
    }

    fn observe_status(&mut self, now: Timestamp, obs: &Observation) {
        let changed = self
            .history
            .last()
            .is_none_or(|last| last.status != obs.status || last.raw_status != obs.raw_status);
        if changed {
            self.history.push(StatusChange {
                at: now,
                status: obs.status,
                raw_status: obs.raw_status.clone(),
            });
        }
        self.status = obs.status;
        self.raw_status = obs.raw_status.clone();
    }

    fn touch(&mut self, now: Timestamp, due: Option<Timestamp>) {
        self.updated_at = now;
        self.due_at = due;
    }
}
