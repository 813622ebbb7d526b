//! The whole loop against the fake Slate: webhook in, run started and
//! tracked, signed callback out, and what the admin API shows afterwards.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Statuses in a run's history, in order.
fn history_statuses(run: &Value) -> Vec<(String, String)> {
    run["history"]
        .as_array()
        .unwrap_or_else(|| panic!("run has no history array: {run}"))
        .iter()
        .map(|h| {
            assert!(
                is_rfc3339(&h["at"]),
                "history entry without RFC 3339 `at`: {h}"
            );
            (
                h["status"].as_str().unwrap_or_default().to_string(),
                h["raw_status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Checks the admin view of a finished run whose single callback was `cb`.
fn assert_done_run(run: &Value, cb: &CallbackRecord, rx_url: &str, status: &str, raw_status: &str) {
    assert_eq!(run["phase"], "done", "{run}");
    assert_eq!(run["status"], status, "{run}");
    assert_eq!(run["raw_status"], raw_status, "{run}");
    assert_eq!(run["vendor_run_id"], cb.data()["vendor_run_id"], "{run}");
    for key in ["created_at", "updated_at", "finished_at"] {
        assert!(is_rfc3339(&run[key]), "run.{key} should be RFC 3339: {run}");
    }
    let history = history_statuses(run);
    let last = history
        .last()
        .unwrap_or_else(|| panic!("empty history: {run}"));
    assert_eq!(
        last.0, status,
        "history must end with the terminal status: {run}"
    );
    if status != "timed_out" {
        assert_eq!(
            last.1, raw_status,
            "history must keep the vendor status: {run}"
        );
    }
    let ats: Vec<&str> = run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["at"].as_str().unwrap())
        .collect();
    assert!(
        ats.windows(2).all(|w| w[0] <= w[1]),
        "history out of order: {run}"
    );

    let deliveries = run["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("no deliveries array: {run}"));
    assert_eq!(deliveries.len(), 1, "one callback configured: {run}");
    let d = &deliveries[0];
    assert_eq!(d["url"], rx_url, "{run}");
    assert_eq!(d["state"], "delivered", "{run}");
    assert_eq!(
        d["webhook_id"],
        json!(cb.webhook_id),
        "webhook_id must be the one sent: {run}"
    );
    assert!(
        d["next_attempt_at"].is_null(),
        "no next attempt after success: {run}"
    );
    let attempts = d["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts: {run}"));
    let last = attempts
        .last()
        .unwrap_or_else(|| panic!("no attempts recorded: {run}"));
    assert_eq!(last["status_code"], 200, "{run}");
    assert!(
        last["duration_ms"].is_number(),
        "attempt duration_ms: {run}"
    );
    assert!(is_rfc3339(&last["at"]), "attempt at: {run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_terminal_status_reaches_a_signed_callback_and_the_admin_api() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate)
        .route(RouteCfg::new("ok", "wf_ok").callback(&rx.url()))
        .route(RouteCfg::new("fail", "wf_fail").callback(&rx.url()))
        .route(RouteCfg::new("cancel", "wf_cancel").callback(&rx.url()))
        .route(
            RouteCfg::new("slow", "wf_slow")
                .callback(&rx.url())
                .run_timeout("1s"),
        );
    let d = Daemon::start(&cfg).await;

    let cases = [
        ("ok", "wf_ok", "succeeded", "COMPLETED"),
        ("fail", "wf_fail", "failed", "FAILED"),
        ("cancel", "wf_cancel", "canceled", "CANCELED"),
        ("slow", "wf_slow", "timed_out", "RUNNING"),
    ];
    let mut ids = HashMap::new();
    for (route, ..) in cases {
        let id = d
            .trigger(route, &format!("dlv-{route}"), &format!("acme/{route}"))
            .await;
        ids.insert(route, id);
    }

    for (route, wf, status, raw) in cases {
        let id = &ids[route];
        let cb = rx.wait_delivered(id).await;
        assert_callback_envelope(&cb, id, route, wf, &format!("dlv-{route}"));
        let data = cb.data();
        assert_eq!(cb.event_type(), format!("run.{status}"), "{}", cb.raw);
        assert_eq!(data["status"], status, "{}", cb.raw);
        if status != "timed_out" {
            assert_eq!(data["raw_status"], raw, "{}", cb.raw);
        }

        let vendor_id = data["vendor_run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("vendor_run_id missing: {}", cb.raw));
        let vendor = slate
            .run(vendor_id)
            .unwrap_or_else(|| panic!("fake Slate has no run {vendor_id}"));
        assert_eq!(vendor.workflow_id, wf);
        assert_eq!(
            vendor.inputs,
            json!({ "repo": format!("acme/{route}"), "event": "push", "source": "tests" }),
            "inputs sent to Slate"
        );
        match status {
            "succeeded" => {
                assert_eq!(
                    data["output"],
                    json!({ "share_url": vendor.share_url() }),
                    "{}",
                    cb.raw
                );
                assert!(data["error"].is_null(), "{}", cb.raw);
            }
            "failed" => {
                assert!(
                    mentions(&data["error"], "WORKFLOW_FAILED")
                        && mentions(&data["error"], "workflow failed"),
                    "failed callback must carry the vendor error: {}",
                    cb.raw
                );
                assert!(data["output"].is_null(), "{}", cb.raw);
            }
            "canceled" => assert!(data["output"].is_null(), "{}", cb.raw),
            _ => {}
        }

        let run = d.wait_done(id).await;
        assert_eq!(run["id"], json!(id), "{run}");
        assert_eq!(run["route"], route, "{run}");
        assert_eq!(run["provider"], "slate", "{run}");
        assert_eq!(run["workflow_id"], wf, "{run}");
        assert_eq!(run["delivery_id"], format!("dlv-{route}"), "{run}");
        assert_eq!(
            run["inputs"],
            json!({ "repo": format!("acme/{route}"), "event": "push", "source": "tests" }),
            "{run}"
        );
        if status == "succeeded" {
            assert_eq!(run["output"], data["output"], "{run}");
        }
        let raw_expected = if status == "timed_out" {
            run["raw_status"].as_str().unwrap_or_default().to_string()
        } else {
            raw.to_string()
        };
        assert_done_run(&run, &cb, &rx.url(), status, &raw_expected);
        if route == "ok" {
            let h = history_statuses(&run);
            assert!(
                h.iter().any(|(s, r)| s == "running" && r == "RUNNING"),
                "history should show the RUNNING poll: {run}"
            );
        }
    }

    // Every create call was authenticated, JSON and carried an Idempotency-Key.
    let calls = slate.create_calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    for c in &calls {
        assert!(c.authorized, "create without the bearer token: {c:?}");
        assert!(
            c.content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("application/json")),
            "create without Content-Type: application/json: {c:?}"
        );
        assert!(
            c.idempotency_key.as_deref().is_some_and(|k| !k.is_empty()),
            "create without Idempotency-Key: {c:?}"
        );
        assert_eq!(c.status, 202, "{c:?}");
    }
    assert_eq!(slate.distinct_runs(), 4);
    assert!(
        slate.unexpected_requests().is_empty(),
        "{:?}",
        slate.unexpected_requests()
    );
    assert!(
        rx.invalid().is_empty(),
        "badly signed callbacks: {:?}",
        rx.invalid()
    );

    // Listing: newest first, filters, limit.
    let all = d.list_runs("limit=100").await;
    let runs = all["runs"].as_array().unwrap_or_else(|| panic!("{all}"));
    assert_eq!(runs.len(), 4, "{all}");
    let listed: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = ["slow", "cancel", "fail", "ok"]
        .iter()
        .map(|r| ids[r].as_str())
        .collect();
    assert_eq!(listed, expected, "GET /runs must list newest first");
    assert!(all["next_cursor"].is_null(), "{all}");

    let by_route = d.list_runs("route=fail&limit=100").await;
    let v = by_route["runs"].as_array().unwrap();
    assert_eq!(v.len(), 1, "{by_route}");
    assert_eq!(v[0]["id"], json!(ids["fail"]));

    let by_status = d.list_runs("status=succeeded&limit=100").await;
    let v = by_status["runs"].as_array().unwrap();
    assert_eq!(v.len(), 1, "{by_status}");
    assert_eq!(v[0]["id"], json!(ids["ok"]));

    let both = d.list_runs("route=ok&status=failed&limit=100").await;
    assert_eq!(both["runs"].as_array().unwrap().len(), 0, "{both}");

    let page = d.list_runs("limit=2").await;
    let v = page["runs"].as_array().unwrap();
    assert_eq!(v.len(), 2, "{page}");
    assert_eq!(v[0]["id"], json!(ids["slow"]), "{page}");
    assert!(
        !page["next_cursor"].is_null(),
        "a partial page must carry a cursor: {page}"
    );
    // The cursor goes back as `cursor=` (README, HTTP API).
    let cursor = match &page["next_cursor"] {
        Value::String(c) => c.clone(),
        other => other.to_string(),
    };
    let page2 = d
        .list_runs(&format!("limit=2&cursor={}", urlencode(&cursor)))
        .await;
    let v: Vec<&str> = page2["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("{page2}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        v,
        vec![ids["fail"].as_str(), ids["ok"].as_str()],
        "second page: {page2}"
    );
    let page3_empty = page2["next_cursor"].is_null() || {
        let c = match &page2["next_cursor"] {
            Value::String(c) => c.clone(),
            other => other.to_string(),
        };
        let p3 = d
            .list_runs(&format!("limit=2&cursor={}", urlencode(&c)))
            .await;
        p3["runs"].as_array().is_some_and(|r| r.is_empty()) && p3["next_cursor"].is_null()
    };
    assert!(page3_empty, "nothing after the last page: {page2}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slate_429_and_503_on_start_are_retried_honouring_retry_after() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("limited", "wf_429").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;

    let id = d.trigger("limited", "dlv-429", "acme/limited").await;
    let cb = rx.wait_delivered(&id).await;
    assert_callback_envelope(&cb, &id, "limited", "wf_429", "dlv-429");
    assert_eq!(cb.event_type(), "run.succeeded", "{}", cb.raw);
    assert_eq!(cb.data()["raw_status"], "COMPLETED", "{}", cb.raw);

    let calls = slate.create_calls();
    let codes: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(codes, vec![429, 503, 202], "create attempts: {calls:?}");
    let key = calls[0].idempotency_key.clone();
    assert!(key.is_some(), "{calls:?}");
    assert!(
        calls.iter().all(|c| c.idempotency_key == key),
        "every retry must carry the same Idempotency-Key: {calls:?}"
    );
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 must be honoured (retry_base is 50ms), retried after {gap:?}"
    );
    assert_eq!(slate.distinct_runs(), 1);

    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["deliveries"][0]["state"], "delivered", "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slate_400_on_start_fails_the_run_with_the_vendor_error() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("bad", "wf_bad").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;

    let id = d.trigger("bad", "dlv-bad", "acme/bad").await;
    let cb = rx.wait_delivered(&id).await;
    assert_callback_envelope(&cb, &id, "bad", "wf_bad", "dlv-bad");
    assert_eq!(cb.event_type(), "run.failed", "{}", cb.raw);
    assert_eq!(cb.data()["status"], "failed", "{}", cb.raw);
    assert!(
        mentions(&cb.data()["error"], "inputs must be an object"),
        "the callback must carry Slate's error: {}",
        cb.raw
    );
    assert!(
        cb.data()["vendor_run_id"].is_null(),
        "no vendor run exists: {}",
        cb.raw
    );
    assert!(cb.data()["output"].is_null(), "{}", cb.raw);

    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(mentions(&run["error"], "inputs must be an object"), "{run}");
    assert_eq!(run["deliveries"][0]["state"], "delivered", "{run}");
    // A non-429 4xx is final: not retried.
    assert_eq!(slate.create_count(), 1, "{:?}", slate.create_calls());
    assert_eq!(slate.distinct_runs(), 0);
}
