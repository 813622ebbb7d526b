//! `[providers.NAME]`: the workflow APIs runs are started on. The vendor
//! kinds (`slate`, `onepin`, `retab`, `altostrat`) and `http` all become one
//! [`HttpSettings`]: a connection plus an API description, the vendors'
//! descriptions coming from their presets in `src/providers/presets/`.

use super::{bounded, bounded_size, check_url, positive, secret, Problems, RawSecret};
use crate::limit::{LimitSettings, RawLimit};
use crate::providers::presets::{self, VendorOptions};
use crate::providers::spec::{Compiled, Description};
use crate::run::RunStatus;
use crate::secret::Secret;
use bytesize::ByteSize;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// Largest provider `timeout` (5 min per vendor request).
pub const MAX_PROVIDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest provider `max_response_bytes` (64 MiB per vendor answer).
pub const MAX_VENDOR_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// Default provider `max_response_bytes`: vendor answers are small JSON.
pub const DEFAULT_VENDOR_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Largest simulated `duration` (30 days, the longest run timeout).
pub const MAX_SIMULATED_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// `[providers.NAME]`
#[derive(Debug, Clone)]
pub enum ProviderSettings {
    /// A JSON workflow API: a vendor preset or a user's `http` description.
    Http(Box<HttpSettings>),
    Simulated(SimulatedSettings),
}

/// A JSON workflow API: where it is, how to authenticate, how fast it may
/// be called, and its description.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The configured kind (`slate`, `onepin`, `retab`, `altostrat`, `http`).
    pub kind: String,
    pub base_url: String,
    pub token: Option<Secret>,
    /// The token as written, shown by `--explain` only when it is an
    /// `env:`/`file:` reference.
    pub token_ref: Option<String>,
    pub timeout: Duration,
    /// How much of one vendor answer is read; a longer answer is cut there
    /// (and is then not JSON), so a vendor cannot exhaust memory.
    pub max_response_bytes: u64,
    pub limit: LimitSettings,
    /// The limit keys as written, for `--explain`.
    pub raw_limit: RawLimit,
    pub api: Compiled,
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
    Slate(RawVendor),
    Onepin(RawVendor),
    Retab(RawVendor),
    Altostrat(RawVendor),
    Http(Box<RawHttp>),
    Simulated(RawSimulated),
}

/// The keys every vendor kind shares (each kind checks which apply).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVendor {
    base_url: Option<String>,
    token: RawSecret,
    workspace_id: Option<String>,
    /// Retab: `seed` or `current`.
    api_shape: Option<String>,
    /// Retab: `api-key` or `bearer`.
    auth: Option<String>,
    #[serde(default, with = "humantime_serde")]
    clock_skew: Option<Duration>,
    #[serde(default = "default_provider_timeout", with = "humantime_serde")]
    timeout: Duration,
    max_response_bytes: Option<ByteSize>,
    rate_per_s: Option<u32>,
    rate_per_min: Option<u32>,
    burst: Option<u32>,
    max_in_flight: Option<usize>,
}

/// `kind = "http"`: a connection plus a whole description.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    base_url: String,
    token: Option<RawSecret>,
    #[serde(default = "default_provider_timeout", with = "humantime_serde")]
    timeout: Duration,
    max_response_bytes: Option<ByteSize>,
    rate_per_s: Option<u32>,
    rate_per_min: Option<u32>,
    burst: Option<u32>,
    max_in_flight: Option<usize>,
    #[serde(default)]
    auth: crate::providers::spec::Auth,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    start: crate::providers::spec::StartSpec,
    status: crate::providers::spec::StatusSpec,
    statuses: crate::providers::spec::Statuses,
    output: Option<crate::providers::spec::OutputSpec>,
    cancel: Option<crate::providers::spec::CancelSpec>,
    list: Option<crate::providers::spec::ListSpec>,
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

/// The connection part every JSON API shares.
struct Connection<'a> {
    kind: &'a str,
    base_url: Option<String>,
    token: Option<&'a RawSecret>,
    timeout: Duration,
    max_response_bytes: Option<ByteSize>,
    limit: RawLimit,
}

fn http_settings(
    key: &str,
    c: Connection<'_>,
    desc: Description,
    p: &mut Problems,
) -> Option<ProviderSettings> {
    let base_url = c
        .base_url
        .and_then(|u| check_url(&format!("{key}.base_url"), &u, p));
    let token = c.token.map(|t| secret(t, &format!("{key}.token"), p));
    positive(&format!("{key}.timeout"), c.timeout, p);
    bounded(
        &format!("{key}.timeout"),
        c.timeout,
        MAX_PROVIDER_TIMEOUT,
        p,
    );
    let max_response_bytes = c
        .max_response_bytes
        .map_or(DEFAULT_VENDOR_RESPONSE_BYTES, |b| b.as_u64());
    bounded_size(
        &format!("{key}.max_response_bytes"),
        max_response_bytes,
        MAX_VENDOR_RESPONSE_BYTES,
        p,
    );
    let limit = c.limit.check(key, &mut |k, m| p.add(k, m));
    let api = desc.compile(&mut |k, m| p.add(format!("{key}.{k}"), m));
    let token = match token {
        Some(t) => Some(t?),
        None => None,
    };
    let token_ref = c
        .token
        .map(|t| t.as_str())
        .filter(|t| t.starts_with("env:") || t.starts_with("file:"))
        .map(str::to_string);
    Some(ProviderSettings::Http(Box::new(HttpSettings {
        kind: c.kind.to_string(),
        base_url: base_url?,
        token,
        token_ref,
        timeout: c.timeout,
        max_response_bytes,
        limit,
        raw_limit: c.limit,
        api: api?,
    })))
}

pub(super) fn check_provider(
    key: &str,
    raw: RawProvider,
    p: &mut Problems,
) -> Option<ProviderSettings> {
    let (kind, v) = match raw {
        RawProvider::Slate(v) => ("slate", v),
        RawProvider::Onepin(v) => ("onepin", v),
        RawProvider::Retab(v) => ("retab", v),
        RawProvider::Altostrat(v) => ("altostrat", v),
        RawProvider::Http(h) => {
            let h = *h;
            let desc = Description {
                auth: h.auth,
                headers: h.headers,
                start: h.start,
                status: h.status,
                statuses: h.statuses,
                output: h.output,
                cancel: h.cancel,
                list: h.list,
            };
            let c = Connection {
                kind: "http",
                base_url: Some(h.base_url),
                token: h.token.as_ref(),
                timeout: h.timeout,
                max_response_bytes: h.max_response_bytes,
                limit: RawLimit {
                    rate_per_s: h.rate_per_s,
                    rate_per_min: h.rate_per_min,
                    burst: h.burst,
                    max_in_flight: h.max_in_flight,
                },
            };
            return http_settings(key, c, desc, p);
        }
        RawProvider::Simulated(s) => return simulated(key, s, p),
    };
    if kind != "retab" {
        for (k, set) in [
            ("api_shape", v.api_shape.is_some()),
            ("auth", v.auth.is_some()),
        ] {
            if set {
                p.add(
                    format!("{key}.{k}"),
                    "only for kind = \"retab\"".to_string(),
                );
            }
        }
    }
    if v.clock_skew.is_some() && !matches!(kind, "onepin" | "altostrat") {
        p.add(
            format!("{key}.clock_skew"),
            "only for kinds that reconcile starts (onepin, altostrat)",
        );
    }
    if v.workspace_id.is_some() && !matches!(kind, "slate" | "onepin") {
        p.add(
            format!("{key}.workspace_id"),
            "only for kind = \"slate\" or \"onepin\"",
        );
    }
    let opts = VendorOptions {
        workspace_id: v.workspace_id.clone(),
        api_shape: v.api_shape.clone(),
        auth: v.auth.clone(),
        clock_skew: v.clock_skew,
    };
    let desc = match presets::describe(kind, &opts) {
        Ok(d) => d,
        Err((k, m)) => {
            p.add(format!("{key}.{k}"), m);
            return None;
        }
    };
    let base_url = v
        .base_url
        .or_else(|| presets::default_base_url(kind).map(str::to_string));
    if base_url.is_none() {
        p.add(format!("{key}.base_url"), "required for this kind");
    }
    let c = Connection {
        kind,
        base_url,
        token: Some(&v.token),
        timeout: v.timeout,
        max_response_bytes: v.max_response_bytes,
        limit: RawLimit {
            rate_per_s: v.rate_per_s,
            rate_per_min: v.rate_per_min,
            burst: v.burst,
            max_in_flight: v.max_in_flight,
        },
    };
    http_settings(key, c, desc, p)
}

fn simulated(key: &str, s: RawSimulated, p: &mut Problems) -> Option<ProviderSettings> {
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

impl HttpSettings {
    /// The effective description as a pasteable `kind = "http"` provider
    /// (TOML). Secrets are never printed: a literal token shows as `***`.
    pub fn explain(&self, name: &str) -> String {
        let mut table = toml::Table::new();
        table.insert("kind".into(), "http".into());
        table.insert("base_url".into(), self.base_url.clone().into());
        if self.token.is_some() {
            let shown = self.token_ref.clone().unwrap_or_else(|| "***".into());
            table.insert("token".into(), shown.into());
        }
        table.insert(
            "timeout".into(),
            humantime::format_duration(self.timeout).to_string().into(),
        );
        if self.max_response_bytes != DEFAULT_VENDOR_RESPONSE_BYTES {
            let n = i64::try_from(self.max_response_bytes).unwrap_or(i64::MAX);
            table.insert("max_response_bytes".into(), n.into());
        }
        let l = self.raw_limit;
        for (k, v) in [
            ("rate_per_s", l.rate_per_s.map(i64::from)),
            ("rate_per_min", l.rate_per_min.map(i64::from)),
            ("burst", l.burst.map(i64::from)),
            ("max_in_flight", l.max_in_flight.map(|n| n as i64)),
        ] {
            if let Some(v) = v {
                table.insert(k.into(), v.into());
            }
        }
        if let Ok(toml::Value::Table(desc)) = toml::Value::try_from(&self.api.source) {
            table.extend(desc);
        }
        let mut providers = toml::Table::new();
        providers.insert(name.to_string(), toml::Value::Table(table));
        let mut root = toml::Table::new();
        root.insert("providers".into(), toml::Value::Table(providers));
        let kind = &self.kind;
        format!(
            "# the effective description of provider {name:?} (kind = {kind:?}), as an http provider\n{}",
            toml::to_string_pretty(&root).unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::Settings;

    fn problems(toml: &str) -> Vec<String> {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap();
        match Settings::from_config(cfg) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|p| format!("{}: {}", p.key, p.message))
                    .collect()
            }
        }
    }

    #[test]
    fn http_descriptions_and_vendor_keys_are_checked_with_key_paths() {
        let bad = problems(
            r#"
            [providers.v]
            kind = "http"
            base_url = "http://x"
            [providers.v.start]
            path = "jobs"
            run_id = ["uid"]
            body = { a = "{{ inputs/x" }
            [providers.v.status]
            path = "/jobs/{{vendor_run_id}}"
            status = []
            [providers.v.statuses]
            running = ["R"]
            [providers.v.list]
            path = "/jobs"
            items = "/jobs"
            id = "/id"
            created_at = ["/t"]
            clock_skew = "2h"
            [providers.r]
            kind = "retab"
            token = "k123456"
            api_shape = "v3"
            [providers.s]
            kind = "slate"
            base_url = "http://x"
            token = "k123456"
            clock_skew = "5s"
            rate_per_s = 0
            "#,
        );
        let text = bad.join("\n");
        for key in [
            "providers.v.start.path",
            "providers.v.start.run_id",
            "providers.v.start.body",
            "providers.v.status.status",
            "providers.v.statuses",
            "providers.v.list.clock_skew",
            "providers.r.api_shape",
            "providers.s.clock_skew",
            "providers.s.rate_per_s",
        ] {
            assert!(
                text.contains(&format!("{key}:")),
                "{key} missing in:\n{text}"
            );
        }
    }
}
