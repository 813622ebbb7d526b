//! `runbridge send` (the real binary) against a running daemon: a route of
//! every verification kind accepts what it signs (202, a run created), and
//! the same route refuses it (401) when the CLI's config holds another
//! secret. Also: `--event` reaches a route filtering on GitHub's event
//! header, every send carries a fresh delivery id, required inputs are
//! filled in a sample, `--file` is sent as given, and no secret is printed.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

const WHSEC_GOOD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_BAD: &str = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";

/// One route per kind (and combinations), every secret derived from `s`
/// (`whsec` for Standard Webhooks), so two configs differ only in secrets.
fn routes(s: &str, whsec: &str) -> String {
    let route = |name: &str, verify: &str, extra: &str| {
        format!(
            "\n[routes.{name}]\nprovider = \"slate\"\nworkflow_id = \"wf_{name}\"\n{extra}verify = {verify}\n"
        )
    };
    [
        route("gh", &format!(r#"{{ kind = "github", secret = "{s}-gh" }}"#), ""),
        route("st", &format!(r#"{{ kind = "stripe", secret = "whsec_{s}st" }}"#), ""),
        route("sl", &format!(r#"{{ kind = "slack", secret = "{s}-sl" }}"#), ""),
        route("sh", &format!(r#"{{ kind = "shopify", secret = "{s}-sh" }}"#), ""),
        route("sw", &format!(r#"{{ kind = "standard-webhooks", secret = "{whsec}" }}"#), ""),
        route(
            "hm",
            &format!(
                r#"{{ kind = "hmac", header = "X-Signature", prefix = "sha512=", encoding = "base64", algorithm = "sha512", timestamp_header = "X-Timestamp", id_header = "X-Request-Id", separator = ":", secret = "{s}-hm" }}"#
            ),
            "",
        ),
        route("tk", &format!(r#"{{ kind = "token", token = "{s}-tk" }}"#), ""),
        route(
            "tkh",
            &format!(r#"{{ kind = "token", token = "{s}-tkh", header = "X-Gitlab-Token" }}"#),
            "",
        ),
        route(
            "tkq",
            &format!(r#"{{ kind = "token", token = "{s}-tkq", query = "key" }}"#),
            "",
        ),
        route(
            "ba",
            &format!(r#"{{ kind = "basic", user = "hooks", password = "{s}-ba" }}"#),
            "",
        ),
        // ip_allow has nothing to sign; paired with a token so a wrong
        // secret can be refused.
        route(
            "ip",
            &format!(
                r#"[{{ kind = "ip_allow", allow = ["127.0.0.0/8"] }}, {{ kind = "token", token = "{s}-ip", header = "X-Token" }}]"#
            ),
            "",
        ),
        route(
            "combo",
            &format!(
                r#"[{{ kind = "token", token = "{s}-c1", header = "X-Token" }}, {{ kind = "github", secret = "{s}-c2" }}, {{ kind = "hmac", header = "X-Extra", secret = "{s}-c3" }}]"#
            ),
            "",
        ),
        // Filters on the event and dedupes on a configured header; needs a
        // body pointer and a header input.
        route(
            "ghf",
            &format!(r#"{{ kind = "github", secret = "{s}-ghf" }}"#),
            "dedupe_header = \"X-GitHub-Delivery\"\nfilter = { at = \"header.X-GitHub-Event\", equals = \"issues\" }\n",
        ) + "\n[[routes.ghf.inputs]]\nname = \"customer\"\npointer = \"/customer/name\"\n\
             \n[[routes.ghf.inputs]]\nname = \"tenant\"\nheader = \"X-Tenant\"\n",
    ]
    .concat()
}

/// The daemon's base config (no routes) with `routes` appended.
fn config_text(slate: &FakeSlate, dir: &Path, routes: &str) -> String {
    Config::new(slate).render(dir) + routes
}

/// Runs `runbridge send` with `args`; returns (exit code, stdout, stderr).
async fn send(config: &Path, d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_runbridge"));
    scrub_env(&mut cmd);
    cmd.arg("send")
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--url")
        .arg(&d.base);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("send finished in time")
        .expect("send ran");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON answer printed after the `HTTP nnn` line.
fn answer(stdout: &str) -> (u16, Value) {
    let (first, rest) = stdout.split_once('\n').unwrap_or((stdout, ""));
    let status = first
        .strip_prefix("HTTP ")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no status line in {stdout:?}"));
    (status, serde_json::from_str(rest).unwrap_or(Value::Null))
}

async fn run_exists(d: &Daemon, id: &str) -> Value {
    let resp = d
        .http
        .get(d.url(&format!("/runs/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET run");
    assert_eq!(resp.status(), 200, "run {id} not found");
    resp.json().await.expect("run json")
}

const KINDS: [&str; 12] = [
    "gh", "st", "sl", "sh", "sw", "hm", "tk", "tkh", "tkq", "ba", "ip", "combo",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_accepted_by_every_kind_and_refused_with_another_secret() {
    let slate = FakeSlate::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(&slate, dir.path(), &routes("good", WHSEC_GOOD));
    let d = Daemon::start_with_text(dir, &text).await;
    // The CLI's own copies: the same config, and one with other secrets.
    let good = d.dir().join("cli-good.toml");
    std::fs::write(&good, &text).expect("write");
    let bad = d.dir().join("cli-bad.toml");
    let bad_text = config_text(&slate, d.dir(), &routes("wrong", WHSEC_BAD));
    std::fs::write(&bad, &bad_text).expect("write");

    for route in KINDS {
        let (code, out, err) = send(&good, &d, &[route]).await;
        let (status, body) = answer(&out);
        assert_eq!(
            (code, status),
            (0, 202),
            "{route}: {out} {err} {}",
            d.stderr_tail(20)
        );
        let id = body["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{route}: no run started: {out}"));
        let run = run_exists(&d, id).await;
        assert_eq!(run["route"], route, "{run}");
        for secret in ["good-", "whsec_good", WHSEC_GOOD] {
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "{route}: a secret printed: {out} {err}"
            );
        }

        let (code, out, _) = send(&bad, &d, &[route]).await;
        let (status, body) = answer(&out);
        assert_eq!(
            (code, status),
            (1, 401),
            "{route} with another secret: {out}"
        );
        assert_eq!(body["error"], "unauthorized", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_sets_the_event_fresh_ids_and_required_inputs() {
    let slate = FakeSlate::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(&slate, dir.path(), &routes("good", WHSEC_GOOD));
    let d = Daemon::start_with_text(dir, &text).await;
    let cfg = d.dir().join("cli.toml");
    std::fs::write(&cfg, &text).expect("write");

    // Without --event the default `push` does not pass the filter.
    let (code, out, _) = send(&cfg, &d, &["ghf"]).await;
    let (status, body) = answer(&out);
    assert_eq!((code, status), (0, 202), "{out}");
    assert_eq!(body["ignored"], true, "{body}");

    // With it, two sends start two runs (a fresh delivery id each), with
    // the required inputs filled.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (code, out, err) = send(&cfg, &d, &["ghf", "--event", "issues"]).await;
        let (status, body) = answer(&out);
        assert_eq!((code, status), (0, 202), "{out} {err}");
        let id = body["run_id"].as_str().expect("run id").to_string();
        let run = run_exists(&d, &id).await;
        assert_eq!(run["inputs"]["customer"], "sample", "{run}");
        assert_eq!(run["inputs"]["tenant"], "sample", "{run}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);

    // --file is sent as given, with -H headers before signing.
    let file = d.dir().join("payload.json");
    std::fs::write(&file, br#"{"customer": {"name": "acme"}}"#).expect("write");
    let f = file.to_string_lossy().to_string();
    let (code, out, err) = send(
        &cfg,
        &d,
        &[
            "ghf",
            "--event",
            "issues",
            "--file",
            &f,
            "-H",
            "X-Tenant: t1",
        ],
    )
    .await;
    let (status, body) = answer(&out);
    assert_eq!((code, status), (0, 202), "{out} {err}");
    let run = run_exists(&d, body["run_id"].as_str().expect("run id")).await;
    assert_eq!(run["inputs"]["customer"], "acme", "{run}");
    assert_eq!(run["inputs"]["tenant"], "t1", "{run}");

    // An unknown route is a usage error naming the routes.
    let (code, _, err) = send(&cfg, &d, &["nope"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("no route \"nope\"") && err.contains("ghf"),
        "{err}"
    );

    // A daemon that is not there: exit 1, no panic.
    let (code, _, err) = {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_runbridge"));
        scrub_env(&mut cmd);
        let out = cmd
            .args([
                "send",
                "gh",
                "--url",
                "http://127.0.0.1:9",
                "--timeout",
                "2s",
            ])
            .arg("--config")
            .arg(&cfg)
            .output()
            .await
            .expect("ran");
        (
            out.status.code().unwrap_or(-1),
            String::new(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Checks a captured request with the sender's official library (stripe,
/// slack_sdk, standardwebhooks); exit 3 when the library is missing.
const OFFICIAL_VERIFY: &str = r#"
import base64, json, sys
kind, secret = sys.argv[1], sys.argv[2]
data = json.load(sys.stdin)
body = base64.b64decode(data["body"])
h = data["headers"]
try:
    if kind == "stripe":
        import stripe
        stripe.WebhookSignature.verify_header(body.decode(), h["stripe-signature"], secret, tolerance=300)
    elif kind == "slack":
        from slack_sdk.signature import SignatureVerifier
        ok = SignatureVerifier(secret).is_valid(
            body=body, timestamp=h["x-slack-request-timestamp"], signature=h["x-slack-signature"])
        sys.exit(0 if ok else 1)
    elif kind == "standard-webhooks":
        from standardwebhooks.webhooks import Webhook
        Webhook(secret).verify(body, h)
except ImportError as e:
    print(f"official library missing: {e}", file=sys.stderr)
    sys.exit(3)
except Exception as e:
    print(f"refused: {e!r}", file=sys.stderr)
    sys.exit(1)
"#;

/// Runs [`OFFICIAL_VERIFY`]; `None` (loudly) when python or the library is absent.
fn official_accepts(kind: &str, secret: &str, headers: &Value, body: &[u8]) -> Option<bool> {
    use base64::Engine;
    use std::io::Write;
    let input = serde_json::json!({
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    });
    let child = std::process::Command::new("python3")
        .args(["-c", OFFICIAL_VERIFY, kind, secret])
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
    child
        .stdin
        .take()?
        .write_all(input.to_string().as_bytes())
        .ok()?;
    let out = child.wait_with_output().ok()?;
    match out.status.code() {
        Some(0) => Some(true),
        Some(3) => {
            eprintln!(
                "!!!!! SKIPPED {kind}: {} (.ci/run installs it) !!!!!",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        _ => Some(false),
    }
}

/// A one-route-at-a-time capture server: records what `send` posts.
async fn capture() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(Value, Vec<u8>)>,
) {
    use axum::{body::Bytes, http::HeaderMap, routing::post, Router};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hooks/{route}",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let h: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            Value::String(v.to_str().unwrap_or_default().to_string()),
                        )
                    })
                    .collect();
                let _ = tx.send((Value::Object(h), body.to_vec()));
                (axum::http::StatusCode::ACCEPTED, "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_libraries_accept_what_send_signs() {
    let slate = FakeSlate::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cli.toml");
    std::fs::write(
        &cfg,
        config_text(&slate, dir.path(), &routes("good", WHSEC_GOOD)),
    )
    .expect("write");
    let (url, mut got) = capture().await;
    for (route, kind, secret, other) in [
        ("st", "stripe", "whsec_goodst", "whsec_wrongst"),
        ("sl", "slack", "good-sl", "wrong-sl"),
        ("sw", "standard-webhooks", WHSEC_GOOD, WHSEC_BAD),
    ] {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_runbridge"));
        scrub_env(&mut cmd);
        let out = cmd
            .args(["send", route, "--url", &url])
            .arg("--config")
            .arg(&cfg)
            .output()
            .await
            .expect("ran");
        assert!(out.status.success(), "{route}: {out:?}");
        let (headers, body) = tokio::time::timeout(DEADLINE, got.recv())
            .await
            .expect("captured in time")
            .expect("captured");
        match official_accepts(kind, secret, &headers, &body) {
            None => continue,
            Some(ok) => assert!(ok, "{kind}: the official library refused {headers}"),
        }
        assert_eq!(
            official_accepts(kind, other, &headers, &body),
            Some(false),
            "{kind}: accepted under another secret"
        );
    }
}
