//! Malformed vendor answers never crash the daemon, and each has the
//! outcome the README's table states: on start and on a status check, HTML,
//! truncated JSON, missing fields, a 200 whose body is an error, and a
//! request that hangs are failed calls retried with backoff (recorded in
//! `last_error`), and the run completes once the vendor answers properly;
//! a 4xx refusal of a start and a 404 on a status check end the run
//! `failed`. (Status-check HTML, truncated JSON, `{}` and hangs are also in
//! `vendor_faults.rs`.)

mod common;

use std::time::Duration;

use common::vendor::{Scripted, ScriptedVendor};
use common::*;

async fn daemon(vendor: &ScriptedVendor, rx: &Receiver) -> Daemon {
    let mut cfg = Config::new(&FakeSlate::start().await)
        .route(RouteCfg::new("gh", "wf_x").callback(&rx.url()));
    cfg.slate_base = vendor.base_url();
    cfg.provider_timeout = "300ms".into();
    Daemon::start(&cfg).await
}

fn cases() -> Vec<(&'static str, Scripted, &'static str)> {
    vec![
        (
            "html",
            Scripted::text(200, "text/html", "<!DOCTYPE html><html>Maintenance</html>"),
            "not JSON",
        ),
        (
            "truncated",
            Scripted::json(202, r#"{"run_id":"v-1","status":"QUE"#),
            "not JSON",
        ),
        (
            "missing fields",
            Scripted::json(202, r#"{"status":"QUEUED"}"#),
            "without a run id",
        ),
        (
            "error in a 200",
            Scripted::json(
                200,
                r#"{"error":{"code":"INTERNAL","message":"database unavailable"}}"#,
            ),
            "without a run id",
        ),
        ("hang", Scripted::slow(Duration::from_secs(2)), "timed out"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_start_answers_are_retried_then_the_run_completes() {
    let vendor = ScriptedVendor::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let d = daemon(&vendor, &rx).await;
    for (i, (name, answer, says)) in cases().into_iter().enumerate() {
        vendor.set_start(Some(answer));
        let id = d.trigger("gh", &format!("start-{i}"), "octo/m").await;
        let run = d
            .wait_run(&id, name, |r| {
                r["last_error"].as_str().is_some_and(|e| e.contains(says))
            })
            .await;
        assert_eq!(
            run["phase"], "starting",
            "{name}: retried, not ended: {run}"
        );
        vendor.set_start(None);
        let run = d.wait_done(&id).await;
        assert_eq!(run["status"], "succeeded", "{name}: {run}");
    }
    let (status, _) = d.admin_get("/runs?limit=1").await;
    assert_eq!(status, 200, "the daemon is alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_whose_body_is_an_error_is_a_retried_status_check() {
    let vendor = ScriptedVendor::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let d = daemon(&vendor, &rx).await;
    vendor.set_poll(Some(Scripted::json(
        200,
        r#"{"error":{"code":"INTERNAL","message":"database unavailable"}}"#,
    )));
    let id = d.trigger("gh", "poll-err", "octo/m").await;
    let run = d
        .wait_run(&id, "bad answer", |r| {
            r["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("without a recognizable status"))
        })
        .await;
    assert_eq!(run["phase"], "tracking", "{run}");
    vendor.set_poll(None);
    assert_eq!(d.wait_done(&id).await["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_end_the_run_failed() {
    let vendor = ScriptedVendor::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let d = daemon(&vendor, &rx).await;
    vendor.set_start(Some(Scripted::json(
        400,
        r#"{"error":"inputs must be an object"}"#,
    )));
    let id = d.trigger("gh", "refused", "octo/m").await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "START_REJECTED", "{run}");
    assert_eq!(
        run["error"]["vendor_error"]["error"],
        "inputs must be an object"
    );
    vendor.set_start(None);
    vendor.set_poll(Some(Scripted::json(404, r#"{"error":"not_found"}"#)));
    let id = d.trigger("gh", "gone", "octo/m").await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["error"]["code"], "VENDOR_RUN_NOT_FOUND", "{run}");
}
