//! Slate cancels only while a run is QUEUED: the admin cancel answers 200
//! then, and 409 with Slate's reason once the run has left QUEUED. The
//! Slate preset's `--explain` description, pasted as an `http` provider,
//! drives the same fake through the whole loop.

mod common;

use common::bridge::explain;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slate_cancel_is_accepted_while_queued_and_refused_with_409_after() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_slow").callback(&rx.url()));
    cfg.poll_interval = "1s".into();
    let d = Daemon::start(&cfg).await;

    let queued = d.trigger("gh", "c-1", "octo/a").await;
    d.wait_run(&queued, "started", |r| r["phase"] == "tracking")
        .await;
    let (status, body) = d.cancel(&queued).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "canceled", "{body}");
    let run = d.wait_done(&queued).await;
    assert_eq!(run["status"], "canceled");
    let cb = poll_until("run.canceled", DEADLINE, || async {
        rx.for_run(&queued)
            .into_iter()
            .find(|r| r.ok())
            .ok_or_else(|| "none".to_string())
    })
    .await;
    assert_eq!(cb.event_type(), "run.canceled");

    let running = d.trigger("gh", "c-2", "octo/b").await;
    d.wait_run(&running, "running", |r| r["status"] == "running")
        .await;
    let (status, body) = d.cancel(&running).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "cancel_refused");
    assert!(
        body["vendor_reason"]
            .to_string()
            .contains("only be canceled while QUEUED"),
        "{body}"
    );
    let run = d.get_run(&running).await;
    assert_eq!(run["phase"], "tracking", "the run goes on: {run}");
    assert_eq!(run["cancel"]["phase"], "refused");
    assert_eq!(slate.cancel_calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slate_preset_explained_and_pasted_runs_the_whole_loop() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let dir = tempfile::tempdir().unwrap();
    let text = cfg.render(dir.path());
    let path = dir.path().join("preset.toml");
    std::fs::write(&path, &text).unwrap();
    let explained = explain(&path, "slate");
    assert!(!explained.contains(SLATE_TOKEN), "{explained}");
    let pasted = explained.replace("\"***\"", &format!("\"{SLATE_TOKEN}\""));
    // The rendered config with its slate provider replaced by the pasted one.
    let start = text.find("[providers.slate]").unwrap();
    let end = text[start..].find("\n[routes").map(|i| start + i).unwrap();
    let replaced = format!("{}{}\n{}", &text[..start], pasted, &text[end..]);
    let d = Daemon::start_with_text(dir, &replaced).await;
    let id = d.trigger("gh", "p-1", "octo/p").await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["output"]["share_url"].is_string(), "{run}");
    let calls = slate.create_calls();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].idempotency_key.is_some(),
        "the idempotency key is kept"
    );
    assert_eq!(rx.for_run(&id).len(), 1);
}

/// A cancel that arrives while a step holds the run (its start is at the
/// vendor) waits for the step, is recorded without clobbering the step's
/// transition (the vendor run id it learned), and cancels that vendor run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_a_slow_start_waits_for_it_and_cancels_the_vendor_run() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    slate.set_create_delay("wf_slow", std::time::Duration::from_millis(1_000));
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_slow").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let id = d.trigger("gh", "c-slow", "octo/s").await;
    let s = &slate;
    poll_until("the start at the vendor", DEADLINE, || async move {
        if s.create_count() == 1 {
            Ok(())
        } else {
            Err("no create yet".to_string())
        }
    })
    .await;
    let (status, body) = d.cancel(&id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "canceled", "{body}");
    let run = d.wait_done(&id).await;
    let vendor = slate.runs();
    assert_eq!(vendor.len(), 1, "one vendor run");
    assert_eq!(run["vendor_run_id"], vendor[0].id.as_str(), "{run}");
    assert_eq!(slate.cancel_calls(), [vendor[0].id.clone()]);
    assert_eq!(run["cancel"]["phase"], "done", "{run}");
}
