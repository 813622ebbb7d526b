//! Paused callback endpoints: an operator pauses an endpoint (one URL,
//! across routes and runs) and its deliveries wait, without an attempt and
//! without spending their retry schedule, until it is resumed. The set is
//! persisted by the admin layer (`Store::put_meta`, key [`META_KEY`]), so a
//! pause survives a restart.
//!
//! The scheduler holds a paused delivery for [`PAUSE_HOLD`] and notes the
//! run here; a resume makes those runs due at once (see
//! `Scheduler::release_paused`). After a restart the notes are gone, but
//! held deliveries come due within [`PAUSE_HOLD`] anyway.

use crate::run::RunId;
use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::Duration;

/// The `put_meta` key of the paused endpoint ids (a JSON array).
pub const META_KEY: &str = "admin/paused_endpoints";
/// How long a delivery to a paused endpoint is held before it is looked
/// at again (a resume releases it at once).
pub const PAUSE_HOLD: Duration = Duration::from_secs(60);
/// Most runs noted per paused endpoint (beyond it, held runs come due on
/// their own within [`PAUSE_HOLD`]).
const MAX_NOTED: usize = 100_000;

/// The id of a callback endpoint: a short stable hash of its URL (the
/// URL may carry a token, so it never appears in paths or logs).
pub fn endpoint_id(url: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(url.as_bytes());
    hex::encode(&digest[..6])
}

/// The paused endpoints and the runs held for them.
#[derive(Default)]
pub struct Paused {
    /// Endpoint ids.
    ids: RwLock<HashSet<String>>,
    /// Endpoint id -> runs with a delivery held for it.
    held: RwLock<HashMap<String, HashSet<RunId>>>,
}

impl Paused {
    /// Replaces the set (at start, from the store).
    pub fn set_all(&self, ids: impl IntoIterator<Item = String>) {
        *self.ids.write().unwrap_or_else(|p| p.into_inner()) = ids.into_iter().collect();
    }

    /// Every paused endpoint id, sorted (what is persisted).
    pub fn all(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Pauses (`true`) or resumes an endpoint; returns whether it changed.
    pub fn set(&self, id: &str, paused: bool) -> bool {
        let mut ids = self.ids.write().unwrap_or_else(|p| p.into_inner());
        if paused {
            ids.insert(id.to_string())
        } else {
            ids.remove(id)
        }
    }

    /// Whether the endpoint with this id is paused.
    pub fn is_paused_id(&self, id: &str) -> bool {
        self.ids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Whether deliveries to `url` must wait.
    pub fn is_paused(&self, url: &str) -> bool {
        let ids = self.ids.read().unwrap_or_else(|p| p.into_inner());
        !ids.is_empty() && ids.contains(&endpoint_id(url))
    }

    /// Notes that `run` holds a delivery for the paused endpoint of `url`.
    pub fn note_held(&self, url: &str, run: RunId) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        let set = held.entry(endpoint_id(url)).or_default();
        if set.len() < MAX_NOTED {
            set.insert(run);
        }
    }

    /// The runs noted for an endpoint, forgetting them.
    pub fn take_held(&self, id: &str) -> Vec<RunId> {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        held.remove(id)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_by_url_hash_and_hands_back_held_runs() {
        let p = Paused::default();
        let url = "https://h.example/cb?token=x";
        let id = endpoint_id(url);
        assert_eq!(id.len(), 12);
        assert_eq!(id, endpoint_id(url), "stable");
        assert!(!p.is_paused(url));
        assert!(p.set(&id, true));
        assert!(p.is_paused(url));
        let r = RunId::new();
        p.note_held(url, r);
        assert_eq!(p.take_held(&id), vec![r]);
        assert!(p.take_held(&id).is_empty());
        assert!(p.set(&id, false));
        assert!(!p.is_paused(url));
    }
}
