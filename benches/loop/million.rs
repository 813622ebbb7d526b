//! (e) million, opt-in (`cargo bench --bench loop -- million`): a store
//! seeded with `BENCH_MILLION` (1,000,000) tracked runs through the store
//! itself (HTTP would take minutes per run of the bench), then the daemon
//! on it: time to serving, resident memory per tracked run beyond a daemon
//! on an empty store and the sled cache, and the same after a SIGKILL.
//! Seeded with this checkout's store code: to compare builds, seed and
//! run each build's own bench (its store format is its own).

use super::*;
use runbridge::run::{Observation, Run, RunId, RunSpec, RunStatus};
use runbridge::store::sled::SledStore;
use runbridge::store::Store;
use runbridge::time::Timestamp;

/// Concurrent creates while seeding (the store's group commit batches them).
const SEED_CONCURRENCY: usize = 512;

/// Seeds `n` runs that are started and tracked, next poll an hour or more
/// away (spread), the way the `memory` scenario leaves them.
async fn seed(db: &Path, n: usize) -> Result<Duration, String> {
    let t = Instant::now();
    let store = Arc::new(SledStore::open(db, SLED_CACHE_BYTES).map_err(|e| e.to_string())?);
    let payloads = payloads();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SEED_CONCURRENCY {
        let (store, payloads, next) = (store.clone(), payloads.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), String>(());
                }
                let p = &payloads[i % payloads.len()];
                let inputs: Value = serde_json::from_slice(&p.body).unwrap_or(Value::Null);
                let now = Timestamp::now();
                let spec = RunSpec {
                    route: "gh".into(),
                    provider: "sim".into(),
                    workflow_id: "wf".into(),
                    inputs,
                    delivery_id: Some(format!("seed-{i}")),
                };
                let mut run = Run::accepted(RunId::new(), spec, now, now.plus(DAY));
                store
                    .create_run(&run, None)
                    .await
                    .map_err(|e| e.to_string())?;
                let poll = now.plus(HOUR + Duration::from_millis(i as u64 % 600_000));
                run.begin_start(now, poll).map_err(|e| e.to_string())?;
                let obs = Observation::local(RunStatus::Running, Some("running".into()), None);
                run.started(now, format!("sim-{i}"), obs, poll, &[])
                    .map_err(|e| e.to_string())?;
                store.save_run(&run).await.map_err(|e| e.to_string())?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| format!("a seeding task failed: {e}"))??;
    }
    store.close().await.map_err(|e| e.to_string())?;
    drop(store);
    Ok(t.elapsed())
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Spawns the daemon on `cfg` and waits until `/healthz` answers: the time
/// from spawn to serving, and the unfinished runs it logged at start.
async fn serve(
    bin: &Path,
    cfg: &Path,
    log: PathBuf,
) -> Result<(Daemon, Duration, Option<usize>), String> {
    let t = Instant::now();
    let d = Daemon::spawn(bin, cfg, log, LOG_READY).await?;
    d.wait_healthy(Duration::from_secs(300)).await?;
    let took = t.elapsed();
    let unfinished = d.unfinished_logged();
    Ok((d, took, unfinished))
}

pub(crate) async fn million(
    opts: &Opts,
    bin: &Path,
    ticks: f64,
    rep: &mut Report,
) -> Result<(), String> {
    const S: &str = "million";
    let n = env_num("BENCH_MILLION", 1_000_000usize).max(1);
    println!("\n[million] {n} tracked runs seeded through the store, then the daemon on it");
    let route = RouteCfg {
        poll_interval: "1h",
        max_poll_interval: "1h",
        duration: "2h",
        callback: None,
    };
    let dir = tempdir(opts, S)?;
    let cfg = write_config(dir.path(), &route)?;
    let db = dir.path().join("db");

    // The fixed base: the same daemon on an empty store, settled.
    let (mut empty, _, _) = serve(bin, &cfg, dir.path().join("stderr-0.log")).await?;
    empty.settle(ticks, Duration::from_secs(30)).await;
    let base = empty.rss();
    empty.terminate().await;
    rep.row(
        S,
        "RSS of the daemon on an empty store",
        format!("{:.1} MiB", mib(base)),
    );

    let seeded = seed(&db, n).await?;
    let (apparent, _) = disk_usage(&db);
    rep.row(
        S,
        "seeded through the store",
        format!(
            "{n} runs in {:.1} s; {:.1} MiB on disk ({:.0} bytes/run)",
            seeded.as_secs_f64(),
            mib(apparent),
            apparent as f64 / n as f64
        ),
    );

    let (mut d, took, unfinished) = serve(bin, &cfg, dir.path().join("stderr-1.log")).await?;
    let rss_ready = d.rss();
    d.settle(ticks, Duration::from_secs(120)).await;
    let rss = d.rss();
    let cache = SLED_CACHE_BYTES.min(apparent);
    let per_run = rss.saturating_sub(base + cache) as f64 / n as f64;
    rep.row(
        S,
        "start after a clean close -> /healthz 200",
        format!(
            "{:.2} s, unfinished runs logged: {}",
            took.as_secs_f64(),
            unfinished.map_or("?".into(), |u| u.to_string())
        ),
    );
    rep.row(
        S,
        "RSS serving / settled",
        format!("{:.1} / {:.1} MiB", mib(rss_ready), mib(rss)),
    );
    rep.row(
        S,
        "RSS per tracked run beyond base and cache",
        format!(
            "{per_run:.0} bytes (base {:.1} MiB, cache {:.1} MiB)",
            mib(base),
            mib(cache)
        ),
    );
    report_log(rep, S, &d);

    d.kill9().await;
    let (mut d2, took2, unfinished2) = serve(bin, &cfg, dir.path().join("stderr-2.log")).await?;
    let rss2 = d2.rss();
    rep.row(
        S,
        "restart after SIGKILL -> /healthz 200",
        format!(
            "{:.2} s, unfinished runs logged: {}; RSS {:.1} MiB",
            took2.as_secs_f64(),
            unfinished2.map_or("?".into(), |u| u.to_string()),
            mib(rss2)
        ),
    );
    report_log(rep, S, &d2);
    terminate_and_report(rep, S, &mut d2).await;

    rep.set(S, "runs", json!(n));
    rep.set(S, "seed_s", json!(round(seeded.as_secs_f64(), 2)));
    rep.set(S, "store_bytes", json!(apparent));
    rep.set(S, "rss_base_bytes", json!(base));
    rep.set(S, "rss_settled_bytes", json!(rss));
    rep.set(
        S,
        "bytes_per_run_beyond_base_and_cache",
        json!(round(per_run, 0)),
    );
    rep.set(S, "clean_start_s", json!(round(took.as_secs_f64(), 2)));
    rep.set(S, "crash_restart_s", json!(round(took2.as_secs_f64(), 2)));
    Ok(())
}
