//! `[scheduler]`: polling, run timeouts, concurrency and provider retries.

use super::{bounded, positive, Problems};
use serde::Deserialize;
use std::time::Duration;

/// Largest `scheduler.poll_interval` and `scheduler.max_poll_interval` (1 h).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);
/// Largest `scheduler.poll_slowdown_after` (30 days).
pub const MAX_POLL_SLOWDOWN_AFTER: Duration = Duration::from_secs(30 * 86_400);
/// Largest run timeout, `scheduler.run_timeout` and `routes.NAME.run_timeout` (30 days).
pub const MAX_RUN_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);
/// Largest `scheduler.retry_base` (1 h).
pub const MAX_RETRY_BASE: Duration = Duration::from_secs(3600);
/// Largest `scheduler.retry_max` (24 h).
pub const MAX_RETRY_MAX: Duration = Duration::from_secs(86_400);
/// Largest `scheduler.concurrency` (10,000 runs worked on at once).
pub const MAX_CONCURRENCY: usize = 10_000;

/// `[scheduler]`
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    pub poll_interval: Duration,
    pub poll_slowdown_after: Duration,
    pub max_poll_interval: Duration,
    pub run_timeout: Duration,
    pub concurrency: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawScheduler {
    #[serde(with = "humantime_serde")]
    poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    poll_slowdown_after: Duration,
    #[serde(with = "humantime_serde")]
    max_poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    run_timeout: Duration,
    concurrency: usize,
    #[serde(with = "humantime_serde")]
    retry_base: Duration,
    #[serde(with = "humantime_serde")]
    retry_max: Duration,
}

impl Default for RawScheduler {
    fn default() -> Self {
        RawScheduler {
            poll_interval: Duration::from_secs(5),
            poll_slowdown_after: Duration::from_secs(120),
            max_poll_interval: Duration::from_secs(60),
            run_timeout: Duration::from_secs(24 * 3600),
            concurrency: 64,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

pub(super) fn check_scheduler(raw: RawScheduler, p: &mut Problems) -> SchedulerSettings {
    positive("scheduler.poll_interval", raw.poll_interval, p);
    positive("scheduler.poll_slowdown_after", raw.poll_slowdown_after, p);
    positive("scheduler.run_timeout", raw.run_timeout, p);
    positive("scheduler.retry_base", raw.retry_base, p);
    bounded(
        "scheduler.poll_interval",
        raw.poll_interval,
        MAX_POLL_INTERVAL,
        p,
    );
    bounded(
        "scheduler.poll_slowdown_after",
        raw.poll_slowdown_after,
        MAX_POLL_SLOWDOWN_AFTER,
        p,
    );
    bounded(
        "scheduler.max_poll_interval",
        raw.max_poll_interval,
        MAX_POLL_INTERVAL,
        p,
    );
    bounded("scheduler.run_timeout", raw.run_timeout, MAX_RUN_TIMEOUT, p);
    bounded("scheduler.retry_base", raw.retry_base, MAX_RETRY_BASE, p);
    bounded("scheduler.retry_max", raw.retry_max, MAX_RETRY_MAX, p);
    if raw.concurrency > MAX_CONCURRENCY {
        p.add(
            "scheduler.concurrency",
            format!("must be at most {MAX_CONCURRENCY}"),
        );
    }
    if raw.max_poll_interval < raw.poll_interval {
        p.add(
            "scheduler.max_poll_interval",
            "must not be less than scheduler.poll_interval",
        );
    }
    if raw.retry_max < raw.retry_base {
        p.add(
            "scheduler.retry_max",
            "must not be less than scheduler.retry_base",
        );
    }
    if raw.concurrency == 0 {
        p.add("scheduler.concurrency", "must be at least 1");
    }
    SchedulerSettings {
        poll_interval: raw.poll_interval,
        poll_slowdown_after: raw.poll_slowdown_after,
        max_poll_interval: raw.max_poll_interval,
        run_timeout: raw.run_timeout,
        concurrency: raw.concurrency,
        retry_base: raw.retry_base,
        retry_max: raw.retry_max,
    }
}
