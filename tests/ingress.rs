//! POST /hooks/{route}: rejections (code, JSON body, check order, nothing
//! stored), accepted content types, body limit boundary, dedupe, admin auth.

mod common;

use common::*;
use serde_json::{json, Value};

const LIMIT: usize = 64 * 1024;

type Headers = Vec<(&'static str, String)>;

/// A signed-payload body of exactly `len` bytes.
fn body_of_len(len: usize) -> Vec<u8> {
    let empty =
        serde_json::to_vec(&json!({ "repository": { "full_name": "acme/big" }, "pad": "" }))
            .unwrap();
    assert!(len >= empty.len());
    let v =
        json!({ "repository": { "full_name": "acme/big" }, "pad": "x".repeat(len - empty.len()) });
    let out = serde_json::to_vec(&v).unwrap();
    assert_eq!(out.len(), len);
    out
}

fn headers_with(body: &[u8], delivery: &str, edit: impl FnOnce(&mut Headers)) -> Headers {
    let mut h = Daemon::github_headers(delivery, body);
    edit(&mut h);
    h
}

fn set(h: &mut Headers, name: &'static str, value: Option<&str>) {
    h.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    if let Some(v) = value {
        h.push((name, v.to_string()));
    }
}

fn assert_error(resp: &HookResp, status: u16, code: &str, case: &str) {
    assert_eq!(
        resp.status, status,
        "{case}: expected {status} {code}, got {resp:?}"
    );
    assert!(
        resp.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "{case}: error must be JSON, got {resp:?}"
    );
    assert_eq!(resp.body["error"], code, "{case}: {resp:?}");
    assert!(
        resp.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: error needs a message: {resp:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_has_its_code_and_json_body_and_stores_nothing() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;

    let good = serde_json::to_vec(&gh_payload("acme/app")).unwrap();
    let big = body_of_len(LIMIT + 1);
    let malformed = b"{\"repository\": {\"full_name\": \"acme/app\"".to_vec();
    let unmapped =
        serde_json::to_vec(&json!({ "ref": "refs/heads/main", "repository": { "name": "app" } }))
            .unwrap();

    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        Vec<(&'static str, String)>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "unknown route",
            "nope",
            good.clone(),
            headers_with(&good, "d1", |_| {}),
            404,
            "route_not_found",
        ),
        (
            "bad signature",
            "gh",
            good.clone(),
            headers_with(&good, "d2", |h| {
                set(
                    h,
                    "X-Hub-Signature-256",
                    Some(&github_signature("wrong-secret", &good)),
                )
            }),
            401,
            "unauthorized",
        ),
        (
            "missing signature",
            "gh",
            good.clone(),
            headers_with(&good, "d3", |h| set(h, "X-Hub-Signature-256", None)),
            401,
            "unauthorized",
        ),
        (
            "malformed signature",
            "gh",
            good.clone(),
            headers_with(&good, "d4", |h| {
                set(h, "X-Hub-Signature-256", Some("sha256=not-hex"))
            }),
            401,
            "unauthorized",
        ),
        (
            "signature of other bytes",
            "gh",
            good.clone(),
            headers_with(&good, "d5", |h| {
                set(
                    h,
                    "X-Hub-Signature-256",
                    Some(&github_signature(GH_SECRET, b"{}")),
                )
            }),
            401,
            "unauthorized",
        ),
        (
            "body over the limit",
            "gh",
            big.clone(),
            headers_with(&big, "d6", |_| {}),
            413,
            "payload_too_large",
        ),
        (
            "malformed JSON",
            "gh",
            malformed.clone(),
            headers_with(&malformed, "d7", |_| {}),
            400,
            "invalid_json",
        ),
        (
            "text/plain",
            "gh",
            good.clone(),
            headers_with(&good, "d8", |h| set(h, "Content-Type", Some("text/plain"))),
            415,
            "unsupported_media_type",
        ),
        (
            // URL-encoded forms are read now (tests/inbound.rs); multipart is not.
            "multipart body",
            "gh",
            good.clone(),
            headers_with(&good, "d9", |h| {
                set(h, "Content-Type", Some("multipart/form-data; boundary=x"))
            }),
            415,
            "unsupported_media_type",
        ),
        (
            "required input missing",
            "gh",
            unmapped.clone(),
            headers_with(&unmapped, "d10", |_| {}),
            422,
            "missing_input",
        ),
        // Check order: route, size, signature, content type, JSON, mapping.
        (
            "unknown route beats size",
            "nope",
            big.clone(),
            headers_with(&big, "d11", |_| {}),
            404,
            "route_not_found",
        ),
        (
            "size beats signature",
            "gh",
            big.clone(),
            headers_with(&big, "d12", |h| set(h, "X-Hub-Signature-256", None)),
            413,
            "payload_too_large",
        ),
        (
            "signature beats content type",
            "gh",
            good.clone(),
            headers_with(&good, "d13", |h| {
                set(h, "X-Hub-Signature-256", None);
                set(h, "Content-Type", Some("text/plain"));
            }),
            401,
            "unauthorized",
        ),
        (
            "content type beats JSON",
            "gh",
            malformed.clone(),
            headers_with(&malformed, "d14", |h| {
                set(h, "Content-Type", Some("text/plain"))
            }),
            415,
            "unsupported_media_type",
        ),
    ];

    for (case, route, body, headers, status, code) in cases {
        eprintln!("case: {case}");
        let resp = d.post_hook(route, body, &headers).await;
        assert_error(&resp, status, code, case);
    }

    // Nothing was stored and nothing was started.
    assert_eq!(
        d.run_count().await,
        0,
        "rejected requests must not create runs"
    );
    assert_eq!(slate.create_count(), 0, "{:?}", slate.create_calls());
    assert!(rx.records().is_empty());

    // A rejected delivery id is not remembered: the same id, now valid, starts a run.
    let ok = d.post_github("gh", "d2", &gh_payload("acme/app")).await;
    assert_eq!(ok.status, 202, "{ok:?}");
    assert_eq!(d.run_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_content_types_and_a_body_at_the_limit_are_accepted() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let d = Daemon::start(&cfg).await;

    let good = serde_json::to_vec(&gh_payload("acme/app")).unwrap();
    let at_limit = body_of_len(LIMIT);
    let cases: Vec<(&str, Vec<u8>, Headers)> = vec![
        (
            "application/vnd.github+json",
            good.clone(),
            headers_with(&good, "c1", |h| {
                set(h, "Content-Type", Some("application/vnd.github+json"))
            }),
        ),
        (
            "application/json; charset=utf-8",
            good.clone(),
            headers_with(&good, "c2", |h| {
                set(h, "Content-Type", Some("application/json; charset=utf-8"))
            }),
        ),
        (
            "no content type",
            good.clone(),
            headers_with(&good, "c3", |h| set(h, "Content-Type", None)),
        ),
        (
            "optional header input absent",
            good.clone(),
            headers_with(&good, "c4", |h| set(h, "X-GitHub-Event", None)),
        ),
        (
            "body of exactly body_limit",
            at_limit.clone(),
            headers_with(&at_limit, "c5", |_| {}),
        ),
    ];
    let mut ids = Vec::new();
    for (case, body, headers) in cases {
        let resp = d.post_hook("gh", body, &headers).await;
        assert_eq!(resp.status, 202, "{case}: {resp:?}");
        ids.push(resp.run_id());
    }
    assert_eq!(d.run_count().await, 5);
    let run = d.get_run(&ids[3]).await;
    assert_eq!(run["inputs"]["repo"], "acme/app", "{run}");
    assert_eq!(run["inputs"]["source"], "tests", "{run}");
    assert!(
        run["inputs"].get("event").is_none_or(Value::is_null),
        "absent optional input without default: {run}"
    );
    for id in &ids {
        let run = d.wait_done(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    assert_eq!(slate.distinct_runs(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_delivery_id_answers_200_with_the_same_run_and_starts_nothing() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate)
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()))
        .route(RouteCfg::new("other", "wf_ok").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;

    let first = d
        .post_github("gh", "same-guid", &gh_payload("acme/app"))
        .await;
    assert_eq!(first.status, 202, "{first:?}");
    let id = first.run_id();

    let second = d
        .post_github("gh", "same-guid", &gh_payload("acme/app"))
        .await;
    assert_eq!(second.status, 200, "a repeat must answer 200: {second:?}");
    assert_eq!(
        second.body, first.body,
        "a repeat must answer the first body"
    );

    // A redelivery with another body is still the same delivery.
    let third = d
        .post_github("gh", "same-guid", &gh_payload("acme/changed"))
        .await;
    assert_eq!(third.status, 200, "{third:?}");
    assert_eq!(third.run_id(), id);

    // A bad signature is rejected before dedupe: the run id is not disclosed.
    let body = serde_json::to_vec(&gh_payload("acme/app")).unwrap();
    let forged = headers_with(&body, "same-guid", |h| {
        set(
            h,
            "X-Hub-Signature-256",
            Some(&github_signature("wrong", &body)),
        )
    });
    let resp = d.post_hook("gh", body, &forged).await;
    assert_error(&resp, 401, "unauthorized", "forged repeat");

    rx.wait_delivered(&id).await;
    d.wait_done(&id).await;
    assert_eq!(slate.create_count(), 1, "{:?}", slate.create_calls());
    assert_eq!(slate.distinct_runs(), 1);
    let again = d
        .post_github("gh", "same-guid", &gh_payload("acme/app"))
        .await;
    assert_eq!(
        again.status, 200,
        "still deduped after the run finished: {again:?}"
    );
    assert_eq!(again.run_id(), id);
    assert_eq!(rx.for_run(&id).iter().filter(|r| r.ok()).count(), 1);

    // Another id, or the same id on another route, is a new run.
    let other_id = d
        .post_github("gh", "another-guid", &gh_payload("acme/app"))
        .await;
    assert_eq!(other_id.status, 202, "{other_id:?}");
    assert_ne!(other_id.run_id(), id);
    let other_route = d
        .post_github("other", "same-guid", &gh_payload("acme/app"))
        .await;
    assert_eq!(
        other_route.status, 202,
        "dedupe is per route: {other_route:?}"
    );
    assert_ne!(other_route.run_id(), id);
    assert_eq!(d.run_count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_the_token_and_healthz_does_not() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let d = Daemon::start(&cfg).await;

    let health = to_hook_resp(d.http.get(d.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body["status"], "ok", "{health:?}");

    let id = d.trigger("gh", "dlv-admin", "acme/admin").await;
    for path in ["/runs".to_string(), format!("/runs/{id}")] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("admin-secret"),
            Some("Basic YWRtaW4tc2VjcmV0"),
        ] {
            let mut req = d.http.get(d.url(&path));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let resp = to_hook_resp(req.send().await.unwrap()).await;
            assert_error(
                &resp,
                401,
                "unauthorized",
                &format!("GET {path} with {auth:?}"),
            );
        }
    }

    let (status, body) = d.admin_get("/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "run_not_found", "{body}");
    assert!(body["message"].is_string(), "{body}");

    let run = d.get_run(&id).await;
    assert_eq!(run["id"], json!(id));
}

#[test]
fn our_signature_code_matches_the_published_vectors() {
    assert_eq!(
        github_signature("It's a Secret to Everybody", b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
    let cases = [
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];
    for (secret, id, ts, body, sig) in cases {
        assert!(verify_standard_webhooks(
            secret,
            id,
            ts,
            body.as_bytes(),
            sig
        ));
        assert!(verify_standard_webhooks(
            secret,
            id,
            ts,
            body.as_bytes(),
            &format!("v1,bogus= {sig}")
        ));
        assert!(!verify_standard_webhooks(
            secret,
            id,
            "1",
            body.as_bytes(),
            sig
        ));
    }
    assert!(is_rfc3339(&json!("2026-01-27T01:23:45.000Z")));
    assert!(is_rfc3339(&json!("2026-01-27T01:23:45+02:00")));
    assert!(!is_rfc3339(&json!("2026-01-27 01:23:45")));
    assert!(is_rfc3339(&json!(rfc3339_now())));
}

/// A sender that stops mid-body is cut off after `server.request_timeout`
/// with the same JSON error shape as every other rejection, and nothing is
/// stored or started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sender_gets_408_with_a_json_body_and_nothing_is_stored() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let dir = tempfile::tempdir().unwrap();
    let text =
        cfg.render(dir.path())
            .replacen("[server]\n", "[server]\nrequest_timeout = \"1s\"\n", 1);
    let d = Daemon::start_with_text(dir, &text).await;

    let mut sock = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let head = format!(
        "POST /hooks/gh HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"repository\":",
        d.addr
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    // The daemon answers and closes; the read ends there (bounded by a deadline).
    tokio::time::timeout(Duration::from_secs(30), sock.read_to_end(&mut answer))
        .await
        .expect("the daemon answers a stalled request")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(v["error"], "request_timeout");
    assert!(v["message"].as_str().unwrap().contains("1s"));

    assert_eq!(d.list_runs("limit=100").await["runs"], json!([]));
    assert_eq!(slate.create_count(), 0);
    // The daemon is still serving.
    let (status, _) = d.admin_get("/runs?limit=1").await;
    assert_eq!(status, 200);
}

/// The Standard Webhooks and bearer-token verifiers through the real
/// binary: a live signature is accepted, `webhook-id` deduplicates by
/// default, a stale timestamp or a wrong signature/token gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_and_token_routes_verify_their_senders() {
    const SW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[routes.sw]\nprovider = \"slate\"\nworkflow_id = \"wf_ok\"\nverify = {{ kind = \"standard-webhooks\", secret = \"{SW_SECRET}\", tolerance = \"5m\" }}\n\n[routes.tok]\nprovider = \"slate\"\nworkflow_id = \"wf_ok\"\nverify = {{ kind = \"token\", token = \"s3cret\" }}\n",
        cfg.render(dir.path())
    );
    let d = Daemon::start_with_text(dir, &text).await;
    let body = serde_json::to_vec(&gh_payload("acme/sw")).unwrap();

    let sw_headers = |id: &str, ts: i64, body: &[u8]| -> Vec<(&'static str, String)> {
        let ts = ts.to_string();
        let sig = standard_webhooks_signature(SW_SECRET, id, &ts, body);
        vec![
            ("content-type", "application/json".to_string()),
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts),
            ("webhook-signature", format!("v1,{sig}")),
        ]
    };
    let first = d
        .post_hook("sw", body.clone(), &sw_headers("msg_1", unix_now(), &body))
        .await;
    assert_eq!(first.status, 202, "{first:?}");
    let again = d
        .post_hook("sw", body.clone(), &sw_headers("msg_1", unix_now(), &body))
        .await;
    assert_eq!(again.status, 200, "webhook-id deduplicates: {again:?}");
    assert_eq!(again.run_id(), first.run_id());

    let stale = d
        .post_hook(
            "sw",
            body.clone(),
            &sw_headers("msg_2", unix_now() - 600, &body),
        )
        .await;
    assert_eq!(stale.status, 401, "{stale:?}");
    assert_eq!(stale.body["error"], "unauthorized");
    let mut forged = sw_headers("msg_3", unix_now(), &body);
    forged.retain(|(k, _)| *k != "webhook-signature");
    forged.push(("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl".to_string()));
    assert_eq!(d.post_hook("sw", body.clone(), &forged).await.status, 401);

    let bearer = |t: &str| {
        vec![
            ("content-type", "application/json".to_string()),
            ("authorization", format!("Bearer {t}")),
        ]
    };
    let ok = d.post_hook("tok", body.clone(), &bearer("s3cret")).await;
    assert_eq!(ok.status, 202, "{ok:?}");
    assert_eq!(
        d.post_hook("tok", body.clone(), &bearer("wrong"))
            .await
            .status,
        401
    );
    let none = vec![("content-type", "application/json".to_string())];
    assert_eq!(d.post_hook("tok", body.clone(), &none).await.status, 401);

    // Exactly the two accepted runs reach the vendor.
    poll_until(
        "two creates at the fake Slate",
        std::time::Duration::from_secs(30),
        || async {
            match slate.distinct_runs() {
                2 => Ok(()),
                n => Err(format!("{n} runs created")),
            }
        },
    )
    .await;
    assert_eq!(
        d.list_runs("limit=100").await["runs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
