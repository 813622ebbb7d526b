//! Vendor faults seen from outside: refused credentials on start, vendors
//! echoing our token in their errors, and garbage status answers. Each runs
//! the real daemon against the scriptable vendor of `common::vendor`.

mod common;

use std::time::Duration;

use common::vendor::{Scripted, ScriptedVendor};
use common::*;

async fn config(vendor: &ScriptedVendor, rx: &Receiver, callback_query: &str) -> Config {
    let mut cfg = Config::new(&FakeSlate::start().await)
        .route(RouteCfg::new("gh", "wf_x").callback(&format!("{}{callback_query}", rx.url())));
    cfg.slate_base = vendor.base_url();
    cfg
}

/// Log lines of the daemon's stderr that contain every one of `needles`.
fn log_lines(d: &Daemon, needles: &[&str]) -> Vec<String> {
    d.stderr()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn start_refused_with_401_is_retried_until_the_token_works_and_readyz_stays_ready() {
    let vendor = ScriptedVendor::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let d = Daemon::start(&config(&vendor, &rx, "").await).await;
    vendor.set_start(Some(Scripted::json(
        401,
        r#"{"error":"unauthorized","message":"token expired"}"#,
    )));
    let id = d.trigger("gh", "auth-1", "octo/a").await;

    // While the vendor refuses: retried with growing backoff, recorded in
    // last_error, listed by /readyz, which stays 200.
    let run = d
        .wait_run(&id, "start refused a few times", |r| {
            r["start_attempts"].as_u64().unwrap_or(0) >= 4
        })
        .await;
    assert_eq!(run["phase"], "starting", "{run}");
    let last_error = run["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("401"), "{run}");
    let (status, body) = d.readiness().await;
    assert_eq!(
        status, 200,
        "one refused vendor token must not make us unready: {body}"
    );
    assert_eq!(body["providers"]["slate"]["http_status"], 401, "{body}");
    assert!(
        body["providers"]["slate"]["failures"].as_u64().unwrap_or(0) >= 1,
        "{body}"
    );
    let errors = log_lines(
        &d,
        &["ERROR", "refused our credentials", "provider=slate", &id],
    );
    assert_eq!(
        errors.len(),
        1,
        "logged once per interval:\n{}",
        d.stderr_tail(40)
    );
    assert!(
        log_lines(&d, &["refused our credentials"]).len() < vendor.starts().len(),
        "throttled: {:?}",
        vendor.starts()
    );

    // Backoff grows: later gaps between start attempts are not shorter.
    let attempts_at_4 = vendor.starts().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let more = vendor.starts().len() - attempts_at_4;
    assert!(
        more <= 3,
        "backoff (base 50ms, max 500ms) bounds retries: {more} in 600ms"
    );

    // The token works again: the run completes and the problem clears.
    vendor.set_start(None);
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["last_error"].is_null(), "{run}");
    let cbs = rx.for_run(&id);
    assert_eq!(cbs.len(), 1, "{cbs:?}");
    assert_eq!(cbs[0].event_type(), "run.succeeded");
    let (status, body) = d.readiness().await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["providers"].as_object().is_some_and(|m| m.is_empty()),
        "cleared by the next success: {body}"
    );
}

#[tokio::test]
async fn a_vendor_echoing_our_token_leaks_it_nowhere() {
    let vendor = ScriptedVendor::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cb_token = "cbq_9f8e7d6c5b4a";
    let cfg = config(&vendor, &rx, &format!("?token={cb_token}&v=1")).await;
    let dir = tempfile::tempdir().unwrap();
    let text = cfg.render(dir.path());
    let d = Daemon::start_with_env(dir, &text, &[("RUNBRIDGE_LOG", "debug")]).await;
    let echo = r#"{"error":"bad_request","echo":{"headers":{"authorization":"{AUTH}"}},"hint":"{AUTH} is not allowed here"}"#;

    // On start: a 400 ends the run with the vendor's answer (scrubbed).
    vendor.set_start(Some(Scripted::json(400, echo)));
    let a = d.trigger("gh", "echo-a", "octo/a").await;
    let run_a = d.wait_done(&a).await;
    assert_eq!(run_a["status"], "failed", "{run_a}");
    let vendor_error = run_a["error"]["vendor_error"].to_string();
    assert!(vendor_error.contains("Bearer ***"), "{run_a}");
    vendor.set_start(None);

    // On poll: a 500, a text answer and a 401 that all echo the header.
    vendor.set_poll(Some(Scripted::json(500, echo)));
    let b = d.trigger("gh", "echo-b", "octo/b").await;
    d.wait_run(&b, "poll 500 recorded, scrubbed", |r| {
        r["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500") && e.contains("***"))
    })
    .await;
    vendor.set_poll(Some(Scripted::text(
        502,
        "text/plain",
        "upstream said: {AUTH}",
    )));
    d.wait_run(&b, "poll 502 recorded, scrubbed", |r| {
        r["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("502") && e.contains("***"))
    })
    .await;
    vendor.set_poll(Some(Scripted::json(401, echo)));
    d.wait_run(&b, "poll 401 recorded", |r| {
        r["last_error"].as_str().is_some_and(|e| e.contains("401"))
    })
    .await;
    vendor.set_poll(Some(Scripted::json(
        200,
        r#"{"status":"COMPLETED","output":{"debug":"{AUTH}"},"error":null}"#,
    )));
    let run_b = d.wait_done(&b).await;
    assert_eq!(run_b["status"], "succeeded", "{run_b}");
    assert_eq!(run_b["output"]["debug"], "Bearer ***", "{run_b}");

    // The token appears nowhere: callbacks, admin API, logs.
    let callbacks: String = rx.records().iter().map(|c| c.raw.clone()).collect();
    assert_eq!(rx.records().len(), 2, "one callback per run");
    let (_, list) = d.admin_get("/runs?limit=100").await;
    let admin = format!("{}{}{}", d.get_run(&a).await, d.get_run(&b).await, list);
    let logs = d.stderr();
    assert!(logs.contains("DEBUG"), "ran at debug level");
    for (what, text) in [
        ("callbacks", &callbacks),
        ("admin API", &admin),
        ("logs", &logs),
    ] {
        assert!(
            !text.contains(SLATE_TOKEN),
            "vendor token in {what}:\n{text}"
        );
        assert!(
            !text.contains(cb_token),
            "callback URL token in {what}:\n{text}"
        );
    }
    let poll_5xx = log_lines(&d, &["WARN", "provider=slate", &b, "server_error"]);
    assert_eq!(
        poll_5xx.len(),
        1,
        "poll 5xx logged once per interval:\n{logs}"
    );
    assert!(poll_5xx[0].contains("Bearer ***"), "{}", poll_5xx[0]);
    let shown = run_a["deliveries"][0]["url"].as_str().unwrap_or_default();
    assert_eq!(shown, format!("{}?token=***&v=***", rx.url()), "{run_a}");
    assert!(
        log_lines(&d, &["callback delivered", "token=***"]).len() == 2,
        "{}",
        d.stderr_tail(30)
    );
}

#[tokio::test]
async fn garbage_status_answers_are_failed_calls_recorded_and_logged() {
    let vendor = ScriptedVendor::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut cfg = config(&vendor, &rx, "").await;
    cfg.provider_timeout = "300ms".into();
    let d = Daemon::start(&cfg).await;
    vendor.set_poll(Some(Scripted::text(
        200,
        "text/html",
        "<!DOCTYPE html><html><body>Maintenance</body></html>",
    )));
    let id = d.trigger("gh", "garbage-1", "octo/g").await;
    let cases: [(Scripted, &str); 4] = [
        (
            Scripted::text(200, "text/html", "<!DOCTYPE html><html>Maintenance</html>"),
            "not JSON",
        ),
        (
            Scripted::json(200, r#"{"run_id":"v-1","status":"RUNN"#),
            "not JSON",
        ),
        (Scripted::json(200, "{}"), "without a recognizable status"),
        (Scripted::slow(Duration::from_secs(1)), "timed out"),
    ];
    for (answer, says) in cases {
        vendor.set_poll(Some(answer));
        let run = d
            .wait_run(&id, says, |r| {
                r["last_error"].as_str().is_some_and(|e| e.contains(says))
            })
            .await;
        assert_eq!(run["phase"], "tracking", "not a silent `running`: {run}");
        assert!(run["failures"].as_u64().unwrap_or(0) >= 1, "{run}");
    }
    for kind in ["bad_answer", "timeout"] {
        let lines = log_lines(&d, &["provider=slate", &id, &format!("kind=\"{kind}\"")]);
        let lines = if lines.is_empty() {
            log_lines(&d, &["provider=slate", &id, &format!("kind={kind}")])
        } else {
            lines
        };
        assert!(
            !lines.is_empty(),
            "a {kind} line names provider and run:\n{}",
            d.stderr_tail(40)
        );
    }
    vendor.set_poll(None);
    let run = d.wait_done(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["last_error"].is_null(), "{run}");
    assert_eq!(rx.for_run(&id).len(), 1);
}
