//! (c) memory and restart: RSS with many runs in flight, store size,
//! resume after SIGKILL.

use super::*;

/// Small deterministic PRNG for the sample of run ids.
pub(crate) fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

pub(crate) async fn memory(
    opts: &Opts,
    bin: &Path,
    ticks: f64,
    rep: &mut Report,
) -> Result<(), String> {
    const S: &str = "memory";
    let n = opts.runs;
    println!(
        "\n[memory] {n} runs in flight (simulated 1h runs, polled every 10m), then SIGKILL and restart"
    );
    println!("  (storage.cache_capacity = 64MiB bounds sled's page cache)");
    let route = RouteCfg {
        poll_interval: "10m",
        max_poll_interval: "10m",
        duration: "1h",
        callback: None,
    };
    let (dir, cfg, mut d) = start_scenario(opts, bin, S, &route, "stderr-1.log").await?;
    let rss0 = d.rss();
    // Four quarters, with the RSS after each, to show how memory grows.
    let payloads = payloads();
    let conns = clients(opts.conns)?;
    let mut fired = Fired {
        t0: Instant::now(),
        runs: Vec::with_capacity(n),
        errors: BTreeMap::new(),
        lat_us: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut steps = Vec::new();
    for q in 0..4 {
        let count = n * (q + 1) / 4 - n * q / 4;
        if count == 0 {
            continue;
        }
        let part = fire_count(
            &d.base,
            payloads.clone(),
            &conns,
            count,
            &format!("mem{q}"),
            true,
        )
        .await?;
        fired.runs.extend(part.runs);
        for (k, v) in part.errors {
            *fired.errors.entry(k).or_default() += v;
        }
        fired.lat_us.extend(part.lat_us);
        steps.push((fired.runs.len(), d.rss()));
    }
    fired.elapsed = fired.t0.elapsed();
    fired.lat_us.sort_unstable();
    let accepted = fired.runs.len();
    let rss_loaded = d.rss();
    // A million runs take minutes to start; allow 1 s per 1,000.
    let settle_limit = Duration::from_secs(300.max(n as u64 / 1000));
    let settle = d.settle(ticks, settle_limit).await;
    let rss1 = d.rss();
    let hwm = status_bytes(d.pid, "VmHWM").unwrap_or(0);
    let threads = status_field(d.pid, "Threads").unwrap_or_default();
    let (apparent, allocated) = disk_usage(&dir.path().join("db"));
    let per_run = rss1.saturating_sub(rss0) as f64 / accepted.max(1) as f64;
    // The sled page cache fills up to its capacity and then stays: it is
    // the fixed base, so it is taken off (as much of it as the store can
    // fill) before dividing by the runs.
    let (apparent_now, _) = disk_usage(&dir.path().join("db"));
    let cache = SLED_CACHE_BYTES.min(apparent_now);
    let beyond_cache = rss1.saturating_sub(rss0 + cache) as f64 / accepted.max(1) as f64;
    // And the slope between the second and the last quarter of the load.
    let slope = match (steps.get(1), steps.last()) {
        (Some((r1, b1)), Some((r4, b4))) if r4 > r1 => {
            Some(b4.saturating_sub(*b1) as f64 / (r4 - r1) as f64)
        }
        _ => None,
    };

    rep.row(
        S,
        "triggers accepted",
        format!(
            "{accepted}/{n} in {:.1} s ({:.0}/s), errors {}",
            fired.elapsed.as_secs_f64(),
            accepted as f64 / fired.elapsed.as_secs_f64().max(1e-9),
            errors_text(&fired.errors)
        ),
    );
    rep.row(
        S,
        "trigger latency p50 / p99 / max",
        latency_text(&fired.lat_us),
    );
    rep.row(S, "RSS before the load", format!("{:.1} MiB", mib(rss0)));
    let growth: Vec<String> = steps
        .iter()
        .map(|(runs, rss)| format!("{runs}: {:.1}", mib(*rss)))
        .collect();
    rep.row(S, "RSS while loading (runs: MiB)", growth.join(", "));
    rep.row(
        S,
        "RSS right after the last 202",
        format!("{:.1} MiB", mib(rss_loaded)),
    );
    rep.row(
        S,
        "RSS with all runs started and idle",
        format!(
            "{:.1} MiB (settled {:.1} s after the load; VmHWM {:.1} MiB; {threads} threads)",
            mib(rss1),
            settle.as_secs_f64(),
            mib(hwm)
        ),
    );
    rep.row(
        S,
        "RSS growth per run in flight",
        format!("{per_run:.0} bytes"),
    );
    rep.row(
        S,
        "RSS per run beyond the sled cache",
        format!(
            "{beyond_cache:.0} bytes (cache taken as {:.1} MiB); slope {} bytes/run over the last three quarters",
            mib(cache),
            slope.map_or("-".into(), |b| format!("{b:.0}"))
        ),
    );
    rep.set(
        S,
        "bytes_per_run_beyond_cache",
        json!(round(beyond_cache, 0)),
    );
    rep.set(S, "bytes_per_run_slope", json!(slope.map(|b| round(b, 0))));
    rep.row(
        S,
        "store on disk",
        format!(
            "{:.1} MiB apparent, {:.1} MiB allocated ({:.0} bytes/run)",
            mib(apparent),
            mib(allocated),
            apparent as f64 / accepted.max(1) as f64
        ),
    );
    report_log(rep, S, &d);

    // Crash, then resume on the same store.
    d.kill9().await;
    let mut d2 = Daemon::spawn(bin, &cfg, dir.path().join("stderr-2.log"), LOG_READY).await?;
    let listen = d2.ready_after;
    let t = Instant::now();
    d2.wait_healthy(Duration::from_secs(60)).await?;
    let healthy = listen + t.elapsed();
    let unfinished = d2.unfinished_logged();
    let rss_restart = d2.rss();

    // A sample of recorded run ids must still be there, unfinished.
    let client = conn_client()?;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let sample = 100.min(accepted);
    let (mut found, mut in_flight) = (0, 0);
    let mut get_us = Vec::with_capacity(sample);
    let mut missing = Vec::new();
    for _ in 0..sample {
        let r = &fired.runs[(xorshift(&mut seed) % accepted as u64) as usize];
        let start = Instant::now();
        let resp = client
            .get(format!("{}/runs/{}", d2.base, r.run_id))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await;
        let v = match resp {
            Ok(resp) if resp.status().as_u16() == 200 => resp.json::<Value>().await.ok(),
            _ => None,
        };
        get_us.push(start.elapsed().as_micros() as u32);
        match v {
            Some(v) if v["id"].as_str() == Some(r.run_id.as_str()) => {
                found += 1;
                if v["phase"] != "done" && v["phase"] != "terminal" {
                    in_flight += 1;
                }
            }
            _ => missing.push(r.run_id.clone()),
        }
    }
    get_us.sort_unstable();

    rep.row(
        S,
        "restart: spawn -> `listening on`",
        format!("{:.0} ms", listen.as_secs_f64() * 1000.0),
    );
    rep.row(
        S,
        "restart: spawn -> /healthz 200",
        format!("{:.0} ms", healthy.as_secs_f64() * 1000.0),
    );
    rep.row(
        S,
        "restart: unfinished runs logged",
        unfinished
            .map(|u| format!("{u} (accepted {accepted})"))
            .unwrap_or_else(|| "not found in the log".into()),
    );
    rep.row(
        S,
        "restart: sampled runs found / unfinished",
        format!(
            "{found}/{sample} / {in_flight}/{sample} (GET p50 {:.2} ms, max {:.2} ms)",
            pct(&get_us, 0.5),
            pct(&get_us, 1.0)
        ),
    );
    if !missing.is_empty() {
        println!(
            "    missing after restart: {:?}",
            &missing[..missing.len().min(5)]
        );
    }
    rep.row(
        S,
        "RSS after restart (before load)",
        format!("{:.1} MiB", mib(rss_restart)),
    );
    rep.set(S, "runs", json!(accepted));
    rep.set(
        S,
        "trigger_errors",
        json!(fired.errors.values().sum::<u64>()),
    );
    rep.set(S, "ingest_s", json!(round(fired.elapsed.as_secs_f64(), 2)));
    rep.set(S, "rss_before_bytes", json!(rss0));
    rep.set(
        S,
        "rss_steps",
        json!(steps
            .iter()
            .map(|(r, b)| json!({"runs": r, "rss_bytes": b}))
            .collect::<Vec<_>>()),
    );
    rep.set(S, "rss_loaded_bytes", json!(rss_loaded));
    rep.set(S, "rss_settled_bytes", json!(rss1));
    rep.set(S, "rss_peak_bytes", json!(hwm));
    rep.set(S, "rss_settled_mib", json!(round(mib(rss1), 1)));
    rep.set(S, "bytes_per_run", json!(round(per_run, 0)));
    rep.set(S, "settle_s", json!(round(settle.as_secs_f64(), 2)));
    rep.set(S, "store_bytes", json!(apparent));
    rep.set(S, "store_allocated_bytes", json!(allocated));
    rep.set(S, "restart_listen_ms", json!(listen.as_millis() as u64));
    rep.set(S, "restart_healthz_ms", json!(healthy.as_millis() as u64));
    rep.set(S, "restart_unfinished", json!(unfinished));
    rep.set(S, "sample_found", json!(found));
    rep.set(S, "sample_size", json!(sample));
    rep.set(S, "rss_after_restart_bytes", json!(rss_restart));
    report_log(rep, S, &d2);
    terminate_and_report(rep, S, &mut d2).await;
    Ok(())
}
