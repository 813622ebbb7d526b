//! Shared harness for runbridge's integration tests.
//!
//! * [`Daemon`]: runs the real `runbridge` binary on a config written into a
//!   temporary directory, learns its port from the `listening on` line, and
//!   can SIGKILL it, SIGTERM it and restart it on the same store.
//! * [`FakeSlate`]: an in-process Slate API written from the vendor docs
//!   (shared/seeds/000_*, 001_*, shared/providers.md).
//! * [`Receiver`]: a callback endpoint that verifies every Standard Webhooks
//!   signature with its own code and can be healthy, failing (500) or down
//!   (connection refused).
//!
//! Every wait is a poll-until-deadline: sleeps only happen inside such loops.
#![allow(dead_code)]

pub mod altostrat;
pub mod bridge;
pub mod disk;
pub mod fake;
pub mod onepin;
pub mod retab;
pub mod service;
pub mod vendor;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

type HmacSha256 = Hmac<Sha256>;

/// Generous deadline for anything awaited: CI machines are slow.
pub const DEADLINE: Duration = Duration::from_secs(30);
pub const ADMIN_TOKEN: &str = "admin-secret";
pub const GH_SECRET: &str = "gh-secret";
pub const SLATE_TOKEN: &str = "slat_test";
pub const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const SLATE_PREFIX: &str = "/workflow-service/api/public/v1";

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Calls `f` until it returns `Ok`, sleeping briefly between calls, and
/// panics with the last `Err` description once `deadline` has passed.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = Instant::now() + deadline;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// Signatures (our own code, independent of the daemon's)
// ---------------------------------------------------------------------------

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>` as GitHub sends it.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Base64 HMAC-SHA256 of `"{id}.{timestamp}.{body}"` keyed with the
/// base64-decoded part of a `whsec_` secret (Standard Webhooks).
pub fn standard_webhooks_signature(secret: &str, id: &str, ts: &str, body: &[u8]) -> String {
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .expect("callback secret is base64 after whsec_");
    let mut mac = HmacSha256::new_from_slice(&key).expect("hmac key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// True if any space-separated `v1,<b64>` entry of `header` matches.
pub fn verify_standard_webhooks(
    secret: &str,
    id: &str,
    ts: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let expected = standard_webhooks_signature(secret, id, ts, body);
    header
        .split_whitespace()
        .any(|entry| entry.strip_prefix("v1,") == Some(expected.as_str()))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

// ---------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_millis()
    )
}

/// Lenient RFC 3339 shape check: date `T` time, optional fraction, `Z` or offset.
pub fn is_rfc3339(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|x| x.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !(b[10] == b'T' || b[10] == b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z'] | [b'z'] => true,
        [s, h1, h2, b':', m1, m2] if (*s == b'+' || *s == b'-') => {
            [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// A route as the tests configure it: GitHub-verified, deduped on
/// X-GitHub-Delivery, inputs `repo` (pointer, required), `event` (header,
/// optional) and `source` (constant "tests").
#[derive(Clone, Debug)]
pub struct RouteCfg {
    pub name: String,
    pub provider: String,
    pub workflow_id: String,
    pub run_timeout: Option<String>,
    pub callbacks: Vec<String>,
}

impl RouteCfg {
    pub fn new(name: &str, workflow_id: &str) -> Self {
        RouteCfg {
            name: name.into(),
            provider: "slate".into(),
            workflow_id: workflow_id.into(),
            run_timeout: None,
            callbacks: Vec::new(),
        }
    }
    pub fn callback(mut self, url: &str) -> Self {
        self.callbacks.push(url.into());
        self
    }
    pub fn run_timeout(mut self, t: &str) -> Self {
        self.run_timeout = Some(t.into());
        self
    }
}

/// The daemon's config; rendered to TOML once the temp dir is known.
#[derive(Clone, Debug)]
pub struct Config {
    pub slate_base: String,
    pub body_limit: String,
    pub shutdown_timeout: String,
    pub poll_interval: String,
    pub run_timeout: String,
    pub retry_base: String,
    pub retry_max: String,
    pub schedule: Vec<String>,
    pub delivery_timeout: String,
    pub max_retry_after: String,
    pub provider_timeout: String,
    pub routes: Vec<RouteCfg>,
    /// `delivery.allow_destinations`: loopback by default, since the test
    /// receivers listen there (the daemon's own default admits nothing).
    pub allow_destinations: Vec<String>,
    /// `storage.retention`, when a test needs it short.
    pub retention: Option<String>,
}

pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Config {
    pub fn new(slate: &FakeSlate) -> Self {
        Config {
            slate_base: slate.base_url(),
            body_limit: "64KiB".into(),
            shutdown_timeout: "5s".into(),
            poll_interval: "50ms".into(),
            run_timeout: "30s".into(),
            retry_base: "50ms".into(),
            retry_max: "500ms".into(),
            schedule: [
                "0s", "100ms", "200ms", "300ms", "300ms", "300ms", "300ms", "300ms",
            ]
            .map(String::from)
            .to_vec(),
            delivery_timeout: "2s".into(),
            max_retry_after: "2s".into(),
            provider_timeout: "2s".into(),
            routes: Vec::new(),
            allow_destinations: vec!["127.0.0.0/8".into()],
            retention: None,
        }
    }

    pub fn route(mut self, r: RouteCfg) -> Self {
        self.routes.push(r);
        self
    }

    pub fn schedule(mut self, s: &[&str]) -> Self {
        self.schedule = s.iter().map(|x| x.to_string()).collect();
        self
    }

    pub fn render(&self, dir: &Path) -> String {
        let db = dir.join("db");
        let schedule = self
            .schedule
            .iter()
            .map(|s| toml_str(s))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = format!(
            r#"[server]
listen = "127.0.0.1:0"
body_limit = {body_limit}
admin_token = {admin}
shutdown_timeout = {shutdown}

[storage]
path = {db}
{retention}
[scheduler]
poll_interval = {poll}
poll_slowdown_after = "1h"
max_poll_interval = "1s"
run_timeout = {run_timeout}
concurrency = 32
retry_base = {retry_base}
retry_max = {retry_max}

[delivery]
schedule = [{schedule}]
jitter = 0.0
timeout = {dtimeout}
max_retry_after = {mra}
allow_destinations = [{allow}]

[providers.slate]
kind = "slate"
base_url = {base}
token = {token}
timeout = {ptimeout}
"#,
            body_limit = toml_str(&self.body_limit),
            admin = toml_str(ADMIN_TOKEN),
            shutdown = toml_str(&self.shutdown_timeout),
            db = toml_str(&db.to_string_lossy()),
            poll = toml_str(&self.poll_interval),
            run_timeout = toml_str(&self.run_timeout),
            retry_base = toml_str(&self.retry_base),
            retry_max = toml_str(&self.retry_max),
            dtimeout = toml_str(&self.delivery_timeout),
            mra = toml_str(&self.max_retry_after),
            base = toml_str(&self.slate_base),
            token = toml_str(SLATE_TOKEN),
            ptimeout = toml_str(&self.provider_timeout),
            retention = self
                .retention
                .as_ref()
                .map(|r| format!("retention = {}\n", toml_str(r)))
                .unwrap_or_default(),
            allow = self
                .allow_destinations
                .iter()
                .map(|s| toml_str(s))
                .collect::<Vec<_>>()
                .join(", "),
        );
        for r in &self.routes {
            let n = &r.name;
            out.push_str(&format!(
                "\n[routes.{n}]\nprovider = {}\nworkflow_id = {}\n",
                toml_str(&r.provider),
                toml_str(&r.workflow_id)
            ));
            if let Some(t) = &r.run_timeout {
                out.push_str(&format!("run_timeout = {}\n", toml_str(t)));
            }
            out.push_str(&format!(
                "dedupe_header = \"X-GitHub-Delivery\"\nverify = {{ kind = \"github\", secret = {} }}\n",
                toml_str(GH_SECRET)
            ));
            out.push_str(&format!(
                "\n[[routes.{n}.inputs]]\nname = \"repo\"\npointer = \"/repository/full_name\"\n\
                 \n[[routes.{n}.inputs]]\nname = \"event\"\nheader = \"X-GitHub-Event\"\nrequired = false\n\
                 \n[[routes.{n}.inputs]]\nname = \"source\"\nvalue = \"tests\"\n"
            ));
            for url in &r.callbacks {
                out.push_str(&format!(
                    "\n[[routes.{n}.callbacks]]\nurl = {}\nsecret = {}\n",
                    toml_str(url),
                    toml_str(CALLBACK_SECRET)
                ));
            }
        }
        out
    }
}

/// A GitHub-like push payload whose `/repository/full_name` is `repo`.
pub fn gh_payload(repo: &str) -> Value {
    json!({
        "ref": "refs/heads/main",
        "repository": { "full_name": repo, "private": false },
        "sender": { "login": "octocat" }
    })
}

// ---------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------

/// Removes variables that would change the daemon's config or route its
/// HTTP calls through a proxy.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        let upper = k.to_ascii_uppercase();
        if upper.starts_with("RUNBRIDGE") || upper.ends_with("_PROXY") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("RUST_LOG", "info,runbridge=debug");
    cmd.env("RUNBRIDGE_LOG", "info,runbridge=debug");
    cmd.env("RUST_BACKTRACE", "1");
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

/// A client that opens a new connection per request, as webhook senders do:
/// a connection the daemon closed after rejecting an unread body is never
/// reused.
pub fn hook_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

#[derive(Debug, Clone)]
pub struct HookResp {
    pub status: u16,
    pub content_type: Option<String>,
    pub text: String,
    pub body: Value,
}

impl HookResp {
    pub fn run_id(&self) -> String {
        self.body["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run_id in response {self:?}"))
            .to_string()
    }
}

pub struct Daemon {
    // `child` is declared before `dir` so it is dealt with first on drop.
    child: Option<Child>,
    stdout_task: Option<JoinHandle<()>>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    incarnation: usize,
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub hook_http: reqwest::Client,
    pub config_path: PathBuf,
    /// Extra environment of the daemon (set after the scrub).
    env: Vec<(String, String)>,
    dir: TempDir,
}

impl Daemon {
    /// Writes `cfg` into a fresh temp dir and starts `runbridge serve` on it.
    pub async fn start(cfg: &Config) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = cfg.render(dir.path());
        Daemon::start_with_text(dir, &text).await
    }

    pub async fn start_with_text(dir: TempDir, text: &str) -> Daemon {
        Daemon::start_with_env(dir, text, &[]).await
    }

    /// Like [`Daemon::start_with_text`], with extra environment variables
    /// (e.g. `RUNBRIDGE_LOG=debug`).
    pub async fn start_with_env(dir: TempDir, text: &str, env: &[(&str, &str)]) -> Daemon {
        let config_path = dir.path().join("runbridge.toml");
        std::fs::write(&config_path, text).expect("write config");
        let mut d = Daemon {
            child: None,
            stdout_task: None,
            stdout_lines: Arc::new(Mutex::new(Vec::new())),
            incarnation: 0,
            addr: "127.0.0.1:0".parse().unwrap(),
            base: String::new(),
            http: http_client(),
            hook_http: hook_client(),
            config_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
        };
        d.spawn().await;
        d
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("daemon is running")
    }

    fn stderr_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("stderr-{n}.log"))
    }

    /// Everything the daemon wrote to stderr, all incarnations.
    pub fn stderr(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.incarnation {
            let text = std::fs::read_to_string(self.stderr_path(n)).unwrap_or_default();
            out.push_str(&format!("----- runbridge stderr, start #{n} -----\n{text}"));
        }
        out
    }

    /// The last `lines` lines of the daemon's stderr (for panic messages).
    pub fn stderr_tail(&self, lines: usize) -> String {
        let all = self.stderr();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines the current incarnation printed to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines.lock().unwrap().clone()
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.incarnation += 1;
        let stderr =
            std::fs::File::create(self.stderr_path(self.incarnation)).expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbridge"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        scrub_env(&mut cmd);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("spawn runbridge");
        let stdout = child.stdout.take().expect("stdout piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        self.stdout_lines = lines.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        // Keep draining stdout for the daemon's whole life so it never sees
        // a closed pipe.
        self.stdout_task = Some(tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        }));
        self.child = Some(child);
        let first = tokio::time::timeout(DEADLINE, rx.recv()).await;
        let line = match first {
            Ok(Some(line)) => line,
            Ok(None) => {
                let status = self.child.as_mut().unwrap().wait().await;
                self.child = None;
                panic!(
                    "runbridge exited ({status:?}) without printing `listening on`\n{}",
                    self.stderr_tail(80)
                );
            }
            Err(_) => panic!(
                "runbridge printed nothing on stdout within {DEADLINE:?}\n{}",
                self.stderr_tail(80)
            ),
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "first stdout line should be `listening on 127.0.0.1:PORT`, got {line:?}\n{}",
                    self.stderr_tail(40)
                )
            });
        assert!(
            addr.ip().is_loopback(),
            "listening on {addr}, expected 127.0.0.1"
        );
        assert_ne!(addr.port(), 0, "daemon reported port 0");
        self.addr = addr;
        self.base = format!("http://{addr}");
    }

    /// Starts the binary again on the same config and store.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// SIGKILL (via `Child::kill`) and reap.
    pub async fn kill_9(&mut self) {
        let mut child = self.child.take().expect("daemon is running");
        child.kill().await.expect("SIGKILL runbridge");
        if let Some(t) = self.stdout_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, ...) with the `kill` command.
    pub async fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed: {status:?}");
    }

    /// Waits for the daemon to exit; `None` if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("daemon is running");
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => {
                self.child = None;
                if let Some(t) = self.stdout_task.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
                }
                Some(status.expect("wait runbridge"))
            }
            Err(_) => None,
        }
    }

    /// SIGTERM and wait (up to `limit`) for the exit; returns status and time taken.
    pub async fn terminate(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let t0 = Instant::now();
        self.signal("TERM").await;
        self.wait_exit(limit).await.map(|s| (s, t0.elapsed()))
    }

    // --- HTTP helpers ----------------------------------------------------

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET /readyz`: the status code and the JSON body (`null` if not JSON).
    pub async fn readiness(&self) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url("/readyz"))
            .send()
            .await
            .expect("GET /readyz");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// POST raw bytes to /hooks/{route} with exactly the given headers.
    pub async fn post_hook(
        &self,
        route: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> HookResp {
        let mut req = self
            .hook_http
            .post(self.url(&format!("/hooks/{route}")))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /hooks/{route}: {e:?}"));
        to_hook_resp(resp).await
    }

    /// Headers of a correctly signed GitHub delivery of `body`.
    pub fn github_headers(delivery: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        vec![
            ("Content-Type", "application/json".to_string()),
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", github_signature(GH_SECRET, body)),
            ("User-Agent", "GitHub-Hookshot/test".to_string()),
        ]
    }

    /// POST a correctly signed GitHub delivery.
    pub async fn post_github(&self, route: &str, delivery: &str, payload: &Value) -> HookResp {
        let body = serde_json::to_vec(payload).unwrap();
        let headers = Daemon::github_headers(delivery, &body);
        self.post_hook(route, body, &headers).await
    }

    /// POST a signed GitHub delivery and require 202; returns the run id.
    pub async fn trigger(&self, route: &str, delivery: &str, repo: &str) -> String {
        let r = self.post_github(route, delivery, &gh_payload(repo)).await;
        assert_eq!(
            r.status,
            202,
            "POST /hooks/{route} should answer 202, got {r:?}\n{}",
            self.stderr_tail(30)
        );
        let id = r.run_id();
        assert_eq!(r.body["status_url"], json!(format!("/runs/{id}")), "{r:?}");
        id
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get_run(&self, id: &str) -> Value {
        let (status, body) = self.admin_get(&format!("/runs/{id}")).await;
        assert_eq!(status, 200, "GET /runs/{id}: {body}");
        body
    }

    pub async fn list_runs(&self, query: &str) -> Value {
        let (status, body) = self.admin_get(&format!("/runs?{query}")).await;
        assert_eq!(status, 200, "GET /runs?{query}: {body}");
        body
    }

    /// Number of runs in the store (tests keep well under 100 runs).
    pub async fn run_count(&self) -> usize {
        let body = self.list_runs("limit=100").await;
        let runs = body["runs"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /runs has no `runs` array: {body}"));
        assert!(body["next_cursor"].is_null(), "more than 100 runs? {body}");
        runs.len()
    }

    /// Polls GET /runs/{id} until `pred` holds.
    pub async fn wait_run(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let d = self;
        let pred = &pred;
        poll_until(&format!("run {id}: {what}"), DEADLINE, || async move {
            let (status, run) = d.admin_get(&format!("/runs/{id}")).await;
            if status == 200 && pred(&run) {
                Ok(run)
            } else {
                Err(format!("HTTP {status}: {run}\n{}", d.stderr_tail(20)))
            }
        })
        .await
    }

    /// Polls until the run's phase is `done` and every delivery is settled.
    pub async fn wait_done(&self, id: &str) -> Value {
        self.wait_run(id, "phase done", |r| {
            r["phase"] == "done"
                && r["deliveries"].as_array().is_some_and(|ds| {
                    ds.iter()
                        .all(|d| d["state"] != "pending" && d["state"] != "failing")
                })
        })
        .await
    }
}

pub async fn to_hook_resp(resp: reqwest::Response) -> HookResp {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    HookResp {
        status,
        content_type,
        text,
        body,
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.stderr_tail(300));
        }
    }
}

// ---------------------------------------------------------------------------
// Fake Slate
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct CreateCall {
    pub at: Instant,
    pub workflow_id: String,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    pub authorized: bool,
    pub inputs: Option<Value>,
    pub status: u16,
    pub run_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct FakeRun {
    pub id: String,
    pub workflow_id: String,
    pub key: Option<String>,
    pub inputs: Value,
    pub polls: u32,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub last_status: &'static str,
    pub canceled: bool,
}

impl FakeRun {
    pub fn share_url(&self) -> String {
        format!("https://app.slatehq.ai/share/{}", self.id)
    }
}

#[derive(Default)]
struct SlateState {
    runs: HashMap<String, FakeRun>,
    idem: HashMap<(String, String), String>,
    key_workflow: HashMap<String, String>,
    creates: Vec<CreateCall>,
    gets: usize,
    cancels: Vec<String>,
    unexpected: Vec<String>,
    create_delay: HashMap<String, Duration>,
    holds_released: bool,
    calls_429: u32,
    next_id: u64,
}

struct SlateInner {
    state: Mutex<SlateState>,
}

/// In-process Slate API (see shared/seeds/000_*, 001_*). Behaviour by
/// workflow id:
/// * `wf_ok*`: QUEUED, STARTING, RUNNING, then COMPLETED with
///   `{"share_url": ...}` from the 4th poll on.
/// * `wf_fail`: QUEUED, RUNNING, then FAILED with WORKFLOW_FAILED.
/// * `wf_cancel`: QUEUED, then CANCELED.
/// * `wf_slow`: QUEUED, then RUNNING forever.
/// * `wf_hold*`: QUEUED, then RUNNING until [`FakeSlate::release_holds`], then COMPLETED.
/// * `wf_ten`: QUEUED, RUNNING, then COMPLETED at exactly the 10th poll (a
///   run whose durable writes per poll are counted).
/// * `wf_bad`: create answers 400 `{"error":"inputs must be an object"}`.
/// * `wf_429`: 1st create 429 + `Retry-After: 1`, 2nd 503, then like `wf_ok`.
/// * anything else: create answers 404.
#[derive(Clone)]
pub struct FakeSlate {
    inner: Arc<SlateInner>,
    pub addr: SocketAddr,
}

fn terminal(status: &str) -> bool {
    matches!(status, "COMPLETED" | "FAILED" | "CANCELED")
}

fn known_workflow(wf: &str) -> bool {
    wf.starts_with("wf_ok")
        || wf.starts_with("wf_hold")
        || matches!(
            wf,
            "wf_fail" | "wf_cancel" | "wf_slow" | "wf_bad" | "wf_429" | "wf_ten"
        )
}

/// Vendor status of a run of `wf` at its `polls`-th poll (0 = not yet polled).
fn status_at(wf: &str, polls: u32, released: bool) -> &'static str {
    if polls <= 1 {
        return "QUEUED";
    }
    if wf == "wf_ten" {
        return if polls >= 10 { "COMPLETED" } else { "RUNNING" };
    }
    if wf.starts_with("wf_ok") || wf == "wf_429" {
        match polls {
            2 => "STARTING",
            3 => "RUNNING",
            _ => "COMPLETED",
        }
    } else if wf.starts_with("wf_hold") {
        if released {
            "COMPLETED"
        } else {
            "RUNNING"
        }
    } else {
        match (wf, polls) {
            ("wf_fail", 2) => "RUNNING",
            ("wf_fail", _) => "FAILED",
            ("wf_cancel", _) => "CANCELED",
            _ => "RUNNING",
        }
    }
}

fn slate_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

fn run_json(run: &FakeRun) -> Value {
    let status = run.last_status;
    let started = status != "QUEUED";
    json!({
        "run_id": run.id,
        "workflow_id": run.workflow_id,
        "status": status,
        "workspace_id": if started { json!(4521) } else { Value::Null },
        "workflow_execution_id": if started { json!(format!("exec_{}", run.id)) } else { Value::Null },
        "output": if status == "COMPLETED" { json!({ "share_url": run.share_url() }) } else { Value::Null },
        "error": if status == "FAILED" {
            json!({ "code": "WORKFLOW_FAILED", "message": "workflow failed" })
        } else {
            Value::Null
        },
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "completed_at": run.completed_at,
        "metadata": Value::Null,
    })
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[allow(clippy::result_large_err)]
async fn slate_create(
    State(s): State<Arc<SlateInner>>,
    UrlPath(wf): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let denied = slate_auth(&headers);
    let authorized = denied.is_none();
    let key = header_str(&headers, "idempotency-key");
    let content_type = header_str(&headers, "content-type");
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let inputs = parsed.as_ref().and_then(|v| v.get("inputs")).cloned();
    let (resp, delay) = {
        let mut st = s.state.lock().unwrap();
        let delay = st.create_delay.get(&wf).copied();
        let mut call = CreateCall {
            at: Instant::now(),
            workflow_id: wf.clone(),
            idempotency_key: key.clone(),
            content_type,
            authorized,
            inputs: inputs.clone(),
            status: 0,
            run_id: None,
        };
        let resp: Result<(StatusCode, FakeRun), Response> = (|| {
            if let Some(denied) = denied {
                return Err(denied);
            }
            if wf == "wf_bad" || !inputs.as_ref().is_some_and(Value::is_object) {
                return Err((
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "error": "inputs must be an object" })),
                )
                    .into_response());
            }
            if !known_workflow(&wf) {
                return Err(slate_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "workflow not found",
                ));
            }
            if wf == "wf_429" {
                st.calls_429 += 1;
                match st.calls_429 {
                    1 => {
                        let mut r = slate_error(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limited",
                            "concurrent run limit exceeded",
                        );
                        r.headers_mut()
                            .insert("retry-after", HeaderValue::from_static("1"));
                        return Err(r);
                    }
                    2 => {
                        return Err(slate_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "try again later",
                        ))
                    }
                    _ => {}
                }
            }
            if let Some(k) = &key {
                if let Some(other) = st.key_workflow.get(k) {
                    if other != &wf {
                        return Err(slate_error(
                            StatusCode::CONFLICT,
                            "idempotency_conflict",
                            "Idempotency-Key reused with a different workflowId",
                        ));
                    }
                }
                if let Some(id) = st.idem.get(&(wf.clone(), k.clone())) {
                    return Ok((StatusCode::ACCEPTED, st.runs[id].clone()));
                }
            }
            st.next_id += 1;
            let id = format!("8c5e0f8a-2b35-4c1f-9b6a-{:012x}", st.next_id);
            let now = rfc3339_now();
            let run = FakeRun {
                id: id.clone(),
                workflow_id: wf.clone(),
                key: key.clone(),
                inputs: inputs.clone().unwrap_or(Value::Null),
                polls: 0,
                created_at: now.clone(),
                updated_at: now,
                completed_at: None,
                last_status: "QUEUED",
                canceled: false,
            };
            st.runs.insert(id.clone(), run.clone());
            if let Some(k) = &key {
                st.idem.insert((wf.clone(), k.clone()), id.clone());
                st.key_workflow.insert(k.clone(), wf.clone());
            }
            Ok((StatusCode::ACCEPTED, run))
        })();
        let resp = match resp {
            Ok((code, run)) => {
                call.run_id = Some(run.id.clone());
                (
                    code,
                    Json(json!({
                        "run_id": run.id,
                        "status": run.last_status,
                        "workspace_id": Value::Null,
                        "workflow_execution_id": Value::Null,
                        "status_url": format!("{SLATE_PREFIX}/workflow-runs/{}", run.id),
                    })),
                )
                    .into_response()
            }
            Err(r) => r,
        };
        call.status = resp.status().as_u16();
        st.creates.push(call);
        (resp, delay)
    };
    // The run (if any) is created before the delay: a daemon killed while
    // waiting here has a vendor run it never heard about.
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    resp
}

/// Slate's bearer-token check: the 401 answer, or `None` when authorized.
fn slate_auth(headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {SLATE_TOKEN}");
    (header_str(headers, "authorization").as_deref() != Some(expected.as_str())).then(|| {
        slate_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or invalid Bearer token",
        )
    })
}

async fn slate_get(
    State(s): State<Arc<SlateInner>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = slate_auth(&headers) {
        return denied;
    }
    let mut st = s.state.lock().unwrap();
    st.gets += 1;
    let released = st.holds_released;
    let Some(run) = st.runs.get_mut(&id) else {
        return slate_error(StatusCode::NOT_FOUND, "not_found", "run not found");
    };
    if !terminal(run.last_status) {
        run.polls += 1;
        let next = if run.canceled {
            "CANCELED"
        } else {
            status_at(&run.workflow_id, run.polls, released)
        };
        if next != run.last_status {
            run.last_status = next;
            run.updated_at = rfc3339_now();
            if terminal(next) {
                run.completed_at = Some(run.updated_at.clone());
            }
        }
    }
    Json(run_json(run)).into_response()
}

async fn slate_cancel(
    State(s): State<Arc<SlateInner>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = slate_auth(&headers) {
        return denied;
    }
    let mut st = s.state.lock().unwrap();
    st.cancels.push(id.clone());
    let Some(run) = st.runs.get_mut(&id) else {
        return slate_error(StatusCode::NOT_FOUND, "not_found", "run not found");
    };
    if run.last_status != "QUEUED" {
        return slate_error(
            StatusCode::CONFLICT,
            "conflict",
            "run can only be canceled while QUEUED",
        );
    }
    run.canceled = true;
    run.last_status = "CANCELED";
    run.updated_at = rfc3339_now();
    run.completed_at = Some(run.updated_at.clone());
    Json(json!({ "run_id": run.id, "status": "CANCELED", "completed_at": run.completed_at }))
        .into_response()
}

async fn slate_fallback(
    State(s): State<Arc<SlateInner>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    s.state
        .lock()
        .unwrap()
        .unexpected
        .push(format!("{method} {uri}"));
    slate_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

impl FakeSlate {
    pub async fn start() -> FakeSlate {
        let inner = Arc::new(SlateInner {
            state: Mutex::new(SlateState::default()),
        });
        let app = Router::new()
            .route(
                &format!("{SLATE_PREFIX}/workflows/{{workflow_id}}/runs"),
                post(slate_create),
            )
            .route(
                &format!("{SLATE_PREFIX}/workflow-runs/{{run_id}}"),
                get(slate_get),
            )
            .route(
                &format!("{SLATE_PREFIX}/workflow-runs/{{run_id}}/cancel"),
                post(slate_cancel),
            )
            .fallback(slate_fallback)
            .with_state(inner.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake slate");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSlate { inner, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}{SLATE_PREFIX}", self.addr)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, SlateState> {
        self.inner.state.lock().unwrap()
    }

    /// Delay before answering creates of `workflow_id` (the run is created first).
    pub fn set_create_delay(&self, workflow_id: &str, d: Duration) {
        self.st().create_delay.insert(workflow_id.into(), d);
    }

    pub fn clear_create_delay(&self, workflow_id: &str) {
        self.st().create_delay.remove(workflow_id);
    }

    /// Lets every `wf_hold*` run complete at its next poll.
    pub fn release_holds(&self) {
        self.st().holds_released = true;
    }

    pub fn create_calls(&self) -> Vec<CreateCall> {
        self.st().creates.clone()
    }

    pub fn create_count(&self) -> usize {
        self.st().creates.len()
    }

    /// Number of distinct vendor runs created.
    pub fn distinct_runs(&self) -> usize {
        self.st().runs.len()
    }

    pub fn runs(&self) -> Vec<FakeRun> {
        self.st().runs.values().cloned().collect()
    }

    pub fn run(&self, vendor_id: &str) -> Option<FakeRun> {
        self.st().runs.get(vendor_id).cloned()
    }

    /// Create calls per Idempotency-Key (calls without a key are under "").
    pub fn calls_per_key(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for c in self.st().creates.iter() {
            *m.entry(c.idempotency_key.clone().unwrap_or_default())
                .or_insert(0) += 1;
        }
        m
    }

    /// Distinct vendor runs per Idempotency-Key.
    pub fn runs_per_key(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.st().runs.values() {
            *m.entry(r.key.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    }

    pub fn poll_count(&self) -> usize {
        self.st().gets
    }

    pub fn cancel_calls(&self) -> Vec<String> {
        self.st().cancels.clone()
    }

    pub fn unexpected_requests(&self) -> Vec<String> {
        self.st().unexpected.clone()
    }
}

// ---------------------------------------------------------------------------
// Callback receiver
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers 200 to correctly signed callbacks.
    Healthy,
    /// Answers 500.
    Failing,
    /// Listener closed: connections are refused.
    Down,
}

#[derive(Clone, Debug)]
pub struct CallbackRecord {
    pub at: Instant,
    pub path: String,
    pub webhook_id: String,
    pub webhook_timestamp: String,
    pub signature: String,
    pub signature_valid: bool,
    pub timestamp_fresh: bool,
    pub content_type: Option<String>,
    pub raw: String,
    pub body: Value,
    pub responded: u16,
    /// Every header as received (names lower case).
    pub headers: Vec<(String, String)>,
}

impl CallbackRecord {
    pub fn run_id(&self) -> Option<&str> {
        self.body["data"]["run_id"].as_str()
    }
    pub fn event_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.responded)
    }
}

struct RxState {
    mode: Mode,
    script: VecDeque<(u16, Option<String>)>,
    records: Vec<CallbackRecord>,
}

struct RxInner {
    secret: String,
    state: Mutex<RxState>,
    changed: watch::Sender<u64>,
    /// Requests being answered now, and the most ever at once.
    in_flight: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    /// How long each answer takes (milliseconds), so concurrency shows.
    delay_ms: std::sync::atomic::AtomicU64,
}

pub struct Receiver {
    inner: Arc<RxInner>,
    pub port: u16,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

async fn receiver_handler(
    State(inner): State<Arc<RxInner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use std::sync::atomic::Ordering::SeqCst;
    let now = inner.in_flight.fetch_add(1, SeqCst) + 1;
    inner.peak.fetch_max(now, SeqCst);
    let delay = inner.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    inner.in_flight.fetch_sub(1, SeqCst);
    let id = header_str(&headers, "webhook-id").unwrap_or_default();
    let ts = header_str(&headers, "webhook-timestamp").unwrap_or_default();
    let sig = header_str(&headers, "webhook-signature").unwrap_or_default();
    let signature_valid =
        !id.is_empty() && verify_standard_webhooks(&inner.secret, &id, &ts, &body, &sig);
    let timestamp_fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (unix_now() - t).abs() <= 300);
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (code, retry_after) = {
        let mut st = inner.state.lock().unwrap();
        let (code, retry_after) = if !signature_valid || !timestamp_fresh {
            (401, None)
        } else if let Some(scripted) = st.script.pop_front() {
            scripted
        } else if st.mode == Mode::Failing {
            (500, None)
        } else {
            (200, None)
        };
        st.records.push(CallbackRecord {
            at: Instant::now(),
            path: uri.path().to_string(),
            webhook_id: id,
            webhook_timestamp: ts,
            signature: sig,
            signature_valid,
            timestamp_fresh,
            content_type: header_str(&headers, "content-type"),
            raw: String::from_utf8_lossy(&body).to_string(),
            body: json_body,
            responded: code,
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
        });
        (code, retry_after)
    };
    inner.changed.send_modify(|n| *n += 1);
    let mut resp = (
        StatusCode::from_u16(code).unwrap(),
        Json(json!({ "received": code < 300 })),
    )
        .into_response();
    if let Some(ra) = retry_after {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_str(&ra).unwrap());
    }
    resp
}

fn serve_receiver(
    listener: TcpListener,
    inner: Arc<RxInner>,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let app = Router::new().fallback(receiver_handler).with_state(inner);
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    (tx, handle)
}

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        let inner = Arc::new(RxInner {
            secret: secret.into(),
            state: Mutex::new(RxState {
                mode: Mode::Healthy,
                script: VecDeque::new(),
                records: Vec::new(),
            }),
            changed: watch::channel(0).0,
            in_flight: Default::default(),
            peak: Default::default(),
            delay_ms: Default::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let port = listener.local_addr().unwrap().port();
        let server = Some(serve_receiver(listener, inner.clone()));
        Receiver {
            inner,
            port,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/cb", self.port)
    }

    pub fn mode(&self) -> Mode {
        self.inner.state.lock().unwrap().mode
    }

    /// Switches mode; `Down` closes the listener and every connection,
    /// leaving `Down` binds the same port again.
    pub async fn set_mode(&mut self, mode: Mode) {
        let was = self.mode();
        self.inner.state.lock().unwrap().mode = mode;
        if mode == Mode::Down && was != Mode::Down {
            if let Some((tx, handle)) = self.server.take() {
                let _ = tx.send(());
                let abort = handle.abort_handle();
                if tokio::time::timeout(Duration::from_secs(10), handle)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            }
        } else if mode != Mode::Down && was == Mode::Down {
            let port = self.port;
            let listener = poll_until(
                &format!("re-binding receiver port {port}"),
                DEADLINE,
                || async move {
                    TcpListener::bind(("127.0.0.1", port))
                        .await
                        .map_err(|e| e.to_string())
                },
            )
            .await;
            self.server = Some(serve_receiver(listener, self.inner.clone()));
        }
    }

    /// Answers the next callbacks with these (status, Retry-After) pairs,
    /// before falling back to the mode.
    pub fn script(&self, responses: &[(u16, Option<&str>)]) {
        let mut st = self.inner.state.lock().unwrap();
        for (code, ra) in responses {
            st.script.push_back((*code, ra.map(str::to_string)));
        }
    }

    /// Makes every answer take `d` (so concurrent requests overlap).
    pub fn set_delay(&self, d: Duration) {
        self.inner
            .delay_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// The most requests the receiver was answering at once.
    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn records(&self) -> Vec<CallbackRecord> {
        self.inner.state.lock().unwrap().records.clone()
    }

    /// Every request received for `run_id` (any response).
    pub fn for_run(&self, run_id: &str) -> Vec<CallbackRecord> {
        self.records()
            .into_iter()
            .filter(|r| r.run_id() == Some(run_id))
            .collect()
    }

    /// Requests whose signature or timestamp did not verify.
    pub fn invalid(&self) -> Vec<CallbackRecord> {
        self.records()
            .into_iter()
            .filter(|r| !r.signature_valid || !r.timestamp_fresh)
            .collect()
    }

    fn summary(&self) -> String {
        self.records()
            .iter()
            .map(|r| {
                format!(
                    "[{} id={} run={:?} type={} -> {}{}]",
                    r.path,
                    r.webhook_id,
                    r.run_id(),
                    r.event_type(),
                    r.responded,
                    if r.signature_valid {
                        ""
                    } else {
                        " BAD SIGNATURE"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Waits (up to [`DEADLINE`]) until `f` finds what it looks for among the records.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&[CallbackRecord]) -> Option<T>,
    ) -> T {
        let mut sub = self.inner.changed.subscribe();
        let end = Instant::now() + DEADLINE;
        loop {
            {
                let st = self.inner.state.lock().unwrap();
                if let Some(v) = f(&st.records) {
                    return v;
                }
            }
            let rem = end.saturating_duration_since(Instant::now());
            if rem.is_zero() {
                panic!(
                    "timed out after {DEADLINE:?} waiting for {what}; callbacks received: {}",
                    self.summary()
                );
            }
            let _ = tokio::time::timeout(rem, sub.changed()).await;
        }
    }

    /// Waits for a callback of `run_id` that was answered 2xx.
    pub async fn wait_delivered(&self, run_id: &str) -> CallbackRecord {
        self.wait_until(&format!("a delivered callback for run {run_id}"), |recs| {
            recs.iter()
                .find(|r| r.ok() && r.run_id() == Some(run_id))
                .cloned()
        })
        .await
    }

    /// Waits until at least `n` requests for `run_id` were answered `code`.
    pub async fn wait_responses(&self, run_id: &str, code: u16, n: usize) -> Vec<CallbackRecord> {
        self.wait_until(
            &format!("{n} callbacks for run {run_id} answered {code}"),
            |recs| {
                let v: Vec<_> = recs
                    .iter()
                    .filter(|r| r.run_id() == Some(run_id) && r.responded == code)
                    .cloned()
                    .collect();
                (v.len() >= n).then_some(v)
            },
        )
        .await
    }
}

// ---------------------------------------------------------------------------
// Common assertions
// ---------------------------------------------------------------------------

/// Checks the envelope and the fields every callback must carry.
pub fn assert_callback_envelope(
    cb: &CallbackRecord,
    run_id: &str,
    route: &str,
    workflow_id: &str,
    delivery: &str,
) {
    assert!(cb.signature_valid, "callback signature must verify: {cb:?}");
    assert!(
        cb.timestamp_fresh,
        "webhook-timestamp must be current unix seconds: {cb:?}"
    );
    assert!(
        cb.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "callback content type should be application/json: {cb:?}"
    );
    let data = cb.data();
    let status = data["status"].as_str().unwrap_or_default();
    assert_eq!(
        cb.event_type(),
        format!("run.{status}"),
        "type must match data.status: {}",
        cb.raw
    );
    assert!(
        is_rfc3339(&cb.body["timestamp"]),
        "timestamp must be RFC 3339: {}",
        cb.raw
    );
    assert_eq!(data["run_id"], json!(run_id), "{}", cb.raw);
    assert_eq!(data["route"], json!(route), "{}", cb.raw);
    assert_eq!(data["provider"], json!("slate"), "{}", cb.raw);
    assert_eq!(data["workflow_id"], json!(workflow_id), "{}", cb.raw);
    assert_eq!(data["delivery_id"], json!(delivery), "{}", cb.raw);
    assert!(
        is_rfc3339(&data["created_at"]),
        "data.created_at: {}",
        cb.raw
    );
    assert!(
        is_rfc3339(&data["finished_at"]),
        "data.finished_at: {}",
        cb.raw
    );
    for key in [
        "run_id",
        "route",
        "provider",
        "workflow_id",
        "vendor_run_id",
        "status",
        "raw_status",
        "output",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "delivery_id",
    ] {
        assert!(
            data.get(key).is_some(),
            "callback data lacks `{key}`: {}",
            cb.raw
        );
    }
}

/// True if `v` (any JSON shape) mentions `needle` somewhere.
pub fn mentions(v: &Value, needle: &str) -> bool {
    v.to_string().contains(needle)
}
