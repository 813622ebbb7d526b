//! A provider defined only in config (`kind = "http"`) runs the whole loop
//! against a fake of an API none of the presets describe ("Tempo": numeric
//! job ids, a nested state code, output in the last artifact, a custom auth
//! header, an abort endpoint). The provider block is the one in
//! `config/examples/http.toml`, pointed at the fake.

mod common;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::bridge::{config, Route};
use common::fake::{Core, FakeRun, Phase};
use common::*;
use serde_json::{json, Value};

const KEY: &str = "tempo-key-0123456789";

fn job(r: &FakeRun) -> Value {
    let code = match r.phase {
        Phase::Queued => "SCHEDULED",
        Phase::Running => "EXECUTING",
        Phase::Waiting => "NEEDS_APPROVAL",
        Phase::Succeeded => "DONE",
        Phase::Failed => "CRASHED",
        Phase::Canceled => "ABORTED",
    };
    let uid: u64 = r.id.parse().unwrap();
    let mut j = json!({"uid": uid, "pipeline": r.workflow_id, "state": {"code": code, "since": r.created_at}});
    if r.phase == Phase::Succeeded {
        j["result"] = json!({"artifacts": [{"kind": "log"}, {"kind": "video", "url": "https://cdn.example/v.mp4"}]});
    }
    if r.phase == Phase::Failed {
        j["problem"] = json!({"reason": "encoder ran out of memory", "code": 137});
    }
    json!({ "job": j })
}

fn ok(h: &HeaderMap) -> bool {
    h.get("x-tempo-key").and_then(|v| v.to_str().ok()) == Some(KEY)
}

async fn create(State(c): State<Core>, h: HeaderMap, body: axum::body::Bytes) -> Response {
    if !ok(&h) || h.get("x-request-ref").is_none() {
        return (StatusCode::FORBIDDEN, "no").into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let wf = body["pipeline"].as_str().unwrap_or_default().to_string();
    match c.create(&wf, body, 0).await {
        Ok(Some(r)) => (StatusCode::CREATED, Json(job(&r))).into_response(),
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn status(State(c): State<Core>, UrlPath(id): UrlPath<String>, h: HeaderMap) -> Response {
    if !ok(&h) {
        return (StatusCode::FORBIDDEN, "no").into_response();
    }
    match c.poll(&id) {
        Some(r) => Json(job(&r)).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn abort(State(c): State<Core>, UrlPath(id): UrlPath<String>) -> Response {
    match c.cancel(&id, true) {
        Some(_) => Json(job(&c.get(&id).unwrap())).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The example's provider block (everything from `[providers.tempo]` to the
/// routes), renamed `v` and pointed at `base`.
fn example_provider(base: &str) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/examples/http.toml"
    ))
    .unwrap();
    let start = text.find("[providers.tempo]").unwrap();
    let end = text.find("[routes.").unwrap();
    text[start..end]
        .replace("providers.tempo", "providers.v")
        .replace("https://api.tempo.example", base)
        .replace("change-me-tempo-key", KEY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_only_provider_runs_the_whole_loop() {
    let core = Core::new("");
    let app = Router::new()
        .route("/v2/jobs", post(create))
        .route("/v2/jobs/{id}", get(status))
        .route("/v2/jobs/{id}/abort", post(abort))
        .with_state(core.clone());
    let addr = Core::serve(app).await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = [
        Route::new("ok", "wf_ok"),
        Route::new("fail", "wf_fail"),
        Route::new("slow", "wf_slow"),
    ];
    let text = config(
        dir.path(),
        &example_provider(&format!("http://{addr}")),
        &routes,
        &rx.url(),
        "50ms",
    );
    let d = Daemon::start_with_text(dir, &text).await;

    let id = d
        .trigger_json("ok", &json!({"clip": {"id": 7, "tags": ["a"]}}))
        .await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["raw_status"], "DONE");
    assert_eq!(
        run["output"],
        json!({"kind": "video", "url": "https://cdn.example/v.mp4"})
    );
    let body = &core.runs()[0].body;
    assert_eq!(
        body["params"],
        json!({"clip": {"id": 7, "tags": ["a"]}}),
        "typed, not stringified"
    );
    assert_eq!(body["ref"], json!(id));
    assert_eq!(run["vendor_run_id"], "1", "a numeric id is kept as text");

    let id = d.trigger_json("fail", &json!({})).await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(
        run["error"],
        json!({"reason": "encoder ran out of memory", "code": 137})
    );

    let id = d.trigger_json("slow", &json!({})).await;
    d.wait_run(&id, "running", |r| r["status"] == "running")
        .await;
    let (status, body) = d.cancel(&id).await;
    assert_eq!(status, 200, "{body}");
    let run = d.wait_done(&id).await;
    assert_eq!(
        (run["status"].as_str(), run["raw_status"].as_str()),
        (Some("canceled"), Some("ABORTED"))
    );
    let events: Vec<String> = rx
        .records()
        .iter()
        .filter(|r| r.ok())
        .map(|r| r.event_type().to_string())
        .collect();
    for e in ["run.succeeded", "run.failed", "run.canceled"] {
        assert!(events.contains(&e.to_string()), "{events:?}");
    }
}
