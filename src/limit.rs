//! Rate and concurrency limits with one set of config keys wherever
//! runbridge limits a rate (providers, routes, callback endpoints):
//! `rate_per_s` or `rate_per_min`, `burst` (default 1) and `max_in_flight`.
//!
//! The rate is a token bucket (governor's GCRA), the concurrency a
//! semaphore. A peer's `429` with `Retry-After` can slow the whole limiter
//! down ([`Limiter::hold_off`]), so every caller waits, not only the one that
//! was told.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest `rate_per_s`, `rate_per_min` and `burst`.
pub const MAX_RATE: u32 = 1_000_000;
/// Largest `max_in_flight`.
pub const MAX_IN_FLIGHT: usize = 1_000_000;
/// Longest a [`Limiter::hold_off`] may stop callers.
pub const MAX_HOLD_OFF: Duration = Duration::from_secs(3600);

/// The four keys as written in a config section. Sections declare these
/// fields themselves (serde's `flatten` does not mix with
/// `deny_unknown_fields`) and hand them over for checking.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct RawLimit {
    pub rate_per_s: Option<u32>,
    pub rate_per_min: Option<u32>,
    pub burst: Option<u32>,
    pub max_in_flight: Option<usize>,
}

/// A checked limit; the default limits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Requests per period, if rate-limited.
    pub rate: Option<(NonZeroU32, Duration)>,
    /// Requests allowed at once above the steady rate.
    pub burst: NonZeroU32,
    pub max_in_flight: Option<usize>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            rate: None,
            burst: NonZeroU32::MIN,
            max_in_flight: None,
        }
    }
}

impl RawLimit {
    /// Checks the keys under `prefix`, reporting each problem to `problem(key, message)`.
    pub fn check(&self, prefix: &str, problem: &mut dyn FnMut(String, String)) -> LimitSettings {
        let key = |k: &str| format!("{prefix}.{k}");
        let mut positive = |k: &str, v: u64, max: u64| {
            if v == 0 || v > max {
                problem(key(k), format!("must be between 1 and {max}"));
            }
        };
        if let Some(v) = self.rate_per_s {
            positive("rate_per_s", v.into(), MAX_RATE.into());
        }
        if let Some(v) = self.rate_per_min {
            positive("rate_per_min", v.into(), MAX_RATE.into());
        }
        if let Some(v) = self.burst {
            positive("burst", v.into(), MAX_RATE.into());
        }
        if let Some(v) = self.max_in_flight {
            positive("max_in_flight", v as u64, MAX_IN_FLIGHT as u64);
        }
        if self.rate_per_s.is_some() && self.rate_per_min.is_some() {
            problem(
                key("rate_per_min"),
                "give rate_per_s or rate_per_min, not both".into(),
            );
        }
        if self.burst.is_some() && self.rate_per_s.is_none() && self.rate_per_min.is_none() {
            problem(key("burst"), "needs rate_per_s or rate_per_min".into());
        }
        let rate = match (self.rate_per_s, self.rate_per_min) {
            (Some(n), _) => NonZeroU32::new(n.min(MAX_RATE)).map(|n| (n, Duration::from_secs(1))),
            (None, Some(n)) => {
                NonZeroU32::new(n.min(MAX_RATE)).map(|n| (n, Duration::from_secs(60)))
            }
            (None, None) => None,
        };
        LimitSettings {
            rate,
            burst: self
                .burst
                .and_then(|b| NonZeroU32::new(b.min(MAX_RATE)))
                .unwrap_or(NonZeroU32::MIN),
            max_in_flight: self
                .max_in_flight
                .filter(|n| *n > 0)
                .map(|n| n.min(MAX_IN_FLIGHT)),
        }
    }
}

/// Holds one unit of concurrency until dropped.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// A live limiter built from [`LimitSettings`].
pub struct Limiter {
    settings: LimitSettings,
    bucket: Option<DefaultDirectRateLimiter>,
    in_flight: Option<Arc<Semaphore>>,
    held_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter enforcing `s`.
    pub fn new(s: LimitSettings) -> Self {
        let bucket = s.rate.and_then(|(n, per)| {
            Quota::with_period(per / n.get()).map(|q| RateLimiter::direct(q.allow_burst(s.burst)))
        });
        Limiter {
            settings: s,
            bucket,
            in_flight: s.max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
            held_until: Mutex::new(None),
        }
    }

    /// The settings this limiter enforces (a reload compares them to keep
    /// a limiter whose settings did not change).
    pub fn settings(&self) -> LimitSettings {
        self.settings
    }

    /// Waits for a concurrency slot and a rate token (and any hold-off).
    pub async fn acquire(&self) -> Permit {
        let permit = match &self.in_flight {
            Some(sem) => sem.clone().acquire_owned().await.ok(),
            None => None,
        };
        loop {
            let hold = self.hold_remaining();
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
                continue;
            }
            match &self.bucket {
                Some(b) => b.until_ready().await,
                None => break,
            }
            if self.hold_remaining().is_zero() {
                break;
            }
        }
        Permit(permit)
    }

    /// Takes a slot and a token now, or says how long to wait (for answers
    /// such as `429` with `Retry-After`).
    pub fn try_acquire(&self) -> Result<Permit, Duration> {
        let hold = self.hold_remaining();
        if !hold.is_zero() {
            return Err(hold);
        }
        let permit = match &self.in_flight {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return Err(Duration::from_secs(1)),
            },
            None => None,
        };
        if let Some(b) = &self.bucket {
            if let Err(not_until) = b.check() {
                return Err(not_until.wait_time_from(DefaultClock::default().now()));
            }
        }
        Ok(Permit(permit))
    }

    /// Makes every caller wait at least `d` from now (a peer's `Retry-After`).
    pub fn hold_off(&self, d: Duration) {
        let until = Instant::now() + d.min(MAX_HOLD_OFF);
        let mut held = self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }

    fn hold_remaining(&self) -> Duration {
        let held = self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        held.map(|h| h.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// Concurrency slots free now (for metrics and readiness details).
    pub fn available(&self) -> Option<usize> {
        self.in_flight.as_ref().map(|s| s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: RawLimit) -> (LimitSettings, Vec<String>) {
        let mut problems = Vec::new();
        let s = raw.check("p", &mut |k, m| problems.push(format!("{k}: {m}")));
        (s, problems)
    }

    #[test]
    fn keys_are_checked_with_their_paths() {
        let (s, p) = check(RawLimit {
            rate_per_min: Some(60),
            burst: Some(5),
            max_in_flight: Some(3),
            ..Default::default()
        });
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            s.rate.map(|(n, per)| (n.get(), per)),
            Some((60, Duration::from_secs(60)))
        );
        assert_eq!((s.burst.get(), s.max_in_flight), (5, Some(3)));
        let (_, p) = check(RawLimit {
            rate_per_s: Some(0),
            rate_per_min: Some(1),
            max_in_flight: Some(0),
            ..Default::default()
        });
        assert!(p.iter().any(|m| m.starts_with("p.rate_per_s:")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("not both")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("p.max_in_flight:")), "{p:?}");
        let (_, p) = check(RawLimit {
            burst: Some(2),
            ..Default::default()
        });
        assert!(p.iter().any(|m| m.contains("needs rate_per_s")), "{p:?}");
        assert_eq!(check(RawLimit::default()).0, LimitSettings::default());
    }

    #[test]
    fn burst_then_the_rate() {
        let l = Limiter::new(LimitSettings {
            rate: NonZeroU32::new(10).map(|n| (n, Duration::from_secs(1))),
            burst: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            max_in_flight: None,
        });
        for _ in 0..3 {
            assert!(l.try_acquire().is_ok());
        }
        let wait = l.try_acquire().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    #[test]
    fn concurrency_and_hold_off() {
        let l = Limiter::new(LimitSettings {
            max_in_flight: Some(1),
            ..Default::default()
        });
        let held = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_err());
        drop(held);
        assert!(l.try_acquire().is_ok());
        l.hold_off(Duration::from_secs(30));
        let wait = l.try_acquire().unwrap_err();
        assert!(wait > Duration::from_secs(29), "{wait:?}");
    }

    #[tokio::test]
    async fn acquire_waits_for_a_token() {
        let l = Limiter::new(LimitSettings {
            rate: NonZeroU32::new(20).map(|n| (n, Duration::from_secs(1))),
            burst: NonZeroU32::MIN,
            max_in_flight: None,
        });
        let start = Instant::now();
        for _ in 0..3 {
            let _p = l.acquire().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
    }
}
