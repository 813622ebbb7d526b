//! A store written by the previous release opens and its runs resume.
//!
//! Two ways: a real store the release before issue 10 wrote
//! (`tests/fixtures/store-before-issue10`, see its README), and one the
//! daemon writes now and the test rewrites in the previous format.
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

/// The fixture's routes, with the tracked runs' provider finishing at its
/// next status check, and callbacks to `rx`.
fn fixture_config(db: &Path, rx: &Receiver) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = {admin}\n\
         \n[storage]\npath = {db}\n\
         \n[scheduler]\npoll_interval = \"1s\"\n\
         \n[delivery]\nallow_destinations = [\"127.0.0.0/8\"]\n\
         \n[providers.sim]\nkind = \"simulated\"\nduration = \"1s\"\noutcome = \"succeeded\"\n\
         \n[providers.slow]\nkind = \"simulated\"\nduration = \"1s\"\noutcome = \"succeeded\"\n",
        admin = toml_str(ADMIN_TOKEN),
        db = toml_str(&db.to_string_lossy()),
    );
    for (route, provider) in [("quick", "sim"), ("hold", "slow")] {
        text.push_str(&format!(
            "\n[routes.{route}]\nprovider = \"{provider}\"\nworkflow_id = \"wf\"\n\
             run_timeout = \"30days\"\ndedupe_header = \"X-GitHub-Delivery\"\n\
             verify = {{ kind = \"github\", secret = \"fixture-secret\" }}\n\
             \n[[routes.{route}.callbacks]]\nurl = {}\nsecret = {}\n",
            toml_str(&rx.url()),
            toml_str(CALLBACK_SECRET)
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_the_previous_release_wrote_opens_and_its_runs_resume() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-before-issue10");
    let shown: serde_json::Map<String, Value> =
        serde_json::from_slice(&std::fs::read(fixture.join("runs.json")).unwrap()).unwrap();
    assert_eq!(shown.len(), 5);
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir_all(db.join("blobs")).unwrap();
    for f in ["conf", "db"] {
        std::fs::copy(fixture.join(f), db.join(f)).unwrap();
    }
    let text = fixture_config(&db, &rx);
    let mut d = Daemon::start_with_text(dir, &text).await;

    // Every run reads as that release showed it: the finished ones whole,
    // the tracked ones in everything but what a restart moves.
    let mut tracked = Vec::new();
    for (id, before) in &shown {
        let now = d.get_run(id).await;
        if before["phase"] == "done" {
            assert_eq!(&now, before, "finished run {id} reads the same");
            continue;
        }
        assert_eq!(before["phase"], "tracking", "{id}");
        for field in [
            "id",
            "route",
            "provider",
            "workflow_id",
            "delivery_id",
            "inputs",
            "created_at",
            "deadline",
            "vendor_run_id",
            "started_at",
            "start_attempts",
        ] {
            assert_eq!(now[field], before[field], "{field} of {id}");
        }
        tracked.push((id.clone(), before.clone()));
    }
    assert_eq!(tracked.len(), 3);
    // The tracked runs resume: polled, ended (succeeded, or timed out if
    // this runs more than 30 days after the fixture was written), and
    // delivered, on the vendor run they had: nothing started again.
    for (id, before) in &tracked {
        rx.wait_delivered(id).await;
        let after = d.wait_done(id).await;
        assert!(
            after["status"] == "succeeded" || after["status"] == "timed_out",
            "{after}"
        );
        assert_eq!(after["vendor_run_id"], before["vendor_run_id"]);
        assert_eq!(after["start_attempts"], before["start_attempts"]);
    }
    // Converted once: it opens again as it is now.
    let finished: Vec<Value> = {
        let mut v = Vec::new();
        for (id, _) in &shown {
            v.push(d.get_run(id).await);
        }
        v
    };
    d.terminate(Duration::from_secs(10))
        .await
        .expect("clean stop");
    d.restart().await;
    for ((id, _), before) in shown.iter().zip(&finished) {
        assert_eq!(&d.get_run(id).await, before, "{id} after a second open");
    }
}
