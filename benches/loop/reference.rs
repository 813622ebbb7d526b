//! The plain sled group-commit reference of issue 10: what a durable webhook
//! receiver costs on this machine when it does nothing else.
//!
//! The server runs in a child process (this bench binary re-executed with
//! `RUNBRIDGE_BENCH_REFERENCE=<store dir>`) rather than on a second runtime
//! in the bench process: its CPU is then read from `/proc/<pid>/stat` exactly
//! as the daemon's is, it cannot steal the load generator's threads or share
//! its allocator, and it is killed like the daemon when its handle drops.
//!
//! Per request it verifies the GitHub HMAC (`runbridge::signing`, the same
//! code the daemon uses), does one `sled` insert (delivery id -> body), then
//! waits for the next flush; one flusher thread flushes once for everything
//! inserted since its last flush (group commit: concurrent requests share a
//! flush) and only then are their 202s sent.

use super::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::oneshot;

/// Environment variable that turns this bench binary into the reference
/// server; its value is the store directory.
pub(crate) const REFERENCE_ENV: &str = "RUNBRIDGE_BENCH_REFERENCE";

/// Shared state of the reference server's handlers.
struct Shared {
    tree: sled::Tree,
    /// Requests inserted and waiting for the next flush.
    waiting: std::sync::mpsc::Sender<oneshot::Sender<bool>>,
}

/// Runs the reference server until killed; prints `listening on ADDR` first,
/// like the daemon, so the bench starts both the same way.
pub(crate) fn serve_reference(dir: &str) -> std::process::ExitCode {
    let run = || -> Result<(), String> {
        let db = sled::Config::new()
            .path(Path::new(dir).join("db"))
            .flush_every_ms(None)
            .open()
            .map_err(|e| format!("cannot open sled: {e}"))?;
        let tree = db.open_tree("runs").map_err(|e| e.to_string())?;
        let (tx, rx) = std::sync::mpsc::channel::<oneshot::Sender<bool>>();
        // The flusher: one flush per batch of whatever has queued meanwhile.
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let ok = db.flush().is_ok();
                for w in batch {
                    let _ = w.send(ok);
                }
            }
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let shared = Arc::new(Shared { tree, waiting: tx });
            let app = axum::Router::new()
                .route("/hooks/gh", axum::routing::post(accept))
                .route("/healthz", axum::routing::get(|| async { "ok" }))
                .with_state(shared);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            println!("listening on {addr}");
            axum::serve(listener, app).await.map_err(|e| e.to_string())
        })
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reference server: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Verify, insert, wait for the shared flush, 202.
async fn accept(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(sig), Some(delivery)) = (header("x-hub-signature-256"), header("x-github-delivery"))
    else {
        return (StatusCode::BAD_REQUEST, "missing headers");
    };
    if !runbridge::signing::verify_github(GH_SECRET.as_bytes(), &body, sig) {
        return (StatusCode::UNAUTHORIZED, "bad signature");
    }
    if s.tree.insert(delivery.as_bytes(), body.as_ref()).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "insert failed");
    }
    let (tx, rx) = oneshot::channel();
    if s.waiting.send(tx).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "flusher gone");
    }
    match rx.await {
        Ok(true) => (StatusCode::ACCEPTED, "{\"accepted\":true}"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "flush failed"),
    }
}

/// The `reference` scenario: the same load generator, connections and window
/// as `ingress`, against the reference server; reports the ratio to the
/// daemon's ingress figure when both ran.
pub(crate) async fn reference(opts: &Opts, ticks: f64, rep: &mut Report) -> Result<(), String> {
    const S: &str = "reference";
    println!(
        "\n[reference] plain sled group commit (verify, 1 insert, shared flush, 202), \
         {} connections, {}s warm-up + {}s measured",
        opts.conns, opts.warmup, opts.seconds
    );
    let dir = tempdir(opts, S)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.env(REFERENCE_ENV, dir.path());
    let mut d = Daemon::spawn_command(cmd, dir.path().join("stderr.log")).await?;
    d.wait_healthy(Duration::from_secs(30)).await?;
    let w = measure_window(opts, &d, ticks, S).await?;
    w.report(rep, S);
    let (apparent, _) = disk_usage(&dir.path().join("db"));
    rep.row(
        S,
        "store on disk",
        format!("{:.1} MiB for {} requests", mib(apparent), w.total_202),
    );
    if let Some(daemon) = rep
        .json
        .get("ingress")
        .and_then(|v| v["accepted_per_sec"].as_f64())
    {
        let ratio = if w.rate > 0.0 { daemon / w.rate } else { 0.0 };
        rep.row(
            S,
            "runbridge ingress / reference",
            format!("{daemon:.0} / {:.0} = {ratio:.2}x", w.rate),
        );
        rep.set(S, "ingress_ratio", json!(round(ratio, 3)));
    }
    d.kill9().await;
    Ok(())
}
