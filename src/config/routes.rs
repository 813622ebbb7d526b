//! `[routes.NAME]`: webhook routes, their verification, inputs and callbacks.

use super::scheduler::MAX_RUN_TIMEOUT;
use super::{bounded, check_url, positive, secret, Problems, ProviderSettings, RawSecret};
use crate::secret::Secret;
use crate::signing::WebhookKey;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest `dedupe_ttl` (90 days of remembered delivery ids).
pub const MAX_DEDUPE_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Largest Standard Webhooks `tolerance` (1 h; it is also the replay window).
pub const MAX_TOLERANCE: Duration = Duration::from_secs(3600);

/// `[routes.NAME]`
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub provider: String,
    pub workflow_id: String,
    pub verify: VerifySettings,
    pub inputs: Vec<InputSettings>,
    pub dedupe_header: Option<String>,
    pub dedupe_ttl: Duration,
    pub run_timeout: Option<Duration>,
    /// How long a run may wait for a person (vendor status `waiting`)
    /// before it ends `timed_out`; `None`: only `run_timeout` applies.
    pub waiting_timeout: Option<Duration>,
    pub callbacks: Vec<CallbackSettings>,
}

/// How a route authenticates its sender.
#[derive(Debug, Clone)]
pub enum VerifySettings {
    None,
    Token {
        token: Secret,
    },
    Github {
        secret: Secret,
    },
    StandardWebhooks {
        key: WebhookKey,
        tolerance: Duration,
    },
}

/// Where one workflow input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// A JSON pointer into the payload ("" is the whole payload).
    Pointer(String),
    /// A request header.
    Header(String),
    /// A constant.
    Value(Value),
}

/// One workflow input of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSettings {
    pub name: String,
    pub source: InputSource,
    pub required: bool,
    pub default: Option<Value>,
}

/// One callback target of a route.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub url: String,
    pub key: WebhookKey,
    /// Event types this URL receives (default: the terminal ones).
    pub events: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    provider: String,
    workflow_id: String,
    #[serde(default)]
    verify: Option<RawVerify>,
    #[serde(default)]
    inputs: Vec<RawInput>,
    dedupe_header: Option<String>,
    #[serde(default = "default_dedupe_ttl", with = "humantime_serde")]
    dedupe_ttl: Duration,
    #[serde(default, with = "humantime_serde")]
    run_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    waiting_timeout: Option<Duration>,
    #[serde(default)]
    callbacks: Vec<RawCallback>,
}

fn default_dedupe_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum RawVerify {
    None(RawNoVerify),
    Token(RawToken),
    Github(RawGithub),
    StandardWebhooks(RawStandard),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNoVerify {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    token: RawSecret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    secret: RawSecret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStandard {
    secret: RawSecret,
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    tolerance: Duration,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    pointer: Option<String>,
    header: Option<String>,
    value: Option<Value>,
    #[serde(default = "yes")]
    required: bool,
    default: Option<Value>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallback {
    url: String,
    secret: RawSecret,
    events: Option<Vec<String>>,
}

pub(super) fn check_route(
    key: &str,
    raw: RawRoute,
    providers: &BTreeMap<String, ProviderSettings>,
    p: &mut Problems,
) -> Option<RouteSettings> {
    let before = p.0.len();
    if !providers.contains_key(&raw.provider) {
        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
        p.add(
            format!("{key}.provider"),
            format!(
                "unknown provider {:?} (configured: {})",
                raw.provider,
                known.join(", ")
            ),
        );
    }
    if raw.workflow_id.trim().is_empty() {
        p.add(format!("{key}.workflow_id"), "must not be empty");
    }
    let verify = match raw.verify {
        None => {
            p.add(
                format!("{key}.verify"),
                "missing; say verify = { kind = \"none\" } to accept unauthenticated requests",
            );
            None
        }
        Some(RawVerify::None(_)) => Some(VerifySettings::None),
        Some(RawVerify::Token(t)) => secret(&t.token, &format!("{key}.verify.token"), p)
            .map(|token| VerifySettings::Token { token }),
        Some(RawVerify::Github(g)) => secret(&g.secret, &format!("{key}.verify.secret"), p)
            .map(|secret| VerifySettings::Github { secret }),
        Some(RawVerify::StandardWebhooks(s)) => {
            let k = format!("{key}.verify.secret");
            bounded(
                &format!("{key}.verify.tolerance"),
                s.tolerance,
                MAX_TOLERANCE,
                p,
            );
            secret(&s.secret, &k, p).and_then(|sec| match WebhookKey::parse(sec.expose()) {
                Ok(key) => Some(VerifySettings::StandardWebhooks {
                    key,
                    tolerance: s.tolerance,
                }),
                Err(e) => {
                    p.add(k, e.to_string());
                    None
                }
            })
        }
    };
    let mut inputs = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, inp) in raw.inputs.into_iter().enumerate() {
        let ik = format!("{key}.inputs[{i}]");
        if inp.name.is_empty() {
            p.add(format!("{ik}.name"), "must not be empty");
        } else if !names.insert(inp.name.clone()) {
            p.add(
                format!("{ik}.name"),
                format!("input {:?} is defined twice", inp.name),
            );
        }
        let source = match (inp.pointer, inp.header, inp.value) {
            (Some(ptr), None, None) => {
                if !ptr.is_empty() && !ptr.starts_with('/') {
                    p.add(
                        format!("{ik}.pointer"),
                        format!("{ptr:?} is not a JSON pointer (use \"\" or start with '/')"),
                    );
                }
                InputSource::Pointer(ptr)
            }
            (None, Some(h), None) => {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    p.add(
                        format!("{ik}.header"),
                        format!("{h:?} is not a header name"),
                    );
                }
                InputSource::Header(h.to_ascii_lowercase())
            }
            (None, None, Some(v)) => InputSource::Value(v),
            _ => {
                p.add(ik.clone(), "needs exactly one of pointer, header or value");
                continue;
            }
        };
        inputs.push(InputSettings {
            name: inp.name,
            source,
            required: inp.required,
            default: inp.default,
        });
    }
    if let Some(h) = &raw.dedupe_header {
        if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.add(
                format!("{key}.dedupe_header"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    if let Some(t) = raw.run_timeout {
        positive(&format!("{key}.run_timeout"), t, p);
        bounded(&format!("{key}.run_timeout"), t, MAX_RUN_TIMEOUT, p);
    }
    if let Some(t) = raw.waiting_timeout {
        positive(&format!("{key}.waiting_timeout"), t, p);
        bounded(&format!("{key}.waiting_timeout"), t, MAX_RUN_TIMEOUT, p);
    }
    bounded(
        &format!("{key}.dedupe_ttl"),
        raw.dedupe_ttl,
        MAX_DEDUPE_TTL,
        p,
    );
    let mut callbacks = Vec::new();
    for (i, cb) in raw.callbacks.into_iter().enumerate() {
        let ck = format!("{key}.callbacks[{i}]");
        let url = check_url(&format!("{ck}.url"), &cb.url, p);
        let sk = format!("{ck}.secret");
        let key = secret(&cb.secret, &sk, p).and_then(|s| match WebhookKey::parse(s.expose()) {
            Ok(k) => Some(k),
            Err(e) => {
                p.add(sk, e.to_string());
                None
            }
        });
        let events: Vec<String> = match cb.events {
            Some(list) => list,
            None => crate::run::DEFAULT_EVENTS.map(String::from).to_vec(),
        };
        for e in &events {
            if !crate::run::EVENT_TYPES.contains(&e.as_str()) {
                p.add(
                    format!("{ck}.events"),
                    format!("{e:?} is not one of {}", crate::run::EVENT_TYPES.join(", ")),
                );
            }
        }
        if let (Some(url), Some(key)) = (url, key) {
            callbacks.push(CallbackSettings { url, key, events });
        }
    }
    if p.0.len() > before {
        return None;
    }
    Some(RouteSettings {
        provider: raw.provider,
        workflow_id: raw.workflow_id,
        verify: verify?,
        inputs,
        dedupe_header: raw.dedupe_header.map(|h| h.to_ascii_lowercase()),
        dedupe_ttl: raw.dedupe_ttl,
        run_timeout: raw.run_timeout,
        waiting_timeout: raw.waiting_timeout,
        callbacks,
    })
}
