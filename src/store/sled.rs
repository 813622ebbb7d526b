//! The embedded default store on sled 0.34.
//!
//! Trees: `runs` (run id -> JSON record), `dedupe` (route NUL delivery id ->
//! run id ++ expiry), `due` (due ms big-endian ++ run id -> empty), so a
//! range scan up to "now" yields due runs in time order.
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
//! error), opens the directory again in-process, reloads the due index,
//! repairs it, and confirms with a probe write and flush. Writes that were
//! never flushed are gone, as after a crash; the reopened store holds the
//! last durable state and callers persist their transitions again.

use super::{Created, DedupeKey, DeliveryQuery, RunQuery, Store, StoreError, StoreFault};
use crate::run::{Phase, Run, RunId};
use crate::throttle::Throttle;
use crate::time::Timestamp;
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Largest batch the applier takes from the queue at once.
const MAX_BATCH: usize = 2048;
/// First and largest pause between recovery attempts: recovery lands within
/// about two seconds of space coming back, at little cost while it does not.
const RECOVERY_FIRST: Duration = Duration::from_millis(250);
const RECOVERY_MAX: Duration = Duration::from_secs(2);
/// A lasting fault is logged once per this interval, with a count.
const FAULT_LOG_EVERY: Duration = Duration::from_secs(10);
/// The filesystem must take a file this large before sled is reopened.
const PROBE_BYTES: usize = 1 << 20;
/// Name of that file, inside the storage directory (removed at once).
const PROBE_FILE: &str = ".runbridge-space-probe";
/// Longest recovery waits for readers to let go of the old sled handles.
const HANDLE_WAIT: Duration = Duration::from_secs(5);

enum Op {
    Create {
        id: RunId,
        record: Vec<u8>,
        due: Option<Timestamp>,
        dedupe: Option<DedupeKey>,
    },
    Save {
        id: RunId,
        record: Vec<u8>,
        due: Option<Timestamp>,
    },
    ForgetDue {
        at: Timestamp,
        id: RunId,
    },
    /// Dedupe records seen expired by the sweeper: (key, stored value).
    ForgetDedupe(Vec<(sled::IVec, sled::IVec)>),
    /// Finished runs past retention: (run key, stored record as seen), each
    /// removed with its due entry and dedupe key only if still unchanged.
    ForgetRuns(Vec<(sled::IVec, sled::IVec)>),
    /// An operator setting: set, or with `None` removed.
    PutMeta {
        key: String,
        value: Option<Vec<u8>>,
    },
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
}

impl Inner {
    /// Opens the directory, loads the due index and repairs it.
    fn open(path: &Path, cache_capacity: u64) -> Result<Inner, StoreError> {
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
        let trees = Trees {
            runs: db.open_tree("runs").map_err(backend)?,
            dedupe: db.open_tree("dedupe").map_err(backend)?,
            meta: db.open_tree("meta").map_err(backend)?,
            due: DueIndex::load(db.open_tree("due").map_err(backend)?)?,
        };
        let unfinished = trees.repair()?;
        Ok(Inner {
            db,
            trees,
            unfinished,
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

/// The current fault, if any. `active` lets the write path check without a lock.
#[derive(Default)]
struct FaultCell {
    active: AtomicBool,
    state: Mutex<Option<(StoreFault, Instant)>>,
}

impl FaultCell {
    fn is_set(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn get(&self) -> Option<StoreFault> {
        if !self.is_set() {
            return None;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.as_ref().map(|(f, _)| f.clone())
    }

    /// Records a failure; true when it starts a new fault.
    fn set(&self, error: String) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.as_mut() {
            Some((f, _)) => {
                f.failures += 1;
                false
            }
            None => {
                let fault = StoreFault {
                    since: Timestamp::now(),
                    error,
                    failures: 1,
                };
                *state = Some((fault, Instant::now()));
                self.active.store(true, Ordering::Release);
                true
            }
        }
    }

    /// Counts one more failed write or recovery attempt.
    fn bump(&self) -> Option<StoreFault> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.as_mut().map(|(f, _)| {
            f.failures += 1;
            f.clone()
        })
    }

    /// Ends the fault: what it was and how long it lasted.
    fn clear(&self) -> Option<(StoreFault, Duration)> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.active.store(false, Ordering::Release);
        state.take().map(|(f, began)| (f, began.elapsed()))
    }
}

/// What the store, its threads and its recovery share.
struct Shared {
    path: PathBuf,
    cache_capacity: u64,
    /// The open database; `None` while recovery reopens it.
    current: RwLock<Option<Arc<Inner>>>,
    fault: FaultCell,
    closed: AtomicBool,
    /// Wakes the recovery thread on a new fault or on close.
    wake: (Mutex<()>, Condvar),
    /// Held while recovery swaps the database, so close never races a reopen.
    swap: Mutex<()>,
}

impl Shared {
    /// The open database, for the length of one operation.
    fn inner(&self) -> Result<Arc<Inner>, StoreError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| self.unavailable())
    }

    /// The error of a write refused during a fault (counted, not logged:
    /// the recovery thread logs the fault once per interval).
    fn fail_fast(&self) -> StoreError {
        self.fault.bump();
        self.unavailable()
    }

    fn unavailable(&self) -> StoreError {
        match self.fault.get() {
            Some(f) => StoreError::Unavailable(format!("since {}: {}", f.since, f.error)),
            None => StoreError::Unavailable("the store is being reopened".into()),
        }
    }

    /// A write or flush failed: enter (or extend) the fault.
    fn report(&self, error: String) {
        if self.fault.set(error.clone()) {
            tracing::error!(
                %error,
                "store fault: writes now fail fast (ingress answers 503) until the store recovers"
            );
            let _guard = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.1.notify_all();
        }
    }

    /// Sleeps `d` unless the store closes first; true if it closed.
    fn pause(&self, d: Duration) -> bool {
        let guard = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .wake
            .1
            .wait_timeout_while(guard, d, |_| !self.closed.load(Ordering::Acquire));
        self.closed.load(Ordering::Acquire)
    }

    /// One recovery attempt (see the module docs).
    fn try_recover(&self) -> Result<(), StoreError> {
        probe_filesystem(&self.path)?;
        let _swap = self.swap.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let old = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(old) = old {
            let end = Instant::now() + HANDLE_WAIT;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() >= end {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(old);
                    return Err(StoreError::Unavailable(
                        "old sled handles are still in use; will retry".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        let inner = Inner::open(&self.path, self.cache_capacity)?;
        let probe = inner.probe();
        // Installed even when the probe fails, so reads keep working; the
        // next attempt drops it again.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(inner));
        probe
    }
}

/// Whether the filesystem takes a small file again (cheap, and leaves sled
/// alone while the disk is still full).
fn probe_filesystem(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(PROBE_FILE);
    let written = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    written.map_err(|e| StoreError::Unavailable(format!("the disk still refuses writes: {e}")))
}

/// The recovery thread: idle until a fault, then retries with backoff.
fn recover_loop(shared: Arc<Shared>) {
    let log = Throttle::new(FAULT_LOG_EVERY);
    loop {
        {
            let mut guard = shared.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            while !shared.fault.is_set() && !shared.closed.load(Ordering::Acquire) {
                guard = shared.wake.1.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
        }
        let mut delay = RECOVERY_FIRST;
        while shared.fault.is_set() {
            if shared.pause(delay) {
                return;
            }
            match shared.try_recover() {
                Ok(()) => {
                    if let Some((fault, lasted)) = shared.fault.clear() {
                        tracing::warn!(
                            lasted_ms = lasted.as_millis() as u64,
                            failures = fault.failures,
                            since = %fault.since,
                            "store recovered: reopened in-process; writes accepted again"
                        );
                    }
                }
                Err(StoreError::Closed) => return,
                Err(e) => {
                    let fault = shared.fault.bump();
                    if let (Some(suppressed), Some(f)) = (log.allow("store-fault"), fault) {
                        tracing::error!(
                            since = %f.since,
                            error = %f.error,
                            failures = f.failures,
                            recovery = %e,
                            suppressed,
                            "store still faulted; writes fail fast until it recovers"
                        );
                    }
                    delay = (delay * 2).min(RECOVERY_MAX);
                }
            }
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
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
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store. A directory held by another process is
    /// reported as such, not as an obscure I/O error.
    pub fn open(path: &Path, cache_capacity: u64) -> Result<Self, StoreError> {
        let inner = Inner::open(path, cache_capacity)?;
        let unfinished = inner.unfinished;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            cache_capacity,
            current: RwLock::new(Some(Arc::new(inner))),
            fault: FaultCell::default(),
            closed: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            swap: Mutex::new(()),
        });

        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let (flush_tx, flush_rx) = std_mpsc::channel::<(Arc<Inner>, Answers)>();
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
        Ok(SledStore {
            shared,
            sweep_cursor: Mutex::new(Vec::new()),
            retention_cursor: Mutex::new(Vec::new()),
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![applier, flusher, recovery]),
            unfinished_at_open: unfinished,
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
}

fn due_key(at: Timestamp, id: RunId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&at.0.to_be_bytes());
    k[8..].copy_from_slice(&id.to_bytes());
    k
}

fn parse_due_key(k: &[u8]) -> Option<(Timestamp, RunId)> {
    let ms = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let id: [u8; 16] = k.get(8..24)?.try_into().ok()?;
    Some((Timestamp(ms), RunId::from_bytes(id)))
}

/// The due index: the sled tree is the durable copy; an in-memory ordered
/// mirror answers the scheduler's frequent scans without walking sled pages
/// (about 40 bytes per unfinished run). Only the applier thread writes it.
#[derive(Clone)]
struct DueIndex {
    tree: sled::Tree,
    mirror: Arc<Mutex<BTreeSet<(Timestamp, RunId)>>>,
}

impl DueIndex {
    fn load(tree: sled::Tree) -> Result<Self, StoreError> {
        let mut mirror = BTreeSet::new();
        for item in tree.iter().keys() {
            if let Some(entry) = parse_due_key(&item.map_err(backend)?) {
                mirror.insert(entry);
            }
        }
        Ok(DueIndex {
            tree,
            mirror: Arc::new(Mutex::new(mirror)),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Timestamp, RunId)>> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, at: Timestamp, id: RunId) -> sled::Result<()> {
        self.tree.insert(due_key(at, id), &[])?;
        self.entries().insert((at, id));
        Ok(())
    }

    fn remove(&self, at: Timestamp, id: RunId) -> sled::Result<()> {
        self.tree.remove(due_key(at, id))?;
        self.entries().remove(&(at, id));
        Ok(())
    }

    fn contains(&self, at: Timestamp, id: RunId) -> bool {
        self.entries().contains(&(at, id))
    }
}

/// A dedupe record's value: the run id, then the expiry (ms, big-endian).
fn dedupe_value(id: RunId, expires_at: Timestamp) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..16].copy_from_slice(&id.to_bytes());
    v[16..].copy_from_slice(&expires_at.0.to_be_bytes());
    v
}

/// Inverse of [`dedupe_value`].
fn parse_dedupe_value(v: &[u8]) -> Option<(RunId, Timestamp)> {
    let id: [u8; 16] = v.get(..16)?.try_into().ok()?;
    let expires = u64::from_be_bytes(v.get(16..24)?.try_into().ok()?);
    Some((RunId::from_bytes(id), Timestamp(expires)))
}

fn dedupe_key(d: &DedupeKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(d.route.len() + 1 + d.delivery_id.len());
    k.extend_from_slice(d.route.as_bytes());
    k.push(0);
    k.extend_from_slice(d.delivery_id.as_bytes());
    k
}

/// The fields of a stored run the store itself needs (serde skips the rest).
#[derive(Deserialize)]
struct RunMeta {
    id: RunId,
    phase: Phase,
    due_at: Option<Timestamp>,
}

/// The fields retention needs: when a finished run last changed, and the
/// dedupe key it may own.
#[derive(Deserialize)]
struct RetentionMeta {
    id: RunId,
    route: String,
    phase: Phase,
    updated_at: Timestamp,
    due_at: Option<Timestamp>,
    #[serde(default)]
    delivery_id: Option<String>,
}

fn apply_loop(
    mut rx: mpsc::UnboundedReceiver<Job>,
    shared: Arc<Shared>,
    flush_tx: std_mpsc::Sender<(Arc<Inner>, Answers)>,
) {
    while let Some(first) = rx.blocking_recv() {
        let started = std::time::Instant::now();
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        // During a fault, queued writes fail fast without a sled call.
        let inner = match shared.inner() {
            Ok(inner) if !shared.fault.is_set() => inner,
            _ => {
                for job in jobs {
                    let _ = job.reply.send(Err(shared.fail_fast()));
                }
                continue;
            }
        };
        let mut failed = false;
        let answers: Answers = jobs
            .into_iter()
            .map(|job| {
                if failed {
                    return (job.reply, Err(shared.fail_fast()));
                }
                let result = inner.trees.apply(&job.op).map_err(|e| {
                    failed = true;
                    shared.report(format!("write failed: {e}"));
                    backend(e)
                });
                (job.reply, result)
            })
            .collect();
        tracing::trace!(
            writes = answers.len(),
            apply_us = started.elapsed().as_micros() as u64,
            "batch applied"
        );
        if flush_tx.send((inner, answers)).is_err() {
            break;
        }
    }
}

/// The three trees, written only by the applier thread.
///
/// No sled transactions or batches: in sled 0.34 using either once makes
/// every later read take a global lock, which stalls readers (the scheduler,
/// the admin API) behind each write. The single applier already serializes
/// writes; crash consistency comes from the write order instead:
/// - create: dedupe key, then run, then due entry. A dedupe key whose run is
///   missing is ignored; a run without its due entry is repaired at open.
/// - save: new due entry, then run, then removal of the old due entry. A due
///   entry that disagrees with its run's `due_at` is stale and is dropped
///   when it comes due ([`Store::forget_due`]).
#[derive(Clone)]
struct Trees {
    runs: sled::Tree,
    dedupe: sled::Tree,
    /// Operator settings ([`Store::put_meta`]): key -> bytes.
    meta: sled::Tree,
    due: DueIndex,
}

impl Trees {
    fn apply(&self, op: &Op) -> sled::Result<Created> {
        match op {
            Op::Create {
                id,
                record,
                due: at,
                dedupe: dk,
            } => {
                if let Some(d) = dk {
                    let key = dedupe_key(d);
                    if let Some(existing) = self.live_duplicate(&key)? {
                        return Ok(Created::Duplicate(existing));
                    }
                    self.dedupe.insert(key, &dedupe_value(*id, d.expires_at))?;
                }
                self.runs.insert(id.to_bytes(), record.as_slice())?;
                if let Some(at) = at {
                    self.due.insert(*at, *id)?;
                }
                Ok(Created::New)
            }
            Op::Save {
                id,
                record,
                due: at,
            } => {
                let key = id.to_bytes();
                let old_at = self
                    .runs
                    .get(key)?
                    .and_then(|old| serde_json::from_slice::<RunMeta>(&old).ok())
                    .and_then(|m| m.due_at);
                if let Some(at) = at {
                    self.due.insert(*at, *id)?;
                }
                self.runs.insert(key, record.as_slice())?;
                if let Some(old_at) = old_at.filter(|o| Some(*o) != *at) {
                    self.due.remove(old_at, *id)?;
                }
                Ok(Created::New)
            }
            Op::ForgetDue { at, id } => {
                self.due.remove(*at, *id)?;
                Ok(Created::New)
            }
            Op::ForgetDedupe(expired) => {
                for (key, seen) in expired {
                    // Only if unchanged since the sweeper saw it expired: a
                    // create may have reused the key meanwhile.
                    if self.dedupe.get(key)?.as_ref() == Some(seen) {
                        self.dedupe.remove(key)?;
                    }
                }
                Ok(Created::New)
            }
            Op::ForgetRuns(seen) => {
                for (key, record) in seen {
                    // Only if unchanged since the sweeper saw it finished.
                    if self.runs.get(key)?.as_ref() != Some(record) {
                        continue;
                    }
                    let Ok(m) = serde_json::from_slice::<RetentionMeta>(record) else {
                        continue;
                    };
                    if let Some(d) = &m.delivery_id {
                        let dk = dedupe_key(&DedupeKey {
                            route: m.route.clone(),
                            delivery_id: d.clone(),
                            expires_at: Timestamp(0),
                        });
                        // The key may belong to a newer run by now.
                        let owner = self
                            .dedupe
                            .get(&dk)?
                            .and_then(|v| parse_dedupe_value(&v))
                            .map(|(id, _)| id);
                        if owner == Some(m.id) {
                            self.dedupe.remove(dk)?;
                        }
                    }
                    if let Some(at) = m.due_at {
                        self.due.remove(at, m.id)?;
                    }
                    self.runs.remove(key)?;
                }
                Ok(Created::New)
            }
            Op::PutMeta { key, value } => {
                match value {
                    Some(v) => self.meta.insert(key.as_bytes(), v.as_slice())?,
                    None => self.meta.remove(key.as_bytes())?,
                };
                Ok(Created::New)
            }
        }
    }

    /// The run a live, unexpired dedupe key points at, if that run exists.
    fn live_duplicate(&self, key: &[u8]) -> sled::Result<Option<RunId>> {
        let Some(v) = self.dedupe.get(key)? else {
            return Ok(None);
        };
        match parse_dedupe_value(&v) {
            Some((id, expires)) if expires > Timestamp::now() => {
                Ok(self.runs.contains_key(id.to_bytes())?.then_some(id))
            }
            _ => Ok(None),
        }
    }

    /// Re-creates the due entry of every unfinished run that lacks one (a
    /// crash between the writes of one operation) and counts unfinished runs.
    fn repair(&self) -> Result<usize, StoreError> {
        let mut unfinished = 0;
        let mut repaired = 0;
        for item in self.runs.iter() {
            let (k, v) = item.map_err(backend)?;
            let Ok(meta) = serde_json::from_slice::<RunMeta>(&v) else {
                tracing::error!(key = ?k, "undecodable run record left alone");
                continue;
            };
            if meta.phase == Phase::Done {
                continue;
            }
            unfinished += 1;
            let at = meta.due_at.unwrap_or_else(Timestamp::now);
            if !self.due.contains(at, meta.id) {
                self.due.insert(at, meta.id).map_err(backend)?;
                repaired += 1;
            }
        }
        if repaired > 0 {
            tracing::warn!(repaired, "restored due entries of runs cut off by a crash");
        }
        Ok(unfinished)
    }
}

fn flush_loop(rx: std_mpsc::Receiver<(Arc<Inner>, Answers)>, shared: Arc<Shared>) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(g) = rx.try_recv() {
            groups.push(g);
        }
        let Some(flushed_inner) = groups.last().map(|(inner, _)| inner.clone()) else {
            continue;
        };
        let started = std::time::Instant::now();
        let flushed = if shared.fault.is_set() {
            // sled would only repeat its sticky error.
            Err(shared.unavailable())
        } else {
            flushed_inner.db.flush().map_err(|e| {
                shared.report(format!("flush failed: {e}"));
                StoreError::Backend(format!("flush failed: {e}"))
            })
        };
        metrics::histogram!("runbridge_store_flush_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("runbridge_store_batch_writes")
            .record(groups.iter().map(|(_, a)| a.len()).sum::<usize>() as f64);
        tracing::trace!(
            groups = groups.len(),
            bytes = flushed.as_ref().copied().unwrap_or(0),
            flush_us = started.elapsed().as_micros() as u64,
            "flushed"
        );
        for (inner, answers) in groups {
            // A batch applied to a database that has since been replaced
            // was never made durable by this flush.
            let same = Arc::ptr_eq(&inner, &flushed_inner);
            for (reply, result) in answers {
                let answer = match &flushed {
                    Ok(_) if same => result,
                    Ok(_) => Err(StoreError::Unavailable("the store was reopened".into())),
                    Err(e) => Err(e.clone()),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Run, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode(run: &Run) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(run).map_err(|e| StoreError::Corrupt(e.to_string()))
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
            record: encode(run)?,
            due: run.due_at(),
            dedupe,
        };
        self.submit(op).await
    }

    async fn save_run(&self, run: &Run) -> Result<(), StoreError> {
        let op = Op::Save {
            id: run.id(),
            record: encode(run)?,
            due: run.due_at(),
        };
        self.submit(op).await.map(|_| ())
    }

    fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        let inner = self.inner()?;
        match inner.trees.runs.get(id.to_bytes()).map_err(backend)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>, StoreError> {
        let inner = self.inner()?;
        let iter = match q.before {
            Some(b) => inner.trees.runs.range(..b.to_bytes().to_vec()),
            None => inner.trees.runs.iter(),
        };
        let mut out = Vec::new();
        for item in iter.rev() {
            if out.len() >= q.limit {
                break;
            }
            let (_, v) = item.map_err(backend)?;
            let run = decode(&v)?;
            if q.matches(&run) {
                out.push(run);
            }
        }
        Ok(out)
    }

    fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<(Run, u32)>, StoreError> {
        let inner = self.inner()?;
        let iter = match q.before {
            // The cursor's own run may still have lower indexes to show.
            Some((b, _)) => inner.trees.runs.range(..=b.to_bytes().to_vec()),
            None => inner.trees.runs.iter(),
        };
        let mut out = Vec::new();
        for item in iter.rev() {
            if out.len() >= q.limit {
                break;
            }
            let (_, v) = item.map_err(backend)?;
            let run = decode(&v)?;
            for i in (0..run.deliveries().len() as u32).rev() {
                if out.len() >= q.limit {
                    break;
                }
                if q.matches(&run, i) {
                    out.push((run.clone(), i));
                }
            }
        }
        Ok(out)
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
        let entries = inner.trees.due.entries();
        Ok(entries
            .range(..=(until, RunId::MAX))
            .filter(|(_, id)| !skip(*id))
            .take(limit)
            .copied()
            .collect())
    }

    fn unfinished_at_open(&self) -> usize {
        self.unfinished_at_open
    }

    fn due_len(&self) -> Result<usize, StoreError> {
        Ok(self.inner()?.trees.due.entries().len())
    }

    async fn sweep_dedupe(&self, now: Timestamp, budget: usize) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        {
            let inner = self.inner()?;
            let mut cursor = self.sweep_cursor.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = 0;
            let mut last = None;
            for item in inner.trees.dedupe.range(cursor.clone()..) {
                if seen == budget {
                    break;
                }
                seen += 1;
                let (k, v) = item.map_err(backend)?;
                // An undecodable record counts as expired.
                let expires = parse_dedupe_value(&v).map_or(Timestamp(0), |(_, at)| at);
                if expires <= now {
                    expired.push((k.clone(), v));
                }
                last = Some(k);
            }
            *cursor = match last {
                // Continue just after the last key examined.
                Some(k) if seen == budget => {
                    let mut next = k.to_vec();
                    next.push(0);
                    next
                }
                _ => Vec::new(),
            };
        }
        let removed = expired.len();
        if removed > 0 {
            self.submit(Op::ForgetDedupe(expired)).await?;
        }
        Ok(removed)
    }

    async fn forget_due(&self, at: Timestamp, id: RunId) -> Result<(), StoreError> {
        self.submit(Op::ForgetDue { at, id }).await.map(|_| ())
    }

    async fn sweep_finished(&self, before: Timestamp, budget: usize) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        {
            let inner = self.inner()?;
            let mut cursor = self
                .retention_cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut seen = 0;
            let mut last = None;
            for item in inner.trees.runs.range(cursor.clone()..) {
                if seen == budget {
                    break;
                }
                seen += 1;
                let (k, v) = item.map_err(backend)?;
                // An undecodable record is kept: it may be a newer format.
                if let Ok(m) = serde_json::from_slice::<RetentionMeta>(&v) {
                    if m.phase == Phase::Done && m.updated_at <= before {
                        old.push((k.clone(), v));
                    }
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
        }
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
mod tests {
    use super::*;
    use crate::run::{Phase, RunSpec};

    /// The earliest due time, as the scheduler reads it.
    fn next_due(store: &SledStore) -> Option<Timestamp> {
        let first = store.due(Timestamp(u64::MAX), 1, &|_| false).unwrap();
        first.first().map(|(at, _)| *at)
    }

    fn run_at(now: u64) -> Run {
        Run::accepted(
            RunId::new(),
            RunSpec::example(),
            Timestamp(now),
            Timestamp(now + 1_000_000),
        )
    }

    #[tokio::test]
    async fn create_dedupe_save_and_due_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let a = run_at(1_000);
        let dk = DedupeKey {
            route: "r".into(),
            delivery_id: "d1".into(),
            expires_at: Timestamp(u64::MAX),
        };
        assert_eq!(
            store.create_run(&a, Some(dk.clone())).await.unwrap(),
            Created::New
        );
        let b = run_at(2_000);
        assert_eq!(
            store.create_run(&b, Some(dk)).await.unwrap(),
            Created::Duplicate(a.id())
        );
        assert!(
            store.get_run(b.id()).unwrap().is_none(),
            "a duplicate writes nothing"
        );
        assert_eq!(
            store.due(Timestamp(5_000), 10, &|_| false).unwrap(),
            vec![(Timestamp(1_000), a.id())]
        );
        assert_eq!(next_due(&store), Some(Timestamp(1_000)));

        let mut a2 = a.clone();
        a2.begin_start(Timestamp(1_001), Timestamp(9_000)).unwrap();
        store.save_run(&a2).await.unwrap();
        assert!(
            store
                .due(Timestamp(5_000), 10, &|_| false)
                .unwrap()
                .is_empty(),
            "old due entry removed"
        );
        assert_eq!(next_due(&store), Some(Timestamp(9_000)));
        assert_eq!(
            store.get_run(a.id()).unwrap().unwrap().phase(),
            Phase::Starting
        );
        assert!(
            store
                .due(Timestamp(9_000), 10, &|id| id == a.id())
                .unwrap()
                .is_empty(),
            "skip honoured"
        );

        a2.force_due(None);
        store.save_run(&a2).await.unwrap();
        assert_eq!(next_due(&store), None);
        assert!(store
            .due(Timestamp(u64::MAX), 10, &|_| false)
            .unwrap()
            .is_empty());
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn survives_reopen_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        {
            let store = SledStore::open(dir.path(), 1 << 20).unwrap();
            for i in 0..5 {
                let route = if i % 2 == 0 { "even" } else { "odd" };
                let spec = RunSpec {
                    route: route.into(),
                    ..RunSpec::example()
                };
                let r = Run::accepted(
                    RunId::new(),
                    spec,
                    Timestamp(1_000 + i),
                    Timestamp(1_000_000 + i),
                );
                store.create_run(&r, None).await.unwrap();
                ids.push(r.id());
            }
            store.close().await.unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let all = store
            .list_runs(&RunQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        let got: Vec<RunId> = all.iter().map(|r| r.id()).collect();
        let mut want = ids.clone();
        want.reverse();
        assert_eq!(got, want);
        let even = store
            .list_runs(&RunQuery {
                route: Some("even".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(even.len(), 3);
        let page = store
            .list_runs(&RunQuery {
                before: Some(ids[2]),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(store.unfinished_at_open(), 5);
    }

    #[tokio::test]
    async fn partial_writes_left_by_a_crash_are_repaired_or_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let orphan = run_at(1_000);
        let ghost = RunId::new();
        {
            let store = SledStore::open(dir.path(), 1 << 20).unwrap();
            // A crash after the run record but before its due entry...
            store
                .inner()
                .unwrap()
                .trees
                .runs
                .insert(orphan.id().to_bytes(), encode(&orphan).unwrap())
                .unwrap();
            // ...and one after a dedupe key but before its run.
            let dk = DedupeKey {
                route: "r".into(),
                delivery_id: "d".into(),
                expires_at: Timestamp(u64::MAX),
            };
            let v = dedupe_value(ghost, Timestamp(u64::MAX));
            store
                .inner()
                .unwrap()
                .trees
                .dedupe
                .insert(dedupe_key(&dk), &v)
                .unwrap();
            store.close().await.unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.unfinished_at_open(), 1);
        let due = store.due(Timestamp(u64::MAX), 10, &|_| false).unwrap();
        assert_eq!(
            due,
            vec![(Timestamp(1_000), orphan.id())],
            "due entry restored"
        );
        let retry = run_at(2_000);
        let dk = DedupeKey {
            route: "r".into(),
            delivery_id: "d".into(),
            expires_at: Timestamp(u64::MAX),
        };
        assert_eq!(
            store.create_run(&retry, Some(dk)).await.unwrap(),
            Created::New,
            "a dedupe key without its run does not swallow the retry"
        );
    }

    #[tokio::test]
    async fn expired_dedupe_records_are_swept_in_bounded_slices() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5 {
            let expires_at = if i % 2 == 0 {
                Timestamp(10)
            } else {
                Timestamp(u64::MAX)
            };
            let dk = DedupeKey {
                route: "r".into(),
                delivery_id: format!("d{i}"),
                expires_at,
            };
            store.create_run(&run_at(1_000), Some(dk)).await.unwrap();
        }
        let now = Timestamp(1_000);
        let mut removed = 0;
        for _ in 0..3 {
            removed += store.sweep_dedupe(now, 2).await.unwrap();
        }
        assert_eq!(removed, 3, "d0, d2, d4 expired");
        assert_eq!(store.inner().unwrap().trees.dedupe.len(), 2);
        assert_eq!(store.sweep_dedupe(now, 10).await.unwrap(), 0);
    }

    /// A run accepted at `at` with dedupe key `d`, finished (phase `done`,
    /// no callbacks) at `done_at` when given.
    fn retained(at: u64, d: &str, done_at: Option<u64>) -> (Run, DedupeKey) {
        let mut spec = RunSpec::example();
        spec.delivery_id = Some(d.into());
        let mut run = Run::accepted(RunId::new(), spec, Timestamp(at), Timestamp(at + 1_000_000));
        if let Some(t) = done_at {
            let obs = crate::run::Observation {
                status: crate::run::RunStatus::Succeeded,
                raw_status: None,
                output: None,
                error: None,
                unknown: false,
            };
            run.finish(Timestamp(t), obs, &[]).unwrap();
            assert_eq!(run.phase(), Phase::Done);
        }
        let dk = DedupeKey {
            route: "r".into(),
            delivery_id: d.into(),
            expires_at: Timestamp(u64::MAX),
        };
        (run, dk)
    }

    #[tokio::test]
    async fn retention_removes_old_finished_runs_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let old_done = retained(1_000, "old-done", Some(2_000));
        let old_done2 = retained(1_100, "old-done-2", Some(3_000));
        let new_done = retained(1_000, "new-done", Some(50_000));
        let old_open = retained(1_000, "old-open", None);
        for (run, dk) in [&old_done, &old_done2, &new_done, &old_open] {
            store.create_run(run, Some(dk.clone())).await.unwrap();
            store.save_run(run).await.unwrap();
        }
        let trees = store.inner().unwrap().trees.clone();
        assert_eq!((trees.runs.len(), trees.dedupe.len()), (4, 4));
        let due_before = trees.due.entries().len();

        // Budget 1 per pass: the cursor moves on and wraps; four passes see
        // every run once.
        let before = Timestamp(10_000);
        let mut removed = 0;
        for _ in 0..4 {
            removed += store.sweep_finished(before, 1).await.unwrap();
        }
        assert_eq!(removed, 2, "the two finished runs older than the cut-off");
        for (run, _) in [&old_done, &old_done2] {
            assert!(store.get_run(run.id()).unwrap().is_none());
        }
        for (run, _) in [&new_done, &old_open] {
            assert!(store.get_run(run.id()).unwrap().is_some(), "kept");
        }
        assert_eq!(trees.runs.len(), 2);
        assert_eq!(trees.dedupe.len(), 2, "their dedupe keys went with them");
        assert!(trees.dedupe.contains_key(dedupe_key(&new_done.1)).unwrap());
        assert!(trees.dedupe.contains_key(dedupe_key(&old_open.1)).unwrap());
        assert_eq!(
            trees.due.entries().len(),
            due_before,
            "the unfinished run keeps its due entry"
        );
        assert!(store
            .due(Timestamp(u64::MAX), 10, &|_| false)
            .unwrap()
            .iter()
            .all(|(_, id)| *id == old_open.0.id()));

        // A later cut-off takes the newer finished run; the unfinished one
        // is never removed, however old. (Two passes: the first may start where
        // the last slice stopped, at the end, and wrap.)
        let mut late = 0;
        for _ in 0..2 {
            late += store
                .sweep_finished(Timestamp(u64::MAX), 100)
                .await
                .unwrap();
        }
        assert_eq!(late, 1);
        assert!(store.get_run(old_open.0.id()).unwrap().is_some());
        assert_eq!(trees.runs.len(), 1);
    }

    #[tokio::test]
    async fn stale_due_entries_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let r = run_at(1_000);
        store.create_run(&r, None).await.unwrap();
        store
            .inner()
            .unwrap()
            .trees
            .due
            .insert(Timestamp(500), r.id())
            .unwrap();
        store.forget_due(Timestamp(500), r.id()).await.unwrap();
        let due = store.due(Timestamp(u64::MAX), 10, &|_| false).unwrap();
        assert_eq!(due, vec![(Timestamp(1_000), r.id())]);
    }

    #[tokio::test]
    async fn a_fault_fails_writes_fast_and_recovery_reopens_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let durable = run_at(1_000);
        store.create_run(&durable, None).await.unwrap();
        assert!(store.fault().is_none());

        // What a failed flush does (a real disk fault is in tests/storefault.rs).
        store.shared.report("flush failed: injected".into());
        let fault = store.fault().expect("faulted");
        assert_eq!(fault.error, "flush failed: injected");
        let err = store.create_run(&run_at(2_000), None).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            store.fault().unwrap().failures >= 2,
            "fail-fast writes count"
        );

        // The recovery thread drops every handle, reopens the directory in
        // this process and clears the fault once a probe write is durable.
        let t0 = std::time::Instant::now();
        while store.fault().is_some() {
            assert!(t0.elapsed() < Duration::from_secs(10), "no recovery");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let later = run_at(3_000);
        store.create_run(&later, None).await.unwrap();
        assert!(store.get_run(durable.id()).unwrap().is_some());
        let due = store.due(Timestamp(u64::MAX), 10, &|_| false).unwrap();
        assert_eq!(
            due,
            vec![
                (Timestamp(1_000), durable.id()),
                (Timestamp(3_000), later.id())
            ],
            "due mirror reloaded from the reopened database"
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn operator_metadata_is_durable_and_deletable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 1 << 20).unwrap();
            store
                .put_meta("paused", Some(b"ep1".to_vec()))
                .await
                .unwrap();
            store.put_meta("gone", Some(b"x".to_vec())).await.unwrap();
            store.put_meta("gone", None).await.unwrap();
            assert_eq!(store.get_meta("paused").unwrap(), Some(b"ep1".to_vec()));
            store.close().await.unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.get_meta("paused").unwrap(), Some(b"ep1".to_vec()));
        assert_eq!(store.get_meta("gone").unwrap(), None);
    }

    #[tokio::test]
    async fn second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _a = SledStore::open(dir.path(), 1 << 20).unwrap();
        // sled's lock is per process via flock; within one process it may
        // succeed, so only check the message shape when it does fail.
        if let Err(e) = SledStore::open(dir.path(), 1 << 20) {
            assert!(e.to_string().contains(&dir.path().display().to_string()));
        }
    }
}
