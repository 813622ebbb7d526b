//! `kind = "shopify"`: `X-Shopify-Hmac-SHA256: <base64 HMAC-SHA256 of the body>`.

use super::{deny, exposed, need, secrets, signed_by_any, DedupeSource, Kind};
use crate::config::{Problems, RawSecret};
use crate::ingress::{Headers, IngressError};
use crate::secret::Secret;
use crate::time::Timestamp;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;

/// As written: `secret` or `secrets` (the app's client secret).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    secret: Option<RawSecret>,
    #[serde(default)]
    secrets: Vec<RawSecret>,
}

impl Raw {
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<Shopify> {
        secrets(
            key,
            self.secret.as_ref(),
            &self.secrets,
            ("secret", "secrets"),
            p,
        )
        .map(|secrets| Shopify { secrets })
    }
}

/// Shopify's webhook signature (no timestamp: Shopify signs the body only).
#[derive(Debug, Clone)]
pub struct Shopify {
    /// The client secrets (old and new while rotating).
    pub secrets: Vec<Secret>,
}

impl Kind for Shopify {
    fn before_body(&self, _req: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        Ok(())
    }

    fn with_body(
        &self,
        req: &dyn Headers,
        body: &[u8],
        _now: Timestamp,
    ) -> Result<(), IngressError> {
        let sig = need(req, "x-shopify-hmac-sha256", "X-Shopify-Hmac-SHA256")?;
        let given = B64
            .decode(sig.trim())
            .map_err(|_| deny("X-Shopify-Hmac-SHA256 is not base64"))?;
        if signed_by_any(&self.secrets, &[body], &given) {
            Ok(())
        } else {
            Err(deny("X-Shopify-Hmac-SHA256 does not match the body"))
        }
    }

    fn header_only(&self) -> bool {
        false
    }

    fn secrets(&self) -> Vec<String> {
        exposed(&self.secrets)
    }

    fn dedupe(&self) -> Option<DedupeSource> {
        Some(DedupeSource::Header("x-shopify-webhook-id".into()))
    }
}

impl Shopify {
    /// Signs as Shopify does: `X-Shopify-Hmac-Sha256` (base64) over the
    /// body, with `X-Shopify-Topic` (default `orders/create`), a fresh
    /// `X-Shopify-Webhook-Id` and a sample shop domain unless already set.
    pub fn sign(&self, out: &mut super::Outgoing, body: &[u8]) {
        out.set_default("x-shopify-topic", || "orders/create".into());
        out.set_default("x-shopify-webhook-id", || super::fresh_id(""));
        out.set_default("x-shopify-shop-domain", || "sample.myshopify.com".into());
        let mac = crate::signing::hmac_sha256(super::first(&self.secrets).as_bytes(), &[body]);
        out.set("x-shopify-hmac-sha256", B64.encode(mac));
    }
}
