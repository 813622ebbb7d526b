//! Durable records: runs, dedupe keys and the due index.
//!
//! [`Store`] is the seam for other backends (a shared database later); the
//! embedded default is [`sled::SledStore`]. Nothing outside this module sees
//! a backend type. Writes resolve only once durable, so a caller may
//! acknowledge what a write covers as soon as it returns.

pub mod memory;
pub mod sled;

use crate::run::{Run, RunId, RunStatus};
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

/// Filter for [`Store::list_runs`], newest first.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub route: Option<String>,
    pub status: Option<RunStatus>,
    /// Only runs older than this id (the previous page's last id).
    pub before: Option<RunId>,
    pub limit: usize,
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

    /// One run.
    fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError>;

    /// Runs matching a query, newest first.
    fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>, StoreError>;

    /// Up to `limit` runs due at or before `until`, earliest first, leaving
    /// out those `skip` says are already being worked on.
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

    /// Drops a due entry that no longer matches its run (left by a crash
    /// between the writes of one transition).
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
