//! A store written by the previous release opens and its runs resume.
//!
//! The previous release stored each run as one whole JSON record in `runs`
//! and kept its due index in a `due` tree. This test lets the daemon write
//! runs in two phases (tracked, done), stops it, rewrites its store the way
//! the previous release would have written it (each run's fixed part and
//! state merged back into one record, a `due` tree, no format marker), and
//! starts the daemon again on it: every run reads back the same, the
//! tracked runs resume and deliver, and nothing is started twice.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Rewrites the store at `db` in the previous release's format.
fn write_as_previous_release(db: &Path) {
    let db = sled::open(db).expect("open the stopped daemon's store");
    let runs = db.open_tree("runs").unwrap();
    let state = db.open_tree("state").unwrap();
    let due = db.open_tree("due").unwrap();
    let mut n = 0;
    for item in state.iter() {
        let (key, st) = item.unwrap();
        let fixed = runs
            .get(&key)
            .unwrap()
            .expect("every state has its fixed part");
        let mut whole: Value = serde_json::from_slice(&fixed).unwrap();
        let st: Value = serde_json::from_slice(&st).unwrap();
        for (k, v) in st.as_object().unwrap() {
            whole[k] = v.clone();
        }
        if let Some(at) = whole["due_at"].as_str() {
            let t = humantime::parse_rfc3339_weak(at).unwrap();
            let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
            let mut k = ms.to_be_bytes().to_vec();
            k.extend_from_slice(&key);
            due.insert(k, &[]).unwrap();
        }
        runs.insert(&key, serde_json::to_vec(&whole).unwrap())
            .unwrap();
        n += 1;
    }
    assert_eq!(n, 5, "the daemon wrote five runs");
    db.drop_tree("state").unwrap();
    db.remove("runbridge.format").unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_previous_release_opens_and_its_runs_resume() {
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate)
        .route(RouteCfg::new("track", "wf_hold").callback(&rx.url()))
        .route(RouteCfg::new("done", "wf_quick").callback(&rx.url()));
    let mut d = Daemon::start(&cfg).await;
    let mut tracked = Vec::new();
    let mut done = Vec::new();
    for i in 0..3 {
        tracked.push(d.trigger("track", &format!("t{i}"), "acme/t").await);
    }
    for i in 0..2 {
        done.push(d.trigger("done", &format!("d{i}"), "acme/d").await);
    }
    for id in &tracked {
        d.wait_run(id, "tracking", |r| {
            r["phase"] == "tracking" && r["status"] == "running"
        })
        .await;
    }
    let mut done_before = Vec::new();
    for id in &done {
        rx.wait_delivered(id).await;
        done_before.push(d.wait_done(id).await);
    }
    let tracked_before: Vec<Value> = {
        let mut v = Vec::new();
        for id in &tracked {
            v.push(d.get_run(id).await);
        }
        v
    };
    d.terminate(Duration::from_secs(10))
        .await
        .expect("clean stop");

    write_as_previous_release(&d.dir().join("db"));
    d.restart().await;

    for (id, before) in done.iter().zip(&done_before) {
        assert_eq!(
            &d.get_run(id).await,
            before,
            "a finished run reads the same"
        );
    }
    for (id, before) in tracked.iter().zip(&tracked_before) {
        let now = d.get_run(id).await;
        for field in [
            "id",
            "route",
            "provider",
            "workflow_id",
            "delivery_id",
            "created_at",
            "vendor_run_id",
            "status",
            "phase",
            "history",
        ] {
            assert_eq!(now[field], before[field], "{field} of {id}");
        }
    }
    slate.release_holds();
    for id in &tracked {
        rx.wait_delivered(id).await;
        d.wait_done(id).await;
    }
    assert_eq!(slate.create_count(), 5, "nothing started twice");
    // The migrated store opens again as it is.
    d.terminate(Duration::from_secs(10))
        .await
        .expect("clean stop");
    d.restart().await;
    for (id, before) in done.iter().zip(&done_before) {
        assert_eq!(&d.get_run(id).await, before);
    }
}
