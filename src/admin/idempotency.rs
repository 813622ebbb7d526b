//! `Idempotency-Key` on admin POSTs: the first answer to a (token,
//! method, path, key) is kept for 24 hours and given again to a repeat,
//! which does not act, so a double-clicked replay or recover acts once. A
//! repeat arriving while the first is still being answered waits for that
//! answer. Bounded and in memory (a restart forgets the keys).

use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long an answer is kept.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Most answers kept; the oldest are forgotten first.
pub const MAX_KEYS: usize = 10_000;
/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 255;
/// Largest answer body kept (bigger answers are not remembered).
const MAX_BODY: usize = 64 * 1024;

/// A remembered answer: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub status: u16,
    pub body: bytes::Bytes,
}

type Slot = watch::Receiver<Option<Stored>>;

struct Entry {
    at: Instant,
    slot: Slot,
}

/// The cache of answers by key.
#[derive(Default)]
pub struct Idempotency {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    map: HashMap<[u8; 32], Entry>,
    order: VecDeque<([u8; 32], Instant)>,
}

/// What to do with a request that carries a key.
pub enum Claim {
    /// The first: act, then [`Pending::finish`] with the answer.
    First(Pending),
    /// A repeat: answer this (waits for the first's answer if needed).
    Repeat(Slot),
}

/// The first request's promise to store its answer. Dropped unfinished (the
/// handler failed or was cut off), the key is forgotten, so a retry acts.
pub struct Pending {
    key: [u8; 32],
    tx: Option<watch::Sender<Option<Stored>>>,
    owner: Arc<Idempotency>,
}

impl Pending {
    /// Keeps `answer` for repeats (and hands it to those waiting).
    pub fn finish(mut self, answer: Stored) {
        if let Some(tx) = self.tx.take() {
            if answer.body.len() > MAX_BODY || answer.status >= 500 {
                // Not remembered: an internal failure may be retried.
                self.owner.forget(&self.key);
            }
            let _ = tx.send(Some(answer));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.tx.take().is_some() {
            self.owner.forget(&self.key);
        }
    }
}

impl Idempotency {
    /// Claims a key for (token, method, path); the token is hashed, never kept.
    pub fn claim(self: &Arc<Self>, token: &str, method: &str, path: &str, key: &str) -> Claim {
        let mut h = Sha256::new();
        for part in [token, method, path, key] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let digest: [u8; 32] = h.finalize().into();
        let now = Instant::now();
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.expire(now);
        if let Some(e) = st.map.get(&digest) {
            return Claim::Repeat(e.slot.clone());
        }
        let (tx, rx) = watch::channel(None);
        st.map.insert(digest, Entry { at: now, slot: rx });
        st.order.push_back((digest, now));
        while st.map.len() > MAX_KEYS {
            let Some((k, at)) = st.order.pop_front() else {
                break;
            };
            if st.map.get(&k).is_some_and(|e| e.at == at) {
                st.map.remove(&k);
            }
        }
        Claim::First(Pending {
            key: digest,
            tx: Some(tx),
            owner: self.clone(),
        })
    }

    fn forget(&self, key: &[u8; 32]) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.map.remove(key);
    }
}

impl State {
    fn expire(&mut self, now: Instant) {
        while let Some((k, at)) = self.order.front().copied() {
            if now.duration_since(at) < KEEP && self.map.len() <= MAX_KEYS {
                break;
            }
            self.order.pop_front();
            if self.map.get(&k).is_some_and(|e| e.at == at) {
                self.map.remove(&k);
            }
        }
    }
}

/// Waits for the first request's answer; `None` if it never came (the
/// first was dropped), in which case the caller may act itself.
pub async fn wait(mut slot: Slot) -> Option<Stored> {
    loop {
        if let Some(s) = slot.borrow().clone() {
            return Some(s);
        }
        if slot.changed().await.is_err() {
            return slot.borrow().clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_repeat_gets_the_first_answer_and_waits_for_it() {
        let c = Arc::new(Idempotency::default());
        let Claim::First(p) = c.claim("t", "POST", "/x", "k") else {
            panic!("first")
        };
        let Claim::Repeat(slot) = c.claim("t", "POST", "/x", "k") else {
            panic!("repeat")
        };
        assert!(matches!(c.claim("t2", "POST", "/x", "k"), Claim::First(_)));
        let waiter = tokio::spawn(wait(slot));
        p.finish(Stored {
            status: 201,
            body: "a".into(),
        });
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.status, 201);
        let Claim::Repeat(slot) = c.claim("t", "POST", "/x", "k") else {
            panic!("kept")
        };
        assert_eq!(wait(slot).await.unwrap().body, "a");
    }

    #[tokio::test]
    async fn a_dropped_first_is_forgotten() {
        let c = Arc::new(Idempotency::default());
        let Claim::First(p) = c.claim("t", "POST", "/x", "k") else {
            panic!("first")
        };
        let Claim::Repeat(slot) = c.claim("t", "POST", "/x", "k") else {
            panic!("repeat")
        };
        drop(p);
        assert!(wait(slot).await.is_none());
        assert!(matches!(c.claim("t", "POST", "/x", "k"), Claim::First(_)));
    }
}
