//! `kind = "standard-webhooks"`: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64>[ v1,...]` over `"{id}.{ts}.{body}"`.

use super::{deny, need, secrets, DedupeSource, Kind, Tolerance};
use crate::config::{Problems, RawSecret};
use crate::ingress::{Headers, IngressError};
use crate::signing::WebhookKey;
use crate::time::Timestamp;
use serde::Deserialize;

/// As written: `secret` or `secrets` (`whsec_...`), `tolerance`.
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
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<StandardWebhooks> {
        self.tolerance.check(key, p);
        let plural = !self.secrets.is_empty();
        let list = secrets(
            key,
            self.secret.as_ref(),
            &self.secrets,
            ("secret", "secrets"),
            p,
        )?;
        let mut keys = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match WebhookKey::parse(s.expose()) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    let k = if plural {
                        format!("{key}.secrets[{i}]")
                    } else {
                        format!("{key}.secret")
                    };
                    p.add(k, e.to_string());
                }
            }
        }
        (keys.len() == list.len()).then_some(StandardWebhooks {
            keys,
            tolerance: self.tolerance,
        })
    }
}

/// Standard Webhooks (Svix and others): any `v1,` entry matching any key passes.
#[derive(Debug, Clone)]
pub struct StandardWebhooks {
    /// The decoded signing keys (old and new while rotating).
    pub keys: Vec<WebhookKey>,
    /// The replay window around `webhook-timestamp`.
    pub tolerance: Tolerance,
}

impl Kind for StandardWebhooks {
    fn before_body(&self, _req: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        Ok(())
    }

    fn with_body(
        &self,
        req: &dyn Headers,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), IngressError> {
        let id = need(req, "webhook-id", "webhook-id")?;
        let ts = need(req, "webhook-timestamp", "webhook-timestamp")?;
        let sig = need(req, "webhook-signature", "webhook-signature")?;
        let ts = self.tolerance.check_ts(ts, now, "webhook-timestamp")?;
        let ok = self
            .keys
            .iter()
            .fold(false, |acc, k| acc | k.verify(id, ts, body, sig));
        if ok {
            Ok(())
        } else {
            Err(deny("webhook-signature does not match"))
        }
    }

    fn header_only(&self) -> bool {
        false
    }

    fn secrets(&self) -> Vec<String> {
        self.keys.iter().map(WebhookKey::to_secret_string).collect()
    }

    fn dedupe(&self) -> Option<DedupeSource> {
        Some(DedupeSource::Header("webhook-id".into()))
    }
}

impl StandardWebhooks {
    /// Signs as a Standard Webhooks sender does: `webhook-id` (kept when
    /// set, else fresh), `webhook-timestamp` and `webhook-signature`.
    pub fn sign(&self, out: &mut super::Outgoing, body: &[u8], now: Timestamp) {
        let id = out.id("webhook-id", "msg_");
        let ts = now.unix_seconds();
        if let Some(k) = self.keys.first() {
            out.set("webhook-signature", k.sign(&id, ts, body));
        }
        out.set("webhook-timestamp", ts.to_string());
    }
}
