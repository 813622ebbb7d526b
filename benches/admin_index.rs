//! The admin API's run index (opt-in): seeds N runs through the store's
//! public API (created, then most of them moved to a final status, across
//! 20 routes), then measures `list_runs` with a route and status filter, a
//! page of 50, newest first and from a cursor, as `GET /runs` does. Also
//! reports the seeding rate with and without the index, the size on disk,
//! and how long an open takes to build the index for a store without one.
//! Not part of the default `cargo bench` (it needs a feature):
//!
//! ```sh
//! cargo bench --features bench-admin-index --bench admin_index
//! RUNBRIDGE_BENCH_RUNS=100000 cargo bench --features bench-admin-index --bench admin_index
//! ```
//!
//! `RUNBRIDGE_BENCH_RUNS` (default 1,000,000), `RUNBRIDGE_BENCH_QUERIES`
//! (default 2,000 per scenario), `RUNBRIDGE_BENCH_BASELINE=0` skips the
//! second seeding without the index (and so the build-at-open figure).

use runbridge::run::{Attempt, Observation, Phase, Run, RunId, RunSpec, RunStatus, Target};
use runbridge::store::sled::SledStore;
use runbridge::store::{DeliveryQuery, RunQuery, Store};
use runbridge::time::Timestamp;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUTES: usize = 20;
/// Writes in flight at once while seeding (the applier groups them).
const BATCH: usize = 2_000;
const CACHE: u64 = 64 << 20;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes of every file under `dir`.
fn disk_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += disk_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn route(i: usize) -> String {
    format!("route-{:02}", i % ROUTES)
}

/// A small xorshift, so the bench needs no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn obs(status: RunStatus) -> Observation {
    Observation {
        status,
        raw_status: Some(format!("{status:?}").to_lowercase()),
        output: None,
        error: None,
        unknown: false,
    }
}

/// Run `i` as accepted, and its final shape: 70 % succeeded, 10 % failed
/// (one in ten of those with a dead callback), 10 % running, 10 % queued.
fn shapes(i: usize, rng: &mut Rng) -> (Run, Option<Run>) {
    let now = Timestamp::now();
    let spec = RunSpec {
        route: route(i),
        provider: if i % 3 == 0 { "slate" } else { "simulated" }.into(),
        workflow_id: "wf".into(),
        inputs: json!({"repo": "acme/widgets", "ref": "refs/heads/main", "n": i}),
        delivery_id: Some(format!("d-{i}")),
    };
    let deadline = now.plus(Duration::from_secs(3600));
    let run = Run::accepted(RunId::new(), spec, now, deadline);
    let mut done = run.clone();
    let roll = rng.below(100);
    let later = now.plus(Duration::from_secs(60));
    let target = Target {
        url: "https://receiver.example/hook".into(),
        events: vec!["run.failed".into()],
    };
    match roll {
        0..70 => done.finish(now, obs(RunStatus::Succeeded), &[]).ok(),
        70..80 => {
            let dead = roll == 70;
            let targets = if dead { vec![target] } else { vec![] };
            let r = done.finish(now, obs(RunStatus::Failed), &targets).ok();
            if dead {
                let attempt = Attempt {
                    at: now,
                    duration_ms: 3,
                    status_code: Some(503),
                    error: None,
                    response: Some("unavailable".into()),
                };
                done.record_attempt(0, attempt, false, None);
                done.settle_deliveries(now);
            }
            r
        }
        80..90 => {
            let _ = done.begin_start(now, later);
            done.started(now, "v-1".into(), obs(RunStatus::Running), later, &[])
                .ok()
        }
        _ => return (run, None),
    };
    (run, Some(done))
}

/// Time spent and writes made seeding one store.
#[derive(Default)]
struct Rate {
    creates: usize,
    saves: usize,
    create_time: Duration,
    save_time: Duration,
}

impl Rate {
    fn creates_per_s(&self) -> f64 {
        self.creates as f64 / self.create_time.as_secs_f64()
    }

    fn saves_per_s(&self) -> f64 {
        self.saves as f64 / self.save_time.as_secs_f64()
    }
}

/// Writes one batch: every run created concurrently (as ingress does),
/// then the final shapes saved concurrently.
async fn write_batch(store: &Arc<SledStore>, batch: &[(Run, Option<Run>)], rate: &mut Rate) {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (run, _) in batch {
        let (store, run) = (store.clone(), run.clone());
        set.spawn(async move { store.create_run(&run, None).await.expect("create") });
    }
    set.join_all().await;
    rate.create_time += t.elapsed();
    rate.creates += batch.len();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for done in batch.iter().filter_map(|(_, d)| d.clone()) {
        let store = store.clone();
        rate.saves += 1;
        set.spawn(async move { store.save_run(&done).await.expect("save") });
    }
    set.join_all().await;
    rate.save_time += t.elapsed();
}

/// Seeds `n` runs into each store, batch by batch in turn (so a busy
/// machine slows both alike); returns the ids and each store's rate.
async fn seed(stores: &[Arc<SledStore>], n: usize) -> (Vec<RunId>, Vec<Rate>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ids = Vec::with_capacity(n);
    let mut rates: Vec<Rate> = stores.iter().map(|_| Rate::default()).collect();
    let mut i = 0;
    while i < n {
        let batch: Vec<(Run, Option<Run>)> = (i..(i + BATCH).min(n))
            .map(|k| shapes(k, &mut rng))
            .collect();
        i += batch.len();
        for (store, rate) in stores.iter().zip(rates.iter_mut()) {
            write_batch(store, &batch, rate).await;
        }
        ids.extend(batch.iter().map(|(r, _)| r.id()));
        if i % 100_000 < BATCH {
            eprintln!("  seeded {i}");
        }
    }
    (ids, rates)
}

fn report(name: &str, mut times: Vec<Duration>, found: usize) {
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<44} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  ({} queries, {:.1} runs/page)",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(*times.last().unwrap_or(&Duration::ZERO)),
        times.len(),
        found as f64 / times.len().max(1) as f64,
    );
}

fn measure(store: &SledStore, ids: &[RunId], queries: usize) {
    let mut rng = Rng(7);
    let statuses = [
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Running,
        RunStatus::Queued,
    ];
    let mut scenario = |name: &str, make: &mut dyn FnMut(&mut Rng) -> RunQuery| {
        let (mut times, mut found) = (Vec::with_capacity(queries), 0);
        for _ in 0..queries {
            let q = make(&mut rng);
            let t = Instant::now();
            let page = store.list_runs(&q).expect("list");
            times.push(t.elapsed());
            found += page.len();
        }
        report(name, times, found);
    };
    scenario("route+status, limit 50, newest first", &mut |rng| {
        RunQuery {
            route: Some(route(rng.below(ROUTES))),
            status: Some(statuses[rng.below(statuses.len())]),
            limit: 50,
            ..Default::default()
        }
    });
    scenario("route+status, limit 50, from a random cursor", &mut |rng| {
        RunQuery {
            route: Some(route(rng.below(ROUTES))),
            status: Some(statuses[rng.below(statuses.len())]),
            before: Some(ids[rng.below(ids.len())]),
            limit: 50,
            ..Default::default()
        }
    });
    scenario("provider+phase+route, limit 50", &mut |rng| RunQuery {
        route: Some(route(rng.below(ROUTES))),
        provider: Some("slate".into()),
        phase: Some(Phase::Tracking),
        limit: 50,
        ..Default::default()
    });
    scenario("no filter, limit 50, random cursor", &mut |rng| RunQuery {
        before: Some(ids[rng.below(ids.len())]),
        limit: 50,
        ..Default::default()
    });
    let mut times = Vec::new();
    let mut found = 0;
    for i in 0..queries.min(500) {
        let q = DeliveryQuery {
            route: (i % 2 == 0).then(|| route(rng.below(ROUTES))),
            limit: 50,
            ..Default::default()
        };
        let t = Instant::now();
        found += store.list_deliveries(&q).expect("deliveries").len();
        times.push(t.elapsed());
    }
    report("deliveries failing|dead (half by route), 50", times, found);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env("RUNBRIDGE_BENCH_RUNS", 1_000_000) as usize;
    let queries = env("RUNBRIDGE_BENCH_QUERIES", 2_000) as usize;
    let baseline = env("RUNBRIDGE_BENCH_BASELINE", 1) != 0;
    println!("admin index bench: {n} runs over {ROUTES} routes, {queries} queries per scenario");

    let dir = tempfile::tempdir().expect("tempdir");
    let base_dir = tempfile::tempdir().expect("tempdir");
    let mut stores = vec![Arc::new(SledStore::open(dir.path(), CACHE).expect("open"))];
    if baseline {
        let unindexed = SledStore::open_unindexed(base_dir.path(), CACHE).expect("open");
        stores.push(Arc::new(unindexed));
    }
    let (ids, rates) = seed(&stores, n).await;
    for store in stores {
        store.close().await.expect("close");
    }
    let mib = |d: &Path| disk_size(d) as f64 / (1 << 20) as f64;
    let line = |name: &str, r: &Rate, d: &Path| {
        println!(
            "{name:<14} {:>9.0} creates/s  {:>9.0} saves/s  on disk {:.1} MiB",
            r.creates_per_s(),
            r.saves_per_s(),
            mib(d)
        );
    };
    line("with index:", &rates[0], dir.path());
    if let Some(r0) = rates.get(1) {
        line("without index:", r0, base_dir.path());
        println!(
            "index cost: creates {:+.1} %, saves {:+.1} %, disk {:+.1} %",
            (rates[0].creates_per_s() / r0.creates_per_s() - 1.0) * 100.0,
            (rates[0].saves_per_s() / r0.saves_per_s() - 1.0) * 100.0,
            (mib(dir.path()) / mib(base_dir.path()) - 1.0) * 100.0
        );
    }

    let t = Instant::now();
    let store = reopen(dir.path());
    println!(
        "open after a clean close: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    measure(&store, &ids, queries);
    store.close().await.expect("close");
    drop(store);

    // As after a crash: without the clean-close marker the open verifies
    // that every run has its index keys.
    {
        let db = sled::open(dir.path()).expect("raw open");
        db.remove("runbridge.clean").expect("remove marker");
        db.flush().expect("flush");
    }
    let t = Instant::now();
    let store = reopen(dir.path());
    println!(
        "open after a crash (index verified): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    store.close().await.expect("close");
    drop(store);

    if baseline {
        let t = Instant::now();
        let store = reopen(base_dir.path());
        let built = store.index_built_at_open();
        println!(
            "index built at open for {n} runs: {:.2} s (open took {:.2} s)",
            built.unwrap_or_default().as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        store.close().await.expect("close");
    }
}

/// Opens a store just closed: sled's background flusher of the previous
/// handle may hold the directory lock for a moment after the drop, so an
/// "in use" refusal is retried for up to 10 s (the wait is not timed: the
/// callers start their clocks before calling, but it is at most a few ms).
fn reopen(path: &std::path::Path) -> SledStore {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(path, CACHE) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline && e.to_string().contains("in use") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen {}: {e}", path.display()),
        }
    }
}
