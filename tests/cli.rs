//! The admin CLI (the real binary) against a running daemon: every command
//! in table and `--json` form, cursors, errors from the API's JSON body
//! with a non-zero exit, a read-only token refused on writes, redelivery of
//! a dead delivery, and `recover` printing progress and finishing.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;

const READ_TOKEN: &str = "reader-token";

/// What one CLI invocation did.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
    fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `runbridge ARGS` against `d` with the write token (flags, not env).
async fn cli(d: &Daemon, args: &[&str]) -> Out {
    cli_env(d, args, &[("RUNBRIDGE_ADMIN_TOKEN", ADMIN_TOKEN)], true).await
}

/// Runs `runbridge ARGS`; `url_flag` adds `--url`, `env` sets variables.
async fn cli_env(d: &Daemon, args: &[&str], env: &[(&str, &str)], url_flag: bool) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_runbridge"));
    scrub_env(&mut cmd);
    cmd.args(args);
    if url_flag {
        cmd.args(["--url", &d.base]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("the CLI finished in time")
        .expect("the CLI ran");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A daemon with route `gh` (Slate, succeeds, one callback to `rx`: three
/// quick attempts, and a breaker that never opens, so a delivery dies
/// within a second) and `slow` (a simulated provider's hour-long run), and a
/// read-only token besides the write token.
async fn daemon(slate: &FakeSlate, rx: &Receiver) -> Daemon {
    let mut slow = RouteCfg::new("slow", "wf_slow");
    slow.provider = "sim".into();
    let cfg = Config::new(slate)
        .schedule(&["0s", "50ms", "50ms"])
        .route(slow)
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let dir = tempfile::tempdir().expect("tempdir");
    // The last table rendered is gh's callback: its breaker, then more tables.
    let text = cfg.render(dir.path())
        + "breaker_failures = 1000\n"
        + "\n[providers.sim]\nkind = \"simulated\"\nduration = \"1h\"\n"
        + &format!(
            "\n[[admin.tokens]]\ntoken = {}\nrole = \"read\"\n",
            toml_str(READ_TOKEN)
        );
    Daemon::start_with_text(dir, &text).await
}

fn ids(page: &Value) -> Vec<String> {
    page["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("no runs: {page}"))
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_show_cancel_replay() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let d = daemon(&slate, &rx).await;
    let mut done = Vec::new();
    for i in 0..3 {
        let id = d.trigger("gh", &format!("del-{i}"), "octo/cli").await;
        d.wait_done(&id).await;
        done.push(id);
    }
    let slow = d.trigger("slow", "del-slow", "octo/slow").await;

    // A table by default: a header and one row per run.
    let t = cli(&d, &["runs", "list"]).await.ok();
    assert!(
        t.stdout.contains("ID") && t.stdout.contains("ROUTE"),
        "{}",
        t.stdout
    );
    for id in done.iter().chain([&slow]) {
        assert!(t.stdout.contains(id.as_str()), "{id} missing: {}", t.stdout);
    }
    assert!(
        t.stdout.contains("succeeded") && t.stdout.contains("1 delivered"),
        "{}",
        t.stdout
    );

    // --json: the API's page as is.
    let j = cli(&d, &["runs", "list", "--json", "--route", "gh"])
        .await
        .ok()
        .json();
    let listed = ids(&j);
    assert_eq!(listed.len(), 3, "{j}");
    assert!(j["runs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["route"] == "gh"));

    // Filters and the cursor, across pages: every run once.
    let first = cli(
        &d,
        &[
            "runs",
            "list",
            "--json",
            "--status",
            "succeeded",
            "--limit",
            "2",
        ],
    )
    .await
    .ok()
    .json();
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let t = cli(
        &d,
        &["runs", "list", "--status", "succeeded", "--limit", "2"],
    )
    .await
    .ok();
    assert!(
        t.stdout.contains(&format!("next cursor: {cursor}")),
        "{}",
        t.stdout
    );
    let second = cli(
        &d,
        &[
            "runs",
            "list",
            "--json",
            "--status",
            "succeeded",
            "--limit",
            "2",
            "--cursor",
            &cursor,
        ],
    )
    .await
    .ok()
    .json();
    let mut seen: Vec<String> = ids(&first);
    seen.extend(ids(&second));
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (3, 3), "{first} {second}");
    let by_delivery = cli(&d, &["runs", "list", "--json", "--delivery-id", "del-1"])
        .await
        .ok()
        .json();
    assert_eq!(ids(&by_delivery), vec![done[1].clone()], "{by_delivery}");

    // show: the run's fields, history and deliveries with their attempts.
    let t = cli(&d, &["runs", "show", &done[0]]).await.ok();
    for want in [
        done[0].as_str(),
        "Status history",
        "Deliveries",
        "run.succeeded",
        "HTTP 200",
    ] {
        assert!(t.stdout.contains(want), "{want} missing: {}", t.stdout);
    }
    let j = cli(&d, &["runs", "show", &done[0], "--json"])
        .await
        .ok()
        .json();
    assert_eq!(j["id"], done[0].as_str());
    assert_eq!(j["deliveries"][0]["state"], "delivered", "{j}");

    // An API error: its JSON code and message on stderr, exit 1.
    let missing = cli(&d, &["runs", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("HTTP 404") && missing.stderr.contains("run_not_found"),
        "{}",
        missing.stderr
    );

    // A read-only token reads, but is refused on cancel (403), and the run goes on.
    let ro = [("RUNBRIDGE_ADMIN_TOKEN", READ_TOKEN)];
    cli_env(&d, &["runs", "list"], &ro, true).await.ok();
    let refused = cli_env(&d, &["runs", "cancel", &slow], &ro, true).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("HTTP 403") && refused.stderr.contains("forbidden"),
        "{}",
        refused.stderr
    );
    assert_ne!(d.get_run(&slow).await["status"], "canceled");
    // No token at all: 401.
    let anon = cli_env(&d, &["runs", "list"], &[], true).await;
    assert_eq!(anon.code, 1);
    assert!(anon.stderr.contains("HTTP 401"), "{}", anon.stderr);

    // The write token cancels.
    let c = cli(&d, &["runs", "cancel", &slow]).await.ok();
    assert!(
        c.stdout.contains(&format!("run {slow}: cancel")),
        "{}",
        c.stdout
    );
    d.wait_run(&slow, "canceled", |r| r["status"] == "canceled")
        .await;
    // Again: the API's answer either way (canceled already, or run_ended).
    let again = cli(&d, &["runs", "cancel", &slow, "--json"]).await;
    if again.code == 0 {
        assert_eq!(again.json()["status"], "canceled", "{}", again.stdout);
    } else {
        assert!(again.stderr.contains("run_ended"), "{}", again.stderr);
    }

    // Replay: a new run linked to the old.
    let r = cli(&d, &["runs", "replay", &done[0]]).await.ok();
    let line = r.stdout.lines().next().unwrap_or_default().to_string();
    let new = line
        .rsplit(' ')
        .next()
        .filter(|_| line.starts_with(&format!("run {} replayed as ", done[0])))
        .unwrap_or_else(|| panic!("{}", r.stdout))
        .to_string();
    assert_eq!(d.get_run(&new).await["replay_of"], done[0].as_str());
    let j = cli(&d, &["runs", "replay", &done[1], "--json"])
        .await
        .ok()
        .json();
    assert_eq!(j["replay_of"], done[1].as_str(), "{j}");

    // Environment instead of flags: RUNBRIDGE_URL and RUNBRIDGE_ADMIN_TOKEN.
    let env = [
        ("RUNBRIDGE_URL", d.base.as_str()),
        ("RUNBRIDGE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let e = cli_env(&d, &["runs", "list", "--json"], &env, false)
        .await
        .ok()
        .json();
    assert!(ids(&e).contains(&new), "{e}");
    // Nobody listening: exit 1 within the timeout, no panic.
    let gone = cli_env(
        &d,
        &[
            "runs",
            "list",
            "--url",
            "http://127.0.0.1:9",
            "--timeout",
            "2s",
        ],
        &[],
        false,
    )
    .await;
    assert_eq!(gone.code, 1, "{}", gone.stderr);
    assert!(!gone.stderr.contains("panicked"), "{}", gone.stderr);
}

/// Triggers a run on `gh` while the receiver is down and waits until its
/// delivery is dead.
async fn dead_run(d: &Daemon, delivery: &str) -> String {
    let id = d.trigger("gh", delivery, "octo/dead").await;
    d.wait_run(&id, "delivery dead", |r| {
        r["deliveries"][0]["state"] == "dead"
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_redeliver_and_recover() {
    let slate = FakeSlate::start().await;
    let mut rx = Receiver::start(CALLBACK_SECRET).await;
    let d = daemon(&slate, &rx).await;
    rx.set_mode(Mode::Down).await;
    let run = dead_run(&d, "dead-1").await;

    let t = cli(&d, &["deliveries", "list"]).await.ok();
    assert!(
        t.stdout.contains(&run) && t.stdout.contains("dead"),
        "{}",
        t.stdout
    );
    let j = cli(
        &d,
        &[
            "deliveries",
            "list",
            "--state",
            "dead",
            "--route",
            "gh",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let item = &j["deliveries"][0];
    assert_eq!(
        (item["run_id"].as_str(), item["index"].as_u64()),
        (Some(run.as_str()), Some(0)),
        "{j}"
    );
    let webhook_id = item["webhook_id"].as_str().expect("webhook_id").to_string();
    let failing = cli(&d, &["deliveries", "list", "--state", "failing", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(failing["deliveries"], Value::Array(vec![]), "{failing}");

    // Redeliver: read-only refused; with the write token it arrives with
    // the same webhook-id.
    let ro = [("RUNBRIDGE_ADMIN_TOKEN", READ_TOKEN)];
    let refused = cli_env(&d, &["deliveries", "redeliver", &run, "0"], &ro, true).await;
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("HTTP 403"), "{}", refused.stderr);
    rx.set_mode(Mode::Healthy).await;
    let r = cli(&d, &["deliveries", "redeliver", &run, "0"]).await.ok();
    assert!(r.stdout.contains(&webhook_id), "{}", r.stdout);
    d.wait_run(&run, "redelivered", |r| {
        r["deliveries"][0]["state"] == "delivered"
    })
    .await;
    let got = rx.for_run(&run);
    assert!(
        got.iter().any(|c| c.ok() && c.webhook_id == webhook_id),
        "no delivery with webhook-id {webhook_id}"
    );

    // Recover after an outage: progress on stderr, the result on stdout,
    // everything that died delivered.
    rx.set_mode(Mode::Down).await;
    let a = dead_run(&d, "dead-2").await;
    let b = dead_run(&d, "dead-3").await;
    rx.set_mode(Mode::Healthy).await;
    let rec = cli(
        &d,
        &["recover", "gh", "--since", "1h", "--interval", "100ms"],
    )
    .await
    .ok();
    // Progress: the running state first, then each change, ending done.
    let lines: Vec<&str> = rec.stderr.lines().collect();
    assert!(lines.len() >= 2, "{}", rec.stderr);
    assert!(
        lines[0].starts_with("recover gh (running): "),
        "{}",
        rec.stderr
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("recover gh (done): 2 matched, 2 requeued")),
        "{}",
        rec.stderr
    );
    assert!(rec.stdout.contains("done"), "{}", rec.stdout);
    for id in [&a, &b] {
        d.wait_run(id, "recovered", |r| {
            r["deliveries"][0]["state"] == "delivered"
        })
        .await;
    }
    // --json, on a route with nothing left: the Recovery document, done.
    let j = cli(
        &d,
        &[
            "recover",
            "gh",
            "--since",
            "1h",
            "--json",
            "--interval",
            "100ms",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["matched"], 0, "{j}");
    // --follow: an existing recovery by id, to the same end.
    let id = j["id"].as_str().expect("recovery id");
    let f = cli(&d, &["recover", "--follow", id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!((&f["id"], &f["state"]), (&j["id"], &j["state"]), "{f}");
    let usage = cli(&d, &["recover", "gh"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let unknown = cli(&d, &["recover", "nope", "--since", "1h"]).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("HTTP 404"), "{}", unknown.stderr);
    let ro_rec = cli_env(&d, &["recover", "gh", "--since", "1h"], &ro, true).await;
    assert!(
        ro_rec.code == 1 && ro_rec.stderr.contains("HTTP 403"),
        "{}",
        ro_rec.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_requests() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let d = daemon(&slate, &rx).await;

    let j = cli(&d, &["endpoints", "list", "--json"]).await.ok().json();
    let ep = j
        .as_array()
        .and_then(|a| {
            a.iter().find(|e| {
                e["url"]
                    .as_str()
                    .is_some_and(|u| u.contains(&rx.port.to_string()))
            })
        })
        .unwrap_or_else(|| panic!("receiver endpoint missing: {j}"))
        .clone();
    let id = ep["id"].as_str().expect("id").to_string();
    let t = cli(&d, &["endpoints", "list"]).await.ok();
    assert!(
        t.stdout.contains(&id) && t.stdout.contains("gh"),
        "{}",
        t.stdout
    );

    let p = cli(&d, &["endpoints", "pause", &id]).await.ok();
    assert!(p.stdout.contains("paused"), "{}", p.stdout);
    let p = cli(&d, &["endpoints", "resume", &id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(p["paused"], false, "{p}");
    let ro = [("RUNBRIDGE_ADMIN_TOKEN", READ_TOKEN)];
    let refused = cli_env(&d, &["endpoints", "pause", &id], &ro, true).await;
    assert!(
        refused.code == 1 && refused.stderr.contains("HTTP 403"),
        "{}",
        refused.stderr
    );

    let t = cli(&d, &["endpoints", "test", &id]).await.ok();
    assert!(t.stdout.contains("delivered"), "{}", t.stdout);
    assert!(rx
        .records()
        .iter()
        .any(|r| r.event_type() == "test" && r.ok()));

    // A rejected request (bad signature) and an unknown endpoint.
    let body = br#"{"x":1}"#.to_vec();
    let r = d
        .post_hook(
            "gh",
            body,
            &[("X-Hub-Signature-256", "sha256=00".to_string())],
        )
        .await;
    assert_eq!(r.status, 401);
    let t = cli(&d, &["requests", "--outcome", "rejected"]).await.ok();
    assert!(
        t.stdout.contains("gh") && t.stdout.contains("401"),
        "{}",
        t.stdout
    );
    let j = cli(&d, &["requests", "--json", "--route", "gh"])
        .await
        .ok()
        .json();
    assert_eq!(j[0]["outcome"], "rejected", "{j}");
    assert_eq!(j[0]["status"], 401, "{j}");
    let none = cli(&d, &["endpoints", "test", "nope"]).await;
    assert!(
        none.code == 1 && none.stderr.contains("HTTP 404"),
        "{}",
        none.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_providers_without_secrets() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let d = daemon(&slate, &rx).await;
    let t = cli(&d, &["routes"]).await.ok();
    for want in ["gh", "slow", "github", "wf_ok", &rx.url()] {
        assert!(t.stdout.contains(want), "{want} missing: {}", t.stdout);
    }
    let j = cli(&d, &["routes", "--json"]).await.ok().json();
    assert!(j.as_array().is_some_and(|a| a.len() == 2), "{j}");
    let p = cli(&d, &["providers"]).await.ok();
    assert!(
        p.stdout.contains("slate") && p.stdout.contains("sim"),
        "{}",
        p.stdout
    );
    let pj = cli(&d, &["providers", "--json"]).await.ok().json();
    assert!(pj.as_array().is_some_and(|a| a.len() == 2), "{pj}");
    for out in [&t.stdout, &p.stdout, &j.to_string(), &pj.to_string()] {
        for secret in [GH_SECRET, SLATE_TOKEN, CALLBACK_SECRET] {
            assert!(!out.contains(secret), "a secret shown: {out}");
        }
    }
}

/// `runbridge routes --json | head -c 1`: the reader goes away before the
/// CLI has written everything. The CLI must end quietly (SIGPIPE, as Unix
/// tools do), not panic with "failed printing to stdout".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_pipe_ends_the_cli_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let d = daemon(&slate, &rx).await;
    for args in [
        &["routes", "--json"][..],
        &[
            "check-config",
            "--config",
            &d.config_path.display().to_string(),
        ][..],
    ] {
        // A pipe whose read end is closed before the child starts: its
        // first write to stdout meets EPIPE.
        let writer = closed_pipe();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_runbridge"));
        cmd.args(args)
            .args(if args[0] == "routes" {
                vec!["--url", d.base.as_str()]
            } else {
                vec![]
            })
            .env("RUNBRIDGE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("RUST_BACKTRACE")
            .stdout(writer)
            .stderr(std::process::Stdio::piped());
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("run the CLI");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?} ends by SIGPIPE like a Unix tool: {:?} {stderr}",
            out.status
        );
    }
}

/// The write end of a pipe whose read end is already closed.
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe() fills both descriptors on success; each is owned once.
    let (reader, writer) = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0, "pipe");
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    drop(reader);
    std::process::Stdio::from(writer)
}
