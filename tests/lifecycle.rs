//! Process lifecycle: the `listening on` line, graceful shutdown on SIGTERM
//! and SIGINT, resuming after a graceful stop, and `check-config`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const SHUTDOWN: Duration = Duration::from_secs(5);
/// Slack for process start-up/tear-down on a slow machine on top of the
/// daemon's own shutdown_timeout.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_within_the_shutdown_timeout_and_tracked_runs_resume() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_hold").callback(&rx.url()));
    let mut d = Daemon::start(&cfg).await;

    // A run being tracked, and an idle keep-alive connection left open.
    let id = d.trigger("gh", "dlv-term", "acme/term").await;
    d.wait_run(&id, "tracking a RUNNING run", |r| {
        r["phase"] == "tracking" && r["status"] == "running"
    })
    .await;
    let health = d.http.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let (status, took) = d
        .terminate(SHUTDOWN + SLACK + Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("runbridge still running 16.5 s after SIGTERM"));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must exit 0, got {status:?}"
    );
    assert!(
        took <= SHUTDOWN + SLACK,
        "SIGTERM took {took:?}, shutdown_timeout is {SHUTDOWN:?}"
    );
    assert_eq!(
        d.stdout_lines().len(),
        1,
        "stdout must hold exactly the `listening on` line: {:?}",
        d.stdout_lines()
    );

    // Same store: the run is still there and is tracked to its end.
    d.restart().await;
    let run = d.get_run(&id).await;
    assert_eq!(run["status"], "running", "{run}");
    assert_eq!(run["phase"], "tracking", "{run}");
    slate.release_holds();
    let cb = rx.wait_delivered(&id).await;
    assert_callback_envelope(&cb, &id, "gh", "wf_hold", "dlv-term");
    assert_eq!(cb.event_type(), "run.succeeded");
    assert_eq!(slate.distinct_runs(), 1, "{:?}", slate.create_calls());
    let again = d
        .post_github("gh", "dlv-term", &gh_payload("acme/term"))
        .await;
    assert_eq!(again.status, 200, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0_within_the_shutdown_timeout() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_slow"));
    let mut d = Daemon::start(&cfg).await;
    let id = d.trigger("gh", "dlv-int", "acme/int").await;
    d.wait_run(&id, "tracking", |r| r["phase"] == "tracking")
        .await;

    let t0 = std::time::Instant::now();
    d.signal("INT").await;
    let status = d
        .wait_exit(SHUTDOWN + SLACK + Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("runbridge still running after SIGINT"));
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "SIGINT must exit 0, got {status:?}");
    assert!(took <= SHUTDOWN + SLACK, "SIGINT took {took:?}");
}

// ---------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------

async fn check_config(path: &Path) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_runbridge"));
    cmd.arg("check-config")
        .arg("--config")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("check-config finished")
        .expect("run check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_the_shipped_config_and_the_test_config() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/runbridge.toml");
    let (code, out) = check_config(&shipped).await;
    assert_eq!(code, Some(0), "config/runbridge.toml must be valid:\n{out}");

    // The configs this suite generates are valid too.
    let slate = FakeSlate::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::new(&slate).route(
        RouteCfg::new("gh", "wf_ok")
            .callback("http://127.0.0.1:9/cb")
            .run_timeout("3s"),
    );
    let path = dir.path().join("test.toml");
    std::fs::write(&path, cfg.render(dir.path())).unwrap();
    let (code, out) = check_config(&path).await;
    assert_eq!(code, Some(0), "the test config must be valid:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_the_key_path_of_every_problem() {
    let slate = FakeSlate::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback("http://127.0.0.1:9/cb"));
    let good = cfg.render(dir.path());
    let bad = good
        .replacen(
            "[server]\n",
            "[server]\nlisten_adress = \"127.0.0.1:1\"\n",
            1,
        )
        .replacen("poll_interval = \"50ms\"", "poll_interval = \"fast\"", 1)
        .replacen("provider = \"slate\"", "provider = \"nope\"", 1);
    assert_ne!(good, bad);
    assert!(bad.contains("listen_adress") && bad.contains("\"fast\"") && bad.contains("\"nope\""));
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, &bad).unwrap();

    let (code, out) = check_config(&path).await;
    assert_eq!(code, Some(1), "an invalid config must exit 1:\n{out}");
    for key in [
        "server.listen_adress",
        "scheduler.poll_interval",
        "routes.gh.provider",
    ] {
        assert!(
            out.contains(key),
            "check-config must name `{key}`; it printed:\n{out}"
        );
    }

    // `serve` refuses the same file instead of starting.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_runbridge"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("serve with a bad config must exit")
        .expect("run serve");
    assert_eq!(
        out.status.code(),
        Some(1),
        "serve must exit 1 on a bad config (README, exit codes): {out:?}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "serve must not listen on a bad config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_store_exits_1_and_leaves_the_first_serving() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let d = Daemon::start(&cfg).await;

    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_runbridge"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&d.config_path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("a second serve on a locked store must exit")
        .expect("run serve");
    assert_eq!(
        out.status.code(),
        Some(1),
        "store in use must exit 1 (README, exit codes): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "the second daemon must not listen"
    );
    // sled's lock is an flock held by the first process: across processes
    // it must fail, and the message must say what to do about it.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another runbridge process"),
        "the refusal names the cause: {err}"
    );
    assert!(
        err.contains(&d.dir().join("db").display().to_string()),
        "the refusal names the store's path: {err}"
    );

    let id = d.trigger("gh", "dlv-after-second", "acme/app").await;
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
}
