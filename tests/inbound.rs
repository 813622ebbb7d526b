//! Inbound senders over real loopback HTTP: every published vector of
//! webhooks.md through the endpoint, each kind's refusals (nothing stored),
//! requests signed by the senders' official libraries, rotation, form
//! bodies, Slack's url_verification, IP allow-lists behind proxies,
//! filters, mapping, dedupe under concurrency and per-route limits.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

type Hdrs = Vec<(&'static str, String)>;

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SW1: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW2: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Starts a daemon whose config is the tests' usual one plus `routes` (TOML).
async fn daemon_with(slate: &FakeSlate, routes: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = Config::new(slate).render(dir.path());
    text.push_str(routes);
    Daemon::start_with_text(dir, &text).await
}

fn h(pairs: &[(&'static str, &str)]) -> Hdrs {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn hex_hmac(key: &[u8], parts: &[&[u8]]) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    hex::encode(m.finalize().into_bytes())
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn b64_hmac(key: &[u8], body: &[u8]) -> String {
    b64(&hex::decode(hex_hmac(key, &[body])).unwrap())
}

fn stripe_headers(secret: &str, ts: i64, body: &[u8]) -> Hdrs {
    let t = ts.to_string();
    let sig = hex_hmac(secret.as_bytes(), &[t.as_bytes(), b".", body]);
    h(&[("Stripe-Signature", &format!("t={t},v1={sig}"))])
}

fn slack_headers(secret: &str, ts: i64, body: &[u8]) -> Hdrs {
    let t = ts.to_string();
    let sig = hex_hmac(secret.as_bytes(), &[b"v0:", t.as_bytes(), b":", body]);
    h(&[
        ("X-Slack-Request-Timestamp", &t),
        ("X-Slack-Signature", &format!("v0={sig}")),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ])
}

fn sw_headers(secret: &str, id: &str, ts: i64, body: &[u8]) -> Hdrs {
    let t = ts.to_string();
    h(&[
        ("webhook-id", id),
        ("webhook-timestamp", &t),
        (
            "webhook-signature",
            &format!("v1,{}", standard_webhooks_signature(secret, id, &t, body)),
        ),
    ])
}

const ROUTES: &str = r#"
[routes.gh]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "github", secret = "It's a Secret to Everybody" }

[routes.stripe]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "stripe", secret = "whsec_test_secret", tolerance = "off" }

[routes.stripe-live]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "stripe", secret = "whsec_test_secret" }

[routes.slack]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "slack", secret = "8f742231b10e8888abcd99yyyzzz85a5", tolerance = "off" }

[routes.slack-live]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "slack", secret = "8f742231b10e8888abcd99yyyzzz85a5" }

[routes.shopify]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "shopify", secret = "shop-secret" }

[routes.sw]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "standard-webhooks", secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"], tolerance = "off" }

[routes.sw-live]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "standard-webhooks", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }

[routes.hmac]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "hmac", header = "X-Sig", prefix = "sha256=", timestamp_header = "X-Ts", secret = "generic-secret" }

[routes.basic]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "basic", user = "hook", password = "basic-pw" }

[routes.qtoken]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "token", query = "key", token = "query-token" }

[routes.htoken]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "token", header = "X-Gitlab-Token", tokens = ["old-token", "new-token"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_vectors_pass_the_real_endpoint() {
    let slate = FakeSlate::start().await;
    let d = daemon_with(&slate, ROUTES).await;

    // GitHub's vector body is not JSON: verification passes (no 401), then
    // the body is refused as invalid JSON, which proves the signature held.
    let r = d
        .post_hook(
            "gh",
            b"Hello, World!".to_vec(),
            &h(&[(
                "X-Hub-Signature-256",
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            )]),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("invalid_json")),
        "{r:?}"
    );

    let stripe_body = br#"{"id":"evt_test","object":"event"}"#.to_vec();
    let r = d
        .post_hook(
            "stripe",
            stripe_body,
            &h(&[(
                "Stripe-Signature",
                "t=1492774577,v1=691252e266ce41cb94d709c84e9580d4172b117a510bbc81723f657d2cd5d215",
            )]),
        )
        .await;
    assert_eq!(r.status, 202, "stripe vector: {r:?}");

    let r = d
        .post_hook(
            "slack",
            SLACK_BODY.as_bytes().to_vec(),
            &h(&[
                ("X-Slack-Request-Timestamp", "1531420618"),
                (
                    "X-Slack-Signature",
                    "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
                ),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ]),
        )
        .await;
    assert_eq!(r.status, 202, "slack vector: {r:?}");
    let run = d.get_run(&r.run_id()).await;
    assert_eq!(run["inputs"]["command"], "/webhook-collect", "{run}");
    assert_eq!(run["inputs"]["user_name"], "roadrunner", "{run}");

    let r = d
        .post_hook(
            "shopify",
            br#"{"id":1}"#.to_vec(),
            &h(&[(
                "X-Shopify-Hmac-SHA256",
                "plW8VGqq0nDMIEhDqaNNW99asdUCy7EIqLZVcQwtAZ0=",
            )]),
        )
        .await;
    assert_eq!(r.status, 202, "shopify vector: {r:?}");

    for (id, ts, body, sig) in [
        (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ] {
        let r = d
            .post_hook(
                "sw",
                body.as_bytes().to_vec(),
                &h(&[
                    ("webhook-id", id),
                    ("webhook-timestamp", ts),
                    ("webhook-signature", sig),
                ]),
            )
            .await;
        assert_eq!(r.status, 202, "standard webhooks vector {id}: {r:?}");
    }
    assert_eq!(d.run_count().await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_refuses_wrong_secret_tampered_body_stale_timestamp_missing_header() {
    let slate = FakeSlate::start().await;
    let d = daemon_with(&slate, ROUTES).await;
    let now = unix_now();
    let stale = now - 3600;
    let body = br#"{"id":"evt_9","repository":{"full_name":"o/r"}}"#.to_vec();
    let tampered = br#"{"id":"evt_9","repository":{"full_name":"o/x"}}"#.to_vec();
    let gh = |secret: &str| h(&[("X-Hub-Signature-256", &github_signature(secret, &body))]);
    let hmac_h = |secret: &str, ts: i64| {
        let t = ts.to_string();
        h(&[
            ("X-Ts", &t),
            (
                "X-Sig",
                &format!(
                    "sha256={}",
                    hex_hmac(secret.as_bytes(), &[t.as_bytes(), b".", &body])
                ),
            ),
        ])
    };
    let shop = |secret: &str| h(&[("X-Shopify-Hmac-SHA256", &b64_hmac(secret.as_bytes(), &body))]);
    let basic = |user: &str, pw: &str| {
        h(&[(
            "Authorization",
            &format!("Basic {}", b64(format!("{user}:{pw}").as_bytes())),
        )])
    };

    // (route, case, body, headers, path suffix)
    let mut cases: Vec<(&str, &str, Vec<u8>, Hdrs, &str)> = vec![
        ("gh", "wrong secret", body.clone(), gh("nope"), ""),
        (
            "gh",
            "tampered body",
            tampered.clone(),
            gh("It's a Secret to Everybody"),
            "",
        ),
        ("gh", "missing header", body.clone(), vec![], ""),
        (
            "stripe-live",
            "wrong secret",
            body.clone(),
            stripe_headers("whsec_other", now, &body),
            "",
        ),
        (
            "stripe-live",
            "tampered body",
            tampered.clone(),
            stripe_headers("whsec_test_secret", now, &body),
            "",
        ),
        (
            "stripe-live",
            "stale timestamp",
            body.clone(),
            stripe_headers("whsec_test_secret", stale, &body),
            "",
        ),
        ("stripe-live", "missing header", body.clone(), vec![], ""),
        (
            "slack-live",
            "wrong secret",
            body.clone(),
            slack_headers("other", now, &body),
            "",
        ),
        (
            "slack-live",
            "tampered body",
            tampered.clone(),
            slack_headers(SLACK_SECRET, now, &body),
            "",
        ),
        (
            "slack-live",
            "stale timestamp",
            body.clone(),
            slack_headers(SLACK_SECRET, stale, &body),
            "",
        ),
        ("slack-live", "missing header", body.clone(), vec![], ""),
        ("shopify", "wrong secret", body.clone(), shop("nope"), ""),
        (
            "shopify",
            "tampered body",
            tampered.clone(),
            shop("shop-secret"),
            "",
        ),
        ("shopify", "missing header", body.clone(), vec![], ""),
        (
            "sw-live",
            "wrong secret",
            body.clone(),
            sw_headers(SW2, "msg_1", now, &body),
            "",
        ),
        (
            "sw-live",
            "tampered body",
            tampered.clone(),
            sw_headers(SW1, "msg_1", now, &body),
            "",
        ),
        (
            "sw-live",
            "stale timestamp",
            body.clone(),
            sw_headers(SW1, "msg_1", stale, &body),
            "",
        ),
        ("sw-live", "missing header", body.clone(), vec![], ""),
        (
            "hmac",
            "wrong secret",
            body.clone(),
            hmac_h("nope", now),
            "",
        ),
        (
            "hmac",
            "tampered body",
            tampered.clone(),
            hmac_h("generic-secret", now),
            "",
        ),
        (
            "hmac",
            "stale timestamp",
            body.clone(),
            hmac_h("generic-secret", stale),
            "",
        ),
        ("hmac", "missing header", body.clone(), vec![], ""),
        (
            "basic",
            "wrong secret",
            body.clone(),
            basic("hook", "nope"),
            "",
        ),
        ("basic", "missing header", body.clone(), vec![], ""),
        ("qtoken", "wrong secret", body.clone(), vec![], "?key=nope"),
        ("qtoken", "missing parameter", body.clone(), vec![], ""),
        (
            "htoken",
            "wrong secret",
            body.clone(),
            h(&[("X-Gitlab-Token", "nope")]),
            "",
        ),
        ("htoken", "missing header", body.clone(), vec![], ""),
    ];
    for (route, case, body, headers, query) in cases.drain(..) {
        let mut req = d
            .hook_http
            .post(d.url(&format!("/hooks/{route}{query}")))
            .body(body);
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let r = to_hook_resp(req.send().await.expect("POST")).await;
        assert_eq!(r.status, 401, "{route}: {case}: {r:?}");
        assert_eq!(r.body["error"], "unauthorized", "{route}: {case}: {r:?}");
    }
    assert_eq!(d.run_count().await, 0, "a refusal stores nothing");

    // And the right credentials pass, for the kinds not covered by vectors.
    let ok: Vec<(&str, Hdrs, &str)> = vec![
        ("hmac", hmac_h("generic-secret", now), ""),
        ("basic", basic("hook", "basic-pw"), ""),
        ("qtoken", vec![], "?key=query-token"),
        ("htoken", h(&[("X-Gitlab-Token", "old-token")]), ""),
        ("htoken", h(&[("X-Gitlab-Token", "new-token")]), ""),
    ];
    for (route, headers, query) in ok {
        let mut req = d
            .hook_http
            .post(d.url(&format!("/hooks/{route}{query}")))
            .body(body.clone());
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let r = to_hook_resp(req.send().await.expect("POST")).await;
        assert_eq!(r.status, 202, "{route}: {r:?}");
    }
}

/// Headers from `tests/sign.py`, which signs with the sender's official
/// library; `None` (with a loud message) when python or the library is absent.
fn official(kind: &str, secret: &str, body: &[u8]) -> Option<Hdrs> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sign.py");
    let child = std::process::Command::new("python3")
        .arg(script)
        .arg(kind)
        .arg(secret)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("!!!!! SKIPPED: python3 not runnable ({e}); CI installs it. !!!!!");
            return None;
        }
    };
    child.stdin.take()?.write_all(body).ok()?;
    let out = child.wait_with_output().ok()?;
    if out.status.code() == Some(3) {
        eprintln!(
            "!!!!! SKIPPED {kind}: {} (.ci/run installs it) !!!!!",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    assert!(
        out.status.success(),
        "sign.py {kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Map<String, Value> =
        serde_json::from_slice(&out.stdout).expect("sign.py prints JSON");
    Some(
        v.into_iter()
            .map(|(k, v)| {
                (
                    &*Box::leak(k.into_boxed_str()),
                    v.as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_signed_by_the_official_libraries_pass() {
    let slate = FakeSlate::start().await;
    let d = daemon_with(&slate, ROUTES).await;
    let mut sent = 0;
    let body = br#"{"id":"evt_lib_1","object":"event","type":"invoice.paid"}"#;
    if let Some(hs) = official("stripe", "whsec_test_secret", body) {
        let r = d.post_hook("stripe-live", body.to_vec(), &hs).await;
        assert_eq!(r.status, 202, "stripe library: {r:?}");
        sent += 1;
    }
    let form = b"command=%2Fdeploy&text=prod&user_name=ann";
    if let Some(hs) = official("slack", SLACK_SECRET, form) {
        let r = d.post_hook("slack-live", form.to_vec(), &hs).await;
        assert_eq!(r.status, 202, "slack_sdk: {r:?}");
        assert_eq!(d.get_run(&r.run_id()).await["inputs"]["text"], "prod");
        sent += 1;
    }
    let body = br#"{"type":"user.created","data":{"id":7}}"#;
    if let Some(hs) = official("standard-webhooks", SW1, body) {
        let r = d.post_hook("sw-live", body.to_vec(), &hs).await;
        assert_eq!(r.status, 202, "standardwebhooks: {r:?}");
        // The same message again is a duplicate (webhook-id).
        let again = d.post_hook("sw-live", body.to_vec(), &hs).await;
        assert_eq!((again.status, again.run_id()), (200, r.run_id()));
        sent += 1;
    }
    assert_eq!(d.run_count().await, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_passes_old_and_new() {
    let slate = FakeSlate::start().await;
    let d = daemon_with(
        &slate,
        r#"
[routes.rot]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "github", secrets = ["old-gh-secret", "new-gh-secret"] }
"#,
    )
    .await;
    let body = serde_json::to_vec(&gh_payload("o/r")).unwrap();
    for (i, s) in ["old-gh-secret", "new-gh-secret"].iter().enumerate() {
        let r = d
            .post_hook(
                "rot",
                body.clone(),
                &h(&[
                    ("X-Hub-Signature-256", &github_signature(s, &body)),
                    ("X-GitHub-Delivery", &format!("rot-{i}")),
                ]),
            )
            .await;
        assert_eq!(r.status, 202, "{s}: {r:?}");
    }
    let r = d
        .post_hook(
            "rot",
            body.clone(),
            &h(&[("X-Hub-Signature-256", &github_signature("gone", &body))]),
        )
        .await;
    assert_eq!(r.status, 401);
    // Standard Webhooks too (the `sw` route lists both vector secrets above).
    let d2 = daemon_with(&slate, ROUTES).await;
    let now = unix_now();
    for (i, s) in [SW1, SW2].iter().enumerate() {
        let r = d2
            .post_hook(
                "sw",
                body.clone(),
                &sw_headers(s, &format!("msg_rot{i}"), now, &body),
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_forms_url_verification_and_github_form_payloads() {
    let slate = FakeSlate::start().await;
    let d = daemon_with(
        &slate,
        &format!(
            "{ROUTES}\n[routes.ghform]\nprovider = \"slate\"\nworkflow_id = \"wf_ok\"\nverify = {{ kind = \"github\", secret = {} }}\n\n[[routes.ghform.inputs]]\nname = \"repo\"\npointer = \"/repository/full_name\"\n",
            toml_str(GH_SECRET)
        ),
    )
    .await;
    let now = unix_now();
    // url_verification: answered with the challenge once verified; no run.
    let body = br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let mut hs = slack_headers(SLACK_SECRET, now, body);
    hs.retain(|(k, _)| *k != "Content-Type");
    hs.push(("Content-Type", "application/json".into()));
    let r = d.post_hook("slack-live", body.to_vec(), &hs).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    let forged = slack_headers("not-the-secret", now, body);
    assert_eq!(
        d.post_hook("slack-live", body.to_vec(), &forged)
            .await
            .status,
        401
    );
    assert_eq!(d.run_count().await, 0, "url_verification starts nothing");

    // Interactivity: payload=<json> is unwrapped.
    let payload = json!({"type": "block_actions", "user": {"id": "U1"}}).to_string();
    let form = format!("payload={}", percent_encode(&payload));
    let r = d
        .post_hook(
            "slack-live",
            form.clone().into_bytes(),
            &slack_headers(SLACK_SECRET, now, form.as_bytes()),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(d.get_run(&r.run_id()).await["inputs"]["user"]["id"], "U1");

    // GitHub's form content type: payload=<json>, signed as sent.
    let form = format!(
        "payload={}",
        percent_encode(&gh_payload("octo/form").to_string())
    );
    let r = d
        .post_hook(
            "ghform",
            form.clone().into_bytes(),
            &h(&[
                ("Content-Type", "application/x-www-form-urlencoded"),
                (
                    "X-Hub-Signature-256",
                    &github_signature(GH_SECRET, form.as_bytes()),
                ),
                ("X-GitHub-Delivery", "form-1"),
            ]),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(d.get_run(&r.run_id()).await["inputs"]["repo"], "octo/form");
}

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .local_address(ip.parse::<std::net::IpAddr>().ok())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allow_list_direct_and_behind_a_trusted_proxy() {
    let slate = FakeSlate::start().await;
    let d = daemon_with(
        &slate,
        r#"
[routes.ip]
provider = "slate"
workflow_id = "wf_ok"
verify = { kind = "ip_allow", allow = ["127.0.0.2", "192.0.2.0/24"], trusted_proxies = ["127.0.0.3/32"] }
"#,
    )
    .await;
    let body = serde_json::to_vec(&gh_payload("o/ip")).unwrap();
    let send = |from: &'static str, xff: Option<&'static str>, body: Vec<u8>| {
        let url = d.url("/hooks/ip");
        async move {
            let mut req = client_from(from).post(url).body(body);
            if let Some(x) = xff {
                req = req.header("X-Forwarded-For", x);
            }
            to_hook_resp(req.send().await.expect("POST")).await
        }
    };
    assert_eq!(
        send("127.0.0.2", None, body.clone()).await.status,
        202,
        "allowed peer"
    );
    assert_eq!(
        send("127.0.0.4", None, body.clone()).await.status,
        401,
        "refused peer"
    );
    assert_eq!(
        send("127.0.0.4", Some("192.0.2.9"), body.clone())
            .await
            .status,
        401,
        "XFF from a stranger ignored"
    );
    assert_eq!(
        send("127.0.0.3", Some("192.0.2.9"), body.clone())
            .await
            .status,
        202,
        "XFF from the trusted proxy"
    );
    assert_eq!(
        send("127.0.0.3", Some("10.1.1.1"), body.clone())
            .await
            .status,
        401,
        "proxy forwarding a refused client"
    );
    assert_eq!(
        send("127.0.0.3", None, body.clone()).await.status,
        401,
        "the proxy itself is not allowed"
    );
    // Refused before the body is read, and the answer still reaches a
    // sender writing a large body first (lingering close).
    let big = vec![b' '; 48 * 1024];
    let r = send("127.0.0.4", None, big).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(d.run_count().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_ignore_what_does_not_match_and_mapping_uses_templates() {
    let slate = FakeSlate::start().await;
    let d = daemon_with(
        &slate,
        &format!(
            r#"
[routes.push]
provider = "slate"
workflow_id = "wf_ok"
verify = {{ kind = "github", secret = {secret} }}
filter = {{ all = [ {{ at = "header.X-GitHub-Event", equals = "push" }}, {{ at = "/ref", one_of = ["refs/heads/main"] }}, {{ not = {{ at = "/deleted", equals = true }} }} ] }}

[[routes.push.inputs]]
name = "label"
template = "{{{{ /repository/full_name }}}}@{{{{ header.X-GitHub-Event }}}}"

[[routes.push.inputs]]
name = "repository"
template = "{{{{ /repository }}}}"

[[routes.push.inputs]]
name = "env"
query = "env"

[[routes.push.inputs]]
name = "payload"
pointer = ""
"#,
            secret = toml_str(GH_SECRET)
        ),
    )
    .await;
    let send = |payload: Value, event: &'static str, delivery: &'static str, q: &'static str| {
        let body = serde_json::to_vec(&payload).unwrap();
        let mut hs = Daemon::github_headers(delivery, &body);
        hs.retain(|(k, _)| *k != "X-GitHub-Event");
        hs.push(("X-GitHub-Event", event.into()));
        let url = d.url(&format!("/hooks/push{q}"));
        let client = d.hook_http.clone();
        async move {
            let mut req = client.post(url).body(body);
            for (k, v) in &hs {
                req = req.header(*k, v.as_str());
            }
            to_hook_resp(req.send().await.expect("POST")).await
        }
    };
    let main = json!({"ref": "refs/heads/main", "repository": {"full_name": "octo/app", "id": 5}});
    let r = send(main.clone(), "push", "f-1", "?env=prod").await;
    assert_eq!(r.status, 202, "{r:?}");
    let run = d.get_run(&r.run_id()).await;
    assert_eq!(run["inputs"]["label"], "octo/app@push");
    assert_eq!(
        run["inputs"]["repository"],
        json!({"full_name": "octo/app", "id": 5})
    );
    assert_eq!(run["inputs"]["env"], "prod");
    assert_eq!(run["inputs"]["payload"], main);

    let dev = json!({"ref": "refs/heads/dev", "repository": {"full_name": "octo/app"}});
    let r = send(dev, "push", "f-2", "?env=prod").await;
    assert_eq!((r.status, &r.body["ignored"]), (202, &json!(true)), "{r:?}");
    assert!(
        r.body["reason"]
            .as_str()
            .is_some_and(|s| s.contains("/ref")),
        "{r:?}"
    );
    let r = send(main.clone(), "issues", "f-3", "?env=prod").await;
    assert_eq!(r.body["ignored"], json!(true), "{r:?}");
    let mut deleted = main.clone();
    deleted["deleted"] = json!(true);
    assert_eq!(
        send(deleted, "push", "f-4", "?env=prod").await.body["ignored"],
        json!(true)
    );
    // A missing required input is a 422 naming it.
    let r = send(main.clone(), "push", "f-5", "").await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("env")),
        "{r:?}"
    );

    assert_eq!(d.run_count().await, 1, "ignored requests start nothing");
    let (_, ready) = d.admin_get("/readyz").await;
    assert_eq!(ready["edge"]["ignored_by_filters"], 3, "{ready}");
    poll_until("the one run started", DEADLINE, || async {
        if slate.create_count() == 1 {
            Ok(())
        } else {
            Err(slate.create_count().to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_copies_start_exactly_one_run() {
    let slate = FakeSlate::start().await;
    let d = daemon_with(&slate, ROUTES).await;
    let body = br#"{"id":"evt_dup","object":"event"}"#.to_vec();
    let gh_body = serde_json::to_vec(&gh_payload("o/dup")).unwrap();
    let now = unix_now();
    // GitHub (X-GitHub-Delivery), Stripe (the body's id), Shopify
    // (X-Shopify-Webhook-Id): 20 copies of each at once.
    let cases: Vec<(&str, Vec<u8>, Hdrs)> = vec![
        (
            "gh",
            gh_body.clone(),
            h(&[
                (
                    "X-Hub-Signature-256",
                    &github_signature("It's a Secret to Everybody", &gh_body),
                ),
                ("X-GitHub-Delivery", "dup-1"),
            ]),
        ),
        (
            "stripe-live",
            body.clone(),
            stripe_headers("whsec_test_secret", now, &body),
        ),
        (
            "shopify",
            body.clone(),
            h(&[
                ("X-Shopify-Hmac-SHA256", &b64_hmac(b"shop-secret", &body)),
                ("X-Shopify-Webhook-Id", "shop-dup"),
            ]),
        ),
    ];
    for (route, body, hs) in cases {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let client = hook_client();
            let url = d.url(&format!("/hooks/{route}"));
            let (body, hs) = (body.clone(), hs.clone());
            tasks.push(tokio::spawn(async move {
                let mut req = client.post(url).body(body);
                for (k, v) in &hs {
                    req = req.header(*k, v.as_str());
                }
                to_hook_resp(req.send().await.expect("POST")).await
            }));
        }
        let mut ids = std::collections::HashSet::new();
        let mut created = 0;
        for t in tasks {
            let r = t.await.expect("task");
            assert!(r.status == 202 || r.status == 200, "{route}: {r:?}");
            created += usize::from(r.status == 202);
            ids.insert(r.run_id());
        }
        assert_eq!((created, ids.len()), (1, 1), "{route}: one run, one id");
    }
    assert_eq!(d.run_count().await, 3);
    poll_until("three starts", DEADLINE, || async {
        if slate.create_count() >= 3 {
            Ok(())
        } else {
            Err(slate.create_count().to_string())
        }
    })
    .await;
    assert_eq!(slate.distinct_runs(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_route_limit_429_or_queued_in_turn() {
    let slate = FakeSlate::start().await;
    let secret = toml_str(GH_SECRET);
    let d = daemon_with(
        &slate,
        &format!(
            r#"
[routes.capped]
provider = "slate"
workflow_id = "wf_ok"
verify = {{ kind = "github", secret = {secret} }}
rate_per_min = 2
burst = 2

[routes.queued]
provider = "slate"
workflow_id = "wf_ok"
verify = {{ kind = "github", secret = {secret} }}
rate_per_s = 4
over_limit = "queue"
"#
        ),
    )
    .await;
    // Strangers do not use up the allowance.
    for _ in 0..5 {
        let r = d
            .post_hook(
                "capped",
                b"{}".to_vec(),
                &h(&[("X-Hub-Signature-256", "sha256=00")]),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    for i in 0..2 {
        let r = d
            .post_github("capped", &format!("cap-{i}"), &gh_payload("o/cap"))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    let r = d.post_github("capped", "cap-3", &gh_payload("o/cap")).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.body["error"], "rate_limited");
    let resp = d
        .hook_http
        .post(d.url("/hooks/capped"))
        .body(serde_json::to_vec(&gh_payload("o/cap")).unwrap())
        .header(
            "X-Hub-Signature-256",
            github_signature(
                GH_SECRET,
                &serde_json::to_vec(&gh_payload("o/cap")).unwrap(),
            ),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(d.run_count().await, 2, "nothing persisted over the limit");

    // Queue: all accepted at once, started in turn, 250 ms apart.
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = d
            .post_github("queued", &format!("q-{i}"), &gh_payload("o/q"))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        ids.push(r.run_id());
    }
    let mut starts = Vec::new();
    for id in &ids {
        let run = d
            .wait_run(id, "started", |r| r["started_at"].is_string())
            .await;
        starts.push(run["started_at"].as_str().unwrap().to_string());
    }
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(sorted, starts, "runs start in arrival order");
    let create: Vec<_> = slate
        .create_calls()
        .into_iter()
        .filter(|c| c.status < 300)
        .map(|c| c.at)
        .collect();
    let last = create.len();
    assert!(last >= 7, "{last}");
    let span = create[last - 1].duration_since(create[last - 5]);
    assert!(
        span >= Duration::from_millis(800),
        "queued starts are spread by the rate: {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_refuses_with_429_then_admits_when_runs_end() {
    let slate = FakeSlate::start().await;
    let secret = toml_str(GH_SECRET);
    let d = daemon_with(
        &slate,
        &format!(
            "\n[routes.busy]\nprovider = \"slate\"\nworkflow_id = \"wf_hold_busy\"\nverify = {{ kind = \"github\", secret = {secret} }}\nmax_in_flight = 2\n"
        ),
    )
    .await;
    let a = d.post_github("busy", "b-1", &gh_payload("o/b")).await;
    let b = d.post_github("busy", "b-2", &gh_payload("o/b")).await;
    assert_eq!((a.status, b.status), (202, 202));
    // The limit is checked before the store's dedupe: a redelivery while
    // the route is full is refused too (and answered 200 once there is room).
    let dup = d.post_github("busy", "b-1", &gh_payload("o/b")).await;
    assert_eq!(dup.status, 429, "{dup:?}");
    let resp = d
        .hook_http
        .post(d.url("/hooks/busy"))
        .body(serde_json::to_vec(&gh_payload("o/b")).unwrap())
        .header(
            "X-Hub-Signature-256",
            github_signature(GH_SECRET, &serde_json::to_vec(&gh_payload("o/b")).unwrap()),
        )
        .header("X-GitHub-Delivery", "b-3")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(d.run_count().await, 2, "nothing persisted over the limit");
    slate.release_holds();
    d.wait_done(&a.run_id()).await;
    d.wait_done(&b.run_id()).await;
    let c = d.post_github("busy", "b-3", &gh_payload("o/b")).await;
    assert_eq!(c.status, 202, "room again once runs ended: {c:?}");
    let dup = d.post_github("busy", "b-1", &gh_payload("o/b")).await;
    assert_eq!((dup.status, dup.run_id()), (200, a.run_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_queue_runs_every_run_in_turn() {
    let slate = FakeSlate::start().await;
    let secret = toml_str(GH_SECRET);
    let d = daemon_with(
        &slate,
        &format!(
            "\n[routes.lane]\nprovider = \"slate\"\nworkflow_id = \"wf_hold_lane\"\nverify = {{ kind = \"github\", secret = {secret} }}\nmax_in_flight = 2\nover_limit = \"queue\"\n"
        ),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = d
            .post_github("lane", &format!("l-{i}"), &gh_payload("o/l"))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        ids.push(r.run_id());
    }
    // Two start and are tracked; the other three stay accepted meanwhile.
    poll_until("two runs tracked", DEADLINE, || async {
        let mut tracking = 0;
        for id in &ids {
            tracking += usize::from(d.get_run(id).await["phase"] == "tracking");
        }
        if tracking == 2 {
            Ok(())
        } else {
            Err(format!("{tracking} tracking"))
        }
    })
    .await;
    let mut accepted = 0;
    for id in &ids {
        accepted += usize::from(d.get_run(id).await["phase"] == "accepted");
    }
    assert_eq!((accepted, slate.create_count()), (3, 2));
    slate.release_holds();
    for id in &ids {
        let run = d.wait_done(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    assert_eq!(slate.distinct_runs(), 5);
}
