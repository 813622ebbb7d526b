//! Scheduler at scale: 10,000 runs tracked at once against a fake vendor
//! (Slate-shaped, always RUNNING, over loopback HTTP) with a 5 s poll
//! interval, i.e. about 2,000 polls/s. Prints polls/s sustained, scheduler
//! lateness p50/p99 (how late each step starts against its due time) and
//! the CPU of the scheduler side (its runtime's threads and the store's)
//! apart from the fake vendor's (its own runtime).
//!
//! ```sh
//! cargo bench --bench scheduler                      # 10,000 runs, 60 s measured
//! BENCH_RUNS=2000 BENCH_SECONDS=20 cargo bench --bench scheduler
//! ```

use axum::extract::Path as UrlPath;
use axum::routing::{get, post};
use axum::{Json, Router};
use runbridge::config::Settings;
use runbridge::health::Health;
use runbridge::run::{Run, RunId, RunSpec};
use runbridge::scheduler::Scheduler;
use runbridge::store::sled::SledStore;
use runbridge::store::Store;
use runbridge::time::Timestamp;
use runbridge::topology::{self, Topology};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

static POLLS: AtomicU64 = AtomicU64::new(0);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
fn cpu_of(prefix: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        total += (ut + st) / tick;
    }
    total
}

fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / 100.0
}

fn main() {
    let runs = env("BENCH_RUNS", 10_000) as usize;
    let seconds = env("BENCH_SECONDS", 60);
    let vendor_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vendor")
        .enable_all()
        .build()
        .expect("vendor runtime");
    let addr = vendor_rt.block_on(async {
        let app = Router::new()
            .route(
                "/workflows/{wf}/runs",
                post(|| async {
                    let n = POLLS.fetch_add(0, Ordering::Relaxed);
                    (
                        axum::http::StatusCode::ACCEPTED,
                        Json(json!({"run_id": format!("v-{}", rand_id(n)), "status": "QUEUED"})),
                    )
                }),
            )
            .route(
                "/workflow-runs/{id}",
                get(|UrlPath(id): UrlPath<String>| async move {
                    POLLS.fetch_add(1, Ordering::Relaxed);
                    Json(json!({"run_id": id, "status": "RUNNING", "output": null, "error": null}))
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        addr
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sched")
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            r#"
            [scheduler]
            poll_interval = "5s"
            poll_slowdown_after = "1h"
            max_poll_interval = "5s"
            run_timeout = "24h"
            concurrency = 256
            [providers.slate]
            kind = "slate"
            base_url = "http://{addr}"
            token = "slat_bench_token"
            [routes.r]
            provider = "slate"
            workflow_id = "wf"
            verify = {{ kind = "none" }}
            "#
        );
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(&toml, config::FileFormat::Toml))
            .build()
            .expect("config");
        let settings = Settings::from_config(cfg).expect("settings");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("client");
        let topo = Topology::new(settings, &client);
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(&dir.path().join("db"), 64 << 20).expect("store"));
        let now = Timestamp::now();
        // Spread the first due times over one poll interval, as a steady
        // state would have them.
        for i in 0..runs {
            let spec = RunSpec {
                route: "r".into(),
                provider: "slate".into(),
                workflow_id: "wf".into(),
                inputs: json!({"i": i}),
                delivery_id: None,
            };
            let at = now.plus(Duration::from_millis((i as u64 * 5_000) / runs as u64));
            let run = Run::accepted(RunId::new(), spec, at, at.plus(Duration::from_secs(86_400)));
            store.create_run(&run, None).await.expect("create");
        }
        let scheduler = Scheduler::new(
            store.clone(),
            topology::shared(topo),
            client,
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(Health::default()),
        );
        let stop = CancellationToken::new();
        let loop_task = tokio::spawn(scheduler.clone().run(stop.clone()));
        // Warm-up: every run started and polled once.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let _ = scheduler.take_lateness();
        let polls0 = POLLS.load(Ordering::Relaxed);
        let (sched0, proc0, vendor0) = (cpu_of("sched"), process_cpu(), cpu_of("vendor"));
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let wall = t0.elapsed().as_secs_f64();
        let polls = POLLS.load(Ordering::Relaxed) - polls0;
        let (sched1, proc1, vendor1) = (cpu_of("sched"), process_cpu(), cpu_of("vendor"));
        let late = scheduler.take_lateness();
        stop.cancel();
        let _ = loop_task.await;
        let vendor = vendor1 - vendor0;
        let all = proc1 - proc0;
        println!("scheduler at scale: {runs} runs tracked, poll_interval 5s, measured {wall:.0} s");
        println!("  polls/s sustained: {:.0} (ideal {:.0})", polls as f64 / wall, runs as f64 / 5.0);
        println!(
            "  lateness: p50 {:?}, p99 {:?}, max {:?} over {} steps",
            late.p50, late.p99, late.max, late.count
        );
        println!(
            "  CPU: scheduler runtime threads {:.0} % of a core; everything but the fake vendor {:.0} %; fake vendor {:.0} %",
            100.0 * (sched1 - sched0) / wall,
            100.0 * (all - vendor) / wall,
            100.0 * vendor / wall
        );
    });
}

fn rand_id(_n: u64) -> String {
    RunId::new().to_string()
}
