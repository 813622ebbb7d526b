//! `max_in_flight` per route: at most N runs of the route started and not
//! yet terminal. A [`Gate`] counts them in memory and a [`GatedStore`]
//! wrapped around the real store keeps the count: it learns when runs end
//! (`save_run` of a terminal run) and, for `over_limit = "queue"`, hides a
//! route's waiting `accepted` runs from the scheduler's due-index reads
//! while the route is full, so they start in turn as runs end (the
//! scheduler itself is unchanged; it is woken when a slot frees).
//!
//! With `over_limit = "reject"` (the default) the handler asks the gate
//! before persisting and answers 429 when the route's unfinished runs
//! (accepted or started) reach the limit. Counts are rebuilt from the store
//! at start; a reload that adds a limit counts only runs accepted after it.

use crate::config::Settings;
use crate::ingress::limit::OverLimit;
use crate::run::{Phase, Run, RunId};
use crate::store::{Created, DedupeKey, DeliveryQuery, RunQuery, Store, StoreError, StoreFault};
use crate::time::Timestamp;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct RouteCount {
    /// Admitted and not terminal (accepted or started).
    unfinished: usize,
    /// Started, or handed to the scheduler to start, and not terminal.
    running: usize,
}

#[derive(Debug)]
struct Tracked {
    route: String,
    max: usize,
    running: bool,
}

#[derive(Debug, Default)]
struct State {
    routes: HashMap<String, RouteCount>,
    runs: HashMap<RunId, Tracked>,
}

/// In-memory counts of unfinished and started runs of routes with `max_in_flight`.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    wake: Arc<Notify>,
}

fn ended(run: &Run) -> bool {
    matches!(run.phase(), Phase::Terminal | Phase::Done) || run.status().is_terminal()
}

impl Gate {
    /// An empty gate; `wake` is the scheduler's wake-up, notified when a slot frees.
    pub fn new(wake: Arc<Notify>) -> Self {
        Gate {
            state: Mutex::new(State::default()),
            wake,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the unfinished runs of limited routes already in `store` (at start).
    pub fn rebuild(&self, store: &dyn Store, settings: &Settings) -> Result<(), StoreError> {
        let limited: HashMap<&str, usize> = settings
            .routes
            .iter()
            .filter_map(|(n, r)| r.limiter.max_in_flight().map(|m| (n.as_str(), m)))
            .collect();
        if limited.is_empty() {
            return Ok(());
        }
        let mut st = self.lock();
        for (_, id) in store.due(Timestamp(u64::MAX), usize::MAX, &|_| false)? {
            if st.runs.contains_key(&id) {
                continue;
            }
            let Some(run) = store.get_run(id)? else {
                continue;
            };
            let Some(max) = limited.get(run.route()) else {
                continue;
            };
            if ended(&run) {
                continue;
            }
            let running = run.phase() != Phase::Accepted;
            let c = st.routes.entry(run.route().to_string()).or_default();
            c.unfinished += 1;
            c.running += usize::from(running);
            st.runs.insert(
                id,
                Tracked {
                    route: run.route().to_string(),
                    max: *max,
                    running,
                },
            );
        }
        Ok(())
    }

    /// Admits run `id` of `route` (limit `max`) before it is persisted: in
    /// reject mode `false` when the route is full; queue mode always admits.
    pub fn admit(&self, route: &str, id: RunId, max: usize, mode: OverLimit) -> bool {
        let mut st = self.lock();
        let c = st.routes.entry(route.to_string()).or_default();
        if mode == OverLimit::Reject && c.unfinished >= max {
            return false;
        }
        c.unfinished += 1;
        st.runs.insert(
            id,
            Tracked {
                route: route.to_string(),
                max,
                running: false,
            },
        );
        true
    }

    /// Forgets an admitted run that was not persisted (a duplicate, a store error).
    pub fn cancel(&self, id: RunId) {
        self.end(id);
    }

    fn end(&self, id: RunId) {
        let mut st = self.lock();
        let Some(t) = st.runs.remove(&id) else { return };
        if let Some(c) = st.routes.get_mut(&t.route) {
            c.unfinished = c.unfinished.saturating_sub(1);
            if t.running {
                c.running = c.running.saturating_sub(1);
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// May the scheduler see run `id` now? Reserves a slot for a waiting run
    /// of a limited route; `false` while its route is full.
    fn may_start(&self, id: RunId) -> bool {
        let mut st = self.lock();
        let State { routes, runs } = &mut *st;
        let Some(t) = runs.get_mut(&id) else {
            return true;
        };
        if t.running {
            return true;
        }
        let c = routes.entry(t.route.clone()).or_default();
        if c.running >= t.max {
            return false;
        }
        c.running += 1;
        t.running = true;
        true
    }

    /// Started runs of `route` now (for tests and status).
    pub fn running(&self, route: &str) -> usize {
        self.lock().routes.get(route).map_or(0, |c| c.running)
    }
}

/// The store seen through the gate (see the module docs).
pub struct GatedStore {
    inner: Arc<dyn Store>,
    gate: Arc<Gate>,
}

impl GatedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, gate: Arc<Gate>) -> Self {
        GatedStore { inner, gate }
    }
}

#[async_trait]
impl Store for GatedStore {
    async fn create_run(
        &self,
        run: &Run,
        dedupe: Option<DedupeKey>,
    ) -> Result<Created, StoreError> {
        self.inner.create_run(run, dedupe).await
    }

    async fn save_run(&self, run: &Run) -> Result<(), StoreError> {
        self.inner.save_run(run).await?;
        if ended(run) {
            self.gate.end(run.id());
        }
        Ok(())
    }

    async fn save_quiet(&self, run: &Run) -> Result<(), StoreError> {
        // A quiet change never ends a run.
        self.inner.save_quiet(run).await
    }

    fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        self.inner.get_run(id)
    }

    fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>, StoreError> {
        self.inner.list_runs(q)
    }

    fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<(Run, u32)>, StoreError> {
        self.inner.list_deliveries(q)
    }

    async fn put_meta(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        self.inner.put_meta(key, value).await
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_meta(key)
    }

    fn due(
        &self,
        until: Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<(Timestamp, RunId)>, StoreError> {
        self.inner
            .due(until, limit, &|id| skip(id) || !self.gate.may_start(id))
    }

    fn unfinished_at_open(&self) -> usize {
        self.inner.unfinished_at_open()
    }

    async fn forget_due(&self, at: Timestamp, id: RunId) -> Result<(), StoreError> {
        self.inner.forget_due(at, id).await
    }

    async fn sweep_dedupe(&self, now: Timestamp, budget: usize) -> Result<usize, StoreError> {
        self.inner.sweep_dedupe(now, budget).await
    }

    async fn sweep_finished(&self, before: Timestamp, budget: usize) -> Result<usize, StoreError> {
        // Finished runs hold no in-flight count: nothing to adjust.
        self.inner.sweep_finished(before, budget).await
    }

    fn fault(&self) -> Option<StoreFault> {
        self.inner.fault()
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{RunSpec, RunStatus};
    use crate::store::sled::SledStore;

    fn settings() -> Settings {
        let toml = r#"
[providers.sim]
kind = "simulated"

[routes.r]
provider = "sim"
workflow_id = "wf"
verify = { kind = "none" }
max_in_flight = 2
over_limit = "queue"
"#;
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap();
        Settings::from_config(cfg).unwrap()
    }

    fn run(now: Timestamp) -> Run {
        let spec = RunSpec {
            route: "r".into(),
            provider: "sim".into(),
            workflow_id: "wf".into(),
            inputs: serde_json::json!({}),
            delivery_id: None,
        };
        Run::accepted(
            RunId::new(),
            spec,
            now,
            now.plus(std::time::Duration::from_secs(60)),
        )
    }

    #[tokio::test]
    async fn counts_are_rebuilt_and_waiting_runs_hidden_until_a_slot_frees() {
        let dir = tempfile::tempdir().unwrap();
        let sled: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
        let now = Timestamp::now();
        let mut started = run(now);
        sled.create_run(&started, None).await.unwrap();
        started.begin_start(now, now).unwrap();
        sled.save_run(&started).await.unwrap();
        for _ in 0..2 {
            sled.create_run(&run(now), None).await.unwrap();
        }
        let gate = Arc::new(Gate::new(Arc::new(Notify::new())));
        gate.rebuild(&*sled, &settings()).unwrap();
        assert_eq!(gate.running("r"), 1);
        let store = GatedStore::new(sled, gate.clone());
        let until = now.plus(std::time::Duration::from_secs(1));
        let seen = store.due(until, 10, &|_| false).unwrap();
        assert_eq!(seen.len(), 2, "the started run and one waiting run");
        assert_eq!(gate.running("r"), 2);
        let done = crate::run::Observation::local(RunStatus::Succeeded, None, None);
        started.finish(now, done, &[]).unwrap();
        assert_eq!(started.phase(), Phase::Done, "no callbacks: done at once");
        store.save_run(&started).await.unwrap();
        assert_eq!(gate.running("r"), 1);
        let seen = store.due(until, 10, &|_| false).unwrap();
        assert_eq!(seen.len(), 2, "both waiting runs now");
    }
}
