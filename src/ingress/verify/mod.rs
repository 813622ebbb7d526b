//! Sender verification. A route's `verify` is one kind or a list of kinds,
//! all of which must pass, checked cheapest first: kinds that need only
//! headers, the query or the peer address (an IP allow-list, a token, basic
//! auth) run before a single body byte is read; signature kinds run on the
//! raw body before any parsing. Every comparison is constant-time, and every
//! signature kind accepts several secrets so a secret rotates without downtime.
//!
//! One file per kind: each holds its raw config, its check at load and its
//! verification.

pub mod basic;
pub mod github;
pub mod hmac;
pub mod ip_allow;
pub mod shopify;
pub mod slack;
pub mod standard_webhooks;
pub mod stripe;
pub mod token;

use super::{Headers, IngressError};
use crate::config::limits::MAX_TOLERANCE;
use crate::config::{bounded, secret, Problems, RawSecret};
use crate::secret::Secret;
use crate::signing::ct_eq;
use crate::template::Pointer;
use crate::time::Timestamp;
use serde::Deserialize;
use std::time::Duration;

/// Most secrets one verification kind accepts (a rotation needs two).
pub const MAX_SECRETS: usize = 16;

/// A refusal: 401 with a message that names what is wrong, never a secret.
pub(crate) fn deny(msg: impl Into<String>) -> IngressError {
    IngressError::Unauthorized(msg.into())
}

/// One way of authenticating a sender, split in two phases so that every
/// check needing no body runs before a single body byte is read (an
/// unauthenticated sender then costs no body buffer).
pub trait Kind {
    /// Checks that need headers, the query or the peer only; runs before the body is read.
    fn before_body(&self, req: &dyn Headers, now: Timestamp) -> Result<(), IngressError>;
    /// Checks that need the raw body; runs once it is read.
    fn with_body(&self, req: &dyn Headers, body: &[u8], now: Timestamp)
        -> Result<(), IngressError>;
    /// True when [`Kind::before_body`] alone authenticates the sender.
    fn header_only(&self) -> bool;
    /// Every secret the kind knows, for the redactor (so none is echoed).
    fn secrets(&self) -> Vec<String>;
    /// Where this sender puts its delivery id, if it has one.
    fn dedupe(&self) -> Option<DedupeSource> {
        None
    }
}

/// Where a delivery id is found: a header or a JSON pointer into the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupeSource {
    /// A request header (lowercase name).
    Header(String),
    /// A JSON pointer into the parsed body.
    Pointer(Pointer),
}

/// One configured kind.
#[derive(Debug, Clone)]
pub enum Check {
    /// `none`: anyone may call (said explicitly).
    None,
    /// `ip_allow`: the client address in a CIDR list.
    IpAllow(ip_allow::IpAllow),
    /// `token`: a shared token in `Authorization: Bearer`, a header or a query parameter.
    Token(token::Token),
    /// `basic`: HTTP basic auth.
    Basic(basic::Basic),
    /// `github`: `X-Hub-Signature-256`.
    Github(github::Github),
    /// `stripe`: `Stripe-Signature`.
    Stripe(stripe::Stripe),
    /// `slack`: `X-Slack-Signature` with `X-Slack-Request-Timestamp`.
    Slack(slack::Slack),
    /// `shopify`: `X-Shopify-Hmac-SHA256`.
    Shopify(shopify::Shopify),
    /// `hmac`: a configurable HMAC header.
    Hmac(hmac::Hmac),
    /// `standard-webhooks`: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks(standard_webhooks::StandardWebhooks),
}

impl Check {
    fn kind(&self) -> Option<&dyn Kind> {
        Some(match self {
            Check::None => return None,
            Check::IpAllow(k) => k,
            Check::Token(k) => k,
            Check::Basic(k) => k,
            Check::Github(k) => k,
            Check::Stripe(k) => k,
            Check::Slack(k) => k,
            Check::Shopify(k) => k,
            Check::Hmac(k) => k,
            Check::StandardWebhooks(k) => k,
        })
    }

    /// Order of checking: the address, then shared secrets, then signatures.
    fn cost(&self) -> u8 {
        match self {
            Check::None | Check::IpAllow(_) => 0,
            Check::Token(_) | Check::Basic(_) => 1,
            _ => 2,
        }
    }
}

/// A route's verification: every listed kind must pass, cheapest first.
#[derive(Debug, Clone)]
pub struct VerifySettings {
    checks: Vec<Check>,
}

impl VerifySettings {
    /// Verification by these kinds, reordered cheapest first.
    pub fn new(mut checks: Vec<Check>) -> Self {
        checks.sort_by_key(Check::cost);
        VerifySettings { checks }
    }

    /// The kinds, in checking order.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// Every secret of every kind (for the redactor).
    pub fn secrets(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter_map(Check::kind)
            .flat_map(|k| k.secrets())
            .collect()
    }

    /// The delivery id source of the first kind that defines one.
    pub fn dedupe(&self) -> Option<DedupeSource> {
        self.checks
            .iter()
            .filter_map(Check::kind)
            .find_map(|k| k.dedupe())
    }

    /// True when a Slack kind is among the checks (Slack's `url_verification`
    /// is answered only there).
    pub fn has_slack(&self) -> bool {
        self.checks.iter().any(|c| matches!(c, Check::Slack(_)))
    }

    /// Runs every header-only check (all kinds' first phase).
    pub fn before_body(&self, req: &dyn Headers, now: Timestamp) -> Result<(), IngressError> {
        for k in self.checks.iter().filter_map(Check::kind) {
            k.before_body(req, now)?;
        }
        Ok(())
    }

    /// Runs every body check.
    pub fn with_body(
        &self,
        req: &dyn Headers,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), IngressError> {
        for k in self.checks.iter().filter_map(Check::kind) {
            k.with_body(req, body, now)?;
        }
        Ok(())
    }

    /// True when the first phase alone authenticates (no signature kind).
    pub fn complete_before_body(&self) -> bool {
        self.checks
            .iter()
            .filter_map(Check::kind)
            .all(|k| k.header_only())
    }
}

/// Checks one request against a route's verification, both phases.
pub fn verify(
    v: &VerifySettings,
    req: &dyn Headers,
    body: &[u8],
    now: Timestamp,
) -> Result<(), IngressError> {
    v.before_body(req, now)?;
    v.with_body(req, body, now)
}

/// `verify = { kind = ... }` as written.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RawKind {
    /// `none`
    None(RawNone),
    /// `ip_allow` (also `ip-allow`)
    #[serde(rename = "ip_allow", alias = "ip-allow")]
    IpAllow(ip_allow::Raw),
    /// `token`
    Token(token::Raw),
    /// `basic`
    Basic(basic::Raw),
    /// `github`
    Github(github::Raw),
    /// `stripe`
    Stripe(stripe::Raw),
    /// `slack`
    Slack(slack::Raw),
    /// `shopify`
    Shopify(shopify::Raw),
    /// `hmac`
    Hmac(hmac::Raw),
    /// `standard-webhooks`
    StandardWebhooks(standard_webhooks::Raw),
}

/// `kind = "none"` takes no keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNone {}

impl RawKind {
    /// Checks one kind's keys under `key`.
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<Check> {
        match self {
            RawKind::None(_) => Some(Check::None),
            RawKind::IpAllow(r) => r.check(key, p).map(Check::IpAllow),
            RawKind::Token(r) => r.check(key, p).map(Check::Token),
            RawKind::Basic(r) => r.check(key, p).map(Check::Basic),
            RawKind::Github(r) => r.check(key, p).map(Check::Github),
            RawKind::Stripe(r) => r.check(key, p).map(Check::Stripe),
            RawKind::Slack(r) => r.check(key, p).map(Check::Slack),
            RawKind::Shopify(r) => r.check(key, p).map(Check::Shopify),
            RawKind::Hmac(r) => r.check(key, p).map(Check::Hmac),
            RawKind::StandardWebhooks(r) => r.check(key, p).map(Check::StandardWebhooks),
        }
    }
}

/// `secret = "..."` or `secrets = ["...", ...]` (exactly one of them),
/// resolved (`env:`, `file:`).
pub(crate) fn secrets(
    key: &str,
    one: Option<&RawSecret>,
    many: &[RawSecret],
    names: (&str, &str),
    p: &mut Problems,
) -> Option<Vec<Secret>> {
    let (single, plural) = names;
    match (one, many.is_empty()) {
        (Some(s), true) => secret(s, &format!("{key}.{single}"), p).map(|s| vec![s]),
        (None, false) => {
            if many.len() > MAX_SECRETS {
                p.add(
                    format!("{key}.{plural}"),
                    format!("at most {MAX_SECRETS} entries"),
                );
                return None;
            }
            let before = p.0.len();
            let out: Vec<Secret> = many
                .iter()
                .enumerate()
                .filter_map(|(i, s)| secret(s, &format!("{key}.{plural}[{i}]"), p))
                .collect();
            (p.0.len() == before).then_some(out)
        }
        (Some(_), false) => {
            p.add(
                format!("{key}.{plural}"),
                format!("give {single} or {plural}, not both"),
            );
            None
        }
        (None, true) => {
            p.add(
                format!("{key}.{single}"),
                format!("missing; give {single} = \"...\" or {plural} = [...]"),
            );
            None
        }
    }
}

/// A timestamp tolerance: a duration (default `5m`, at most `1h`) or `"off"`
/// (no replay window at all: for tests with published vectors only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance(pub Option<Duration>);

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance(Some(Duration::from_secs(300)))
    }
}

impl<'de> Deserialize<'de> for Tolerance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Tolerance(None));
        }
        humantime::parse_duration(s.trim())
            .map(|d| Tolerance(Some(d)))
            .map_err(|e| serde::de::Error::custom(format!("{e}; a duration like 5m, or \"off\"")))
    }
}

impl Tolerance {
    /// Reports a tolerance over the maximum.
    pub(crate) fn check(&self, key: &str, p: &mut Problems) {
        if let Some(d) = self.0 {
            bounded(&format!("{key}.tolerance"), d, MAX_TOLERANCE, p);
        }
    }

    /// Parses a unix-seconds timestamp header and checks it is within the
    /// tolerance of `now`.
    pub(crate) fn check_ts(
        &self,
        text: &str,
        now: Timestamp,
        what: &str,
    ) -> Result<i64, IngressError> {
        let ts: i64 = text
            .trim()
            .parse()
            .map_err(|_| deny(format!("{what} is not a unix timestamp")))?;
        if let Some(tol) = self.0 {
            let skew = now.unix_seconds().saturating_sub(ts).unsigned_abs();
            if skew > tol.as_secs() {
                return Err(deny(format!("{what} is outside the allowed tolerance")));
            }
        }
        Ok(ts)
    }
}

/// A header that must be present.
pub(crate) fn need<'a>(
    req: &'a dyn Headers,
    name: &str,
    shown: &str,
) -> Result<&'a str, IngressError> {
    req.get(name)
        .ok_or_else(|| deny(format!("missing {shown} header")))
}

/// True when `given` equals any of `expected`, comparing every candidate in
/// constant time (no early exit that would tell which secret is configured).
pub(crate) fn any_ct_eq<'a>(given: &[u8], expected: impl IntoIterator<Item = &'a [u8]>) -> bool {
    expected
        .into_iter()
        .fold(false, |acc, e| acc | ct_eq(given, e))
}

/// HMAC-SHA256 of `parts` (concatenated) under every secret: while a secret
/// rotates, a signature by the old or the new one counts.
pub(crate) fn sha256_macs(secrets: &[Secret], parts: &[&[u8]]) -> Vec<[u8; 32]> {
    secrets
        .iter()
        .map(|s| crate::signing::hmac_sha256(s.expose().as_bytes(), parts))
        .collect()
}

/// Whether `given` is the HMAC-SHA256 of `parts` under any of `secrets`,
/// comparing against every one in constant time.
pub(crate) fn signed_by_any(secrets: &[Secret], parts: &[&[u8]], given: &[u8]) -> bool {
    let macs = sha256_macs(secrets, parts);
    any_ct_eq(given, macs.iter().map(|m| &m[..]))
}

/// The exposed texts of a list of secrets.
pub(crate) fn exposed(secrets: &[Secret]) -> Vec<String> {
    secrets.iter().map(|s| s.expose().to_string()).collect()
}

#[cfg(test)]
mod tests;

/// A request being built by `runbridge send`: the headers (lowercase names)
/// and query parameters that the signers add. It reads like an incoming
/// request ([`Headers`]), so every signer is tested against its own verifier.
/// No `Debug`: it holds signatures and tokens.
#[derive(Default, Clone)]
pub struct Outgoing {
    /// Header names (lowercase) and values, in the order set.
    pub headers: Vec<(String, String)>,
    /// Query parameters, in the order set.
    pub query: Vec<(String, String)>,
}

impl Outgoing {
    /// Sets a header, replacing any earlier value of the same name.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
    }

    /// Sets a header only when it is not set yet (a value the user gave wins).
    pub fn set_default(&mut self, name: &str, value: impl FnOnce() -> String) {
        if self.get(name).is_none() {
            self.set(name, value());
        }
    }

    /// The header's value, or a fresh id stored under it: the id a sender
    /// both sends and signs (`webhook-id`, an `hmac` kind's `id_header`).
    pub fn id(&mut self, name: &str, prefix: &str) -> String {
        self.set_default(name, || fresh_id(prefix));
        self.get(name).unwrap_or_default().to_string()
    }
}

impl Headers for Outgoing {
    fn get(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn query(&self, name: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

/// A new unique delivery id (a ULID after `prefix`).
pub fn fresh_id(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new())
}

impl Check {
    /// Adds what this kind's sender adds to a request with this body (its
    /// first secret signs; every one is accepted). `none` and `ip_allow`
    /// add nothing: an address cannot be signed for.
    pub fn sign(&self, out: &mut Outgoing, body: &[u8], now: Timestamp) {
        match self {
            Check::None => {}
            Check::IpAllow(k) => k.sign(out),
            Check::Token(k) => k.sign(out),
            Check::Basic(k) => k.sign(out),
            Check::Github(k) => k.sign(out, body),
            Check::Stripe(k) => k.sign(out, body, now),
            Check::Slack(k) => k.sign(out, body, now),
            Check::Shopify(k) => k.sign(out, body),
            Check::Hmac(k) => k.sign(out, body, now),
            Check::StandardWebhooks(k) => k.sign(out, body, now),
        }
    }
}

impl VerifySettings {
    /// Signs a request the way the route's configured sender would, every
    /// kind in checking order (header-only kinds first, signatures last, so
    /// a signature covers every header set before it). For `runbridge send`.
    pub fn sign(&self, out: &mut Outgoing, body: &[u8], now: Timestamp) {
        for c in &self.checks {
            c.sign(out, body, now);
        }
    }
}

/// The first secret's text (every kind has at least one), or empty.
pub(crate) fn first(secrets: &[Secret]) -> &str {
    secrets.first().map(Secret::expose).unwrap_or_default()
}

#[cfg(test)]
mod sign_tests;
