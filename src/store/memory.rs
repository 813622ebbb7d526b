//! An in-memory [`Store`] for unit tests (scheduler logic without disk or
//! timing): the same contract as the sled store, nothing durable. It counts
//! the saves a durable store would write ([`MemoryStore::durable_saves`])
//! apart from the quiet ones, so tests can assert what a run costs.

use super::{Created, DedupeKey, DeliveryQuery, RunQuery, Store, StoreError};
use crate::run::{Phase, Run, RunId};
use crate::time::Timestamp;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Default)]
struct Inner {
    runs: BTreeMap<RunId, Run>,
    due: BTreeSet<(Timestamp, RunId)>,
    dedupe: HashMap<(String, String), RunId>,
    meta: HashMap<String, Vec<u8>>,
}

/// Runs, due index and dedupe keys in maps behind one lock.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// `save_run` calls: the transitions a durable store writes.
    durable: AtomicUsize,
    /// `save_quiet` calls: kept in memory by a durable store.
    quiet: AtomicUsize,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves a durable store would have written (`save_run`), creates not
    /// counted: what issue 10 asks to keep to the transitions a restart needs.
    pub fn durable_saves(&self) -> usize {
        self.durable.load(Ordering::SeqCst)
    }

    /// Saves a durable store may keep in memory (`save_quiet`).
    pub fn quiet_saves(&self) -> usize {
        self.quiet.load(Ordering::SeqCst)
    }

    fn put(&self, run: &Run) {
        let mut g = self.lock();
        if let Some(old) = g.runs.insert(run.id(), run.clone()) {
            if let Some(at) = old.due_at() {
                g.due.remove(&(at, run.id()));
            }
        }
        if let Some(at) = run.due_at() {
            g.due.insert((at, run.id()));
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_run(
        &self,
        run: &Run,
        dedupe: Option<DedupeKey>,
    ) -> Result<Created, StoreError> {
        let mut g = self.lock();
        if let Some(d) = dedupe {
            let k = (d.route, d.delivery_id);
            if let Some(id) = g.dedupe.get(&k) {
                return Ok(Created::Duplicate(*id));
            }
            g.dedupe.insert(k, run.id());
        }
        g.runs.insert(run.id(), run.clone());
        if let Some(at) = run.due_at() {
            g.due.insert((at, run.id()));
        }
        Ok(Created::New)
    }

    async fn save_run(&self, run: &Run) -> Result<(), StoreError> {
        self.durable.fetch_add(1, Ordering::SeqCst);
        self.put(run);
        Ok(())
    }

    async fn save_quiet(&self, run: &Run) -> Result<(), StoreError> {
        self.quiet.fetch_add(1, Ordering::SeqCst);
        self.put(run);
        Ok(())
    }

    fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        Ok(self.lock().runs.get(&id).cloned())
    }

    fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>, StoreError> {
        let g = self.lock();
        Ok(g.runs
            .values()
            .rev()
            .filter(|r| q.matches(r))
            .take(q.limit)
            .cloned()
            .collect())
    }

    fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<(Run, u32)>, StoreError> {
        let g = self.lock();
        let mut out = Vec::new();
        for run in g.runs.values().rev() {
            if out.len() >= q.limit {
                break;
            }
            for i in (0..run.deliveries().len() as u32).rev() {
                if out.len() >= q.limit {
                    break;
                }
                if q.matches(run, i) {
                    out.push((run.clone(), i));
                }
            }
        }
        Ok(out)
    }

    async fn put_meta(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let mut g = self.lock();
        match value {
            Some(v) => g.meta.insert(key.to_string(), v),
            None => g.meta.remove(key),
        };
        Ok(())
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().meta.get(key).cloned())
    }

    fn due(
        &self,
        until: Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<(Timestamp, RunId)>, StoreError> {
        let g = self.lock();
        Ok(g.due
            .iter()
            .take_while(|(at, _)| *at <= until)
            .filter(|(_, id)| !skip(*id))
            .take(limit)
            .copied()
            .collect())
    }

    fn unfinished_at_open(&self) -> usize {
        0
    }

    async fn forget_due(&self, at: Timestamp, id: RunId) -> Result<(), StoreError> {
        self.lock().due.remove(&(at, id));
        Ok(())
    }

    async fn sweep_dedupe(&self, _now: Timestamp, _budget: usize) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn sweep_finished(&self, before: Timestamp, budget: usize) -> Result<usize, StoreError> {
        let mut g = self.lock();
        let old: Vec<RunId> = g
            .runs
            .values()
            .filter(|r| r.phase() == Phase::Done && r.updated_at() <= before)
            .take(budget)
            .map(|r| r.id())
            .collect();
        for id in &old {
            if let Some(run) = g.runs.remove(id) {
                if let Some(at) = run.due_at() {
                    g.due.remove(&(at, *id));
                }
                if let Some(d) = run.delivery_id() {
                    let k = (run.route().to_string(), d.clone());
                    if g.dedupe.get(&k) == Some(id) {
                        g.dedupe.remove(&k);
                    }
                }
            }
        }
        Ok(old.len())
    }

    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
