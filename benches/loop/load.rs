//! The load generator shared by the scenarios: pre-signed GitHub payloads,
//! one keep-alive client per connection, time- and count-bounded firing.

use super::*;

pub(crate) struct Payload {
    pub(crate) body: Bytes,
    pub(crate) signature: String,
}

/// ~1 KB push-like JSON bodies, each signed once up front.
pub(crate) fn payloads() -> Arc<Vec<Payload>> {
    let hex40 = |seed: u64| {
        format!(
            "{:016x}{:016x}{:08x}",
            seed,
            !seed,
            seed as u32 ^ 0x5bd1e995
        )
    };
    let v = (0..PAYLOADS as u64)
        .map(|i| {
            let mut doc = json!({
                "ref": "refs/heads/main",
                "before": hex40(i * 2 + 1),
                "after": hex40(i * 2 + 2),
                "repository": {
                    "id": 100_000 + i,
                    "name": format!("repo-{i}"),
                    "full_name": format!("bench-org/repo-{i}"),
                    "private": false,
                    "html_url": format!("https://github.com/bench-org/repo-{i}"),
                    "homepage": format!("https://repo-{i}.example.com"),
                    "default_branch": "main"
                },
                "pusher": {"name": "bench-bot", "email": "bench-bot@example.com"},
                "sender": {"login": "bench-bot", "id": 4242, "type": "User"},
                "head_commit": {
                    "id": hex40(i * 2 + 2),
                    "message": format!("Bench commit number {i}: adjust the flux capacitor"),
                    "timestamp": "2026-11-23T15:58:08Z",
                    "author": {"name": "Bench Bot", "email": "bench-bot@example.com", "username": "bench-bot"},
                    "added": ["src/new.rs"],
                    "removed": [],
                    "modified": ["src/lib.rs", "README.md"]
                },
                "padding": ""
            });
            let len = serde_json::to_vec(&doc).map(|b| b.len()).unwrap_or(0);
            doc["padding"] = Value::String("x".repeat(1024usize.saturating_sub(len)));
            let body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
            let signature = sign_github(GH_SECRET.as_bytes(), &body);
            Payload { body, signature }
        })
        .collect();
    Arc::new(v)
}

/// `n` clients, one keep-alive connection each, built before any clock starts.
pub(crate) fn clients(n: usize) -> Result<Vec<reqwest::Client>, String> {
    (0..n).map(|_| conn_client()).collect()
}

/// One keep-alive connection's client.
pub(crate) fn conn_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Status code, or 0 for a transport error; and the run id when asked for.
pub(crate) async fn trigger(
    client: &reqwest::Client,
    url: &str,
    p: &Payload,
    delivery: &str,
    want_id: bool,
) -> (u16, Option<String>) {
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", &p.signature)
        .body(p.body.clone())
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default();
            let id = (want_id && code == 202)
                .then(|| serde_json::from_slice::<Value>(&body).ok())
                .flatten()
                .and_then(|v| v["run_id"].as_str().map(String::from));
            (code, id)
        }
        Err(_) => (0, None),
    }
}

pub(crate) fn outcome_name(code: u16) -> String {
    if code == 0 {
        "transport error".into()
    } else {
        format!("HTTP {code}")
    }
}

/// p in 0..=1 of sorted microsecond samples, in ms.
/// "p50 / p99 / max ms" of sorted latencies in microseconds.
pub(crate) fn latency_text(sorted: &[u32]) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} ms",
        pct(sorted, 0.5),
        pct(sorted, 0.99),
        pct(sorted, 1.0)
    )
}

pub(crate) fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// One sample of the duration-bounded run: completion offset, latency, code.
pub(crate) struct Sample {
    pub(crate) done_us: u64,
    pub(crate) lat_us: u32,
    pub(crate) code: u16,
}

/// `conns` connections firing back to back for `warmup + measure`.
pub(crate) async fn fire_for(
    base: &str,
    payloads: Arc<Vec<Payload>>,
    clients: &[reqwest::Client],
    warmup: Duration,
    measure: Duration,
) -> Result<(Instant, Vec<Sample>), String> {
    let url = Arc::new(format!("{base}/hooks/gh"));
    let t0 = Instant::now();
    let end = warmup + measure;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        let (url, payloads, client) = (url.clone(), payloads.clone(), client.clone());
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(1 << 14);
            // Bounded by time, and by count as a backstop.
            for seq in 0..50_000_000u64 {
                if t0.elapsed() >= end {
                    break;
                }
                let p = &payloads[(c + seq as usize * 7) % payloads.len()];
                let delivery = format!("ingress-{c}-{seq}");
                let start = Instant::now();
                let (code, _) = trigger(&client, &url, p, &delivery, false).await;
                let lat = start.elapsed();
                out.push(Sample {
                    done_us: t0.elapsed().as_micros() as u64,
                    lat_us: lat.as_micros().min(u32::MAX as u128) as u32,
                    code,
                });
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| format!("load task failed: {e}"))?);
    }
    Ok((t0, all))
}

pub(crate) struct FiredRun {
    pub(crate) run_id: String,
    /// Offset from the first trigger when the 202 arrived.
    pub(crate) acked: Duration,
}

pub(crate) struct Fired {
    pub(crate) t0: Instant,
    pub(crate) runs: Vec<FiredRun>,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) lat_us: Vec<u32>,
    pub(crate) elapsed: Duration,
}

/// `n` triggers as fast as `conns` connections go.
pub(crate) async fn fire_count(
    base: &str,
    payloads: Arc<Vec<Payload>>,
    clients: &[reqwest::Client],
    n: usize,
    tag: &str,
    progress: bool,
) -> Result<Fired, String> {
    let url = Arc::new(format!("{base}/hooks/gh"));
    let tag: Arc<str> = tag.into();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (url, payloads, next, tag, client) = (
            url.clone(),
            payloads.clone(),
            next.clone(),
            tag.clone(),
            client.clone(),
        );
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || t0.elapsed() >= FIRE_TIMEOUT {
                    break;
                }
                let p = &payloads[i % payloads.len()];
                let delivery = format!("{tag}-{i}");
                let start = Instant::now();
                let (code, id) = trigger(&client, &url, p, &delivery, true).await;
                out.push((start.elapsed(), t0.elapsed(), code, id));
            }
            out
        });
    }
    let ticker = progress.then(|| {
        let next = next.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let done = next.load(Ordering::Relaxed).min(n);
                eprintln!("  ... {done}/{n} triggers sent ({:.0?})", t0.elapsed());
            }
        })
    });
    let mut fired = Fired {
        t0,
        runs: Vec::with_capacity(n),
        errors: BTreeMap::new(),
        lat_us: Vec::with_capacity(n),
        elapsed: Duration::ZERO,
    };
    while let Some(r) = tasks.join_next().await {
        for (lat, acked, code, id) in r.map_err(|e| format!("load task failed: {e}"))? {
            fired
                .lat_us
                .push(lat.as_micros().min(u32::MAX as u128) as u32);
            match (code, id) {
                (202, Some(run_id)) => fired.runs.push(FiredRun { run_id, acked }),
                (code, _) => *fired.errors.entry(outcome_name(code)).or_default() += 1,
            }
        }
    }
    fired.elapsed = t0.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    fired.lat_us.sort_unstable();
    Ok(fired)
}

pub(crate) fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        "0".into()
    } else {
        let n: u64 = errors.values().sum();
        let parts: Vec<String> = errors.iter().map(|(k, v)| format!("{v} x {k}")).collect();
        format!("{n} ({})", parts.join(", "))
    }
}
