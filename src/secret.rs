//! Secret values that never print, and the [`Redactor`] that scrubs known
//! secrets out of text that came from outside (vendor answers, error texts)
//! before runbridge stores or forwards it.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use std::fmt;

/// A credential or signing key. `Debug` and `Display` print `***` so a secret
/// cannot leak through logs, errors or debug output by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps an already-resolved secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the few places that must use it (signing, auth headers).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Characters left as they are in a shown query key (RFC 3986 unreserved).
const QUERY_KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a scrubbed secret is replaced with.
pub const REDACTED: &str = "***";

/// Scrubs every secret runbridge knows (vendor tokens, route verification
/// secrets, callback signing secrets, the admin token) out of text a third
/// party controls: a vendor that echoes our `Authorization` header in an
/// error must not get our token into a run record, a callback or the admin
/// API.
///
/// Each secret is matched literally and in its obvious encodings (base64,
/// URL-safe base64, percent-encoding; `Bearer x` contains `x`). Values
/// shorter than [`Redactor::MIN_LEN`] are skipped: scrubbing `abc` would
/// mangle ordinary words and hides nothing worth hiding (such a secret is
/// guessable anyway).
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret containing another is scrubbed whole.
    needles: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} needles)", self.needles.len())
    }
}

impl Redactor {
    /// Secrets shorter than this are not scrubbed (see the type's docs).
    pub const MIN_LEN: usize = 6;

    /// A redactor for these secret values (raw, as configured).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut needles = Vec::new();
        for s in secrets {
            if s.len() < Self::MIN_LEN {
                continue;
            }
            needles.push(s.to_string());
            needles.push(STANDARD.encode(s));
            needles.push(URL_SAFE_NO_PAD.encode(s));
            needles.push(utf8_percent_encode(s, NON_ALPHANUMERIC).to_string());
            // `whsec_<base64>`: the base64 part alone is the key too.
            if let Some(b64) = s.strip_prefix("whsec_") {
                needles.push(b64.to_string());
            }
        }
        needles.retain(|n| n.len() >= Self::MIN_LEN);
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Redactor { needles }
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every known secret replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), REDACTED);
            }
        }
        out
    }

    /// A JSON value with every string (and object key) scrubbed.
    pub fn scrub_json(&self, v: Value) -> Value {
        if self.needles.is_empty() {
            return v;
        }
        match v {
            Value::String(s) => Value::String(self.scrub(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.scrub_json(x)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, x)| (self.scrub(&k), self.scrub_json(x)))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// A URL as logs and the admin API show it: no userinfo, every query value
/// (and the fragment) replaced by [`REDACTED`], since callback URLs often
/// carry a token in the query. Text that does not parse as a URL is shown as
/// [`REDACTED`] whole.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(raw) else {
        return REDACTED.to_string();
    };
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    if url.query().is_some() {
        let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let q = keys
            .iter()
            .map(|k| format!("{}={REDACTED}", utf8_percent_encode(k, QUERY_KEY)))
            .collect::<Vec<_>>()
            .join("&");
        url.set_query(Some(&q));
    }
    if url.fragment().is_some() {
        url.set_fragment(Some(REDACTED));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_secrets_and_their_encodings() {
        let r = Redactor::new([
            "slat_live_123",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "abc",
        ]);
        let text = format!(
            "auth=Bearer slat_live_123 b64={} pct=x key=MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw abc",
            STANDARD.encode("slat_live_123")
        );
        let out = r.scrub(&text);
        assert_eq!(
            out, "auth=Bearer *** b64=*** pct=x key=*** abc",
            "short secrets are skipped"
        );
        let v = serde_json::json!({"echo": {"Authorization": ["Bearer slat_live_123"]}, "n": 1});
        let v = r.scrub_json(v);
        assert!(!v.to_string().contains("slat_live_123"), "{v}");
        assert_eq!(v["n"], 1);
        assert!(Redactor::new(["short"]).is_empty());
    }

    #[test]
    fn urls_lose_userinfo_and_query_values() {
        assert_eq!(
            redact_url("https://u:p@example.com/cb?token=s3cret&x=1#frag"),
            "https://example.com/cb?token=***&x=***#***"
        );
        assert_eq!(redact_url("http://h:1/cb"), "http://h:1/cb");
        assert_eq!(
            redact_url("http://h/cb?api_key=1&a%20b=2"),
            "http://h/cb?api_key=***&a%20b=***"
        );
        assert_eq!(redact_url("not a url s3cret"), "***");
    }

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
