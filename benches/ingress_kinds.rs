//! Ingress throughput per verification kind, in one run: GitHub, Stripe,
//! Slack (form bodies), Standard Webhooks, and GitHub with a filter that
//! ignores half the requests. Each kind gets the same load (`BENCH_CONNS`
//! keep-alive connections firing back to back for `BENCH_SECONDS` after a
//! one-second warm-up) against one release daemon with a simulated provider,
//! and prints triggers/s and p99 beside GitHub's.
//!
//! ```sh
//! cargo bench --bench ingress_kinds
//! BENCH_SECONDS=10 BENCH_CONNS=64 cargo bench --bench ingress_kinds
//! ```

use runbridge::signing::{hmac_sha256, sign_github, WebhookKey};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const GH: &str = "bench-gh-secret";
const STRIPE: &str = "whsec_bench_stripe";
const SLACK: &str = "bench-slack-secret";
const SW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(dir: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_token = "bench"

[storage]
path = "{db}"

[scheduler]
poll_interval = "1h"
max_poll_interval = "1h"
concurrency = 256

[providers.sim]
kind = "simulated"
duration = "1h"

[routes.github]
provider = "sim"
workflow_id = "wf"
verify = {{ kind = "github", secret = "{GH}" }}

[routes.stripe]
provider = "sim"
workflow_id = "wf"
verify = {{ kind = "stripe", secret = "{STRIPE}" }}

[routes.slack]
provider = "sim"
workflow_id = "wf"
verify = {{ kind = "slack", secret = "{SLACK}" }}

[routes.standard-webhooks]
provider = "sim"
workflow_id = "wf"
verify = {{ kind = "standard-webhooks", secret = "{SW}" }}

[routes.github-filtered]
provider = "sim"
workflow_id = "wf"
verify = {{ kind = "github", secret = "{GH}" }}
filter = {{ at = "/keep", equals = true }}
"#,
        db = dir.join("db").display()
    )
}

/// A ~1 KB push-like JSON body, unique per request.
fn json_body(seq: u64) -> Vec<u8> {
    let mut doc = json!({
        "id": format!("evt_{seq}"),
        "keep": seq % 2 == 0,
        "ref": "refs/heads/main",
        "repository": {"id": seq, "full_name": format!("bench-org/repo-{}", seq % 256)},
        "head_commit": {"message": format!("Bench commit {seq}"), "modified": ["src/lib.rs"]},
        "padding": ""
    });
    let len = serde_json::to_vec(&doc).map(|b| b.len()).unwrap_or(0);
    doc["padding"] = Value::String("x".repeat(1024usize.saturating_sub(len)));
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// A ~1 KB Slack slash-command form.
fn form_body(seq: u64) -> Vec<u8> {
    let mut s = format!(
        "token=x&team_id=T1&channel_name=bench&user_name=bot&command=%2Fdeploy&text=run+{seq}&trigger_id={seq}.1&pad="
    );
    s.push_str(&"x".repeat(1024usize.saturating_sub(s.len())));
    s.into_bytes()
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Body and headers of request `seq` for `kind`, signed as the sender would.
fn request(kind: &str, seq: u64, sw: &WebhookKey) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let ts = now_s();
    match kind {
        "stripe" => {
            let body = json_body(seq);
            let t = ts.to_string();
            let mac = hmac_sha256(STRIPE.as_bytes(), &[t.as_bytes(), b".", &body]);
            let h = vec![
                ("content-type", "application/json".into()),
                ("stripe-signature", format!("t={t},v1={}", hex::encode(mac))),
            ];
            (body, h)
        }
        "slack" => {
            let body = form_body(seq);
            let t = ts.to_string();
            let mac = hmac_sha256(SLACK.as_bytes(), &[b"v0:", t.as_bytes(), b":", &body]);
            let h = vec![
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("x-slack-request-timestamp", t),
                ("x-slack-signature", format!("v0={}", hex::encode(mac))),
            ];
            (body, h)
        }
        "standard-webhooks" => {
            let body = json_body(seq);
            let id = format!("msg_{seq}");
            let sig = sw.sign(&id, ts, &body);
            let h = vec![
                ("content-type", "application/json".into()),
                ("webhook-id", id),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sig),
            ];
            (body, h)
        }
        _ => {
            let body = json_body(seq);
            let h = vec![
                ("content-type", "application/json".into()),
                ("x-github-event", "push".into()),
                ("x-github-delivery", format!("d-{seq}")),
                ("x-hub-signature-256", sign_github(GH.as_bytes(), &body)),
            ];
            (body, h)
        }
    }
}

struct Result1 {
    kind: &'static str,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    ignored: u64,
    errors: u64,
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

async fn load(
    base: &str,
    route: &'static str,
    kind: &'static str,
    conns: usize,
    warmup: Duration,
    measure: Duration,
    offset: u64,
) -> Result1 {
    let url = Arc::new(format!("{base}/hooks/{route}"));
    let sw = Arc::new(WebhookKey::parse(SW).expect("key"));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conns {
        let (url, sw) = (url.clone(), sw.clone());
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        tasks.spawn(async move {
            let mut out = Vec::new();
            let mut seq = 0u64;
            while t0.elapsed() < warmup + measure {
                let n = offset + (c as u64) * 10_000_000 + seq;
                seq += 1;
                let (body, hs) = request(kind, n, &sw);
                let mut req = client.post(url.as_str()).body(body);
                for (k, v) in hs {
                    req = req.header(k, v);
                }
                let start = Instant::now();
                let (code, ignored) = match req.send().await {
                    Ok(r) => {
                        let code = r.status().as_u16();
                        let b = r.bytes().await.unwrap_or_default();
                        (code, b.starts_with(b"{\"ignored\":true"))
                    }
                    Err(_) => (0, false),
                };
                let done = t0.elapsed();
                if done >= warmup && done < warmup + measure {
                    out.push((start.elapsed().as_micros() as u32, code, ignored));
                }
            }
            out
        });
    }
    let mut lat = Vec::new();
    let (mut ignored, mut errors) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        for (l, code, ign) in r.unwrap_or_default() {
            if code == 202 {
                lat.push(l);
                ignored += u64::from(ign);
            } else {
                errors += 1;
            }
        }
    }
    lat.sort_unstable();
    Result1 {
        kind,
        per_s: lat.len() as f64 / measure.as_secs_f64(),
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
        ignored,
        errors,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 5);
    let conns = env_num("BENCH_CONNS", 64) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("runbridge.toml");
    std::fs::write(&cfg, config(dir.path())).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_runbridge"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUNBRIDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start runbridge");
    let stdout = child.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or("")
        .trim()
        .to_string();
    let base = format!("http://{addr}");
    println!(
        "ingress per verification kind: {conns} connections, 1 s warm-up + {seconds} s each, ~1 KB bodies, one daemon"
    );
    let kinds: [(&str, &str); 5] = [
        ("github", "github"),
        ("stripe", "stripe"),
        ("slack", "slack"),
        ("standard-webhooks", "standard-webhooks"),
        ("github-filtered", "github"),
    ];
    let mut results = Vec::new();
    for (i, (route, kind)) in kinds.iter().enumerate() {
        let r = load(
            &base,
            route,
            kind,
            conns,
            Duration::from_secs(1),
            Duration::from_secs(seconds),
            (i as u64) << 40,
        )
        .await;
        let r = Result1 { kind: route, ..r };
        results.push(r);
    }
    let gh = results
        .first()
        .map(|r| (r.per_s, r.p99_ms))
        .unwrap_or((1.0, 1.0));
    println!(
        "\n| route (kind) | 2xx/s | vs GitHub | p50 ms | p99 ms | p99 vs GitHub | ignored | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.0} | {:.2}x | {:.1} | {:.1} | {:.2}x | {} | {} |",
            r.kind,
            r.per_s,
            r.per_s / gh.0.max(1e-9),
            r.p50_ms,
            r.p99_ms,
            r.p99_ms / gh.1.max(1e-9),
            r.ignored,
            r.errors
        );
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}
