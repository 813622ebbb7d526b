//! `kind = "github"`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.

use super::{deny, exposed, need, secrets, signed_by_any, DedupeSource, Kind};
use crate::config::{Problems, RawSecret};
use crate::ingress::{Headers, IngressError};
use crate::secret::Secret;
use crate::time::Timestamp;
use serde::Deserialize;

/// As written: `secret` or `secrets`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    secret: Option<RawSecret>,
    #[serde(default)]
    secrets: Vec<RawSecret>,
}

impl Raw {
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<Github> {
        secrets(
            key,
            self.secret.as_ref(),
            &self.secrets,
            ("secret", "secrets"),
            p,
        )
        .map(|secrets| Github { secrets })
    }
}

/// GitHub's webhook signature, with every configured secret accepted.
#[derive(Debug, Clone)]
pub struct Github {
    /// The webhook secrets (old and new while rotating).
    pub secrets: Vec<Secret>,
}

impl Kind for Github {
    fn before_body(&self, _req: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        Ok(())
    }

    fn with_body(
        &self,
        req: &dyn Headers,
        body: &[u8],
        _now: Timestamp,
    ) -> Result<(), IngressError> {
        let sig = need(req, "x-hub-signature-256", "X-Hub-Signature-256")?;
        let given = sig
            .trim()
            .strip_prefix("sha256=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| deny("X-Hub-Signature-256 is not sha256=<hex>"))?;
        if signed_by_any(&self.secrets, &[body], &given) {
            Ok(())
        } else {
            Err(deny("X-Hub-Signature-256 does not match the body"))
        }
    }

    fn header_only(&self) -> bool {
        false
    }

    fn secrets(&self) -> Vec<String> {
        exposed(&self.secrets)
    }

    fn dedupe(&self) -> Option<DedupeSource> {
        Some(DedupeSource::Header("x-github-delivery".into()))
    }
}

impl Github {
    /// Signs as GitHub does: `X-Hub-Signature-256` over the body, with
    /// `X-GitHub-Event` (default `push`) and a fresh `X-GitHub-Delivery`
    /// unless already set.
    pub fn sign(&self, out: &mut super::Outgoing, body: &[u8]) {
        out.set_default("x-github-event", || "push".into());
        out.set_default("x-github-delivery", || super::fresh_id(""));
        let mac = crate::signing::hmac_sha256(super::first(&self.secrets).as_bytes(), &[body]);
        out.set(
            "x-hub-signature-256",
            format!("sha256={}", hex::encode(mac)),
        );
    }
}
