//! Per-route limits over verified requests (strangers cannot use up a
//! route's allowance): a rate (`rate_per_s` or `rate_per_min`, with
//! `burst`), the same keys and the same limiter ([`crate::limit`], governor's
//! GCRA) as provider limits; `max_in_flight` is counted by
//! [`super::inflight`]. Over the limit a request is either refused
//! (429 with `Retry-After`, nothing persisted) or, with
//! `over_limit = "queue"`, accepted and persisted with a later due time: the
//! run stays `accepted` until its turn in the rate, and the scheduler,
//! which works runs in due order, starts it then (no scheduler change).

use crate::limit::{LimitSettings, Limiter};
use serde::Deserialize;
use std::sync::Mutex;
use std::time::Duration;

/// What happens to a verified request over the route's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverLimit {
    /// 429 with `Retry-After`; nothing persisted.
    #[default]
    Reject,
    /// Accepted; the run waits (`accepted`, due later) for its turn.
    Queue,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Start as soon as possible.
    Now,
    /// Accept, but start no earlier than this far from now.
    Later(Duration),
    /// Refuse; the sender may retry after this long.
    Refuse(Duration),
}

/// A route's live limiter (rebuilt with the route's config).
#[derive(Debug)]
pub struct RouteLimiter {
    settings: LimitSettings,
    mode: OverLimit,
    bucket: Limiter,
    /// Queue mode: the theoretical arrival time of the next slot, in
    /// milliseconds since the limiter was built (GCRA without refusals).
    tat_ms: Mutex<u64>,
    origin: std::time::Instant,
}

impl RouteLimiter {
    /// A limiter enforcing `settings` in `mode`.
    pub fn new(settings: LimitSettings, mode: OverLimit) -> Self {
        RouteLimiter {
            settings,
            mode,
            bucket: Limiter::new(LimitSettings {
                max_in_flight: None,
                ..settings
            }),
            tat_ms: Mutex::new(0),
            origin: std::time::Instant::now(),
        }
    }

    /// The route's `max_in_flight`, if any (counted by [`super::inflight::Gate`]).
    pub fn max_in_flight(&self) -> Option<usize> {
        self.settings.max_in_flight
    }

    /// What happens over the limit.
    pub fn mode(&self) -> OverLimit {
        self.mode
    }

    /// Decides one verified request.
    pub fn admit(&self) -> Admit {
        let Some((n, per)) = self.settings.rate else {
            return Admit::Now;
        };
        match self.mode {
            OverLimit::Reject => match self.bucket.try_acquire() {
                Ok(_permit) => Admit::Now,
                Err(wait) => Admit::Refuse(wait),
            },
            OverLimit::Queue => {
                let interval = (per.as_millis() as u64 / u64::from(n.get())).max(1);
                let burst = u64::from(self.settings.burst.get());
                let now = self.origin.elapsed().as_millis() as u64;
                let mut tat = self.tat_ms.lock().unwrap_or_else(|p| p.into_inner());
                let start = (*tat).max(now);
                *tat = start.saturating_add(interval);
                let allowed_at = tat.saturating_sub(burst.saturating_mul(interval));
                if allowed_at <= now {
                    Admit::Now
                } else {
                    Admit::Later(Duration::from_millis(allowed_at - now))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn settings(per_s: u32, burst: u32) -> LimitSettings {
        LimitSettings {
            rate: NonZeroU32::new(per_s).map(|n| (n, Duration::from_secs(1))),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
            max_in_flight: None,
        }
    }

    #[test]
    fn reject_after_the_burst() {
        let l = RouteLimiter::new(settings(1, 2), OverLimit::Reject);
        assert_eq!(l.admit(), Admit::Now);
        assert_eq!(l.admit(), Admit::Now);
        assert!(matches!(l.admit(), Admit::Refuse(d) if d > Duration::ZERO));
    }

    #[test]
    fn queue_spaces_runs_by_the_rate() {
        let l = RouteLimiter::new(settings(10, 2), OverLimit::Queue);
        assert_eq!(l.admit(), Admit::Now);
        assert_eq!(l.admit(), Admit::Now);
        let Admit::Later(a) = l.admit() else {
            panic!("queued")
        };
        let Admit::Later(b) = l.admit() else {
            panic!("queued")
        };
        assert!(a <= Duration::from_millis(100) && b > a, "{a:?} {b:?}");
        let none = RouteLimiter::new(LimitSettings::default(), OverLimit::Queue);
        assert_eq!(none.admit(), Admit::Now);
    }
}
