//! End-to-end benchmark of the runbridge daemon over loopback.
//!
//! Drives the real release binary (`target/release/runbridge`) and reports:
//!
//! * `ingress`:   GitHub-signed ~1 KB triggers accepted per second (202 only,
//!   each one durable in sled before the answer), 64 keep-alive connections,
//!   latency percentiles, errors.
//! * `callbacks`: signed callbacks delivered per second end to end (trigger ->
//!   start -> poll -> deliver) to a verifying receiver in this process.
//! * `memory`:    resident memory with 100,000 runs in flight, store size on
//!   disk, and the resume time after a SIGKILL on the same store.
//!
//! ```sh
//! cargo bench --bench loop                      # all three
//! cargo bench --bench loop -- ingress memory    # a selection
//! BENCH_SECONDS=5 BENCH_CALLBACKS=2000 BENCH_RUNS=10000 cargo bench --bench loop
//! ```
//!
//! Environment: `BENCH_SECONDS` (measured ingress seconds, 10),
//! `BENCH_WARMUP` (ingress warm-up seconds, 2), `BENCH_CALLBACKS` (20000),
//! `BENCH_RUNS` (100000), `BENCH_CONNECTIONS` (64), `BENCH_REBUILD=1` (run
//! `cargo build --release --bin runbridge` first even if the binary looks
//! fresh), `BENCH_DIR` (where the
//! temporary stores go; default: cargo's target tmp dir, on the same disk as
//! the project, since a tmpfs would make fsync free).
//!
//! Every loop is bounded by count and by time; every daemon is killed when
//! its handle drops (also on Ctrl-C). Traffic stays on 127.0.0.1.

use bytes::Bytes;
use runbridge::signing::{sign_github, WebhookKey};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

const ADMIN_TOKEN: &str = "bench";
const GH_SECRET: &str = "bench-secret";
const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Distinct pre-signed payloads cycled through by the load generators.
const PAYLOADS: usize = 256;
/// Per-request timeout of the load generators.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a daemon may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest any count-bounded firing phase may take.
const FIRE_TIMEOUT: Duration = Duration::from_secs(900);
/// Quiet log level; `runbridge::app=info` adds only the ready/shutdown lines
/// (and one line per accepted run, so it is used only where nothing is fired).
const LOG_QUIET: &str = "warn";
const LOG_READY: &str = "warn,runbridge::app=info";

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

struct Opts {
    seconds: u64,
    warmup: u64,
    callbacks: usize,
    runs: usize,
    conns: usize,
    dir: PathBuf,
    ingress: bool,
    callbacks_on: bool,
    memory: bool,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("ignoring {name}={v:?}: not a number");
            default
        }),
        Err(_) => default,
    }
}

impl Opts {
    fn from_env() -> Result<Opts, String> {
        let mut picked = Vec::new();
        for a in std::env::args().skip(1) {
            // cargo passes `--bench`; libtest-style flags are ignored too.
            if a.starts_with('-') {
                continue;
            }
            match a.as_str() {
                "ingress" | "callbacks" | "memory" => picked.push(a),
                "all" => picked.extend(["ingress", "callbacks", "memory"].map(String::from)),
                other => {
                    return Err(format!(
                        "unknown scenario {other:?}; expected ingress, callbacks, memory or all"
                    ))
                }
            }
        }
        let all = picked.is_empty();
        let has = |s: &str| all || picked.iter().any(|p| p == s);
        let dir = std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
        Ok(Opts {
            seconds: env_num("BENCH_SECONDS", 10u64).max(1),
            warmup: env_num("BENCH_WARMUP", 2u64),
            callbacks: env_num("BENCH_CALLBACKS", 20_000usize).max(1),
            runs: env_num("BENCH_RUNS", 100_000usize).max(1),
            conns: env_num("BENCH_CONNECTIONS", 64usize).clamp(1, 1024),
            dir,
            ingress: has("ingress"),
            callbacks_on: has("callbacks"),
            memory: has("memory"),
        })
    }
}

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

fn newest_mtime(path: &Path, newest: &mut SystemTime) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                newest_mtime(&e.path(), newest);
            }
        }
    } else if let Ok(m) = meta.modified() {
        *newest = (*newest).max(m);
    }
}

/// The release binary, rebuilt first if missing or older than the sources.
/// (`cargo bench` builds it already, as it does every binary of the package
/// for benches; the check covers sources edited since.)
fn daemon_binary() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = option_env!("CARGO_BIN_EXE_runbridge")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/runbridge"));
    let mut newest = SystemTime::UNIX_EPOCH;
    for p in ["src", "Cargo.toml", "Cargo.lock"] {
        newest_mtime(&root.join(p), &mut newest);
    }
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let forced = std::env::var_os("BENCH_REBUILD").is_some_and(|v| v == "1");
    if !forced && built.is_some_and(|b| b >= newest) {
        return Ok(bin);
    }
    eprintln!(
        "{} is {}; running cargo build --release --bin runbridge",
        bin.display(),
        if forced {
            "to be rebuilt (BENCH_REBUILD=1)"
        } else if built.is_some() {
            "older than the sources"
        } else {
            "missing"
        }
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--release", "--bin", "runbridge"])
        .current_dir(root);
    // Variables cargo set for this bench process (package metadata) would
    // look like changed inputs to build scripts that watch them (ring), and
    // rebuild half the dependency tree twice; the build gets a clean view.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_BIN_EXE_")
            || matches!(
                k.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
            )
        {
            cmd.env_remove(k.as_ref());
        }
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release failed: {status}"));
    }
    let release = root.join("target/release/runbridge");
    if release.exists() {
        Ok(release)
    } else if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "no binary at {} after the build",
            release.display()
        ))
    }
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process (`self` or a pid).
fn cpu_seconds(pid: &str, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
fn machine_busy_seconds(ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(busy as f64 / ticks)
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| Some(l.strip_prefix(field)?.strip_prefix(':')?.trim().to_string()))
}

/// (apparent bytes, allocated bytes) of everything under `path`.
fn disk_usage(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                let (a, b) = disk_usage(&e.path());
                total.0 += a;
                total.1 += b;
            } else {
                total.0 += meta.len();
                total.1 += meta.blocks() * 512;
            }
        }
    }
    total
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

struct RouteCfg<'a> {
    poll_interval: &'a str,
    max_poll_interval: &'a str,
    duration: &'a str,
    callback: Option<String>,
}

fn write_config(dir: &Path, r: &RouteCfg) -> Result<PathBuf, String> {
    let db = dir.join("db");
    let callbacks = match &r.callback {
        Some(url) => {
            format!("\n[[routes.gh.callbacks]]\nurl = \"{url}\"\nsecret = \"{CALLBACK_SECRET}\"\n")
        }
        None => String::new(),
    };
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"

[storage]
path = "{db}"
cache_capacity = "64MiB"

[scheduler]
poll_interval = "{poll}"
max_poll_interval = "{max_poll}"
concurrency = 256

[delivery]
schedule = ["0s", "1s", "1s", "1s"]
timeout = "5s"

[providers.sim]
kind = "simulated"
duration = "{duration}"
outcome = "succeeded"

[routes.gh]
provider = "sim"
workflow_id = "wf"
verify = {{ kind = "github", secret = "{GH_SECRET}" }}
dedupe_header = "X-GitHub-Delivery"
{callbacks}"#,
        db = db.display(),
        poll = r.poll_interval,
        max_poll = r.max_poll_interval,
        duration = r.duration,
    );
    let path = dir.join("runbridge.toml");
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Warnings and errors a daemon logged (count, first few lines).
fn log_problems(path: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
        .collect();
    (
        bad.len(),
        bad.iter().take(5).map(|l| l.to_string()).collect(),
    )
}

struct Daemon {
    child: Option<Child>,
    pid: u32,
    base: String,
    stderr: PathBuf,
    /// Spawn until `listening on`.
    ready_after: Duration,
    _stdout: Option<tokio::io::Lines<BufReader<ChildStdout>>>,
}

impl Daemon {
    async fn spawn(
        bin: &Path,
        config: &Path,
        stderr: PathBuf,
        log: &str,
    ) -> Result<Daemon, String> {
        let err_file = std::fs::File::create(&stderr)
            .map_err(|e| format!("cannot create {}: {e}", stderr.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_file))
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            let upper = k.to_string_lossy().to_ascii_uppercase();
            if upper.starts_with("RUNBRIDGE") || upper.ends_with("_PROXY") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("RUNBRIDGE_LOG", log);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().ok_or("stdout not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                let status = child.wait().await;
                return Err(format!(
                    "runbridge exited ({status:?}) without printing `listening on`; stderr:\n{}",
                    tail(&stderr, 30)
                ));
            }
            Err(_) => {
                return Err(format!(
                    "runbridge printed nothing within {START_TIMEOUT:?}; stderr:\n{}",
                    tail(&stderr, 30)
                ))
            }
        };
        let ready_after = started.elapsed();
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| format!("unexpected first stdout line {line:?}"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("daemon listens on {addr}, expected 127.0.0.1"));
        }
        Ok(Daemon {
            child: Some(child),
            pid,
            base: format!("http://{addr}"),
            stderr,
            ready_after,
            _stdout: Some(lines),
        })
    }

    fn rss(&self) -> u64 {
        status_bytes(self.pid, "VmRSS").unwrap_or(0)
    }

    fn cpu(&self, ticks: f64) -> f64 {
        cpu_seconds(&self.pid.to_string(), ticks).unwrap_or(0.0)
    }

    /// Polls `/healthz` on fresh connections until it answers 200.
    async fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let end = Instant::now() + limit;
        let url = format!("{}/healthz", self.base);
        loop {
            let last = match client.get(&url).send().await {
                Ok(r) if r.status().as_u16() == 200 => return Ok(()),
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= end {
                return Err(format!("/healthz not healthy after {limit:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until the daemon uses less than 2 % of a core over 500 ms (the
    /// scheduler has caught up), at most `limit`. Returns the time it took.
    async fn settle(&self, ticks: f64, limit: Duration) -> Duration {
        let t = Instant::now();
        let mut before = self.cpu(ticks);
        while t.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.cpu(ticks);
            if now - before < 0.01 {
                break;
            }
            before = now;
        }
        t.elapsed()
    }

    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        self._stdout = None;
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 20 s). Returns the
    /// time to exit and whether it exited successfully by itself.
    async fn terminate(&mut self) -> (Duration, bool) {
        let Some(mut child) = self.child.take() else {
            return (Duration::ZERO, false);
        };
        let t = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .is_ok_and(|s| s.success());
        let ok = if sent {
            match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                Ok(Ok(status)) => status.success(),
                _ => false,
            }
        } else {
            false
        };
        let took = t.elapsed();
        if !ok {
            let _ = child.kill().await;
        }
        self._stdout = None;
        (took, ok)
    }
}

// ---------------------------------------------------------------------------
// Load generation
// ---------------------------------------------------------------------------

struct Payload {
    body: Bytes,
    signature: String,
}

/// ~1 KB push-like JSON bodies, each signed once up front.
fn payloads() -> Arc<Vec<Payload>> {
    let hex40 = |seed: u64| {
        format!(
            "{:016x}{:016x}{:08x}",
            seed,
            !seed,
            seed as u32 ^ 0x5bd1e995
        )
    };
    let v = (0..PAYLOADS as u64)
        .map(|i| {
            let mut doc = json!({
                "ref": "refs/heads/main",
                "before": hex40(i * 2 + 1),
                "after": hex40(i * 2 + 2),
                "repository": {
                    "id": 100_000 + i,
                    "name": format!("repo-{i}"),
                    "full_name": format!("bench-org/repo-{i}"),
                    "private": false,
                    "html_url": format!("https://github.com/bench-org/repo-{i}"),
                    "homepage": format!("https://repo-{i}.example.com"),
                    "default_branch": "main"
                },
                "pusher": {"name": "bench-bot", "email": "bench-bot@example.com"},
                "sender": {"login": "bench-bot", "id": 4242, "type": "User"},
                "head_commit": {
                    "id": hex40(i * 2 + 2),
                    "message": format!("Bench commit number {i}: adjust the flux capacitor"),
                    "timestamp": "2026-11-23T15:58:08Z",
                    "author": {"name": "Bench Bot", "email": "bench-bot@example.com", "username": "bench-bot"},
                    "added": ["src/new.rs"],
                    "removed": [],
                    "modified": ["src/lib.rs", "README.md"]
                },
                "padding": ""
            });
            let len = serde_json::to_vec(&doc).map(|b| b.len()).unwrap_or(0);
            doc["padding"] = Value::String("x".repeat(1024usize.saturating_sub(len)));
            let body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
            let signature = sign_github(GH_SECRET.as_bytes(), &body);
            Payload { body, signature }
        })
        .collect();
    Arc::new(v)
}

/// `n` clients, one keep-alive connection each, built before any clock starts.
fn clients(n: usize) -> Result<Vec<reqwest::Client>, String> {
    (0..n).map(|_| conn_client()).collect()
}

/// One keep-alive connection's client.
fn conn_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Status code, or 0 for a transport error; and the run id when asked for.
async fn trigger(
    client: &reqwest::Client,
    url: &str,
    p: &Payload,
    delivery: &str,
    want_id: bool,
) -> (u16, Option<String>) {
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", &p.signature)
        .body(p.body.clone())
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default();
            let id = (want_id && code == 202)
                .then(|| serde_json::from_slice::<Value>(&body).ok())
                .flatten()
                .and_then(|v| v["run_id"].as_str().map(String::from));
            (code, id)
        }
        Err(_) => (0, None),
    }
}

fn outcome_name(code: u16) -> String {
    if code == 0 {
        "transport error".into()
    } else {
        format!("HTTP {code}")
    }
}

/// p in 0..=1 of sorted microsecond samples, in ms.
/// "p50 / p99 / max ms" of sorted latencies in microseconds.
fn latency_text(sorted: &[u32]) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} ms",
        pct(sorted, 0.5),
        pct(sorted, 0.99),
        pct(sorted, 1.0)
    )
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// One sample of the duration-bounded run: completion offset, latency, code.
struct Sample {
    done_us: u64,
    lat_us: u32,
    code: u16,
}

/// `conns` connections firing back to back for `warmup + measure`.
async fn fire_for(
    base: &str,
    payloads: Arc<Vec<Payload>>,
    clients: &[reqwest::Client],
    warmup: Duration,
    measure: Duration,
) -> Result<(Instant, Vec<Sample>), String> {
    let url = Arc::new(format!("{base}/hooks/gh"));
    let t0 = Instant::now();
    let end = warmup + measure;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        let (url, payloads, client) = (url.clone(), payloads.clone(), client.clone());
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(1 << 14);
            // Bounded by time, and by count as a backstop.
            for seq in 0..50_000_000u64 {
                if t0.elapsed() >= end {
                    break;
                }
                let p = &payloads[(c + seq as usize * 7) % payloads.len()];
                let delivery = format!("ingress-{c}-{seq}");
                let start = Instant::now();
                let (code, _) = trigger(&client, &url, p, &delivery, false).await;
                let lat = start.elapsed();
                out.push(Sample {
                    done_us: t0.elapsed().as_micros() as u64,
                    lat_us: lat.as_micros().min(u32::MAX as u128) as u32,
                    code,
                });
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| format!("load task failed: {e}"))?);
    }
    Ok((t0, all))
}

struct FiredRun {
    run_id: String,
    /// Offset from the first trigger when the 202 arrived.
    acked: Duration,
}

struct Fired {
    t0: Instant,
    runs: Vec<FiredRun>,
    errors: BTreeMap<String, u64>,
    lat_us: Vec<u32>,
    elapsed: Duration,
}

/// `n` triggers as fast as `conns` connections go.
async fn fire_count(
    base: &str,
    payloads: Arc<Vec<Payload>>,
    clients: &[reqwest::Client],
    n: usize,
    tag: &str,
    progress: bool,
) -> Result<Fired, String> {
    let url = Arc::new(format!("{base}/hooks/gh"));
    let tag: Arc<str> = tag.into();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (url, payloads, next, tag, client) = (
            url.clone(),
            payloads.clone(),
            next.clone(),
            tag.clone(),
            client.clone(),
        );
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || t0.elapsed() >= FIRE_TIMEOUT {
                    break;
                }
                let p = &payloads[i % payloads.len()];
                let delivery = format!("{tag}-{i}");
                let start = Instant::now();
                let (code, id) = trigger(&client, &url, p, &delivery, true).await;
                out.push((start.elapsed(), t0.elapsed(), code, id));
            }
            out
        });
    }
    let ticker = progress.then(|| {
        let next = next.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let done = next.load(Ordering::Relaxed).min(n);
                eprintln!("  ... {done}/{n} triggers sent ({:.0?})", t0.elapsed());
            }
        })
    });
    let mut fired = Fired {
        t0,
        runs: Vec::with_capacity(n),
        errors: BTreeMap::new(),
        lat_us: Vec::with_capacity(n),
        elapsed: Duration::ZERO,
    };
    while let Some(r) = tasks.join_next().await {
        for (lat, acked, code, id) in r.map_err(|e| format!("load task failed: {e}"))? {
            fired
                .lat_us
                .push(lat.as_micros().min(u32::MAX as u128) as u32);
            match (code, id) {
                (202, Some(run_id)) => fired.runs.push(FiredRun { run_id, acked }),
                (code, _) => *fired.errors.entry(outcome_name(code)).or_default() += 1,
            }
        }
    }
    fired.elapsed = t0.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    fired.lat_us.sort_unstable();
    Ok(fired)
}

fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        "0".into()
    } else {
        let n: u64 = errors.values().sum();
        let parts: Vec<String> = errors.iter().map(|(k, v)| format!("{v} x {k}")).collect();
        format!("{n} ({})", parts.join(", "))
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    rows: Vec<(String, String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn row(&mut self, scenario: &str, metric: &str, value: impl Into<String>) {
        let value = value.into();
        println!("  {metric:<44} {value}");
        self.rows
            .push((scenario.to_string(), metric.to_string(), value));
    }

    fn set(&mut self, scenario: &str, key: &str, v: Value) {
        let entry = self
            .json
            .entry(scenario.to_string())
            .or_insert_with(|| json!({}));
        entry[key] = v;
    }

    fn print_table(&self) {
        println!();
        println!("{:<10} {:<44} value", "scenario", "metric");
        println!("{}", "-".repeat(90));
        let mut last = "";
        for (s, m, v) in &self.rows {
            let shown = if s == last { "" } else { s.as_str() };
            println!("{shown:<10} {m:<44} {v}");
            last = s;
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// A daemon on a fresh store for one scenario, healthy and ready for load.
async fn start_scenario(
    opts: &Opts,
    bin: &Path,
    scenario: &str,
    route: &RouteCfg<'_>,
    stderr_name: &str,
) -> Result<(tempfile::TempDir, PathBuf, Daemon), String> {
    let dir = tempdir(opts, scenario)?;
    let cfg = write_config(dir.path(), route)?;
    let d = Daemon::spawn(bin, &cfg, dir.path().join(stderr_name), LOG_QUIET).await?;
    d.wait_healthy(Duration::from_secs(30)).await?;
    Ok((dir, cfg, d))
}

fn tempdir(opts: &Opts, name: &str) -> Result<tempfile::TempDir, String> {
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| format!("cannot create {}: {e}", opts.dir.display()))?;
    tempfile::Builder::new()
        .prefix(&format!("runbridge-bench-{name}-"))
        .tempdir_in(&opts.dir)
        .map_err(|e| format!("cannot create a temp dir in {}: {e}", opts.dir.display()))
}

fn report_log(rep: &mut Report, scenario: &str, d: &Daemon) {
    let (n, first) = log_problems(&d.stderr);
    rep.set(scenario, "daemon_warnings", json!(n));
    if n > 0 {
        rep.row(scenario, "daemon warnings/errors logged", n.to_string());
        for l in first {
            println!("    | {l}");
        }
    }
}

// ---------------------------------------------------------------------------
// (a) ingress
// ---------------------------------------------------------------------------

async fn ingress(opts: &Opts, bin: &Path, ticks: f64, rep: &mut Report) -> Result<(), String> {
    const S: &str = "ingress";
    let warmup = Duration::from_secs(opts.warmup);
    let measure = Duration::from_secs(opts.seconds);
    println!(
        "\n[ingress] {} connections, {}s warm-up + {}s measured, GitHub-signed ~1 KB bodies",
        opts.conns, opts.warmup, opts.seconds
    );
    println!(
        "  (runs are never polled during the window, but the scheduler starts each one as it \
         arrives: 2 more durable writes per run)"
    );
    let route = RouteCfg {
        poll_interval: "1h",
        max_poll_interval: "1h",
        duration: "1h",
        callback: None,
    };
    let (dir, _cfg, mut d) = start_scenario(opts, bin, S, &route, "stderr.log").await?;
    let payloads = payloads();

    // Daemon and bench CPU over the measured window only.
    let pid = d.pid;
    let conns = clients(opts.conns)?;
    let cpu_probe = tokio::spawn(async move {
        let probe = || {
            (
                cpu_seconds(&pid.to_string(), ticks),
                cpu_seconds("self", ticks),
                machine_busy_seconds(ticks),
            )
        };
        tokio::time::sleep(warmup).await;
        let a = probe();
        tokio::time::sleep(measure).await;
        (a, probe())
    });
    let (_t0, samples) = fire_for(&d.base, payloads.clone(), &conns, warmup, measure).await?;
    let ((d0, s0, m0), (d1, s1, m1)) = cpu_probe.await.map_err(|e| e.to_string())?;

    let (lo, hi) = (
        warmup.as_micros() as u64,
        (warmup + measure).as_micros() as u64,
    );
    let mut lat = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut warm_ok = 0u64;
    for s in &samples {
        if s.done_us < lo {
            warm_ok += u64::from(s.code == 202);
            continue;
        }
        if s.done_us > hi {
            continue;
        }
        if s.code == 202 {
            lat.push(s.lat_us);
        } else {
            *errors.entry(outcome_name(s.code)).or_default() += 1;
        }
    }
    lat.sort_unstable();
    let secs = measure.as_secs_f64();
    let rate = lat.len() as f64 / secs;
    let dcpu = d1.zip(d0).map(|(b, a)| b - a).unwrap_or(0.0);
    let scpu = s1.zip(s0).map(|(b, a)| b - a).unwrap_or(0.0);
    let other = (m1.zip(m0).map(|(b, a)| b - a).unwrap_or(0.0) - dcpu - scpu).max(0.0);
    let rss = d.rss();
    let after_total = samples.iter().filter(|s| s.code == 202).count();

    // The scheduler starts every accepted run (two more durable writes
    // each); see how long it stays busy after the load stops.
    let settle = d.settle(ticks, Duration::from_secs(120)).await;
    let (apparent, _) = disk_usage(&dir.path().join("db"));

    rep.row(S, "accepted (202) per second", format!("{rate:.0}"));
    rep.row(
        S,
        "accepted in the measured window",
        format!("{} in {secs:.1} s (+{warm_ok} in warm-up)", lat.len()),
    );
    rep.row(S, "latency p50 / p99 / max", latency_text(&lat));
    rep.row(S, "errors (non-202) in the window", errors_text(&errors));
    rep.row(
        S,
        "CPU in the window: daemon / bench / others",
        format!(
            "{dcpu:.1} / {scpu:.1} / {other:.1} s in {secs:.0} s ({:.0}% / {:.0}% / {:.0}% of one core)",
            100.0 * dcpu / secs,
            100.0 * scpu / secs,
            100.0 * other / secs
        ),
    );
    rep.row(
        S,
        "daemon RSS after the load",
        format!("{:.1} MiB", mib(rss)),
    );
    rep.row(
        S,
        "daemon busy after the load (starting runs)",
        format!("{:.1} s", settle.as_secs_f64()),
    );
    rep.row(
        S,
        "store on disk",
        format!("{:.1} MiB for {after_total} runs", mib(apparent)),
    );
    rep.set(S, "accepted_per_sec", json!(round(rate, 1)));
    rep.set(S, "accepted", json!(lat.len()));
    rep.set(S, "seconds", json!(secs));
    rep.set(S, "connections", json!(opts.conns));
    rep.set(S, "p50_ms", json!(round(pct(&lat, 0.5), 3)));
    rep.set(S, "p99_ms", json!(round(pct(&lat, 0.99), 3)));
    rep.set(S, "max_ms", json!(round(pct(&lat, 1.0), 3)));
    rep.set(S, "errors", json!(errors.values().sum::<u64>()));
    rep.set(S, "daemon_cpu_s", json!(round(dcpu, 2)));
    rep.set(S, "client_cpu_s", json!(round(scpu, 2)));
    rep.set(S, "other_cpu_s", json!(round(other, 2)));
    rep.set(S, "busy_after_s", json!(round(settle.as_secs_f64(), 2)));
    report_log(rep, S, &d);
    let (took, ok) = d.terminate().await;
    rep.row(
        S,
        "SIGTERM to exit",
        format!(
            "{:.0} ms ({})",
            took.as_secs_f64() * 1000.0,
            if ok { "exit 0" } else { "NOT clean" }
        ),
    );
    rep.set(S, "sigterm_exit_ms", json!(took.as_millis() as u64));
    Ok(())
}

// ---------------------------------------------------------------------------
// (b) callbacks
// ---------------------------------------------------------------------------

struct Receiver {
    key: WebhookKey,
    /// webhook-id -> first arrival.
    seen: Mutex<HashMap<String, Instant>>,
    posts: AtomicU64,
    bad: AtomicU64,
    target: AtomicUsize,
    done: tokio::sync::Notify,
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Arc<Receiver>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    r.posts.fetch_add(1, Ordering::Relaxed);
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sig)) = (
        h("webhook-id"),
        h("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        h("webhook-signature"),
    ) else {
        r.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST;
    };
    if !r.key.verify(id, ts, &body, sig) {
        r.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let at = Instant::now();
    let n = {
        let mut seen = r.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(id.to_string()).or_insert(at);
        seen.len()
    };
    if n == r.target.load(Ordering::Relaxed) {
        r.done.notify_one();
    }
    StatusCode::NO_CONTENT
}

async fn start_receiver(r: Arc<Receiver>) -> Result<(String, tokio::task::JoinHandle<()>), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind the receiver: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new()
        .route("/cb", axum::routing::post(receive))
        .with_state(r);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/cb"), task))
}

/// Pages through `GET /runs?route=gh&status=succeeded`; counts runs whose
/// phase is `done` with every delivery succeeded.
async fn count_done(base: &str, max_pages: usize) -> Result<(usize, usize), String> {
    let client = conn_client()?;
    let (mut succeeded, mut done) = (0, 0);
    let mut before: Option<String> = None;
    for _ in 0..max_pages {
        let mut url = format!("{base}/runs?route=gh&status=succeeded&limit=1000");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let v: Value = client
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .map_err(|e| format!("GET /runs: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET /runs: {e}"))?;
        let runs = v["runs"].as_array().cloned().unwrap_or_default();
        succeeded += runs.len();
        done += runs
            .iter()
            .filter(|r| {
                r["phase"] == "done"
                    && r["deliveries"].as_array().is_some_and(|d| {
                        !d.is_empty() && d.iter().all(|x| x["state"] == "succeeded")
                    })
            })
            .count();
        match v["next"].as_str() {
            Some(n) => before = Some(n.to_string()),
            None => break,
        }
    }
    Ok((succeeded, done))
}

async fn callbacks(opts: &Opts, bin: &Path, ticks: f64, rep: &mut Report) -> Result<(), String> {
    const S: &str = "callbacks";
    let n = opts.callbacks;
    println!(
        "\n[callbacks] {n} triggers ({} connections), simulated runs of 0s, poll every 10ms, \
         callbacks to a verifying receiver",
        opts.conns
    );
    let receiver = Arc::new(Receiver {
        key: WebhookKey::parse(CALLBACK_SECRET).map_err(|e| e.to_string())?,
        seen: Mutex::new(HashMap::with_capacity(n)),
        posts: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        target: AtomicUsize::new(usize::MAX),
        done: tokio::sync::Notify::new(),
    });
    let (cb_url, recv_task) = start_receiver(receiver.clone()).await?;
    let route = RouteCfg {
        poll_interval: "10ms",
        max_poll_interval: "1s",
        duration: "0s",
        callback: Some(cb_url),
    };
    let (_dir, _cfg, mut d) = start_scenario(opts, bin, S, &route, "stderr.log").await?;
    let payloads = payloads();
    let conns = clients(opts.conns)?;

    let cpu0 = (
        d.cpu(ticks),
        cpu_seconds("self", ticks).unwrap_or(0.0),
        machine_busy_seconds(ticks).unwrap_or(0.0),
    );
    let cpu_wall = Instant::now();
    let fired = fire_count(&d.base, payloads, &conns, n, "cb", false).await?;
    let want = fired.runs.len();
    receiver.target.store(want, Ordering::Relaxed);
    let t0 = fired.t0;

    // Wait for `want` distinct callbacks: bounded overall, and given up early
    // when nothing new arrives for 30 s.
    let limit = Duration::from_secs(120) + Duration::from_millis(10 * n as u64);
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let count = receiver
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        if count >= want {
            break;
        }
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("  ... {count}/{want} callbacks ({:.0?})", t0.elapsed());
            last_print = Instant::now();
        }
        if t0.elapsed() >= limit || last_progress.elapsed() >= Duration::from_secs(30) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), receiver.done.notified()).await;
    }
    // Arrival times as offsets from the first trigger.
    let seen: HashMap<String, Duration> = receiver
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(id, at)| (id.clone(), at.saturating_duration_since(t0)))
        .collect();
    let got = seen.len();
    let last = seen.values().max().copied().unwrap_or_default();
    let wall = cpu_wall.elapsed().as_secs_f64().max(1e-9);
    let cpu1 = (
        d.cpu(ticks),
        cpu_seconds("self", ticks).unwrap_or(0.0),
        machine_busy_seconds(ticks).unwrap_or(0.0),
    );

    // End-to-end latency per run: 202 received -> its callback received.
    let mut e2e: Vec<u32> = Vec::with_capacity(got);
    let mut foreign = 0usize;
    let ours: HashMap<String, Duration> = fired
        .runs
        .iter()
        .map(|r| (format!("msg_{}", r.run_id), r.acked))
        .collect();
    for (id, at) in &seen {
        match ours.get(id) {
            Some(acked) => e2e.push(at.saturating_sub(*acked).as_micros() as u32),
            None => foreign += 1,
        }
    }
    e2e.sort_unstable();
    let span = last.as_secs_f64();
    let rate = if span > 0.0 { got as f64 / span } else { 0.0 };
    let fire_s = fired.elapsed.as_secs_f64();
    let posts = receiver.posts.load(Ordering::Relaxed);
    let bad = receiver.bad.load(Ordering::Relaxed);

    // Cross-check through the admin API (the final `done` save follows the
    // callback's answer, so give it a moment).
    let mut admin = (0, 0);
    let pages = want / 1000 + 3;
    for _ in 0..20 {
        admin = count_done(&d.base, pages).await?;
        if admin.1 >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    rep.row(
        S,
        "callbacks delivered per second (end to end)",
        format!("{rate:.0}"),
    );
    rep.row(
        S,
        "first trigger -> last distinct callback",
        format!("{span:.2} s for {got}/{want} callbacks"),
    );
    rep.row(
        S,
        "trigger phase",
        format!(
            "{want} accepted in {fire_s:.2} s ({:.0}/s while the loop runs), errors {}",
            want as f64 / fire_s.max(1e-9),
            errors_text(&fired.errors)
        ),
    );
    rep.row(
        S,
        "trigger latency p50 / p99 / max",
        latency_text(&fired.lat_us),
    );
    rep.row(
        S,
        "last trigger accepted -> last callback",
        format!("{:.2} s", (span - fire_s).max(0.0)),
    );
    rep.row(
        S,
        "per run 202 -> callback p50 / p99 / max",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            pct(&e2e, 0.5),
            pct(&e2e, 0.99),
            pct(&e2e, 1.0)
        ),
    );
    rep.row(
        S,
        "receiver: posts / distinct / bad signature",
        format!(
            "{posts} / {got} / {bad}{}",
            if foreign > 0 {
                format!(" ({foreign} unknown ids)")
            } else {
                String::new()
            }
        ),
    );
    rep.row(
        S,
        "admin API: succeeded / done+delivered runs",
        format!("{} / {}", admin.0, admin.1),
    );
    let (dcpu, scpu) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let other = (cpu1.2 - cpu0.2 - dcpu - scpu).max(0.0);
    rep.row(
        S,
        "CPU: daemon / bench / others",
        format!(
            "{dcpu:.1} / {scpu:.1} / {other:.1} s in {wall:.1} s ({:.0}% / {:.0}% / {:.0}% of one core)",
            100.0 * dcpu / wall,
            100.0 * scpu / wall,
            100.0 * other / wall
        ),
    );
    rep.set(S, "callbacks_per_sec", json!(round(rate, 1)));
    rep.set(S, "callbacks", json!(got));
    rep.set(S, "triggers_accepted", json!(want));
    rep.set(S, "span_s", json!(round(span, 3)));
    rep.set(S, "trigger_phase_s", json!(round(fire_s, 3)));
    rep.set(
        S,
        "trigger_errors",
        json!(fired.errors.values().sum::<u64>()),
    );
    rep.set(S, "e2e_p50_ms", json!(round(pct(&e2e, 0.5), 1)));
    rep.set(S, "e2e_p99_ms", json!(round(pct(&e2e, 0.99), 1)));
    rep.set(S, "e2e_max_ms", json!(round(pct(&e2e, 1.0), 1)));
    rep.set(S, "receiver_posts", json!(posts));
    rep.set(S, "bad_signatures", json!(bad));
    rep.set(S, "admin_done", json!(admin.1));
    rep.set(S, "daemon_cpu_s", json!(round(dcpu, 2)));
    report_log(rep, S, &d);
    if got < want {
        println!(
            "  !! only {got} of {want} callbacks arrived; daemon stderr tail:\n{}",
            tail(&d.stderr, 20)
        );
    }
    let (took, ok) = d.terminate().await;
    rep.row(
        S,
        "SIGTERM to exit",
        format!(
            "{:.0} ms ({})",
            took.as_secs_f64() * 1000.0,
            if ok { "exit 0" } else { "NOT clean" }
        ),
    );
    recv_task.abort();
    Ok(())
}

// ---------------------------------------------------------------------------
// (c) memory and restart
// ---------------------------------------------------------------------------

/// Small deterministic PRNG for the sample of run ids.
fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

async fn memory(opts: &Opts, bin: &Path, ticks: f64, rep: &mut Report) -> Result<(), String> {
    const S: &str = "memory";
    let n = opts.runs;
    println!(
        "\n[memory] {n} runs in flight (simulated 1h runs, polled every 10m), then SIGKILL and restart"
    );
    println!("  (storage.cache_capacity = 64MiB bounds sled's page cache)");
    let route = RouteCfg {
        poll_interval: "10m",
        max_poll_interval: "10m",
        duration: "1h",
        callback: None,
    };
    let (dir, cfg, mut d) = start_scenario(opts, bin, S, &route, "stderr-1.log").await?;
    let rss0 = d.rss();
    // Four quarters, with the RSS after each, to show how memory grows.
    let payloads = payloads();
    let conns = clients(opts.conns)?;
    let mut fired = Fired {
        t0: Instant::now(),
        runs: Vec::with_capacity(n),
        errors: BTreeMap::new(),
        lat_us: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut steps = Vec::new();
    for q in 0..4 {
        let count = n * (q + 1) / 4 - n * q / 4;
        if count == 0 {
            continue;
        }
        let part = fire_count(
            &d.base,
            payloads.clone(),
            &conns,
            count,
            &format!("mem{q}"),
            true,
        )
        .await?;
        fired.runs.extend(part.runs);
        for (k, v) in part.errors {
            *fired.errors.entry(k).or_default() += v;
        }
        fired.lat_us.extend(part.lat_us);
        steps.push((fired.runs.len(), d.rss()));
    }
    fired.elapsed = fired.t0.elapsed();
    fired.lat_us.sort_unstable();
    let accepted = fired.runs.len();
    let rss_loaded = d.rss();
    let settle = d.settle(ticks, Duration::from_secs(300)).await;
    let rss1 = d.rss();
    let hwm = status_bytes(d.pid, "VmHWM").unwrap_or(0);
    let threads = status_field(d.pid, "Threads").unwrap_or_default();
    let (apparent, allocated) = disk_usage(&dir.path().join("db"));
    let per_run = rss1.saturating_sub(rss0) as f64 / accepted.max(1) as f64;

    rep.row(
        S,
        "triggers accepted",
        format!(
            "{accepted}/{n} in {:.1} s ({:.0}/s), errors {}",
            fired.elapsed.as_secs_f64(),
            accepted as f64 / fired.elapsed.as_secs_f64().max(1e-9),
            errors_text(&fired.errors)
        ),
    );
    rep.row(
        S,
        "trigger latency p50 / p99 / max",
        latency_text(&fired.lat_us),
    );
    rep.row(S, "RSS before the load", format!("{:.1} MiB", mib(rss0)));
    let growth: Vec<String> = steps
        .iter()
        .map(|(runs, rss)| format!("{runs}: {:.1}", mib(*rss)))
        .collect();
    rep.row(S, "RSS while loading (runs: MiB)", growth.join(", "));
    rep.row(
        S,
        "RSS right after the last 202",
        format!("{:.1} MiB", mib(rss_loaded)),
    );
    rep.row(
        S,
        "RSS with all runs started and idle",
        format!(
            "{:.1} MiB (settled {:.1} s after the load; VmHWM {:.1} MiB; {threads} threads)",
            mib(rss1),
            settle.as_secs_f64(),
            mib(hwm)
        ),
    );
    rep.row(
        S,
        "RSS growth per run in flight",
        format!("{per_run:.0} bytes"),
    );
    rep.row(
        S,
        "store on disk",
        format!(
            "{:.1} MiB apparent, {:.1} MiB allocated ({:.0} bytes/run)",
            mib(apparent),
            mib(allocated),
            apparent as f64 / accepted.max(1) as f64
        ),
    );
    report_log(rep, S, &d);

    // Crash, then resume on the same store.
    d.kill9().await;
    let mut d2 = Daemon::spawn(bin, &cfg, dir.path().join("stderr-2.log"), LOG_READY).await?;
    let listen = d2.ready_after;
    let t = Instant::now();
    d2.wait_healthy(Duration::from_secs(60)).await?;
    let healthy = listen + t.elapsed();
    let unfinished = std::fs::read_to_string(&d2.stderr)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("runbridge ready"))
        .and_then(|l| l.split("unfinished=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<usize>().ok());
    let rss_restart = d2.rss();

    // A sample of recorded run ids must still be there, unfinished.
    let client = conn_client()?;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let sample = 100.min(accepted);
    let (mut found, mut in_flight) = (0, 0);
    let mut get_us = Vec::with_capacity(sample);
    let mut missing = Vec::new();
    for _ in 0..sample {
        let r = &fired.runs[(xorshift(&mut seed) % accepted as u64) as usize];
        let start = Instant::now();
        let resp = client
            .get(format!("{}/runs/{}", d2.base, r.run_id))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await;
        let v = match resp {
            Ok(resp) if resp.status().as_u16() == 200 => resp.json::<Value>().await.ok(),
            _ => None,
        };
        get_us.push(start.elapsed().as_micros() as u32);
        match v {
            Some(v) if v["id"].as_str() == Some(r.run_id.as_str()) => {
                found += 1;
                if v["phase"] != "done" && v["phase"] != "terminal" {
                    in_flight += 1;
                }
            }
            _ => missing.push(r.run_id.clone()),
        }
    }
    get_us.sort_unstable();

    rep.row(
        S,
        "restart: spawn -> `listening on`",
        format!("{:.0} ms", listen.as_secs_f64() * 1000.0),
    );
    rep.row(
        S,
        "restart: spawn -> /healthz 200",
        format!("{:.0} ms", healthy.as_secs_f64() * 1000.0),
    );
    rep.row(
        S,
        "restart: unfinished runs logged",
        unfinished
            .map(|u| format!("{u} (accepted {accepted})"))
            .unwrap_or_else(|| "not found in the log".into()),
    );
    rep.row(
        S,
        "restart: sampled runs found / unfinished",
        format!(
            "{found}/{sample} / {in_flight}/{sample} (GET p50 {:.2} ms, max {:.2} ms)",
            pct(&get_us, 0.5),
            pct(&get_us, 1.0)
        ),
    );
    if !missing.is_empty() {
        println!(
            "    missing after restart: {:?}",
            &missing[..missing.len().min(5)]
        );
    }
    rep.row(
        S,
        "RSS after restart (before load)",
        format!("{:.1} MiB", mib(rss_restart)),
    );
    rep.set(S, "runs", json!(accepted));
    rep.set(
        S,
        "trigger_errors",
        json!(fired.errors.values().sum::<u64>()),
    );
    rep.set(S, "ingest_s", json!(round(fired.elapsed.as_secs_f64(), 2)));
    rep.set(S, "rss_before_bytes", json!(rss0));
    rep.set(
        S,
        "rss_steps",
        json!(steps
            .iter()
            .map(|(r, b)| json!({"runs": r, "rss_bytes": b}))
            .collect::<Vec<_>>()),
    );
    rep.set(S, "rss_loaded_bytes", json!(rss_loaded));
    rep.set(S, "rss_settled_bytes", json!(rss1));
    rep.set(S, "rss_peak_bytes", json!(hwm));
    rep.set(S, "rss_settled_mib", json!(round(mib(rss1), 1)));
    rep.set(S, "bytes_per_run", json!(round(per_run, 0)));
    rep.set(S, "settle_s", json!(round(settle.as_secs_f64(), 2)));
    rep.set(S, "store_bytes", json!(apparent));
    rep.set(S, "store_allocated_bytes", json!(allocated));
    rep.set(S, "restart_listen_ms", json!(listen.as_millis() as u64));
    rep.set(S, "restart_healthz_ms", json!(healthy.as_millis() as u64));
    rep.set(S, "restart_unfinished", json!(unfinished));
    rep.set(S, "sample_found", json!(found));
    rep.set(S, "sample_size", json!(sample));
    rep.set(S, "rss_after_restart_bytes", json!(rss_restart));
    report_log(rep, S, &d2);
    let (took, ok) = d2.terminate().await;
    rep.row(
        S,
        "SIGTERM to exit",
        format!(
            "{:.0} ms ({})",
            took.as_secs_f64() * 1000.0,
            if ok { "exit 0" } else { "NOT clean" }
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------

async fn run_all(opts: &Opts, rep: &mut Report) -> Result<(), String> {
    let bin = daemon_binary()?;
    let ticks = clock_ticks();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "runbridge bench: {} ({cores} cores), stores under {}",
        bin.display(),
        opts.dir.display()
    );
    rep.json.insert("cores".into(), json!(cores));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = load
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    rep.json.insert("loadavg_1m_at_start".into(), json!(load1));
    if load1 > 0.5 * cores as f64 {
        println!(
            "note: load average {load1:.2} on {cores} cores before starting; other processes \
             will skew the numbers (see the `others` CPU rows)"
        );
    }
    let mut failures = Vec::new();
    if opts.ingress {
        if let Err(e) = ingress(opts, &bin, ticks, rep).await {
            println!("  !! ingress failed: {e}");
            failures.push(format!("ingress: {e}"));
        }
    }
    if opts.callbacks_on {
        if let Err(e) = callbacks(opts, &bin, ticks, rep).await {
            println!("  !! callbacks failed: {e}");
            failures.push(format!("callbacks: {e}"));
        }
    }
    if opts.memory {
        if let Err(e) = memory(opts, &bin, ticks, rep).await {
            println!("  !! memory failed: {e}");
            failures.push(format!("memory: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn main() -> std::process::ExitCode {
    let opts = match Opts::from_env() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let mut rep = Report::default();
    let result = rt.block_on(async {
        tokio::select! {
            r = run_all(&opts, &mut rep) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    // Dropping the runtime drops any daemon still running (kill on drop).
    drop(rt);
    rep.print_table();
    println!("{}", Value::Object(rep.json));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
