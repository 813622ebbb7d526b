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
use crate::run::{Run, RunId};
use crate::time::Timestamp;
use async_trait::async_trait;
use serde::Deserialize;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Largest batch one transaction takes.
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
    due: sled::Tree,
    tx: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
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
        let due = db.open_tree("due").map_err(backend)?;

        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let (flush_tx, flush_rx) = std_mpsc::channel::<Vec<(Reply, Result<Created, StoreError>)>>();
        let trees = (runs.clone(), dedupe, due.clone());
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
            due,
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![applier, flusher]),
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

fn dedupe_key(d: &DedupeKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(d.route.len() + 1 + d.delivery_id.len());
    k.extend_from_slice(d.route.as_bytes());
    k.push(0);
    k.extend_from_slice(d.delivery_id.as_bytes());
    k
}

#[derive(Deserialize)]
struct DueOnly {
    due_at: Option<Timestamp>,
}

fn apply_loop(
    mut rx: mpsc::UnboundedReceiver<Job>,
    (runs, dedupe, due): (sled::Tree, sled::Tree, sled::Tree),
    flush_tx: std_mpsc::Sender<Vec<(Reply, Result<Created, StoreError>)>>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let outcome = (&runs, &dedupe, &due).transaction(|(runs, dedupe, due)| {
            let mut results = Vec::with_capacity(jobs.len());
            for job in &jobs {
                match &job.op {
                    Op::Create {
                        id,
                        record,
                        due: at,
                        dedupe: dk,
                    } => {
                        if let Some(d) = dk {
                            let key = dedupe_key(d);
                            if let Some(v) = dedupe.get(&key)? {
                                let expires = v
                                    .get(16..24)
                                    .and_then(|b| b.try_into().ok())
                                    .map(u64::from_be_bytes);
                                let existing = v
                                    .get(..16)
                                    .and_then(|b| b.try_into().ok())
                                    .map(RunId::from_bytes);
                                if let (Some(exp), Some(existing)) = (expires, existing) {
                                    if exp > Timestamp::now().0 {
                                        results.push(Created::Duplicate(existing));
                                        continue;
                                    }
                                }
                            }
                            let mut v = Vec::with_capacity(24);
                            v.extend_from_slice(&id.to_bytes());
                            v.extend_from_slice(&d.expires_at.0.to_be_bytes());
                            dedupe.insert(key, v)?;
                        }
                        runs.insert(&id.to_bytes(), record.as_slice())?;
                        if let Some(at) = at {
                            due.insert(&due_key(*at, *id), &[])?;
                        }
                        results.push(Created::New);
                    }
                    Op::Save {
                        id,
                        record,
                        due: at,
                    } => {
                        let key = id.to_bytes();
                        if let Some(old) = runs.get(key)? {
                            if let Ok(DueOnly {
                                due_at: Some(old_at),
                            }) = serde_json::from_slice::<DueOnly>(&old)
                            {
                                if Some(old_at) != *at {
                                    due.remove(&due_key(old_at, *id))?;
                                }
                            }
                        }
                        runs.insert(&key, record.as_slice())?;
                        if let Some(at) = at {
                            due.insert(&due_key(*at, *id), &[])?;
                        }
                        results.push(Created::New);
                    }
                }
            }
            Ok::<_, ConflictableTransactionError<()>>(results)
        });
        let answers: Vec<(Reply, Result<Created, StoreError>)> = match outcome {
            Ok(results) => jobs
                .into_iter()
                .zip(results)
                .map(|(j, r)| (j.reply, Ok(r)))
                .collect(),
            Err(e) => {
                let msg = match e {
                    TransactionError::Storage(s) => s.to_string(),
                    TransactionError::Abort(()) => "transaction aborted".into(),
                };
                tracing::error!(error = %msg, "store write failed");
                jobs.into_iter()
                    .map(|j| (j.reply, Err(StoreError::Backend(msg.clone()))))
                    .collect()
            }
        };
        if flush_tx.send(answers).is_err() {
            break;
        }
    }
}

fn flush_loop(rx: std_mpsc::Receiver<Vec<(Reply, Result<Created, StoreError>)>>, db: sled::Db) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(g) = rx.try_recv() {
            groups.push(g);
        }
        let flushed = db.flush();
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
        let mut end = [0xffu8; 24];
        end[..8].copy_from_slice(&until.0.to_be_bytes());
        let mut out = Vec::new();
        for item in self.due.range(..=end.to_vec()) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(backend)?;
            if let Some((at, id)) = parse_due_key(&k) {
                if !skip(id) {
                    out.push((at, id));
                }
            }
        }
        Ok(out)
    }

    fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        match self.due.first().map_err(backend)? {
            Some((k, _)) => Ok(parse_due_key(&k).map(|(at, _)| at)),
            None => Ok(None),
        }
    }

    fn unfinished(&self) -> Result<usize, StoreError> {
        Ok(self.due.len())
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
        assert_eq!(store.next_due().unwrap(), Some(Timestamp(1_000)));

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
        assert_eq!(store.next_due().unwrap(), Some(Timestamp(9_000)));
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
        assert_eq!(store.next_due().unwrap(), None);
        assert_eq!(store.unfinished().unwrap(), 0);
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
        assert_eq!(store.unfinished().unwrap(), 5);
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
