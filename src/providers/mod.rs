//! Workflow APIs behind one small interface: start, poll, with normalized
//! results. The scheduler never knows which vendor it is driving.
//!
//! [`http::HttpProvider`] is the one engine for JSON workflow APIs; vendors
//! are presets of it ([`http::slate`]). [`simulated::Simulated`] needs no
//! account and powers the quick start.

pub mod http;
pub mod simulated;

use crate::config::ProviderSettings;
use crate::run::{Observation, RunId};
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// What a start call needs.
#[derive(Debug, Clone, Copy)]
pub struct StartRequest<'a> {
    pub run_id: RunId,
    pub workflow_id: &'a str,
    pub inputs: &'a Value,
}

/// A started vendor run.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub vendor_run_id: String,
    pub observation: Observation,
}

/// What a poll needs (some vendors key runs by workflow too).
#[derive(Debug, Clone, Copy)]
pub struct PollRequest<'a> {
    pub workflow_id: &'a str,
    pub vendor_run_id: &'a str,
}

/// Why a provider call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later: 429, 5xx, timeouts, connection errors.
    #[error("{detail}")]
    Transient {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The vendor refused the request; retrying the same request won't help.
    #[error("vendor answered HTTP {status}")]
    Rejected { status: u16, body: Value },
}

/// A workflow API.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Starts a run. Must be safe to repeat with the same `run_id`: vendors
    /// with idempotency keys get one derived from it.
    async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProviderError>;

    /// Reads a run's current status.
    async fn poll(&self, req: PollRequest<'_>) -> Result<Observation, ProviderError>;
}

/// Builds a provider from its settings, sharing one HTTP client.
pub fn build(settings: &ProviderSettings, client: &reqwest::Client) -> Arc<dyn Provider> {
    match settings {
        ProviderSettings::Slate(s) => Arc::new(http::slate(s, client.clone())),
        ProviderSettings::Simulated(s) => Arc::new(simulated::Simulated::new(s.clone())),
    }
}
