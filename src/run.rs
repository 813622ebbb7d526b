//! The run: one record per accepted webhook, and the explicit state machine
//! that moves it from accepted to callbacks done.
//!
//! Everything here is pure: transitions take `now` and return nothing but the
//! changed record. The scheduler does the I/O and persists every transition
//! before acting on it.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use ulid::Ulid;

/// Our id for a run: a ULID, so ids sort by creation time (store keys, admin
/// listing newest first) and are unique without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(Ulid);

impl RunId {
    /// The largest id: an upper bound for range scans.
    pub const MAX: RunId = RunId(Ulid(u128::MAX));

    /// A fresh id for the current instant, strictly greater than every id
    /// this process made before (monotonic within a millisecond).
    pub fn new() -> Self {
        static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);
        let mut guard = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
        let generator = guard.get_or_insert_with(ulid::Generator::new);
        // Overflow needs 2^80 ids in one millisecond; fall back to a random one.
        RunId(generator.generate().unwrap_or_else(|_| Ulid::new()))
    }

    /// The 16 big-endian bytes used as a store key (time-ordered).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// Inverse of [`RunId::to_bytes`].
    pub fn from_bytes(b: [u8; 16]) -> Self {
        RunId(Ulid::from_bytes(b))
    }

    /// The key sent to vendors that support idempotent creates: derived from
    /// the run id alone, so every retry and every restart sends the same one.
    pub fn idempotency_key(self) -> String {
        format!("runbridge-{}", self.0)
    }

    /// The Standard Webhooks `webhook-id` of this run's callback event: the
    /// receivers' idempotency key, identical on every attempt.
    pub fn webhook_id(self) -> String {
        format!("msg_{}", self.0)
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ulid::from_string(s).map(RunId)
    }
}

/// Where the run is in our own lifecycle (what the scheduler does next).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Durable, not yet sent to the provider.
    Accepted,
    /// A start call may be in flight; retried with the same idempotency key.
    Starting,
    /// The vendor has the run; we poll it.
    Tracking,
    /// Final status known; callbacks are being delivered.
    Terminal,
    /// Every callback delivered or dead. Nothing more to do.
    Done,
}

/// The vendor-neutral status every provider's statuses are mapped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Starting,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Canceled,
    TimedOut,
}

impl RunStatus {
    /// Terminal statuses end tracking and trigger callbacks.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Canceled | RunStatus::TimedOut
        )
    }

    /// The snake_case name used in the API and events.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Starting => "starting",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Canceled => "canceled",
            RunStatus::TimedOut => "timed_out",
        }
    }

    /// The callback event type for a terminal status.
    pub fn event_type(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "run.succeeded",
            RunStatus::Failed => "run.failed",
            RunStatus::Canceled => "run.canceled",
            RunStatus::TimedOut => "run.timed_out",
            RunStatus::Waiting => "run.waiting",
            _ => "run.updated",
        }
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(Value::String(s.to_string())).map_err(|_| {
            format!("unknown status {s:?}; expected queued, starting, running, waiting, succeeded, failed, canceled or timed_out")
        })
    }
}

/// One observed vendor status, kept in the run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub at: Timestamp,
    pub status: RunStatus,
    pub raw_status: Option<String>,
}

/// What a provider reported about a run at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub status: RunStatus,
    pub raw_status: Option<String>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    /// The vendor status is not in the provider's mapping (counted as
    /// `running`; logged once per run).
    pub unknown: bool,
}

impl Observation {
    /// A locally decided outcome (no vendor answer behind it).
    pub fn local(status: RunStatus, raw_status: Option<String>, error: Option<Value>) -> Self {
        Observation {
            status,
            raw_status,
            output: None,
            error,
            unknown: false,
        }
    }
}

/// The event types a callback receives when it does not say.
pub const DEFAULT_EVENTS: [&str; 4] = [
    "run.succeeded",
    "run.failed",
    "run.canceled",
    "run.timed_out",
];

/// Every event type a callback may subscribe to.
pub const EVENT_TYPES: [&str; 5] = [
    "run.waiting",
    "run.succeeded",
    "run.failed",
    "run.canceled",
    "run.timed_out",
];

/// A callback URL and the event types it receives.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Where the callback goes.
    pub url: String,
    /// Event types it receives.
    pub events: Vec<String>,
}

/// One event of a run, with its own id (its `webhook-id`, the same on
/// every retry of that event), so receivers deduplicating on it keep both
/// a `run.waiting` and the later `run.succeeded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The event's `webhook-id`.
    pub id: String,
    /// `run.waiting`, `run.succeeded`...
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened.
    pub at: Timestamp,
    /// The run's status then.
    pub status: RunStatus,
    /// The vendor's status then.
    pub raw_status: Option<String>,
}

/// Where a cancel request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelPhase {
    /// Persisted, the vendor not yet asked (a restart asks it).
    Requested,
    /// The vendor accepted; polling until the run shows it.
    Pending,
    /// The vendor refused; the run goes on.
    Refused,
    /// The run ended canceled.
    Done,
}

/// An operator's cancel request and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// When the operator asked.
    pub requested_at: Timestamp,
    /// Where it stands.
    pub phase: CancelPhase,
    /// The vendor's reason for refusing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Value>,
    /// Canceled only on our side: the vendor has no cancel, so its run may
    /// still be going.
    #[serde(default)]
    pub local_only: bool,
}

/// A transition the run's current phase does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {id}: cannot {what} in phase {phase:?}")]
pub struct IllegalTransition {
    /// The run.
    pub id: RunId,
    /// Its phase, which does not allow the transition.
    pub phase: Phase,
    /// The transition tried.
    pub what: &'static str,
}

/// State of one callback delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Succeeded,
    Dead,
}

/// One HTTP attempt of a delivery, as operators need to see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: Timestamp,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The start of the receiver's answer, for debugging failed deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// The callback of this run to one configured URL, with every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub url: String,
    pub webhook_id: String,
    pub state: DeliveryState,
    pub attempts: Vec<Attempt>,
    pub next_attempt_at: Option<Timestamp>,
    /// The event this delivery carries; `None` in records written before
    /// events had ids: the run's terminal event under `msg_<run id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl Delivery {
    /// Records an attempt's outcome. `next` is when to try again, or `None`
    /// when the schedule is exhausted (the delivery becomes `dead`).
    pub fn record(&mut self, attempt: Attempt, succeeded: bool, next: Option<Timestamp>) {
        self.attempts.push(attempt);
        if succeeded {
            self.state = DeliveryState::Succeeded;
            self.next_attempt_at = None;
        } else if let Some(at) = next {
            self.next_attempt_at = Some(at);
        } else {
            self.state = DeliveryState::Dead;
            self.next_attempt_at = None;
        }
    }

    /// Whether this delivery should be attempted at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.state == DeliveryState::Pending && self.next_attempt_at.is_some_and(|t| t <= now)
    }
}

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
}

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

    /// The run's `events`.
    pub fn events(&self) -> &Vec<EventRecord> {
        &self.events
    }

    /// Carries over a cancel request saved by someone else while a step
    /// held the run (the step's save would otherwise drop it).
    pub fn adopt_cancel(&mut self, stored: &Run, now: Timestamp) {
        if self.cancel.is_none() && stored.cancel.is_some() {
            self.cancel = stored.cancel.clone();
            self.reconsider(now);
        }
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

    /// Replaces the due time (store repair tests only).
    #[cfg(test)]
    pub(crate) fn force_due(&mut self, at: Option<Timestamp>) {
        self.due_at = at;
    }
}

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
        }
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
    ) -> Result<(), IllegalTransition> {
        let obs = Observation::local(RunStatus::Queued, None, None);
        self.started(now, vendor_run_id, obs, next_poll)
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

    /// Starting -> Tracking: the vendor accepted the run.
    pub fn started(
        &mut self,
        now: Timestamp,
        vendor_run_id: String,
        obs: Observation,
        next_poll: Timestamp,
    ) -> Result<(), IllegalTransition> {
        self.expect(&[Phase::Starting], "record a started vendor run")?;
        self.phase = Phase::Tracking;
        self.vendor_run_id = Some(vendor_run_id);
        self.started_at = Some(now);
        self.start_unsure = false;
        self.failures = 0;
        self.last_error = None;
        self.observe_status(now, &obs);
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
        let was_waiting = self.status == RunStatus::Waiting;
        self.observe_status(now, &obs);
        if obs.status == RunStatus::Waiting && !was_waiting {
            self.waiting_since = Some(now);
            self.add_event(now, "run.waiting", targets);
        } else if obs.status != RunStatus::Waiting {
            self.waiting_since = None;
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
            .filter(|d| d.state == DeliveryState::Pending)
            .filter_map(|d| d.next_attempt_at)
            .min();
        let due = match (poll, next_delivery) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.touch(now, due);
    }

    /// Records an event and a delivery for every target subscribed to it.
    fn add_event(&mut self, now: Timestamp, kind: &str, targets: &[Target]) {
        let subscribed: Vec<&Target> = targets
            .iter()
            .filter(|t| t.events.iter().any(|e| e == kind))
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

    /// A cancel request arrived while a step held the run: act on it now.
    pub fn reconsider(&mut self, now: Timestamp) {
        match self.phase {
            Phase::Tracking => self.plan(now, Some(now)),
            Phase::Accepted | Phase::Starting => self.touch(now, Some(now)),
            Phase::Terminal | Phase::Done => {}
        }
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
            .filter(|d| d.state == DeliveryState::Pending)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(status: RunStatus, raw: &str) -> Observation {
        Observation {
            status,
            raw_status: Some(raw.into()),
            output: None,
            error: None,
            unknown: false,
        }
    }

    fn targets(url: &str) -> Vec<Target> {
        vec![Target {
            url: url.into(),
            events: EVENT_TYPES.map(String::from).to_vec(),
        }]
    }

    fn run() -> Run {
        let t = Timestamp(1_000);
        let spec = RunSpec {
            delivery_id: Some("d1".into()),
            ..RunSpec::example()
        };
        Run::accepted(RunId::new(), spec, t, Timestamp(100_000))
    }

    #[test]
    fn happy_path_reaches_done() {
        let mut r = run();
        assert_eq!(r.due_at, Some(Timestamp(1_000)));
        r.begin_start(Timestamp(1_001), Timestamp(5_000)).unwrap();
        assert_eq!((r.phase, r.start_attempts), (Phase::Starting, 1));
        r.started(
            Timestamp(1_002),
            "v1".into(),
            obs(RunStatus::Queued, "QUEUED"),
            Timestamp(6_000),
        )
        .unwrap();
        assert_eq!(r.phase, Phase::Tracking);
        assert_eq!(r.due_at, Some(Timestamp(6_000)));
        r.observed(
            Timestamp(6_000),
            obs(RunStatus::Running, "RUNNING"),
            Timestamp(11_000),
            &[],
        )
        .unwrap();
        r.observed(
            Timestamp(6_500),
            obs(RunStatus::Running, "RUNNING"),
            Timestamp(11_000),
            &[],
        )
        .unwrap();
        assert_eq!(r.history.len(), 2, "unchanged statuses are not repeated");
        let cbs = targets("http://a");
        r.observed(
            Timestamp(11_000),
            obs(RunStatus::Succeeded, "COMPLETED"),
            Timestamp(0),
            &cbs,
        )
        .unwrap();
        assert_eq!(r.phase, Phase::Terminal);
        assert_eq!(r.due_at, Some(Timestamp(11_000)));
        assert_eq!(
            r.deliveries[0].webhook_id,
            format!("{}_1", r.id.webhook_id())
        );
        let d = &mut r.deliveries[0];
        let a = Attempt {
            at: Timestamp(11_001),
            duration_ms: 3,
            status_code: Some(500),
            error: None,
            response: None,
        };
        d.record(a.clone(), false, Some(Timestamp(16_000)));
        r.settle_deliveries(Timestamp(11_002));
        assert_eq!(r.due_at, Some(Timestamp(16_000)));
        r.deliveries[0].record(a, true, None);
        r.settle_deliveries(Timestamp(16_001));
        assert_eq!((r.phase, r.due_at), (Phase::Done, None));
    }

    #[test]
    fn polls_never_scheduled_past_deadline_and_timeout_creates_event() {
        let mut r = run();
        r.begin_start(Timestamp(1_001), Timestamp(500_000)).unwrap();
        assert_eq!(
            r.due_at,
            Some(Timestamp(500_000)),
            "start retry is not clamped: the start is the crash guard"
        );
        r.started(
            Timestamp(1_002),
            "v".into(),
            obs(RunStatus::Running, "RUNNING"),
            Timestamp(900_000),
        )
        .unwrap();
        assert_eq!(r.due_at, Some(r.deadline));
        r.time_out(
            Timestamp(100_000),
            std::time::Duration::from_secs(99),
            &targets("u"),
        )
        .unwrap();
        assert_eq!(r.status, RunStatus::TimedOut);
        assert_eq!(r.error.as_ref().unwrap()["code"], "TIMED_OUT");
        assert_eq!(r.deliveries.len(), 1);
    }

    #[test]
    fn dead_delivery_finishes_run() {
        let mut r = run();
        r.finish(
            Timestamp(2_000),
            obs(RunStatus::Failed, "FAILED"),
            &targets("u"),
        )
        .unwrap();
        let a = Attempt {
            at: Timestamp(2_001),
            duration_ms: 1,
            status_code: None,
            error: Some("refused".into()),
            response: None,
        };
        r.deliveries[0].record(a, false, None);
        r.settle_deliveries(Timestamp(2_002));
        assert_eq!(r.deliveries[0].state, DeliveryState::Dead);
        assert_eq!(r.phase, Phase::Done);
    }

    #[test]
    fn run_id_round_trips() {
        let id = RunId::new();
        assert_eq!(id.to_string().parse::<RunId>().unwrap(), id);
        assert_eq!(RunId::from_bytes(id.to_bytes()), id);
        assert!(!id.webhook_id().contains('.'));
        assert_eq!(
            "timed_out".parse::<RunStatus>().unwrap(),
            RunStatus::TimedOut
        );
    }

    #[test]
    fn illegal_transitions_are_errors_and_change_nothing() {
        let mut r = run();
        let before = r.clone();
        let e = r
            .started(
                Timestamp(2),
                "v".into(),
                obs(RunStatus::Running, "R"),
                Timestamp(3),
            )
            .unwrap_err();
        assert_eq!(
            (e.phase, e.what),
            (Phase::Accepted, "record a started vendor run")
        );
        assert_eq!(r, before);
        r.finish(Timestamp(2_000), obs(RunStatus::Failed, "FAILED"), &[])
            .unwrap();
        assert!(r.begin_start(Timestamp(2_001), Timestamp(3_000)).is_err());
        assert!(r.request_cancel(Timestamp(2_001)).is_err(), "already ended");
    }

    #[test]
    fn a_waiting_spell_sends_one_event_with_its_own_id() {
        let mut r = run();
        let t = targets("http://a");
        r.begin_start(Timestamp(1_001), Timestamp(5_000)).unwrap();
        r.started(
            Timestamp(1_002),
            "v".into(),
            obs(RunStatus::Running, "running"),
            Timestamp(2_000),
        )
        .unwrap();
        for at in [2_000, 3_000] {
            r.observed(
                Timestamp(at),
                obs(RunStatus::Waiting, "paused"),
                Timestamp(at + 1_000),
                &t,
            )
            .unwrap();
        }
        assert_eq!(r.events.len(), 1, "one event per waiting spell");
        assert_eq!(
            r.due_at,
            Some(Timestamp(2_000)),
            "the waiting event is due at once"
        );
        r.observed(
            Timestamp(4_000),
            obs(RunStatus::Running, "running"),
            Timestamp(5_000),
            &t,
        )
        .unwrap();
        r.observed(
            Timestamp(5_000),
            obs(RunStatus::Waiting, "paused"),
            Timestamp(6_000),
            &t,
        )
        .unwrap();
        r.observed(
            Timestamp(6_000),
            obs(RunStatus::Succeeded, "completed"),
            Timestamp(7_000),
            &t,
        )
        .unwrap();
        let ids: Vec<&str> = r.deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
        assert_eq!(ids.len(), 3);
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "{ids:?}"
        );
        // A callback not subscribed to run.waiting gets the terminal event only.
        let mut r2 = run();
        let only_terminal = vec![Target {
            url: "http://b".into(),
            events: DEFAULT_EVENTS.map(String::from).to_vec(),
        }];
        r2.begin_start(Timestamp(1_001), Timestamp(5_000)).unwrap();
        r2.started(
            Timestamp(1_002),
            "v".into(),
            obs(RunStatus::Waiting, "paused"),
            Timestamp(2_000),
        )
        .unwrap();
        r2.observed(
            Timestamp(2_000),
            obs(RunStatus::Waiting, "paused"),
            Timestamp(3_000),
            &only_terminal,
        )
        .unwrap();
        assert!(r2.deliveries.is_empty());
    }

    /// A record as the previous version wrote it (no event ids, no cancel,
    /// no waiting fields) opens, and its pending delivery keeps `msg_<run id>`.
    #[test]
    fn a_record_in_the_previous_json_form_opens_and_keeps_its_event_id() {
        let json = r#"{"id":"01KAT2Q7Q8V1G5M6H8R4S0ZB9N","route":"gh","provider":"slate",
            "workflow_id":"wf","inputs":{"repo":"o/r"},"delivery_id":"d1","phase":"terminal",
            "status":"succeeded","raw_status":"COMPLETED","vendor_run_id":"v-1",
            "output":{"ok":true},"error":null,"created_at":"2026-11-23T10:00:00.000Z",
            "updated_at":"2026-11-23T10:00:05.000Z","started_at":"2026-11-23T10:00:01.000Z",
            "finished_at":"2026-11-23T10:00:05.000Z","deadline":"2026-11-24T10:00:00.000Z",
            "failures":0,"start_attempts":1,"polls":3,"last_error":null,
            "history":[{"at":"2026-11-23T10:00:05.000Z","status":"succeeded","raw_status":"COMPLETED"}],
            "deliveries":[{"url":"http://r/cb","webhook_id":"msg_01KAT2Q7Q8V1G5M6H8R4S0ZB9N",
              "state":"pending","attempts":[],"next_attempt_at":"2026-11-23T10:00:05.000Z"}],
            "due_at":"2026-11-23T10:00:05.000Z"}"#;
        let r: Run = serde_json::from_str(json).unwrap();
        let d = &r.deliveries[0];
        assert_eq!(d.webhook_id, r.id.webhook_id());
        assert!(r.event_of(d).is_none(), "the terminal event");
        let body: Value = serde_json::from_slice(&crate::delivery::event_body(&r, d)).unwrap();
        assert_eq!(body["type"], "run.succeeded");
        assert_eq!(body["data"]["event_id"], r.id.webhook_id());
        assert!(r.cancel.is_none() && r.events.is_empty() && !r.start_unsure);
    }
}
