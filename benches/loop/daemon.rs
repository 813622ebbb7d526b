//! The daemon under test: finding the release binary, /proc accounting, the
//! config and a spawned `runbridge serve` that is killed when dropped.

use super::*;

pub(crate) fn newest_mtime(path: &Path, newest: &mut SystemTime) {
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

/// Names the daemon binary to measure instead of this checkout's release build.
pub(crate) const BIN_ENV: &str = "BENCH_BIN";

/// The release binary (or [`BIN_ENV`]'s), rebuilt first if missing or older than the sources.
/// (`cargo bench` builds it already, as it does every binary of the package
/// for benches; the check covers sources edited since.)
pub(crate) fn daemon_binary() -> Result<PathBuf, String> {
    // Another build (e.g. the release before a change), for before/after
    // figures taken in the same run conditions.
    if let Some(bin) = std::env::var_os(BIN_ENV) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            eprintln!("using {} ({BIN_ENV})", bin.display());
            Ok(bin)
        } else {
            Err(format!("{BIN_ENV}={} is not a file", bin.display()))
        };
    }
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

pub(crate) fn clock_ticks() -> f64 {
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
pub(crate) fn cpu_seconds(pid: &str, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
pub(crate) fn machine_busy_seconds(ticks: f64) -> Option<f64> {
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
pub(crate) fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

pub(crate) fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| Some(l.strip_prefix(field)?.strip_prefix(':')?.trim().to_string()))
}

/// (apparent bytes, allocated bytes) of everything under `path`.
pub(crate) fn disk_usage(path: &Path) -> (u64, u64) {
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

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

pub(crate) struct RouteCfg<'a> {
    pub(crate) poll_interval: &'a str,
    pub(crate) max_poll_interval: &'a str,
    pub(crate) duration: &'a str,
    pub(crate) callback: Option<String>,
}

pub(crate) fn write_config(dir: &Path, r: &RouteCfg) -> Result<PathBuf, String> {
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
# The verifying receiver listens on loopback, which the SSRF guard refuses
# unless it is allowed.
allow_destinations = ["127.0.0.0/8"]
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

pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Warnings and errors a daemon logged (count, first few lines).
pub(crate) fn log_problems(path: &Path) -> (usize, Vec<String>) {
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

pub(crate) struct Daemon {
    pub(crate) child: Option<Child>,
    pub(crate) pid: u32,
    pub(crate) base: String,
    pub(crate) stderr: PathBuf,
    /// Spawn until `listening on`.
    pub(crate) ready_after: Duration,
    pub(crate) _stdout: Option<tokio::io::Lines<BufReader<ChildStdout>>>,
}

impl Daemon {
    pub(crate) async fn spawn(
        bin: &Path,
        config: &Path,
        stderr: PathBuf,
        log: &str,
    ) -> Result<Daemon, String> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--config").arg(config);
        for (k, _) in std::env::vars_os() {
            let upper = k.to_string_lossy().to_ascii_uppercase();
            if upper.starts_with("RUNBRIDGE") || upper.ends_with("_PROXY") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("RUNBRIDGE_LOG", log);
        Daemon::spawn_command(cmd, stderr).await
    }

    /// Starts any server that prints `listening on ADDR` as its first stdout
    /// line (the daemon, or the reference server), stderr to `stderr`.
    pub(crate) async fn spawn_command(mut cmd: Command, stderr: PathBuf) -> Result<Daemon, String> {
        let err_file = std::fs::File::create(&stderr)
            .map_err(|e| format!("cannot create {}: {e}", stderr.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_file))
            .kill_on_drop(true);
        let bin = cmd.as_std().get_program().to_owned();
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.to_string_lossy()))?;
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

    /// The unfinished runs the daemon logged in its `runbridge ready` line
    /// (the runs a restart resumes), if it logged that line.
    pub(crate) fn unfinished_logged(&self) -> Option<usize> {
        std::fs::read_to_string(&self.stderr)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("runbridge ready"))
            .and_then(|l| l.split("unfinished=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<usize>().ok())
    }

    pub(crate) fn rss(&self) -> u64 {
        status_bytes(self.pid, "VmRSS").unwrap_or(0)
    }

    pub(crate) fn cpu(&self, ticks: f64) -> f64 {
        cpu_seconds(&self.pid.to_string(), ticks).unwrap_or(0.0)
    }

    /// Polls `/healthz` on fresh connections until it answers 200.
    pub(crate) async fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
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
    pub(crate) async fn settle(&self, ticks: f64, limit: Duration) -> Duration {
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

    pub(crate) async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        self._stdout = None;
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 20 s). Returns the
    /// time to exit and whether it exited successfully by itself.
    pub(crate) async fn terminate(&mut self) -> (Duration, bool) {
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

/// `perf record` attached to a server for one measured window, when
/// `BENCH_PERF=<dir>` is set: writes `<dir>/<scenario>.perf.data` (DWARF call
/// graphs, 499 Hz) for `benches/profile.sh` to fold and render. perf costs
/// the server CPU, so a profiled run's rates are lower than an unprofiled
/// one's; take the numbers from a run without it.
pub(crate) struct Perf {
    child: Child,
    out: PathBuf,
}

impl Perf {
    /// Starts recording `pid`, or does nothing without `BENCH_PERF`.
    pub(crate) async fn start(pid: u32, scenario: &str) -> Result<Option<Perf>, String> {
        let Some(dir) = std::env::var_os("BENCH_PERF").filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = dir.join(format!("{scenario}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-q", "-F", "499", "--call-graph", "dwarf", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start perf (BENCH_PERF is set): {e}"))?;
        println!("  perf recording pid {pid} to {}", out.display());
        Ok(Some(Perf { child, out }))
    }

    /// SIGINT (perf then writes its file out), and waits at most 60 s.
    pub(crate) async fn stop(mut self) -> Result<PathBuf, String> {
        let pid = self.child.id().ok_or("perf already exited")?;
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(_)) => Ok(self.out),
            _ => Err(format!("perf did not finish {}", self.out.display())),
        }
    }
}

/// Stops an optional recording, reporting (not failing on) a problem.
pub(crate) async fn stop_perf(perf: Option<Perf>) {
    if let Some(p) = perf {
        match p.stop().await {
            Ok(out) => println!("  perf data: {}", out.display()),
            Err(e) => println!("  !! {e}"),
        }
    }
}
