//! Every signer's output is accepted by its own kind's verifier, with one
//! secret or while rotating, and refused by the same kind holding another
//! secret.

use super::*;
use serde_json::{json, Value};
use std::net::IpAddr;

fn settings(v: Value) -> VerifySettings {
    let list = match v {
        Value::Array(a) => a,
        one => vec![one],
    };
    let mut p = Problems(Vec::new());
    let checks: Vec<Check> = list
        .into_iter()
        .filter_map(|k| {
            serde_json::from_value::<RawKind>(k)
                .ok()?
                .check("v", &mut p)
        })
        .collect();
    assert!(p.0.is_empty(), "{:?}", p.0);
    VerifySettings::new(checks)
}

/// An outgoing request seen from an address.
struct From<'a>(&'a Outgoing, Option<IpAddr>);

impl Headers for From<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name)
    }
    fn query(&self, name: &str) -> Option<String> {
        self.0.query(name)
    }
    fn peer(&self) -> Option<IpAddr> {
        self.1
    }
}

const BODY: &[u8] = br#"{"hello":"world"}"#;
const WHSEC_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_B: &str = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";

/// `kind`'s config with `secret`, for each kind that takes one.
fn with_secret(kind: &str, secret: &str) -> Value {
    match kind {
        "token" => json!({"kind": "token", "token": secret}),
        "token-header" => json!({"kind": "token", "token": secret, "header": "X-Gitlab-Token"}),
        "token-query" => json!({"kind": "token", "token": secret, "query": "key"}),
        "basic" => json!({"kind": "basic", "user": "u", "password": secret}),
        "hmac" => json!({"kind": "hmac", "header": "X-Sig", "secret": secret}),
        "hmac-full" => json!({
            "kind": "hmac", "header": "X-Signature", "prefix": "sha512=",
            "encoding": "base64", "algorithm": "sha512",
            "timestamp_header": "X-Timestamp", "id_header": "X-Id",
            "separator": ":", "secret": secret
        }),
        k => json!({"kind": k, "secret": secret}),
    }
}

fn secret_pair(kind: &str) -> (&'static str, &'static str) {
    if kind == "standard-webhooks" {
        (WHSEC_A, WHSEC_B)
    } else {
        ("first-secret", "second-secret")
    }
}

const KINDS: [&str; 11] = [
    "github",
    "stripe",
    "slack",
    "shopify",
    "standard-webhooks",
    "hmac",
    "hmac-full",
    "token",
    "token-header",
    "token-query",
    "basic",
];

#[test]
fn every_signer_passes_its_own_verifier_and_fails_another_secret() {
    let now = Timestamp::now();
    for kind in KINDS {
        let (a, b) = secret_pair(kind);
        let mut out = Outgoing::default();
        settings(with_secret(kind, a)).sign(&mut out, BODY, now);
        let seen = From(&out, None);
        assert!(
            verify(&settings(with_secret(kind, a)), &seen, BODY, now).is_ok(),
            "{kind}: own signature refused"
        );
        assert!(
            verify(&settings(with_secret(kind, b)), &seen, BODY, now).is_err(),
            "{kind}: accepted under another secret"
        );
        // While rotating, the verifier holding old and new accepts it.
        let mut rot = with_secret(kind, a);
        rotate(&mut rot, b, a);
        assert!(
            verify(&settings(rot), &seen, BODY, now).is_ok(),
            "{kind}: refused while rotating"
        );
        if !matches!(kind, "token" | "token-header" | "token-query" | "basic") {
            assert!(
                verify(&settings(with_secret(kind, a)), &seen, b"{}", now).is_err(),
                "{kind}: signature not bound to the body"
            );
        }
    }
}

/// Turns `secret = a` (or `token`, `password`) into a two-entry list.
fn rotate(v: &mut Value, old: &str, new: &str) {
    let obj = v.as_object_mut().expect("object");
    for (one, many) in [
        ("secret", "secrets"),
        ("token", "tokens"),
        ("password", "passwords"),
    ] {
        if obj.remove(one).is_some() {
            obj.insert(many.into(), json!([old, new]));
        }
    }
}

#[test]
fn senders_headers_are_set_and_kept() {
    let now = Timestamp::now();
    let mut out = Outgoing::default();
    out.set("X-GitHub-Event", "issues");
    settings(with_secret("github", "s")).sign(&mut out, BODY, now);
    assert_eq!(out.get("x-github-event"), Some("issues"));
    assert!(out.get("x-github-delivery").is_some());

    let mut out = Outgoing::default();
    settings(with_secret("shopify", "s")).sign(&mut out, BODY, now);
    assert_eq!(out.get("x-shopify-topic"), Some("orders/create"));
    assert!(out.get("x-shopify-webhook-id").is_some());

    // A webhook-id set beforehand (a configured dedupe header) is the one signed.
    let mut out = Outgoing::default();
    out.set("webhook-id", "msg_given");
    settings(with_secret("standard-webhooks", WHSEC_A)).sign(&mut out, BODY, now);
    assert_eq!(out.get("webhook-id"), Some("msg_given"));
    let seen = From(&out, None);
    assert!(verify(
        &settings(with_secret("standard-webhooks", WHSEC_A)),
        &seen,
        BODY,
        now
    )
    .is_ok());

    // Two sends get two delivery ids.
    let mut again = Outgoing::default();
    settings(with_secret("standard-webhooks", WHSEC_A)).sign(&mut again, BODY, now);
    let mut third = Outgoing::default();
    settings(with_secret("standard-webhooks", WHSEC_A)).sign(&mut third, BODY, now);
    assert_ne!(again.get("webhook-id"), third.get("webhook-id"));
}

#[test]
fn combinations_sign_every_kind() {
    let now = Timestamp::now();
    let v = settings(json!([
        {"kind": "ip_allow", "allow": ["127.0.0.0/8"]},
        {"kind": "token", "token": "t", "header": "X-Token"},
        {"kind": "github", "secret": "g"},
        {"kind": "hmac", "header": "X-Other", "id_header": "X-Id", "secret": "h"},
    ]));
    let mut out = Outgoing::default();
    v.sign(&mut out, BODY, now);
    let local = Some(IpAddr::from([127, 0, 0, 1]));
    assert!(verify(&v, &From(&out, local), BODY, now).is_ok());
    // ip_allow has nothing to sign: from another address it still refuses.
    let far = Some(IpAddr::from([192, 0, 2, 1]));
    assert!(verify(&v, &From(&out, far), BODY, now).is_err());

    let none = settings(json!({"kind": "none"}));
    let mut out = Outgoing::default();
    none.sign(&mut out, BODY, now);
    assert!(out.headers.is_empty() && out.query.is_empty());
}
