//! The embedded default store on sled 0.34.
//!
//! Trees: `runs` (run id -> JSON record), `dedupe` (route NUL delivery id ->
//! run id ++ expiry), `due` (due ms big-endian ++ run id -> empty), so a
//! range scan up to "now" yields due runs in time order.
//!
//! Group commit: callers send encoded writes to one applier thread, which
//! applies each batch in a single multi-tree transaction and hands it to one
//! flusher thread. The flusher makes everything applied so far durable with
//! one blocking `flush()` and then answers every waiting caller. While it
//! flushes, the applier already applies the next batch, so inserts overlap
//! flushes. Exactly one flush is ever in flight: sled 0.34's `flush_async`
//! deadlocks when several run concurrently (sled #1308), and is not used.

use super::{Created, DedupeKey, RunQuery, Store, StoreError};
use crate::run::{Phase, Run, RunId};
use crate::time::Timestamp;
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Largest batch the applier takes from the queue at once.
const MAX_BATCH: usize = 2048;

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
}

type Reply = oneshot::Sender<Result<Created, StoreError>>;

struct Job {
    op: Op,
    reply: Reply,
}

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    runs: sled::Tree,
    dedupe: sled::Tree,
    /// Where the dedupe sweep continues.
    sweep_cursor: Mutex<Vec<u8>>,
    due: DueIndex,
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
        let runs = db.open_tree("runs").map_err(backend)?;
        let dedupe = db.open_tree("dedupe").map_err(backend)?;
        let due = DueIndex::load(db.open_tree("due").map_err(backend)?)?;

        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let (flush_tx, flush_rx) = std_mpsc::channel::<Vec<(Reply, Result<Created, StoreError>)>>();
        let trees = Trees {
            runs: runs.clone(),
            dedupe: dedupe.clone(),
            due: due.clone(),
        };
        let unfinished = trees.repair()?;
        let applier = std::thread::Builder::new()
            .name("store-apply".into())
            .spawn(move || apply_loop(rx, trees, flush_tx))
            .map_err(backend)?;
        let flush_db = db.clone();
        let flusher = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || flush_loop(flush_rx, flush_db))
            .map_err(backend)?;
        Ok(SledStore {
            db,
            runs,
            dedupe,
            sweep_cursor: Mutex::new(Vec::new()),
            due,
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![applier, flusher]),
            unfinished_at_open: unfinished,
        })
    }

    async fn submit(&self, op: Op) -> Result<Created, StoreError> {
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

fn apply_loop(
    mut rx: mpsc::UnboundedReceiver<Job>,
    trees: Trees,
    flush_tx: std_mpsc::Sender<Vec<(Reply, Result<Created, StoreError>)>>,
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
        let answers: Vec<(Reply, Result<Created, StoreError>)> = jobs
            .into_iter()
            .map(|job| {
                let result = trees.apply(&job.op).map_err(|e| {
                    tracing::error!(error = %e, "store write failed");
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
        if flush_tx.send(answers).is_err() {
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

fn flush_loop(rx: std_mpsc::Receiver<Vec<(Reply, Result<Created, StoreError>)>>, db: sled::Db) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(g) = rx.try_recv() {
            groups.push(g);
        }
        let started = std::time::Instant::now();
        let flushed = db.flush();
        tracing::trace!(
            groups = groups.len(),
            bytes = flushed.as_ref().copied().unwrap_or(0),
            flush_us = started.elapsed().as_micros() as u64,
            "flushed"
        );
        for (reply, result) in groups.into_iter().flatten() {
            let answer = match &flushed {
                Ok(_) => result,
                Err(e) => Err(StoreError::Backend(format!("flush failed: {e}"))),
            };
            let _ = reply.send(answer);
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
            id: run.id,
            record: encode(run)?,
            due: run.due_at,
            dedupe,
        };
        self.submit(op).await
    }

    async fn save_run(&self, run: &Run) -> Result<(), StoreError> {
        let op = Op::Save {
            id: run.id,
            record: encode(run)?,
            due: run.due_at,
        };
        self.submit(op).await.map(|_| ())
    }

    fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        match self.runs.get(id.to_bytes()).map_err(backend)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>, StoreError> {
        let iter = match q.before {
            Some(b) => self.runs.range(..b.to_bytes().to_vec()),
            None => self.runs.iter(),
        };
        let mut out = Vec::new();
        for item in iter.rev() {
            if out.len() >= q.limit {
                break;
            }
            let (_, v) = item.map_err(backend)?;
            let run = decode(&v)?;
            if q.route.as_ref().is_some_and(|r| *r != run.route) {
                continue;
            }
            if q.status.is_some_and(|s| s != run.status) {
                continue;
            }
            out.push(run);
        }
        Ok(out)
    }

    fn due(
        &self,
        until: Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<(Timestamp, RunId)>, StoreError> {
        let entries = self.due.entries();
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

    async fn sweep_dedupe(&self, now: Timestamp, budget: usize) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        {
            let mut cursor = self.sweep_cursor.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = 0;
            let mut last = None;
            for item in self.dedupe.range(cursor.clone()..) {
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

    async fn close(&self) -> Result<(), StoreError> {
        // Dropping the sender ends the applier once it has applied what was
        // queued; the flusher answers those writes and ends too.
        let sender = self.tx.lock().map_err(|_| StoreError::Closed)?.take();
        drop(sender);
        let threads: Vec<_> = self
            .threads
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            db.flush().map(|_| ()).map_err(backend)
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
            Created::Duplicate(a.id)
        );
        assert!(
            store.get_run(b.id).unwrap().is_none(),
            "a duplicate writes nothing"
        );
        assert_eq!(
            store.due(Timestamp(5_000), 10, &|_| false).unwrap(),
            vec![(Timestamp(1_000), a.id)]
        );
        assert_eq!(next_due(&store), Some(Timestamp(1_000)));

        let mut a2 = a.clone();
        a2.begin_start(Timestamp(1_001), Timestamp(9_000));
        store.save_run(&a2).await.unwrap();
        assert!(
            store
                .due(Timestamp(5_000), 10, &|_| false)
                .unwrap()
                .is_empty(),
            "old due entry removed"
        );
        assert_eq!(next_due(&store), Some(Timestamp(9_000)));
        assert_eq!(store.get_run(a.id).unwrap().unwrap().phase, Phase::Starting);
        assert!(
            store
                .due(Timestamp(9_000), 10, &|id| id == a.id)
                .unwrap()
                .is_empty(),
            "skip honoured"
        );

        a2.due_at = None;
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
                let mut r = run_at(1_000 + i);
                r.route = if i % 2 == 0 {
                    "even".into()
                } else {
                    "odd".into()
                };
                store.create_run(&r, None).await.unwrap();
                ids.push(r.id);
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
        let got: Vec<RunId> = all.iter().map(|r| r.id).collect();
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
                .runs
                .insert(orphan.id.to_bytes(), encode(&orphan).unwrap())
                .unwrap();
            // ...and one after a dedupe key but before its run.
            let dk = DedupeKey {
                route: "r".into(),
                delivery_id: "d".into(),
                expires_at: Timestamp(u64::MAX),
            };
            let v = dedupe_value(ghost, Timestamp(u64::MAX));
            store.dedupe.insert(dedupe_key(&dk), &v).unwrap();
            store.close().await.unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.unfinished_at_open(), 1);
        let due = store.due(Timestamp(u64::MAX), 10, &|_| false).unwrap();
        assert_eq!(
            due,
            vec![(Timestamp(1_000), orphan.id)],
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
        assert_eq!(store.dedupe.len(), 2);
        assert_eq!(store.sweep_dedupe(now, 10).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn stale_due_entries_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let r = run_at(1_000);
        store.create_run(&r, None).await.unwrap();
        store.due.insert(Timestamp(500), r.id).unwrap();
        store.forget_due(Timestamp(500), r.id).await.unwrap();
        let due = store.due(Timestamp(u64::MAX), 10, &|_| false).unwrap();
        assert_eq!(due, vec![(Timestamp(1_000), r.id)]);
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
