//! The OpenAPI document: the daemon serves it without a token, it matches
//! the committed `docs/openapi.json`, and every real answer of every admin
//! endpoint (2xx and errors) validates against the schema the document
//! gives for that path, method and status, so the document cannot drift
//! from the API.
//!
//! Regenerate the committed copy after an API change with
//! `UPDATE_OPENAPI=1 cargo nextest run -E 'binary(openapi)'`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

struct Checker {
    doc: Value,
    checked: BTreeSet<(String, String, u16)>,
}

impl Checker {
    /// Validates `body` against the document's schema for this operation
    /// and status (which must be documented).
    fn check(&mut self, method: &str, path: &str, status: u16, body: &Value) {
        let op = &self.doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{method} {path} answered {status}, which the document does not list: {body}"
        );
        let schema = &resp["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {status} has no JSON schema"
        );
        if (200..300).contains(&status) {
            assert_ne!(
                schema,
                &json!({}),
                "{method} {path} {status}: a bare {{}} schema"
            );
        }
        // The response schema as the root, with the document's components
        // beside it so `#/components/schemas/...` resolves.
        let mut root = schema.clone();
        if let Some(obj) = root.as_object_mut() {
            obj.insert("components".into(), self.doc["components"].clone());
        }
        let validator = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: bad schema: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: the answer does not match the document:\n{}\n{body}",
            errors.join("\n")
        );
        self.checked
            .insert((method.to_string(), path.to_string(), status));
    }
}

async fn call(d: &Daemon, method: &str, path: &str, token: &str) -> (u16, Value) {
    let req = match method {
        "get" => d.http.get(d.url(path)),
        _ => d.http.post(d.url(path)),
    };
    let resp = req
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_committed_and_every_answer_matches_it() {
    let slate = FakeSlate::start().await;
    let mut rx = Receiver::start(CALLBACK_SECRET).await;
    let mut cfg = Config::new(&slate)
        .schedule(&["0s", "50ms"])
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()))
        .route(RouteCfg::new("slow", "wf_slow"));
    // Slate cancels only while QUEUED: slow polls keep the run there.
    cfg.poll_interval = "1s".into();
    let d = Daemon::start(&cfg).await;

    // Served without a token, identical to the committed copy.
    let resp = d.http.get(d.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let served = resp.text().await.unwrap();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &served).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json differs from what the daemon serves; regenerate it with \
         `UPDATE_OPENAPI=1 cargo nextest run -E 'binary(openapi)'` and commit it"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    let mut c = Checker {
        doc,
        checked: BTreeSet::new(),
    };

    // A run that is canceled while queued, and one whose callback dies.
    let slow = d.trigger("slow", "oa-2", "acme/slow").await;
    d.wait_run(&slow, "tracking", |r| r["phase"] == "tracking")
        .await;
    let (status, body) = call(&d, "post", &format!("/runs/{slow}/cancel"), ADMIN_TOKEN).await;
    c.check("post", "/runs/{id}/cancel", status, &body);
    rx.set_mode(Mode::Failing).await;
    let id = d.trigger("gh", "oa-1", "acme/oa").await;
    d.wait_run(&id, "delivery dead", |r| {
        r["deliveries"][0]["state"] == "dead"
    })
    .await;
    rx.set_mode(Mode::Healthy).await;
    let body = serde_json::to_vec(&gh_payload("acme/x")).unwrap();
    let unsigned = [("Content-Type", "application/json".to_string())];
    assert_eq!(d.post_hook("gh", body, &unsigned).await.status, 401);

    let (_, eps) = call(&d, "get", "/endpoints", ADMIN_TOKEN).await;
    let ep = eps[0]["id"].as_str().expect("an endpoint").to_string();
    let missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    // (method, template, concrete path)
    let calls: Vec<(&str, &str, String)> = vec![
        ("get", "/runs", "/runs?route=gh&limit=1".into()),
        ("get", "/runs", "/runs?status=nope".into()),
        ("get", "/runs/{id}", format!("/runs/{id}")),
        ("get", "/runs/{id}", format!("/runs/{missing}")),
        ("get", "/deliveries", "/deliveries?state=dead".into()),
        ("get", "/deliveries", "/deliveries?state=nope".into()),
        (
            "post",
            "/runs/{id}/deliveries/{index}/redeliver",
            format!("/runs/{id}/deliveries/0/redeliver"),
        ),
        (
            "post",
            "/runs/{id}/deliveries/{index}/redeliver",
            format!("/runs/{id}/deliveries/9/redeliver"),
        ),
        ("post", "/runs/{id}/replay", format!("/runs/{id}/replay")),
        (
            "post",
            "/runs/{id}/replay",
            format!("/runs/{missing}/replay"),
        ),
        ("post", "/runs/{id}/cancel", format!("/runs/{id}/cancel")),
        ("post", "/runs/{id}/cancel", format!("/runs/{slow}/cancel")),
        (
            "post",
            "/routes/{route}/recover",
            "/routes/gh/recover?since=1h".into(),
        ),
        (
            "post",
            "/routes/{route}/recover",
            "/routes/nope/recover?since=1h".into(),
        ),
        (
            "post",
            "/routes/{route}/recover",
            "/routes/gh/recover?since=soon".into(),
        ),
        ("get", "/recoveries/{id}", "/recoveries/nope".into()),
        ("get", "/endpoints", "/endpoints".into()),
        (
            "post",
            "/endpoints/{id}/pause",
            format!("/endpoints/{ep}/pause"),
        ),
        (
            "post",
            "/endpoints/{id}/resume",
            format!("/endpoints/{ep}/resume"),
        ),
        (
            "post",
            "/endpoints/{id}/test",
            format!("/endpoints/{ep}/test"),
        ),
        (
            "post",
            "/endpoints/{id}/test",
            "/endpoints/nope/test".into(),
        ),
        ("get", "/requests", "/requests?outcome=rejected".into()),
        ("get", "/requests", "/requests?outcome=nope".into()),
        ("get", "/routes", "/routes".into()),
        ("get", "/providers", "/providers".into()),
        ("post", "/reload", "/reload".into()),
    ];
    for (method, template, path) in &calls {
        let (status, body) = call(&d, method, path, ADMIN_TOKEN).await;
        c.check(method, template, status, &body);
    }
    // A recovery's progress, and the token errors.
    let (_, rec) = call(&d, "post", "/routes/gh/recover?since=1h", ADMIN_TOKEN).await;
    let rec_path = format!("/recoveries/{}", rec["id"].as_str().unwrap());
    let (status, body) = call(&d, "get", &rec_path, ADMIN_TOKEN).await;
    c.check("get", "/recoveries/{id}", status, &body);
    let (status, body) = call(&d, "get", "/runs", "wrong").await;
    c.check("get", "/runs", status, &body);

    // Every documented operation was exercised with a 2xx answer.
    for (path, ops) in c.doc["paths"].as_object().unwrap().clone() {
        for method in ops.as_object().unwrap().keys() {
            let ok = c
                .checked
                .iter()
                .any(|(m, p, s)| m == method && p == &path && (200..300).contains(s));
            assert!(ok, "{method} {path} was not exercised with a 2xx answer");
        }
    }
}
