//! Cancel requests and refused transitions.

use super::{Phase, RunId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a cancel request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
