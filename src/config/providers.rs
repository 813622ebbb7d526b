//! `[providers.NAME]`: the workflow APIs runs are started on.

use super::{bounded, check_url, positive, secret, Problems, RawSecret};
use crate::run::RunStatus;
use crate::secret::Secret;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// Largest provider `timeout` (5 min per vendor request).
pub const MAX_PROVIDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest simulated `duration` (30 days, the longest run timeout).
pub const MAX_SIMULATED_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// `[providers.NAME]`
#[derive(Debug, Clone)]
pub enum ProviderSettings {
    Slate(SlateSettings),
    Simulated(SimulatedSettings),
}

/// A Slate account.
#[derive(Debug, Clone)]
pub struct SlateSettings {
    pub base_url: String,
    pub token: Secret,
    pub workspace_id: Option<String>,
    pub timeout: Duration,
}

/// A provider that needs no account: runs move through statuses over time.
#[derive(Debug, Clone)]
pub struct SimulatedSettings {
    pub duration: Duration,
    pub outcome: RunStatus,
    pub output: Option<Value>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(super) enum RawProvider {
    Slate(RawSlate),
    Simulated(RawSimulated),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlate {
    base_url: String,
    token: RawSecret,
    workspace_id: Option<String>,
    #[serde(default = "default_provider_timeout", with = "humantime_serde")]
    timeout: Duration,
}

fn default_provider_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulated {
    #[serde(default = "default_sim_duration", with = "humantime_serde")]
    duration: Duration,
    #[serde(default = "default_sim_outcome")]
    outcome: String,
    output: Option<Value>,
}

fn default_sim_duration() -> Duration {
    Duration::from_secs(3)
}

fn default_sim_outcome() -> String {
    "succeeded".into()
}

pub(super) fn check_provider(
    key: &str,
    raw: RawProvider,
    p: &mut Problems,
) -> Option<ProviderSettings> {
    match raw {
        RawProvider::Slate(s) => {
            let base_url = check_url(&format!("{key}.base_url"), &s.base_url, p);
            let token = secret(&s.token, &format!("{key}.token"), p);
            positive(&format!("{key}.timeout"), s.timeout, p);
            bounded(
                &format!("{key}.timeout"),
                s.timeout,
                MAX_PROVIDER_TIMEOUT,
                p,
            );
            Some(ProviderSettings::Slate(SlateSettings {
                base_url: base_url?,
                token: token?,
                workspace_id: s.workspace_id,
                timeout: s.timeout,
            }))
        }
        RawProvider::Simulated(s) => {
            bounded(
                &format!("{key}.duration"),
                s.duration,
                MAX_SIMULATED_DURATION,
                p,
            );
            let outcome = match s.outcome.as_str() {
                "succeeded" => RunStatus::Succeeded,
                "failed" => RunStatus::Failed,
                "canceled" => RunStatus::Canceled,
                other => {
                    p.add(
                        format!("{key}.outcome"),
                        format!("{other:?} is not one of succeeded, failed, canceled"),
                    );
                    return None;
                }
            };
            Some(ProviderSettings::Simulated(SimulatedSettings {
                duration: s.duration,
                outcome,
                output: s.output,
            }))
        }
    }
}
