//! (b) callbacks: signed callbacks delivered per second end to end.

use super::*;

pub(crate) struct Receiver {
    pub(crate) key: WebhookKey,
    /// webhook-id -> first arrival.
    pub(crate) seen: Mutex<HashMap<String, Instant>>,
    pub(crate) posts: AtomicU64,
    pub(crate) bad: AtomicU64,
    pub(crate) target: AtomicUsize,
    pub(crate) done: tokio::sync::Notify,
}

pub(crate) async fn receive(
    axum::extract::State(r): axum::extract::State<Arc<Receiver>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    r.posts.fetch_add(1, Ordering::Relaxed);
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sig)) = (
        h("webhook-id"),
        h("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        h("webhook-signature"),
    ) else {
        r.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST;
    };
    if !r.key.verify(id, ts, &body, sig) {
        r.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let at = Instant::now();
    let n = {
        let mut seen = r.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(id.to_string()).or_insert(at);
        seen.len()
    };
    if n == r.target.load(Ordering::Relaxed) {
        r.done.notify_one();
    }
    StatusCode::NO_CONTENT
}

pub(crate) async fn start_receiver(
    r: Arc<Receiver>,
) -> Result<(String, tokio::task::JoinHandle<()>), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind the receiver: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new()
        .route("/cb", axum::routing::post(receive))
        .with_state(r);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/cb"), task))
}

/// Pages through `GET /runs?route=gh&status=succeeded`; counts runs whose
/// phase is `done` with every delivery succeeded.
pub(crate) async fn count_done(base: &str, max_pages: usize) -> Result<(usize, usize), String> {
    let client = conn_client()?;
    let (mut succeeded, mut done) = (0, 0);
    let mut before: Option<String> = None;
    for _ in 0..max_pages {
        // 500 is the admin API's largest page.
        let mut url = format!("{base}/runs?route=gh&status=succeeded&limit=500");
        if let Some(b) = &before {
            url.push_str(&format!("&cursor={b}"));
        }
        let v: Value = client
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .map_err(|e| format!("GET /runs: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET /runs: {e}"))?;
        let runs = v["runs"].as_array().cloned().unwrap_or_default();
        succeeded += runs.len();
        done += runs
            .iter()
            .filter(|r| {
                let c = &r["delivery_counts"];
                let open = ["pending", "failing", "dead", "refused", "gone"]
                    .iter()
                    .map(|k| c[*k].as_u64().unwrap_or(1))
                    .sum::<u64>();
                r["phase"] == "done" && c["delivered"].as_u64().unwrap_or(0) >= 1 && open == 0
            })
            .count();
        match v["next_cursor"].as_str() {
            Some(n) => before = Some(n.to_string()),
            None => break,
        }
    }
    Ok((succeeded, done))
}

pub(crate) async fn callbacks(
    opts: &Opts,
    bin: &Path,
    ticks: f64,
    rep: &mut Report,
) -> Result<(), String> {
    const S: &str = "callbacks";
    let n = opts.callbacks;
    println!(
        "\n[callbacks] {n} triggers ({} connections), simulated runs of 0s, poll every 10ms, \
         callbacks to a verifying receiver",
        opts.conns
    );
    let receiver = Arc::new(Receiver {
        key: WebhookKey::parse(CALLBACK_SECRET).map_err(|e| e.to_string())?,
        seen: Mutex::new(HashMap::with_capacity(n)),
        posts: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        target: AtomicUsize::new(usize::MAX),
        done: tokio::sync::Notify::new(),
    });
    let (cb_url, recv_task) = start_receiver(receiver.clone()).await?;
    let route = RouteCfg {
        poll_interval: "10ms",
        max_poll_interval: "1s",
        duration: "0s",
        callback: Some(cb_url),
    };
    let (_dir, _cfg, mut d) = start_scenario(opts, bin, S, &route, "stderr.log").await?;
    let payloads = payloads();
    let conns = clients(opts.conns)?;

    let cpu0 = (
        d.cpu(ticks),
        cpu_seconds("self", ticks).unwrap_or(0.0),
        machine_busy_seconds(ticks).unwrap_or(0.0),
    );
    let perf = Perf::start(d.pid, S).await?;
    let cpu_wall = Instant::now();
    let fired = fire_count(&d.base, payloads, &conns, n, "cb", false).await?;
    let want = fired.runs.len();
    receiver.target.store(want, Ordering::Relaxed);
    let t0 = fired.t0;

    // Wait for `want` distinct callbacks: bounded overall, and given up early
    // when nothing new arrives for 30 s.
    let limit = Duration::from_secs(120) + Duration::from_millis(10 * n as u64);
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let count = receiver
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        if count >= want {
            break;
        }
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("  ... {count}/{want} callbacks ({:.0?})", t0.elapsed());
            last_print = Instant::now();
        }
        if t0.elapsed() >= limit || last_progress.elapsed() >= Duration::from_secs(30) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), receiver.done.notified()).await;
    }
    // Arrival times as offsets from the first trigger.
    let seen: HashMap<String, Duration> = receiver
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(id, at)| (id.clone(), at.saturating_duration_since(t0)))
        .collect();
    let got = seen.len();
    let last = seen.values().max().copied().unwrap_or_default();
    let wall = cpu_wall.elapsed().as_secs_f64().max(1e-9);
    let cpu1 = (
        d.cpu(ticks),
        cpu_seconds("self", ticks).unwrap_or(0.0),
        machine_busy_seconds(ticks).unwrap_or(0.0),
    );
    stop_perf(perf).await;

    // End-to-end latency per run: 202 received -> its callback received.
    let mut e2e: Vec<u32> = Vec::with_capacity(got);
    let mut foreign = 0usize;
    let ours: HashMap<String, Duration> = fired
        .runs
        .iter()
        .map(|r| (format!("msg_{}", r.run_id), r.acked))
        .collect();
    for (id, at) in &seen {
        // A webhook id is `msg_<run id>_<event number>`.
        let run = id.rsplit_once('_').map_or(id.as_str(), |(run, _)| run);
        match ours.get(run) {
            Some(acked) => e2e.push(at.saturating_sub(*acked).as_micros() as u32),
            None => foreign += 1,
        }
    }
    e2e.sort_unstable();
    let span = last.as_secs_f64();
    let rate = if span > 0.0 { got as f64 / span } else { 0.0 };
    let fire_s = fired.elapsed.as_secs_f64();
    let posts = receiver.posts.load(Ordering::Relaxed);
    let bad = receiver.bad.load(Ordering::Relaxed);

    // Cross-check through the admin API (the final `done` save follows the
    // callback's answer, so give it a moment).
    let mut admin = (0, 0);
    let pages = want / 500 + 3;
    for _ in 0..20 {
        admin = count_done(&d.base, pages).await?;
        if admin.1 >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    rep.row(
        S,
        "callbacks delivered per second (end to end)",
        format!("{rate:.0}"),
    );
    rep.row(
        S,
        "first trigger -> last distinct callback",
        format!("{span:.2} s for {got}/{want} callbacks"),
    );
    rep.row(
        S,
        "trigger phase",
        format!(
            "{want} accepted in {fire_s:.2} s ({:.0}/s while the loop runs), errors {}",
            want as f64 / fire_s.max(1e-9),
            errors_text(&fired.errors)
        ),
    );
    rep.row(
        S,
        "trigger latency p50 / p99 / max",
        latency_text(&fired.lat_us),
    );
    rep.row(
        S,
        "last trigger accepted -> last callback",
        format!("{:.2} s", (span - fire_s).max(0.0)),
    );
    rep.row(
        S,
        "per run 202 -> callback p50 / p99 / max",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            pct(&e2e, 0.5),
            pct(&e2e, 0.99),
            pct(&e2e, 1.0)
        ),
    );
    rep.row(
        S,
        "receiver: posts / distinct / bad signature",
        format!(
            "{posts} / {got} / {bad}{}",
            if foreign > 0 {
                format!(" ({foreign} unknown ids)")
            } else {
                String::new()
            }
        ),
    );
    rep.row(
        S,
        "admin API: succeeded / done+delivered runs",
        format!("{} / {}", admin.0, admin.1),
    );
    let (dcpu, scpu) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let other = (cpu1.2 - cpu0.2 - dcpu - scpu).max(0.0);
    rep.row(
        S,
        "CPU: daemon / bench / others",
        format!(
            "{dcpu:.1} / {scpu:.1} / {other:.1} s in {wall:.1} s ({:.0}% / {:.0}% / {:.0}% of one core)",
            100.0 * dcpu / wall,
            100.0 * scpu / wall,
            100.0 * other / wall
        ),
    );
    rep.set(S, "callbacks_per_sec", json!(round(rate, 1)));
    rep.set(S, "callbacks", json!(got));
    rep.set(S, "triggers_accepted", json!(want));
    rep.set(S, "span_s", json!(round(span, 3)));
    rep.set(S, "trigger_phase_s", json!(round(fire_s, 3)));
    rep.set(
        S,
        "trigger_errors",
        json!(fired.errors.values().sum::<u64>()),
    );
    rep.set(S, "e2e_p50_ms", json!(round(pct(&e2e, 0.5), 1)));
    rep.set(S, "e2e_p99_ms", json!(round(pct(&e2e, 0.99), 1)));
    rep.set(S, "e2e_max_ms", json!(round(pct(&e2e, 1.0), 1)));
    rep.set(S, "receiver_posts", json!(posts));
    rep.set(S, "bad_signatures", json!(bad));
    rep.set(S, "admin_done", json!(admin.1));
    rep.set(S, "daemon_cpu_s", json!(round(dcpu, 2)));
    report_log(rep, S, &d);
    if got < want {
        println!(
            "  !! only {got} of {want} callbacks arrived; daemon stderr tail:\n{}",
            tail(&d.stderr, 20)
        );
    }
    terminate_and_report(rep, S, &mut d).await;
    recv_task.abort();
    Ok(())
}
