//! (a) ingress: durable triggers accepted per second.

use super::*;

pub(crate) async fn ingress(
    opts: &Opts,
    bin: &Path,
    ticks: f64,
    rep: &mut Report,
) -> Result<(), String> {
    const S: &str = "ingress";
    let warmup = Duration::from_secs(opts.warmup);
    let measure = Duration::from_secs(opts.seconds);
    println!(
        "\n[ingress] {} connections, {}s warm-up + {}s measured, GitHub-signed ~1 KB bodies",
        opts.conns, opts.warmup, opts.seconds
    );
    println!(
        "  (runs are never polled during the window, but the scheduler starts each one as it \
         arrives: 2 more durable writes per run)"
    );
    let route = RouteCfg {
        poll_interval: "1h",
        max_poll_interval: "1h",
        duration: "1h",
        callback: None,
    };
    let (dir, _cfg, mut d) = start_scenario(opts, bin, S, &route, "stderr.log").await?;
    let payloads = payloads();

    // Daemon and bench CPU over the measured window only.
    let pid = d.pid;
    let conns = clients(opts.conns)?;
    let cpu_probe = tokio::spawn(async move {
        let probe = || {
            (
                cpu_seconds(&pid.to_string(), ticks),
                cpu_seconds("self", ticks),
                machine_busy_seconds(ticks),
            )
        };
        tokio::time::sleep(warmup).await;
        let a = probe();
        tokio::time::sleep(measure).await;
        (a, probe())
    });
    let (_t0, samples) = fire_for(&d.base, payloads.clone(), &conns, warmup, measure).await?;
    let ((d0, s0, m0), (d1, s1, m1)) = cpu_probe.await.map_err(|e| e.to_string())?;

    let (lo, hi) = (
        warmup.as_micros() as u64,
        (warmup + measure).as_micros() as u64,
    );
    let mut lat = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut warm_ok = 0u64;
    for s in &samples {
        if s.done_us < lo {
            warm_ok += u64::from(s.code == 202);
            continue;
        }
        if s.done_us > hi {
            continue;
        }
        if s.code == 202 {
            lat.push(s.lat_us);
        } else {
            *errors.entry(outcome_name(s.code)).or_default() += 1;
        }
    }
    lat.sort_unstable();
    let secs = measure.as_secs_f64();
    let rate = lat.len() as f64 / secs;
    let dcpu = d1.zip(d0).map(|(b, a)| b - a).unwrap_or(0.0);
    let scpu = s1.zip(s0).map(|(b, a)| b - a).unwrap_or(0.0);
    let other = (m1.zip(m0).map(|(b, a)| b - a).unwrap_or(0.0) - dcpu - scpu).max(0.0);
    let rss = d.rss();
    let after_total = samples.iter().filter(|s| s.code == 202).count();

    // The scheduler starts every accepted run (two more durable writes
    // each); see how long it stays busy after the load stops.
    let settle = d.settle(ticks, Duration::from_secs(120)).await;
    let (apparent, _) = disk_usage(&dir.path().join("db"));

    rep.row(S, "accepted (202) per second", format!("{rate:.0}"));
    rep.row(
        S,
        "accepted in the measured window",
        format!("{} in {secs:.1} s (+{warm_ok} in warm-up)", lat.len()),
    );
    rep.row(S, "latency p50 / p99 / max", latency_text(&lat));
    rep.row(S, "errors (non-202) in the window", errors_text(&errors));
    rep.row(
        S,
        "CPU in the window: daemon / bench / others",
        format!(
            "{dcpu:.1} / {scpu:.1} / {other:.1} s in {secs:.0} s ({:.0}% / {:.0}% / {:.0}% of one core)",
            100.0 * dcpu / secs,
            100.0 * scpu / secs,
            100.0 * other / secs
        ),
    );
    rep.row(
        S,
        "daemon RSS after the load",
        format!("{:.1} MiB", mib(rss)),
    );
    rep.row(
        S,
        "daemon busy after the load (starting runs)",
        format!("{:.1} s", settle.as_secs_f64()),
    );
    rep.row(
        S,
        "store on disk",
        format!("{:.1} MiB for {after_total} runs", mib(apparent)),
    );
    rep.set(S, "accepted_per_sec", json!(round(rate, 1)));
    rep.set(S, "accepted", json!(lat.len()));
    rep.set(S, "seconds", json!(secs));
    rep.set(S, "connections", json!(opts.conns));
    rep.set(S, "p50_ms", json!(round(pct(&lat, 0.5), 3)));
    rep.set(S, "p99_ms", json!(round(pct(&lat, 0.99), 3)));
    rep.set(S, "max_ms", json!(round(pct(&lat, 1.0), 3)));
    rep.set(S, "errors", json!(errors.values().sum::<u64>()));
    rep.set(S, "daemon_cpu_s", json!(round(dcpu, 2)));
    rep.set(S, "client_cpu_s", json!(round(scpu, 2)));
    rep.set(S, "other_cpu_s", json!(round(other, 2)));
    rep.set(S, "busy_after_s", json!(round(settle.as_secs_f64(), 2)));
    report_log(rep, S, &d);
    let (took, ok) = d.terminate().await;
    rep.row(
        S,
        "SIGTERM to exit",
        format!(
            "{:.0} ms ({})",
            took.as_secs_f64() * 1000.0,
            if ok { "exit 0" } else { "NOT clean" }
        ),
    );
    rep.set(S, "sigterm_exit_ms", json!(took.as_millis() as u64));
    Ok(())
}
