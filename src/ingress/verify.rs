//! Sender verification, one kind per route. Every check runs on the raw
//! body before any parsing, and compares in constant time.

use super::{Headers, IngressError};
use crate::config::VerifySettings;
use crate::signing::{ct_eq, verify_github};
use crate::time::Timestamp;

fn deny(msg: impl Into<String>) -> IngressError {
    IngressError::Unauthorized(msg.into())
}

/// One way of authenticating a sender, split in two phases so that every
/// check needing no body runs before a single body byte is read (an
/// unauthenticated sender then costs no body buffer). A kind that needs the
/// body (a signature) does its work in [`Kind::with_body`]; a kind that needs
/// only headers (a token, later an IP allow-list) in [`Kind::before_body`].
pub trait Kind {
    /// Checks that need headers only; runs before the body is read.
    fn before_body(&self, headers: &dyn Headers, now: Timestamp) -> Result<(), IngressError>;
    /// Checks that need the raw body; runs once it is read.
    fn with_body(
        &self,
        headers: &dyn Headers,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), IngressError>;
    /// True when [`Kind::before_body`] alone authenticates the sender, so the
    /// body rules (content type) may be checked before reading the body too.
    fn complete_before_body(&self) -> bool;
}

impl Kind for VerifySettings {
    fn before_body(&self, headers: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        match self {
            VerifySettings::None => Ok(()),
            VerifySettings::Token { token } => {
                let given = headers
                    .get("authorization")
                    .ok_or_else(|| deny("missing Authorization header"))?;
                let given = given
                    .strip_prefix("Bearer ")
                    .or_else(|| given.strip_prefix("bearer "))
                    .ok_or_else(|| deny("Authorization must be a Bearer token"))?;
                if ct_eq(given.trim().as_bytes(), token.expose().as_bytes()) {
                    Ok(())
                } else {
                    Err(deny("invalid token"))
                }
            }
            // Signatures cover the body: nothing to decide before it (a
            // missing signature header still waits for the size check, so
            // the documented check order holds for these kinds).
            VerifySettings::Github { .. } | VerifySettings::StandardWebhooks { .. } => Ok(()),
        }
    }

    fn with_body(
        &self,
        headers: &dyn Headers,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), IngressError> {
        match self {
            VerifySettings::None | VerifySettings::Token { .. } => Ok(()),
            VerifySettings::Github { secret } => {
                let sig = headers
                    .get("x-hub-signature-256")
                    .ok_or_else(|| deny("missing X-Hub-Signature-256 header"))?;
                if verify_github(secret.expose().as_bytes(), body, sig) {
                    Ok(())
                } else {
                    Err(deny("X-Hub-Signature-256 does not match the body"))
                }
            }
            VerifySettings::StandardWebhooks { key, tolerance } => {
                let id = headers
                    .get("webhook-id")
                    .ok_or_else(|| deny("missing webhook-id header"))?;
                let ts = headers
                    .get("webhook-timestamp")
                    .ok_or_else(|| deny("missing webhook-timestamp header"))?;
                let sig = headers
                    .get("webhook-signature")
                    .ok_or_else(|| deny("missing webhook-signature header"))?;
                let ts: i64 = ts
                    .trim()
                    .parse()
                    .map_err(|_| deny("webhook-timestamp is not a unix timestamp"))?;
                let skew = now.unix_seconds().saturating_sub(ts).unsigned_abs();
                if skew > tolerance.as_secs() {
                    return Err(deny("webhook-timestamp is outside the allowed tolerance"));
                }
                if key.verify(id, ts, body, sig) {
                    Ok(())
                } else {
                    Err(deny("webhook-signature does not match"))
                }
            }
        }
    }

    fn complete_before_body(&self) -> bool {
        matches!(self, VerifySettings::None | VerifySettings::Token { .. })
    }
}

/// Checks one request against its route's verification, both phases.
pub fn verify(
    v: &VerifySettings,
    headers: &impl Headers,
    body: &[u8],
    now: Timestamp,
) -> Result<(), IngressError> {
    v.before_body(headers, now)?;
    v.with_body(headers, body, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::signing::WebhookKey;
    use std::collections::HashMap;
    use std::time::Duration;

    struct H(HashMap<&'static str, String>);
    impl Headers for H {
        fn get(&self, name: &str) -> Option<&str> {
            self.0.get(name).map(String::as_str)
        }
    }

    fn h(pairs: &[(&'static str, &str)]) -> H {
        H(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    #[test]
    fn github_vector_through_verifier() {
        let v = VerifySettings::Github {
            secret: Secret::new("It's a Secret to Everybody"),
        };
        let good = h(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert!(verify(&v, &good, b"Hello, World!", Timestamp::now()).is_ok());
        assert!(verify(&v, &good, b"Hello, World?", Timestamp::now()).is_err());
        assert!(verify(&v, &h(&[]), b"Hello, World!", Timestamp::now()).is_err());
    }

    #[test]
    fn standard_webhooks_vector_with_pinned_clock() {
        let v = VerifySettings::StandardWebhooks {
            key: WebhookKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            tolerance: Duration::from_secs(300),
        };
        let hdrs = h(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let body = br#"{"test": 2432232314}"#;
        assert!(verify(&v, &hdrs, body, Timestamp(1_614_265_330_000 + 60_000)).is_ok());
        let late = verify(&v, &hdrs, body, Timestamp(1_614_265_330_000 + 301_000)).unwrap_err();
        assert!(late.to_string().contains("tolerance"));
        assert!(verify(&v, &hdrs, br#"{"test": 1}"#, Timestamp(1_614_265_330_000)).is_err());
    }

    #[test]
    fn bearer_token() {
        let v = VerifySettings::Token {
            token: Secret::new("tok"),
        };
        assert!(verify(
            &v,
            &h(&[("authorization", "Bearer tok")]),
            b"",
            Timestamp(0)
        )
        .is_ok());
        assert!(verify(
            &v,
            &h(&[("authorization", "Bearer nope")]),
            b"",
            Timestamp(0)
        )
        .is_err());
        assert!(verify(&v, &h(&[("authorization", "Basic tok")]), b"", Timestamp(0)).is_err());
    }
}
