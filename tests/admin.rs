//! The admin API: filters and pagination, roles, idempotency, redelivery,
//! replay, pause/resume, endpoint tests, the inbound request log, the live
//! config and the dead-delivery alert, against the real binary.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

const READ_TOKEN: &str = "read-only-token-1";
const ALERT_SECRET: &str = "whsec_QWxlcnRTZWNyZXRLZXlGb3JUZXN0czEyMzQ1Ng==";

/// A config with a read token (and optionally an alert URL) added.
fn with_admin(cfg: &Config, dir: &std::path::Path, alert_url: Option<&str>) -> String {
    let mut text = cfg.render(dir);
    text.push_str("\n[admin]\n");
    if let Some(u) = alert_url {
        text.push_str(&format!(
            "alert_url = {}\nalert_secret = {}\n",
            toml_str(u),
            toml_str(ALERT_SECRET)
        ));
    }
    text.push_str(&format!(
        "\n[[admin.tokens]]\ntoken = {}\nrole = \"read\"\n",
        toml_str(READ_TOKEN)
    ));
    text
}

async fn start(cfg: &Config, alert_url: Option<&str>) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = with_admin(cfg, dir.path(), alert_url);
    Daemon::start_with_text(dir, &text).await
}

/// `POST path` with a token and an optional `Idempotency-Key`.
async fn post(d: &Daemon, path: &str, token: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = d.http.post(d.url(path)).bearer_auth(token);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get_as(d: &Daemon, path: &str, auth: &str) -> (u16, Value) {
    let resp = d
        .http
        .get(d.url(path))
        .header("Authorization", auth)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn ids(page: &Value) -> Vec<String> {
    page["runs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_pages_miss_nothing_under_concurrent_inserts() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate)
        .route(RouteCfg::new("a", "wf_ok"))
        .route(RouteCfg::new("b", "wf_fail"));
    let d = start(&cfg, None).await;
    let mut before = Vec::new();
    for i in 0..12 {
        before.push(d.trigger("a", &format!("a-{i}"), "acme/a").await);
    }
    let b = d.trigger("b", "b-0", "acme/b").await;
    d.wait_run(&b, "failed", |r| r["status"] == "failed").await;

    // Filters: route, status, provider, phase, delivery id, time range.
    let page = d.list_runs("route=b").await;
    assert_eq!(ids(&page), vec![b.clone()], "{page}");
    assert_eq!(ids(&d.list_runs("status=failed").await), vec![b.clone()]);
    assert_eq!(ids(&d.list_runs("delivery_id=b-0").await), vec![b.clone()]);
    assert_eq!(
        ids(&d.list_runs("route=a&delivery_id=b-0").await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&d.list_runs("provider=slate&limit=100").await).len(),
        13
    );
    assert_eq!(ids(&d.list_runs("since=1h&limit=100").await).len(), 13);
    assert!(ids(&d.list_runs("until=1h").await).is_empty());
    let (status, body) = d.admin_get("/runs?status=nope").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, body) = d.admin_get("/runs?phase=nope").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = d.admin_get("/runs?colour=red").await;
    assert_eq!(status, 400, "unknown filters are refused");
    let summary = &d.list_runs("route=b").await["runs"][0];
    assert_eq!(summary["provider"], "slate");
    assert!(summary["delivery_counts"].is_object(), "{summary}");

    // Pages of 5 while new runs arrive: every run that existed before the
    // first page is seen exactly once, newest first.
    let d = std::sync::Arc::new(d);
    let writer = {
        let d = d.clone();
        tokio::spawn(async move {
            for i in 0..10 {
                d.trigger("a", &format!("late-{i}"), "acme/late").await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("route=a&limit=5&cursor={c}"),
            None => "route=a&limit=5".to_string(),
        };
        let page = d.list_runs(&q).await;
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    writer.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a run was repeated: {seen:?}");
    for id in &before {
        assert!(seen.contains(id), "run {id} was missed: {seen:?}");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(sorted, seen, "newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_tokens_read_and_are_refused_on_every_post() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = start(&cfg, None).await;
    let id = d.trigger("gh", "ro-1", "acme/ro").await;
    d.wait_done(&id).await;

    for auth in [
        format!("Bearer {READ_TOKEN}"),
        format!("bearer {READ_TOKEN}"),
        format!("BEARER   {READ_TOKEN}"),
    ] {
        let (status, body) = get_as(&d, &format!("/runs/{id}"), &auth).await;
        assert_eq!(status, 200, "{auth}: {body}");
    }
    let (status, body) = get_as(&d, "/runs", "Bearer wrong-token").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = get_as(&d, "/runs", "Basic abc").await;
    assert_eq!(status, 401);

    let (_, eps) = get_as(&d, "/endpoints", &format!("Bearer {READ_TOKEN}")).await;
    let ep = eps[0]["id"].as_str().expect("endpoint id").to_string();
    for path in [
        format!("/runs/{id}/cancel"),
        format!("/runs/{id}/replay"),
        format!("/runs/{id}/deliveries/0/redeliver"),
        "/routes/gh/recover?since=1h".to_string(),
        format!("/endpoints/{ep}/pause"),
        format!("/endpoints/{ep}/resume"),
        format!("/endpoints/{ep}/test"),
        "/reload".to_string(),
    ] {
        let (status, body) = post(&d, &path, READ_TOKEN, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden")),
            "{path}: {body}"
        );
    }
    assert_eq!(rx.for_run(&id).len(), 1, "nothing was redelivered");
    assert_eq!(d.run_count().await, 1, "nothing was replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_is_alerted_listed_and_redelivered_with_the_same_webhook_id() {
    let slate = FakeSlate::start().await;
    let mut rx = Receiver::start(CALLBACK_SECRET).await;
    let alerts = Receiver::start(ALERT_SECRET).await;
    rx.set_mode(Mode::Failing).await;
    let cfg = Config::new(&slate)
        .schedule(&["0s", "50ms"])
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = start(&cfg, Some(&alerts.url())).await;
    let id = d.trigger("gh", "dead-1", "acme/dead").await;
    let run = d
        .wait_run(&id, "delivery dead", |r| {
            r["deliveries"][0]["state"] == "dead"
        })
        .await;
    assert_eq!(run["phase"], "done", "{run}");
    let webhook_id = run["deliveries"][0]["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Never silent: an alert, signed, naming the run and the route.
    let alert = alerts
        .wait_until("a delivery.dead alert", |recs| recs.first().cloned())
        .await;
    assert!(alert.signature_valid, "{alert:?}");
    assert_eq!(alert.event_type(), "delivery.dead");
    assert_eq!(alert.data()["run_id"], id.as_str());
    assert_eq!(alert.data()["route"], "gh");
    assert_eq!(alert.data()["attempts"], 2);

    // Listed among what needs attention.
    let (status, page) = d.admin_get("/deliveries?state=dead").await;
    assert_eq!(status, 200, "{page}");
    let item = &page["deliveries"][0];
    assert_eq!(item["run_id"], id.as_str(), "{page}");
    assert_eq!(
        (item["index"].as_u64(), item["attempts"].as_u64()),
        (Some(0), Some(2))
    );
    let (_, failing) = d.admin_get("/deliveries?state=failing").await;
    assert!(
        failing["deliveries"].as_array().unwrap().is_empty(),
        "{failing}"
    );
    let (status, _) = d.admin_get("/deliveries?state=exploded").await;
    assert_eq!(status, 400);

    // Redelivered: arrives with the same webhook-id, and the run is done again.
    rx.set_mode(Mode::Healthy).await;
    let (status, view) = post(
        &d,
        &format!("/runs/{id}/deliveries/0/redeliver"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 202, "{view}");
    assert_eq!(view["webhook_id"], webhook_id.as_str());
    assert_eq!(view["state"], "pending");
    let cb = rx.wait_delivered(&id).await;
    assert_eq!(cb.webhook_id, webhook_id);
    let run = d.wait_done(&id).await;
    assert_eq!(run["deliveries"][0]["state"], "delivered", "{run}");
    assert_eq!(
        run["deliveries"][0]["attempts"].as_array().unwrap().len(),
        3
    );

    // A delivered one can be sent again too; a missing index is a 404.
    let (status, _) = post(
        &d,
        &format!("/runs/{id}/deliveries/0/redeliver"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 202);
    rx.wait_responses(&id, 200, 2).await;
    let (status, body) = post(
        &d,
        &format!("/runs/{id}/deliveries/7/redeliver"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("delivery_not_found")),
        "{body}"
    );
    let (status, body) = post(
        &d,
        "/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/deliveries/0/redeliver",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("run_not_found")),
        "{body}"
    );
    let metrics = d
        .http
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("runbridge_deliveries_dead_total{route=\"gh\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_starts_a_linked_run_once_per_idempotency_key() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_fail"));
    let d = start(&cfg, None).await;
    let id = d.trigger("gh", "rp-1", "acme/replay").await;
    d.wait_run(&id, "failed", |r| r["status"] == "failed").await;

    let path = format!("/runs/{id}/replay");
    let (s1, first) = post(&d, &path, ADMIN_TOKEN, Some("k-1")).await;
    let (s2, again) = post(&d, &path, ADMIN_TOKEN, Some("k-1")).await;
    assert_eq!((s1, s2), (201, 201), "{first} {again}");
    assert_eq!(first, again, "the repeat gets the first answer");
    let new_id = first["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);
    assert_eq!(first["replay_of"], id.as_str());
    assert_eq!(d.run_count().await, 2, "one replay, not two");

    let replayed = d
        .wait_run(&new_id, "failed", |r| r["status"] == "failed")
        .await;
    assert_eq!(replayed["inputs"], d.get_run(&id).await["inputs"]);
    assert_eq!(replayed["route"], "gh");
    let old = d.get_run(&id).await;
    assert_eq!(old["replays"], serde_json::json!([new_id]), "{old}");

    // Another key acts again; a concurrent duplicate waits for the first.
    let (a, b) = tokio::join!(
        post(&d, &path, ADMIN_TOKEN, Some("k-2")),
        post(&d, &path, ADMIN_TOKEN, Some("k-2"))
    );
    assert_eq!(a, b);
    assert_eq!(d.run_count().await, 3);
    let (status, body) = post(
        &d,
        "/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/replay",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("run_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_endpoint_holds_deliveries_across_a_restart_and_resume_releases_them() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let mut d = start(&cfg, None).await;
    let (status, eps) = d.admin_get("/endpoints").await;
    assert_eq!(status, 200, "{eps}");
    assert_eq!(eps.as_array().unwrap().len(), 1);
    assert_eq!(eps[0]["routes"], serde_json::json!(["gh"]));
    let ep = eps[0]["id"].as_str().unwrap().to_string();

    let (status, view) = post(&d, &format!("/endpoints/{ep}/pause"), ADMIN_TOKEN, None).await;
    assert_eq!(
        (status, view["paused"].as_bool()),
        (200, Some(true)),
        "{view}"
    );
    let id = d.trigger("gh", "pause-1", "acme/pause").await;
    d.wait_run(&id, "terminal, delivery held", |r| {
        r["phase"] == "terminal" && r["deliveries"][0]["state"] == "pending"
    })
    .await;

    // Survives a restart; still nothing sent and no attempt spent.
    d.terminate(Duration::from_secs(10))
        .await
        .expect("clean exit");
    d.restart().await;
    let (_, eps) = d.admin_get("/endpoints").await;
    assert_eq!(eps[0]["paused"], true, "{eps}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = d.get_run(&id).await;
    assert_eq!(run["deliveries"][0]["state"], "pending", "{run}");
    assert_eq!(run["deliveries"][0]["attempts"], serde_json::json!([]));
    assert!(rx.for_run(&id).is_empty());

    // Resume: delivered promptly (well before the hold would end).
    let t0 = std::time::Instant::now();
    let (status, view) = post(&d, &format!("/endpoints/{ep}/resume"), ADMIN_TOKEN, None).await;
    assert_eq!(
        (status, view["paused"].as_bool()),
        (200, Some(false)),
        "{view}"
    );
    rx.wait_delivered(&id).await;
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let (status, body) = post(&d, "/endpoints/nope/pause", ADMIN_TOKEN, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("endpoint_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_tests_request_log_and_live_config_hide_every_secret() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = start(&cfg, None).await;

    // A signed test event, sent now.
    let (_, eps) = d.admin_get("/endpoints").await;
    let ep = eps[0]["id"].as_str().unwrap().to_string();
    let (status, result) = post(&d, &format!("/endpoints/{ep}/test"), ADMIN_TOKEN, None).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        (
            result["delivered"].as_bool(),
            result["status_code"].as_u64()
        ),
        (Some(true), Some(200))
    );
    let got = rx
        .wait_until("the test event", |r| r.first().cloned())
        .await;
    assert!(got.signature_valid);
    assert_eq!(got.event_type(), "test");
    assert_eq!(got.webhook_id, result["webhook_id"].as_str().unwrap());

    // Requests that started nothing: a bad signature, an unknown route.
    let body = serde_json::to_vec(&gh_payload("acme/x")).unwrap();
    let mut headers = Daemon::github_headers("bad-1", &body);
    headers.retain(|(k, _)| *k != "X-Hub-Signature-256");
    headers.push(("X-Hub-Signature-256", "sha256=00".into()));
    assert_eq!(d.post_hook("gh", body.clone(), &headers).await.status, 401);
    assert_eq!(d.post_hook("nope", body, &headers).await.status, 404);
    let (status, recs) = d.admin_get("/requests?outcome=rejected").await;
    assert_eq!(status, 200, "{recs}");
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(
        (recs[1]["route"].as_str(), recs[1]["status"].as_u64()),
        (Some("gh"), Some(401))
    );
    assert_eq!(recs[1]["error"], "unauthorized");
    assert!(recs[1]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let (_, ignored) = d.admin_get("/requests?outcome=ignored").await;
    assert_eq!(ignored, serde_json::json!([]));
    let (_, gh_only) = d.admin_get("/requests?route=gh").await;
    assert_eq!(gh_only.as_array().unwrap().len(), 1);

    // The live config: every secret as ***.
    let (s1, routes) = d.admin_get("/routes").await;
    let (s2, providers) = d.admin_get("/providers").await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(routes[0]["name"], "gh");
    assert_eq!(routes[0]["verify"][0]["kind"], "github");
    assert_eq!(
        routes[0]["verify"][0]["secrets"],
        serde_json::json!(["***"])
    );
    assert_eq!(routes[0]["callbacks"][0]["endpoint_id"], ep.as_str());
    assert_eq!(providers[0]["token"], "***");
    let text = format!("{routes}{providers}{eps}{result}");
    for secret in [
        GH_SECRET,
        SLATE_TOKEN,
        CALLBACK_SECRET,
        ADMIN_TOKEN,
        READ_TOKEN,
    ] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
}
