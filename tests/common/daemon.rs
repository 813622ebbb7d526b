//! [`Daemon`]: the real `runbridge` binary run on a temp dir, with its HTTP clients and helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{gh_payload, github_signature, poll_until, Config, ADMIN_TOKEN, DEADLINE, GH_SECRET};

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
