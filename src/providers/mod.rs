//! Workflow APIs behind one small interface: start, poll, output, cancel
//! and reconcile, with normalized answers and vendor-neutral errors. The
//! scheduler never knows which vendor it is driving and never sees an HTTP
//! status code.
//!
//! [`engine::Engine`] is the one engine for JSON workflow APIs, driven by a
//! [`spec::Description`]; the vendors are presets of it
//! ([`presets`]), and the `http` kind lets a user write a description in
//! config. [`simulated::Simulated`] needs no account and powers the quick
//! start.

pub mod engine;
pub mod presets;
pub mod simulated;
pub mod spec;

use crate::config::ProviderSettings;
use crate::run::{Observation, RunId};
use crate::secret::Redactor;
use crate::time::Timestamp;
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// What a start call needs.
#[derive(Debug, Clone, Copy)]
pub struct StartRequest<'a> {
    /// Ours: the idempotency key and the body's `run_id` derive from it.
    pub run_id: RunId,
    /// The vendor's workflow.
    pub workflow_id: &'a str,
    /// The route's mapped inputs.
    pub inputs: &'a Value,
}

/// A started vendor run.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// The vendor's id of the new run (numbers as text).
    pub vendor_run_id: String,
    /// The status in the start answer.
    pub observation: Observation,
}

/// What a poll, output fetch or cancel needs (some vendors key runs by
/// workflow too).
#[derive(Debug, Clone, Copy)]
pub struct PollRequest<'a> {
    /// The vendor's workflow.
    pub workflow_id: &'a str,
    /// The vendor's run.
    pub vendor_run_id: &'a str,
}

/// What reconciling an interrupted start needs: the workflow, and when our
/// first start attempt was recorded (the provider applies its clock-skew
/// margin).
#[derive(Debug, Clone, Copy)]
pub struct ReconcileRequest<'a> {
    /// The workflow whose runs are listed.
    pub workflow_id: &'a str,
    /// When the first start attempt was recorded.
    pub since: Timestamp,
}

/// Vendor runs a reconciliation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconciled {
    /// Runs of the workflow created since the start was recorded (minus the
    /// margin), newest first. The scheduler drops those other runs own.
    Candidates(Vec<String>),
    /// The listing could not tell (a full page of candidates): more runs
    /// may exist than were seen.
    TooMany,
}

/// What a cancel achieved.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The vendor run is canceled; the observation when the vendor said so.
    Canceled(Option<Observation>),
    /// Accepted, not yet effective: keep polling.
    Pending,
    /// The vendor refuses (Slate once a run left QUEUED), with its reason.
    Refused(Value),
    /// The vendor says the run had already ended.
    AlreadyEnded,
}

/// How a provider cancels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelSupport {
    /// Through the vendor's API.
    Vendor,
    /// The vendor has no cancel: runbridge stops tracking and marks the run
    /// canceled locally; the vendor run may still be going.
    LocalOnly,
}

/// What a provider guarantees, so the scheduler can pick the safe path
/// without knowing the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A repeated start with the same run id never creates a second run.
    pub idempotent_start: bool,
    /// Interrupted starts can be reconciled through a runs listing.
    pub reconcile: bool,
    /// Whether cancel reaches the vendor.
    pub cancel: CancelSupport,
    /// Output comes from a separate request once a run succeeded.
    pub output_request: bool,
}

/// What kind of failure a provider call had, vendor-neutral: the scheduler
/// records and logs it (rate-limited per provider and kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No answer within the provider's timeout (or the vendor's 408).
    Timeout,
    /// The connection could not be made or broke.
    Connection,
    /// The vendor's rate or concurrency limit.
    RateLimited,
    /// The vendor failed on its side.
    ServerError,
    /// A success whose body could not be understood (not JSON, no
    /// recognizable status, no run id).
    BadAnswer,
    /// The vendor refused our credentials.
    Unauthorized,
    /// The vendor is busy with other runs (OnePin's 409 on start).
    Busy,
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
            FailureKind::Busy => "busy",
            FailureKind::Other => "other",
        }
    }
}

/// Why a provider call did not succeed, in terms the scheduler acts on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later: rate limits, vendor-side failures, timeouts,
    /// connection errors, answers that could not be understood. `retry_after`
    /// is the vendor's hint.
    #[error("{detail}")]
    Transient {
        kind: FailureKind,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The vendor is at a concurrency limit or has another run active:
    /// retried with backoff, not a failure.
    #[error("{detail}")]
    Busy {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The vendor refused our credentials. Retried with backoff until the
    /// run's deadline (tokens get rotated); reported in `/readyz`, whose
    /// report keeps the vendor's code for operators.
    #[error("{detail}")]
    Unauthorized { detail: String, vendor_code: u16 },
    /// The vendor does not know the run or workflow.
    #[error("{detail}")]
    NotFound { detail: String, body: Value },
    /// The vendor refused the request; repeating it will not help.
    #[error("{detail}")]
    Rejected { detail: String, body: Value },
}

impl ProviderError {
    /// The kind of failure, for logs and throttling.
    pub fn kind(&self) -> FailureKind {
        match self {
            ProviderError::Transient { kind, .. } => *kind,
            ProviderError::Busy { .. } => FailureKind::Busy,
            ProviderError::Unauthorized { .. } => FailureKind::Unauthorized,
            ProviderError::NotFound { .. } | ProviderError::Rejected { .. } => FailureKind::Other,
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
            ProviderError::Busy {
                detail,
                retry_after,
            } => ProviderError::Busy {
                detail: r.scrub(&detail),
                retry_after,
            },
            ProviderError::Unauthorized {
                detail,
                vendor_code,
            } => ProviderError::Unauthorized {
                detail: r.scrub(&detail),
                vendor_code,
            },
            ProviderError::NotFound { detail, body } => ProviderError::NotFound {
                detail: r.scrub(&detail),
                body: r.scrub_json(body),
            },
            ProviderError::Rejected { detail, body } => ProviderError::Rejected {
                detail: r.scrub(&detail),
                body: r.scrub_json(body),
            },
        }
    }
}

/// A workflow API.
#[async_trait]
pub trait Provider: Send + Sync {
    /// What this provider guarantees (idempotent starts, reconciliation,
    /// cancel, separate output).
    fn capabilities(&self) -> Capabilities;

    /// Starts a run. Providers with idempotency keys derive one from
    /// `run_id`, so a repeat returns the same run.
    async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProviderError>;

    /// Reads a run's current status.
    async fn poll(&self, req: PollRequest<'_>) -> Result<Observation, ProviderError>;

    /// Fetches a succeeded run's output where it is a separate request.
    async fn output(&self, _req: PollRequest<'_>) -> Result<Option<Value>, ProviderError> {
        Ok(None)
    }

    /// Asks the vendor to cancel a run.
    async fn cancel(&self, _req: PollRequest<'_>) -> Result<CancelOutcome, ProviderError> {
        Ok(CancelOutcome::Canceled(None))
    }

    /// Lists the workflow's runs created since an interrupted start.
    async fn reconcile(&self, _req: ReconcileRequest<'_>) -> Result<Reconciled, ProviderError> {
        Ok(Reconciled::TooMany)
    }
}

/// Builds a provider from its settings, sharing one HTTP client. Every
/// provider is wrapped so that what it returns (statuses, outputs, errors,
/// vendor bodies) is scrubbed of known secrets before anyone stores or
/// forwards it: a vendor echoing our `Authorization` header cannot leak it.
pub fn build(
    name: &str,
    settings: &ProviderSettings,
    client: &reqwest::Client,
    redactor: &Arc<Redactor>,
) -> Arc<dyn Provider> {
    let inner: Arc<dyn Provider> = match settings {
        ProviderSettings::Http(s) => Arc::new(engine::Engine::new(
            name,
            s,
            client.clone(),
            redactor.clone(),
        )),
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
            unknown: o.unknown,
        }
    }
}

#[async_trait]
impl Provider for Redacting {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

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

    async fn output(&self, req: PollRequest<'_>) -> Result<Option<Value>, ProviderError> {
        match self.inner.output(req).await {
            Ok(o) => Ok(o.map(|v| self.redactor.scrub_json(v))),
            Err(e) => Err(e.scrubbed(&self.redactor)),
        }
    }

    async fn cancel(&self, req: PollRequest<'_>) -> Result<CancelOutcome, ProviderError> {
        match self.inner.cancel(req).await {
            Ok(CancelOutcome::Canceled(o)) => {
                Ok(CancelOutcome::Canceled(o.map(|o| self.observation(o))))
            }
            Ok(CancelOutcome::Refused(v)) => {
                Ok(CancelOutcome::Refused(self.redactor.scrub_json(v)))
            }
            Ok(other) => Ok(other),
            Err(e) => Err(e.scrubbed(&self.redactor)),
        }
    }

    async fn reconcile(&self, req: ReconcileRequest<'_>) -> Result<Reconciled, ProviderError> {
        self.inner
            .reconcile(req)
            .await
            .map_err(|e| e.scrubbed(&self.redactor))
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
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                idempotent_start: true,
                reconcile: false,
                cancel: CancelSupport::Vendor,
                output_request: false,
            }
        }
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
                unknown: false,
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
                detail: "slat_tok_42 expired".into(),
                vendor_code: 401,
            },
            ProviderError::Rejected {
                detail: "no".into(),
                body: json!({"echo": ["Bearer slat_tok_42"]}),
            },
        ] {
            let p = wrap(Err(e));
            let text = format!("{:?} {:?}", p.start(start).await, p.poll(poll).await);
            assert!(!text.contains("slat_tok_42"), "{text}");
        }
    }
}
