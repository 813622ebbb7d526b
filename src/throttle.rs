//! Rate-limited logging: a fault that repeats (a full disk, a vendor that
//! keeps refusing, a flood of rejected webhooks) is logged once per interval
//! per key, with the number of repeats left out, so a storm cannot fill a disk
//! while the first occurrence and the ongoing count stay visible.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered at most; past this the oldest half is forgotten (a key
/// forgotten early only means one extra log line).
const MAX_KEYS: usize = 4096;

/// Decides whether a repeated event is logged now.
pub struct Throttle {
    interval: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Throttle {
    /// At most one line per key per `interval`.
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when the event should be logged now, `n` being how many
    /// occurrences of the same key were suppressed since the last line;
    /// `None` when it should stay quiet.
    pub fn allow(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, suppressed)) = seen.get_mut(key) {
            if now.duration_since(*last) < self.interval {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(n);
        }
        if seen.len() >= MAX_KEYS {
            let mut ages: Vec<Instant> = seen.values().map(|(t, _)| *t).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            seen.retain(|_, (t, _)| *t > cut);
        }
        seen.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_with_the_suppressed_count() {
        let t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.allow("a"), Some(0));
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("b"), Some(0), "keys are independent");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.allow("a"), Some(2));
    }

    #[test]
    fn key_count_is_bounded() {
        let t = Throttle::new(Duration::from_secs(60));
        for i in 0..(MAX_KEYS * 3) {
            t.allow(&i.to_string());
        }
        assert!(t.seen.lock().unwrap().len() <= MAX_KEYS);
    }
}
