//! Callback options over real loopback HTTP: several secrets, custom
//! headers, `run.started`, 410 Gone disabling a callback for the rest of
//! the run, and per-endpoint `max_in_flight` and breaker.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// A second Standard Webhooks secret (the one being rotated in).
const SECRET_B: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn callback_table(url: &str, lines: &str) -> String {
    format!(
        "\n[[routes.gh.callbacks]]\nurl = {}\n{lines}\n",
        toml_str(url)
    )
}

async fn daemon(cfg: &Config, extra: &[String], env: &[(&str, &str)]) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = cfg.render(dir.path());
    for t in extra {
        text.push_str(t);
    }
    Daemon::start_with_env(dir, &text, env).await
}

/// Verifies with the official `standardwebhooks` Python library; `None`
/// (with a loud message) when python or the library is absent.
fn official_verify(secret: &str, r: &CallbackRecord) -> Option<bool> {
    use std::io::Write;
    let code = "import sys, json\n\
try:\n    from standardwebhooks.webhooks import Webhook\n\
except ImportError as e:\n    print(e, file=sys.stderr); sys.exit(3)\n\
h = json.loads(sys.argv[2])\n\
try:\n    Webhook(sys.argv[1]).verify(sys.stdin.buffer.read(), h); print('ok')\n\
except Exception as e:\n    print('bad', e)\n";
    let headers = serde_json::json!({
        "webhook-id": r.webhook_id,
        "webhook-timestamp": r.webhook_timestamp,
        "webhook-signature": r.signature,
    });
    let child = std::process::Command::new("python3")
        .arg("-c")
        .arg(code)
        .arg(secret)
        .arg(headers.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("!!!!! SKIPPED: python3 not runnable ({e}); CI installs it. !!!!!");
            return None;
        }
    };
    child.stdin.take()?.write_all(r.raw.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if out.status.code() == Some(3) {
        eprintln!(
            "!!!!! SKIPPED standardwebhooks: {} (.ci/run installs it) !!!!!",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.trim() == "ok")
}

fn header<'a>(r: &'a CallbackRecord, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_secrets_sign_each_and_custom_headers_arrive() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let extra = [callback_table(
        &rx.url(),
        &format!(
            "secrets = [{}, {}]\nheaders = {{ \"X-Env\" = \"prod\", \"Authorization\" = \"env:RB_TEST_CB_AUTH\" }}",
            toml_str(SECRET_B),
            toml_str(CALLBACK_SECRET)
        ),
    )];
    let d = daemon(&cfg, &extra, &[("RB_TEST_CB_AUTH", "Bearer cb-token-1")]).await;
    let id = d.trigger("gh", "dlv-2s", "acme/two").await;
    let cb = rx.wait_delivered(&id).await;
    assert!(
        cb.signature_valid,
        "the receiver holding the old secret verifies"
    );
    assert!(
        verify_standard_webhooks(
            SECRET_B,
            &cb.webhook_id,
            &cb.webhook_timestamp,
            cb.raw.as_bytes(),
            &cb.signature
        ),
        "a receiver holding the new secret verifies: {}",
        cb.signature
    );
    let entries: Vec<&str> = cb.signature.split(' ').collect();
    assert_eq!(entries.len(), 2, "{}", cb.signature);
    assert!(entries.iter().all(|e| e.starts_with("v1,")));
    for secret in [CALLBACK_SECRET, SECRET_B] {
        if let Some(ok) = official_verify(secret, &cb) {
            assert!(
                ok,
                "the official standardwebhooks library verifies with either secret"
            );
        }
    }
    assert_eq!(header(&cb, "x-env"), Some("prod"));
    assert_eq!(header(&cb, "authorization"), Some("Bearer cb-token-1"));
    assert!(
        !d.stderr().contains("cb-token-1"),
        "a header given as a secret reference is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_only_when_asked_with_its_own_id() {
    let slate = FakeSlate::start().await;
    let asked = Receiver::start(CALLBACK_SECRET).await;
    let default = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&default.url()));
    let extra = [callback_table(
        &asked.url(),
        &format!(
            "secret = {}\nevents = [\"run.started\", \"run.succeeded\"]",
            toml_str(CALLBACK_SECRET)
        ),
    )];
    let d = daemon(&cfg, &extra, &[]).await;
    let id = d.trigger("gh", "dlv-started", "acme/started").await;
    let recs = asked
        .wait_until("run.started then run.succeeded", |recs| {
            let ok: Vec<_> = recs.iter().filter(|r| r.ok()).cloned().collect();
            (ok.iter().any(|r| r.event_type() == "run.succeeded")).then_some(ok)
        })
        .await;
    let kinds: Vec<&str> = recs.iter().map(|r| r.event_type()).collect();
    assert_eq!(kinds, ["run.started", "run.succeeded"], "{kinds:?}");
    assert_ne!(recs[0].webhook_id, recs[1].webhook_id, "own event ids");
    assert_eq!(recs[0].data()["run_id"], Value::from(id.clone()));
    assert!(recs[0].data()["finished_at"].is_null());
    default.wait_delivered(&id).await;
    d.wait_done(&id).await;
    let kinds: Vec<String> = default
        .for_run(&id)
        .iter()
        .map(|r| r.event_type().to_string())
        .collect();
    assert_eq!(kinds, ["run.succeeded"], "not in the default list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_callback_for_the_rest_of_the_run() {
    let slate = FakeSlate::start().await;
    let gone = Receiver::start(CALLBACK_SECRET).await;
    gone.script(&[(410, None)]);
    let other = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&other.url()));
    let extra = [callback_table(
        &gone.url(),
        &format!(
            "secret = {}\nevents = [\"run.started\", \"run.succeeded\"]",
            toml_str(CALLBACK_SECRET)
        ),
    )];
    let d = daemon(&cfg, &extra, &[]).await;
    let id = d.trigger("gh", "dlv-gone", "acme/gone").await;
    gone.wait_responses(&id, 410, 1).await;
    other.wait_delivered(&id).await;
    let run = d.wait_done(&id).await;
    let recs = gone.for_run(&id);
    assert_eq!(
        recs.len(),
        1,
        "only the run.started attempt went there: {run}"
    );
    let to_gone: Vec<&Value> = run["deliveries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["url"].as_str() == Some(gone.url().as_str()))
        .collect();
    assert_eq!(to_gone.len(), 1, "{run}");
    assert_eq!(to_gone[0]["state"], "gone", "{run}");
    assert_eq!(to_gone[0]["attempts"][0]["status_code"], 410, "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_endpoint_max_in_flight_bounds_a_burst_of_runs() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    rx.set_delay(Duration::from_millis(150));
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let extra = [callback_table(
        &rx.url(),
        &format!("secret = {}\nmax_in_flight = 2", toml_str(CALLBACK_SECRET)),
    )];
    let d = daemon(&cfg, &extra, &[]).await;
    let t0 = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            d.trigger("gh", &format!("dlv-b{i}"), &format!("acme/b{i}"))
                .await,
        );
    }
    for id in &ids {
        rx.wait_delivered(id).await;
    }
    eprintln!(
        "20 runs delivered through max_in_flight = 2 in {:?}; peak {}",
        t0.elapsed(),
        rx.peak_in_flight()
    );
    assert!(rx.peak_in_flight() <= 2, "peak {}", rx.peak_in_flight());
    for id in &ids {
        let n = rx.for_run(id).iter().filter(|r| r.ok()).count();
        assert_eq!(n, 1, "run {id} delivered once");
        let run = d.wait_done(id).await;
        assert_eq!(
            run["deliveries"][0]["attempts"].as_array().map(Vec::len),
            Some(1),
            "held deliveries spend no attempt: {run}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_breaker_holds_a_failing_endpoint_then_recovers() {
    let slate = FakeSlate::start().await;
    let mut rx = Receiver::start(CALLBACK_SECRET).await;
    rx.set_mode(Mode::Failing).await;
    // 40 quick retries: without a breaker the receiver would see them all
    // within a few seconds.
    let schedule: Vec<&str> = std::iter::once("0s")
        .chain(std::iter::repeat_n("50ms", 39))
        .collect();
    let cfg = Config::new(&slate)
        .schedule(&schedule)
        .route(RouteCfg::new("gh", "wf_ok"));
    let extra = [callback_table(
        &rx.url(),
        &format!(
            "secret = {}\nbreaker_failures = 5\nbreaker_cooldown = \"3s\"",
            toml_str(CALLBACK_SECRET)
        ),
    )];
    let d = daemon(&cfg, &extra, &[]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            d.trigger("gh", &format!("dlv-k{i}"), &format!("acme/k{i}"))
                .await,
        );
    }
    // Opened: readiness names the endpoint.
    let opened = poll_until("the breaker to open", DEADLINE, || async {
        let (_, body) = d.readiness().await;
        if body["callback_breakers_open"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            Ok(body)
        } else {
            Err(body.to_string())
        }
    })
    .await;
    let at_open = rx.records().len();
    // While open (3 s cool-down) the count stays put: sample over 1 s.
    let window_end = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < window_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, body) = d.readiness().await;
        if body["callback_breakers_open"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            assert!(
                rx.records().len() <= at_open + 1,
                "held while open: {} requests at open, {} now; {opened}",
                at_open,
                rx.records().len()
            );
        }
    }
    assert!(
        (5..10).contains(&at_open),
        "opened after 5 consecutive failures: {at_open}"
    );
    rx.set_mode(Mode::Healthy).await;
    for id in &ids {
        rx.wait_delivered(id).await;
    }
    for id in &ids {
        let run = d.wait_done(id).await;
        assert_eq!(run["deliveries"][0]["state"], "delivered", "{run}");
        let delivered = rx.for_run(id).iter().filter(|r| r.ok()).count();
        assert_eq!(delivered, 1, "exactly once: {run}");
    }
    let total = rx.records().len();
    eprintln!("breaker: {at_open} requests when it opened, {total} in all for 3 runs (40 tries each without it)");
    assert!(
        total < 3 * 40,
        "fewer requests than without a breaker: {total}"
    );
    let (_, body) = d.readiness().await;
    assert_eq!(
        body["callback_breakers_open"],
        serde_json::json!([]),
        "{body}"
    );
}
