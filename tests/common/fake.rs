//! The core the per-vendor fakes share: runs that move through neutral
//! phases by workflow id, create calls, request times (for rate checks),
//! and holds that let a crash test kill the daemon before or after the
//! vendor created a run. Each vendor file spells the phases, envelopes and
//! errors its own way, from its docs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A vendor-neutral run phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Queued,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Canceled,
}

impl Phase {
    pub fn terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Canceled)
    }
}

/// How creates behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateMode {
    Normal,
    /// The request waits; on release it answers 503 and creates nothing.
    HoldBeforeCreate,
    /// The run is created, then the answer waits until release.
    HoldAfterCreate,
}

/// One run the fake knows.
#[derive(Clone, Debug)]
pub struct FakeRun {
    pub id: String,
    pub workflow_id: String,
    pub created_at: String,
    pub polls: u32,
    pub phase: Phase,
    /// Cancel asked; takes effect on the next poll (asynchronous vendors).
    pub cancel_requested: bool,
    pub foreign: bool,
    pub body: serde_json::Value,
}

#[derive(Default)]
pub struct CoreState {
    pub runs: Vec<FakeRun>,
    pub creates: usize,
    pub busy_answers: usize,
    pub requests: Vec<Instant>,
    pub cancels: Vec<String>,
    pub next_id: u64,
    pub held: usize,
    /// Cancels wait for a release before they take effect.
    pub hold_cancels: bool,
    pub held_cancels: usize,
}

/// The shared core of a fake vendor.
#[derive(Clone)]
pub struct Core {
    pub state: Arc<Mutex<CoreState>>,
    mode: Arc<Mutex<CreateMode>>,
    release: Arc<watch::Sender<u64>>,
    prefix: &'static str,
}

pub fn rfc3339(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// The phase of a run of workflow `wf` at its `polls`-th status check.
/// * `wf_ok*`: queued, running, then succeeded.
/// * `wf_quick*`: succeeded at once.
/// * `wf_fail*`: running, then failed.
/// * `wf_wait*`: running, then waiting for a person forever.
/// * `wf_ten`: queued, running, then succeeded at exactly the 10th check
///   (a run whose durable writes per poll are counted).
/// * `wf_slow*`, anything else: running forever.
pub fn phase_at(wf: &str, polls: u32) -> Phase {
    if wf.starts_with("wf_quick") {
        return Phase::Succeeded;
    }
    if wf == "wf_ten" {
        return match polls {
            0 | 1 => Phase::Queued,
            2..=9 => Phase::Running,
            _ => Phase::Succeeded,
        };
    }
    match (wf, polls) {
        (_, 0) => Phase::Queued,
        (w, 1) if w.starts_with("wf_ok") || w.starts_with("wf_busy") => Phase::Queued,
        (w, 2) if w.starts_with("wf_ok") || w.starts_with("wf_busy") => Phase::Running,
        (w, _) if w.starts_with("wf_ok") || w.starts_with("wf_busy") => Phase::Succeeded,
        (w, 1) if w.starts_with("wf_fail") => Phase::Running,
        (w, _) if w.starts_with("wf_fail") => Phase::Failed,
        (w, 1) if w.starts_with("wf_wait") => Phase::Running,
        (w, _) if w.starts_with("wf_wait") => Phase::Waiting,
        _ => Phase::Running,
    }
}

impl Core {
    pub fn new(prefix: &'static str) -> Core {
        let (tx, _) = watch::channel(0);
        Core {
            state: Arc::new(Mutex::new(CoreState::default())),
            mode: Arc::new(Mutex::new(CreateMode::Normal)),
            release: Arc::new(tx),
            prefix,
        }
    }

    /// Serves `app` on a free loopback port.
    pub async fn serve(app: Router) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }

    pub fn set_mode(&self, m: CreateMode) {
        *self.mode.lock().unwrap() = m;
    }

    /// Lets every held request go on.
    pub fn release(&self) {
        self.release.send_modify(|v| *v += 1);
    }

    /// Every request passes here (rate checks).
    pub fn saw_request(&self) {
        self.state.lock().unwrap().requests.push(Instant::now());
    }

    /// A create of `wf`: `Err(())` when it must answer busy (the first
    /// `busy` creates of a `wf_busy*` workflow), `Ok(None)` when a held
    /// request was released without creating, else the new run.
    pub async fn create(
        &self,
        wf: &str,
        body: serde_json::Value,
        busy: usize,
    ) -> Result<Option<FakeRun>, ()> {
        let mode = *self.mode.lock().unwrap();
        let mut rx = self.release.subscribe();
        {
            let mut st = self.state.lock().unwrap();
            st.creates += 1;
            if wf.starts_with("wf_busy") && st.busy_answers < busy {
                st.busy_answers += 1;
                return Err(());
            }
        }
        if mode == CreateMode::HoldBeforeCreate {
            self.state.lock().unwrap().held += 1;
            let _ = rx.changed().await;
            return Ok(None);
        }
        let run = self.add(wf, body, false);
        if mode == CreateMode::HoldAfterCreate {
            self.state.lock().unwrap().held += 1;
            let _ = rx.changed().await;
        }
        Ok(Some(run))
    }

    /// Adds a run (a foreign one: created by someone else, e.g. the UI).
    pub fn add(&self, wf: &str, body: serde_json::Value, foreign: bool) -> FakeRun {
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        let run = FakeRun {
            id: format!("{}{}", self.prefix, st.next_id),
            workflow_id: wf.to_string(),
            created_at: rfc3339(SystemTime::now()),
            polls: 0,
            phase: Phase::Queued,
            cancel_requested: false,
            foreign,
            body,
        };
        st.runs.push(run.clone());
        run
    }

    /// A status check: advances the run and returns it.
    pub fn poll(&self, id: &str) -> Option<FakeRun> {
        let mut st = self.state.lock().unwrap();
        let run = st.runs.iter_mut().find(|r| r.id == id)?;
        run.polls += 1;
        if !run.phase.terminal() {
            run.phase = if run.cancel_requested {
                Phase::Canceled
            } else {
                phase_at(&run.workflow_id, run.polls)
            };
        }
        Some(run.clone())
    }

    pub fn get(&self, id: &str) -> Option<FakeRun> {
        self.state
            .lock()
            .unwrap()
            .runs
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }

    /// Waits for a release when cancels are held (a crash test kills the
    /// daemon meanwhile); true when the cancel may go on.
    pub async fn cancel_gate(&self) -> bool {
        let mut rx = self.release.subscribe();
        {
            let mut st = self.state.lock().unwrap();
            if !st.hold_cancels {
                return true;
            }
            st.held_cancels += 1;
        }
        let _ = rx.changed().await;
        false
    }

    pub fn hold_cancels(&self, on: bool) {
        self.state.lock().unwrap().hold_cancels = on;
    }

    pub fn held_cancels(&self) -> usize {
        self.state.lock().unwrap().held_cancels
    }

    /// A cancel: `immediate` vendors cancel at once; others on the next
    /// poll. Returns the run before the cancel.
    pub fn cancel(&self, id: &str, immediate: bool) -> Option<FakeRun> {
        let mut st = self.state.lock().unwrap();
        st.cancels.push(id.to_string());
        let run = st.runs.iter_mut().find(|r| r.id == id)?;
        let before = run.clone();
        if !run.phase.terminal() {
            if immediate {
                run.phase = Phase::Canceled;
            } else {
                run.cancel_requested = true;
            }
        }
        Some(before)
    }

    /// Runs of `wf`, newest first.
    pub fn list(&self, wf: &str) -> Vec<FakeRun> {
        let st = self.state.lock().unwrap();
        st.runs
            .iter()
            .rev()
            .filter(|r| r.workflow_id == wf)
            .cloned()
            .collect()
    }

    pub fn runs(&self) -> Vec<FakeRun> {
        self.state.lock().unwrap().runs.clone()
    }

    pub fn creates(&self) -> usize {
        self.state.lock().unwrap().creates
    }

    pub fn held(&self) -> usize {
        self.state.lock().unwrap().held
    }

    pub fn cancels(&self) -> Vec<String> {
        self.state.lock().unwrap().cancels.clone()
    }

    /// The most requests seen in any window of `window`.
    pub fn max_in_window(&self, window: Duration) -> usize {
        let mut t = self.state.lock().unwrap().requests.clone();
        t.sort();
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..t.len() {
            while t[hi].duration_since(t[lo]) >= window {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}
