//! Helpers for the HTTP edge tests: a daemon started with chosen descriptor
//! limits (set in `pre_exec`), raw HTTP/1 over TCP (so odd requests reach
//! the server exactly as written), and a plain blocking client that writes
//! its whole request before reading, like Python's urllib.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{scrub_env, toml_str, DEADLINE};

/// The edge tests' admin token.
pub const ADMIN: &str = "edge-admin";
/// The token route's token.
pub const HOOK_TOKEN: &str = "edge-token";
/// The GitHub route's secret.
pub const EDGE_GH_SECRET: &str = "edge-gh-secret";

/// `[server]` knobs the edge tests vary.
#[derive(Clone, Debug)]
pub struct EdgeCfg {
    pub body_limit: &'static str,
    pub body_buffer_limit: &'static str,
    pub request_timeout: String,
    pub header_read_timeout: &'static str,
    pub idle_timeout: &'static str,
    pub max_headers: usize,
    pub max_header_bytes: &'static str,
    pub max_connections: usize,
}

impl Default for EdgeCfg {
    fn default() -> Self {
        EdgeCfg {
            body_limit: "1MiB",
            body_buffer_limit: "8MiB",
            request_timeout: "30s".into(),
            header_read_timeout: "5s",
            idle_timeout: "5s",
            max_headers: 32,
            max_header_bytes: "8KiB",
            max_connections: 10_000,
        }
    }
}

impl EdgeCfg {
    /// Routes: `gh` (GitHub signature), `tok` (bearer token), `open`
    /// (no verification; input `id` from `/id`); a simulated provider.
    pub fn render(&self, dir: &std::path::Path) -> String {
        format!(
            r#"[server]
listen = "127.0.0.1:0"
body_limit = {body_limit}
body_buffer_limit = {bbl}
request_timeout = {rt}
header_read_timeout = {hrt}
idle_timeout = {idle}
max_headers = {mh}
max_header_bytes = {mhb}
max_connections = {mc}
admin_token = {admin}
shutdown_timeout = "5s"

[storage]
path = {db}

[providers.sim]
kind = "simulated"
duration = "500ms"

[routes.gh]
provider = "sim"
workflow_id = "wf"
verify = {{ kind = "github", secret = {gh} }}

[routes.tok]
provider = "sim"
workflow_id = "wf"
verify = {{ kind = "token", token = {tok} }}

[routes.open]
provider = "sim"
workflow_id = "wf"
verify = {{ kind = "none" }}
[[routes.open.inputs]]
name = "id"
pointer = "/id"
"#,
            body_limit = toml_str(self.body_limit),
            bbl = toml_str(self.body_buffer_limit),
            rt = toml_str(&self.request_timeout),
            hrt = toml_str(self.header_read_timeout),
            idle = toml_str(self.idle_timeout),
            mh = self.max_headers,
            mhb = toml_str(self.max_header_bytes),
            mc = self.max_connections,
            admin = toml_str(ADMIN),
            db = toml_str(&dir.join("db").to_string_lossy()),
            gh = toml_str(EDGE_GH_SECRET),
            tok = toml_str(HOOK_TOKEN),
        )
    }
}

/// A daemon for edge tests, optionally with `RLIMIT_NOFILE` set before exec.
pub struct EdgeDaemon {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl EdgeDaemon {
    /// Starts `runbridge serve`; `nofile` = (soft, hard) applied in the child.
    pub async fn start(cfg: &EdgeCfg, nofile: Option<(u64, u64)>) -> EdgeDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, cfg, nofile).await
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same store
    /// with another config.
    pub async fn restart_with(self, cfg: &EdgeCfg) -> EdgeDaemon {
        let dir = self.stop().await;
        Self::start_in(dir, cfg, None).await
    }

    async fn start_in(dir: TempDir, cfg: &EdgeCfg, nofile: Option<(u64, u64)>) -> EdgeDaemon {
        let path = dir.path().join("runbridge.toml");
        std::fs::write(&path, cfg.render(dir.path())).expect("write config");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbridge"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        scrub_env(&mut cmd);
        if let Some((soft, hard)) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard));
            }
        }
        let mut child = cmd.spawn().expect("spawn runbridge");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("runbridge printed `listening on` in time")
            .expect("read stdout")
            .unwrap_or_else(|| {
                panic!(
                    "runbridge exited before listening:\n{}",
                    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
                )
            });
        // Keep draining stdout so the daemon never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        EdgeDaemon { child, addr, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Resident memory of the daemon in KiB (VmRSS from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// `/readyz`'s JSON.
    pub async fn readyz(&self) -> Value {
        let addr = self.addr;
        let r = tokio::task::spawn_blocking(move || {
            exchange(
                addr,
                b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
        })
        .await
        .expect("join")
        .expect("GET /readyz");
        r.json
    }

    /// A GET with the admin token; (status, JSON).
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let addr = self.addr;
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\nconnection: close\r\n\r\n"
        );
        let r = tokio::task::spawn_blocking(move || exchange(addr, req.as_bytes()))
            .await
            .expect("join")
            .expect("admin GET");
        (r.status, r.json)
    }

    /// Sends SIGTERM without waiting.
    pub async fn sigterm(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .await;
    }

    /// Waits up to `limit` for the exit; `None` if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    pub async fn terminate(self) {
        self.stop().await;
    }

    async fn stop(mut self) -> TempDir {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "runbridge should exit 0 on SIGTERM within 10s: {status:?}\n{}",
            self.stderr()
        );
        self.dir
    }
}

/// One raw HTTP/1 answer.
#[derive(Debug, Clone)]
pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    pub json: Value,
}

impl RawResp {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Parses one answer from bytes read until the server closed (or the
/// declared body length arrived).
pub fn parse_response(raw: &[u8]) -> Option<RawResp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw[end + 4..].to_vec();
    let r = RawResp {
        status,
        head,
        body: Vec::new(),
        json: Value::Null,
    };
    if let Some(n) = r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.truncate(n);
    }
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some(RawResp { body, json, ..r })
}

/// Blocking: connects, writes `req` whole, then reads the answer until the
/// declared length arrived or the server closed. Errors are the client's
/// view (a broken pipe while writing is an error).
pub fn exchange(addr: SocketAddr, req: &[u8]) -> std::io::Result<RawResp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(req)?;
    read_response(&mut s)
}

/// Reads one answer from a blocking stream.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<RawResp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = parse_response(&buf) {
            let want = r
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            if want.is_some_and(|n| r.body.len() >= n) {
                return Ok(r);
            }
        }
        if Instant::now() > end {
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    parse_response(&buf).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "no complete HTTP answer in {:?}",
                String::from_utf8_lossy(&buf)
            ),
        )
    })
}

/// A POST with `headers` (each `Name: value`) and `body`, as raw bytes.
pub fn post(path: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}
