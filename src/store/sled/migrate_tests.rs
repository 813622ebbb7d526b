//! A store written by the previous release (whole run records, an on-disk
//! `due` tree, the index) opens, is split once, and reads back the same.

use super::index::{IndexMeta, VERSION};
use super::index_tests::assert_index_consistent;
use super::tests::{raw_db, reopen};
use super::trees::{dedupe_key, dedupe_value};
use super::*;
use crate::run::{Observation, RunSpec, RunStatus};
use std::collections::BTreeSet;

/// Runs in every phase: accepted, starting, tracked (due later), tracked
/// and overdue, done; with a delivery id each.
fn runs() -> Vec<Run> {
    let t = Timestamp::now();
    let later = Timestamp(t.0 + 3_600_000);
    let deadline = Timestamp(t.0 + 7_200_000);
    let run = |i: usize| {
        let spec = RunSpec {
            route: format!("r{}", i % 2),
            delivery_id: Some(format!("d{i}")),
            inputs: serde_json::json!({"i": i, "repo": "acme/x"}),
            ..RunSpec::example()
        };
        Run::accepted(RunId::new(), spec, Timestamp(t.0 - 60_000), deadline)
    };
    let running = || Observation::local(RunStatus::Running, None, None);
    let mut out = Vec::new();
    out.push(run(0));
    let mut starting = run(1);
    starting.begin_start(t, later).unwrap();
    out.push(starting);
    let mut tracked = run(2);
    tracked.begin_start(t, later).unwrap();
    tracked
        .started(t, "v2".into(), running(), later, &[])
        .unwrap();
    out.push(tracked);
    let mut overdue = run(3);
    overdue.begin_start(t, later).unwrap();
    let past = Timestamp(t.0 - 1_000);
    overdue
        .started(t, "v3".into(), running(), past, &[])
        .unwrap();
    out.push(overdue);
    let mut done = run(4);
    done.begin_start(t, later).unwrap();
    let ok = Observation::local(RunStatus::Succeeded, None, None);
    done.finish(t, ok, &[]).unwrap();
    done.force_due(None);
    out.push(done);
    out
}

/// Writes `runs` the way the previous release did, closed cleanly; with
/// `split`, the first that many already split by an interrupted migration.
fn write_previous_release(db: &sled::Db, runs: &[Run], split: usize) {
    let whole = db.open_tree("runs").unwrap();
    let state = db.open_tree("state").unwrap();
    let due = db.open_tree("due").unwrap();
    let dedupe = db.open_tree("dedupe").unwrap();
    let (idx_runs, idx_deliveries) = (
        db.open_tree("idx_runs").unwrap(),
        db.open_tree("idx_deliveries").unwrap(),
    );
    for (i, run) in runs.iter().enumerate() {
        let key = run.id().to_bytes();
        if i < split {
            state.insert(key, encode_state(run).unwrap()).unwrap();
            whole.insert(key, encode_fixed(run).unwrap()).unwrap();
        } else {
            whole.insert(key, serde_json::to_vec(run).unwrap()).unwrap();
        }
        if let Some(at) = run.due_at() {
            let mut k = at.0.to_be_bytes().to_vec();
            k.extend_from_slice(&key);
            due.insert(k, &[]).unwrap();
        }
        let dk = DedupeKey {
            route: run.route().into(),
            delivery_id: run.delivery_id().clone().unwrap(),
            expires_at: Timestamp(u64::MAX),
        };
        dedupe
            .insert(dedupe_key(&dk), &dedupe_value(run.id(), dk.expires_at))
            .unwrap();
        let keys = IndexMeta::of(run).keys();
        for k in keys.runs {
            idx_runs.insert(k, &[]).unwrap();
        }
        for k in keys.deliveries {
            idx_deliveries.insert(k, &[]).unwrap();
        }
    }
    db.insert(INDEX_MARKER, VERSION).unwrap();
    db.insert(CLEAN_MARKER, &[1]).unwrap();
    db.flush().unwrap();
}

async fn assert_migrated(dir: &std::path::Path, runs: &[Run]) {
    let store = reopen(dir).await;
    assert!(store.index_built_at_open().is_none(), "the index is kept");
    assert_eq!(store.unfinished_at_open(), 4);
    let due = store.due(Timestamp(u64::MAX), 10, &|_| false).unwrap();
    assert_eq!(due.len(), 4, "one entry per unfinished run: {due:?}");
    let due_ids: BTreeSet<RunId> = due.iter().map(|(_, id)| *id).collect();
    assert_eq!(due_ids, runs[..4].iter().map(|r| r.id()).collect());
    for run in runs {
        let got = store
            .get_run(run.id())
            .unwrap()
            .expect("every run reads back");
        // The overdue tracked run is spread at open: only its due time moved.
        let want = match due.iter().find(|(_, id)| *id == run.id()) {
            Some((at, _)) if run.id() == runs[3].id() => {
                let mut q = run.quiet_state();
                q.due_at = Some(*at);
                run.clone().with_quiet(q)
            }
            Some((at, _)) => {
                assert_eq!(run.due_at(), Some(*at));
                run.clone()
            }
            None => run.clone(),
        };
        assert_eq!(got, want);
    }
    let inner = store.inner().unwrap();
    assert_eq!(
        inner.db.get(open::FORMAT_MARKER).unwrap().as_deref(),
        Some(open::FORMAT)
    );
    assert!(!inner.db.tree_names().iter().any(|n| n.as_ref() == b"due"));
    for item in inner.trees.runs.iter() {
        let (_, v) = item.unwrap();
        assert!(
            serde_json::from_slice::<Run>(&v).is_err(),
            "only fixed parts left"
        );
    }
    assert_eq!(inner.trees.state.len(), runs.len());
    drop(inner);
    assert_index_consistent(&store);
    let q = RunQuery {
        route: Some("r0".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.list_runs(&q).unwrap().len(), 3);
    let dup = DedupeKey {
        route: "r0".into(),
        delivery_id: "d0".into(),
        expires_at: Timestamp(u64::MAX),
    };
    let again = Run::accepted(RunId::new(), RunSpec::example(), Timestamp(1), Timestamp(2));
    assert_eq!(
        store.create_run(&again, Some(dup)).await.unwrap(),
        Created::Duplicate(runs[0].id()),
        "dedupe keys still hold"
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_store_of_the_previous_release_is_split_once_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let runs = runs();
    write_previous_release(&raw_db(dir.path()).await, &runs, 0);
    assert_migrated(dir.path(), &runs).await;
    // Opening again splits nothing and reads the same.
    assert_migrated(dir.path(), &runs).await;
}

#[tokio::test]
async fn an_interrupted_migration_is_completed_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let runs = runs();
    write_previous_release(&raw_db(dir.path()).await, &runs, 2);
    assert_migrated(dir.path(), &runs).await;
}
