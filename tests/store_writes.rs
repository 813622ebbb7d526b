//! Durable writes per run, counted by the store (issue 10's "before" and
//! "after"): one run that is accepted, started, polled ten times (the vendor
//! answers queued, then running eight times, then completed at the tenth)
//! and delivered, with `runbridge_store_writes_total`,
//! `runbridge_store_quiet_saves_total` and `runbridge_store_flushes_total`
//! read from `/metrics` before and after. Slate (idempotent start) and
//! OnePin (no key: its start is recorded as `starting` before the call).
//!
//! Prints the figures (`cargo test --test store_writes -- --nocapture`).
//! Slate: 5 run records written (create, started, one status change,
//! terminal, delivery); OnePin: 6 (plus `starting`).
//! Before issue 10 the Slate run cost 14 durable writes (1 create + 13
//! saves: starting, started, one per poll, terminal, delivery).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::onepin::FakeOnePin;
use common::service::parse_metrics;
use common::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// What the store counted: writes by `op`, quiet saves, flushes.
#[derive(Debug, Clone, PartialEq, Default)]
struct Counts {
    writes: BTreeMap<String, u64>,
    quiet: u64,
    flushes: u64,
}

fn store_counts(m: &HashMap<String, f64>) -> Counts {
    let mut c = Counts::default();
    for (k, v) in m {
        if let Some(rest) = k.strip_prefix("runbridge_store_writes_total{op=") {
            c.writes.insert(
                rest.trim_end_matches('}').trim_matches('"').to_string(),
                *v as u64,
            );
        }
    }
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0) as u64;
    c.quiet = get("runbridge_store_quiet_saves_total");
    c.flushes = get("runbridge_store_flushes_total");
    c
}

fn minus(after: &Counts, before: &Counts) -> Counts {
    Counts {
        writes: after
            .writes
            .iter()
            .map(|(k, v)| (k.clone(), v - before.writes.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect(),
        quiet: after.quiet - before.quiet,
        flushes: after.flushes - before.flushes,
    }
}

async fn scrape(d: &Daemon) -> Counts {
    let r = d.http.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    store_counts(&parse_metrics(&r.text().await.unwrap()))
}

/// Triggers one run on `route`, waits until it is delivered and done and
/// the store's counters settle, and returns what the run cost.
async fn one_run(d: &Daemon, rx: &Receiver, route: &str) -> Counts {
    let before = scrape(d).await;
    let id = d
        .trigger(route, &format!("dlv-ten-{route}"), "acme/ten")
        .await;
    rx.wait_delivered(&id).await;
    d.wait_run(&id, "delivered and done", |r| {
        r["phase"] == "done" && r["deliveries"][0]["state"] == "delivered"
    })
    .await;
    // The last write is applied (and counted) before the admin API can read
    // it; its flush follows: wait until two scrapes agree.
    let end = Instant::now() + DEADLINE;
    let mut prev = scrape(d).await;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = scrape(d).await;
        if now == prev && now.flushes > before.flushes {
            return minus(&now, &before);
        }
        assert!(
            Instant::now() < end,
            "store counters never settled: {now:?}"
        );
        prev = now;
    }
}

fn report(vendor: &str, c: &Counts) -> u64 {
    let total: u64 = c.writes.values().sum();
    println!(
        "{vendor}: durable writes for one run (start, 10 polls, end, delivered): {total} {:?}, \
         quiet saves: {}, flushes: {}",
        c.writes, c.quiet, c.flushes
    );
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_for_a_run_polled_ten_times() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ten").callback(&rx.url()));
    let d = Daemon::start(&cfg).await;
    let c = one_run(&d, &rx, "gh").await;
    assert_eq!(slate.poll_count(), 10, "COMPLETED at poll 10");
    let total = report("Slate", &c);
    // create; started (QUEUED, no `starting` record: the start is
    // idempotent); RUNNING at poll 2 (a status change is history a restart
    // keeps); terminal at poll 10; the delivery's result. Polls 1 and 3-9
    // changed nothing: quiet. Nothing else: the store lists a new run as
    // due only once its create is durable, so the start needs no barrier.
    assert_eq!(c.writes.get("create"), Some(&1), "{c:?}");
    assert_eq!(c.writes.get("save"), Some(&4), "{c:?}");
    assert_eq!(c.writes.get("meta"), None, "{c:?}");
    assert_eq!(total, 5, "{c:?}");
    assert_eq!(c.quiet, 8, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_an_idempotency_key_writes_one_more_record() {
    let slate = FakeSlate::start().await;
    let op = FakeOnePin::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = Config::new(&slate).render(dir.path());
    text.push('\n');
    text.push_str(&op.provider());
    text.push_str(&format!(
        "\n[routes.op]\nprovider = \"v\"\nworkflow_id = \"wf_ten\"\n\
         verify = {{ kind = \"github\", secret = {} }}\n\
         \n[[routes.op.callbacks]]\nurl = {}\nsecret = {}\n",
        toml_str(GH_SECRET),
        toml_str(&rx.url()),
        toml_str(CALLBACK_SECRET)
    ));
    let d = Daemon::start_with_text(dir, &text).await;
    let c = one_run(&d, &rx, "op").await;
    let polls: Vec<u32> = op.core.runs().iter().map(|r| r.polls).collect();
    assert_eq!(polls, [10], "succeeded at the 10th status check");
    let total = report("OnePin", &c);
    // As Slate, plus `starting` before the start call (what reconciliation
    // after a crash relies on).
    assert_eq!(c.writes.get("meta"), None, "{c:?}");
    assert_eq!(c.writes.get("create"), Some(&1), "{c:?}");
    assert_eq!(c.writes.get("save"), Some(&5), "{c:?}");
    assert_eq!(total, 6, "{c:?}");
    assert_eq!(c.quiet, 8, "{c:?}");
}
