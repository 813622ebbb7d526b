//! Tests of the run index: every filter against a brute-force answer, paging
//! under concurrent inserts, runs and deliveries moving between results,
//! the index built for a store written before it, retention, reopen, and
//! stale or missing keys.

use super::index::IndexMeta;
use super::tests::reopen;
use super::*;
use crate::run::{Attempt, DeliveryState, Observation, RunSpec, RunStatus, Target};
use crate::store::memory::MemoryStore;
use std::collections::BTreeSet;
use std::time::Duration;

fn now() -> Timestamp {
    Timestamp::now()
}

fn spec(route: &str, provider: &str, delivery_id: Option<&str>) -> RunSpec {
    RunSpec {
        route: route.into(),
        provider: provider.into(),
        delivery_id: delivery_id.map(Into::into),
        ..RunSpec::example()
    }
}

fn accepted(route: &str, provider: &str, delivery_id: Option<&str>) -> Run {
    let t = now();
    Run::accepted(
        RunId::new(),
        spec(route, provider, delivery_id),
        t,
        t.plus_ms_(3_600_000),
    )
}

trait PlusMs {
    fn plus_ms_(self, ms: u64) -> Timestamp;
}

impl PlusMs for Timestamp {
    fn plus_ms_(self, ms: u64) -> Timestamp {
        self.plus(Duration::from_millis(ms))
    }
}

fn obs(status: RunStatus) -> Observation {
    Observation::local(status, None, None)
}

fn target() -> Target {
    Target {
        url: "https://receiver.example/hook".into(),
        events: vec!["run.succeeded".into(), "run.failed".into()],
    }
}

/// Moves a freshly accepted run to one of five shapes, by `k`.
fn advance(run: &mut Run, k: usize) {
    let t = now();
    match k % 5 {
        0 => {}
        1 => run.begin_start(t, t.plus_ms_(1_000)).unwrap(),
        2 => {
            run.begin_start(t, t.plus_ms_(1_000)).unwrap();
            run.started(
                t,
                "v".into(),
                obs(RunStatus::Running),
                t.plus_ms_(1_000),
                &[],
            )
            .unwrap();
        }
        3 => run.finish(t, obs(RunStatus::Succeeded), &[]).unwrap(),
        _ => run.finish(t, obs(RunStatus::Failed), &[]).unwrap(),
    }
}

fn ids(runs: &[Run]) -> Vec<RunId> {
    runs.iter().map(|r| r.id()).collect()
}

fn keys(tree: &sled::Tree) -> BTreeSet<Vec<u8>> {
    tree.iter().keys().map(|k| k.unwrap().to_vec()).collect()
}

/// The index holds exactly the keys its runs call for.
pub(super) fn assert_index_consistent(store: &SledStore) {
    let trees = store.inner().unwrap().trees.clone();
    let (mut runs, mut deliveries) = (BTreeSet::new(), BTreeSet::new());
    for item in trees.state.iter() {
        let (id, state) = item.unwrap();
        let fixed = trees.runs.get(&id).unwrap().unwrap();
        let k = IndexMeta::decode(&fixed, &state).unwrap().keys();
        runs.extend(k.runs);
        deliveries.extend(k.deliveries);
    }
    assert_eq!(keys(&trees.idx_runs), runs, "run index");
    assert_eq!(keys(&trees.idx_deliveries), deliveries, "deliveries index");
}

async fn seed(store: &dyn Store, n: usize) -> Vec<Run> {
    let mut all = Vec::new();
    for i in 0..n {
        let did = (i % 4 != 0).then(|| format!("d{}", i % 7));
        let mut run = accepted(
            &format!("r{}", i % 3),
            &format!("p{}", i % 2),
            did.as_deref(),
        );
        store.create_run(&run, None).await.unwrap();
        advance(&mut run, i);
        store.save_run(&run).await.unwrap();
        all.push(run);
    }
    all.reverse();
    all
}

#[tokio::test]
async fn every_filter_alone_and_combined_matches_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let memory = MemoryStore::default();
    let mut all = seed(&store, 45).await;
    // A short pause, then more runs: a time range that cuts between them.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cut = now();
    let mut newer = seed(&store, 15).await;
    newer.append(&mut all);
    let all = newer;
    for r in all.iter().rev() {
        memory.create_run(r, None).await.unwrap();
    }
    assert_index_consistent(&store);

    let routes = [None, Some("r0"), Some("r2"), Some("nope")];
    let statuses = [
        None,
        Some(RunStatus::Queued),
        Some(RunStatus::Failed),
        Some(RunStatus::Running),
    ];
    let providers = [None, Some("p1")];
    let phases = [None, Some(Phase::Accepted), Some(Phase::Done)];
    let dids = [None, Some("d3"), Some("d9")];
    let times = [(None, None), (Some(cut), None), (None, Some(cut))];
    let mut checked = 0;
    let mut nonempty = 0;
    for route in routes {
        for status in statuses {
            for provider in providers {
                for phase in phases {
                    for did in dids {
                        for (since, until) in times {
                            for limit in [3, 1000] {
                                let q = RunQuery {
                                    route: route.map(Into::into),
                                    status,
                                    provider: provider.map(Into::into),
                                    phase,
                                    since,
                                    until,
                                    delivery_id: did.map(Into::into),
                                    before: None,
                                    limit,
                                };
                                let want: Vec<RunId> = all
                                    .iter()
                                    .filter(|r| q.matches(r))
                                    .take(limit)
                                    .map(|r| r.id())
                                    .collect();
                                let got = ids(&store.list_runs(&q).unwrap());
                                assert_eq!(got, want, "{q:?}");
                                assert_eq!(ids(&memory.list_runs(&q).unwrap()), want, "{q:?}");
                                checked += 1;
                                nonempty += usize::from(!want.is_empty());
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        nonempty > checked / 10,
        "{nonempty} of {checked} queries matched something"
    );

    // The cursor: every page continues strictly below the last id.
    let q = RunQuery {
        route: Some("r1".into()),
        limit: 4,
        ..Default::default()
    };
    let want: Vec<RunId> = all
        .iter()
        .filter(|r| q.matches(r))
        .map(|r| r.id())
        .collect();
    let mut got = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_runs(&RunQuery {
                before,
                ..q.clone()
            })
            .unwrap();
        got.extend(ids(&page));
        match page.last() {
            Some(last) if page.len() == q.limit => before = Some(last.id()),
            _ => break,
        }
    }
    assert_eq!(got, want);
    store.close().await.unwrap();
}

#[tokio::test]
async fn paging_under_concurrent_inserts_misses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap());
    let mut existing = BTreeSet::new();
    for i in 0..300 {
        let run = accepted(if i % 2 == 0 { "hot" } else { "cold" }, "p", None);
        store.create_run(&run, None).await.unwrap();
        if i % 2 == 0 {
            existing.insert(run.id());
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                store
                    .create_run(&accepted("hot", "p", None), None)
                    .await
                    .unwrap();
                n += 1;
                tokio::task::yield_now().await;
            }
            n
        })
    };
    let q = RunQuery {
        route: Some("hot".into()),
        status: Some(RunStatus::Queued),
        limit: 7,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_runs(&RunQuery {
                before,
                ..q.clone()
            })
            .unwrap();
        seen.extend(ids(&page));
        match page.last() {
            Some(last) if page.len() == q.limit => before = Some(last.id()),
            _ => break,
        }
        // Let the writer in between pages.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, Ordering::Release);
    let inserted = writer.await.unwrap();
    assert!(inserted > 0, "the writer ran while paging");
    let unique: BTreeSet<RunId> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no run repeated");
    assert!(existing.is_subset(&unique), "no existing run missed");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert_index_consistent(&store);
}

#[tokio::test]
async fn a_status_change_moves_a_run_between_results() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let mut run = accepted("r", "p", Some("x"));
    store.create_run(&run, None).await.unwrap();
    let with = |status, phase| RunQuery {
        route: Some("r".into()),
        status: Some(status),
        phase,
        limit: 10,
        ..Default::default()
    };
    let find = |q: &RunQuery| ids(&store.list_runs(q).unwrap());
    assert_eq!(find(&with(RunStatus::Queued, None)), vec![run.id()]);
    let t = now();
    run.begin_start(t, t.plus_ms_(1_000)).unwrap();
    store.save_run(&run).await.unwrap();
    assert!(find(&with(RunStatus::Queued, None)).is_empty());
    assert_eq!(
        find(&with(RunStatus::Starting, Some(Phase::Starting))),
        vec![run.id()]
    );
    run.finish(now(), obs(RunStatus::Failed), &[]).unwrap();
    store.save_run(&run).await.unwrap();
    assert!(find(&with(RunStatus::Starting, None)).is_empty());
    assert_eq!(
        find(&with(RunStatus::Failed, Some(Phase::Done))),
        vec![run.id()]
    );
    assert_index_consistent(&store);
}

/// Sets delivery `i` back to pending, as a redelivery does.
fn redelivered(run: &Run, i: usize) -> Run {
    let mut v = serde_json::to_value(run).unwrap();
    v["deliveries"][i]["state"] = "pending".into();
    v["deliveries"][i]["next_attempt_at"] = serde_json::to_value(now()).unwrap();
    serde_json::from_value(v).unwrap()
}

fn attempt() -> Attempt {
    Attempt {
        at: now(),
        duration_ms: 1,
        status_code: Some(500),
        error: None,
        response: None,
    }
}

#[tokio::test]
async fn the_deliveries_index_follows_each_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let mut run = accepted("r", "p", None);
    store.create_run(&run, None).await.unwrap();
    run.finish(now(), obs(RunStatus::Succeeded), &[target()])
        .unwrap();
    store.save_run(&run).await.unwrap();
    let list = |states: Vec<DeliveryState>| {
        let q = DeliveryQuery {
            states,
            limit: 10,
            ..Default::default()
        };
        let found = store.list_deliveries(&q).unwrap();
        found.iter().map(|(r, i)| (r.id(), *i)).collect::<Vec<_>>()
    };
    let one = vec![(run.id(), 0)];
    assert!(list(vec![]).is_empty(), "pending needs no attention");
    assert_eq!(list(vec![DeliveryState::Pending]), one, "a scan finds it");

    run.record_attempt(0, attempt(), false, Some(now().plus_ms_(1_000)));
    store.save_run(&run).await.unwrap();
    assert_eq!(list(vec![]), one);
    assert_eq!(list(vec![DeliveryState::Failing]), one);
    assert!(list(vec![DeliveryState::Dead]).is_empty());

    run.record_attempt(0, attempt(), false, None);
    run.settle_deliveries(now());
    store.save_run(&run).await.unwrap();
    assert_eq!(list(vec![DeliveryState::Dead]), one);
    assert!(list(vec![DeliveryState::Failing]).is_empty());
    assert_index_consistent(&store);

    run = redelivered(&run, 0);
    store.save_run(&run).await.unwrap();
    assert!(list(vec![]).is_empty());
    assert_eq!(list(vec![DeliveryState::Pending]), one);

    run.record_attempt(0, attempt(), true, None);
    store.save_run(&run).await.unwrap();
    assert!(list(vec![]).is_empty());
    assert_eq!(list(vec![DeliveryState::Delivered]), one);
    assert!(store.inner().unwrap().trees.idx_deliveries.is_empty());
    assert_index_consistent(&store);
}

#[tokio::test]
async fn dead_deliveries_page_across_routes_and_by_route() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let two = [
        target(),
        Target {
            url: "https://other.example/".into(),
            events: vec!["run.failed".into()],
        },
    ];
    let mut want = Vec::new();
    for i in 0..6 {
        let mut run = accepted(&format!("r{}", i % 2), "p", None);
        run.finish(now(), obs(RunStatus::Failed), &two).unwrap();
        run.record_attempt(0, attempt(), false, None);
        run.record_attempt(1, attempt(), false, Some(now()));
        store.create_run(&run, None).await.unwrap();
        want.push((run.id(), 1, "r"));
        want.push((run.id(), 0, "r"));
    }
    want.reverse();
    want.sort_by(|a, b| b.cmp(a));
    let page = |route: Option<&str>, states: Vec<DeliveryState>| {
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let q = DeliveryQuery {
                states: states.clone(),
                route: route.map(Into::into),
                before,
                limit: 2,
                ..Default::default()
            };
            let found = store.list_deliveries(&q).unwrap();
            got.extend(
                found
                    .iter()
                    .map(|(r, i)| (r.id(), *i, r.deliveries()[*i as usize].state)),
            );
            match found.last() {
                Some((r, i)) if found.len() == 2 => before = Some((r.id(), *i)),
                _ => return got,
            }
        }
    };
    let all = page(None, vec![]);
    let pairs: Vec<(RunId, u32)> = all.iter().map(|(r, i, _)| (*r, *i)).collect();
    let expected: Vec<(RunId, u32)> = want.iter().map(|(r, i, _)| (*r, *i)).collect();
    assert_eq!(
        pairs, expected,
        "failing and dead, newest first, across routes"
    );
    let dead = page(Some("r1"), vec![DeliveryState::Dead]);
    assert_eq!(dead.len(), 3);
    assert!(dead
        .iter()
        .all(|(_, i, s)| *i == 0 && *s == DeliveryState::Dead));
    let since = DeliveryQuery {
        since: Some(now().plus_ms_(120_000)),
        limit: 10,
        ..Default::default()
    };
    assert!(store.list_deliveries(&since).unwrap().is_empty());
}

#[tokio::test]
async fn a_store_written_before_the_index_gets_it_built_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    {
        // What an older version wrote: whole records, no index.
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("runs").unwrap();
        for i in 0..20 {
            let mut run = accepted(&format!("r{}", i % 2), "p", None);
            advance(&mut run, i);
            tree.insert(run.id().to_bytes(), serde_json::to_vec(&run).unwrap())
                .unwrap();
            runs.push(run);
        }
        db.flush().unwrap();
    }
    runs.reverse();
    let q = RunQuery {
        route: Some("r0".into()),
        status: Some(RunStatus::Succeeded),
        limit: 100,
        ..Default::default()
    };
    let want: Vec<RunId> = runs
        .iter()
        .filter(|r| q.matches(r))
        .map(|r| r.id())
        .collect();
    assert!(!want.is_empty());
    {
        let store = reopen(dir.path()).await;
        assert!(store.index_built_at_open().is_some(), "built at open");
        assert_index_consistent(&store);
        assert_eq!(ids(&store.list_runs(&q).unwrap()), want);
        store.close().await.unwrap();
    }
    let store = reopen(dir.path()).await;
    assert!(store.index_built_at_open().is_none(), "not built again");
    assert_eq!(ids(&store.list_runs(&q).unwrap()), want);
    store.close().await.unwrap();
    drop(store);

    // A store written without the index (the bench's baseline) loses the
    // marker, so the next open builds again.
    {
        let store = super::tests::reopen_unindexed(dir.path()).await;
        let late = accepted("r0", "p", None);
        store.create_run(&late, None).await.unwrap();
        assert_eq!(store.list_runs(&q).unwrap().len(), want.len(), "scans");
        store.close().await.unwrap();
    }
    let store = reopen(dir.path()).await;
    assert!(store.index_built_at_open().is_some());
    assert_index_consistent(&store);
}

#[tokio::test]
async fn retention_removes_index_keys_with_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let mut dead = accepted("r", "p", Some("d"));
    dead.finish(now(), obs(RunStatus::Failed), &[target()])
        .unwrap();
    dead.record_attempt(0, attempt(), false, None);
    dead.settle_deliveries(now());
    assert_eq!(dead.phase(), Phase::Done);
    let mut done = accepted("r", "p", None);
    done.finish(now(), obs(RunStatus::Succeeded), &[]).unwrap();
    let open = accepted("r", "p", None);
    for r in [&dead, &done, &open] {
        store.create_run(r, None).await.unwrap();
    }
    let trees = store.inner().unwrap().trees.clone();
    assert_eq!(trees.idx_deliveries.len(), 2);
    let mut removed = 0;
    for _ in 0..2 {
        removed += store
            .sweep_finished(Timestamp(u64::MAX), 100)
            .await
            .unwrap();
    }
    assert_eq!(removed, 2);
    assert!(trees.idx_deliveries.is_empty());
    assert_eq!(trees.idx_runs.len(), IndexMeta::of(&open).keys().runs.len());
    assert_index_consistent(&store);
}

#[tokio::test]
async fn the_index_stays_consistent_across_reopen_and_repairs_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let all;
    {
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        all = seed(&store, 30).await;
        store.close().await.unwrap();
    }
    let q = RunQuery {
        provider: Some("p0".into()),
        phase: Some(Phase::Done),
        limit: 100,
        ..Default::default()
    };
    let want: Vec<RunId> = all
        .iter()
        .filter(|r| q.matches(r))
        .map(|r| r.id())
        .collect();
    {
        let store = reopen(dir.path()).await;
        assert_index_consistent(&store);
        assert_eq!(ids(&store.list_runs(&q).unwrap()), want);
        store.close().await.unwrap();
    }
    // A crash that lost some keys of a durable run (which the write order
    // rules out, but a repair must not rely on) and left the store unclean.
    {
        let db = super::tests::raw_db(dir.path()).await;
        let idx = db.open_tree("idx_runs").unwrap();
        for k in IndexMeta::of(&all[0]).keys().runs {
            idx.remove(k).unwrap();
        }
        db.remove(CLEAN_MARKER).unwrap();
        db.flush().unwrap();
    }
    let store = reopen(dir.path()).await;
    assert!(
        store.index_built_at_open().is_none(),
        "verified, not rebuilt"
    );
    // Verified in the background: serving did not wait for it.
    super::tests::verified(&store).await;
    assert_index_consistent(&store);
    assert_eq!(ids(&store.list_runs(&q).unwrap()), want);
}

#[tokio::test]
async fn stale_keys_never_yield_a_wrong_run_and_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
    let run = accepted("r", "p", None);
    store.create_run(&run, None).await.unwrap();
    let mut failed = accepted("r", "p", None);
    failed
        .finish(now(), obs(RunStatus::Failed), &[target()])
        .unwrap();
    failed.record_attempt(0, attempt(), false, None);
    failed.settle_deliveries(now());
    // Keys of a run that does not exist, and of a status `run` never had.
    let mut wrong = run.clone();
    wrong
        .finish(now(), obs(RunStatus::Failed), &[target()])
        .unwrap();
    wrong.record_attempt(0, attempt(), false, None);
    wrong.settle_deliveries(now());
    let trees = store.inner().unwrap().trees.clone();
    for k in IndexMeta::of(&failed)
        .keys()
        .runs
        .iter()
        .chain(&IndexMeta::of(&wrong).keys().runs)
    {
        trees.idx_runs.insert(k.as_slice(), &[]).unwrap();
    }
    for k in IndexMeta::of(&failed).keys().deliveries {
        trees.idx_deliveries.insert(k, &[]).unwrap();
    }
    // Queries reading every kind of key: none yields a wrong run.
    let failed_q = RunQuery {
        status: Some(RunStatus::Failed),
        limit: 10,
        ..Default::default()
    };
    let queries = [
        failed_q.clone(),
        RunQuery {
            route: Some("r".into()),
            ..failed_q.clone()
        },
        RunQuery {
            phase: Some(Phase::Done),
            limit: 10,
            ..Default::default()
        },
        RunQuery {
            provider: Some("p".into()),
            limit: 10,
            ..Default::default()
        },
        RunQuery {
            route: Some("r".into()),
            limit: 10,
            ..Default::default()
        },
    ];
    for q in &queries {
        let got = store.list_runs(q).unwrap();
        assert!(
            got.iter().all(|r| q.matches(r) && r.id() == run.id()),
            "{q:?}"
        );
    }
    for route in [None, Some("r".to_string())] {
        let dq = DeliveryQuery {
            route,
            limit: 10,
            ..Default::default()
        };
        assert!(store.list_deliveries(&dq).unwrap().is_empty());
    }
    // Readers queued the stale keys; the applier removes them.
    let t0 = std::time::Instant::now();
    loop {
        let consistent = {
            let want: BTreeSet<Vec<u8>> = IndexMeta::of(&run).keys().runs.into_iter().collect();
            keys(&trees.idx_runs) == want && trees.idx_deliveries.is_empty()
        };
        if consistent {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "stale keys not removed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_index_consistent(&store);
}
