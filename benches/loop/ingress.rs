//! (a) ingress: durable triggers accepted per second.

use super::*;

pub(crate) async fn ingress(
    opts: &Opts,
    bin: &Path,
    ticks: f64,
    rep: &mut Report,
) -> Result<(), String> {
    const S: &str = "ingress";
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
    let w = measure_window(opts, &d, ticks, S).await?;
    let after_total = w.total_202;
    let rss = d.rss();

    // The scheduler starts every accepted run (two more durable writes
    // each); see how long it stays busy after the load stops.
    let settle = d.settle(ticks, Duration::from_secs(120)).await;
    let (apparent, _) = disk_usage(&dir.path().join("db"));

    w.report(rep, S);
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
    rep.set(S, "busy_after_s", json!(round(settle.as_secs_f64(), 2)));
    report_log(rep, S, &d);
    terminate_and_report(rep, S, &mut d).await;
    Ok(())
}

/// What one duration-bounded firing window measured against one server.
pub(crate) struct Window {
    /// 202s per second in the measured window.
    pub(crate) rate: f64,
    /// Sorted latencies of the window's 202s, in microseconds.
    pub(crate) lat: Vec<u32>,
    pub(crate) errors: BTreeMap<String, u64>,
    /// 202s completed during the warm-up.
    pub(crate) warm_ok: u64,
    /// 202s over the whole firing, warm-up and tail included.
    pub(crate) total_202: usize,
    pub(crate) secs: f64,
    pub(crate) conns: usize,
    /// CPU seconds in the window: server, bench, everything else.
    pub(crate) cpu: (f64, f64, f64),
}

/// Fires `opts.conns` connections at `d` for warm-up + measured seconds and
/// accounts for the measured part only; `ingress` and `reference` share it
/// so their figures are comparable.
pub(crate) async fn measure_window(
    opts: &Opts,
    d: &Daemon,
    ticks: f64,
    scenario: &'static str,
) -> Result<Window, String> {
    let warmup = Duration::from_secs(opts.warmup);
    let measure = Duration::from_secs(opts.seconds);
    let payloads = payloads();
    // Server and bench CPU over the measured window only.
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
        let perf = Perf::start(pid, scenario).await;
        let a = probe();
        tokio::time::sleep(measure).await;
        let b = probe();
        let perf = match perf {
            Ok(p) => {
                stop_perf(p).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        (a, b, perf)
    });
    let (_t0, samples) = fire_for(&d.base, payloads, &conns, warmup, measure).await?;
    let ((d0, s0, m0), (d1, s1, m1), perf) = cpu_probe.await.map_err(|e| e.to_string())?;
    perf?;

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
    let dcpu = d1.zip(d0).map(|(b, a)| b - a).unwrap_or(0.0);
    let scpu = s1.zip(s0).map(|(b, a)| b - a).unwrap_or(0.0);
    let other = (m1.zip(m0).map(|(b, a)| b - a).unwrap_or(0.0) - dcpu - scpu).max(0.0);
    Ok(Window {
        rate: lat.len() as f64 / secs,
        total_202: samples.iter().filter(|s| s.code == 202).count(),
        lat,
        errors,
        warm_ok,
        secs,
        conns: opts.conns,
        cpu: (dcpu, scpu, other),
    })
}

impl Window {
    /// The rows and JSON keys both ingress-style scenarios print.
    pub(crate) fn report(&self, rep: &mut Report, s: &str) {
        let (secs, lat) = (self.secs, &self.lat);
        let (dcpu, scpu, other) = self.cpu;
        rep.row(s, "accepted (202) per second", format!("{:.0}", self.rate));
        rep.row(
            s,
            "accepted in the measured window",
            format!(
                "{} in {secs:.1} s (+{} in warm-up)",
                lat.len(),
                self.warm_ok
            ),
        );
        rep.row(s, "latency p50 / p99 / max", latency_text(lat));
        rep.row(
            s,
            "errors (non-202) in the window",
            errors_text(&self.errors),
        );
        rep.row(
            s,
            "CPU in the window: server / bench / others",
            format!(
                "{dcpu:.1} / {scpu:.1} / {other:.1} s in {secs:.0} s ({:.0}% / {:.0}% / {:.0}% of one core)",
                100.0 * dcpu / secs,
                100.0 * scpu / secs,
                100.0 * other / secs
            ),
        );
        rep.set(s, "accepted_per_sec", json!(round(self.rate, 1)));
        rep.set(s, "accepted", json!(lat.len()));
        rep.set(s, "seconds", json!(secs));
        rep.set(s, "connections", json!(self.conns));
        rep.set(s, "p50_ms", json!(round(pct(lat, 0.5), 3)));
        rep.set(s, "p99_ms", json!(round(pct(lat, 0.99), 3)));
        rep.set(s, "max_ms", json!(round(pct(lat, 1.0), 3)));
        rep.set(s, "errors", json!(self.errors.values().sum::<u64>()));
        rep.set(s, "daemon_cpu_s", json!(round(dcpu, 2)));
        rep.set(s, "client_cpu_s", json!(round(scpu, 2)));
        rep.set(s, "other_cpu_s", json!(round(other, 2)));
    }
}
