//! An in-memory [`Store`] for unit tests (scheduler logic without disk or
//! timing): the same contract as the sled store, nothing durable.

use super::{Created, DedupeKey, RunQuery, Store, StoreError};
use crate::run::{Phase, Run, RunId};
use crate::time::Timestamp;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

#[derive(Default)]
struct Inner {
    runs: BTreeMap<RunId, Run>,
    due: BTreeSet<(Timestamp, RunId)>,
    dedupe: HashMap<(String, String), RunId>,
}

/// Runs, due index and dedupe keys in maps behind one lock.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut g = self.lock();
        if let Some(old) = g.runs.insert(run.id(), run.clone()) {
            if let Some(at) = old.due_at() {
                g.due.remove(&(at, run.id()));
            }
        }
        if let Some(at) = run.due_at() {
            g.due.insert((at, run.id()));
        }
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
            .filter(|r| q.before.is_none_or(|b| r.id() < b))
            .filter(|r| q.route.as_ref().is_none_or(|x| r.route() == x))
            .filter(|r| q.status.is_none_or(|s| r.status() == s))
            .take(q.limit)
            .cloned()
            .collect())
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
