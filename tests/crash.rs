//! SIGKILL and restart on the same store: nothing accepted is lost, nothing
//! is started twice at the vendor, every callback is eventually delivered.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_runs_in_every_phase_then_restart_finishes_every_run_exactly_once() {
    let slate = FakeSlate::start().await;
    let mut rx = Receiver::start(CALLBACK_SECRET).await;
    rx.set_mode(Mode::Failing).await;
    // Starts of `wf_ok_delayed` are answered only after a minute (longer
    // than the 2 s provider timeout): they are in flight or retrying when
    // the daemon is killed, and the vendor run already exists.
    slate.set_create_delay("wf_ok_delayed", Duration::from_secs(60));
    // Deliveries stay pending for about 12 s while the receiver fails.
    let cfg = Config::new(&slate)
        .schedule(&[
            "0s", "100ms", "500ms", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s",
            "1s",
        ])
        .route(RouteCfg::new("done", "wf_ok").callback(&rx.url()))
        .route(RouteCfg::new("track", "wf_hold").callback(&rx.url()))
        .route(RouteCfg::new("start", "wf_ok_delayed").callback(&rx.url()));
    let mut d = Daemon::start(&cfg).await;

    let mut triggers: Vec<(String, String, String)> = Vec::new(); // (route, delivery, run id)
    for i in 0..4 {
        for route in ["done", "track", "start"] {
            let delivery = format!("dlv-{route}-{i}");
            let id = d
                .trigger(route, &delivery, &format!("acme/{route}-{i}"))
                .await;
            triggers.push((route.to_string(), delivery, id));
        }
    }
    assert_eq!(triggers.len(), 12);
    let ids_of = |route: &str| -> Vec<String> {
        triggers
            .iter()
            .filter(|t| t.0 == route)
            .map(|t| t.2.clone())
            .collect()
    };

    // Wait until the runs are spread over every phase.
    for id in ids_of("done") {
        rx.wait_responses(&id, 500, 1).await;
        d.wait_run(&id, "terminal with a pending delivery", |r| {
            r["status"] == "succeeded"
                && r["phase"] == "terminal"
                && (r["deliveries"][0]["state"] == "pending"
                    || r["deliveries"][0]["state"] == "failing")
        })
        .await;
    }
    for id in ids_of("track") {
        d.wait_run(&id, "tracking", |r| {
            r["phase"] == "tracking" && r["status"] == "running"
        })
        .await;
    }
    let dslate = &slate;
    poll_until(
        "the 4 delayed starts to reach fake Slate",
        DEADLINE,
        || async move {
            let n = dslate
                .create_calls()
                .iter()
                .filter(|c| c.workflow_id == "wf_ok_delayed")
                .filter_map(|c| c.idempotency_key.clone())
                .collect::<HashSet<_>>()
                .len();
            if n == 4 {
                Ok(())
            } else {
                Err(format!("{n} distinct keys"))
            }
        },
    )
    .await;
    for id in ids_of("start") {
        // The start is in flight or waiting to be retried: no vendor run id yet.
        d.wait_run(&id, "start not yet answered", |r| {
            (r["phase"] == "starting" || r["phase"] == "accepted") && r["vendor_run_id"].is_null()
        })
        .await;
    }
    let before = slate.calls_per_key();

    d.kill_9().await;

    // The world heals while the daemon is down.
    slate.clear_create_delay("wf_ok_delayed");
    slate.release_holds();
    rx.set_mode(Mode::Healthy).await;

    d.restart().await;

    for (route, delivery, id) in &triggers {
        let wf = match route.as_str() {
            "done" => "wf_ok",
            "track" => "wf_hold",
            _ => "wf_ok_delayed",
        };
        let cb = rx.wait_delivered(id).await;
        assert_callback_envelope(&cb, id, route, wf, delivery);
        assert_eq!(cb.event_type(), "run.succeeded", "{}", cb.raw);
        assert_eq!(cb.data()["raw_status"], "COMPLETED", "{}", cb.raw);
        let all = rx.for_run(id);
        assert!(
            all.iter().all(|r| r.webhook_id == cb.webhook_id),
            "webhook-id must survive the crash for run {id}: {:?}",
            all.iter()
                .map(|r| (&r.webhook_id, r.responded))
                .collect::<Vec<_>>()
        );
        let run = d.wait_done(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["deliveries"][0]["state"], "delivered", "{run}");
        assert_eq!(
            run["deliveries"][0]["webhook_id"],
            serde_json::json!(cb.webhook_id),
            "{run}"
        );
        assert_eq!(run["vendor_run_id"], cb.data()["vendor_run_id"], "{run}");
    }
    assert!(rx.invalid().is_empty(), "{:?}", rx.invalid());
    assert!(
        slate.unexpected_requests().is_empty(),
        "{:?}",
        slate.unexpected_requests()
    );

    // Exactly one vendor run per trigger, each with its own key.
    assert_eq!(
        slate.distinct_runs(),
        triggers.len(),
        "fake Slate must see exactly one run per trigger; create calls: {:#?}",
        slate.create_calls()
    );
    let per_key = slate.runs_per_key();
    assert!(
        !per_key.contains_key(""),
        "a create without Idempotency-Key: {per_key:?}"
    );
    assert_eq!(per_key.len(), triggers.len(), "{per_key:?}");
    assert!(per_key.values().all(|n| *n == 1), "{per_key:?}");
    let vendor_ids: HashSet<String> = triggers
        .iter()
        .map(|t| {
            rx.for_run(&t.2)[0].data()["vendor_run_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        vendor_ids.len(),
        triggers.len(),
        "each trigger has its own vendor run"
    );

    // The interrupted starts were re-sent after the restart with the same key.
    let after = slate.calls_per_key();
    for c in slate
        .create_calls()
        .iter()
        .filter(|c| c.workflow_id == "wf_ok_delayed")
    {
        let key = c.idempotency_key.clone().unwrap();
        assert!(
            after[&key] > before.get(&key).copied().unwrap_or(0),
            "start with key {key} was not re-sent after the restart"
        );
    }

    // The store kept everything: 12 runs, and dedupe still answers 200.
    assert_eq!(d.run_count().await, triggers.len());
    let (route, delivery, id) = &triggers[0];
    let again = d
        .post_github(route, delivery, &gh_payload("acme/again"))
        .await;
    assert_eq!(again.status, 200, "dedupe must survive a crash: {again:?}");
    assert_eq!(again.run_id(), *id);
    assert_eq!(slate.distinct_runs(), triggers.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_trigger_survives_an_immediate_sigkill() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let mut d = Daemon::start(&cfg).await;

    // Ten concurrent triggers; SIGKILL the moment the last 202 arrives.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let client = d.http.clone();
        let url = d.url("/hooks/gh");
        tasks.push(tokio::spawn(async move {
            let delivery = format!("dlv-fast-{i}");
            let body = serde_json::to_vec(&gh_payload(&format!("acme/fast-{i}"))).unwrap();
            let mut req = client.post(url).body(body.clone());
            for (k, v) in Daemon::github_headers(&delivery, &body) {
                req = req.header(k, v);
            }
            let resp = to_hook_resp(req.send().await.expect("POST")).await;
            (delivery, resp)
        }));
    }
    let mut accepted: HashMap<String, String> = HashMap::new();
    for t in tasks {
        let (delivery, resp) = t.await.unwrap();
        assert_eq!(resp.status, 202, "{resp:?}");
        accepted.insert(resp.run_id(), delivery);
    }
    d.kill_9().await;
    d.restart().await;

    for (id, delivery) in &accepted {
        let cb = rx.wait_delivered(id).await;
        assert_callback_envelope(&cb, id, "gh", "wf_ok", delivery);
        let run: Value = d.wait_done(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    assert_eq!(d.run_count().await, 10);
    assert_eq!(slate.distinct_runs(), 10, "{:#?}", slate.create_calls());
    assert!(slate.runs_per_key().values().all(|n| *n == 1));
}
