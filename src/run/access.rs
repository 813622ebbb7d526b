//! Read access to a run's fields (private to `run`), and the few
//! non-transition changes the scheduler may make.

use super::{
    Attempt, CancelRequest, Delivery, EventRecord, Phase, Run, RunId, RunStatus, StatusChange,
};
use crate::time::Timestamp;
use serde_json::Value;

/// Read access to a run: it changes only through its transitions.
impl Run {
    /// The run's `id`.
    pub fn id(&self) -> RunId {
        self.id
    }

    /// The run's `route`.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The run's `provider`.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The run's `workflow_id`.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The run's `inputs`.
    pub fn inputs(&self) -> &Value {
        &self.inputs
    }

    /// The run's `delivery_id`.
    pub fn delivery_id(&self) -> &Option<String> {
        &self.delivery_id
    }

    /// The run's `phase`.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The run's `status`.
    pub fn status(&self) -> RunStatus {
        self.status
    }

    /// The run's `raw_status`.
    pub fn raw_status(&self) -> &Option<String> {
        &self.raw_status
    }

    /// The run's `vendor_run_id`.
    pub fn vendor_run_id(&self) -> &Option<String> {
        &self.vendor_run_id
    }

    /// The run's `output`.
    pub fn output(&self) -> &Option<Value> {
        &self.output
    }

    /// The run's `error`.
    pub fn error(&self) -> &Option<Value> {
        &self.error
    }

    /// The run's `created_at`.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// The run's `updated_at`.
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }

    /// The run's `started_at`.
    pub fn started_at(&self) -> Option<Timestamp> {
        self.started_at
    }

    /// The run's `finished_at`.
    pub fn finished_at(&self) -> Option<Timestamp> {
        self.finished_at
    }

    /// The run's `deadline`.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }

    /// The run's `failures`.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The run's `start_attempts`.
    pub fn start_attempts(&self) -> u32 {
        self.start_attempts
    }

    /// The run's `polls`.
    pub fn polls(&self) -> u32 {
        self.polls
    }

    /// The run's `last_error`.
    pub fn last_error(&self) -> &Option<String> {
        &self.last_error
    }

    /// The run's `history`.
    pub fn history(&self) -> &Vec<StatusChange> {
        &self.history
    }

    /// The run's `deliveries`.
    pub fn deliveries(&self) -> &Vec<Delivery> {
        &self.deliveries
    }

    /// The run's `due_at`.
    pub fn due_at(&self) -> Option<Timestamp> {
        self.due_at
    }

    /// The run's `start_began_at`.
    pub fn start_began_at(&self) -> Option<Timestamp> {
        self.start_began_at
    }

    /// The run's `start_unsure`.
    pub fn start_unsure(&self) -> bool {
        self.start_unsure
    }

    /// The run's `waiting_since`.
    pub fn waiting_since(&self) -> Option<Timestamp> {
        self.waiting_since
    }

    /// The run's `unknown_status_logged`.
    pub fn unknown_status_logged(&self) -> bool {
        self.unknown_status_logged
    }

    /// The run's `cancel`.
    pub fn cancel(&self) -> &Option<CancelRequest> {
        &self.cancel
    }

    /// The run this one replays, if any.
    pub fn replay_of(&self) -> Option<RunId> {
        self.replay_of
    }

    /// Runs started by replaying this one.
    pub fn replays(&self) -> &[RunId] {
        &self.replays
    }

    /// The run's `events`.
    pub fn events(&self) -> &Vec<EventRecord> {
        &self.events
    }

    /// Notes that an unknown vendor status was seen; true the first time
    /// for this run (it is logged once per run).
    pub fn first_unknown_status(&mut self) -> bool {
        !std::mem::replace(&mut self.unknown_status_logged, true)
    }

    /// Records the outcome of an attempt of delivery `i`.
    pub fn record_attempt(
        &mut self,
        i: usize,
        attempt: Attempt,
        succeeded: bool,
        next: Option<Timestamp>,
    ) {
        if let Some(d) = self.deliveries.get_mut(i) {
            d.record(attempt, succeeded, next);
        }
    }

    /// Records a refused attempt of delivery `i` (see [`Delivery::refuse`]).
    pub fn record_refused(&mut self, i: usize, attempt: Attempt) {
        if let Some(d) = self.deliveries.get_mut(i) {
            d.refuse(attempt);
        }
    }

    /// Holds a pending delivery until `until` without recording an attempt
    /// (its endpoint is busy or its breaker is open), so holding never spends
    /// the retry schedule.
    pub fn hold_delivery(&mut self, i: usize, until: Timestamp) {
        if let Some(d) = self.deliveries.get_mut(i) {
            if d.state.is_open() {
                d.next_attempt_at = Some(until);
            }
        }
    }

    /// Replaces the due time (store repair tests only).
    #[cfg(test)]
    pub(crate) fn force_due(&mut self, at: Option<Timestamp>) {
        self.due_at = at;
    }
}
