//! `[server]`: the HTTP edge's settings.

use super::{bounded, bounded_size, positive, secret, Problems, RawSecret};
use crate::secret::Secret;
use bytesize::ByteSize;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Largest `server.body_limit` (64 MiB): bodies are buffered whole.
pub const MAX_BODY_LIMIT: u64 = 64 << 20;
/// Largest `server.request_timeout` (10 min).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest `server.shutdown_timeout` (10 min; systemd's default stop timeout is 90 s).
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest accepted `header_read_timeout`, `idle_timeout` and `linger_timeout`:
/// longer only lets idle or slow clients hold descriptors.
pub const MAX_EDGE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest accepted `max_connections` (the descriptor limit caps it further).
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Largest accepted `max_headers`.
pub const MAX_HEADERS: usize = 1024;
/// Largest accepted `max_header_bytes`.
pub const MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// Largest accepted `body_buffer_limit` (the semaphore counts bytes).
pub const MAX_BODY_BUFFER: u64 = 16 * 1024 * 1024 * 1024;
/// Largest accepted `linger_bytes`.
pub const MAX_LINGER_BYTES: u64 = 1024 * 1024 * 1024;

/// `[server.tls]`: serve HTTPS from these PEM files (HTTP/1.1 and HTTP/2).
/// Both are read again on every reload, so a renewed certificate needs no
/// restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// HTTPS on the main listener, when set.
    pub tls: Option<TlsSettings>,
    /// Where webhooks and the admin API are served (unless systemd passes a socket).
    pub listen: SocketAddr,
    /// A separate address for `/healthz`, `/readyz` and `/metrics`, so they
    /// need not face the internet; when set they leave the main listener.
    pub ops_listen: Option<SocketAddr>,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// `None` disables the admin API (it answers 403).
    pub admin_token: Option<Secret>,
    pub shutdown_timeout: Duration,
    /// How long a new connection may take to send its first request's headers.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Most connections open at once (further capped below the descriptor limit).
    pub max_connections: usize,
    /// Most header fields in one request (431 beyond).
    pub max_headers: usize,
    /// Most bytes of request line plus headers (431 beyond).
    pub max_header_bytes: usize,
    /// Most body bytes buffered at once across all requests.
    pub body_buffer_limit: usize,
    /// After an early answer, discard at most this many unread body bytes...
    pub linger_bytes: u64,
    /// ...for at most this long, so the sender reads the answer.
    pub linger_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    listen: String,
    tls: Option<RawTls>,
    ops_listen: Option<String>,
    body_limit: ByteSize,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    admin_token: Option<RawSecret>,
    #[serde(with = "humantime_serde")]
    shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    idle_timeout: Duration,
    max_connections: usize,
    max_headers: usize,
    max_header_bytes: ByteSize,
    body_buffer_limit: Option<ByteSize>,
    linger_bytes: ByteSize,
    #[serde(with = "humantime_serde")]
    linger_timeout: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            tls: None,
            ops_listen: None,
            body_limit: ByteSize::mib(1),
            request_timeout: Duration::from_secs(30),
            admin_token: None,
            shutdown_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            max_headers: 100,
            max_header_bytes: ByteSize::kib(16),
            body_buffer_limit: None,
            linger_bytes: ByteSize::mib(16),
            linger_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: String,
    key: String,
}

/// A PEM error without any of the file's bytes (a key file's line is a secret).
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "nothing of the expected kind in the file".into(),
        _ => "not valid PEM".into(),
    }
}

/// Checks that the certificate and key files read and parse as PEM, so a
/// broken renewal is refused by `check-config` and by a reload.
fn check_tls(raw: &RawTls, p: &mut Problems) -> Option<TlsSettings> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut ok = true;
    match CertificateDer::pem_file_iter(&raw.cert) {
        Ok(certs) => match certs.collect::<Result<Vec<_>, _>>() {
            Ok(c) if !c.is_empty() => {}
            Ok(_) => {
                p.add(
                    "server.tls.cert",
                    format!("{}: no certificate in the file", raw.cert),
                );
                ok = false;
            }
            Err(e) => {
                p.add(
                    "server.tls.cert",
                    format!("{}: {}", raw.cert, pem_error(&e)),
                );
                ok = false;
            }
        },
        Err(e) => {
            p.add(
                "server.tls.cert",
                format!("{}: {}", raw.cert, pem_error(&e)),
            );
            ok = false;
        }
    }
    // The key's error never quotes the file's contents.
    if let Err(e) = PrivateKeyDer::from_pem_file(&raw.key) {
        p.add(
            "server.tls.key",
            format!("{}: no usable private key ({})", raw.key, pem_error(&e)),
        );
        ok = false;
    }
    ok.then(|| TlsSettings {
        cert: PathBuf::from(&raw.cert),
        key: PathBuf::from(&raw.key),
    })
}

/// `body_buffer_limit` when unset: 64 MiB, or 4 bodies at the limit if larger.
fn default_body_buffer(body_limit: u64) -> u64 {
    (64 * 1024 * 1024).max(body_limit.saturating_mul(4))
}

fn in_range(key: &str, v: u64, min: u64, max: u64, p: &mut Problems) {
    if v < min || v > max {
        p.add(key, format!("must be between {min} and {max}"));
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

pub(super) fn check_server(raw: RawServer, p: &mut Problems) -> ServerSettings {
    let listen = raw.listen.parse().unwrap_or_else(|_| {
        p.add(
            "server.listen",
            format!("{:?} is not an address like 127.0.0.1:8080", raw.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let ops_listen = raw
        .ops_listen
        .as_ref()
        .and_then(|a| match a.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                p.add(
                    "server.ops_listen",
                    format!("{a:?} is not an address like 127.0.0.1:9100"),
                );
                None
            }
        });
    if ops_listen.is_some_and(|o| o == listen && o.port() != 0) {
        p.add("server.ops_listen", "must differ from server.listen");
    }
    if raw.body_limit.as_u64() == 0 {
        p.add("server.body_limit", "must be greater than zero");
    }
    positive("server.request_timeout", raw.request_timeout, p);
    positive("server.shutdown_timeout", raw.shutdown_timeout, p);
    bounded_size(
        "server.body_limit",
        raw.body_limit.as_u64(),
        MAX_BODY_LIMIT,
        p,
    );
    bounded(
        "server.request_timeout",
        raw.request_timeout,
        MAX_REQUEST_TIMEOUT,
        p,
    );
    bounded(
        "server.shutdown_timeout",
        raw.shutdown_timeout,
        MAX_SHUTDOWN_TIMEOUT,
        p,
    );
    for (key, d) in [
        ("server.header_read_timeout", raw.header_read_timeout),
        ("server.idle_timeout", raw.idle_timeout),
        ("server.linger_timeout", raw.linger_timeout),
    ] {
        positive(key, d, p);
        bounded(key, d, MAX_EDGE_TIMEOUT, p);
    }
    in_range(
        "server.max_connections",
        raw.max_connections as u64,
        1,
        MAX_CONNECTIONS as u64,
        p,
    );
    in_range(
        "server.max_headers",
        raw.max_headers as u64,
        8,
        MAX_HEADERS as u64,
        p,
    );
    in_range(
        "server.max_header_bytes",
        raw.max_header_bytes.as_u64(),
        1024,
        MAX_HEADER_BYTES,
        p,
    );
    let body_buffer = raw
        .body_buffer_limit
        .map(|b| b.as_u64())
        .unwrap_or_else(|| default_body_buffer(raw.body_limit.as_u64()));
    if body_buffer < raw.body_limit.as_u64() {
        p.add(
            "server.body_buffer_limit",
            "must be at least server.body_limit (one largest body must fit)",
        );
    }
    bounded_size("server.body_buffer_limit", body_buffer, MAX_BODY_BUFFER, p);
    bounded_size(
        "server.linger_bytes",
        raw.linger_bytes.as_u64(),
        MAX_LINGER_BYTES,
        p,
    );
    let admin_token = raw
        .admin_token
        .as_ref()
        .and_then(|t| secret(t, "server.admin_token", p));
    let tls = raw.tls.as_ref().and_then(|t| check_tls(t, p));
    ServerSettings {
        listen,
        tls,
        ops_listen,
        body_limit: to_usize(raw.body_limit.as_u64()),
        request_timeout: raw.request_timeout,
        admin_token,
        shutdown_timeout: raw.shutdown_timeout,
        header_read_timeout: raw.header_read_timeout,
        idle_timeout: raw.idle_timeout,
        max_connections: raw.max_connections,
        max_headers: raw.max_headers,
        max_header_bytes: to_usize(raw.max_header_bytes.as_u64()),
        body_buffer_limit: to_usize(body_buffer),
        linger_bytes: raw.linger_bytes.as_u64(),
        linger_timeout: raw.linger_timeout,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, Settings};

    fn load(server: &str) -> Result<Settings, ConfigError> {
        let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}");
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .unwrap();
        Settings::from_config(cfg)
    }

    fn problems_at(server: &str) -> Vec<String> {
        match load(server) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|p| p.key).collect(),
        }
    }

    #[test]
    fn edge_defaults() {
        let s = load("").unwrap().server;
        assert_eq!(s.header_read_timeout.as_secs(), 10);
        assert_eq!(s.idle_timeout.as_secs(), 75);
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.max_headers, 100);
        assert_eq!(s.max_header_bytes, 16 * 1024);
        assert_eq!(s.body_buffer_limit, 64 * 1024 * 1024);
        assert_eq!(s.linger_bytes, 16 * 1024 * 1024);
        assert_eq!(s.linger_timeout.as_secs(), 10);
        let big = load("body_limit = \"32MiB\"").unwrap().server;
        assert_eq!(
            big.body_buffer_limit,
            128 * 1024 * 1024,
            "the default buffer holds four bodies at the limit"
        );
    }

    #[test]
    fn edge_keys_have_maxima() {
        for (toml, key) in [
            ("header_read_timeout = \"2h\"", "server.header_read_timeout"),
            ("header_read_timeout = \"0s\"", "server.header_read_timeout"),
            ("idle_timeout = \"9000y\"", "server.idle_timeout"),
            ("linger_timeout = \"2h\"", "server.linger_timeout"),
            ("max_connections = 0", "server.max_connections"),
            ("max_connections = 2000000", "server.max_connections"),
            ("max_headers = 5000", "server.max_headers"),
            ("max_headers = 1", "server.max_headers"),
            ("max_header_bytes = \"2MiB\"", "server.max_header_bytes"),
            ("max_header_bytes = \"100B\"", "server.max_header_bytes"),
            ("body_buffer_limit = \"64GiB\"", "server.body_buffer_limit"),
            ("linger_bytes = \"2GiB\"", "server.linger_bytes"),
            (
                "body_limit = \"2MiB\"\nbody_buffer_limit = \"1MiB\"",
                "server.body_buffer_limit",
            ),
        ] {
            let keys = problems_at(toml);
            assert!(
                keys.iter().any(|k| k == key),
                "{toml:?} should be a problem at {key}; got {keys:?}"
            );
        }
        let at_max =
            "header_read_timeout = \"1h\"\nidle_timeout = \"1h\"\nlinger_timeout = \"1h\"\n\
             max_connections = 1000000\nmax_headers = 1024\nmax_header_bytes = \"1MiB\"\n\
             body_buffer_limit = \"16GiB\"\nlinger_bytes = \"1GiB\"";
        assert!(load(at_max).is_ok(), "{:?}", problems_at(at_max));
    }
}
