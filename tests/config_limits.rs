//! Config bounds through the real binary: `check-config` rejects `9000y`
//! (and anything past the documented maximum) at every duration key,
//! accepts every key at exactly its maximum, never echoes a numeric secret
//! given by environment override, and the daemon runs the whole loop with
//! every duration and size at its documented maximum.
//!
//! Keys that by their nature delay the loop are set to their minimum
//! instead: `scheduler.poll_interval` (the first poll waits for it) and the
//! first `delivery.schedule` entry (the first callback attempt waits for it;
//! `0s`). Every other schedule entry is at the maximum, and `delivery.jitter`
//! at 1.0.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use runbridge::config::limits::*;
use serde_json::json;

fn d(x: Duration) -> String {
    humantime::format_duration(x).to_string()
}

fn size(bytes: u64) -> String {
    format!("{}B", bytes)
}

/// Every bounded key of the test config at its maximum (TOML values).
fn at_maxima() -> BTreeMap<&'static str, String> {
    let q = |s: String| toml_str(&s);
    let mut m = BTreeMap::new();
    m.insert("server.body_limit", q(size(MAX_BODY_LIMIT)));
    m.insert("server.request_timeout", q(d(MAX_REQUEST_TIMEOUT)));
    m.insert("server.shutdown_timeout", q(d(MAX_SHUTDOWN_TIMEOUT)));
    m.insert("storage.cache_capacity", q(size(MAX_CACHE_CAPACITY)));
    m.insert("scheduler.poll_interval", q(d(MAX_POLL_INTERVAL)));
    m.insert(
        "scheduler.poll_slowdown_after",
        q(d(MAX_POLL_SLOWDOWN_AFTER)),
    );
    m.insert("scheduler.max_poll_interval", q(d(MAX_POLL_INTERVAL)));
    m.insert("scheduler.run_timeout", q(d(MAX_RUN_TIMEOUT)));
    m.insert("scheduler.concurrency", MAX_CONCURRENCY.to_string());
    m.insert("scheduler.retry_base", q(d(MAX_RETRY_BASE)));
    m.insert("scheduler.retry_max", q(d(MAX_RETRY_MAX)));
    m.insert("delivery.schedule.0", q("0s".into()));
    m.insert("delivery.schedule.1", q(d(MAX_SCHEDULE_DELAY)));
    m.insert("delivery.jitter", "1.0".into());
    m.insert("delivery.timeout", q(d(MAX_DELIVERY_TIMEOUT)));
    m.insert("delivery.max_retry_after", q(d(MAX_RETRY_AFTER)));
    m.insert("providers.slate.timeout", q(d(MAX_PROVIDER_TIMEOUT)));
    m.insert("providers.sim.duration", q(d(MAX_SIMULATED_DURATION)));
    m.insert("routes.max.run_timeout", q(d(MAX_RUN_TIMEOUT)));
    m.insert("routes.max.dedupe_ttl", q(d(MAX_DEDUPE_TTL)));
    m.insert("routes.max.verify.tolerance", q(d(MAX_TOLERANCE)));
    m.insert("routes.max.waiting_timeout", q(d(MAX_RUN_TIMEOUT)));
    m.insert("server.header_read_timeout", q(d(MAX_EDGE_TIMEOUT)));
    m.insert("server.idle_timeout", q(d(MAX_EDGE_TIMEOUT)));
    m.insert("server.linger_timeout", q(d(MAX_EDGE_TIMEOUT)));
    m.insert("server.max_connections", MAX_CONNECTIONS.to_string());
    m.insert("server.max_headers", MAX_HEADERS.to_string());
    m.insert("server.max_header_bytes", q(size(MAX_HEADER_BYTES)));
    m.insert("server.body_buffer_limit", q(size(MAX_BODY_BUFFER)));
    m.insert("server.linger_bytes", q(size(MAX_LINGER_BYTES)));
    m.insert("storage.retention", q(d(MAX_RETENTION)));
    m.insert("delivery.max_response_bytes", q(size(MAX_RESPONSE_BYTES)));
    m.insert(
        "providers.slate.max_response_bytes",
        q(size(MAX_VENDOR_RESPONSE_BYTES)),
    );
    m.insert("providers.slate.rate_per_s", MAX_RATE.to_string());
    m.insert("providers.slate.burst", MAX_RATE.to_string());
    m.insert("providers.slate.max_in_flight", MAX_IN_FLIGHT.to_string());
    m
}

/// The duration keys (and one schedule entry) `9000y` is tried at.
const DURATION_KEYS: &[&str] = &[
    "server.request_timeout",
    "server.shutdown_timeout",
    "scheduler.poll_interval",
    "scheduler.poll_slowdown_after",
    "scheduler.max_poll_interval",
    "scheduler.run_timeout",
    "scheduler.retry_base",
    "scheduler.retry_max",
    "delivery.schedule.1",
    "delivery.timeout",
    "delivery.max_retry_after",
    "providers.slate.timeout",
    "providers.sim.duration",
    "routes.max.run_timeout",
    "routes.max.dedupe_ttl",
    "routes.max.verify.tolerance",
    "routes.max.waiting_timeout",
    "server.header_read_timeout",
    "server.idle_timeout",
    "server.linger_timeout",
    "storage.retention",
];

/// The key path `check-config` reports for one of our keys.
fn reported(key: &str) -> String {
    key.replace("schedule.1", "schedule[1]")
}

fn render(v: &BTreeMap<&str, String>, slate: &str, rx: &str, db: &Path) -> String {
    let g = |k: &str| v[k].clone();
    format!(
        r#"[server]
listen = "127.0.0.1:0"
body_limit = {body_limit}
request_timeout = {request_timeout}
shutdown_timeout = {shutdown_timeout}
admin_token = {admin}
header_read_timeout = {hrt}
idle_timeout = {idle}
linger_timeout = {linger_t}
max_connections = {max_conn}
max_headers = {max_headers}
max_header_bytes = {max_hb}
body_buffer_limit = {bbl}
linger_bytes = {linger_b}

[storage]
path = {db}
cache_capacity = {cache}
retention = {retention}

[scheduler]
poll_interval = {poll}
poll_slowdown_after = {slowdown}
max_poll_interval = {max_poll}
run_timeout = {run_timeout}
concurrency = {concurrency}
retry_base = {retry_base}
retry_max = {retry_max}

[delivery]
schedule = [{s0}, {s1}, {s1}]
jitter = {jitter}
timeout = {dtimeout}
max_retry_after = {mra}
max_response_bytes = {dmrb}
# The test receiver listens on loopback, refused by default.
allow_destinations = ["127.0.0.0/8"]

[providers.slate]
kind = "slate"
base_url = {slate}
token = {token}
timeout = {ptimeout}
max_response_bytes = {pmrb}
rate_per_s = {prate}
burst = {pburst}
max_in_flight = {pmif}

[providers.sim]
kind = "simulated"
duration = {sim}

[routes.max]
provider = "slate"
workflow_id = "wf_ok_max"
run_timeout = {route_timeout}
dedupe_ttl = {dedupe_ttl}
waiting_timeout = {waiting}
verify = {{ kind = "standard-webhooks", secret = {whsec}, tolerance = {tolerance} }}

[[routes.max.callbacks]]
url = {rx}
secret = {whsec}
"#,
        body_limit = g("server.body_limit"),
        hrt = g("server.header_read_timeout"),
        idle = g("server.idle_timeout"),
        linger_t = g("server.linger_timeout"),
        max_conn = g("server.max_connections"),
        max_headers = g("server.max_headers"),
        max_hb = g("server.max_header_bytes"),
        bbl = g("server.body_buffer_limit"),
        linger_b = g("server.linger_bytes"),
        retention = g("storage.retention"),
        dmrb = g("delivery.max_response_bytes"),
        pmrb = g("providers.slate.max_response_bytes"),
        prate = g("providers.slate.rate_per_s"),
        pburst = g("providers.slate.burst"),
        pmif = g("providers.slate.max_in_flight"),
        waiting = g("routes.max.waiting_timeout"),
        request_timeout = g("server.request_timeout"),
        shutdown_timeout = g("server.shutdown_timeout"),
        admin = toml_str(ADMIN_TOKEN),
        db = toml_str(&db.to_string_lossy()),
        cache = g("storage.cache_capacity"),
        poll = g("scheduler.poll_interval"),
        slowdown = g("scheduler.poll_slowdown_after"),
        max_poll = g("scheduler.max_poll_interval"),
        run_timeout = g("scheduler.run_timeout"),
        concurrency = g("scheduler.concurrency"),
        retry_base = g("scheduler.retry_base"),
        retry_max = g("scheduler.retry_max"),
        s0 = g("delivery.schedule.0"),
        s1 = g("delivery.schedule.1"),
        jitter = g("delivery.jitter"),
        dtimeout = g("delivery.timeout"),
        mra = g("delivery.max_retry_after"),
        slate = toml_str(slate),
        token = toml_str(SLATE_TOKEN),
        ptimeout = g("providers.slate.timeout"),
        sim = g("providers.sim.duration"),
        route_timeout = g("routes.max.run_timeout"),
        dedupe_ttl = g("routes.max.dedupe_ttl"),
        tolerance = g("routes.max.verify.tolerance"),
        whsec = toml_str(CALLBACK_SECRET),
        rx = toml_str(rx),
    )
}

fn check_config(dir: &Path, text: &str, env: &[(&str, &str)]) -> Output {
    let path = dir.join("check.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_runbridge"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("RUNBRIDGE")
        {
            cmd.env_remove(k);
        }
    }
    cmd.arg("check-config")
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied());
    cmd.output().expect("run check-config")
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const SLATE: &str = "http://127.0.0.1:1/workflow-service/api/public/v1";
const RX: &str = "http://127.0.0.1:1/cb";

#[test]
fn check_config_accepts_every_maximum_and_rejects_9000y_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let max = at_maxima();
    let ok = check_config(dir.path(), &render(&max, SLATE, RX, &db), &[]);
    assert!(
        ok.status.success(),
        "every key at its maximum is valid:\n{}",
        text_of(&ok)
    );
    for key in DURATION_KEYS {
        let mut v = max.clone();
        v.insert(key, toml_str("9000y"));
        let out = check_config(dir.path(), &render(&v, SLATE, RX, &db), &[]);
        let text = text_of(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{key} = 9000y accepted:\n{text}"
        );
        let want = format!("{}: 9000years is more than the maximum", reported(key));
        assert!(text.contains(&want), "{key}: expected {want:?} in\n{text}");
        assert_eq!(text.matches("problem").count(), 1, "only {key}:\n{text}");
    }
    for (key, past) in [
        ("server.body_limit", size(MAX_BODY_LIMIT + 1)),
        ("storage.cache_capacity", size(MAX_CACHE_CAPACITY + 1)),
        (
            "scheduler.run_timeout",
            d(MAX_RUN_TIMEOUT + Duration::from_millis(1)),
        ),
    ] {
        let mut v = max.clone();
        v.insert(key, toml_str(&past));
        let out = check_config(dir.path(), &render(&v, SLATE, RX, &db), &[]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{key} = {past}:\n{}",
            text_of(&out)
        );
        assert!(
            text_of(&out).contains(&format!("{key}: ")),
            "{}",
            text_of(&out)
        );
    }
    let mut v = max.clone();
    v.insert("scheduler.concurrency", (MAX_CONCURRENCY + 1).to_string());
    let out = check_config(dir.path(), &render(&v, SLATE, RX, &db), &[]);
    assert!(
        text_of(&out).contains("scheduler.concurrency: "),
        "{}",
        text_of(&out)
    );
}

#[test]
fn numeric_secrets_from_the_environment_work_and_are_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let good = render(&at_maxima(), SLATE, RX, &db);
    let env = [
        ("RUNBRIDGE__PROVIDERS__SLATE__TOKEN", "424242424242"),
        ("RUNBRIDGE__SERVER__ADMIN_TOKEN", "737373737373"),
    ];
    let out = check_config(dir.path(), &good, &env);
    assert!(
        out.status.success(),
        "numbers are stringified:\n{}",
        text_of(&out)
    );
    // The same secrets beside real problems, and one that is itself wrong.
    let bad = good.replace(&toml_str(SLATE), "\"nope\"");
    let env_bad = [
        env[0],
        env[1],
        ("RUNBRIDGE__ROUTES__MAX__VERIFY__SECRET", "919191919191"),
    ];
    let out = check_config(dir.path(), &bad, &env_bad);
    let text = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("providers.slate.base_url"), "{text}");
    assert!(text.contains("routes.max.verify.secret"), "{text}");
    for (_, secret) in env_bad {
        assert!(!text.contains(secret), "secret echoed:\n{text}");
    }
}

#[tokio::test]
async fn the_whole_loop_runs_with_every_duration_and_size_at_its_maximum() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut v = at_maxima();
    // These delay the loop by nature; at their minimum instead (see above).
    v.insert("scheduler.poll_interval", toml_str("50ms"));
    v.insert("delivery.schedule.0", toml_str("0s"));
    let dir = tempfile::tempdir().unwrap();
    let text = render(&v, &slate.base_url(), &rx.url(), &dir.path().join("db"));
    let d = Daemon::start_with_text(dir, &text).await;

    let body = serde_json::to_vec(&json!({"repository": {"full_name": "octo/max"}})).unwrap();
    let ts = unix_now().to_string();
    let sig = standard_webhooks_signature(CALLBACK_SECRET, "msg_max_1", &ts, &body);
    let headers = [
        ("Content-Type", "application/json".to_string()),
        ("webhook-id", "msg_max_1".to_string()),
        ("webhook-timestamp", ts),
        ("webhook-signature", format!("v1,{sig}")),
    ];
    let r = d.post_hook("max", body, &headers).await;
    assert_eq!(r.status, 202, "{r:?}\n{}", d.stderr_tail(30));
    let id = r.run_id();
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let cbs = rx.for_run(&id);
    assert_eq!(cbs.len(), 1, "{cbs:?}");
    assert!(cbs[0].signature_valid && cbs[0].ok(), "{cbs:?}");
    assert!(
        cbs[0].data()["output"]["share_url"].as_str().is_some(),
        "{cbs:?}"
    );
    let created = humantime::parse_rfc3339(run["created_at"].as_str().unwrap()).unwrap();
    let deadline = humantime::parse_rfc3339(run["deadline"].as_str().unwrap()).unwrap();
    assert_eq!(
        deadline.duration_since(created).unwrap(),
        MAX_RUN_TIMEOUT,
        "{run}"
    );
    let stderr = d.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
