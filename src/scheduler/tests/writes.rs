//! What a run costs in durable writes (issue 10), and the cases that make
//! fewer writes safe: an idempotent start cut off by a crash, a cancel of
//! such a run, a cancel that arrives while a step holds the run.

use super::*;
use tokio::sync::Semaphore;

#[tokio::test]
async fn an_idempotent_start_writes_no_starting_record() {
    let h = Harness::new(fake(true, CancelSupport::Vendor));
    let id = h.accept().await;
    let r = h.step(id).await;
    assert_eq!(r.phase(), Phase::Tracking);
    assert_eq!(h.store.durable_saves(), 1, "only `started` is written");

    let h = Harness::new(fake(false, CancelSupport::Vendor));
    let id = h.accept().await;
    let r = h.step(id).await;
    assert_eq!(r.phase(), Phase::Tracking);
    assert_eq!(
        h.store.durable_saves(),
        2,
        "`starting` before the call, then `started`"
    );
}

/// A harness whose vendor's starts and polls wait for permits of the gate.
fn gated(idempotent: bool) -> (Harness, Arc<Semaphore>) {
    let mut v = fake(idempotent, CancelSupport::Vendor);
    let gate = Arc::new(Semaphore::new(0));
    v.gate = Some(gate.clone());
    (Harness::new(v), gate)
}

/// Accepts a run and cuts its (idempotent) start off after the vendor
/// got the call, as a kill -9 would: the store still says `accepted`.
async fn start_cut_off(h: &Harness, gate: &Semaphore) -> RunId {
    let id = h.accept().await;
    let s = h.s.clone();
    let at = h.run(id).due_at().unwrap();
    let step = tokio::spawn(async move { s.step(at, id).await });
    h.vendor.entered.notified().await;
    step.abort();
    let _ = step.await;
    assert_eq!(h.run(id).phase(), Phase::Accepted, "nothing was written");
    assert_eq!(h.calls(), ["start"]);
    gate.add_permits(1_000);
    id
}

/// Steps `id` until it is done (at most 20 steps).
async fn until_done(h: &Harness, id: RunId) -> Run {
    for _ in 0..20 {
        let r = h.step(id).await;
        if r.phase() == Phase::Done {
            return r;
        }
    }
    panic!("not done: {:?}", h.run(id));
}

#[tokio::test]
async fn an_idempotent_start_cut_off_by_a_crash_is_repeated_after_restart() {
    let (h, gate) = gated(true);
    let id = start_cut_off(&h, &gate).await;
    let h = h.restart();
    let r = h.step(id).await;
    assert_eq!(r.phase(), Phase::Tracking);
    assert_eq!(r.vendor_run_id().as_deref(), Some("v1"));
    // The fake answers every start with v1, as Slate answers a repeated
    // key with the run it created.
    assert_eq!(h.calls(), ["start", "start"]);
}

#[tokio::test]
async fn a_cancel_after_a_cut_off_idempotent_start_cancels_the_vendor_run() {
    let (h, gate) = gated(true);
    *h.vendor.cancels.lock().unwrap() = [Ok(CancelOutcome::Canceled(None))].into();
    let id = start_cut_off(&h, &gate).await;
    let h = h.restart();
    let now = h.now();
    h.s.modify_run(id, |r| r.request_cancel(now).map(|()| true))
        .await
        .unwrap();
    let r = until_done(&h, id).await;
    assert_eq!(r.status(), RunStatus::Canceled, "{r:?}");
    assert_eq!(r.vendor_run_id().as_deref(), Some("v1"));
    assert!(!r.cancel().as_ref().unwrap().local_only);
    assert_eq!(
        h.calls(),
        ["start", "start", "cancel"],
        "the repeated start (same key) finds the vendor run, which is canceled"
    );
}

#[tokio::test]
async fn a_cancel_before_the_start_in_the_same_process_calls_no_vendor() {
    let h = Harness::new(fake(true, CancelSupport::Vendor));
    let id = h.accept().await;
    let now = h.now();
    h.s.modify_run(id, |r| r.request_cancel(now).map(|()| true))
        .await
        .unwrap();
    let r = until_done(&h, id).await;
    assert_eq!(r.status(), RunStatus::Canceled);
    assert_eq!(r.error().as_ref().unwrap()["code"], "CANCELED_LOCALLY");
    assert!(h.calls().is_empty(), "{:?}", h.calls());
}

#[tokio::test]
async fn a_candidate_of_a_run_that_ended_start_uncertain_is_not_adopted() {
    // Two starts of one workflow cut off by one kill; the vendor lists the
    // one run the first created. The first ends start_uncertain (the
    // second is still starting); the second must not adopt that run now
    // that no start is unresolved (found by tests/crash_loop.rs).
    let v = fake(false, CancelSupport::Vendor);
    *v.listed.lock().unwrap() = vec!["v_first".into()];
    let h = Harness::new(v);
    let first = interrupted(&h).await;
    let second = interrupted(&h).await;
    let r = h.step(first).await;
    assert_eq!(r.error().as_ref().unwrap()["code"], "start_uncertain");
    let r = h.step(second).await;
    assert!(r.vendor_run_id().is_none(), "adopted another run's: {r:?}");
    assert_eq!(r.error().as_ref().unwrap()["code"], "start_uncertain");
    assert_eq!(h.calls(), ["reconcile", "reconcile"]);
}

#[tokio::test]
async fn polls_whose_answer_changes_nothing_are_saved_quietly() {
    let v = fake(true, CancelSupport::Vendor);
    let mut polls: VecDeque<_> = (0..9)
        .map(|_| Ok(obs(RunStatus::Running, "running")))
        .collect();
    polls.push_back(Ok(obs(RunStatus::Succeeded, "completed")));
    *v.polls.lock().unwrap() = polls;
    let h = Harness::new(v);
    let id = h.accept().await;
    let r = until_done(&h, id).await;
    assert_eq!(r.status(), RunStatus::Succeeded);
    assert_eq!(r.polls(), 10, "quiet saves are read back");
    assert_eq!(h.calls().iter().filter(|c| **c == "poll").count(), 10);
    // started, the first poll (queued -> running), the terminal poll.
    assert_eq!(h.store.durable_saves(), 3);
    assert_eq!(h.store.quiet_saves(), 8, "running, running, ...");
}

#[tokio::test]
async fn a_failed_poll_is_durable() {
    let v = fake(true, CancelSupport::Vendor);
    *v.polls.lock().unwrap() = [Err(ProviderError::Transient {
        kind: crate::providers::FailureKind::Other,
        detail: "HTTP 502".into(),
        retry_after: None,
    })]
    .into();
    let h = Harness::new(v);
    let id = h.accept().await;
    h.step(id).await;
    let r = h.step(id).await;
    assert_eq!(r.failures(), 1);
    assert_eq!(h.store.durable_saves(), 2, "started, failed poll");
    assert_eq!(h.store.quiet_saves(), 0);
}

/// A receiver on loopback answering every callback 200; returns its URL
/// and how many callbacks it got.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move || {
            g.fetch_add(1, Ordering::SeqCst);
            async { "" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/cb"), got)
}

#[tokio::test]
async fn the_step_that_ends_a_run_sends_its_callback_after_the_terminal_save() {
    let (url, got) = receiver().await;
    let v = fake(true, CancelSupport::Vendor);
    *v.polls.lock().unwrap() = [Ok(obs(RunStatus::Succeeded, "completed"))].into();
    let extra = format!(
        "[[routes.r.callbacks]]\nurl = \"{url}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
         [delivery]\nallow_destinations = [\"127.0.0.1/32\"]"
    );
    let h = Harness::with_extra(v, &extra);
    let id = h.accept().await;
    h.step(id).await;
    let r = h.step(id).await;
    assert_eq!(
        got.load(Ordering::SeqCst),
        1,
        "sent in the terminal step: {r:?}"
    );
    assert_eq!((r.phase(), r.status()), (Phase::Done, RunStatus::Succeeded));
    assert_eq!(r.deliveries()[0].attempts.len(), 1);
    // started, terminal (durable before the callback), delivery result.
    assert_eq!(h.store.durable_saves(), 3);
}

/// Works `id` as the loop does, holding its claim while the step runs.
fn claimed_step(h: &Harness, id: RunId) -> tokio::task::JoinHandle<()> {
    let s = h.s.clone();
    let at = h.run(id).due_at().unwrap();
    assert!(s.in_flight.lock().unwrap().insert(id));
    let claim = Claim {
        scheduler: s.clone(),
        id,
        permit: None,
    };
    tokio::spawn(async move {
        s.step(at, id).await;
        drop(claim);
    })
}

#[tokio::test]
async fn a_cancel_during_a_slow_poll_is_neither_lost_nor_clobbers_the_poll() {
    let (h, gate) = gated(true);
    *h.vendor.polls.lock().unwrap() = [Ok(obs(RunStatus::Running, "running"))].into();
    let id = h.accept().await;
    gate.add_permits(1);
    assert_eq!(h.step(id).await.status(), RunStatus::Queued);
    h.clock
        .store(h.run(id).due_at().unwrap().0, Ordering::SeqCst);
    let step = claimed_step(&h, id);
    h.vendor.entered.notified().await;
    // The poll is at the vendor; the operator cancels (as the admin API does).
    let (s, now) = (h.s.clone(), h.now());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let cancel = tokio::spawn(async move {
        s.modify_run_by(id, deadline, |r| r.request_cancel(now).map(|()| true))
            .await
    });
    tokio::task::yield_now().await;
    assert!(!cancel.is_finished(), "the cancel waits for the step");
    gate.add_permits(1);
    step.await.unwrap();
    cancel.await.unwrap().unwrap();
    let r = h.run(id);
    assert_eq!(r.status(), RunStatus::Running, "the poll's transition kept");
    assert_eq!(r.polls(), 1);
    assert_eq!(r.cancel().as_ref().unwrap().phase, CancelPhase::Requested);
    assert!(r.due_at().unwrap() <= h.now(), "the cancel is due at once");
    let r = h.step(id).await;
    assert_eq!(r.cancel().as_ref().unwrap().phase, CancelPhase::Pending);
    assert_eq!(h.calls(), ["start", "poll", "cancel"]);
}

#[tokio::test]
async fn a_cancel_that_cannot_get_the_run_in_time_is_busy_and_changes_nothing() {
    let (h, gate) = gated(true);
    let id = h.accept().await;
    let step = claimed_step(&h, id);
    h.vendor.entered.notified().await;
    let now = h.now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let e =
        h.s.modify_run_by(id, deadline, |r| r.request_cancel(now).map(|()| true))
            .await
            .unwrap_err();
    assert!(matches!(e, ModifyError::Busy), "{e}");
    gate.add_permits(1);
    step.await.unwrap();
    let r = h.run(id);
    assert_eq!(r.phase(), Phase::Tracking);
    assert!(r.cancel().is_none(), "nothing recorded: the caller retries");
}
