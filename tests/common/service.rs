//! Harness pieces for running runbridge as a service: a `NOTIFY_SOCKET`
//! that records every sd-notify datagram, a daemon started with a listening
//! socket passed as fd 3 (systemd socket activation), and a small
//! Prometheus text parser wrapper.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

/// A unix datagram socket standing in for systemd's notify socket.
pub struct NotifySocket {
    /// Where it is bound; pass as `NOTIFY_SOCKET`.
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<(std::time::Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    /// Binds `dir/notify.sock` and records every datagram in arrival order.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((std::time::Instant::now(), text));
            }
        });
        NotifySocket {
            path,
            messages,
            task,
        }
    }

    /// Every datagram so far.
    pub fn messages(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Datagrams containing the line `line` (e.g. `WATCHDOG=1`), with arrival times.
    pub fn with_line(&self, line: &str) -> Vec<(std::time::Instant, String)> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .cloned()
            .collect()
    }

    /// Waits until a datagram holds the line `line`; returns its index.
    pub async fn wait_for(&self, line: &str, after: usize) -> usize {
        super::poll_until(
            &format!("{line} on NOTIFY_SOCKET"),
            super::DEADLINE,
            || async {
                let all = self.messages();
                all.iter()
                    .enumerate()
                    .skip(after)
                    .find(|(_, m)| m.lines().any(|l| l == line))
                    .map(|(i, _)| i)
                    .ok_or_else(|| format!("{all:?}"))
            },
        )
        .await
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A daemon started with `listener` as fd 3 and `LISTEN_FDS=1`,
/// `LISTEN_PID=<its pid>` (set in `pre_exec`, as systemd does).
pub struct Activated {
    pub child: Child,
    /// The first stdout line (`listening on ADDR`).
    pub first_line: String,
    pub stderr: PathBuf,
}

/// Starts `runbridge serve --config config` with `listener` passed as fd 3.
/// `LISTEN_PID` must be the daemon's own pid: a shell sets it to `$$` and
/// `exec`s the daemon (same pid), since `setenv` between fork and exec is
/// not async-signal-safe; `pre_exec` only moves the descriptor to 3.
pub async fn start_activated(
    config: &Path,
    dir: &Path,
    listener: std::net::TcpListener,
) -> Activated {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    let stderr = dir.join("stderr-activated.log");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_runbridge"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
        .kill_on_drop(true);
    super::scrub_env(&mut cmd);
    cmd.env("LISTEN_FDS", "1");
    // SAFETY: only async-signal-safe calls (dup2, fcntl) run between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn runbridge");
    drop(listener);
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first_line = tokio::time::timeout(super::DEADLINE, lines.next_line())
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "no `listening on` line\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Activated {
        child,
        first_line,
        stderr,
    }
}

/// Samples of a Prometheus text exposition, parsed by `prometheus-parse`:
/// metric name and sorted labels to value.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}{{{}}}", s.metric, l.join(","))
        };
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => 1.0,
        };
        out.insert(key, v);
    }
    out
}

/// The `Duration` a test waits for a watchdog gap to show.
pub const WATCHDOG_GAP: Duration = Duration::from_secs(2);
