//! `[routes.NAME]`: webhook routes, their verification (each kind's keys
//! live beside it in `src/ingress/verify/`), filter, inputs, dedupe, limits
//! and callbacks.

use super::scheduler::MAX_RUN_TIMEOUT;
use super::{bounded, check_url, positive, secret, Problems, RawSecret};
use crate::delivery::endpoint::{BreakerSettings, MAX_COOLDOWN};
use crate::ingress::filter::{RawRule, Rule};
use crate::ingress::limit::{OverLimit, RouteLimiter};
use crate::ingress::verify::RawKind;
pub use crate::ingress::verify::VerifySettings;
use crate::limit::{LimitSettings, RawLimit};
use crate::secret::Secret;
use crate::signing::WebhookKey;
use crate::template::{Pointer, Template};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Largest `dedupe_ttl` (90 days of remembered delivery ids).
pub const MAX_DEDUPE_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Largest verification `tolerance` (1 h; it is also the replay window).
pub const MAX_TOLERANCE: Duration = Duration::from_secs(3600);
/// Most kinds in one route's `verify` list.
pub const MAX_VERIFY_KINDS: usize = 8;

/// `[routes.NAME]`
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// The provider that runs the workflow.
    pub provider: String,
    /// The vendor's workflow id.
    pub workflow_id: String,
    /// How senders are authenticated (every kind must pass).
    pub verify: VerifySettings,
    /// Which verified requests start a run (none: all).
    pub filter: Option<Rule>,
    /// The status answered to a request the filter ignores (default 202).
    pub ignored_status: u16,
    /// How the payload maps to workflow inputs.
    pub inputs: Vec<InputSettings>,
    /// A configured delivery-id header (overrides the kind's default).
    pub dedupe_header: Option<String>,
    /// A configured delivery-id pointer into the body (overrides the kind's default).
    pub dedupe_pointer: Option<Pointer>,
    /// How long a delivery id is remembered.
    pub dedupe_ttl: Duration,
    /// Overrides `scheduler.run_timeout`.
    pub run_timeout: Option<Duration>,
    /// How long a run may wait for a person (vendor status `waiting`)
    /// before it ends `timed_out`; `None`: only `run_timeout` applies.
    pub waiting_timeout: Option<Duration>,
    /// Where run results are sent.
    pub callbacks: Vec<CallbackSettings>,
    /// The route's rate limit over verified requests (shared by every request).
    pub limiter: Arc<RouteLimiter>,
}

/// Where one workflow input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// A JSON pointer into the payload ("" is the whole payload).
    Pointer(Pointer),
    /// A request header.
    Header(String),
    /// A query parameter.
    Query(String),
    /// A constant.
    Value(Value),
    /// A template (`"{{ /a }}@{{ header.X-Event }}"`, or any JSON with placeholders).
    Template(Template),
}

/// One workflow input of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSettings {
    /// The input's name in the workflow.
    pub name: String,
    /// Where its value comes from.
    pub source: InputSource,
    /// A missing value is a 422 naming the input (unless `default` fills it).
    pub required: bool,
    /// Used when the source has no value.
    pub default: Option<Value>,
}

/// Most secrets one callback signs with (rotation needs two; a few more
/// cost one HMAC each per attempt).
pub const MAX_CALLBACK_SECRETS: usize = 8;
/// Largest `breaker_failures`.
pub const MAX_BREAKER_FAILURES: u32 = 1_000;
/// Most custom headers on one callback.
pub const MAX_CALLBACK_HEADERS: usize = 32;
/// Headers a callback may not set: hop-by-hop headers (they describe one
/// connection, not the request), the ones runbridge signs or frames the
/// body with, and `host` (it must match the URL connected to).
pub const FORBIDDEN_CALLBACK_HEADERS: [&str; 13] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-type",
    "content-length",
    "host",
    "user-agent",
];

/// One custom header of a callback.
#[derive(Debug, Clone)]
pub struct CallbackHeader {
    /// The header's name (lower case).
    pub name: reqwest::header::HeaderName,
    /// Its value, resolved when it was a secret reference.
    pub value: Secret,
    /// Given as `env:`, `file:` or `credential:`: scrubbed from logs like
    /// every secret (a literal such as `prod` is not, or every log line
    /// mentioning it would be mangled).
    pub is_reference: bool,
}

/// One callback target of a route.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// Where results are POSTed.
    pub url: String,
    /// The Standard Webhooks keys callbacks are signed with, each giving one
    /// `v1,` signature, so a receiver can rotate its secret without downtime.
    pub keys: Vec<WebhookKey>,
    /// Event types this URL receives (default: the terminal ones).
    pub events: Vec<String>,
    /// Extra headers sent with every attempt (values may be secret
    /// references, so an `Authorization` token need not sit in the file).
    pub headers: Vec<CallbackHeader>,
    /// The endpoint's limit (rate and `max_in_flight`), shared by every run
    /// delivering to this URL.
    pub limit: LimitSettings,
    /// When the endpoint's breaker opens and for how long.
    pub breaker: BreakerSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    provider: String,
    workflow_id: String,
    #[serde(default)]
    verify: Option<config::Value>,
    filter: Option<RawRule>,
    ignored_status: Option<u16>,
    #[serde(default)]
    inputs: Vec<RawInput>,
    dedupe_header: Option<String>,
    dedupe_pointer: Option<String>,
    rate_per_s: Option<u32>,
    rate_per_min: Option<u32>,
    burst: Option<u32>,
    max_in_flight: Option<usize>,
    over_limit: Option<OverLimit>,
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
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    pointer: Option<String>,
    header: Option<String>,
    query: Option<String>,
    value: Option<Value>,
    template: Option<Value>,
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
    secret: Option<RawSecret>,
    secrets: Option<Vec<RawSecret>>,
    events: Option<Vec<String>>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, RawSecret>,
    rate_per_s: Option<u32>,
    rate_per_min: Option<u32>,
    burst: Option<u32>,
    max_in_flight: Option<usize>,
    breaker_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    breaker_cooldown: Option<Duration>,
}

pub(super) fn check_route(
    key: &str,
    raw: RawRoute,
    declared: &std::collections::BTreeSet<String>,
    p: &mut Problems,
) -> Option<RouteSettings> {
    let before = p.0.len();
    // A provider that is declared but has problems of its own is reported
    // there, not again at every route using it.
    if !declared.contains(&raw.provider) {
        let known: Vec<&str> = declared.iter().map(String::as_str).collect();
        p.add(
            format!("{key}.provider"),
            if known.is_empty() {
                format!(
                    "unknown provider {:?} (no provider is configured)",
                    raw.provider
                )
            } else {
                format!(
                    "unknown provider {:?} (configured: {})",
                    raw.provider,
                    known.join(", ")
                )
            },
        );
    }
    if raw.workflow_id.trim().is_empty() {
        p.add(format!("{key}.workflow_id"), "must not be empty");
    }
    let verify = check_verify(key, raw.verify, p);
    let filter = raw
        .filter
        .and_then(|f| f.check(&format!("{key}.filter"), p));
    let ignored_status = raw.ignored_status.unwrap_or(202);
    if !(200..300).contains(&ignored_status) {
        p.add(
            format!("{key}.ignored_status"),
            "must be a 2xx status (the sender must not retry an ignored request)",
        );
    }
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
        let given = [
            inp.pointer.is_some(),
            inp.header.is_some(),
            inp.query.is_some(),
            inp.value.is_some(),
            inp.template.is_some(),
        ];
        if given.iter().filter(|b| **b).count() != 1 {
            p.add(
                ik.clone(),
                "needs exactly one of pointer, header, query, value or template",
            );
            continue;
        }
        let source = match (inp.pointer, inp.header, inp.value) {
            (Some(ptr), None, None) => match Pointer::parse(&ptr) {
                Ok(ptr) => InputSource::Pointer(ptr),
                Err(e) => {
                    p.add(format!("{ik}.pointer"), e);
                    continue;
                }
            },
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
            _ => match (inp.query, inp.template) {
                (Some(q), None) => InputSource::Query(q),
                (None, Some(t)) => match Template::parse(&t) {
                    Ok(t) => InputSource::Template(t),
                    Err(e) => {
                        p.add(format!("{ik}.template"), e);
                        continue;
                    }
                },
                _ => continue,
            },
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
    if raw.dedupe_header.is_some() && raw.dedupe_pointer.is_some() {
        p.add(
            format!("{key}.dedupe_pointer"),
            "give dedupe_header or dedupe_pointer, not both",
        );
    }
    let dedupe_pointer = raw
        .dedupe_pointer
        .as_deref()
        .and_then(|ptr| match Pointer::parse(ptr) {
            Ok(ptr) => Some(ptr),
            Err(e) => {
                p.add(format!("{key}.dedupe_pointer"), e);
                None
            }
        });
    let limit = RawLimit {
        rate_per_s: raw.rate_per_s,
        rate_per_min: raw.rate_per_min,
        burst: raw.burst,
        max_in_flight: raw.max_in_flight,
    }
    .check(key, &mut |k, m| p.add(k, m));
    if raw.over_limit.is_some() && limit.rate.is_none() && limit.max_in_flight.is_none() {
        p.add(
            format!("{key}.over_limit"),
            "needs rate_per_s, rate_per_min or max_in_flight",
        );
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
        let given: Vec<(String, RawSecret)> = match (cb.secret, cb.secrets) {
            (Some(one), None) => vec![(format!("{ck}.secret"), one)],
            (None, Some(list)) => {
                if list.is_empty() {
                    p.add(format!("{ck}.secrets"), "must not be empty");
                }
                if list.len() > MAX_CALLBACK_SECRETS {
                    p.add(
                        format!("{ck}.secrets"),
                        format!("at most {MAX_CALLBACK_SECRETS} secrets"),
                    );
                }
                list.into_iter()
                    .enumerate()
                    .map(|(j, s)| (format!("{ck}.secrets[{j}]"), s))
                    .collect()
            }
            (Some(_), Some(_)) => {
                p.add(format!("{ck}.secrets"), "give secret or secrets, not both");
                Vec::new()
            }
            (None, None) => {
                p.add(format!("{ck}.secret"), "missing (secret or secrets)");
                Vec::new()
            }
        };
        let keys: Vec<WebhookKey> = given
            .iter()
            .filter_map(|(sk, raw)| callback_key(raw, sk, p))
            .collect();
        let headers = check_headers(&ck, cb.headers, p);
        let limit = RawLimit {
            rate_per_s: cb.rate_per_s,
            rate_per_min: cb.rate_per_min,
            burst: cb.burst,
            max_in_flight: cb.max_in_flight,
        }
        .check(&ck, &mut |k, m| p.add(k, m));
        let defaults = BreakerSettings::default();
        let breaker = BreakerSettings {
            failures: cb.breaker_failures.unwrap_or(defaults.failures),
            cooldown: cb.breaker_cooldown.unwrap_or(defaults.cooldown),
        };
        if breaker.failures > MAX_BREAKER_FAILURES {
            p.add(
                format!("{ck}.breaker_failures"),
                format!("must be between 0 (no breaker) and {MAX_BREAKER_FAILURES}"),
            );
        }
        if let Some(c) = cb.breaker_cooldown {
            positive(&format!("{ck}.breaker_cooldown"), c, p);
            bounded(&format!("{ck}.breaker_cooldown"), c, MAX_COOLDOWN, p);
            if cb.breaker_failures == Some(0) {
                p.add(
                    format!("{ck}.breaker_cooldown"),
                    "has no effect with breaker_failures = 0",
                );
            }
        }
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
        if let Some(url) = url {
            if keys.len() == given.len() && !keys.is_empty() {
                callbacks.push(CallbackSettings {
                    url,
                    keys,
                    events,
                    headers,
                    limit,
                    breaker,
                });
            }
        }
    }
    if p.0.len() > before {
        return None;
    }
    Some(RouteSettings {
        provider: raw.provider,
        workflow_id: raw.workflow_id,
        verify: verify?,
        filter,
        ignored_status,
        inputs,
        dedupe_header: raw.dedupe_header.map(|h| h.to_ascii_lowercase()),
        dedupe_pointer,
        dedupe_ttl: raw.dedupe_ttl,
        run_timeout: raw.run_timeout,
        waiting_timeout: raw.waiting_timeout,
        callbacks,
        limiter: Arc::new(RouteLimiter::new(limit, raw.over_limit.unwrap_or_default())),
    })
}

/// One callback signing secret: a Standard Webhooks `whsec_` secret.
fn callback_key(raw: &RawSecret, sk: &str, p: &mut Problems) -> Option<WebhookKey> {
    secret(raw, sk, p).and_then(|s| match WebhookKey::parse(s.expose()) {
        // Receivers' Standard Webhooks libraries expect the prefix.
        Ok(_) if !s.expose().starts_with("whsec_") => {
            p.add(
                sk,
                "must start with \"whsec_\" (a Standard Webhooks secret: whsec_ + base64 of 24 to 64 bytes)",
            );
            None
        }
        Ok(k) => Some(k),
        Err(e) => {
            p.add(sk, e.to_string());
            None
        }
    })
}

/// A callback's custom headers: valid names and values, none that runbridge
/// sets itself or that describe the connection.
fn check_headers(
    ck: &str,
    raw: std::collections::BTreeMap<String, RawSecret>,
    p: &mut Problems,
) -> Vec<CallbackHeader> {
    if raw.len() > MAX_CALLBACK_HEADERS {
        p.add(
            format!("{ck}.headers"),
            format!("at most {MAX_CALLBACK_HEADERS} headers"),
        );
    }
    let mut out = Vec::new();
    for (name, value) in raw {
        let hk = format!("{ck}.headers.{name}");
        let lower = name.to_ascii_lowercase();
        let Ok(hn) = reqwest::header::HeaderName::from_bytes(lower.as_bytes()) else {
            p.add(hk, format!("{name:?} is not a header name"));
            continue;
        };
        if FORBIDDEN_CALLBACK_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") {
            p.add(
                hk,
                format!("{name:?} is set by runbridge or describes the connection; it cannot be configured"),
            );
            continue;
        }
        let Some(v) = secret(&value, &hk, p) else {
            continue;
        };
        // The value is not shown: it may be a token.
        if reqwest::header::HeaderValue::from_str(v.expose()).is_err() {
            p.add(
                hk,
                "not a valid header value (control characters or non-ASCII)",
            );
            continue;
        }
        let is_reference = ["env:", "file:", "credential:"]
            .iter()
            .any(|pre| value.as_str().starts_with(pre));
        out.push(CallbackHeader {
            name: hn,
            value: v,
            is_reference,
        });
    }
    out
}

/// `verify`: one kind (a table) or a list of kinds, all of which must pass.
fn check_verify(key: &str, raw: Option<config::Value>, p: &mut Problems) -> Option<VerifySettings> {
    let vk = format!("{key}.verify");
    let Some(raw) = raw else {
        p.add(
            vk,
            "missing; say verify = { kind = \"none\" } to accept unauthenticated requests",
        );
        return None;
    };
    let before = p.0.len();
    let mut checks = Vec::new();
    match raw.clone().into_array() {
        Ok(list) => {
            if list.is_empty() {
                p.add(
                    &vk,
                    "an empty list; say [{ kind = \"none\" }] to accept anyone",
                );
            }
            if list.len() > MAX_VERIFY_KINDS {
                p.add(&vk, format!("at most {MAX_VERIFY_KINDS} kinds"));
            }
            for (i, item) in list.into_iter().enumerate() {
                let ik = format!("{vk}[{i}]");
                if let Some(k) = p.parse::<RawKind>(&ik, Some(item)) {
                    checks.extend(k.check(&ik, p));
                }
            }
        }
        Err(_) => {
            if let Some(k) = p.parse::<RawKind>(&vk, Some(raw)) {
                checks.extend(k.check(&vk, p));
            }
        }
    }
    (p.0.len() == before).then(|| VerifySettings::new(checks))
}
