//! `kind = "basic"`: HTTP basic auth (`Authorization: Basic base64(user:password)`),
//! checked before the body is read.

use super::{any_ct_eq, deny, exposed, secrets, Kind};
use crate::config::{Problems, RawSecret};
use crate::ingress::{Headers, IngressError};
use crate::secret::Secret;
use crate::signing::ct_eq;
use crate::time::Timestamp;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;

/// As written: `user`, and `password` or `passwords`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    user: String,
    password: Option<RawSecret>,
    #[serde(default)]
    passwords: Vec<RawSecret>,
}

impl Raw {
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<Basic> {
        if self.user.is_empty() || self.user.contains(':') {
            p.add(format!("{key}.user"), "must be non-empty and without ':'");
        }
        secrets(
            key,
            self.password.as_ref(),
            &self.passwords,
            ("password", "passwords"),
            p,
        )
        .map(|passwords| Basic {
            user: self.user,
            passwords,
        })
    }
}

/// One user with any of its passwords.
#[derive(Debug, Clone)]
pub struct Basic {
    /// The user name senders must give.
    pub user: String,
    /// The accepted passwords (old and new while rotating).
    pub passwords: Vec<Secret>,
}

impl Kind for Basic {
    fn before_body(&self, req: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        let v = req
            .get("authorization")
            .ok_or_else(|| deny("missing Authorization header"))?;
        let b64 = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
            .ok_or_else(|| deny("Authorization must be Basic credentials"))?;
        let raw = B64
            .decode(b64.trim())
            .map_err(|_| deny("Authorization Basic credentials are not base64"))?;
        let (user, pass) = match raw.iter().position(|b| *b == b':') {
            Some(i) => (&raw[..i], &raw[i + 1..]),
            None => return Err(deny("Authorization Basic credentials have no ':'")),
        };
        let user_ok = ct_eq(user, self.user.as_bytes());
        let pass_ok = any_ct_eq(pass, self.passwords.iter().map(|s| s.expose().as_bytes()));
        if user_ok & pass_ok {
            Ok(())
        } else {
            Err(deny("invalid user or password"))
        }
    }

    fn with_body(&self, _: &dyn Headers, _: &[u8], _: Timestamp) -> Result<(), IngressError> {
        Ok(())
    }

    fn header_only(&self) -> bool {
        true
    }

    fn secrets(&self) -> Vec<String> {
        exposed(&self.passwords)
    }
}

impl Basic {
    /// Sends the user and the first password as `Authorization: Basic`.
    pub fn sign(&self, out: &mut super::Outgoing) {
        let pair = format!("{}:{}", self.user, super::first(&self.passwords));
        out.set("authorization", format!("Basic {}", B64.encode(pair)));
    }
}
