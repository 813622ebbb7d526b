//! HMAC primitives shared by inbound verification and callback signing.
//!
//! Every scheme hashes the raw bytes exactly as received or sent, and every
//! comparison is constant-time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A Standard Webhooks signing key: the bytes behind a `whsec_` secret.
#[derive(Clone)]
pub struct WebhookKey(Vec<u8>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(***)")
    }
}

/// Why a `whsec_` secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The value is not `whsec_` followed by base64.
    #[error("must be \"whsec_\" followed by base64")]
    Format,
    /// The decoded key is outside the recommended size.
    #[error("decodes to {0} bytes; Standard Webhooks keys are 24 to 64 bytes")]
    Length(usize),
}

impl WebhookKey {
    /// Parses `whsec_<base64>`. The prefix is optional on input (some senders
    /// hand out bare base64), the key must decode to 24..=64 bytes.
    pub fn parse(secret: &str) -> Result<Self, KeyError> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let bytes = B64.decode(b64).map_err(|_| KeyError::Format)?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(KeyError::Length(bytes.len()));
        }
        Ok(WebhookKey(bytes))
    }

    /// The key as a `whsec_` secret again, for the redactor only (so a
    /// receiver or vendor echoing it is scrubbed); never log it.
    pub fn to_secret_string(&self) -> String {
        format!("whsec_{}", B64.encode(&self.0))
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mac = hmac_sha256(
            &self.0,
            &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body],
        );
        format!("v1,{}", B64.encode(mac))
    }

    /// True if any `v1,` entry of a space-separated signature header matches.
    pub fn verify(&self, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let expected = self.sign(msg_id, timestamp, body);
        header
            .split(' ')
            .filter(|s| s.starts_with("v1,"))
            .any(|candidate| ct_eq(candidate.as_bytes(), expected.as_bytes()))
    }
}

/// The `webhook-signature` value for several keys: one `v1,` entry per key,
/// space-separated, so a receiver holding any one of them verifies (secret
/// rotation without downtime).
pub fn sign_all(keys: &[WebhookKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| k.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a GitHub `X-Hub-Signature-256` header (`sha256=<lowercase hex>`).
pub fn verify_github(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    ct_eq(&given, &hmac_sha256(secret, &[body]))
}

/// The `X-Hub-Signature-256` value GitHub would send; used by tests and the bench.
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, &[body])))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from ../shared/webhooks.md.
    #[test]
    fn github_vector() {
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            sign_github(b"It's a Secret to Everybody", b"Hello, World!"),
            sig
        );
        assert!(verify_github(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            sig
        ));
        assert!(!verify_github(b"wrong", b"Hello, World!", sig));
        assert!(!verify_github(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha1=00"
        ));
        assert!(!verify_github(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha256=zz"
        ));
    }

    #[test]
    fn standard_webhooks_vector_1() {
        let key = WebhookKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn standard_webhooks_vector_2() {
        let key = WebhookKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let sig = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        assert_eq!(
            key.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            sig
        );
        // Any matching entry of a multi-signature header is enough.
        let header = format!("v1,bm90LXRoaXM= {sig}");
        assert!(key.verify("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body, &header));
        assert!(!key.verify("msg_other", 1649367553, body, &header));
        assert!(!key.verify("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367554, body, &header));
    }

    #[test]
    fn several_keys_each_verify() {
        let a = WebhookKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = WebhookKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let header = sign_all(&[a.clone(), b.clone()], "msg_1", 7, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(a.verify("msg_1", 7, b"{}", &header));
        assert!(b.verify("msg_1", 7, b"{}", &header));
    }

    #[test]
    fn key_validation() {
        assert_eq!(WebhookKey::parse("whsec_!!").unwrap_err(), KeyError::Format);
        assert_eq!(
            WebhookKey::parse("whsec_c2hvcnQ=").unwrap_err(),
            KeyError::Length(5)
        );
    }
}
