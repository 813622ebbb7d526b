//! Durable writes per run, counted by the store (issue 10's "before" and
//! "after"): one run that is accepted, started, polled ten times (nine
//! answers that change nothing, then COMPLETED) and delivered, with
//! `runbridge_store_writes_total` and `runbridge_store_flushes_total` read
//! from `/metrics` before and after.
//!
//! Prints the figures (`cargo test --test store_writes -- --nocapture`) and
//! asserts only what must hold whatever the write path: at least one create
//! and one flush, exactly ten polls. Issue 10 will tighten the bound.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::service::parse_metrics;
use common::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// `op` label -> count of `runbridge_store_writes_total`, and the flushes.
fn store_counts(m: &HashMap<String, f64>) -> (BTreeMap<String, u64>, u64) {
    let mut writes = BTreeMap::new();
    for (k, v) in m {
        if let Some(rest) = k.strip_prefix("runbridge_store_writes_total{op=") {
            writes.insert(rest.trim_end_matches('}').to_string(), *v as u64);
        }
    }
    let flushes = m
        .get("runbridge_store_flushes_total")
        .copied()
        .unwrap_or(0.0) as u64;
    (writes, flushes)
}

fn minus(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_for_a_run_polled_ten_times() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ten").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let scrape = || async {
        let r = d.http.get(d.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        store_counts(&parse_metrics(&r.text().await.unwrap()))
    };
    let (w0, f0) = scrape().await;

    let id = d.trigger("gh", "dlv-ten", "acme/ten").await;
    rx.wait_delivered(&id).await;
    d.wait_run(&id, "delivered and done", |r| {
        r["phase"] == "done" && r["deliveries"][0]["state"] == "delivered"
    })
    .await;
    // The last write is applied (and counted) before the admin API can read
    // it; its flush follows: wait until two scrapes agree.
    let end = Instant::now() + DEADLINE;
    let mut prev = scrape().await;
    let last = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = scrape().await;
        if now == prev && now.1 > f0 {
            break now;
        }
        assert!(
            Instant::now() < end,
            "store counters never settled: {now:?}"
        );
        prev = now;
    };

    assert_eq!(
        slate.poll_count(),
        10,
        "the fake answers COMPLETED at poll 10"
    );
    let writes = minus(&last.0, &w0);
    let total: u64 = writes.values().sum();
    let flushes = last.1 - f0;
    println!(
        "durable writes for one run (start, 10 polls, end, delivered): {total} {writes:?}, \
         flushes: {flushes}"
    );
    assert!(
        writes.get("create").copied().unwrap_or(0) >= 1,
        "{writes:?}"
    );
    assert!(flushes >= 1);
}
