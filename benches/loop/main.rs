//! End-to-end benchmark of the runbridge daemon over loopback.
//!
//! Drives the real release binary (`target/release/runbridge`) and reports:
//!
//! * `ingress`:   GitHub-signed ~1 KB triggers accepted per second (202 only,
//!   each one durable in sled before the answer), 64 keep-alive connections,
//!   latency percentiles, errors.
//! * `reference`: the same load against a plain sled group commit started by
//!   the bench (verify, one insert, one shared flush per batch, 202; see
//!   `reference.rs`), and runbridge's ingress rate as a ratio of it. Runs
//!   whenever `ingress` does.
//! * `callbacks`: signed callbacks delivered per second end to end (trigger ->
//!   start -> poll -> deliver) to a verifying receiver in this process.
//! * `memory`:    resident memory with 100,000 runs in flight, store size on
//!   disk, and the resume time after a SIGKILL on the same store.
//! * `million` (opt-in, never part of `all`): 1,000,000 tracked runs seeded
//!   through the store, then start time, memory per run beyond the base and
//!   the cache, and restart after a SIGKILL (`million.rs`).
//!
//! ```sh
//! cargo bench --bench loop                      # all four
//! cargo bench --bench loop -- ingress memory    # a selection
//! BENCH_SECONDS=5 BENCH_CALLBACKS=2000 BENCH_RUNS=10000 cargo bench --bench loop
//! ```
//!
//! Environment: `BENCH_SECONDS` (measured ingress seconds, 10),
//! `BENCH_WARMUP` (ingress warm-up seconds, 2), `BENCH_CALLBACKS` (20000),
//! `BENCH_RUNS` (100000), `BENCH_MILLION` (1000000), `BENCH_CONNECTIONS`
//! (64), `BENCH_BIN=<path>` (measure that binary instead, e.g. the release
//! before a change), `BENCH_REBUILD=1` (run
//! `cargo build --release --bin runbridge` first even if the binary looks
//! fresh), `BENCH_DIR` (where the
//! temporary stores go; default: cargo's target tmp dir, on the same disk as
//! the project, since a tmpfs would make fsync free), `BENCH_PERF=<dir>`
//! (`perf record` the server over each measured window into
//! `<dir>/<scenario>.perf.data`; `benches/profile.sh` renders them).
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

mod callbacks;
mod daemon;
mod ingress;
mod load;
mod memory;
mod million;
mod reference;

use callbacks::*;
use daemon::*;
use ingress::*;
use load::*;
use memory::*;
use million::*;
use reference::*;

/// The bench config's `storage.cache_capacity` (the fixed base of memory figures).
const SLED_CACHE_BYTES: u64 = 64 << 20;
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
    reference: bool,
    callbacks_on: bool,
    memory: bool,
    /// Opt-in only (not part of `all`): seeds a million runs.
    million: bool,
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
                "ingress" | "reference" | "callbacks" | "memory" | "million" => picked.push(a),
                "all" => picked.extend(
                    ["ingress", "reference", "callbacks", "memory"].map(String::from),
                ),
                other => {
                    return Err(format!(
                        "unknown scenario {other:?}; expected ingress, reference, callbacks, memory, million or all"
                    ))
                }
            }
        }
        let all = picked.is_empty();
        let has = |s: &str| all || picked.iter().any(|p| p == s);
        let million = picked.iter().any(|p| p == "million");
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
            // The reference is what ingress is compared with: it runs with it.
            reference: has("ingress") || has("reference"),
            callbacks_on: has("callbacks"),
            memory: has("memory"),
            million,
        })
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

/// Stops the daemon with SIGTERM and reports how long it took to exit and
/// whether it exited cleanly.
async fn terminate_and_report(rep: &mut Report, scenario: &str, d: &mut Daemon) {
    let (took, ok) = d.terminate().await;
    rep.row(
        scenario,
        "SIGTERM to exit",
        format!(
            "{:.0} ms ({})",
            took.as_secs_f64() * 1000.0,
            if ok { "exit 0" } else { "NOT clean" }
        ),
    );
    rep.set(scenario, "sigterm_exit_ms", json!(took.as_millis() as u64));
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
    if opts.reference {
        if let Err(e) = reference(opts, ticks, rep).await {
            println!("  !! reference failed: {e}");
            failures.push(format!("reference: {e}"));
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
    if opts.million {
        if let Err(e) = million(opts, &bin, ticks, rep).await {
            println!("  !! million failed: {e}");
            failures.push(format!("million: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn main() -> std::process::ExitCode {
    if let Some(dir) = std::env::var_os(REFERENCE_ENV) {
        return serve_reference(&dir.to_string_lossy());
    }
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
