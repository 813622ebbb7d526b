//! `kind = "stripe"`: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`, the hex
//! HMAC-SHA256 of `"{t}.{body}"` keyed with the whole `whsec_...` text.

use super::{any_ct_eq, deny, exposed, need, secrets, sha256_macs, DedupeSource, Kind, Tolerance};
use crate::config::{Problems, RawSecret};
use crate::ingress::{Headers, IngressError};
use crate::secret::Secret;
use crate::template::Pointer;
use crate::time::Timestamp;
use serde::Deserialize;

/// As written: `secret` or `secrets`, `tolerance` (default `5m`, or `"off"`).
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
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<Stripe> {
        self.tolerance.check(key, p);
        secrets(
            key,
            self.secret.as_ref(),
            &self.secrets,
            ("secret", "secrets"),
            p,
        )
        .map(|secrets| Stripe {
            secrets,
            tolerance: self.tolerance,
        })
    }
}

/// Stripe's webhook signature: any `v1` entry matching any secret passes.
#[derive(Debug, Clone)]
pub struct Stripe {
    /// The endpoint secrets (`whsec_...`, used as text, not decoded).
    pub secrets: Vec<Secret>,
    /// The replay window around `t`.
    pub tolerance: Tolerance,
}

impl Kind for Stripe {
    fn before_body(&self, _req: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        Ok(())
    }

    fn with_body(
        &self,
        req: &dyn Headers,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), IngressError> {
        let header = need(req, "stripe-signature", "Stripe-Signature")?;
        let mut t = None;
        let mut v1 = Vec::new();
        for item in header.split(',') {
            match item.trim().split_once('=') {
                Some(("t", v)) => t = Some(v),
                Some(("v1", v)) => v1.extend(hex::decode(v.trim()).ok()),
                _ => {}
            }
        }
        let t = t.ok_or_else(|| deny("Stripe-Signature has no t= timestamp"))?;
        let ts = self.tolerance.check_ts(t, now, "Stripe-Signature t=")?;
        if v1.is_empty() {
            return Err(deny("Stripe-Signature has no v1= signature"));
        }
        let ts = ts.to_string();
        let macs = sha256_macs(&self.secrets, &[ts.as_bytes(), b".", body]);
        let ok = v1.iter().fold(false, |acc, g| {
            acc | any_ct_eq(g, macs.iter().map(|m| &m[..]))
        });
        if ok {
            Ok(())
        } else {
            Err(deny("Stripe-Signature does not match the body"))
        }
    }

    fn header_only(&self) -> bool {
        false
    }

    fn secrets(&self) -> Vec<String> {
        exposed(&self.secrets)
    }

    fn dedupe(&self) -> Option<DedupeSource> {
        Some(DedupeSource::Pointer(Pointer::parse("/id").ok()?))
    }
}

impl Stripe {
    /// Signs as Stripe does: `Stripe-Signature: t=<now>,v1=<hex>`.
    pub fn sign(&self, out: &mut super::Outgoing, body: &[u8], now: Timestamp) {
        let t = now.unix_seconds().to_string();
        let mac = crate::signing::hmac_sha256(
            super::first(&self.secrets).as_bytes(),
            &[t.as_bytes(), b".", body],
        );
        out.set("stripe-signature", format!("t={t},v1={}", hex::encode(mac)));
    }
}
