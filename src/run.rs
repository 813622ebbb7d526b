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
    pub id: RunId,
    pub route: String,
    pub provider: String,
    pub workflow_id: String,
    pub inputs: Value,
    /// The trigger's delivery id (dedupe header value), if it had one.
    pub delivery_id: Option<String>,
    pub phase: Phase,
    pub status: RunStatus,
    pub raw_status: Option<String>,
    pub vendor_run_id: Option<String>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// After this the run ends as `timed_out`.
    pub deadline: Timestamp,
    /// Consecutive failed provider calls (drives backoff; reset on success).
    pub failures: u32,
    /// Start calls made (more than one means retries with the same key).
    pub start_attempts: u32,
    pub polls: u32,
    /// The last transient error, for operators.
    pub last_error: Option<String>,
    pub history: Vec<StatusChange>,
    pub deliveries: Vec<Delivery>,
    /// When the scheduler must next act on this run; `None` once done.
    pub due_at: Option<Timestamp>,
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
        }
    }

    /// Accepted/Starting -> Starting: a start call is about to be made. If we
    /// crash during it, the run is due again at `retry_at` and the start is
    /// repeated with the same idempotency key.
    pub fn begin_start(&mut self, now: Timestamp, retry_at: Timestamp) {
        debug_assert!(matches!(self.phase, Phase::Accepted | Phase::Starting));
        self.phase = Phase::Starting;
        self.status = RunStatus::Starting;
        self.start_attempts += 1;
        self.touch(now, Some(retry_at));
    }

    /// Starting -> Tracking: the vendor accepted the run.
    pub fn started(
        &mut self,
        now: Timestamp,
        vendor_run_id: String,
        obs: Observation,
        next_poll: Timestamp,
    ) {
        self.phase = Phase::Tracking;
        self.vendor_run_id = Some(vendor_run_id);
        self.started_at = Some(now);
        self.failures = 0;
        self.last_error = None;
        self.touch(now, Some(next_poll.min(self.deadline)));
        self.observe_status(now, &obs);
    }

    /// Tracking: a poll answered. Terminal observations end the run.
    pub fn observed(
        &mut self,
        now: Timestamp,
        obs: Observation,
        next_poll: Timestamp,
        callbacks: &[String],
    ) {
        self.polls += 1;
        self.failures = 0;
        self.last_error = None;
        if obs.status.is_terminal() {
            self.finish(now, obs, callbacks);
        } else {
            self.observe_status(now, &obs);
            self.touch(now, Some(next_poll.min(self.deadline)));
        }
    }

    /// A provider call failed transiently; try again at `retry_at`.
    pub fn failed_call(&mut self, now: Timestamp, error: String, retry_at: Timestamp) {
        self.failures += 1;
        self.last_error = Some(error);
        self.touch(now, Some(retry_at.min(self.deadline)));
    }

    /// Any phase before terminal -> Terminal, with deliveries created for
    /// every callback URL (or Done when there are none).
    pub fn finish(&mut self, now: Timestamp, obs: Observation, callbacks: &[String]) {
        self.observe_status(now, &obs);
        self.output = obs.output;
        self.error = obs.error;
        self.finished_at = Some(now);
        self.phase = Phase::Terminal;
        self.deliveries = callbacks
            .iter()
            .map(|url| Delivery {
                url: url.clone(),
                webhook_id: self.id.webhook_id(),
                state: DeliveryState::Pending,
                attempts: Vec::new(),
                next_attempt_at: Some(now),
            })
            .collect();
        self.touch(now, Some(now));
        self.settle_deliveries(now);
    }

    /// Ends the run as `timed_out` because its deadline passed.
    pub fn time_out(&mut self, now: Timestamp, limit: std::time::Duration, callbacks: &[String]) {
        let error = serde_json::json!({
            "code": "TIMED_OUT",
            "message": format!("run not terminal after {}", humantime::format_duration(limit)),
        });
        let obs = Observation {
            status: RunStatus::TimedOut,
            raw_status: self.raw_status.clone(),
            output: None,
            error: Some(error),
        };
        self.finish(now, obs, callbacks);
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
        }
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
        r.begin_start(Timestamp(1_001), Timestamp(5_000));
        assert_eq!((r.phase, r.start_attempts), (Phase::Starting, 1));
        r.started(
            Timestamp(1_002),
            "v1".into(),
            obs(RunStatus::Queued, "QUEUED"),
            Timestamp(6_000),
        );
        assert_eq!(r.phase, Phase::Tracking);
        assert_eq!(r.due_at, Some(Timestamp(6_000)));
        r.observed(
            Timestamp(6_000),
            obs(RunStatus::Running, "RUNNING"),
            Timestamp(11_000),
            &[],
        );
        r.observed(
            Timestamp(6_500),
            obs(RunStatus::Running, "RUNNING"),
            Timestamp(11_000),
            &[],
        );
        assert_eq!(r.history.len(), 2, "unchanged statuses are not repeated");
        let cbs = vec!["http://a".to_string()];
        r.observed(
            Timestamp(11_000),
            obs(RunStatus::Succeeded, "COMPLETED"),
            Timestamp(0),
            &cbs,
        );
        assert_eq!(r.phase, Phase::Terminal);
        assert_eq!(r.due_at, Some(Timestamp(11_000)));
        assert_eq!(r.deliveries[0].webhook_id, r.id.webhook_id());
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
        r.begin_start(Timestamp(1_001), Timestamp(500_000));
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
        );
        assert_eq!(r.due_at, Some(r.deadline));
        r.time_out(
            Timestamp(100_000),
            std::time::Duration::from_secs(99),
            &["u".into()],
        );
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
            &["u".into()],
        );
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
}
