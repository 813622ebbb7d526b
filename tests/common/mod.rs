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
//! Each lives in its own module (`daemon.rs`, `slate.rs`, `receiver.rs`;
//! `config.rs` builds the daemon's config) and is re-exported here, so
//! `use common::*;` brings in everything. This file keeps the constants and
//! the small helpers they share: polling, signatures, timestamps.
//!
//! Every wait is a poll-until-deadline: sleeps only happen inside such loops.
#![allow(dead_code)]

pub mod altostrat;
pub mod bridge;
mod config;
mod daemon;
pub mod disk;
pub mod fake;
pub mod onepin;
mod receiver;
pub mod retab;
pub mod service;
mod slate;
pub mod vendor;

// Each test binary uses only some of these, as with the items themselves
// (hence `dead_code` above).
#[allow(unused_imports)]
pub use config::{gh_payload, toml_str, Config, RouteCfg};
#[allow(unused_imports)]
pub use daemon::{hook_client, http_client, scrub_env, to_hook_resp, Daemon, HookResp};
#[allow(unused_imports)]
pub use receiver::{assert_callback_envelope, CallbackRecord, Mode, Receiver};
#[allow(unused_imports)]
pub use slate::{CreateCall, FakeRun, FakeSlate};

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

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
// Headers
// ---------------------------------------------------------------------------

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

/// True if `v` (any JSON shape) mentions `needle` somewhere.
pub fn mentions(v: &Value, needle: &str) -> bool {
    v.to_string().contains(needle)
}
