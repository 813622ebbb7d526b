//! `kind = "hmac"`: a generic HMAC signature for senders without a kind of
//! their own. The signed content is the raw body, preceded by the id
//! header's value and then the timestamp header's value when those are
//! configured, each followed by `separator`: `"{id}{sep}{ts}{sep}{body}"`.

use super::{any_ct_eq, deny, exposed, need, secrets, DedupeSource, Kind, Tolerance};
use crate::config::{Problems, RawSecret};
use crate::ingress::{Headers, IngressError};
use crate::secret::Secret;
use crate::time::Timestamp;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::Mac;
use serde::Deserialize;

/// How the signature is encoded in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Hex (either case).
    #[default]
    Hex,
    /// Standard base64.
    Base64,
}

/// The hash under the HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// HMAC-SHA256.
    #[default]
    #[serde(alias = "sha-256")]
    Sha256,
    /// HMAC-SHA512.
    #[serde(alias = "sha-512")]
    Sha512,
}

/// As written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    header: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    algorithm: Algorithm,
    timestamp_header: Option<String>,
    id_header: Option<String>,
    #[serde(default = "dot")]
    separator: String,
    #[serde(default)]
    tolerance: Tolerance,
    secret: Option<RawSecret>,
    #[serde(default)]
    secrets: Vec<RawSecret>,
}

fn dot() -> String {
    ".".into()
}

fn header_name(key: &str, h: &str, p: &mut Problems) -> String {
    if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
        p.add(key, format!("{h:?} is not a header name"));
    }
    h.to_ascii_lowercase()
}

impl Raw {
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<Hmac> {
        let before = p.0.len();
        self.tolerance.check(key, p);
        let header = header_name(&format!("{key}.header"), &self.header, p);
        let timestamp_header = self
            .timestamp_header
            .map(|h| header_name(&format!("{key}.timestamp_header"), &h, p));
        let id_header = self
            .id_header
            .map(|h| header_name(&format!("{key}.id_header"), &h, p));
        let secrets = secrets(
            key,
            self.secret.as_ref(),
            &self.secrets,
            ("secret", "secrets"),
            p,
        )?;
        (p.0.len() == before).then_some(Hmac {
            header,
            prefix: self.prefix,
            encoding: self.encoding,
            algorithm: self.algorithm,
            timestamp_header,
            id_header,
            separator: self.separator,
            tolerance: self.tolerance,
            secrets,
        })
    }
}

/// A configured generic HMAC check.
#[derive(Debug, Clone)]
pub struct Hmac {
    /// The signature header (lowercase).
    pub header: String,
    /// Text before the signature (`sha256=`), may be empty.
    pub prefix: String,
    /// Hex or base64.
    pub encoding: Encoding,
    /// SHA-256 or SHA-512.
    pub algorithm: Algorithm,
    /// A unix-seconds header signed before the body and checked against the tolerance.
    pub timestamp_header: Option<String>,
    /// A delivery-id header signed first (and used for dedupe).
    pub id_header: Option<String>,
    /// Between the signed parts.
    pub separator: String,
    /// The replay window (with `timestamp_header`).
    pub tolerance: Tolerance,
    /// The accepted secrets.
    pub secrets: Vec<Secret>,
}

/// HMAC of `parts` with `key` under `alg`.
pub fn mac(alg: Algorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC accepts keys of any length; an error is impossible, but give
        // an empty MAC (which never matches) rather than panic.
        let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return Vec::new();
        };
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }
    match alg {
        Algorithm::Sha256 => run::<hmac::Hmac<sha2::Sha256>>(key, parts),
        Algorithm::Sha512 => run::<hmac::Hmac<sha2::Sha512>>(key, parts),
    }
}

impl Kind for Hmac {
    fn before_body(&self, _req: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        Ok(())
    }

    fn with_body(
        &self,
        req: &dyn Headers,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), IngressError> {
        let sig = need(req, &self.header, &self.header)?;
        let mut signed: Vec<&[u8]> = Vec::new();
        let id;
        if let Some(h) = &self.id_header {
            id = need(req, h, h)?;
            signed.extend([id.as_bytes(), self.separator.as_bytes()]);
        }
        let ts;
        if let Some(h) = &self.timestamp_header {
            ts = need(req, h, h)?;
            self.tolerance.check_ts(ts, now, h)?;
            signed.extend([ts.trim().as_bytes(), self.separator.as_bytes()]);
        }
        signed.push(body);
        let text = sig
            .trim()
            .strip_prefix(self.prefix.as_str())
            .ok_or_else(|| {
                deny(format!(
                    "{} does not start with {:?}",
                    self.header, self.prefix
                ))
            })?;
        let given = match self.encoding {
            Encoding::Hex => hex::decode(text.trim()).ok(),
            Encoding::Base64 => B64.decode(text.trim()).ok(),
        }
        .ok_or_else(|| deny(format!("{} is not encoded as configured", self.header)))?;
        let macs: Vec<Vec<u8>> = self
            .secrets
            .iter()
            .map(|s| mac(self.algorithm, s.expose().as_bytes(), &signed))
            .collect();
        if any_ct_eq(&given, macs.iter().map(Vec::as_slice)) {
            Ok(())
        } else {
            Err(deny(format!("{} does not match the body", self.header)))
        }
    }

    fn header_only(&self) -> bool {
        false
    }

    fn secrets(&self) -> Vec<String> {
        exposed(&self.secrets)
    }

    fn dedupe(&self) -> Option<DedupeSource> {
        self.id_header.clone().map(DedupeSource::Header)
    }
}

impl Hmac {
    /// Signs as configured: the id header (kept when set, else fresh) and
    /// the timestamp header first when configured, then the signature
    /// header with its prefix and encoding.
    pub fn sign(&self, out: &mut super::Outgoing, body: &[u8], now: Timestamp) {
        let id = self.id_header.as_ref().map(|h| out.id(h, ""));
        let ts = self.timestamp_header.as_ref().map(|h| {
            let ts = now.unix_seconds().to_string();
            out.set(h, ts.clone());
            ts
        });
        let mut signed: Vec<&[u8]> = Vec::new();
        for part in [&id, &ts].into_iter().flatten() {
            signed.extend([part.as_bytes(), self.separator.as_bytes()]);
        }
        signed.push(body);
        let m = mac(
            self.algorithm,
            super::first(&self.secrets).as_bytes(),
            &signed,
        );
        let text = match self.encoding {
            Encoding::Hex => hex::encode(m),
            Encoding::Base64 => B64.encode(m),
        };
        out.set(&self.header, format!("{}{text}", self.prefix));
    }
}
