//! Store faults with a real filesystem fault: the store's disk fills up under
//! load and empties again. Triggers answer 503 while full, `/readyz` reports
//! the fault, nothing storms (vendor and receiver traffic stays proportional
//! to runs), the store recovers without a restart, every run gets exactly one
//! callback, the fault is logged a few times rather than per attempt, and
//! SIGTERM during a fault exits in time with a clear message.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::disk::{DiskKind, SmallDisk};
use common::*;
use tokio::sync::watch;

const SHUTDOWN: Duration = Duration::from_secs(5);
/// Slack for process tear-down on a slow machine on top of shutdown_timeout.
const SLACK: Duration = Duration::from_millis(1500);
/// How long the fault window under load lasts.
const FAULT_WINDOW: Duration = Duration::from_secs(3);

/// Starts the daemon with its store on `disk`.
async fn start_on(cfg: &Config, disk: &SmallDisk) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let rendered = cfg.render(dir.path());
    let default = toml_str(&dir.path().join("db").to_string_lossy());
    assert!(rendered.contains(&default), "storage path in {rendered}");
    let text = rendered.replace(&default, &toml_str(&disk.store_path().to_string_lossy()));
    Daemon::start_with_text(dir, &text).await
}

/// One trigger's answer: when it was sent, its status, its run id.
#[derive(Clone, Debug)]
struct Sent {
    at: Instant,
    status: u16,
    run_id: Option<String>,
}

/// Signed GitHub deliveries with unique ids, one every `every`, until stopped.
struct Load {
    sent: Arc<Mutex<Vec<Sent>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(d: &Daemon, route: &str, every: Duration) -> Load {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let url = d.url(&format!("/hooks/{route}"));
        let client = hook_client();
        let log = sent.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let body = serde_json::to_vec(&gh_payload(&format!("acme/load-{n}"))).unwrap();
                let mut req = client.post(&url).body(body.clone());
                for (k, v) in Daemon::github_headers(&format!("load-{n}"), &body) {
                    req = req.header(k, v);
                }
                let at = Instant::now();
                let (status, run_id) = match req.send().await {
                    Ok(resp) => {
                        let r = to_hook_resp(resp).await;
                        let id = r.body["run_id"].as_str().map(str::to_string);
                        (r.status, id)
                    }
                    Err(_) => (0, None),
                };
                log.lock().unwrap().push(Sent { at, status, run_id });
            }
        });
        Load { sent, stop, task }
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    fn count(&self, status: u16, since: Instant) -> usize {
        self.sent()
            .iter()
            .filter(|s| s.status == status && s.at >= since)
            .count()
    }

    async fn stop(self) -> Vec<Sent> {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(DEADLINE, self.task).await;
        self.sent.lock().unwrap().clone()
    }
}

/// Every run id in the store (paged through the admin API).
async fn all_run_ids(d: &Daemon) -> Vec<String> {
    let mut ids = Vec::new();
    let mut query = "limit=1000".to_string();
    loop {
        let page = d.list_runs(&query).await;
        for r in page["runs"].as_array().expect("runs array") {
            ids.push(r["id"].as_str().expect("run id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => query = format!("limit=500&cursor={next}"),
            None => return ids,
        }
    }
}

/// Lines at WARN or ERROR level in the daemon's stderr.
fn loud_lines(d: &Daemon) -> Vec<String> {
    d.stderr()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_disk_full_under_load_answers_503_recovers_without_restart_and_redoes_nothing() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut disk = SmallDisk::new("16m");
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let d = start_on(&cfg, &disk).await;
    let t0 = Instant::now();
    let load = Load::start(&d, "gh", Duration::from_millis(10));

    poll_until("30 runs accepted before the fault", DEADLINE, || async {
        let n = load.count(202, t0);
        (n >= 30).then_some(()).ok_or(format!("{n} accepted"))
    })
    .await;
    let filled = disk.fill(d.pid());
    let fill_at = Instant::now();

    // The fault: 503 with Retry-After, and /readyz unready with the fault.
    poll_until("a 503 after the disk filled", DEADLINE, || async {
        let n = load.count(503, fill_at);
        (n > 0).then_some(()).ok_or(format!("{filled}; no 503 yet"))
    })
    .await;
    let fault_seen = Instant::now();
    let detected_after = fault_seen - fill_at;
    let fault_body = poll_until("/readyz unready with the fault", DEADLINE, || async {
        let (status, body) = d.readiness().await;
        (status == 503 && body["store"]["fault"]["error"].is_string())
            .then_some(body.clone())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    assert_eq!(fault_body["status"], "unready", "{fault_body}");
    assert_eq!(fault_body["store"]["ok"], false, "{fault_body}");
    let unready_at = Instant::now();
    let r = d
        .post_github("gh", "during-fault", &gh_payload("acme/x"))
        .await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body["error"], "storage_unavailable", "{r:?}");

    // The fault window under load: measure what the daemon does meanwhile.
    let accepted_before = load.sent().iter().filter(|s| s.status == 202).count();
    let (creates0, polls0, cbs0) = (slate.create_count(), slate.poll_count(), rx.records().len());
    poll_until("the fault window to pass under load", DEADLINE, || async {
        let n = load.count(503, unready_at);
        (unready_at.elapsed() >= FAULT_WINDOW && n >= 20)
            .then_some(())
            .ok_or(format!("{n} answered 503 so far"))
    })
    .await;
    let (creates1, polls1, cbs1) = (slate.create_count(), slate.poll_count(), rx.records().len());
    let window = unready_at.elapsed();
    let answered_503 = load.count(503, unready_at);
    let accepted_in_fault = load.count(202, unready_at);
    let (_, still) = d.readiness().await;
    let failures = still["store"]["fault"]["failures"].as_u64().unwrap_or(0);
    assert_eq!(
        accepted_in_fault, 0,
        "nothing may be accepted while the disk is full"
    );
    let (polls, creates, cbs) = (polls1 - polls0, creates1 - creates0, cbs1 - cbs0);
    assert!(
        polls <= accepted_before,
        "poll storm: {polls} vendor polls in {window:?} for {accepted_before} runs"
    );
    assert!(
        creates <= accepted_before && cbs <= accepted_before,
        "storm: {creates} creates, {cbs} callbacks in {window:?} for {accepted_before} runs"
    );

    // Space returns: triggers succeed again within seconds, no restart.
    disk.free(d.pid());
    let freed = Instant::now();
    poll_until(
        "a trigger accepted after space returned",
        DEADLINE,
        || async {
            let n = load.count(202, freed);
            (n > 0).then_some(()).ok_or("no 202 yet".to_string())
        },
    )
    .await;
    let recovered_after = freed.elapsed();
    assert!(
        recovered_after < Duration::from_secs(10),
        "recovery took {recovered_after:?}"
    );
    poll_until("/readyz ready again", DEADLINE, || async {
        let (status, body) = d.readiness().await;
        (status == 200)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    poll_until("10 more runs accepted", DEADLINE, || async {
        let n = load.count(202, freed);
        (n >= 10).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    let sent = load.stop().await;

    // Every run in the store (the 202s, plus any whose 503 raced a write
    // sled had already made durable) finishes with exactly one callback.
    let ids = all_run_ids(&d).await;
    let accepted: Vec<&String> = sent.iter().filter_map(|s| s.run_id.as_ref()).collect();
    for id in &accepted {
        assert!(ids.contains(id), "accepted run {id} is not in the store");
    }
    for id in &ids {
        d.wait_done(id).await;
    }
    let records = rx.records();
    for id in &ids {
        let cbs: Vec<_> = records
            .iter()
            .filter(|r| r.run_id() == Some(id.as_str()))
            .collect();
        assert_eq!(cbs.len(), 1, "run {id} got {} callbacks", cbs.len());
        assert!(cbs[0].ok() && cbs[0].signature_valid, "{:?}", cbs[0]);
    }
    assert_eq!(records.len(), ids.len(), "receiver requests == runs");
    assert_eq!(slate.distinct_runs(), ids.len(), "one vendor run per run");
    let repeated: Vec<_> = slate
        .calls_per_key()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(repeated.is_empty(), "vendor starts repeated: {repeated:?}");

    let loud = loud_lines(&d);
    eprintln!(
        "STOREFAULT numbers: disk={:?} ({filled}); fault detected {detected_after:?} after filling; \
         fault window {window:?}: {answered_503} triggers answered 503, 0 accepted, store failures {failures}, \
         {creates} vendor creates, {polls} vendor polls, {cbs} callbacks (runs accepted before: {accepted_before}); \
         recovered {recovered_after:?} after space returned; runs {} ({} answered 202), callbacks {}, \
         vendor polls total {}; WARN/ERROR lines {}, stderr {} bytes\n{}",
        disk.kind,
        ids.len(),
        accepted.len(),
        records.len(),
        slate.poll_count(),
        loud.len(),
        d.stderr().len(),
        loud.join("\n"),
    );
    // Measured: 12 (the fault, one line each from the store, the HTTP edge
    // and the scheduler, one "still faulted", sled's own lines when its old
    // handles are dropped, and the recovery), against hundreds of failures.
    assert!(
        loud.len() <= 30,
        "fault logging must be throttled, got {} lines:\n{}",
        loud.len(),
        loud.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_sigterm_during_a_store_fault_exits_within_the_shutdown_timeout_with_a_clear_message()
{
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let mut disk = SmallDisk::new("16m");
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_hold").callback(&rx.url()));
    let mut d = start_on(&cfg, &disk).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            d.trigger("gh", &format!("term-{i}"), &format!("acme/t{i}"))
                .await,
        );
    }
    for id in &ids {
        d.wait_run(id, "tracking", |r| r["phase"] == "tracking")
            .await;
    }

    // The tracked runs keep polling and saving: the full disk faults the
    // store, and their saves go into backoff.
    disk.fill(d.pid());
    poll_until("/readyz unready with the fault", DEADLINE, || async {
        let (status, body) = d.readiness().await;
        (status == 503)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    poll_until("a save retried with backoff", DEADLINE, || async {
        d.stderr()
            .contains("cannot persist a run transition")
            .then_some(())
            .ok_or("not yet".to_string())
    })
    .await;

    let (status, took) = d
        .terminate(SHUTDOWN + SLACK + Duration::from_secs(10))
        .await
        .expect("runbridge still running long after SIGTERM");
    let tail = d.stderr_tail(30);
    assert!(
        took <= SHUTDOWN + SLACK,
        "SIGTERM took {took:?}, shutdown_timeout is {SHUTDOWN:?}\n{tail}"
    );
    assert_eq!(status.code(), Some(1), "final flush failed: exit 1\n{tail}");
    let stderr = d.stderr();
    let message = stderr
        .lines()
        .find(|l| l.starts_with("runbridge: shutdown during a store fault"))
        .unwrap_or_else(|| panic!("no clear exit message:\n{tail}"));
    assert!(
        message.contains("could not be persisted")
            && message.contains("resumes from its last durable state"),
        "{message}"
    );
    eprintln!("STOREFAULT sigterm: exited {status:?} after {took:?}: {message}");

    // Space back, start again: every run resumes and ends with one callback.
    if disk.kind == DiskKind::Tmpfs {
        disk.free(0);
    } // (a file-size limit ended with the process)
    d.restart().await;
    slate.release_holds();
    for id in &ids {
        d.wait_done(id).await;
        assert_eq!(rx.for_run(id).len(), 1, "run {id}: {:?}", rx.for_run(id));
    }
    assert_eq!(slate.distinct_runs(), 3);
    assert!(slate.calls_per_key().values().all(|n| *n == 1));
}
