//! One daemon on one store, SIGKILLed and restarted many times (env
//! `CRASH_LOOP_CYCLES`, default 50) while several senders post GitHub-signed
//! triggers. After every restart: every trigger acknowledged with a 2xx so far
//! is in the store with its delivery id, and no vendor run was started twice
//! for one of our runs (Slate: idempotent key; OnePin: no key, reconciled).
//! At the end every run finishes and its callback reaches the receiver with
//! one stable `webhook-id`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::onepin::FakeOnePin;
use common::*;
use serde_json::{json, Value};

/// Concurrent senders per cycle.
const SENDERS: usize = 8;
/// Triggers each sender posts at most per cycle (bounds the store's growth).
const PER_SENDER: usize = 6;

/// splitmix64: a seeded, dependency-free RNG so a failing cycle replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A trigger the daemon acknowledged with a 2xx.
#[derive(Clone, Debug)]
struct Ack {
    route: &'static str,
    delivery: String,
    run_id: String,
}

/// What one cycle's senders saw.
#[derive(Default)]
struct Sent {
    acks: Vec<Ack>,
    statuses: HashMap<u16, usize>,
    transport_errors: usize,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The signed request body of a trigger: Slate's route reads
/// `/repository/full_name`, OnePin's takes the body whole as inputs and sends
/// `script_text`; both carry the delivery id so a vendor run names its trigger.
fn body_of(route: &str, delivery: &str) -> Vec<u8> {
    let v = if route == "gh" {
        gh_payload(delivery)
    } else {
        json!({ "script_text": delivery, "source_language": "en" })
    };
    serde_json::to_vec(&v).unwrap()
}

/// The daemon's config: `gh` on Slate (idempotent start), `op` on OnePin
/// (no key: an interrupted start is reconciled), both deduped on
/// X-GitHub-Delivery and calling back `rx`.
fn config_text(dir: &std::path::Path, slate: &FakeSlate, op: &FakeOnePin, rx: &Receiver) -> String {
    let cfg = Config::new(slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let mut text = cfg.render(dir);
    text.push('\n');
    text.push_str(&op.provider());
    text.push_str(&format!(
        "\n[routes.op]\nprovider = \"v\"\nworkflow_id = \"wf_ok\"\n\
         dedupe_header = \"X-GitHub-Delivery\"\nverify = {{ kind = \"github\", secret = {} }}\n\
         \n[[routes.op.callbacks]]\nurl = {}\nsecret = {}\n",
        toml_str(GH_SECRET),
        toml_str(&rx.url()),
        toml_str(CALLBACK_SECRET)
    ));
    text
}

/// Posts triggers from `SENDERS` tasks until each has sent its quota or the
/// daemon is gone; every 2xx is recorded the moment it arrives.
fn spawn_senders(
    d: &Daemon,
    cycle: usize,
    rng: &mut Rng,
    sent: &Arc<Mutex<Sent>>,
    in_flight: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..SENDERS)
        .map(|s| {
            let client = d.hook_http.clone();
            let base = d.base.clone();
            let sent = sent.clone();
            let in_flight = in_flight.clone();
            let mut rng = Rng(rng.next());
            tokio::spawn(async move {
                for i in 0..PER_SENDER {
                    let route: &'static str = if rng.below(2) == 0 { "gh" } else { "op" };
                    let delivery = format!("c{cycle}-s{s}-{i}-{route}");
                    let body = body_of(route, &delivery);
                    let mut req = client
                        .post(format!("{base}/hooks/{route}"))
                        .body(body.clone());
                    for (k, v) in Daemon::github_headers(&delivery, &body) {
                        req = req.header(k, v);
                    }
                    in_flight.fetch_add(1, SeqCst);
                    let resp = req.send().await;
                    let resp = match resp {
                        Ok(r) => Ok(to_hook_resp(r).await),
                        Err(e) => Err(e),
                    };
                    in_flight.fetch_sub(1, SeqCst);
                    let cut = {
                        let mut st = sent.lock().unwrap();
                        match resp {
                            Ok(r) => {
                                *st.statuses.entry(r.status).or_insert(0) += 1;
                                if (200..300).contains(&r.status) && r.body["run_id"].is_string() {
                                    st.acks.push(Ack {
                                        route,
                                        delivery,
                                        run_id: r.run_id(),
                                    });
                                }
                                false
                            }
                            Err(_) => {
                                // The daemon was killed under this request.
                                st.transport_errors += 1;
                                true
                            }
                        }
                    };
                    if cut {
                        return;
                    }
                    // Pacing, not synchronisation: spreads posts over the cycle.
                    tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
                }
            })
        })
        .collect()
}

/// Every run in the store, through the paged `GET /runs`.
async fn all_runs(d: &Daemon) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=500&cursor={c}"),
            None => "limit=500".to_string(),
        };
        let page = d.list_runs(&q).await;
        for r in page["runs"].as_array().expect("runs array") {
            let id = r["id"].as_str().expect("run id").to_string();
            assert!(
                out.insert(id.clone(), r.clone()).is_none(),
                "run {id} listed twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Property 1: nothing acknowledged is lost, and dedupe held across crashes.
fn check_nothing_lost(cycle: usize, acks: &[Ack], runs: &HashMap<String, Value>) {
    for a in acks {
        let r = runs.get(&a.run_id).unwrap_or_else(|| {
            panic!(
                "cycle {cycle}: acknowledged run {} ({}) is not in the store",
                a.run_id, a.delivery
            )
        });
        assert_eq!(r["delivery_id"], json!(a.delivery), "cycle {cycle}: {r}");
        assert_eq!(r["route"], json!(a.route), "cycle {cycle}: {r}");
    }
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    for (id, r) in runs {
        let key = (r["route"].to_string(), r["delivery_id"].to_string());
        if let Some(other) = seen.insert(key.clone(), id.clone()) {
            panic!("cycle {cycle}: runs {other} and {id} share {key:?}: dedupe broke");
        }
    }
}

/// Property 2: no vendor run started twice for one of our runs, and a
/// tracked vendor run is the one started for that run.
fn check_no_double_start(
    cycle: usize,
    runs: &HashMap<String, Value>,
    slate: &FakeSlate,
    op: &FakeOnePin,
) {
    // Slate: the key names our run (`runbridge-{id}`); one vendor run per key.
    let mut slate_by_run: HashMap<String, String> = HashMap::new();
    for v in slate.runs() {
        let key = v
            .key
            .clone()
            .unwrap_or_else(|| panic!("cycle {cycle}: Slate create without a key: {v:?}"));
        let our = key.strip_prefix("runbridge-").unwrap_or(&key).to_string();
        let r = runs.get(&our).unwrap_or_else(|| {
            panic!(
                "cycle {cycle}: Slate run {} for {our}, which is not in the store",
                v.id
            )
        });
        assert_eq!(
            v.inputs["repo"], r["delivery_id"],
            "cycle {cycle}: key {key} carries another trigger's inputs"
        );
        if let Some(prev) = slate_by_run.insert(our.clone(), v.id.clone()) {
            panic!(
                "cycle {cycle}: two Slate runs ({prev}, {}) for our run {our}",
                v.id
            );
        }
    }
    let mut key_inputs: HashMap<String, Value> = HashMap::new();
    for c in slate.create_calls() {
        let k = c.idempotency_key.clone().unwrap_or_default();
        if let Some(prev) = key_inputs.insert(k.clone(), c.inputs.clone().unwrap_or(Value::Null)) {
            assert_eq!(
                Some(&prev),
                c.inputs.as_ref(),
                "cycle {cycle}: key {k} repeated with other inputs"
            );
        }
    }
    // OnePin: the body names the trigger (`script_text` = delivery id).
    let mut op_by_delivery: HashMap<String, String> = HashMap::new();
    for v in op.core.runs().into_iter().filter(|v| !v.foreign) {
        let dlv = v.body["script_text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(prev) = op_by_delivery.insert(dlv.clone(), v.id.clone()) {
            panic!(
                "cycle {cycle}: two OnePin runs ({prev}, {}) for delivery {dlv}",
                v.id
            );
        }
    }
    for (id, r) in runs {
        let Some(vid) = r["vendor_run_id"].as_str() else {
            continue;
        };
        let dlv = r["delivery_id"].as_str().unwrap_or_default();
        let mine = if r["route"] == "gh" {
            slate_by_run.get(id)
        } else {
            op_by_delivery.get(dlv)
        };
        if mine.map(String::as_str) != Some(vid) {
            // Whose the vendor run is: the run of that trigger, if any.
            let owner_dlv = op_by_delivery
                .iter()
                .find(|(_, v)| v.as_str() == vid)
                .map(|(d, _)| d.clone());
            let owner = owner_dlv
                .as_deref()
                .and_then(|d| runs.values().find(|o| o["delivery_id"] == d));
            panic!(
                "cycle {cycle}: run {id} ({dlv}) tracks vendor run {vid}, not the one started for \
                 it ({mine:?}): {r}\nthe vendor run was started for {owner_dlv:?}, whose run is {owner:?}"
            );
        }
    }
}

/// Callbacks answered 2xx, per run.
fn ok_callbacks(rx: &Receiver) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in rx.records().iter().filter(|r| r.ok()) {
        *out.entry(r.run_id().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    out
}

/// Records, for every run `runs` shows delivered, how many 2xx callbacks
/// the receiver holds now. The receiver records a callback before it
/// answers and the daemon saves the delivery after the answer, so this
/// count is final: it must not grow.
fn note_saved_deliveries(
    runs: &HashMap<String, Value>,
    rx: &Receiver,
    saved: &mut HashMap<String, usize>,
) {
    let ok = ok_callbacks(rx);
    for (id, r) in runs {
        if r["delivery_counts"]["delivered"] == 1 && !saved.contains_key(id) {
            let n = ok.get(id).copied().unwrap_or(0);
            assert!(n >= 1, "run {id} saved as delivered, never received: {r}");
            saved.insert(id.clone(), n);
        }
    }
}

/// Where the acknowledged runs of the kill's cycle were when it landed, from
/// the fakes' point of view: [no vendor run yet, vendor run but no delivered
/// callback, callback delivered]. (Requests in flight are counted apart.)
fn phases_at_kill(acks: &[Ack], slate: &FakeSlate, op: &FakeOnePin, rx: &Receiver) -> [usize; 3] {
    let slate_runs: HashSet<String> = slate
        .runs()
        .into_iter()
        .filter_map(|v| {
            v.key
                .map(|k| k.trim_start_matches("runbridge-").to_string())
        })
        .collect();
    let op_runs: HashSet<String> = op
        .core
        .runs()
        .into_iter()
        .filter_map(|v| v.body["script_text"].as_str().map(str::to_string))
        .collect();
    let called: HashSet<String> = rx
        .records()
        .iter()
        .filter(|r| r.ok())
        .filter_map(|r| r.run_id().map(str::to_string))
        .collect();
    let mut out = [0; 3];
    for a in acks {
        let started = slate_runs.contains(&a.run_id) || op_runs.contains(&a.delivery);
        let i = if called.contains(&a.run_id) {
            2
        } else if started {
            1
        } else {
            0
        };
        out[i] += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_fifty_sigkills_under_ingress_lose_nothing_and_start_nothing_twice() {
    let cycles = env_usize("CRASH_LOOP_CYCLES", 50);
    let seed = env_usize("CRASH_LOOP_SEED", 0x5eed) as u64;
    let t0 = Instant::now();
    let slate = FakeSlate::start().await;
    // Slate answers creates after the run exists: kills land between the
    // vendor's create and the daemon hearing of it.
    slate.set_create_delay("wf_ok", Duration::from_millis(100));
    let op = FakeOnePin::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &slate, &op, &rx);
    let mut d = Daemon::start_with_text(dir, &text).await;

    let mut rng = Rng(seed);
    let mut acks: Vec<Ack> = Vec::new();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut transport_errors = 0;
    // Kills that landed with requests in flight / runs in each phase.
    let mut kills_with = [0usize; 4];
    let mut runs_at_kill = [0usize; 4];
    let mut last_check = Duration::ZERO;
    // Delivered callbacks of runs the store had saved as delivered, counted
    // after a restart: a saved delivery is never sent again.
    let mut saved_delivered: HashMap<String, usize> = HashMap::new();

    for cycle in 0..cycles {
        let sent = Arc::new(Mutex::new(Sent::default()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let tasks = spawn_senders(&d, cycle, &mut rng, &sent, &in_flight);
        // Kill early (requests and starts in flight), mid-way or late (polls,
        // deliveries): the randomized delay is the point, not a wait.
        let delay = match rng.below(3) {
            0 => rng.below(60),
            1 => 60 + rng.below(400),
            _ => 400 + rng.below(900),
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let flying = in_flight.load(SeqCst);
        d.kill_9().await;
        for t in tasks {
            tokio::time::timeout(DEADLINE, t)
                .await
                .expect("a sender outlived the daemon")
                .expect("sender task");
        }
        let sent = std::mem::take(&mut *sent.lock().unwrap());
        let phases = phases_at_kill(&sent.acks, &slate, &op, &rx);
        if flying > 0 {
            kills_with[0] += 1;
            runs_at_kill[0] += flying;
        }
        for (i, n) in phases.iter().enumerate() {
            if *n > 0 {
                kills_with[i + 1] += 1;
                runs_at_kill[i + 1] += n;
            }
        }
        for (k, v) in sent.statuses {
            *statuses.entry(k).or_insert(0) += v;
        }
        transport_errors += sent.transport_errors;
        acks.extend(sent.acks);

        d.restart().await;
        let tc = Instant::now();
        let runs = all_runs(&d).await;
        note_saved_deliveries(&runs, &rx, &mut saved_delivered);
        check_nothing_lost(cycle, &acks, &runs);
        check_no_double_start(cycle, &runs, &slate, &op);
        // A sender retrying an acknowledged delivery gets the same run.
        if !acks.is_empty() {
            let a = &acks[rng.below(acks.len() as u64) as usize];
            let body = body_of(a.route, &a.delivery);
            let again = d
                .post_hook(
                    a.route,
                    body.clone(),
                    &Daemon::github_headers(&a.delivery, &body),
                )
                .await;
            assert_eq!(
                again.status, 200,
                "cycle {cycle}: dedupe after a crash: {again:?}"
            );
            assert_eq!(again.run_id(), a.run_id, "cycle {cycle}");
        }
        last_check = last_check.max(tc.elapsed());
        eprintln!(
            "cycle {cycle}: kill after {delay} ms, {flying} requests in flight, \
             acked runs of the cycle without vendor run/tracked/called back {phases:?}; \
             {} acked so far, {} runs stored",
            acks.len(),
            runs.len()
        );
    }
    let looped = t0.elapsed();

    // The last incarnation runs to completion.
    let dd = &d;
    let runs = poll_until("every run done", Duration::from_secs(120), || async move {
        let runs = all_runs(dd).await;
        let open = runs
            .values()
            .filter(|r| {
                r["phase"] != "done"
                    || r["delivery_counts"]["pending"] != 0
                    || r["delivery_counts"]["failing"] != 0
            })
            .count();
        if open == 0 {
            Ok(runs)
        } else {
            Err(format!("{open} of {} runs not done", runs.len()))
        }
    })
    .await;
    check_nothing_lost(cycles, &acks, &runs);
    check_no_double_start(cycles, &runs, &slate, &op);
    let ok_now = ok_callbacks(&rx);
    for (id, n) in &saved_delivered {
        assert_eq!(
            ok_now.get(id).copied().unwrap_or(0),
            *n,
            "run {id}: callback sent again after its delivery was saved"
        );
    }

    let records = rx.records();
    assert!(rx.invalid().is_empty(), "{:?}", rx.invalid());
    let mut by_run: HashMap<String, Vec<&CallbackRecord>> = HashMap::new();
    for r in &records {
        by_run
            .entry(r.run_id().unwrap_or_default().to_string())
            .or_default()
            .push(r);
    }
    let mut repeated = 0;
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut uncertain: HashSet<String> = HashSet::new();
    for (id, r) in &runs {
        let cbs = by_run.get(id.as_str()).cloned().unwrap_or_default();
        let ok: Vec<_> = cbs.iter().filter(|c| c.ok()).collect();
        assert!(
            !ok.is_empty(),
            "run {id} finished without a delivered callback: {r}"
        );
        // At-least-once: a kill between the send and the saved result
        // sends again, always under the run's one webhook-id.
        let ids: HashSet<&str> = cbs.iter().map(|c| c.webhook_id.as_str()).collect();
        assert_eq!(ids.len(), 1, "run {id}: webhook-ids {ids:?}");
        assert_eq!(r["delivery_counts"]["delivered"], 1, "{r}");
        assert_eq!(
            ok[0].data()["delivery_id"],
            r["delivery_id"],
            "{}",
            ok[0].raw
        );
        assert_eq!(
            ok[0].data()["vendor_run_id"],
            r["vendor_run_id"],
            "{}",
            ok[0].raw
        );
        if ok.len() > 1 {
            repeated += 1;
        }
        let status = r["status"].as_str().unwrap_or_default().to_string();
        let key = if r["route"] == "gh" {
            assert_eq!(status, "succeeded", "a Slate run must succeed: {r}");
            format!("gh {status}")
        } else {
            // OnePin has no key: an interrupted start with other runs of the
            // workflow created in its window cannot be told apart and fails
            // `start_uncertain` rather than guess.
            assert!(status == "succeeded" || status == "failed", "{r}");
            if status == "failed" {
                let detail = d.get_run(id).await;
                assert_eq!(detail["error"]["code"], "start_uncertain", "{detail}");
                assert!(r["vendor_run_id"].is_null(), "never adopted: {detail}");
                uncertain.insert(r["delivery_id"].as_str().unwrap_or_default().to_string());
            }
            format!("op {status}")
        };
        *outcomes.entry(key).or_insert(0) += 1;
    }
    for id in by_run.keys() {
        assert!(
            runs.contains_key(id),
            "a callback for run {id}, unknown to the store"
        );
    }
    // A OnePin vendor run nobody tracks belongs to a run that failed
    // `start_uncertain` (the one its interrupted start may have created).
    let tracked: HashSet<&str> = runs
        .values()
        .filter_map(|r| r["vendor_run_id"].as_str())
        .collect();
    let mut orphans = 0;
    for v in op.core.runs() {
        if !tracked.contains(v.id.as_str()) {
            let dlv = v.body["script_text"].as_str().unwrap_or_default();
            assert!(
                uncertain.contains(dlv),
                "OnePin run {} ({dlv}) is tracked by nobody",
                v.id
            );
            orphans += 1;
        }
    }
    for v in slate.runs() {
        assert!(
            tracked.contains(v.id.as_str()),
            "Slate run {} is tracked by nobody",
            v.id
        );
    }
    assert!(
        slate.unexpected_requests().is_empty(),
        "{:?}",
        slate.unexpected_requests()
    );
    // Kills landing in each state are the point of the test.
    assert!(
        kills_with.iter().all(|n| *n > 0) || cycles < 10,
        "{kills_with:?}"
    );

    eprintln!(
        "crash loop: {cycles} kills, seed {seed:#x}, loop {:.1}s, total {:.1}s, slowest check {:?}\n\
         acknowledged {} triggers ({} stored runs), answers {statuses:?}, {transport_errors} requests cut by a kill\n\
         kills with requests in flight {}, with acked runs not yet started {}, tracked {}, called back {} \
         (runs: {runs_at_kill:?})\n\
         outcomes {outcomes:?}; Slate runs {}, creates {}; OnePin runs {}, creates {}; \
         OnePin runs left untracked by a start_uncertain run {orphans}; \
         callbacks {}, runs called back more than once {repeated}",
        looped.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        last_check,
        acks.len(),
        runs.len(),
        kills_with[0],
        kills_with[1],
        kills_with[2],
        kills_with[3],
        slate.distinct_runs(),
        slate.create_count(),
        op.core.runs().len(),
        op.core.creates(),
        records.len(),
    );
}
