//! Run ids: ULIDs, time-ordered and unique without coordination.

use serde::{Deserialize, Serialize};
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
