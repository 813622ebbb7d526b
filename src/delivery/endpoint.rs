//! Per-endpoint state of callback delivery (one callback URL, across every
//! run): its limiter (`max_in_flight` and rate), so a burst of finished runs
//! cannot flood a receiver, and a circuit breaker that holds deliveries to
//! an endpoint failing consecutively and lets one probe through before the
//! rest flow again.
//!
//! In memory only, rebuilt empty at start: a restart at worst re-probes an
//! endpoint that was failing. Nothing here drops a delivery: a delivery not
//! admitted is held (stays pending with a later due time) without spending
//! an attempt of its retry schedule.

use crate::limit::{LimitSettings, Limiter, Permit};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a delivery waits when the endpoint's `max_in_flight` is taken,
/// or while the breaker's probe is out.
pub const BUSY_HOLD: Duration = Duration::from_millis(200);
/// After this long without a report on its probe (a step cut off at
/// shutdown, a panicked task), another delivery may probe, so an endpoint
/// can never stay held for good.
pub const PROBE_EXPIRY: Duration = Duration::from_secs(120);
/// Longest cool-down the growing breaker reaches.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// When the breaker of an endpoint opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failed attempts that open it (0: never).
    pub failures: u32,
    /// The first cool-down; it doubles after every failed probe.
    pub cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
    /// When the probe now out was admitted.
    probing: Option<Instant>,
}

struct Endpoint {
    limiter: Arc<Limiter>,
    breaker: Breaker,
}

/// Admission to send one attempt now: hold the permit until it is done,
/// then [`Endpoints::report`] its outcome.
pub struct Admitted {
    /// The endpoint's concurrency slot.
    pub permit: Permit,
}

/// Every endpoint delivered to since start.
#[derive(Default)]
pub struct Endpoints {
    inner: Mutex<HashMap<String, Endpoint>>,
}

impl Endpoints {
    /// Asks to send one attempt to `url` now, or says how long to hold it.
    pub fn admit(&self, url: &str, limit: &LimitSettings) -> Result<Admitted, Duration> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ep = map.entry(url.to_string()).or_insert_with(|| Endpoint {
            limiter: Arc::new(Limiter::new(*limit)),
            breaker: Breaker::default(),
        });
        if ep.limiter.settings() != *limit {
            // A reload changed the limit.
            ep.limiter = Arc::new(Limiter::new(*limit));
        }
        let now = Instant::now();
        let mut probe = false;
        if let Some(until) = ep.breaker.open_until {
            if now < until {
                return Err(until - now);
            }
            if ep
                .breaker
                .probing
                .is_some_and(|at| now.duration_since(at) < PROBE_EXPIRY)
            {
                return Err(BUSY_HOLD);
            }
            probe = true;
        }
        if ep.limiter.available() == Some(0) {
            return Err(BUSY_HOLD);
        }
        let permit = ep.limiter.try_acquire()?;
        if probe {
            ep.breaker.probing = Some(now);
        }
        Ok(Admitted { permit })
    }

    /// Records an attempt's outcome: a success closes the breaker, a
    /// failure counts towards opening it (or reopens it after a failed probe,
    /// for twice the cool-down). 410 Gone is neither: the receiver answered.
    pub fn report(&self, url: &str, succeeded: bool, breaker: &BreakerSettings) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ep) = map.get_mut(url) else {
            return;
        };
        let b = &mut ep.breaker;
        if succeeded {
            if b.open_until.is_some() {
                tracing::info!(url = %crate::secret::redact_url(url), "callback endpoint recovered; breaker closed");
            }
            *b = Breaker::default();
            return;
        }
        b.consecutive = b.consecutive.saturating_add(1);
        if breaker.failures == 0 {
            return;
        }
        let reopen = b.probing.is_some();
        if reopen || (b.open_until.is_none() && b.consecutive >= breaker.failures) {
            b.cooldown = if reopen {
                (b.cooldown * 2).min(MAX_COOLDOWN)
            } else {
                breaker.cooldown.min(MAX_COOLDOWN)
            };
            b.open_until = Some(Instant::now() + b.cooldown);
            b.probing = None;
            tracing::warn!(
                url = %crate::secret::redact_url(url),
                failures = b.consecutive,
                cooldown = %humantime::format_duration(b.cooldown),
                "callback endpoint failing; breaker open, deliveries held"
            );
        }
    }

    /// The endpoints whose breaker is open now (or probing), for readiness
    /// details and the metric.
    pub fn open(&self) -> Vec<String> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = map
            .iter()
            .filter(|(_, ep)| ep.breaker.open_until.is_some())
            .map(|(u, _)| crate::secret::redact_url(u))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "http://r/cb";

    #[test]
    fn opens_after_consecutive_failures_probes_once_and_closes() {
        let e = Endpoints::default();
        let l = LimitSettings::default();
        let b = BreakerSettings {
            failures: 3,
            cooldown: Duration::from_millis(50),
        };
        for _ in 0..3 {
            let a = e.admit(U, &l).map_err(|_| "held").unwrap();
            drop(a);
            e.report(U, false, &b);
        }
        assert!(e.admit(U, &l).is_err(), "open");
        assert_eq!(e.open(), [U]);
        std::thread::sleep(Duration::from_millis(60));
        let probe = e.admit(U, &l);
        assert!(probe.is_ok(), "one probe");
        assert!(e.admit(U, &l).is_err(), "only one");
        e.report(U, false, &b);
        let held = e.admit(U, &l).err().unwrap_or_default();
        assert!(held > Duration::from_millis(60), "cool-down grew: {held:?}");
        std::thread::sleep(held + Duration::from_millis(10));
        assert!(e.admit(U, &l).is_ok());
        e.report(U, true, &b);
        assert!(e.open().is_empty());
        assert!(e.admit(U, &l).is_ok(), "closed again");
    }

    #[test]
    fn max_in_flight_holds_the_rest() {
        let e = Endpoints::default();
        let l = LimitSettings {
            max_in_flight: Some(2),
            ..LimitSettings::default()
        };
        let a1 = e.admit(U, &l).map_err(|_| "held").unwrap();
        let _a2 = e.admit(U, &l).map_err(|_| "held").unwrap();
        assert!(e.admit(U, &l).is_err());
        assert!(e.admit("other", &l).is_ok(), "per endpoint");
        drop(a1);
        assert!(e.admit(U, &l).is_ok());
    }
}
