//! Running as a service: sd-notify messages, the watchdog and `/readyz`
//! reacting to a stalled loop, socket activation, reload on SIGHUP and
//! `POST /reload`, `/metrics`, `server.ops_listen`, `runbridge health`,
//! the systemd units and the config examples.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::service::{parse_metrics, start_activated, NotifySocket};
use common::*;
use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_runbridge")
}

/// Runs `runbridge health --url URL` and returns its exit code.
async fn health_cmd(url: &str) -> i32 {
    let out = tokio::process::Command::new(bin())
        .args(["health", "--url", url, "--timeout", "2s"])
        .env_remove("RUNBRIDGE_HEALTH_URL")
        .output()
        .await
        .expect("run runbridge health");
    out.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_reloading_watchdog_and_stopping() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let sockdir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(sockdir.path());
    let dir = tempfile::tempdir().unwrap();
    let text = cfg.render(dir.path());
    let sock = notify.path.to_string_lossy().to_string();
    let mut d = Daemon::start_with_env(
        dir,
        &text,
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "200000")],
    )
    .await;

    let ready = notify.wait_for("READY=1", 0).await;
    notify.wait_for("WATCHDOG=1", 0).await;

    d.signal("HUP").await;
    let reloading = notify.wait_for("RELOADING=1", ready + 1).await;
    let msgs = notify.messages();
    assert!(
        msgs[reloading]
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=") && l.len() > "MONOTONIC_USEC=".len()),
        "RELOADING=1 comes with MONOTONIC_USEC: {:?}",
        msgs[reloading]
    );
    notify.wait_for("READY=1", reloading + 1).await;

    let (status, _) = d.terminate(Duration::from_secs(20)).await.expect("exits");
    assert_eq!(status.code(), Some(0));
    let stopping = notify.wait_for("STOPPING=1", reloading + 1).await;
    assert!(stopping > reloading);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_stops_and_readyz_fails_when_a_loop_stalls() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let sockdir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(sockdir.path());
    let dir = tempfile::tempdir().unwrap();
    let text = cfg.render(dir.path());
    let sock = notify.path.to_string_lossy().to_string();
    let d = Daemon::start_with_env(
        dir,
        &text,
        &[
            ("NOTIFY_SOCKET", &sock),
            ("WATCHDOG_USEC", "200000"),
            ("RUNBRIDGE_TEST_STALL_SCHEDULER_AFTER", "1s"),
            ("RUNBRIDGE_TEST_LOOP_STALL", "6s"),
        ],
    )
    .await;
    notify.wait_for("WATCHDOG=1", 0).await;
    assert_eq!(health_cmd(&d.url("/readyz")).await, 0, "ready at first");

    let t0 = Instant::now();
    let body: Value = poll_until(
        "/readyz 503 with the scheduler stuck",
        Duration::from_secs(30),
        || async {
            let r = d
                .http
                .get(d.url("/readyz"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let code = r.status().as_u16();
            let v: Value = r.json().await.map_err(|e| e.to_string())?;
            if code == 503 {
                Ok(v)
            } else {
                Err(format!("{code} {v}"))
            }
        },
    )
    .await;
    assert_eq!(body["status"], "unready", "{body}");
    assert_eq!(body["loops"]["scheduler"]["ok"], false, "{body}");
    assert_eq!(body["loops"]["sweeper"]["ok"], true, "{body}");
    eprintln!("readyz unready {:?} after the stall hook", t0.elapsed());
    assert_eq!(
        health_cmd(&d.url("/readyz")).await,
        1,
        "runbridge health: unready"
    );

    // The watchdog checks every 100 ms: after the stall shows, pings stop.
    poll_until("no WATCHDOG=1 for 1 s", Duration::from_secs(10), || async {
        let last = notify.with_line("WATCHDOG=1").last().map(|(t, _)| *t);
        match last {
            Some(t) if t.elapsed() >= Duration::from_secs(1) => Ok(()),
            other => Err(format!("last ping {:?} ago", other.map(|t| t.elapsed()))),
        }
    })
    .await;
    let before = notify.with_line("WATCHDOG=1").len();
    // Still unready, still silent.
    let r = d.http.get(d.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(notify.with_line("WATCHDOG=1").len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_the_passed_listener() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runbridge.toml");
    std::fs::write(&config, cfg.render(dir.path())).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();

    let mut a = start_activated(&config, dir.path(), listener).await;
    assert_eq!(a.first_line, format!("listening on {addr}"), "serves fd 3");
    let http = http_client();
    let r = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let log = std::fs::read_to_string(&a.stderr).unwrap();
    assert!(log.contains("socket activation"), "{log}");

    let pid = a.child.id().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), a.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

async fn post_reload(d: &Daemon) -> (u16, Value) {
    let r = d
        .http
        .post(d.url("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_route_keeps_in_flight_runs_and_refuses_a_broken_config() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_hold").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let held = d.trigger("gh", "dlv-1", "acme/one").await;
    d.wait_run(&held, "tracking", |r| r["phase"] == "tracking")
        .await;
    let before = d.post_github("gh2", "dlv-x", &gh_payload("acme/x")).await;
    assert_eq!(before.status, 404);

    // A new route, by SIGHUP.
    let cfg2 = Config::new(&slate)
        .route(RouteCfg::new("gh", "wf_hold").callback(&rx.url()))
        .route(RouteCfg::new("gh2", "wf_ok").callback(&rx.url()));
    std::fs::write(&d.config_path, cfg2.render(d.dir())).unwrap();
    d.signal("HUP").await;
    let id2 = poll_until("gh2 served after SIGHUP", DEADLINE, || async {
        let r = d.post_github("gh2", "dlv-2", &gh_payload("acme/two")).await;
        match r.status {
            202 | 200 => Ok(r.run_id()),
            s => Err(format!("{s}")),
        }
    })
    .await;
    rx.wait_delivered(&id2).await;

    // A broken file: refused, every problem logged, the old config stays.
    std::fs::write(
        &d.config_path,
        "[server]\nlisten = \"nope\"\n[routes.x]\nprovider = \"missing\"\n",
    )
    .unwrap();
    d.signal("HUP").await;
    poll_until("reload refused in the log", DEADLINE, || async {
        let log = d.stderr();
        if log.contains("reload refused") && log.contains("server.listen") {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let (code, body) = post_reload(&d).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"], "invalid_config", "{body}");
    let keys: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["key"].as_str())
        .collect();
    assert!(keys.contains(&"server.listen"), "{body}");
    let again = d
        .post_github("gh2", "dlv-3", &gh_payload("acme/three"))
        .await;
    assert_eq!(again.status, 202, "old config still serves gh2: {again:?}");

    // The run in flight since before the reloads finishes and is delivered.
    slate.release_holds();
    let cb = rx.wait_delivered(&held).await;
    assert_eq!(cb.event_type(), "run.succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_route_stops_taking_triggers_but_finishes_its_runs() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate)
        .route(RouteCfg::new("old", "wf_hold").callback(&rx.url()))
        .route(RouteCfg::new("keep", "wf_ok"));
    let d = Daemon::start(&cfg).await;
    let held = d.trigger("old", "dlv-old", "acme/old").await;
    d.wait_run(&held, "tracking", |r| r["phase"] == "tracking")
        .await;

    let cfg2 = Config::new(&slate).route(RouteCfg::new("keep", "wf_ok"));
    std::fs::write(&d.config_path, cfg2.render(d.dir())).unwrap();
    let (code, body) = post_reload(&d).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["report"]["retired_routes"][0], "old", "{body}");
    let r = d
        .post_github("old", "dlv-new", &gh_payload("acme/new"))
        .await;
    assert_eq!(r.status, 404, "a removed route takes no trigger: {r:?}");

    // Its unfinished run still has its callback (and secret) and ends.
    slate.release_holds();
    let cb = rx.wait_delivered(&held).await;
    assert_eq!(cb.event_type(), "run.succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_counters_move_as_runs_flow() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let scrape = || async {
        let r = d.http.get(d.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        parse_metrics(&r.text().await.unwrap())
    };
    let first = scrape().await;
    assert!(
        first.contains_key("runbridge_edge_connections"),
        "{first:?}"
    );

    let id = d.trigger("gh", "dlv-m1", "acme/m").await;
    rx.wait_delivered(&id).await;
    let r = d.post_github("nope", "dlv-m2", &gh_payload("x")).await;
    assert_eq!(r.status, 404);

    let m = poll_until("counters after one run", DEADLINE, || async {
        let m = scrape().await;
        let want = [
            "runbridge_triggers_total{outcome=accepted,route=gh}",
            "runbridge_triggers_total{outcome=route_not_found,route=(unknown)}",
            "runbridge_runs_total{status=succeeded}",
            "runbridge_deliveries_total{outcome=delivered}",
            "runbridge_vendor_calls_total{call=start,provider=slate,result=ok}",
        ];
        match want
            .iter()
            .find(|k| m.get(**k).copied().unwrap_or(0.0) < 1.0)
        {
            None => Ok(m),
            Some(k) => Err(format!("{k} missing in {:?}", m.keys().collect::<Vec<_>>())),
        }
    })
    .await;
    for name in [
        "runbridge_store_flush_seconds_count",
        "runbridge_store_batch_writes_count",
        "runbridge_store_writes_total{op=create}",
        "runbridge_store_flushes_total",
        "runbridge_scheduler_lag_seconds_count",
        "runbridge_delivery_attempt_seconds_count",
        "runbridge_due_queue_depth",
        "runbridge_loop_alive{loop=scheduler}",
    ] {
        assert!(
            m.keys().any(|k| k.starts_with(name)),
            "{name} missing: {:?}",
            m.keys().collect::<Vec<_>>()
        );
    }
    let body = d
        .http
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains(SLATE_TOKEN) && !body.contains(ADMIN_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_listen_takes_health_and_metrics_off_the_main_listener() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let dir = tempfile::tempdir().unwrap();
    let text = cfg.render(dir.path()).replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nops_listen = \"127.0.0.1:0\"\n",
    );
    let d = Daemon::start_with_text(dir, &text).await;
    let ops = poll_until("the ops address in the log", DEADLINE, || async {
        let log = d.stderr();
        log.lines()
            .find(|l| l.contains("server.ops_listen"))
            .and_then(|l| l.split("bound=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .ok_or_else(|| "no line yet".to_string())
    })
    .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let main = d.http.get(d.url(path)).send().await.unwrap();
        assert_eq!(
            main.status().as_u16(),
            404,
            "{path} not on the main listener"
        );
        let r = d
            .http
            .get(format!("http://{ops}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} on ops_listen");
    }
    assert_eq!(health_cmd(&format!("http://{ops}/readyz")).await, 0);
    let r = d
        .http
        .get(format!("http://{ops}/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "the admin API stays on the main listener"
    );
}

#[tokio::test]
async fn health_command_fails_when_nothing_answers() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    assert_eq!(health_cmd(&format!("http://{addr}/readyz")).await, 1);
}

#[test]
fn systemd_units_verify_and_score_at_most_2_0() {
    let has = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        println!("SKIPPED: systemd-analyze is not installed (.ci/run installs it and runs the same checks)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/runbridge.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/runbridge serve"));
    // verify needs the ExecStart binary: point a copy of the unit at the
    // binary cargo built (.ci/run installs it at the real path instead).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("runbridge.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/runbridge", bin())).unwrap();
    let socket = dir.path().join("runbridge.socket");
    std::fs::copy(root.join("systemd/runbridge.socket"), &socket).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "security: {text}");
    let score = text
        .lines()
        .find_map(|l| l.split("runbridge.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .expect("an exposure score");
    println!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.0, "{text}");
}

/// `config/examples/` pass `check-config` standalone (no environment, as a
/// newcomer runs them); `config/deploy/` pass once the deployment supplies
/// what they reference (systemd credentials, `env:` variables, certificates).
#[test]
fn every_config_example_passes_check_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let creds = tempfile::tempdir().unwrap();
    for name in ["admin-token", "hook-token"] {
        std::fs::write(creds.path().join(name), format!("{name}-value-123\n")).unwrap();
    }
    let mut seen = Vec::new();
    for (dir, deployed) in [("config/examples", false), ("config/deploy", true)] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            seen.push(format!("{dir}/{name}"));
            let mut cmd = std::process::Command::new(bin());
            cmd.arg("check-config").arg("--config").arg(&path);
            for (k, _) in std::env::vars() {
                if k.starts_with("RUNBRIDGE") || k == "CREDENTIALS_DIRECTORY" {
                    cmd.env_remove(k);
                }
            }
            if deployed {
                if name == "tls" {
                    // The example's paths are the operator's; point them at a
                    // test certificate through the documented overrides.
                    let c =
                        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
                    let (cert, key) = (creds.path().join("cert.pem"), creds.path().join("key.pem"));
                    std::fs::write(&cert, c.cert.pem()).unwrap();
                    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
                    cmd.env("RUNBRIDGE__SERVER__TLS__CERT", &cert)
                        .env("RUNBRIDGE__SERVER__TLS__KEY", &key);
                }
                // Every `env:NAME` the config references, set the way an
                // operator would: a `whsec_` value suits every kind of key.
                let text = std::fs::read_to_string(&path).unwrap();
                for part in text.split("env:").skip(1) {
                    let var: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !var.is_empty() {
                        cmd.env(var, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
                    }
                }
                cmd.env("CREDENTIALS_DIRECTORY", creds.path());
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // One per sender, one per vendor and an http description, and the
    // deployment configs (systemd, docker, tls).
    for name in [
        "examples/github",
        "examples/stripe",
        "examples/slack",
        "examples/shopify",
        "examples/standard-webhooks",
        "examples/slate",
        "examples/onepin",
        "examples/retab",
        "examples/altostrat",
        "examples/http",
        "deploy/systemd",
        "deploy/docker",
        "deploy/tls",
    ] {
        assert!(
            seen.contains(&format!("config/{name}")),
            "config/{name}.toml is missing: {seen:?}"
        );
    }
}

#[test]
fn a_credential_reference_without_credentials_directory_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nadmin_token = \"credential:admin-token\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("server.admin_token") && err.contains("CREDENTIALS_DIRECTORY"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_callback_that_will_be_retried_is_logged_with_run_id_reason_and_next_attempt() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    rx.script(&[(500, None)]);
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let id = d.trigger("gh", "dlv-r1", "acme/r").await;
    rx.wait_delivered(&id).await;
    let log = d.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("callback attempt failed; will retry"))
        .unwrap_or_else(|| panic!("no retry line:\n{log}"));
    for part in [id.as_str(), "HTTP 500", "next_attempt=", "attempt=1"] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
}

#[test]
fn a_startup_error_is_printed_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{addr}\"\n[storage]\npath = {}\n",
            toml_str(&dir.path().join("db").to_string_lossy())
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("RUNBRIDGE") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("cannot listen on").count(),
        1,
        "printed once:\n{err}"
    );
}

#[test]
fn a_missing_config_file_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .current_dir(dir.path())
        .env_remove("RUNBRIDGE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let looked = dir.path().join("config/runbridge.toml");
    assert!(
        err.contains(&looked.to_string_lossy().to_string()) && err.contains("working directory"),
        "{err}"
    );
}
