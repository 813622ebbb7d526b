//! What the daemon knows about its own health, for `/readyz`: loop
//! heartbeats, vendor credential problems, and the HTTP edge's gauges.
//! Every component writes its part here; only the HTTP edge reads it.
//!
//! Readiness means "send me traffic": a stuck loop or a failing store makes
//! the instance unready; a vendor refusing our credentials is reported in the
//! details only, because one expired vendor token must not take the whole
//! instance out of a load balancer.

use crate::time::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A loop that has not beaten for this long counts as stuck.
pub const LOOP_STALL: Duration = Duration::from_secs(60);

/// A vendor that refused our credentials (HTTP 401/403), until a call succeeds.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderProblem {
    pub http_status: u16,
    pub since: Timestamp,
    pub last: Timestamp,
    pub failures: u64,
    pub message: String,
}

/// One loop's heartbeat as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LoopState {
    pub ok: bool,
    pub last_beat_ms_ago: u64,
}

/// Gauges of the HTTP edge (connection and body-byte limits).
#[derive(Debug, Default)]
pub struct EdgeGauges {
    /// Connections currently open.
    pub connections: AtomicU64,
    /// Request body bytes buffered right now, across all requests.
    pub body_bytes: AtomicU64,
    /// The most body bytes ever buffered at once since start.
    pub body_bytes_peak: AtomicU64,
    /// Verified webhooks a route's filter ignored since start (counted, not persisted).
    pub ignored: AtomicU64,
}

impl EdgeGauges {
    /// Adds `n` buffered body bytes and updates the peak.
    pub fn body_add(&self, n: u64) {
        let now = self.body_bytes.fetch_add(n, Ordering::AcqRel) + n;
        self.body_bytes_peak.fetch_max(now, Ordering::AcqRel);
    }

    /// Releases `n` buffered body bytes.
    pub fn body_sub(&self, n: u64) {
        self.body_bytes.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The registry, shared by every component (cheap to clone behind an `Arc`).
#[derive(Debug)]
pub struct Health {
    loops: Mutex<BTreeMap<&'static str, Instant>>,
    providers: Mutex<BTreeMap<String, ProviderProblem>>,
    /// Callback endpoints whose breaker is open, as the delivery path last
    /// saw them (details only: one failing receiver is not the daemon's fault).
    open_breakers: Mutex<Vec<String>>,
    pub edge: EdgeGauges,
    stall: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health::with_stall(LOOP_STALL)
    }
}

impl Health {
    /// A registry where a loop counts as stuck after `stall` without a beat
    /// ([`LOOP_STALL`] in production; tests shorten it to see a stall soon).
    pub fn with_stall(stall: Duration) -> Self {
        Health {
            loops: Mutex::default(),
            providers: Mutex::default(),
            open_breakers: Mutex::default(),
            edge: EdgeGauges::default(),
            stall,
        }
    }

    /// Replaces the list of callback endpoints with an open breaker.
    pub fn set_open_breakers(&self, urls: Vec<String>) {
        metrics::gauge!("runbridge_callback_breakers_open").set(urls.len() as f64);
        *self.open_breakers.lock().unwrap_or_else(|p| p.into_inner()) = urls;
    }

    /// Callback endpoints with an open breaker (redacted URLs).
    pub fn open_breakers(&self) -> Vec<String> {
        self.open_breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A loop proves it is alive; call at least every [`LOOP_STALL`] / 4.
    pub fn beat(&self, name: &'static str) {
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, Instant::now());
    }

    /// Every loop that has beaten at least once, with whether it is alive.
    pub fn loops(&self) -> BTreeMap<&'static str, LoopState> {
        let loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops
            .iter()
            .map(|(name, at)| {
                let age = at.elapsed();
                let state = LoopState {
                    ok: age < self.stall,
                    last_beat_ms_ago: age.as_millis() as u64,
                };
                (*name, state)
            })
            .collect()
    }

    /// A vendor refused our credentials. Returns true when this starts a new
    /// problem (the caller logs it at error level, throttled).
    pub fn provider_refused(&self, provider: &str, http_status: u16, message: String) -> bool {
        let now = Timestamp::now();
        let mut map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(provider) {
            Some(p) => {
                p.http_status = http_status;
                p.last = now;
                p.failures += 1;
                p.message = message;
                false
            }
            None => {
                map.insert(
                    provider.to_string(),
                    ProviderProblem {
                        http_status,
                        since: now,
                        last: now,
                        failures: 1,
                        message,
                    },
                );
                true
            }
        }
    }

    /// A vendor call succeeded: any credential problem is over. Returns the
    /// problem that ended, if there was one.
    pub fn provider_ok(&self, provider: &str) -> Option<ProviderProblem> {
        let mut map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return None;
        }
        map.remove(provider)
    }

    /// Current vendor credential problems by provider name.
    pub fn provider_problems(&self) -> BTreeMap<String, ProviderProblem> {
        self.providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_problem_lifecycle() {
        let h = Health::default();
        assert!(h.provider_refused("slate", 401, "m".into()));
        assert!(!h.provider_refused("slate", 403, "m".into()));
        let p = &h.provider_problems()["slate"];
        assert_eq!((p.http_status, p.failures), (403, 2));
        assert!(h.provider_ok("slate").is_some());
        assert!(h.provider_problems().is_empty());
    }

    #[test]
    fn gauges_track_the_peak() {
        let g = EdgeGauges::default();
        g.body_add(10);
        g.body_add(5);
        g.body_sub(15);
        g.body_add(3);
        assert_eq!(g.body_bytes.load(Ordering::Relaxed), 3);
        assert_eq!(g.body_bytes_peak.load(Ordering::Relaxed), 15);
    }

    #[test]
    fn loops_report_their_age() {
        let h = Health::default();
        h.beat("scheduler");
        assert!(h.loops()["scheduler"].ok);
    }
}
