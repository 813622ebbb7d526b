//! Where a run is: our phase, the normalized vendor status, and what a
//! provider observed.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::str::FromStr;

/// Where the run is in our own lifecycle (what the scheduler does next).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
