//! The due index and the quiet overlay: memory only, rebuilt at every open.
//!
//! The due index needs no durable copy: every unfinished run's own record
//! says when it is due (`due_at`, or at once when it has none), and the
//! open walks every run state anyway (to count unfinished runs), so the
//! index is rebuilt exactly from what is durable. A durable copy only cost
//! two extra sled writes per transition and could disagree with its runs.
//!
//! The overlay holds the quiet fields ([`QuietState`]) of runs whose last
//! transition was quiet ([`crate::store::Store::save_quiet`]), or whose due
//! time was spread at open; reads lay it over the durable record. It is lost
//! with the process (or an in-process reopen): the run then reads as its
//! last durable save again, which is what a restart must resume from.

use crate::run::{QuietState, RunId};
use crate::time::Timestamp;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

/// Longest window the overdue tracked runs are spread over at open.
pub(super) const SPREAD_MAX_MS: u64 = 30_000;
/// Overdue tracked runs per second the spread aims at (the window is
/// shorter when there are few of them).
pub(super) const SPREAD_RATE: u64 = 2_000;

/// One entry per unfinished run: about 24 bytes in the ordered set and 32
/// in the map, plus an overlay entry (about 64 bytes) only for a run whose
/// last transition was quiet or whose due time was spread.
#[derive(Default)]
pub(super) struct DueState {
    order: BTreeSet<(Timestamp, RunId)>,
    at: HashMap<RunId, Timestamp>,
    quiet: HashMap<RunId, QuietState>,
}

impl DueState {
    /// Makes `at` the run's one due entry (none: not due).
    fn set(&mut self, id: RunId, at: Option<Timestamp>) {
        let old = match at {
            Some(at) => self.at.insert(id, at),
            None => self.at.remove(&id),
        };
        if let Some(old) = old.filter(|o| Some(*o) != at) {
            self.order.remove(&(old, id));
        }
        if let Some(at) = at {
            self.order.insert((at, id));
        }
    }

    /// The due entries up to `until`, earliest first (for the scheduler).
    pub(super) fn range(&self, until: Timestamp) -> impl Iterator<Item = &(Timestamp, RunId)> {
        self.order.range(..=(until, RunId::MAX))
    }

    /// Entries now: one per unfinished run.
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }
}

/// The due index and the overlay, behind one lock (held for one lookup or
/// one scan of the scheduler's batch).
#[derive(Default)]
pub(super) struct DueIndex {
    state: Mutex<DueState>,
}

impl DueIndex {
    pub(super) fn lock(&self) -> MutexGuard<'_, DueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A durable write of the run was applied: its due entry becomes the
    /// record's, and any overlay is dropped (the record now holds more
    /// recent quiet fields than the overlay).
    pub(super) fn saved(&self, id: RunId, at: Option<Timestamp>) {
        let mut s = self.lock();
        s.quiet.remove(&id);
        s.set(id, at);
    }

    /// A quiet transition: kept in memory only, seen by reads and the due
    /// index at once.
    pub(super) fn quiet(&self, id: RunId, q: QuietState) {
        let mut s = self.lock();
        s.set(id, q.due_at);
        s.quiet.insert(id, q);
    }

    /// The run is gone (retention): no entry, no overlay.
    pub(super) fn removed(&self, id: RunId) {
        self.saved(id, None);
    }

    /// Drops the run's entry if it is still due at `at` (a done run, or a
    /// claim that raced a newer save). True if removed.
    pub(super) fn forget(&self, at: Timestamp, id: RunId) -> bool {
        let mut s = self.lock();
        if s.at.get(&id) != Some(&at) {
            return false;
        }
        s.set(id, None);
        if let Some(q) = s.quiet.get_mut(&id) {
            // Reads agree with the index: not due.
            q.due_at = None;
        }
        true
    }

    /// The overlay of a run, if its last transition was quiet.
    pub(super) fn overlay(&self, id: RunId) -> Option<QuietState> {
        self.lock().quiet.get(&id).copied()
    }

    /// The run's due entry, if it has one.
    #[cfg(test)]
    pub(super) fn due_at(&self, id: RunId) -> Option<Timestamp> {
        self.lock().at.get(&id).copied()
    }

    /// Builds the index at open from the unfinished runs found: `due` are
    /// entries taken as they are; `overdue` are tracked runs whose due time
    /// had passed at `now`, spread uniformly over a window (at most
    /// [`SPREAD_MAX_MS`], at about [`SPREAD_RATE`] runs per second) in
    /// their due order, so a restart does not poll them all at once. A
    /// spread run's due time lives in its overlay, so it reads consistently.
    pub(super) fn build(
        due: Vec<(Timestamp, RunId)>,
        mut overdue: Vec<(RunId, QuietState)>,
        now: Timestamp,
    ) -> DueIndex {
        let mut s = DueState::default();
        s.at.reserve(due.len() + overdue.len());
        for (at, id) in due {
            s.set(id, Some(at));
        }
        overdue.sort_by_key(|(id, q)| (q.due_at, *id));
        let n = overdue.len() as u64;
        let window = (n * 1_000 / SPREAD_RATE).min(SPREAD_MAX_MS);
        for (i, (id, mut q)) in overdue.into_iter().enumerate() {
            let at = Timestamp(now.0 + window * i as u64 / n.max(1));
            q.due_at = Some(at);
            s.set(id, Some(at));
            s.quiet.insert(id, q);
        }
        DueIndex {
            state: Mutex::new(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(due: u64) -> QuietState {
        QuietState {
            polls: 3,
            updated_at: Timestamp(1),
            due_at: Some(Timestamp(due)),
            poll_at: Some(Timestamp(due)),
        }
    }

    #[test]
    fn one_entry_per_run_and_the_overlay_follows_saves() {
        let (a, b) = (RunId::new(), RunId::new());
        let idx = DueIndex::build(vec![(Timestamp(5), a)], Vec::new(), Timestamp(0));
        idx.saved(a, Some(Timestamp(7)));
        idx.quiet(b, q(3));
        let due: Vec<_> = idx.lock().range(Timestamp(100)).copied().collect();
        assert_eq!(due, vec![(Timestamp(3), b), (Timestamp(7), a)]);
        assert_eq!(idx.overlay(b), Some(q(3)));
        assert!(!idx.forget(Timestamp(5), a), "a stale time removes nothing");
        assert!(idx.forget(Timestamp(7), a));
        idx.saved(b, Some(Timestamp(9)));
        assert_eq!(idx.overlay(b), None, "a durable save drops the overlay");
        idx.removed(b);
        assert_eq!(idx.lock().len(), 0);
    }

    #[test]
    fn overdue_tracked_runs_are_spread_over_a_bounded_window() {
        let now = Timestamp(1_000_000);
        let overdue: Vec<_> = (0..10_000).map(|i| (RunId::new(), q(i))).collect();
        let first = overdue[0].0;
        let idx = DueIndex::build(Vec::new(), overdue, now);
        let due: Vec<_> = idx.lock().range(Timestamp(u64::MAX)).copied().collect();
        assert_eq!(due.len(), 10_000);
        assert_eq!(due[0], (now, first), "the most overdue goes first");
        let last = due[9_999].0;
        assert!(
            last.0 - now.0 >= 4_900 && last.0 - now.0 < 5_000,
            "{last:?}"
        );
        assert_eq!(idx.overlay(first).unwrap().due_at, Some(now));
        let idx = DueIndex::build(Vec::new(), vec![(first, q(1))], now);
        assert_eq!(idx.due_at(first), Some(now), "one run: at once");
    }
}
