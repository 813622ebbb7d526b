//! `kind = "slack"`: `X-Slack-Signature: v0=<hex>` over `"v0:{ts}:{body}"`,
//! with `X-Slack-Request-Timestamp` inside the tolerance.

use super::{deny, exposed, need, secrets, signed_by_any, DedupeSource, Kind, Tolerance};
use crate::config::{Problems, RawSecret};
use crate::ingress::{Headers, IngressError};
use crate::secret::Secret;
use crate::template::Pointer;
use crate::time::Timestamp;
use serde::Deserialize;

/// As written: `secret` or `secrets` (the signing secret), `tolerance`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    secret: Option<RawSecret>,
    #[serde(default)]
    secrets: Vec<RawSecret>,
    #[serde(default)]
    tolerance: Tolerance,
}

impl Raw {
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<Slack> {
        self.tolerance.check(key, p);
        secrets(
            key,
            self.secret.as_ref(),
            &self.secrets,
            ("secret", "secrets"),
            p,
        )
        .map(|secrets| Slack {
            secrets,
            tolerance: self.tolerance,
        })
    }
}

/// Slack's request signature (Events API, slash commands, interactivity).
#[derive(Debug, Clone)]
pub struct Slack {
    /// The signing secrets (old and new while rotating).
    pub secrets: Vec<Secret>,
    /// The replay window around the request timestamp.
    pub tolerance: Tolerance,
}

impl Kind for Slack {
    fn before_body(&self, _req: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        Ok(())
    }

    fn with_body(
        &self,
        req: &dyn Headers,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), IngressError> {
        let ts = need(
            req,
            "x-slack-request-timestamp",
            "X-Slack-Request-Timestamp",
        )?;
        let sig = need(req, "x-slack-signature", "X-Slack-Signature")?;
        let ts = self
            .tolerance
            .check_ts(ts, now, "X-Slack-Request-Timestamp")?
            .to_string();
        let given = sig
            .trim()
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| deny("X-Slack-Signature is not v0=<hex>"))?;
        if signed_by_any(&self.secrets, &[b"v0:", ts.as_bytes(), b":", body], &given) {
            Ok(())
        } else {
            Err(deny("X-Slack-Signature does not match the body"))
        }
    }

    fn header_only(&self) -> bool {
        false
    }

    fn secrets(&self) -> Vec<String> {
        exposed(&self.secrets)
    }

    fn dedupe(&self) -> Option<DedupeSource> {
        Some(DedupeSource::Pointer(Pointer::parse("/event_id").ok()?))
    }
}

impl Slack {
    /// Signs as Slack does: `X-Slack-Request-Timestamp` and
    /// `X-Slack-Signature: v0=<hex>` over `v0:{ts}:{body}`.
    pub fn sign(&self, out: &mut super::Outgoing, body: &[u8], now: Timestamp) {
        let ts = now.unix_seconds().to_string();
        let mac = crate::signing::hmac_sha256(
            super::first(&self.secrets).as_bytes(),
            &[b"v0:", ts.as_bytes(), b":", body],
        );
        out.set("x-slack-request-timestamp", ts);
        out.set("x-slack-signature", format!("v0={}", hex::encode(mac)));
    }
}
