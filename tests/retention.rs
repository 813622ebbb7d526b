//! Retention: finished runs past `storage.retention` are removed by the
//! background sweep, with their dedupe keys; unfinished runs stay.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_finished_runs_past_retention_are_removed_and_unfinished_ones_kept() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut cfg = Config::new(&slate)
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()))
        .route(RouteCfg::new("hold", "wf_hold").callback(&rx.url()));
    cfg.retention = Some("1s".into());
    let d = Daemon::start(&cfg).await;
    let done = d.trigger("gh", "ret-1", "acme/ret").await;
    let open = d.trigger("hold", "ret-2", "acme/ret").await;
    d.wait_done(&done).await;
    d.wait_run(&open, "running", |r| r["status"] == "running")
        .await;

    // The sweep runs every 10 s; the finished run goes within two passes.
    poll_until(
        "the finished run removed",
        Duration::from_secs(40),
        || async {
            let (status, body) = d.admin_get(&format!("/runs/{done}")).await;
            if status == 404 {
                Ok(())
            } else {
                Err(format!("HTTP {status}: {body}"))
            }
        },
    )
    .await;
    let (status, run) = d.admin_get(&format!("/runs/{open}")).await;
    assert_eq!(status, 200, "an unfinished run is never removed: {run}");
    assert_eq!(run["phase"], "tracking", "{run}");

    // Its dedupe key went with it: the same delivery id is a new run now.
    let again = d.trigger("gh", "ret-1", "acme/ret").await;
    assert_ne!(again, done);
}
