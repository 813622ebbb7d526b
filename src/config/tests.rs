//! Unit tests of loading, layering and checking the configuration.

use super::*;

fn load_str(toml: &str) -> Result<Settings, ConfigError> {
    let cfg = config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml))
        .build()
        .unwrap();
    Settings::from_config(cfg)
}

const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        body_limit = "64KiB"
        admin_token = "t"
        [providers.sim]
        kind = "simulated"
        duration = "1s"
        [routes.demo]
        provider = "sim"
        workflow_id = "wf"
        verify = { kind = "github", secret = "s" }
        [[routes.demo.inputs]]
        name = "brandDomain"
        pointer = "/a/b"
        [[routes.demo.inputs]]
        name = "c"
        value = { camelCase = 1 }
        [[routes.demo.callbacks]]
        url = "http://127.0.0.1:1/cb"
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    "#;

#[test]
fn admin_tokens_have_roles_and_the_old_key_is_a_write_token() {
    let text = format!(
        "{GOOD}\n[admin]\nalert_url = \"https://ops.example/alerts\"\n\
             alert_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
             [[admin.tokens]]\ntoken = \"dashboard-token\"\nrole = \"read\"\n"
    );
    let s = load_str(&text).unwrap();
    let roles: Vec<(&str, Role)> = s
        .admin
        .tokens
        .iter()
        .map(|t| (t.token.expose(), t.role))
        .collect();
    assert_eq!(roles, [("t", Role::Write), ("dashboard-token", Role::Read)]);
    assert_eq!(s.admin.recent_requests, 1000);
    assert_eq!(s.admin.alert_keys.len(), 1);
    assert!(!format!("{:?}", s.admin).contains("dashboard-token"));

    let bad = format!(
        "{GOOD}\n[admin]\nalert_url = \"https://ops.example/a\"\nrecent_requests = 0\n\
             [[admin.tokens]]\ntoken = \"x\"\nrole = \"read\"\n"
    );
    let keys = |text: &str| -> Vec<String> {
        load_str(text)
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| p.key)
            .collect()
    };
    assert_eq!(keys(&bad), ["admin.alert_secret", "admin.recent_requests"]);
    let role = format!("{GOOD}\n[[admin.tokens]]\ntoken = \"x\"\nrole = \"admin\"\n");
    assert_eq!(keys(&role), ["admin.tokens[0].role"]);
}

#[test]
fn good_config_loads() {
    let s = load_str(GOOD).unwrap();
    assert_eq!(s.server.body_limit, 64 * 1024);
    let r = &s.routes["demo"];
    assert_eq!(
        r.inputs[0].name, "brandDomain",
        "input names keep their case"
    );
    assert_eq!(
        r.inputs[1].source,
        InputSource::Value(serde_json::json!({"camelCase": 1}))
    );
    assert!(matches!(
        r.verify.checks(),
        [crate::ingress::verify::Check::Github(_)]
    ));
    assert_eq!(s.scheduler.poll_interval, Duration::from_secs(5));
    let dbg = format!("{s:?}");
    assert!(
        !dbg.contains("\"t\""),
        "secrets never in debug output: {dbg}"
    );
}

#[test]
fn callback_options_are_checked() {
    let base = GOOD
        .split("[[routes.demo.callbacks]]")
        .next()
        .unwrap_or(GOOD);
    let good = format!(
            "{base}
            [[routes.demo.callbacks]]
            url = \"http://127.0.0.1:1/cb\"
            secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]
            events = [\"run.started\", \"run.succeeded\"]
            headers = {{ \"X-Env\" = \"prod\" }}
            max_in_flight = 2
            rate_per_s = 10
            burst = 5
            breaker_failures = 5
            breaker_cooldown = \"30s\"
            "
        );
    let s = load_str(&good).unwrap();
    let c = &s.routes["demo"].callbacks[0];
    assert_eq!(c.keys.len(), 2);
    assert_eq!(c.headers[0].name.as_str(), "x-env");
    assert_eq!(c.limit.max_in_flight, Some(2));
    let bad = format!(
            "{base}
            [[routes.demo.callbacks]]
            url = \"http://127.0.0.1:1/cb\"
            secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"
            secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]
            headers = {{ \"Webhook-Id\" = \"x\", \"Content-Type\" = \"text/plain\", \"Connection\" = \"close\", \"Host\" = \"h\", \"Bad Name\" = \"v\" }}
            burst = 3
            breaker_cooldown = \"2h\"
            [[routes.demo.callbacks]]
            url = \"http://127.0.0.1:1/cb2\"
            secrets = []
            events = [\"run.begun\"]
            max_in_flight = 0
            "
        );
    let err = load_str(&bad).unwrap_err();
    for key in [
        "routes.demo.callbacks[0].secrets",
        "routes.demo.callbacks[0].headers.Webhook-Id",
        "routes.demo.callbacks[0].headers.Content-Type",
        "routes.demo.callbacks[0].headers.Connection",
        "routes.demo.callbacks[0].headers.Host",
        "routes.demo.callbacks[0].headers.Bad Name",
        "routes.demo.callbacks[0].burst",
        "routes.demo.callbacks[0].breaker_cooldown",
        "routes.demo.callbacks[1].secrets",
        "routes.demo.callbacks[1].events",
        "routes.demo.callbacks[1].max_in_flight",
    ] {
        assert!(err.0.iter().any(|p| p.key == key), "{key}: {err}");
    }
}

#[test]
fn every_problem_is_named_by_key() {
    let bad = r#"
            bogus = 1
            [server]
            listen = "nope"
            colour = "red"
            [scheduler]
            poll_interval = "5 parsecs"
            [providers.sim]
            kind = "simulated"
            outcome = "maybe"
            [routes.a]
            provider = "missing"
            workflow_id = "wf"
            verify = { kind = "token", token = "env:RUNBRIDGE_TEST_SURELY_UNSET" }
            [[routes.a.callbacks]]
            url = "ftp://x"
            secret = "whsec_short"
        "#;
    let err = load_str(bad).unwrap_err();
    let text = err.to_string();
    for key in [
        "bogus",
        "server.colour",
        "scheduler.poll_interval",
        "providers.sim.outcome",
        "routes.a.provider",
        "routes.a.verify.token",
        "routes.a.callbacks[0].url",
        "routes.a.callbacks[0].secret",
    ] {
        assert!(
            err.0.iter().any(|p| p.key == key),
            "expected a problem at {key}; got:\n{text}"
        );
    }
}

/// Every duration key of a config, as `(table, key)` TOML edits to GOOD.
const DURATION_KEYS: &[&str] = &[
    "server.request_timeout",
    "server.shutdown_timeout",
    "scheduler.poll_interval",
    "scheduler.poll_slowdown_after",
    "scheduler.max_poll_interval",
    "scheduler.run_timeout",
    "scheduler.retry_base",
    "scheduler.retry_max",
    "delivery.timeout",
    "delivery.max_retry_after",
    "providers.sim.duration",
    "routes.demo.run_timeout",
    "routes.demo.dedupe_ttl",
];

#[test]
fn nine_thousand_years_is_rejected_everywhere() {
    for key in DURATION_KEYS {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(GOOD, config::FileFormat::Toml))
            .set_override(*key, "9000y")
            .unwrap()
            .build()
            .unwrap();
        let err = Settings::from_config(cfg).unwrap_err();
        assert!(
            err.0
                .iter()
                .any(|p| p.key == *key && p.message.contains("maximum")),
            "{key}: {err}"
        );
    }
    let sched = GOOD.to_string() + "\n[delivery]\nschedule = [\"0s\", \"9000y\"]\n";
    let err = load_str(&sched).unwrap_err();
    assert!(
        err.0.iter().any(|p| p.key == "delivery.schedule[1]"),
        "{err}"
    );
    let sw = GOOD.replace(
            "verify = { kind = \"github\", secret = \"s\" }",
            "verify = { kind = \"standard-webhooks\", secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", tolerance = \"9000y\" }",
        );
    let err = load_str(&sw).unwrap_err();
    assert!(
        err.0
            .iter()
            .any(|p| p.key == "routes.demo.verify.tolerance"),
        "{err}"
    );
    for (key, value) in [
        ("server.body_limit", "1TiB"),
        ("storage.cache_capacity", "1PiB"),
        ("scheduler.concurrency", "1000000000"),
    ] {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(GOOD, config::FileFormat::Toml))
            .set_override(key, value)
            .unwrap()
            .build()
            .unwrap();
        let err = Settings::from_config(cfg).unwrap_err();
        assert!(err.0.iter().any(|p| p.key == key), "{key}: {err}");
    }
}

#[test]
fn numeric_secrets_are_accepted_and_never_echoed() {
    // As an env override arrives with try_parsing(true): an integer.
    let cfg = config::Config::builder()
        .add_source(config::File::from_str(GOOD, config::FileFormat::Toml))
        .set_override("server.admin_token", 987_654_321_i64)
        .unwrap()
        .set_override("routes.demo.verify.secret", 123_456_789_i64)
        .unwrap()
        .build()
        .unwrap();
    let s = Settings::from_config(cfg).unwrap();
    assert_eq!(s.server.admin_token.unwrap().expose(), "987654321");
    match s.routes["demo"].verify.checks() {
        [crate::ingress::verify::Check::Github(g)] => {
            assert_eq!(g.secrets[0].expose(), "123456789")
        }
        other => panic!("{other:?}"),
    }
    // Wrong shapes and bad values: the error names the key, never the value.
    let bad = GOOD
        .replace(
            "verify = { kind = \"github\", secret = \"s\" }",
            "verify = { kind = \"standard-webhooks\", secret = 55555555 }",
        )
        .replace(
            "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
            "secret = [44444444]",
        );
    let err = load_str(&bad).unwrap_err();
    let text = err.to_string();
    assert!(
        !text.contains("55555555") && !text.contains("44444444"),
        "{text}"
    );
    assert!(
        err.0.iter().any(|p| p.key.starts_with("routes.demo")),
        "{text}"
    );
    let tagged = GOOD.replace(
        "kind = \"simulated\"\n        duration = \"1s\"",
        "kind = \"slate\"\n        base_url = \"nope\"\n        token = 31415926535",
    );
    let err = load_str(&tagged).unwrap_err();
    assert!(!err.to_string().contains("31415926535"), "{err}");
    assert!(
        err.0.iter().any(|p| p.key == "providers.sim.base_url"),
        "{err}"
    );
}

#[test]
fn toml_syntax_errors_do_not_quote_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nadmin_token = sup3r_s3cret_value\n").unwrap();
    let err = Settings::load(&path).unwrap_err().to_string();
    assert!(!err.contains("sup3r_s3cret_value"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn problems_come_in_a_stable_order_without_cascades() {
    let text = "[server]\nlisten = \"nope\"\n\
            [providers.x]\nkind = \"bogus\"\n\
            [routes.a]\nprovider = \"x\"\nworkflow_id = \"w\"\nverify = { kind = \"none\" }\n\
            [routes.b]\nprovider = \"y\"\nworkflow_id = \"\"\nverify = { kind = \"none\" }\n\
            [[routes.b.callbacks]]\nurl = \"http://h/\"\nsecret = \"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
    let first = load_str(text).unwrap_err().to_string();
    for _ in 0..5 {
        assert_eq!(load_str(text).unwrap_err().to_string(), first);
    }
    let keys: Vec<String> = load_str(text)
        .unwrap_err()
        .0
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(
        keys,
        [
            "server.listen",
            "providers.x.kind",
            "routes.b.provider",
            "routes.b.workflow_id",
            "routes.b.callbacks[0].secret",
        ],
        "{first}"
    );
    assert!(first.contains("(configured: x)"), "{first}");
    assert!(
        !first.contains("routes.a"),
        "no cascade from provider x: {first}"
    );
}

#[test]
fn credential_references_read_the_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), "s3cret-credential\n").unwrap();
    let mut problems = Vec::new();
    let mut add = |k: String, m: String| problems.push(format!("{k}: {m}"));
    // Only this test sets the variable in this process.
    std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
    let ok = resolve_secret("credential:tok", "k", &mut add);
    let bad = resolve_secret("credential:../tok", "k", &mut add);
    std::env::remove_var("CREDENTIALS_DIRECTORY");
    assert_eq!(ok.unwrap().expose(), "s3cret-credential");
    assert!(bad.is_none());
    assert!(
        problems.iter().any(|p| p.contains("plain file name")),
        "{problems:?}"
    );
}

#[test]
fn shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/runbridge.toml");
    Settings::load(&path).unwrap();
}
