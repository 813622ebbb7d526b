//! Retention under steady load (opt-in): runs are created and finished at
//! a steady rate in a sled store, with a short `storage.retention`, while
//! the retention sweep removes finished runs in bounded slices as the
//! daemon's sweeper does. Prints the store's disk size and record count
//! over time: with retention they level off instead of growing with the
//! total. Not part of the default `cargo bench` (it needs a feature):
//!
//! ```sh
//! cargo bench --features bench-retention --bench retention
//! BENCH_SECONDS=150 BENCH_RATE=1000 BENCH_RETENTION=20 \
//!     cargo bench --features bench-retention --bench retention
//! ```

use runbridge::run::{Observation, Run, RunId, RunSpec, RunStatus};
use runbridge::store::sled::SledStore;
use runbridge::store::{DedupeKey, Store};
use runbridge::time::Timestamp;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = env("BENCH_SECONDS", 120);
    let rate = env("BENCH_RATE", 1000).max(1);
    let retention = Duration::from_secs(env("BENCH_RETENTION", 20));
    // The daemon sweeps every 10 s with a budget of 10,000 records; the
    // bench sweeps every second with a tenth of that, the same rate.
    let sweep_every = Duration::from_secs(1);
    let budget = 1_000usize * (rate as usize / 100).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), 64 << 20).expect("open store");
    println!(
        "retention bench: {rate} runs/s for {seconds} s, retention {} s, sweep budget {budget}/s",
        retention.as_secs()
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>12}",
        "t(s)", "created", "removed", "live", "disk(MiB)"
    );
    let start = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (rate as f64 * tick.as_secs_f64()).max(1.0) as u64;
    let mut created = 0u64;
    let mut removed = 0u64;
    let mut next_sweep = start + sweep_every;
    let mut next_report = start;
    let mut interval = tokio::time::interval(tick);
    while start.elapsed() < Duration::from_secs(seconds) {
        interval.tick().await;
        for _ in 0..per_tick {
            let now = Timestamp::now();
            let spec = RunSpec {
                route: "gh".into(),
                provider: "slate".into(),
                workflow_id: "wf".into(),
                inputs: json!({"repo": "acme/widgets", "ref": "refs/heads/main"}),
                delivery_id: Some(format!("d-{created}")),
            };
            let mut run = Run::accepted(RunId::new(), spec, now, now.plus(Duration::from_secs(60)));
            let dk = DedupeKey {
                route: "gh".into(),
                delivery_id: format!("d-{created}"),
                expires_at: now.plus(retention),
            };
            if store.create_run(&run, Some(dk)).await.is_err() {
                continue;
            }
            let obs = Observation {
                status: RunStatus::Succeeded,
                raw_status: Some("COMPLETED".into()),
                output: Some(json!({"result": "x".repeat(200)})),
                error: None,
                unknown: false,
            };
            if run.finish(now, obs, &[]).is_ok() && store.save_run(&run).await.is_ok() {
                created += 1;
            }
        }
        if Instant::now() >= next_sweep {
            next_sweep += sweep_every;
            let cut = Timestamp::now().minus(retention);
            removed += store.sweep_finished(cut, budget).await.unwrap_or(0) as u64;
            let _ = store.sweep_dedupe(Timestamp::now(), budget).await;
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            println!(
                "{:>6} {:>10} {:>10} {:>10} {:>12.1}",
                start.elapsed().as_secs(),
                created,
                removed,
                created - removed,
                disk_size(dir.path()) as f64 / (1 << 20) as f64
            );
        }
    }
    let _ = store.close().await;
    println!(
        "end: {created} created, {removed} removed, {} live, disk {:.1} MiB",
        created - removed,
        disk_size(dir.path()) as f64 / (1 << 20) as f64
    );
}
