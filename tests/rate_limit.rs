//! A provider's rate limit holds under load: 500 runs at once against a
//! fake Altostrat limited to `rate_per_s = 40`, `burst = 5`. The fake never
//! sees more than burst + rate requests in any one-second window (starts
//! and polls share the bucket), and every run still completes.

mod common;

use common::altostrat::FakeAltostrat;
use common::bridge::{config, Route};
use common::*;
use serde_json::json;
use std::time::Duration;

const RUNS: usize = 500;
const RATE: usize = 40;
const BURST: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_provider_rate_limit_holds_under_500_concurrent_runs() {
    let f = FakeAltostrat::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let provider = format!("{}rate_per_s = {RATE}\nburst = {BURST}\n", f.provider());
    let mut text = config(
        dir.path(),
        &provider,
        &[Route::new("r", "wf_quick")],
        &rx.url(),
        "50ms",
    );
    text = text.replace("run_timeout = \"60s\"", "run_timeout = \"10m\"");
    let d = Daemon::start_with_text(dir, &text).await;
    let mut ids = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        ids.push(d.trigger_json("r", &json!({"n": i})).await);
    }
    poll_until("every run succeeded", Duration::from_secs(120), || async {
        let body = d.list_runs("status=succeeded&limit=1000").await;
        let n = body["runs"].as_array().map_or(0, |a| a.len());
        if n == RUNS {
            Ok(())
        } else {
            Err(format!(
                "{n} of {RUNS} succeeded; vendor saw {} requests",
                f.core.request_count()
            ))
        }
    })
    .await;
    let peak = f.core.max_in_window(Duration::from_secs(1));
    assert!(
        peak <= BURST + RATE,
        "{peak} requests in one second (limit {})",
        BURST + RATE
    );
    assert!(
        f.core.request_count() >= 2 * RUNS,
        "every run was started and polled"
    );
    assert_eq!(f.core.runs().len(), RUNS);
}
