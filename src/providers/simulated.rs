//! A provider with no vendor behind it: runs are queued for the first fifth
//! of `duration`, then running, then end with the configured outcome.
//! Stateless (the start time travels in the vendor run id), so it survives
//! restarts like a real vendor would.

use super::{
    CancelSupport, Capabilities, PollRequest, Provider, ProviderError, StartRequest, Started,
};
use crate::config::SimulatedSettings;
use crate::run::{Observation, RunStatus};
use crate::time::Timestamp;
use async_trait::async_trait;
use serde_json::json;

/// The simulated provider.
pub struct Simulated {
    settings: SimulatedSettings,
}

impl Simulated {
    /// A provider whose runs behave as `settings` say.
    pub fn new(settings: SimulatedSettings) -> Self {
        Simulated { settings }
    }

    fn at(&self, started: Timestamp, now: Timestamp, vendor_run_id: &str) -> Observation {
        let elapsed = now.since(started);
        let total = self.settings.duration;
        if elapsed >= total {
            let (raw, error) = match self.settings.outcome {
                RunStatus::Failed => (
                    "FAILED",
                    Some(
                        json!({"code": "SIMULATED_FAILURE", "message": "the simulated run failed"}),
                    ),
                ),
                RunStatus::Canceled => ("CANCELED", None),
                _ => ("COMPLETED", None),
            };
            let output = (self.settings.outcome == RunStatus::Succeeded).then(|| {
                self.settings
                    .output
                    .clone()
                    .unwrap_or_else(|| json!({"simulated": true, "vendor_run_id": vendor_run_id}))
            });
            Observation {
                status: self.settings.outcome,
                raw_status: Some(raw.into()),
                output,
                error,
                unknown: false,
            }
        } else if elapsed.saturating_mul(5) < total {
            queued()
        } else {
            Observation {
                status: RunStatus::Running,
                raw_status: Some("RUNNING".into()),
                output: None,
                error: None,
                unknown: false,
            }
        }
    }
}

fn queued() -> Observation {
    Observation {
        status: RunStatus::Queued,
        raw_status: Some("QUEUED".into()),
        output: None,
        error: None,
        unknown: false,
    }
}

#[async_trait]
impl Provider for Simulated {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // A repeated start restarts the clock; nothing is duplicated
            // that anyone could observe.
            idempotent_start: true,
            reconcile: false,
            cancel: CancelSupport::Vendor,
            output_request: false,
        }
    }

    async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProviderError> {
        // Nothing to deduplicate: a repeated start merely restarts the clock.
        let started = req.run_id.to_string();
        let ms = Timestamp::now().0;
        Ok(Started {
            vendor_run_id: format!("sim_{started}_{ms}"),
            observation: queued(),
        })
    }

    async fn poll(&self, req: PollRequest<'_>) -> Result<Observation, ProviderError> {
        let started = req
            .vendor_run_id
            .rsplit('_')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Timestamp)
            .ok_or_else(|| ProviderError::NotFound {
                detail: "unknown simulated run".into(),
                body: json!({"error": "unknown simulated run"}),
            })?;
        Ok(self.at(started, Timestamp::now(), req.vendor_run_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn moves_through_statuses() {
        let s = Simulated::new(SimulatedSettings {
            duration: Duration::from_secs(10),
            outcome: RunStatus::Failed,
            output: None,
        });
        let t0 = Timestamp(1_000_000);
        assert_eq!(s.at(t0, t0, "v").status, RunStatus::Queued);
        assert_eq!(
            s.at(t0, t0.plus(Duration::from_secs(5)), "v").status,
            RunStatus::Running
        );
        let end = s.at(t0, t0.plus(Duration::from_secs(10)), "v");
        assert_eq!(
            (end.status, end.raw_status.as_deref()),
            (RunStatus::Failed, Some("FAILED"))
        );
        assert!(end.error.is_some() && end.output.is_none());
    }
}
