//! `[server]`: the HTTP edge's settings.

use super::{bounded, bounded_size, positive, secret, Problems, RawSecret};
use crate::secret::Secret;
use bytesize::ByteSize;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest `server.body_limit` (64 MiB): bodies are buffered whole.
pub const MAX_BODY_LIMIT: u64 = 64 << 20;
/// Largest `server.request_timeout` (10 min).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest `server.shutdown_timeout` (10 min; systemd's default stop timeout is 90 s).
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(600);

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// `None` disables the admin API (it answers 403).
    pub admin_token: Option<Secret>,
    pub shutdown_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    listen: String,
    body_limit: ByteSize,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    admin_token: Option<RawSecret>,
    #[serde(with = "humantime_serde")]
    shutdown_timeout: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            body_limit: ByteSize::mib(1),
            request_timeout: Duration::from_secs(30),
            admin_token: None,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

pub(super) fn check_server(raw: RawServer, p: &mut Problems) -> ServerSettings {
    let listen = raw.listen.parse().unwrap_or_else(|_| {
        p.add(
            "server.listen",
            format!("{:?} is not an address like 127.0.0.1:8080", raw.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
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
    let admin_token = raw
        .admin_token
        .as_ref()
        .and_then(|t| secret(t, "server.admin_token", p));
    ServerSettings {
        listen,
        body_limit: usize::try_from(raw.body_limit.as_u64()).unwrap_or(usize::MAX),
        request_timeout: raw.request_timeout,
        admin_token,
        shutdown_timeout: raw.shutdown_timeout,
    }
}
