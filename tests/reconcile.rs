//! OnePin has no idempotency key: a start interrupted by SIGKILL is
//! reconciled through the workflow's runs listing after restart. After the
//! vendor created the run: exactly one vendor run, and it is the tracked
//! one. Before: started once. A foreign run in the window: `start_uncertain`,
//! never adopted. Also: a 409 on start (another run active) is retried.
//! Retab sends a key it does not document well enough to trust: its
//! interrupted start is reconciled the same way.

mod common;

use common::bridge::{config, Route};
use common::fake::{Core, CreateMode};
use common::onepin::FakeOnePin;
use common::retab::FakeRetab;
use common::*;
use serde_json::json;

async fn daemon(f: &FakeOnePin, rx: &Receiver, wf: &str) -> Daemon {
    daemon_for(&f.provider(), rx, wf).await
}

/// A daemon with route `r` on `provider` (a `[providers.v]` section).
async fn daemon_for(provider: &str, rx: &Receiver, wf: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        dir.path(),
        provider,
        &[Route::new("r", wf)],
        &rx.url(),
        "50ms",
    );
    Daemon::start_with_text(dir, &text).await
}

async fn held(core: &Core) {
    poll_until("a held create", DEADLINE, || async {
        if core.held() >= 1 {
            Ok(())
        } else {
            Err(format!("held {}", core.held()))
        }
    })
    .await
}

/// After the restart: run `id` succeeded on the one vendor run its cut-off
/// start created, adopted by reconciliation, and nothing was created twice.
async fn assert_adopted_the_one_vendor_run(d: &Daemon, core: &Core, id: &str) {
    let run = d.wait_done(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let runs = core.runs();
    assert_eq!(runs.len(), 1, "exactly one vendor run: {runs:?}");
    assert_eq!(
        run["vendor_run_id"], runs[0].id,
        "and it is the tracked one"
    );
    assert_eq!(core.creates(), 1, "no second create");
    assert!(
        d.stderr().contains("adopting the vendor run"),
        "{}",
        d.stderr_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_vendor_created_the_run_adopts_it_after_restart() {
    let f = FakeOnePin::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut d = daemon(&f, &rx, "wf_ok").await;
    f.core.set_mode(CreateMode::HoldAfterCreate);
    let id = d.trigger_json("r", &json!({})).await;
    held(&f.core).await;
    d.kill_9().await;
    f.core.set_mode(CreateMode::Normal);
    f.core.release();
    d.restart().await;
    assert_adopted_the_one_vendor_run(&d, &f.core, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_the_vendor_created_the_run_starts_it_once_after_restart() {
    let f = FakeOnePin::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut d = daemon(&f, &rx, "wf_ok").await;
    f.core.set_mode(CreateMode::HoldBeforeCreate);
    let id = d.trigger_json("r", &json!({})).await;
    held(&f.core).await;
    d.kill_9().await;
    f.core.set_mode(CreateMode::Normal);
    f.core.release();
    d.restart().await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let runs = f.core.runs();
    assert_eq!(runs.len(), 1, "started once: {runs:?}");
    assert_eq!(run["vendor_run_id"], runs[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_run_in_the_window_makes_the_start_uncertain_never_adopted() {
    let f = FakeOnePin::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut d = daemon(&f, &rx, "wf_ok").await;
    f.core.set_mode(CreateMode::HoldAfterCreate);
    let id = d.trigger_json("r", &json!({})).await;
    held(&f.core).await;
    d.kill_9().await;
    // Someone starts the same workflow in OnePin's UI meanwhile.
    let foreign = f.core.add("wf_ok", json!({}), true);
    f.core.set_mode(CreateMode::Normal);
    f.core.release();
    d.restart().await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "start_uncertain", "{run}");
    assert!(run["vendor_run_id"].is_null(), "never adopted: {run}");
    assert!(
        run["error"]["candidates"].to_string().contains(&foreign.id),
        "{run}"
    );
    assert_eq!(f.core.runs().len(), 2, "and nothing started again");
    let cb = poll_until("the failed callback", DEADLINE, || async {
        rx.for_run(&id)
            .into_iter()
            .find(|r| r.ok())
            .ok_or_else(|| "none".to_string())
    })
    .await;
    assert_eq!(cb.event_type(), "run.failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_on_start_is_retried_until_accepted() {
    let f = FakeOnePin::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let d = daemon(&f, &rx, "wf_busy").await;
    let id = d.trigger_json("r", &json!({})).await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(f.core.creates(), 3, "two 409s, then accepted");
    assert_eq!(f.core.runs().len(), 1);
    assert!(run["last_error"].is_null());
}

/// The cancel request is persisted before the vendor is asked: a SIGKILL
/// while OnePin has not answered the cancel finishes it after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_cut_off_by_sigkill_is_finished_after_restart() {
    let f = FakeOnePin::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut d = daemon(&f, &rx, "wf_slow").await;
    let id = d.trigger_json("r", &json!({})).await;
    d.wait_run(&id, "running", |r| r["status"] == "running")
        .await;
    f.core.hold_cancels(true);
    let (url, http) = (d.url(&format!("/runs/{id}/cancel")), d.http.clone());
    let asked = tokio::spawn(async move { http.post(url).bearer_auth(ADMIN_TOKEN).send().await });
    poll_until("the held cancel", DEADLINE, || async {
        if f.core.held_cancels() >= 1 {
            Ok(())
        } else {
            Err("none yet".to_string())
        }
    })
    .await;
    d.kill_9().await;
    let _ = asked.await;
    f.core.hold_cancels(false);
    f.core.release();
    d.restart().await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "canceled", "{run}");
    assert_eq!(run["cancel"]["phase"], "done", "{run}");
    assert!(f
        .core
        .cancels()
        .contains(&run["vendor_run_id"].as_str().unwrap().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retab_start_cut_off_after_the_vendor_created_the_run_is_adopted_after_restart() {
    let f = FakeRetab::start(false).await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut d = daemon_for(&f.provider(), &rx, "wf_ok").await;
    f.core.set_mode(CreateMode::HoldAfterCreate);
    let id = d.trigger_json("r", &json!({})).await;
    held(&f.core).await;
    let run = d.get_run(&id).await;
    assert_eq!(run["phase"], "starting", "recorded before the call: {run}");
    d.kill_9().await;
    f.core.set_mode(CreateMode::Normal);
    f.core.release();
    d.restart().await;
    assert_adopted_the_one_vendor_run(&d, &f.core, &id).await;
}
