//! Route recovery after a receiver outage: everything that died is
//! delivered once the receiver is back, and nothing delivered is resent.

mod common;

use common::*;
use serde_json::Value;

async fn post(d: &Daemon, path: &str) -> (u16, Value) {
    let resp = d
        .http
        .post(d.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_an_outage_delivers_everything_that_died() {
    let slate = FakeSlate::start().await;
    let mut rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate)
        .schedule(&["0s", "50ms"])
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    // No breaker: the outage kills every delivery quickly.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = cfg.render(dir.path()).replace(
        &format!("secret = {}\n", toml_str(CALLBACK_SECRET)),
        &format!(
            "secret = {}\nbreaker_failures = 0\n",
            toml_str(CALLBACK_SECRET)
        ),
    );
    let d = Daemon::start_with_text(dir, &text).await;

    // Before the outage: delivered, and must not be sent again.
    let early = d.trigger("gh", "early", "acme/early").await;
    rx.wait_delivered(&early).await;
    d.wait_done(&early).await;

    rx.set_mode(Mode::Down).await;
    let mut died = Vec::new();
    for i in 0..4 {
        died.push(d.trigger("gh", &format!("outage-{i}"), "acme/outage").await);
    }
    for id in &died {
        d.wait_run(id, "delivery dead", |r| {
            r["deliveries"][0]["state"] == "dead"
        })
        .await;
    }
    let (_, dead) = d.admin_get("/deliveries?state=dead&route=gh").await;
    assert_eq!(dead["deliveries"].as_array().unwrap().len(), 4, "{dead}");

    rx.set_mode(Mode::Healthy).await;
    let (status, rec) = post(&d, "/routes/gh/recover?since=1h").await;
    assert_eq!(status, 202, "{rec}");
    assert_eq!(rec["state"], "running");
    let id = rec["id"].as_str().unwrap().to_string();
    let done = poll_until("the recovery to finish", DEADLINE, || {
        let d = &d;
        let id = id.clone();
        async move {
            let (status, r) = d.admin_get(&format!("/recoveries/{id}")).await;
            if status == 200 && r["state"] == "done" {
                Ok(r)
            } else {
                Err(format!("{status} {r}"))
            }
        }
    })
    .await;
    assert_eq!(
        (
            done["matched"].as_u64(),
            done["requeued"].as_u64(),
            done["delivered"].as_u64(),
            done["still_failing"].as_u64()
        ),
        (Some(4), Some(4), Some(4), Some(0)),
        "{done}"
    );
    for run in &died {
        let cb = rx.wait_delivered(run).await;
        let stored = d.wait_done(run).await;
        assert_eq!(stored["deliveries"][0]["state"], "delivered");
        assert_eq!(
            cb.webhook_id,
            stored["deliveries"][0]["webhook_id"].as_str().unwrap()
        );
    }
    assert_eq!(
        rx.for_run(&early).len(),
        1,
        "a delivered callback is not resent"
    );
    let (_, dead) = d.admin_get("/deliveries?state=dead").await;
    assert!(dead["deliveries"].as_array().unwrap().is_empty(), "{dead}");

    // Bad asks change nothing.
    let (status, body) = post(&d, "/routes/gh/recover?since=yesterday").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, body) = post(&d, "/routes/gh/recover").await;
    assert_eq!(status, 400, "since is required: {body}");
    let (status, body) = post(&d, "/routes/nope/recover?since=1h").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("route_not_found"))
    );
    let (status, body) = d.admin_get("/recoveries/nope").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("recovery_not_found"))
    );
}
