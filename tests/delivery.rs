//! Callback delivery: retries through a failing and an unreachable receiver,
//! Retry-After, and giving up.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn attempts(run: &Value) -> Vec<Value> {
    run["deliveries"][0]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_arrives_after_500s_and_refused_connections_with_a_stable_webhook_id() {
    let slate = FakeSlate::start().await;
    let mut rx = Receiver::start(CALLBACK_SECRET).await;
    rx.set_mode(Mode::Failing).await;
    // Enough attempts (about 9 s) that the test switches modes long before
    // the delivery could give up, even on a slow machine.
    let cfg = Config::new(&slate)
        .schedule(&[
            "0s", "200ms", "400ms", "600ms", "800ms", "1s", "1s", "1s", "1s", "1s", "1s", "1s",
        ])
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let id = d.trigger("gh", "dlv-retry", "acme/retry").await;

    // 1. Receiver answers 500 twice.
    let failed = rx.wait_responses(&id, 500, 2).await;
    let webhook_id = failed[0].webhook_id.clone();
    assert!(!webhook_id.is_empty());

    // 2. Receiver down: the next attempt is refused; the admin API records it
    //    as an attempt with an error and no status code.
    rx.set_mode(Mode::Down).await;
    let refused_seen = d
        .wait_run(&id, "an attempt with a connection error recorded", |run| {
            attempts(run).iter().any(|a| {
                a["status_code"].is_null() && a["error"].as_str().is_some_and(|e| !e.is_empty())
            })
        })
        .await;
    assert_eq!(
        refused_seen["deliveries"][0]["state"], "failing",
        "{refused_seen}"
    );
    assert!(
        !refused_seen["deliveries"][0]["next_attempt_at"].is_null(),
        "a pending delivery has a next attempt: {refused_seen}"
    );

    // 3. Healthy again on the same port: delivered.
    rx.set_mode(Mode::Healthy).await;
    let cb = rx.wait_delivered(&id).await;
    assert_callback_envelope(&cb, &id, "gh", "wf_ok", "dlv-retry");
    assert_eq!(cb.event_type(), "run.succeeded");
    let all = rx.for_run(&id);
    assert!(
        all.iter().all(|r| r.webhook_id == webhook_id),
        "webhook-id must be the same on every attempt: {:?}",
        all.iter()
            .map(|r| (&r.webhook_id, r.responded))
            .collect::<Vec<_>>()
    );
    assert!(
        all.iter().all(|r| r.raw == all[0].raw),
        "every attempt should carry the same event body"
    );
    assert!(rx.invalid().is_empty(), "{:?}", rx.invalid());

    let run = d.wait_done(&id).await;
    let delivery = &run["deliveries"][0];
    assert_eq!(delivery["state"], "delivered", "{run}");
    assert_eq!(
        delivery["webhook_id"],
        serde_json::json!(webhook_id),
        "{run}"
    );
    let att = attempts(&run);
    let n500 = att.iter().filter(|a| a["status_code"] == 500).count();
    let refused = att
        .iter()
        .filter(|a| a["status_code"].is_null() && !a["error"].is_null())
        .count();
    assert!(n500 >= 2, "attempts answered 500 must be recorded: {run}");
    assert!(
        refused >= 1,
        "refused attempts must be recorded with an error: {run}"
    );
    assert_eq!(att.last().unwrap()["status_code"], 200, "{run}");
    assert_eq!(
        att.len(),
        all.len() + refused,
        "every attempt recorded once (receiver saw {} requests): {run}",
        all.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_the_receiver_is_honoured_and_clamped() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    // First attempt: 503 Retry-After 1 s. Second: 429 Retry-After 1 h, which
    // max_retry_after clamps to 2 s. Third: 200.
    rx.script(&[(503, Some("1")), (429, Some("3600"))]);
    let cfg = Config::new(&slate)
        .schedule(&["0s", "50ms", "50ms", "50ms", "50ms"])
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let id = d.trigger("gh", "dlv-ra", "acme/ra").await;

    let cb = rx.wait_delivered(&id).await;
    assert_callback_envelope(&cb, &id, "gh", "wf_ok", "dlv-ra");
    let recs = rx.for_run(&id);
    let codes: Vec<u16> = recs.iter().map(|r| r.responded).collect();
    assert_eq!(codes, vec![503, 429, 200], "{recs:?}");
    let g1 = recs[1].at.duration_since(recs[0].at);
    let g2 = recs[2].at.duration_since(recs[1].at);
    assert!(
        g1 >= Duration::from_millis(900),
        "Retry-After: 1 not honoured: retried after {g1:?}"
    );
    assert!(
        g2 >= Duration::from_millis(1800),
        "Retry-After: 3600 clamped to max_retry_after=2s, retried after {g2:?}"
    );
    assert!(
        g2 < Duration::from_secs(15),
        "Retry-After must be clamped to 2s: {g2:?}"
    );

    let run = d.wait_done(&id).await;
    let att = attempts(&run);
    let recorded: Vec<Value> = att.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(recorded, vec![503, 429, 200], "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_dead_after_the_last_scheduled_attempt_fails() {
    let slate = FakeSlate::start().await;
    let mut rx = Receiver::start(CALLBACK_SECRET).await;
    rx.set_mode(Mode::Failing).await;
    let cfg = Config::new(&slate)
        .schedule(&["0s", "100ms", "100ms"])
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let id = d.trigger("gh", "dlv-dead", "acme/dead").await;

    let run = d
        .wait_run(&id, "delivery dead", |r| {
            r["deliveries"][0]["state"] == "dead"
        })
        .await;
    let att = attempts(&run);
    assert_eq!(att.len(), 3, "one attempt per schedule entry: {run}");
    assert!(att.iter().all(|a| a["status_code"] == 500), "{run}");
    assert!(run["deliveries"][0]["next_attempt_at"].is_null(), "{run}");
    assert_eq!(
        run["status"], "succeeded",
        "the run itself succeeded: {run}"
    );
    let recs = rx.for_run(&id);
    assert_eq!(recs.len(), 3, "receiver saw every attempt");
    assert!(recs.iter().all(|r| r.webhook_id == recs[0].webhook_id));
    let run = d.wait_done(&id).await;
    assert_eq!(run["deliveries"][0]["state"], "dead", "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_stops_retrying_at_once() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    rx.script(&[(410, None)]);
    let cfg = Config::new(&slate)
        .schedule(&["0s", "100ms", "100ms", "100ms"])
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let id = d.trigger("gh", "dlv-gone", "acme/gone").await;

    // README: "410 Gone stops retrying at once".
    let run = d
        .wait_run(&id, "delivery settled", |r| {
            r["deliveries"][0]["state"] != "pending"
                && r["deliveries"][0]["state"] != "failing"
                && r["phase"] == "done"
        })
        .await;
    // 410 disables the callback for the rest of the run: `gone`, not `dead`.
    assert_eq!(run["deliveries"][0]["state"], "gone", "{run}");
    let att = attempts(&run);
    assert_eq!(att.len(), 1, "no retry after 410: {run}");
    assert_eq!(att[0]["status_code"], 410, "{run}");
    assert_eq!(rx.for_run(&id).len(), 1);
}
