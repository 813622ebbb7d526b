//! How late the scheduler starts each step against its due time: a fixed
//! histogram (1 ms buckets up to 1 s, then 1 s buckets up to 10 min), cheap
//! enough to record on every step. The benchmark reads it; operators may
//! later see it as a metric.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MS_BUCKETS: usize = 1000;
const S_BUCKETS: usize = 600;

/// Step lateness counts.
pub struct Lateness {
    buckets: Vec<AtomicU64>,
}

impl Default for Lateness {
    fn default() -> Self {
        Lateness {
            buckets: (0..MS_BUCKETS + S_BUCKETS + 1)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

/// A summary: steps counted and lateness quantiles (bucket upper bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatenessSummary {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Lateness {
    /// Counts one step that began `late` after its due time.
    pub fn record(&self, late: Duration) {
        let ms = late.as_millis() as usize;
        let i = if ms < MS_BUCKETS {
            ms
        } else {
            (MS_BUCKETS + ms / 1000).min(MS_BUCKETS + S_BUCKETS)
        };
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn bound(i: usize) -> Duration {
        if i < MS_BUCKETS {
            Duration::from_millis(i as u64 + 1)
        } else {
            Duration::from_secs((i - MS_BUCKETS) as u64 + 1)
        }
    }

    /// Quantiles over everything recorded, then clears the counts.
    pub fn take(&self) -> LatenessSummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let at = |q: f64| {
            let want = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return Self::bound(i);
                }
            }
            Duration::ZERO
        };
        let max = counts
            .iter()
            .rposition(|c| *c > 0)
            .map(Self::bound)
            .unwrap_or_default();
        LatenessSummary {
            count,
            p50: if count == 0 { Duration::ZERO } else { at(0.5) },
            p99: if count == 0 { Duration::ZERO } else { at(0.99) },
            max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let l = Lateness::default();
        for ms in 0..100 {
            l.record(Duration::from_millis(ms));
        }
        l.record(Duration::from_secs(5));
        let s = l.take();
        assert_eq!(s.count, 101);
        assert_eq!(s.p50, Duration::from_millis(51));
        assert_eq!(s.p99, Duration::from_millis(100));
        assert_eq!(s.max, Duration::from_secs(6));
        assert_eq!(l.take().count, 0);
    }
}
