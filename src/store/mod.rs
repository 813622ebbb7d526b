//! Durable records: runs, dedupe keys and the due index.
//!
//! [`Store`] is the seam for other backends (a shared database later); the
//! embedded default is [`sled::SledStore`]. Nothing outside this module sees
//! a backend type. Writes resolve only once durable, so a caller may
//! acknowledge what a write covers as soon as it returns.

pub mod memory;
pub mod sled;

use crate::run::{DeliveryState, Phase, Run, RunId, RunStatus};
use crate::time::Timestamp;
use async_trait::async_trait;

/// A delivery id remembered for a route until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeKey {
    pub route: String,
    pub delivery_id: String,
    pub expires_at: Timestamp,
}

/// Result of [`Store::create_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The run is now durable.
    New,
    /// The dedupe key already belongs to this (durable) run; nothing was written.
    Duplicate(RunId),
}

/// Storage failures. Their text never contains record contents.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend error: {0}")]
    Backend(String),
    #[error("storage is shutting down")]
    Closed,
    #[error("stored record {0} could not be decoded")]
    Corrupt(String),
    /// The store is in a write fault ([`Store::fault`]): refused without
    /// touching the disk, so a broken disk gets no load while it recovers.
    #[error("storage is unavailable {0}")]
    Unavailable(String),
}

/// The store cannot write: what failed and since when. While a fault lasts,
/// writes fail fast and `/readyz` reports the instance unready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreFault {
    pub since: Timestamp,
    /// The backend's error, without record contents.
    pub error: String,
    /// Failed writes or recovery attempts since the fault began.
    pub failures: u64,
}

/// Filter for [`Store::list_runs`], newest first (ids are ULIDs, so newest
/// = largest id). Every field left `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Only runs of this route.
    pub route: Option<String>,
    /// Only runs with this vendor-neutral status.
    pub status: Option<RunStatus>,
    /// Only runs of this provider.
    pub provider: Option<String>,
    /// Only runs in this phase of our lifecycle.
    pub phase: Option<Phase>,
    /// `created_at >= since` (inclusive).
    pub since: Option<Timestamp>,
    /// `created_at < until` (exclusive).
    pub until: Option<Timestamp>,
    /// The trigger's delivery id (dedupe header value).
    pub delivery_id: Option<String>,
    /// Cursor: only runs with an id strictly less than this (the previous
    /// page's last id).
    pub before: Option<RunId>,
    /// At most this many runs (0 returns none).
    pub limit: usize,
}

impl RunQuery {
    /// Whether `run` satisfies every condition of the query (the final
    /// check of any backend, so a stale index entry never yields a wrong run).
    pub fn matches(&self, run: &Run) -> bool {
        self.before.is_none_or(|b| run.id() < b)
            && self.route.as_deref().is_none_or(|r| run.route() == r)
            && self.status.is_none_or(|s| run.status() == s)
            && self.provider.as_deref().is_none_or(|p| run.provider() == p)
            && self.phase.is_none_or(|p| run.phase() == p)
            && self.since.is_none_or(|t| run.created_at() >= t)
            && self.until.is_none_or(|t| run.created_at() < t)
            && self
                .delivery_id
                .as_deref()
                .is_none_or(|d| run.delivery_id().as_deref() == Some(d))
    }
}

/// Filter for [`Store::list_deliveries`]: deliveries across runs, newest
/// run first, and within a run the highest delivery index first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    /// States wanted; empty = failing and dead (what needs attention).
    pub states: Vec<DeliveryState>,
    /// Only deliveries of runs of this route.
    pub route: Option<String>,
    /// The run's `created_at >= since`.
    pub since: Option<Timestamp>,
    /// Cursor: strictly after this (run id, delivery index) in newest-first
    /// order, i.e. only pairs lexicographically less than it.
    pub before: Option<(RunId, u32)>,
    /// At most this many deliveries (0 returns none).
    pub limit: usize,
}

impl DeliveryQuery {
    /// The states asked for, with the default (failing and dead) filled in.
    pub fn wanted(&self) -> Vec<DeliveryState> {
        if self.states.is_empty() {
            vec![DeliveryState::Failing, DeliveryState::Dead]
        } else {
            self.states.clone()
        }
    }

    /// Whether the run-level conditions hold for `run` (route, since).
    pub fn matches_run(&self, run: &Run) -> bool {
        self.route.as_deref().is_none_or(|r| run.route() == r)
            && self.since.is_none_or(|t| run.created_at() >= t)
    }

    /// Whether delivery `index` of `run` is wanted (state, route, since, cursor).
    pub fn matches(&self, run: &Run, index: u32) -> bool {
        let Some(d) = run.deliveries().get(index as usize) else {
            return false;
        };
        self.matches_run(run)
            && self.before.is_none_or(|b| (run.id(), index) < b)
            && self.wanted().contains(&d.state)
    }
}

/// What runbridge needs from durable storage.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Persists a new run and its due entry, unless `dedupe` names a live
    /// delivery id, in which case the existing run id is returned. Resolves
    /// once the outcome is durable.
    async fn create_run(&self, run: &Run, dedupe: Option<DedupeKey>)
        -> Result<Created, StoreError>;

    /// Persists a transition: the record and its due entry (`run.due_at`)
    /// replace the previous ones. Resolves once durable.
    async fn save_run(&self, run: &Run) -> Result<(), StoreError>;

    /// Records a transition a restart does not need: the run changed only
    /// in its quiet fields ([`crate::run::QuietState`]: a poll that changed
    /// nothing). Reads and the due index see it at once, but nothing is
    /// written durably: after a crash the run reads as its last durable
    /// save and comes due at that save's due time (spread at open). A
    /// later [`Store::save_run`] of the run persists the whole record.
    /// Callers check [`Run::changed_only_quietly`] first. The default is a
    /// durable save (always correct, never quiet).
    async fn save_quiet(&self, run: &Run) -> Result<(), StoreError> {
        self.save_run(run).await
    }

    /// One run.
    fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError>;

    /// Runs matching a query, newest first.
    fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>, StoreError>;

    /// Deliveries matching a query, newest run first: each is a run and
    /// the index of the delivery in `run.deliveries()`.
    fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<(Run, u32)>, StoreError>;

    /// Stores (or with `None`, deletes) a small durable operator setting
    /// (e.g. paused endpoints). Resolves once durable.
    async fn put_meta(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError>;

    /// An operator setting written by [`Store::put_meta`].
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` runs due at or before `until`, earliest first, leaving
    /// out those `skip` says are already being worked on. A new run is
    /// listed only once its create is durable, so nothing is started for a
    /// run a crash could still take back (an idempotent start records
    /// nothing before its vendor call).
    fn due(
        &self,
        until: Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<(Timestamp, RunId)>, StoreError>;

    /// Entries in the due index now (about one per unfinished run), for
    /// the due-queue depth gauge.
    fn due_len(&self) -> Result<usize, StoreError> {
        Ok(self.due(Timestamp(u64::MAX), usize::MAX, &|_| false)?.len())
    }

    /// Unfinished runs found when the store was opened (the runs a restart resumes).
    fn unfinished_at_open(&self) -> usize;

    /// Drops the due entry of a run at `at` (a finished run, or an entry
    /// that no longer matches its run). The sled store keeps its due index
    /// in memory only, rebuilt from the runs at open, so this writes nothing.
    async fn forget_due(&self, at: Timestamp, id: RunId) -> Result<(), StoreError>;

    /// Removes expired dedupe records, examining at most `budget` of them
    /// from where the previous call stopped (wrapping at the end), so the
    /// sweep's cost per call is bounded. Returns how many were removed.
    async fn sweep_dedupe(&self, now: Timestamp, budget: usize) -> Result<usize, StoreError>;

    /// Retention: removes finished runs (phase `done`) last changed at or
    /// before `before`, with their due entries and the dedupe keys they
    /// own, examining at most `budget` runs from where the previous call
    /// stopped (wrapping at the end), so each pass costs a bounded amount
    /// and the store stays flat under steady load. Unfinished runs are
    /// never removed. Returns how many runs were removed.
    async fn sweep_finished(&self, before: Timestamp, budget: usize) -> Result<usize, StoreError>;

    /// The current write fault, if the store cannot write right now.
    fn fault(&self) -> Option<StoreFault> {
        None
    }

    /// Makes everything written so far durable and stops accepting writes.
    async fn close(&self) -> Result<(), StoreError>;
}
