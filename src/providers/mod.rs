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
use crate::secret::Redactor;
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

/// What kind of failure a provider call had, vendor-neutral: the scheduler
/// records and logs it (rate-limited per provider and kind) without knowing
/// which vendor it drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No answer within the provider's timeout (or the vendor's 408).
    Timeout,
    /// The connection could not be made or broke.
    Connection,
    /// 429: the vendor's rate or concurrency limit.
    RateLimited,
    /// 5xx.
    ServerError,
    /// A success status whose body could not be understood (not JSON, no
    /// recognizable status, no run id).
    BadAnswer,
    /// 401/403: the vendor refused our credentials.
    Unauthorized,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// A stable snake_case name for logs and throttle keys.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Connection => "connection",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::ServerError => "server_error",
            FailureKind::BadAnswer => "bad_answer",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Other => "other",
        }
    }
}

/// Why a provider call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later: 429, 5xx, timeouts, connection errors, and
    /// success answers that could not be understood.
    #[error("{detail}")]
    Transient {
        kind: FailureKind,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// 401/403: the vendor refused our credentials. Retried with backoff
    /// until the run's deadline, since tokens get rotated and a reload or
    /// the vendor side fixes it; reported in `/readyz` meanwhile.
    #[error("{detail}")]
    Unauthorized { status: u16, detail: String },
    /// The vendor refused the request; retrying the same request won't help.
    #[error("vendor answered HTTP {status}")]
    Rejected { status: u16, body: Value },
}

impl ProviderError {
    /// The kind of failure, for logs and throttling.
    pub fn kind(&self) -> FailureKind {
        match self {
            ProviderError::Transient { kind, .. } => *kind,
            ProviderError::Unauthorized { .. } => FailureKind::Unauthorized,
            ProviderError::Rejected { .. } => FailureKind::Other,
        }
    }

    fn scrubbed(self, r: &Redactor) -> Self {
        match self {
            ProviderError::Transient {
                kind,
                detail,
                retry_after,
            } => ProviderError::Transient {
                kind,
                detail: r.scrub(&detail),
                retry_after,
            },
            ProviderError::Unauthorized { status, detail } => ProviderError::Unauthorized {
                status,
                detail: r.scrub(&detail),
            },
            ProviderError::Rejected { status, body } => ProviderError::Rejected {
                status,
                body: r.scrub_json(body),
            },
        }
    }
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

/// Builds a provider from its settings, sharing one HTTP client. Every
/// provider is wrapped so that what it returns (statuses, outputs, errors,
/// vendor bodies) is scrubbed of known secrets before anyone stores or
/// forwards it: a vendor echoing our `Authorization` header cannot leak it.
pub fn build(
    settings: &ProviderSettings,
    client: &reqwest::Client,
    redactor: &Arc<Redactor>,
) -> Arc<dyn Provider> {
    let inner: Arc<dyn Provider> = match settings {
        ProviderSettings::Slate(s) => {
            Arc::new(http::slate(s, client.clone()).with_redactor(redactor.clone()))
        }
        ProviderSettings::Simulated(s) => Arc::new(simulated::Simulated::new(s.clone())),
    };
    Arc::new(Redacting {
        inner,
        redactor: redactor.clone(),
    })
}

/// Scrubs a provider's answers with the topology's [`Redactor`].
struct Redacting {
    inner: Arc<dyn Provider>,
    redactor: Arc<Redactor>,
}

impl Redacting {
    fn observation(&self, o: Observation) -> Observation {
        let r = &self.redactor;
        Observation {
            status: o.status,
            raw_status: o.raw_status.map(|s| r.scrub(&s)),
            output: o.output.map(|v| r.scrub_json(v)),
            error: o.error.map(|v| r.scrub_json(v)),
        }
    }
}

#[async_trait]
impl Provider for Redacting {
    async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProviderError> {
        match self.inner.start(req).await {
            Ok(s) => Ok(Started {
                vendor_run_id: s.vendor_run_id,
                observation: self.observation(s.observation),
            }),
            Err(e) => Err(e.scrubbed(&self.redactor)),
        }
    }

    async fn poll(&self, req: PollRequest<'_>) -> Result<Observation, ProviderError> {
        match self.inner.poll(req).await {
            Ok(o) => Ok(self.observation(o)),
            Err(e) => Err(e.scrubbed(&self.redactor)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunStatus;
    use serde_json::json;

    /// Answers with the token echoed everywhere it can.
    struct Echo(Result<(), ProviderError>);

    #[async_trait]
    impl Provider for Echo {
        async fn start(&self, _: StartRequest<'_>) -> Result<Started, ProviderError> {
            self.0.clone()?;
            Ok(Started {
                vendor_run_id: "v".into(),
                observation: self.poll_now(),
            })
        }
        async fn poll(&self, _: PollRequest<'_>) -> Result<Observation, ProviderError> {
            self.0.clone()?;
            Ok(self.poll_now())
        }
    }

    impl Echo {
        fn poll_now(&self) -> Observation {
            Observation {
                status: RunStatus::Running,
                raw_status: Some("RUNNING slat_tok_42".into()),
                output: Some(json!({"h": "Bearer slat_tok_42"})),
                error: Some(json!({"slat_tok_42": 1})),
            }
        }
    }

    #[tokio::test]
    async fn every_answer_and_error_is_scrubbed() {
        let r = Arc::new(Redactor::new(["slat_tok_42"]));
        let wrap = |inner: Result<(), ProviderError>| Redacting {
            inner: Arc::new(Echo(inner)),
            redactor: r.clone(),
        };
        let inputs = json!({});
        let start = StartRequest {
            run_id: RunId::new(),
            workflow_id: "wf",
            inputs: &inputs,
        };
        let poll = PollRequest {
            workflow_id: "wf",
            vendor_run_id: "v",
        };
        let ok = wrap(Ok(()));
        let text = format!("{:?} {:?}", ok.start(start).await, ok.poll(poll).await);
        assert!(
            !text.contains("slat_tok_42") && text.contains("***"),
            "{text}"
        );
        for e in [
            ProviderError::Transient {
                kind: FailureKind::ServerError,
                detail: "HTTP 500: Bearer slat_tok_42".into(),
                retry_after: None,
            },
            ProviderError::Unauthorized {
                status: 401,
                detail: "slat_tok_42 expired".into(),
            },
            ProviderError::Rejected {
                status: 400,
                body: json!({"echo": ["Bearer slat_tok_42"]}),
            },
        ] {
            let p = wrap(Err(e));
            let text = format!("{:?} {:?}", p.start(start).await, p.poll(poll).await);
            assert!(!text.contains("slat_tok_42"), "{text}");
        }
    }
}
