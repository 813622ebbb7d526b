//! The embedded default store on sled 0.34.
//!
//! Trees: a run is two JSON records under its id (`crate::run::record`):
//! `runs` holds what never changes after acceptance (route, provider,
//! workflow, inputs, delivery id), written once at create, and `state` the
//! small mutable rest, which each durable transition rewrites alone.
//! `dedupe` (route NUL delivery id -> run id ++ expiry), `meta` (operator
//! settings), and the index trees
//! `idx_runs` and `idx_deliveries` (see `index.rs`), which the applier keeps
//! with each run in the same batch and the admin queries walk newest first
//! (`query.rs`). A store written before the index existed gets it built once
//! at open (marker `runbridge.index`).
//!
//! The due index lives in memory only (`due.rs`): rebuilt at every open from
//! the runs' own `due_at`, with overdue tracked runs spread over a short
//! window. Beside it, the quiet overlay keeps transitions a restart does not
//! need ([`Store::save_quiet`]) without writing them; reads lay it over the
//! record. A store written by a version with an on-disk `due` tree has that
//! tree dropped at open; one with whole records in `runs` has them split
//! once at open (marker `runbridge.format`, see `open.rs`).
//!
//! Group commit: callers send encoded writes to one applier thread, which
//! applies each batch (in a crash-safe write order, see [`Trees`]) and hands
//! it to one flusher thread. The flusher makes everything applied so far durable with
//! one blocking `flush()` and then answers every waiting caller. While it
//! flushes, the applier already applies the next batch, so inserts overlap
//! flushes. Exactly one flush is ever in flight: sled 0.34's `flush_async`
//! deadlocks when several run concurrently (sled #1308), and is not used.
//!
//! Faults: sled 0.34 keeps the first I/O error of a database (a full disk)
//! and returns it from every later write and flush until the database is
//! opened again. So a failed write or flush puts the store into a fault:
//! writes then fail fast without touching sled (ingress answers 503), and a
//! recovery thread retries with backoff (250 ms doubling to 2 s). Each
//! attempt first checks that the filesystem takes a small file, then drops
//! every sled handle (which releases sled's directory lock and its sticky
//! error), opens the directory again in-process, rebuilds the due index
//! (dropping the quiet overlay), and confirms with a probe write and flush. Writes that were
//! never flushed are gone, as after a crash; the reopened store holds the
//! last durable state and callers persist their transitions again.

use super::{Created, DedupeKey, DeliveryQuery, RunQuery, Store, StoreError, StoreFault};
use crate::run::{Phase, Run, RunId};
use crate::time::Timestamp;
use async_trait::async_trait;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod due;
mod fault;
mod index;
mod open;
mod query;
mod trees;
mod verify;
mod writer;

use due::DueIndex;
use fault::{recover_loop, FaultCell, Shared};
use index::{IndexKeys, IndexMeta};
use trees::{parse_dedupe_value, IndexRepair, RetentionMeta, StaleKey, Trees};
use writer::{apply_loop, flush_loop};

/// Default-tree key holding the index layout version once the index is
/// complete (absent in stores written before the index existed).
const INDEX_MARKER: &str = "runbridge.index";
/// Default-tree key written by a clean close and removed at open: absent
/// at open means a crash (or an in-process reopen), so the index is verified.
const CLEAN_MARKER: &str = "runbridge.clean";

/// Largest batch the applier takes from the queue at once.
const MAX_BATCH: usize = 2048;

enum Op {
    Create {
        id: RunId,
        fixed: Vec<u8>,
        state: Vec<u8>,
        due: Option<Timestamp>,
        dedupe: Option<DedupeKey>,
        index: IndexKeys,
    },
    /// A durable transition: the new state. `meta` (the run's index fields,
    /// `None` without the index) turns the old state into the old keys.
    Save {
        id: RunId,
        state: Vec<u8>,
        due: Option<Timestamp>,
        meta: Option<IndexMeta>,
        index: IndexKeys,
    },
    /// Dedupe records seen expired by the sweeper: (key, stored value).
    ForgetDedupe(Vec<(sled::IVec, sled::IVec)>),
    /// Finished runs past retention: (run key, stored state as seen), each
    /// removed with its dedupe key and index keys only if still unchanged.
    ForgetRuns(Vec<(sled::IVec, sled::IVec)>),
    /// Index keys readers found stale; each removed only if still stale.
    ForgetIndex(Vec<StaleKey>),
    /// An operator setting: set, or with `None` removed.
    PutMeta { key: String, value: Option<Vec<u8>> },
    /// From the background verification after a crash (`verify.rs`): runs
    /// that lacked index keys when it looked (each gets the keys of its
    /// state now), and fixed parts it found without a state (each removed
    /// only if still without one).
    VerifyIndex {
        ids: Vec<RunId>,
        orphans: Vec<sled::IVec>,
    },
}

impl Op {
    /// Kinds of op, in the order of [`Op::kind`], as the `op` label of
    /// `runbridge_store_writes_total`. A create that found a live duplicate
    /// writes nothing and is counted apart.
    const KINDS: [&'static str; 8] = [
        "create",
        "create_duplicate",
        "save",
        "forget_dedupe",
        "forget_runs",
        "forget_index",
        "meta",
        "verify_index",
    ];

    /// Index into [`Op::KINDS`] of this op once applied with `result`.
    fn kind(&self, result: &Created) -> usize {
        match self {
            Op::Create { .. } if matches!(result, Created::Duplicate(_)) => 1,
            Op::Create { .. } => 0,
            Op::Save { .. } => 2,
            Op::ForgetDedupe(_) => 3,
            Op::ForgetRuns(_) => 4,
            Op::ForgetIndex(_) => 5,
            Op::PutMeta { .. } => 6,
            Op::VerifyIndex { .. } => 7,
        }
    }
}

type Reply = oneshot::Sender<Result<Created, StoreError>>;
type Answers = Vec<(Reply, Result<Created, StoreError>)>;

struct Job {
    op: Op,
    reply: Reply,
}

/// One open sled database. Every clone of these handles must be dropped
/// before the directory can be opened again (sled's lock and sticky error
/// live as long as any handle does), so they are only ever reached through
/// [`Shared::inner`] and held for the length of one operation.
struct Inner {
    db: sled::Db,
    trees: Trees,
    /// Unfinished runs found when this database was opened.
    unfinished: usize,
    /// How long building the index took at this open, if it had to be built.
    index_built: Option<Duration>,
    /// The index still needs verifying after a crash: left to a background
    /// thread (`verify.rs`), so serving does not wait for it.
    verify_pending: bool,
}

impl Inner {
    /// Opens the directory, loads the due index and repairs it. With
    /// `defer_verify`, the index verification a crash calls for is left to
    /// the caller (`verify_pending`), to run in the background.
    fn open(
        path: &Path,
        cache_capacity: u64,
        indexed: bool,
        defer_verify: bool,
    ) -> Result<Inner, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("could not acquire lock") || text.contains("WouldBlock") {
                    StoreError::Backend(format!(
                        "{} is in use by another runbridge process (sled holds an exclusive lock)",
                        path.display()
                    ))
                } else {
                    StoreError::Backend(format!("cannot open {}: {text}", path.display()))
                }
            })?;
        // Written by versions that kept the due index on disk: the index is
        // rebuilt from the runs at every open now (see `due.rs`).
        if db.tree_names().iter().any(|n| n.as_ref() == b"due") {
            db.drop_tree("due").map_err(backend)?;
            tracing::info!("dropped the on-disk due index of an older version (once)");
        }
        let mut trees = Trees {
            runs: db.open_tree("runs").map_err(backend)?,
            state: db.open_tree("state").map_err(backend)?,
            dedupe: db.open_tree("dedupe").map_err(backend)?,
            meta: db.open_tree("meta").map_err(backend)?,
            due: Arc::new(DueIndex::default()),
            idx_runs: db.open_tree("idx_runs").map_err(backend)?,
            idx_deliveries: db.open_tree("idx_deliveries").map_err(backend)?,
            indexed,
        };
        // Removed before any write, so it is gone from disk as soon as
        // anything written after it is.
        let clean = db.remove(CLEAN_MARKER).map_err(backend)?.is_some();
        open::migrate(&db, &trees)?;
        let current = db.get(INDEX_MARKER).map_err(backend)?;
        let mode = match (indexed, current.as_deref() == Some(index::VERSION), clean) {
            (false, _, _) => {
                // Writes will not maintain it: the next indexed open rebuilds.
                db.remove(INDEX_MARKER).map_err(backend)?;
                IndexRepair::None
            }
            (true, false, _) => IndexRepair::Build,
            (true, true, false) => IndexRepair::Verify,
            (true, true, true) => IndexRepair::None,
        };
        let started = Instant::now();
        if mode == IndexRepair::Build {
            // A partial index from an interrupted build is completed by
            // this one (inserts are idempotent), but stale keys of an older
            // layout would linger: start from empty.
            trees.idx_runs.clear().map_err(backend)?;
            trees.idx_deliveries.clear().map_err(backend)?;
            tracing::info!(runs = trees.runs.len(), "building the run index (once)");
        }
        let verify_pending = defer_verify && mode == IndexRepair::Verify;
        let walk = if verify_pending {
            IndexRepair::None
        } else {
            mode
        };
        let (unfinished, due) = trees.repair(walk)?;
        trees.due = Arc::new(due);
        let mut index_built = None;
        if mode == IndexRepair::Build {
            db.insert(INDEX_MARKER, index::VERSION).map_err(backend)?;
            db.flush().map_err(backend)?;
            let took = started.elapsed();
            tracing::info!(took_ms = took.as_millis() as u64, "run index built");
            index_built = Some(took);
        }
        Ok(Inner {
            db,
            trees,
            unfinished,
            index_built,
            verify_pending,
        })
    }

    /// A durable write: proves that sled can write and flush again.
    fn probe(&self) -> Result<(), StoreError> {
        self.db
            .insert("runbridge.probe", &Timestamp::now().0.to_be_bytes())
            .map_err(backend)?;
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

/// sled-backed [`Store`].
pub struct SledStore {
    shared: Arc<Shared>,
    /// Where the dedupe sweep continues.
    sweep_cursor: Mutex<Vec<u8>>,
    /// Where the next retention pass continues (a run key).
    retention_cursor: Mutex<Vec<u8>>,
    tx: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    unfinished_at_open: usize,
    index_built_at_open: Option<Duration>,
}

/// One bounded slice of a sweep: examines at most `budget` records of
/// `tree` from `cursor` on, returns those whose value `pick` wants (key
/// and value as seen, so the applier can check they are unchanged), and moves the cursor
/// just past the last record examined, or back to the start at the end.
fn sweep_slice(
    tree: &sled::Tree,
    cursor: &Mutex<Vec<u8>>,
    budget: usize,
    mut pick: impl FnMut(&[u8]) -> bool,
) -> Result<Vec<(sled::IVec, sled::IVec)>, StoreError> {
    let mut cursor = cursor.lock().unwrap_or_else(|p| p.into_inner());
    let mut picked = Vec::new();
    let mut seen = 0;
    let mut last = None;
    for item in tree.range(cursor.clone()..) {
        if seen == budget {
            break;
        }
        seen += 1;
        let (k, v) = item.map_err(backend)?;
        if pick(&v) {
            picked.push((k.clone(), v));
        }
        last = Some(k);
    }
    *cursor = match last {
        Some(k) if seen == budget => {
            let mut next = k.to_vec();
            next.push(0);
            next
        }
        _ => Vec::new(),
    };
    Ok(picked)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store. A directory held by another process is
    /// reported as such, not as an obscure I/O error. A store written before
    /// the run index existed gets it built here, once.
    pub fn open(path: &Path, cache_capacity: u64) -> Result<Self, StoreError> {
        Self::open_with(path, cache_capacity, true)
    }

    /// Opens the store without maintaining the run index: queries scan, and
    /// the next [`SledStore::open`] rebuilds the index. Only for measuring
    /// what the index costs (the admin-index bench's baseline).
    pub fn open_unindexed(path: &Path, cache_capacity: u64) -> Result<Self, StoreError> {
        Self::open_with(path, cache_capacity, false)
    }

    /// How long building the run index took at open, if this open had to
    /// build it (reported by the bench and logged).
    pub fn index_built_at_open(&self) -> Option<Duration> {
        self.index_built_at_open
    }

    fn open_with(path: &Path, cache_capacity: u64, indexed: bool) -> Result<Self, StoreError> {
        let inner = Inner::open(path, cache_capacity, indexed, true)?;
        let verify_pending = inner.verify_pending;
        let unfinished = inner.unfinished;
        let index_built_at_open = inner.index_built;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            cache_capacity,
            indexed,
            current: RwLock::new(Some(Arc::new(inner))),
            fault: FaultCell::default(),
            closed: AtomicBool::new(false),
            index_verified: AtomicBool::new(!verify_pending),
            wake: (Mutex::new(()), Condvar::new()),
            swap: Mutex::new(()),
        });

        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let (flush_tx, flush_rx) = std_mpsc::channel::<writer::Applied>();
        let apply_shared = shared.clone();
        let applier = std::thread::Builder::new()
            .name("store-apply".into())
            .spawn(move || apply_loop(rx, apply_shared, flush_tx))
            .map_err(backend)?;
        let flush_shared = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || flush_loop(flush_rx, flush_shared))
            .map_err(backend)?;
        let recover_shared = shared.clone();
        let recovery = std::thread::Builder::new()
            .name("store-recover".into())
            .spawn(move || recover_loop(recover_shared))
            .map_err(backend)?;
        let mut threads = vec![applier, flusher, recovery];
        if verify_pending {
            let (verify_shared, verify_tx) = (shared.clone(), tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("store-verify".into())
                    .spawn(move || verify::verify_loop(verify_shared, verify_tx))
                    .map_err(backend)?,
            );
        }
        Ok(SledStore {
            shared,
            sweep_cursor: Mutex::new(Vec::new()),
            retention_cursor: Mutex::new(Vec::new()),
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
            unfinished_at_open: unfinished,
            index_built_at_open,
        })
    }

    /// The open database (tests reach the trees through it).
    fn inner(&self) -> Result<Arc<Inner>, StoreError> {
        self.shared.inner()
    }

    async fn submit(&self, op: Op) -> Result<Created, StoreError> {
        if self.shared.fault.is_set() {
            return Err(self.shared.fail_fast());
        }
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.tx.lock().map_err(|_| StoreError::Closed)?;
            let tx = guard.as_ref().ok_or(StoreError::Closed)?;
            tx.send(Job { op, reply }).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues stale index keys for removal without waiting (readers call
    /// this; the applier checks each key again before removing it).
    fn forget_stale(&self, stale: Vec<StaleKey>) {
        if stale.is_empty() || self.shared.fault.is_set() {
            return;
        }
        let (reply, _) = oneshot::channel();
        if let Ok(guard) = self.tx.lock() {
            if let Some(tx) = guard.as_ref() {
                let _ = tx.send(Job {
                    op: Op::ForgetIndex(stale),
                    reply,
                });
            }
        }
    }

    /// The index fields of `run` (none without the index).
    fn meta_of(&self, run: &Run) -> Option<IndexMeta> {
        self.shared.indexed.then(|| IndexMeta::of(run))
    }
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A run's fixed part, as stored in `runs`.
fn encode_fixed(run: &Run) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&run.fixed_part()).map_err(corrupt)
}

/// A run's state, as stored in `state`.
fn encode_state(run: &Run) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&run.state_part()).map_err(corrupt)
}

#[async_trait]
impl Store for SledStore {
    async fn create_run(
        &self,
        run: &Run,
        dedupe: Option<DedupeKey>,
    ) -> Result<Created, StoreError> {
        let op = Op::Create {
            id: run.id(),
            fixed: encode_fixed(run)?,
            state: encode_state(run)?,
            due: run.due_at(),
            dedupe,
            index: self.meta_of(run).map(|m| m.keys()).unwrap_or_default(),
        };
        self.submit(op).await
    }

    async fn save_quiet(&self, run: &Run) -> Result<(), StoreError> {
        // Memory only, no flush: the overlay and the due index take it at
        // once; a later durable save of the run drops the overlay.
        self.inner()?.trees.due.quiet(run.id(), run.quiet_state());
        metrics::counter!("runbridge_store_quiet_saves_total").increment(1);
        Ok(())
    }

    async fn save_run(&self, run: &Run) -> Result<(), StoreError> {
        let meta = self.meta_of(run);
        let op = Op::Save {
            id: run.id(),
            state: encode_state(run)?,
            due: run.due_at(),
            index: meta.as_ref().map(|m| m.keys()).unwrap_or_default(),
            meta,
        };
        self.submit(op).await.map(|_| ())
    }

    fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        self.inner()?.trees.load(id)
    }

    fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>, StoreError> {
        let inner = self.inner()?;
        let mut stale = Vec::new();
        let runs = query::list_runs(&inner.trees, q, &mut stale);
        self.forget_stale(stale);
        runs
    }

    fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<(Run, u32)>, StoreError> {
        let inner = self.inner()?;
        let mut stale = Vec::new();
        let found = query::list_deliveries(&inner.trees, q, &mut stale);
        self.forget_stale(stale);
        found
    }

    async fn put_meta(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let op = Op::PutMeta {
            key: key.to_string(),
            value,
        };
        self.submit(op).await.map(|_| ())
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.inner()?;
        let v = inner.trees.meta.get(key.as_bytes()).map_err(backend)?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn due(
        &self,
        until: Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<(Timestamp, RunId)>, StoreError> {
        let inner = self.inner()?;
        let due = inner.trees.due.lock();
        Ok(due
            .range(until)
            .filter(|(_, id)| !skip(*id))
            .take(limit)
            .copied()
            .collect())
    }

    fn unfinished_at_open(&self) -> usize {
        self.unfinished_at_open
    }

    fn due_len(&self) -> Result<usize, StoreError> {
        Ok(self.inner()?.trees.due.lock().len())
    }

    async fn sweep_dedupe(&self, now: Timestamp, budget: usize) -> Result<usize, StoreError> {
        let expired = {
            let inner = self.inner()?;
            // An undecodable record counts as expired.
            sweep_slice(&inner.trees.dedupe, &self.sweep_cursor, budget, |v| {
                parse_dedupe_value(v).map_or(Timestamp(0), |(_, at)| at) <= now
            })?
        };
        let removed = expired.len();
        if removed > 0 {
            self.submit(Op::ForgetDedupe(expired)).await?;
        }
        Ok(removed)
    }

    async fn forget_due(&self, at: Timestamp, id: RunId) -> Result<(), StoreError> {
        // Memory only: the index is rebuilt from the records at open.
        self.inner()?.trees.due.forget(at, id);
        Ok(())
    }

    async fn sweep_finished(&self, before: Timestamp, budget: usize) -> Result<usize, StoreError> {
        let old = {
            let inner = self.inner()?;
            // An undecodable state is kept: it may be a newer format.
            sweep_slice(&inner.trees.state, &self.retention_cursor, budget, |v| {
                serde_json::from_slice::<RetentionMeta>(v)
                    .is_ok_and(|m| m.phase == Phase::Done && m.updated_at <= before)
            })?
        };
        let removed = old.len();
        if removed > 0 {
            self.submit(Op::ForgetRuns(old)).await?;
        }
        Ok(removed)
    }

    fn fault(&self) -> Option<StoreFault> {
        self.shared.fault.get()
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Dropping the sender ends the applier once it has applied what was
        // queued; the flusher answers those writes and ends too. The
        // recovery thread ends at its next wake-up.
        self.shared.closed.store(true, Ordering::Release);
        {
            let _guard = self.shared.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.1.notify_all();
        }
        let sender = self.tx.lock().map_err(|_| StoreError::Closed)?.take();
        drop(sender);
        let threads: Vec<_> = self
            .threads
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            let _swap = shared.swap.lock().unwrap_or_else(|p| p.into_inner());
            if shared.fault.is_set() {
                return Err(shared.unavailable());
            }
            let inner = shared.inner()?;
            // Tells the next open that the index needs no verification.
            // Not while a verification after a crash is unfinished: the
            // next open must verify again.
            if shared.index_verified.load(Ordering::Acquire) {
                inner.db.insert(CLEAN_MARKER, &[1]).map_err(backend)?;
            }
            inner.db.flush().map(|_| ()).map_err(|e| {
                shared.report(format!("flush failed: {e}"));
                backend(e)
            })
        })
        .await
        .map_err(backend)?
    }
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod migrate_tests;
#[cfg(test)]
mod tests;
