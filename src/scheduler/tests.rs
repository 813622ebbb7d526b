//! Scheduler logic without HTTP or timing: an in-memory store, a scripted
//! fake provider and a controllable clock; plus the save backoff with an
//! error-injecting store (the real disk fault is in tests/storefault.rs).
use super::*;
use crate::providers::{
    CancelOutcome, CancelSupport, Capabilities, PollRequest, Provider, ProviderError,
    ReconcileRequest, Reconciled, StartRequest, Started,
};
use crate::run::{CancelPhase, Observation, RunSpec, RunStatus};
use crate::store::memory::MemoryStore;
use crate::store::sled::SledStore;
use crate::store::{Created, DedupeKey, DeliveryQuery, RunQuery};
use crate::topology::Topology;
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A sled store whose `save_run` fails while its script says so.
struct Flaky {
    inner: SledStore,
    script: Mutex<VecDeque<bool>>,
    saves: AtomicUsize,
}

#[async_trait]
impl Store for Flaky {
    async fn create_run(
        &self,
        run: &Run,
        dedupe: Option<DedupeKey>,
    ) -> Result<Created, StoreError> {
        self.inner.create_run(run, dedupe).await
    }
    async fn save_run(&self, run: &Run) -> Result<(), StoreError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        if self.script.lock().unwrap().pop_front() == Some(true) {
            return Err(StoreError::Unavailable("injected".into()));
        }
        self.inner.save_run(run).await
    }
    async fn save_quiet(&self, run: &Run) -> Result<(), StoreError> {
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
        self.inner.due(until, limit, skip)
    }
    fn unfinished_at_open(&self) -> usize {
        0
    }
    async fn forget_due(&self, at: Timestamp, id: RunId) -> Result<(), StoreError> {
        self.inner.forget_due(at, id).await
    }
    async fn sweep_dedupe(&self, now: Timestamp, budget: usize) -> Result<usize, StoreError> {
        self.inner.sweep_dedupe(now, budget).await
    }
    async fn sweep_finished(&self, before: Timestamp, budget: usize) -> Result<usize, StoreError> {
        self.inner.sweep_finished(before, budget).await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

/// A vendor without an idempotent start (its intent is saved before the
/// call) that counts its starts.
#[derive(Default)]
struct Counting {
    starts: AtomicUsize,
}

#[async_trait]
impl Provider for Counting {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotent_start: false,
            reconcile: false,
            cancel: CancelSupport::Vendor,
            output_request: false,
        }
    }
    async fn start(&self, _: StartRequest<'_>) -> Result<Started, ProviderError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(Started {
            vendor_run_id: "v1".into(),
            observation: Observation {
                status: RunStatus::Running,
                raw_status: None,
                output: None,
                error: None,
                unknown: false,
            },
        })
    }
    async fn poll(&self, _: PollRequest<'_>) -> Result<Observation, ProviderError> {
        Err(ProviderError::Transient {
            kind: crate::providers::FailureKind::Other,
            detail: "not used".into(),
            retry_after: None,
        })
    }
}

/// A scheduler over a flaky store with `script`, a counting vendor `p`,
/// and one accepted run due now.
async fn setup(
    dir: &std::path::Path,
    script: &[bool],
) -> (Arc<Scheduler>, Arc<Flaky>, Arc<Counting>, Run) {
    let cfg = config::Config::builder()
        .add_source(config::File::from_str("", config::FileFormat::Toml))
        .build()
        .unwrap();
    let settings = crate::config::Settings::from_config(cfg).unwrap();
    let client = reqwest::Client::new();
    let vendor = Arc::new(Counting::default());
    let mut topo = Topology::new(settings, &client);
    topo.providers.insert("p".into(), vendor.clone());
    let store = Arc::new(Flaky {
        inner: SledStore::open(dir, 1 << 20).unwrap(),
        script: Mutex::new(script.iter().copied().collect()),
        saves: AtomicUsize::new(0),
    });
    let now = Timestamp::now();
    let run = Run::accepted(
        RunId::new(),
        RunSpec::example(),
        now,
        now.plus(Duration::from_secs(3600)),
    );
    store.create_run(&run, None).await.unwrap();
    let scheduler = Scheduler::new(
        store.clone(),
        crate::topology::shared(topo),
        client,
        Arc::new(Notify::new()),
        Arc::new(Health::default()),
    );
    (scheduler, store, vendor, run)
}

#[tokio::test]
async fn a_failed_save_after_the_vendor_call_is_retried_not_the_call() {
    let dir = tempfile::tempdir().unwrap();
    // begin_start saves; the vendor is called; the next 3 saves fail.
    let (s, store, vendor, run) = setup(dir.path(), &[false, true, true, true]).await;
    let t0 = std::time::Instant::now();
    s.step(run.due_at().unwrap(), run.id()).await;
    let took = t0.elapsed();
    assert_eq!(
        vendor.starts.load(Ordering::SeqCst),
        1,
        "start not repeated"
    );
    assert_eq!(store.saves.load(Ordering::SeqCst), 5);
    let saved = store.get_run(run.id()).unwrap().unwrap();
    assert_eq!(saved.phase(), Phase::Tracking);
    assert_eq!(saved.vendor_run_id().as_deref(), Some("v1"));
    // 100 + 200 + 400 ms, +-30 %: backoff, not a tight loop.
    assert!(took >= Duration::from_millis(450), "retried after {took:?}");
    assert_eq!(s.unpersisted().0, 0);
}

#[tokio::test]
async fn a_start_whose_intent_cannot_be_saved_calls_no_vendor() {
    let dir = tempfile::tempdir().unwrap();
    let (s, store, vendor, run) = setup(dir.path(), &[true; 100]).await;
    // Shutdown while the save of the intent keeps failing.
    let stopper = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.stopping.cancel();
    });
    s.step(run.due_at().unwrap(), run.id()).await;
    assert_eq!(
        vendor.starts.load(Ordering::SeqCst),
        0,
        "persist before act"
    );
    let saves = store.saves.load(Ordering::SeqCst);
    assert!((1..=4).contains(&saves), "{saves} saves in 300 ms: backoff");
    assert_eq!(s.unpersisted(), (1, vec![run.id()]));
    let stored = store.get_run(run.id()).unwrap().unwrap();
    assert_eq!(stored.phase(), Phase::Accepted, "last durable state kept");
}

fn obs(status: RunStatus, raw: &str) -> Observation {
    Observation {
        status,
        raw_status: Some(raw.into()),
        output: None,
        error: None,
        unknown: false,
    }
}

/// A provider answering from scripts (the last answer repeats), counting calls.
struct Fake {
    caps: Capabilities,
    starts: Mutex<VecDeque<Result<Started, ProviderError>>>,
    polls: Mutex<VecDeque<Result<Observation, ProviderError>>>,
    cancels: Mutex<VecDeque<Result<CancelOutcome, ProviderError>>>,
    listed: Mutex<Vec<String>>,
    calls: Mutex<Vec<&'static str>>,
    /// When set, starts and polls wait for a permit (a slow vendor);
    /// `entered` is notified as each call begins.
    gate: Option<Arc<Semaphore>>,
    entered: Notify,
}

impl Fake {
    async fn wait_gate(&self) {
        self.entered.notify_one();
        if let Some(g) = &self.gate {
            g.acquire().await.expect("gate open").forget();
        }
    }
}

fn next<T: Clone>(q: &Mutex<VecDeque<T>>) -> T {
    let mut q = q.lock().unwrap();
    if q.len() > 1 {
        q.pop_front().unwrap()
    } else {
        q.front().cloned().expect("scripted")
    }
}

#[async_trait]
impl Provider for Fake {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    async fn start(&self, _: StartRequest<'_>) -> Result<Started, ProviderError> {
        self.calls.lock().unwrap().push("start");
        self.wait_gate().await;
        next(&self.starts)
    }
    async fn poll(&self, _: PollRequest<'_>) -> Result<Observation, ProviderError> {
        self.calls.lock().unwrap().push("poll");
        self.wait_gate().await;
        next(&self.polls)
    }
    async fn cancel(&self, _: PollRequest<'_>) -> Result<CancelOutcome, ProviderError> {
        self.calls.lock().unwrap().push("cancel");
        next(&self.cancels)
    }
    async fn reconcile(&self, _: ReconcileRequest<'_>) -> Result<Reconciled, ProviderError> {
        self.calls.lock().unwrap().push("reconcile");
        Ok(Reconciled::Candidates(self.listed.lock().unwrap().clone()))
    }
}

fn started(id: &str) -> Result<Started, ProviderError> {
    Ok(Started {
        vendor_run_id: id.into(),
        observation: obs(RunStatus::Queued, "pending"),
    })
}

fn fake(idempotent: bool, cancel: CancelSupport) -> Fake {
    Fake {
        caps: Capabilities {
            idempotent_start: idempotent,
            reconcile: true,
            cancel,
            output_request: false,
        },
        starts: Mutex::new([started("v1")].into()),
        polls: Mutex::new([Ok(obs(RunStatus::Running, "running"))].into()),
        cancels: Mutex::new([Ok(CancelOutcome::Pending)].into()),
        listed: Mutex::new(Vec::new()),
        calls: Mutex::new(Vec::new()),
        gate: None,
        entered: Notify::new(),
    }
}

/// A scheduler over a memory store and `vendor`, with a clock the test
/// moves (starting at 1,000,000 ms), and route `r` waiting at most 10 min.
struct Harness {
    s: Arc<Scheduler>,
    store: Arc<MemoryStore>,
    vendor: Arc<Fake>,
    clock: Arc<AtomicU64>,
}

impl Harness {
    fn new(vendor: Fake) -> Harness {
        Harness::with_extra(vendor, "")
    }

    /// Route `r` with `extra` TOML appended (its callbacks).
    fn with_extra(vendor: Fake, extra: &str) -> Harness {
        let store = Arc::new(MemoryStore::default());
        let clock = Arc::new(AtomicU64::new(1_000_000));
        Harness::over(Arc::new(vendor), store, clock, extra)
    }

    /// A scheduler over the parts given (the same store after a restart).
    fn over(
        vendor: Arc<Fake>,
        store: Arc<MemoryStore>,
        clock: Arc<AtomicU64>,
        extra: &str,
    ) -> Harness {
        let toml = format!(
            r#"
                [providers.p]
                kind = "simulated"
                [routes.r]
                provider = "p"
                workflow_id = "wf"
                verify = {{ kind = "none" }}
                waiting_timeout = "10m"
                {extra}
            "#
        );
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(&toml, config::FileFormat::Toml))
            .build()
            .unwrap();
        let settings = crate::config::Settings::from_config(cfg).unwrap();
        let client = reqwest::Client::new();
        let mut topo = Topology::new(settings, &client);
        topo.providers.insert("p".into(), vendor.clone());
        let c = clock.clone();
        let s = Scheduler::with_clock(
            store.clone(),
            crate::topology::shared(topo),
            client,
            Arc::new(Notify::new()),
            Arc::new(Health::default()),
            Arc::new(move || Timestamp(c.load(Ordering::SeqCst))),
        );
        Harness {
            s,
            store,
            vendor,
            clock,
        }
    }

    /// A new process on the same store a second later (the old one was
    /// killed: whatever it kept in memory is gone).
    fn restart(&self) -> Harness {
        self.advance(Duration::from_secs(1));
        Harness::over(
            self.vendor.clone(),
            self.store.clone(),
            self.clock.clone(),
            "",
        )
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.clock.load(Ordering::SeqCst))
    }

    fn advance(&self, d: Duration) {
        self.clock.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }

    async fn accept(&self) -> RunId {
        let now = self.now();
        let run = Run::accepted(
            RunId::new(),
            RunSpec::example(),
            now,
            now.plus(Duration::from_secs(24 * 3600)),
        );
        self.store.create_run(&run, None).await.unwrap();
        run.id()
    }

    fn run(&self, id: RunId) -> Run {
        self.store.get_run(id).unwrap().unwrap()
    }

    /// Moves the clock to the run's due time and works it once.
    async fn step(&self, id: RunId) -> Run {
        let run = self.run(id);
        let at = run.due_at().expect("run is due");
        if at > self.now() {
            self.clock.store(at.0, Ordering::SeqCst);
        }
        self.s.step(at, id).await;
        self.run(id)
    }

    fn calls(&self) -> Vec<&'static str> {
        self.vendor.calls.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_run_goes_from_start_to_done_on_the_fake_clock() {
    let v = fake(true, CancelSupport::Vendor);
    *v.polls.lock().unwrap() = [
        Ok(obs(RunStatus::Running, "running")),
        Ok(obs(RunStatus::Succeeded, "completed")),
    ]
    .into();
    let h = Harness::new(v);
    let id = h.accept().await;
    let r = h.step(id).await;
    assert_eq!(
        (r.phase(), r.vendor_run_id().as_deref()),
        (Phase::Tracking, Some("v1"))
    );
    let due = r.due_at().unwrap();
    assert!(due > h.now(), "the next poll waits for poll_interval");
    let r = h.step(id).await;
    assert_eq!(r.status(), RunStatus::Running);
    let r = h.step(id).await;
    assert_eq!((r.phase(), r.status()), (Phase::Done, RunStatus::Succeeded));
    assert_eq!(h.calls(), ["start", "poll", "poll"]);
}

#[tokio::test]
async fn a_busy_start_is_retried_and_creates_one_run() {
    let v = fake(false, CancelSupport::Vendor);
    *v.starts.lock().unwrap() = [
        Err(ProviderError::Busy {
            detail: "another run is active".into(),
            retry_after: None,
        }),
        started("v9"),
    ]
    .into();
    let h = Harness::new(v);
    let id = h.accept().await;
    let r = h.step(id).await;
    assert_eq!((r.phase(), r.start_unsure()), (Phase::Starting, false));
    assert!(r.last_error().as_ref().unwrap().contains("active"));
    let r = h.step(id).await;
    assert_eq!(r.vendor_run_id().as_deref(), Some("v9"));
    assert_eq!(
        h.calls(),
        ["start", "start"],
        "busy created nothing: no reconcile"
    );
}

/// A run whose start was interrupted (intent saved, answer lost).
async fn interrupted(h: &Harness) -> RunId {
    let id = h.accept().await;
    let mut run = h.run(id);
    run.begin_start(h.now(), h.now()).unwrap();
    h.store.save_run(&run).await.unwrap();
    id
}

#[tokio::test]
async fn an_interrupted_start_adopts_the_one_unowned_candidate() {
    let v = fake(false, CancelSupport::Vendor);
    *v.listed.lock().unwrap() = vec!["v_other".into(), "v_mine".into()];
    let h = Harness::new(v);
    // Another runbridge run owns v_other.
    let other = h.accept().await;
    let mut o = h.run(other);
    o.begin_start(h.now(), h.now()).unwrap();
    o.started(
        h.now(),
        "v_other".into(),
        obs(RunStatus::Running, "running"),
        h.now(),
        &[],
    )
    .unwrap();
    h.store.save_run(&o).await.unwrap();
    let id = interrupted(&h).await;
    let r = h.step(id).await;
    assert_eq!(r.vendor_run_id().as_deref(), Some("v_mine"));
    assert_eq!(h.calls(), ["reconcile"], "adopted, not started again");
}

#[tokio::test]
async fn an_interrupted_start_with_no_candidate_starts_once() {
    let h = Harness::new(fake(false, CancelSupport::Vendor));
    let id = interrupted(&h).await;
    let r = h.step(id).await;
    assert_eq!(r.vendor_run_id().as_deref(), Some("v1"));
    assert_eq!(h.calls(), ["reconcile", "start"]);
}

#[tokio::test]
async fn one_candidate_is_not_adopted_while_another_start_of_the_workflow_is_unresolved() {
    // Two starts of one workflow were interrupted by the same crash; the
    // vendor lists one run, which may be either's: adopting it could track
    // the other run's vendor run (found by tests/crash_loop.rs under load).
    let v = fake(false, CancelSupport::Vendor);
    *v.listed.lock().unwrap() = vec!["v_someone".into()];
    let h = Harness::new(v);
    let _other = interrupted(&h).await;
    let id = interrupted(&h).await;
    let r = h.step(id).await;
    assert_eq!(
        r.error().as_ref().unwrap()["code"],
        "start_uncertain",
        "{r:?}"
    );
    assert!(r.vendor_run_id().is_none(), "never adopted");
    assert_eq!(h.calls(), ["reconcile"]);
}

#[tokio::test]
async fn an_ambiguous_start_fails_with_start_uncertain() {
    let v = fake(false, CancelSupport::Vendor);
    *v.listed.lock().unwrap() = vec!["a".into(), "b".into()];
    let h = Harness::new(v);
    let id = interrupted(&h).await;
    let r = h.step(id).await;
    assert_eq!(r.status(), RunStatus::Failed);
    assert_eq!(r.error().as_ref().unwrap()["code"], "start_uncertain");
    assert!(r.vendor_run_id().is_none(), "never adopted");
    assert_eq!(h.calls(), ["reconcile"]);
}

#[tokio::test]
async fn a_waiting_run_times_out_after_waiting_timeout() {
    let v = fake(true, CancelSupport::Vendor);
    *v.polls.lock().unwrap() = [Ok(obs(RunStatus::Waiting, "paused"))].into();
    let h = Harness::new(v);
    let id = h.accept().await;
    h.step(id).await;
    let r = h.step(id).await;
    assert_eq!(
        (r.status(), r.waiting_since().is_some()),
        (RunStatus::Waiting, true)
    );
    for _ in 0..1000 {
        let r = h.run(id);
        if r.phase() != Phase::Tracking {
            break;
        }
        h.advance(Duration::from_secs(30));
        h.step(id).await;
    }
    let r = h.run(id);
    assert_eq!(r.status(), RunStatus::TimedOut);
    assert_eq!(r.error().as_ref().unwrap()["code"], "WAITING_TIMED_OUT");
    let waited = r.finished_at().unwrap().since(r.history()[1].at);
    assert!(
        waited >= Duration::from_secs(600) && waited < Duration::from_secs(700),
        "{waited:?}"
    );
}

#[tokio::test]
async fn cancel_pending_then_canceled_and_local_only_cancel() {
    let v = fake(true, CancelSupport::Vendor);
    *v.polls.lock().unwrap() = [
        Ok(obs(RunStatus::Running, "running")),
        Ok(obs(RunStatus::Canceled, "cancelled")),
    ]
    .into();
    let h = Harness::new(v);
    let id = h.accept().await;
    h.step(id).await;
    let mut run = h.run(id);
    run.request_cancel(h.now()).unwrap();
    h.store.save_run(&run).await.unwrap();
    let r = h.step(id).await;
    assert_eq!(r.cancel().as_ref().unwrap().phase, CancelPhase::Pending);
    h.step(id).await;
    let r = h.step(id).await;
    assert_eq!((r.status(), r.phase()), (RunStatus::Canceled, Phase::Done));
    assert_eq!(h.calls(), ["start", "cancel", "poll", "poll"]);

    let h = Harness::new(fake(true, CancelSupport::LocalOnly));
    let id = h.accept().await;
    h.step(id).await;
    let mut run = h.run(id);
    run.request_cancel(h.now()).unwrap();
    h.store.save_run(&run).await.unwrap();
    let r = h.step(id).await;
    assert_eq!(r.status(), RunStatus::Canceled);
    assert!(r.cancel().as_ref().unwrap().local_only);
    assert_eq!(r.error().as_ref().unwrap()["code"], "CANCELED_LOCALLY");
    assert_eq!(h.calls(), ["start"], "no vendor cancel exists");
}

#[tokio::test]
async fn an_unknown_status_counts_as_running_and_is_flagged_once() {
    let v = fake(true, CancelSupport::Vendor);
    let mut odd = obs(RunStatus::Running, "paused_for_lunch");
    odd.unknown = true;
    *v.polls.lock().unwrap() = [Ok(odd)].into();
    let h = Harness::new(v);
    let id = h.accept().await;
    h.step(id).await;
    let r = h.step(id).await;
    assert_eq!(
        (r.status(), r.raw_status().as_deref()),
        (RunStatus::Running, Some("paused_for_lunch"))
    );
    assert!(r.unknown_status_logged());
}

#[tokio::test]
async fn a_vendor_that_forgot_the_run_ends_it_failed() {
    let v = fake(true, CancelSupport::Vendor);
    *v.polls.lock().unwrap() = [Err(ProviderError::NotFound {
        detail: "HTTP 404".into(),
        body: serde_json::json!({"error": "gone"}),
    })]
    .into();
    let h = Harness::new(v);
    let id = h.accept().await;
    h.step(id).await;
    let r = h.step(id).await;
    assert_eq!(r.status(), RunStatus::Failed);
    assert_eq!(r.error().as_ref().unwrap()["code"], "VENDOR_RUN_NOT_FOUND");
}

mod writes;
