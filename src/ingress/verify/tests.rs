//! Every kind against the published vectors of `webhooks.md`, rotation,
//! tolerances, and arbitrary input (no panic, only 4xx).

use super::*;
use crate::ingress::body;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::IpAddr;

struct Req {
    h: HashMap<String, String>,
    q: HashMap<String, String>,
    peer: Option<IpAddr>,
}

impl Headers for Req {
    fn get(&self, name: &str) -> Option<&str> {
        self.h.get(name).map(String::as_str)
    }
    fn query(&self, name: &str) -> Option<String> {
        self.q.get(name).cloned()
    }
    fn peer(&self) -> Option<IpAddr> {
        self.peer
    }
}

fn req(pairs: &[(&str, &str)]) -> Req {
    Req {
        h: pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect(),
        q: HashMap::new(),
        peer: None,
    }
}

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

fn at(secs: u64) -> Timestamp {
    Timestamp(secs * 1000)
}

const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";

#[test]
fn published_vectors() {
    let gh = settings(json!({"kind": "github", "secret": "It's a Secret to Everybody"}));
    let r = req(&[(
        "x-hub-signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    assert!(verify(&gh, &r, b"Hello, World!", Timestamp::now()).is_ok());
    assert!(verify(&gh, &r, b"Hello, World?", Timestamp::now()).is_err());

    let slack = settings(json!({"kind": "slack", "secret": "8f742231b10e8888abcd99yyyzzz85a5"}));
    let r = req(&[
        ("x-slack-request-timestamp", "1531420618"),
        (
            "x-slack-signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        ),
    ]);
    assert!(verify(&slack, &r, SLACK_BODY.as_bytes(), at(1531420618 + 299)).is_ok());
    let late = verify(&slack, &r, SLACK_BODY.as_bytes(), at(1531420618 + 301)).unwrap_err();
    assert!(late.to_string().contains("tolerance"), "{late}");
    let off = settings(
        json!({"kind": "slack", "secret": "8f742231b10e8888abcd99yyyzzz85a5", "tolerance": "off"}),
    );
    assert!(verify(&off, &r, SLACK_BODY.as_bytes(), Timestamp::now()).is_ok());

    for (secret, id, ts, body, sig) in [
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ] {
        let sw = settings(json!({"kind": "standard-webhooks", "secret": secret}));
        let ts_s = ts.to_string();
        let r = req(&[
            ("webhook-id", id),
            ("webhook-timestamp", &ts_s),
            ("webhook-signature", sig),
        ]);
        assert!(verify(&sw, &r, body.as_bytes(), at(ts)).is_ok());
        assert!(verify(&sw, &r, body.as_bytes(), at(ts + 301)).is_err());
    }

    let stripe = settings(json!({"kind": "stripe", "secret": "whsec_test_secret"}));
    let body = br#"{"id":"evt_test","object":"event"}"#;
    let r = req(&[(
        "stripe-signature",
        "t=1492774577,v1=00ff,v1=691252e266ce41cb94d709c84e9580d4172b117a510bbc81723f657d2cd5d215,v0=abc",
    )]);
    assert!(verify(&stripe, &r, body, at(1492774577)).is_ok());
    assert!(verify(&stripe, &r, body, at(1492774577 + 301)).is_err());
    assert_eq!(
        stripe.dedupe(),
        Some(DedupeSource::Pointer(Pointer::parse("/id").unwrap()))
    );

    let shop = settings(json!({"kind": "shopify", "secret": "shop-secret"}));
    let r = req(&[(
        "x-shopify-hmac-sha256",
        "plW8VGqq0nDMIEhDqaNNW99asdUCy7EIqLZVcQwtAZ0=",
    )]);
    assert!(verify(&shop, &r, br#"{"id":1}"#, Timestamp::now()).is_ok());
    assert!(verify(&shop, &r, br#"{"id":2}"#, Timestamp::now()).is_err());

    // The generic kind configured like GitHub verifies GitHub's vector.
    let generic = settings(
        json!({"kind": "hmac", "header": "X-Hub-Signature-256", "prefix": "sha256=", "secret": "It's a Secret to Everybody"}),
    );
    let r = req(&[(
        "x-hub-signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    assert!(verify(&generic, &r, b"Hello, World!", Timestamp::now()).is_ok());
    // ...and like Standard Webhooks (id.ts.body, base64) with a raw key.
    let generic = settings(
        json!({"kind": "hmac", "header": "sig", "encoding": "base64",
        "algorithm": "sha512", "id_header": "id", "timestamp_header": "ts", "secret": "k"}),
    );
    let mac = hmac::mac(
        hmac::Algorithm::Sha512,
        b"k",
        &[b"m1", b".", b"100", b".", b"{}"],
    );
    use base64::Engine;
    let sig = base64::engine::general_purpose::STANDARD.encode(mac);
    let r = req(&[("sig", &sig), ("id", "m1"), ("ts", "100")]);
    assert!(verify(&generic, &r, b"{}", at(100)).is_ok());
    assert!(verify(&generic, &r, b"{}", at(1000)).is_err());
    assert_eq!(generic.dedupe(), Some(DedupeSource::Header("id".into())));
}

#[test]
fn rotated_secrets_all_pass() {
    let gh = settings(
        json!({"kind": "github", "secrets": ["old-secret", "It's a Secret to Everybody"]}),
    );
    let r = req(&[(
        "x-hub-signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    assert!(verify(&gh, &r, b"Hello, World!", Timestamp::now()).is_ok());
    assert_eq!(gh.secrets().len(), 2);
    let mut p = Problems(Vec::new());
    let both: RawKind =
        serde_json::from_value(json!({"kind": "github", "secret": "a", "secrets": ["b"]})).unwrap();
    assert!(both.check("v", &mut p).is_none());
    let none: RawKind = serde_json::from_value(json!({"kind": "stripe"})).unwrap();
    assert!(none.check("v", &mut p).is_none());
    assert_eq!(p.0.len(), 2, "{:?}", p.0);
}

#[test]
fn tokens_basic_and_ip_allow() {
    let bearer = settings(json!({"kind": "token", "tokens": ["t-old", "t-new"]}));
    assert!(bearer
        .before_body(&req(&[("authorization", "Bearer t-new")]), Timestamp(0))
        .is_ok());
    assert!(bearer
        .before_body(&req(&[("authorization", "Bearer t-x")]), Timestamp(0))
        .is_err());
    let header = settings(json!({"kind": "token", "header": "X-Gitlab-Token", "token": "glt"}));
    assert!(header
        .before_body(&req(&[("x-gitlab-token", "glt")]), Timestamp(0))
        .is_ok());
    assert!(header.before_body(&req(&[]), Timestamp(0)).is_err());
    let query = settings(json!({"kind": "token", "query": "key", "token": "qt"}));
    let mut r = req(&[]);
    r.q.insert("key".into(), "qt".into());
    assert!(query.before_body(&r, Timestamp(0)).is_ok());
    r.q.insert("key".into(), "qx".into());
    assert!(query.before_body(&r, Timestamp(0)).is_err());

    let basic = settings(json!({"kind": "basic", "user": "hook", "password": "pw"}));
    // base64("hook:pw") = aG9vazpwdw==
    assert!(basic
        .before_body(
            &req(&[("authorization", "Basic aG9vazpwdw==")]),
            Timestamp(0)
        )
        .is_ok());
    // base64("hook:px")
    assert!(basic
        .before_body(
            &req(&[("authorization", "Basic aG9vazpweA==")]),
            Timestamp(0)
        )
        .is_err());
    assert!(basic
        .before_body(&req(&[("authorization", "Basic !!")]), Timestamp(0))
        .is_err());

    let ip = settings(
        json!({"kind": "ip_allow", "allow": ["192.0.2.0/24", "127.0.0.2"], "trusted_proxies": ["127.0.0.3"]}),
    );
    let with = |peer: &str, xff: Option<&str>| {
        let mut r = req(&[]);
        r.peer = peer.parse().ok();
        if let Some(x) = xff {
            r.h.insert("x-forwarded-for".into(), x.into());
        }
        ip.before_body(&r, Timestamp(0)).is_ok()
    };
    assert!(with("127.0.0.2", None));
    assert!(!with("127.0.0.4", None));
    assert!(
        !with("127.0.0.4", Some("192.0.2.7")),
        "XFF from a stranger is ignored"
    );
    assert!(
        with("127.0.0.3", Some("192.0.2.7")),
        "XFF from a trusted proxy"
    );
    assert!(with("127.0.0.3", Some("10.9.9.9, 192.0.2.7, 127.0.0.3")));
    assert!(
        !with("127.0.0.3", Some("192.0.2.7, 10.9.9.9")),
        "rightmost untrusted hop"
    );
    assert!(!with("127.0.0.3", Some("garbage")));
    assert!(
        with("::ffff:127.0.0.2", None),
        "IPv4-mapped peers compare as IPv4"
    );
    let mut r = req(&[(
        "forwarded",
        "for=\"[2001:db8::1]:80\", for=192.0.2.9;proto=https",
    )]);
    r.peer = "127.0.0.3".parse().ok();
    assert!(ip.before_body(&r, Timestamp(0)).is_ok());
    let mut r = req(&[]);
    r.peer = None;
    assert!(ip.before_body(&r, Timestamp(0)).is_err());
}

#[test]
fn cheapest_first_and_all_must_pass() {
    let v = settings(json!([
        {"kind": "github", "secret": "It's a Secret to Everybody"},
        {"kind": "token", "header": "x-token", "token": "tok"},
        {"kind": "ip_allow", "allow": ["127.0.0.0/8"]},
    ]));
    assert!(matches!(
        v.checks(),
        [Check::IpAllow(_), Check::Token(_), Check::Github(_)]
    ));
    assert!(!v.complete_before_body());
    let mut r = req(&[
        ("x-token", "tok"),
        (
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ),
    ]);
    r.peer = "127.0.0.1".parse().ok();
    assert!(verify(&v, &r, b"Hello, World!", Timestamp::now()).is_ok());
    r.h.remove("x-token");
    assert!(v.before_body(&r, Timestamp::now()).is_err());
}

fn all_kinds() -> VerifySettings {
    settings(json!([
        {"kind": "ip_allow", "allow": ["0.0.0.0/0", "::/0"], "trusted_proxies": ["127.0.0.0/8"]},
        {"kind": "token", "token": "t"},
        {"kind": "token", "header": "x-t", "token": "t"},
        {"kind": "token", "query": "t", "token": "t"},
        {"kind": "basic", "user": "u", "password": "p"},
        {"kind": "github", "secret": "s"},
        {"kind": "stripe", "secret": "s"},
        {"kind": "slack", "secret": "s"},
        {"kind": "shopify", "secret": "s"},
    ]))
}

const NAMES: &[&str] = &[
    "authorization",
    "x-t",
    "x-forwarded-for",
    "forwarded",
    "x-hub-signature-256",
    "stripe-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-shopify-hmac-sha256",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "sig",
    "ts",
    "id",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Arbitrary headers, query, peer and body through every kind and both
    /// body parsers: never a panic, and every refusal is a 4xx kind of error.
    #[test]
    fn arbitrary_input_never_panics(
        values in proptest::collection::vec((0..NAMES.len(), ".{0,80}"), 0..10),
        query in ".{0,20}",
        peer in proptest::option::of(any::<[u8; 4]>()),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        ts in any::<u64>(),
    ) {
        let mut r = req(&[]);
        for (i, v) in values {
            r.h.insert(NAMES[i].to_string(), v);
        }
        r.q.insert("t".into(), query);
        r.peer = peer.map(IpAddr::from);
        let now = Timestamp(ts);
        let kinds = [
            all_kinds(),
            settings(json!({"kind": "standard-webhooks", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})),
            settings(json!({"kind": "hmac", "header": "sig", "prefix": "x=", "encoding": "base64",
                "algorithm": "sha512", "id_header": "id", "timestamp_header": "ts", "secret": "k"})),
        ];
        for v in &kinds {
            // Each kind alone too, so the later ones are reached.
            for c in v.checks() {
                let one = VerifySettings::new(vec![c.clone()]);
                if let Err(e) = verify(&one, &r, &body, now) {
                    prop_assert!(matches!(e, IngressError::Unauthorized(_)), "{e:?}");
                }
            }
        }
        for f in [body::Format::Json, body::Format::Form] {
            if let Err(e) = body::parse(f, &body) {
                prop_assert!(matches!(e, IngressError::InvalidJson(_)), "{e:?}");
            }
        }
        let _ = body::format(Some(&body));
    }
}
