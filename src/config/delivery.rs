//! `[delivery]`: the callback retry schedule and per-attempt limits.

use super::{bounded, bounded_size, positive, Problems};
use bytesize::ByteSize;
use ipnet::IpNet;
use serde::Deserialize;
use std::time::Duration;

/// Largest delay of one `delivery.schedule` entry (7 days).
pub const MAX_SCHEDULE_DELAY: Duration = Duration::from_secs(7 * 86_400);
/// Most entries in `delivery.schedule` (every attempt is kept on the run).
pub const MAX_SCHEDULE_LEN: usize = 50;
/// Largest `delivery.timeout` (5 min).
pub const MAX_DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest `delivery.max_retry_after` (24 h).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Largest `delivery.max_response_bytes` (16 MiB): a receiver's answer is
/// only kept for debugging, never needed whole.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// Most entries in `delivery.allow_destinations`.
pub const MAX_ALLOW_DESTINATIONS: usize = 256;

/// `[delivery]`
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub schedule: Vec<Duration>,
    pub jitter: f64,
    pub timeout: Duration,
    pub max_retry_after: Duration,
    /// Special-purpose networks (loopback, private...) callbacks may reach
    /// anyway; empty by default, so callbacks reach public addresses only.
    pub allow_destinations: Vec<IpNet>,
    /// How much of a receiver's answer is read; the rest is never read.
    pub max_response_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDelivery {
    schedule: Vec<String>,
    jitter: f64,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    #[serde(with = "humantime_serde")]
    max_retry_after: Duration,
    allow_destinations: Vec<String>,
    max_response_bytes: ByteSize,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            schedule: ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            jitter: 0.2,
            timeout: Duration::from_secs(15),
            max_retry_after: Duration::from_secs(3600),
            allow_destinations: Vec::new(),
            max_response_bytes: ByteSize::kib(64),
        }
    }
}

pub(super) fn check_delivery(raw: RawDelivery, p: &mut Problems) -> DeliverySettings {
    let mut schedule = Vec::new();
    for (i, s) in raw.schedule.iter().enumerate() {
        match humantime::parse_duration(s) {
            Ok(d) => {
                bounded(&format!("delivery.schedule[{i}]"), d, MAX_SCHEDULE_DELAY, p);
                schedule.push(d)
            }
            Err(e) => p.add(
                format!("delivery.schedule[{i}]"),
                format!("{s:?} is not a duration: {e}"),
            ),
        }
    }
    if raw.schedule.is_empty() {
        p.add("delivery.schedule", "needs at least one attempt");
    }
    if raw.schedule.len() > MAX_SCHEDULE_LEN {
        p.add(
            "delivery.schedule",
            format!("has more than {MAX_SCHEDULE_LEN} attempts"),
        );
    }
    if !(0.0..=1.0).contains(&raw.jitter) {
        p.add("delivery.jitter", "must be between 0 and 1");
    }
    positive("delivery.timeout", raw.timeout, p);
    bounded("delivery.timeout", raw.timeout, MAX_DELIVERY_TIMEOUT, p);
    bounded(
        "delivery.max_retry_after",
        raw.max_retry_after,
        MAX_RETRY_AFTER,
        p,
    );
    let mut allow_destinations = Vec::new();
    for (i, s) in raw.allow_destinations.iter().enumerate() {
        // A bare address is a one-address network.
        let parsed = s.parse::<IpNet>().or_else(|e| {
            s.parse::<std::net::IpAddr>()
                .map(IpNet::from)
                .map_err(|_| e)
        });
        match parsed {
            Ok(n) => allow_destinations.push(n.trunc()),
            Err(e) => p.add(
                format!("delivery.allow_destinations[{i}]"),
                format!("{s:?} is not a CIDR network: {e}"),
            ),
        }
    }
    if raw.allow_destinations.len() > MAX_ALLOW_DESTINATIONS {
        p.add(
            "delivery.allow_destinations",
            format!("has more than {MAX_ALLOW_DESTINATIONS} networks"),
        );
    }
    bounded_size(
        "delivery.max_response_bytes",
        raw.max_response_bytes.as_u64(),
        MAX_RESPONSE_BYTES,
        p,
    );
    DeliverySettings {
        schedule,
        jitter: raw.jitter,
        timeout: raw.timeout,
        max_retry_after: raw.max_retry_after,
        allow_destinations,
        max_response_bytes: raw.max_response_bytes.as_u64(),
    }
}
