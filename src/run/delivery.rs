//! Callbacks of a run: event types, targets, events with their own ids,
//! and one delivery per event and URL with every attempt.

use super::RunStatus;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The event types a callback receives when it does not say.
pub const DEFAULT_EVENTS: [&str; 4] = [
    "run.succeeded",
    "run.failed",
    "run.canceled",
    "run.timed_out",
];

/// Every event type a callback may subscribe to.
pub const EVENT_TYPES: [&str; 6] = [
    "run.started",
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

/// State of one callback delivery. These six names are the ones the admin
/// API, the CLI, the console and the README use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not attempted yet.
    Pending,
    /// At least one attempt failed; another is scheduled.
    Failing,
    /// The receiver answered 2xx (`succeeded` in records written before
    /// the states were named).
    #[serde(alias = "succeeded")]
    Delivered,
    /// Every scheduled attempt failed; only a redelivery tries again.
    Dead,
    /// The destination was refused by the SSRF guard: terminal, since
    /// retrying the same URL would be refused again.
    Refused,
    /// The receiver answered 410 Gone (to this or an earlier event of the
    /// run): the callback is disabled for the rest of the run.
    Gone,
}

impl DeliveryState {
    /// Still to be attempted (pending or failing): what keeps a run out of `done`.
    pub fn is_open(self) -> bool {
        matches!(self, DeliveryState::Pending | DeliveryState::Failing)
    }

    /// The name the API and the README use.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Failing => "failing",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            DeliveryState::Refused => "refused",
            DeliveryState::Gone => "gone",
        }
    }
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
            self.state = DeliveryState::Delivered;
            self.next_attempt_at = None;
        } else if let Some(at) = next {
            self.state = DeliveryState::Failing;
            self.next_attempt_at = Some(at);
        } else {
            self.state = DeliveryState::Dead;
            self.next_attempt_at = None;
        }
    }

    /// Records a refused attempt: nothing was sent, and none will be.
    pub fn refuse(&mut self, attempt: Attempt) {
        self.attempts.push(attempt);
        self.state = DeliveryState::Refused;
        self.next_attempt_at = None;
    }

    /// Whether this delivery should be attempted at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.state.is_open() && self.next_attempt_at.is_some_and(|t| t <= now)
    }
}
