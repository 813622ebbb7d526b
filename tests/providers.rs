//! Each vendor through the whole loop over loopback HTTP, against a fake
//! written from its docs: success (with the vendor's output), failure (with
//! its error text), waiting then `waiting_timeout`, and cancel, each with
//! the right callback events; the same again with the vendor's
//! `--explain` description pasted as a `kind = "http"` provider.

mod common;

use common::altostrat::FakeAltostrat;
use common::bridge::{config, explain, Route};
use common::fake::Core;
use common::onepin::FakeOnePin;
use common::retab::FakeRetab;
use common::*;
use serde_json::{json, Value};

/// What a vendor's fake should produce.
struct Expect {
    core: Core,
    provider: String,
    token: &'static str,
    output: Value,
    error_text: &'static str,
    /// Answer to the cancel of a running run, and whether the vendor run may go on.
    cancel_status: u16,
    local_cancel: bool,
}

async fn wait_events(rx: &Receiver, id: &str, n: usize) -> Vec<CallbackRecord> {
    poll_until(&format!("{n} callbacks of {id}"), DEADLINE, || async {
        let mut got: Vec<CallbackRecord> = rx.for_run(id).into_iter().filter(|r| r.ok()).collect();
        got.dedup_by(|a, b| a.webhook_id == b.webhook_id);
        if got.len() >= n {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
}

async fn whole_loop(e: &Expect, provider: &str) {
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = [
        Route::new("ok", "wf_ok"),
        Route::new("fail", "wf_fail"),
        Route::new("wait", "wf_wait").waiting("1s"),
        Route::new("slow", "wf_slow"),
    ];
    let text = config(dir.path(), provider, &routes, &rx.url(), "50ms");
    let d = Daemon::start_with_text(dir, &text).await;
    let inputs = json!({"script_text": "Hello", "source_language": "en-us", "json_inputs": {"start_1": {"a": 1}}});

    let ok = d.trigger_json("ok", &inputs).await;
    let run = d.wait_done(&ok).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], e.output, "{run}");
    let cb = wait_events(&rx, &ok, 1).await;
    assert_eq!(cb[0].event_type(), "run.succeeded");
    assert_eq!(cb[0].data()["output"], e.output);
    assert!(cb[0].signature_valid);

    let fail = d.trigger_json("fail", &inputs).await;
    let run = d.wait_done(&fail).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].to_string().contains(e.error_text), "{run}");
    let cb = wait_events(&rx, &fail, 1).await;
    assert_eq!(cb[0].event_type(), "run.failed");
    assert!(cb[0].data()["error"].to_string().contains(e.error_text));

    let wait = d.trigger_json("wait", &inputs).await;
    let run = d.wait_done(&wait).await;
    assert_eq!(run["status"], "timed_out", "{run}");
    assert_eq!(run["error"]["code"], "WAITING_TIMED_OUT", "{run}");
    let cb = wait_events(&rx, &wait, 2).await;
    assert_eq!(cb[0].event_type(), "run.waiting");
    assert_eq!(cb[0].data()["status"], "waiting");
    assert_eq!(cb[1].event_type(), "run.timed_out");
    assert_ne!(
        cb[0].webhook_id, cb[1].webhook_id,
        "each event has its own id"
    );

    let slow = d.trigger_json("slow", &inputs).await;
    d.wait_run(&slow, "running", |r| r["status"] == "running")
        .await;
    let (status, body) = d.cancel(&slow).await;
    assert_eq!(status, e.cancel_status, "{body}");
    let run = d.wait_done(&slow).await;
    assert_eq!(run["status"], "canceled", "{run}");
    let cb = wait_events(&rx, &slow, 1).await;
    assert_eq!(cb[0].event_type(), "run.canceled");
    let vid = run["vendor_run_id"].as_str().unwrap().to_string();
    if e.local_cancel {
        assert_eq!(cb[0].data()["vendor_run_may_continue"], true);
        assert_eq!(run["error"]["code"], "CANCELED_LOCALLY");
        assert!(e.core.cancels().is_empty(), "no vendor cancel exists");
    } else {
        assert!(e.core.cancels().contains(&vid));
    }
    let (status, body) = d.cancel(&ok).await;
    assert_eq!(status, 409, "a run that already ended: {body}");
    assert_eq!(body["error"], "run_ended");
}

/// The provider's `--explain` output with the real token in place of `***`.
fn explained(provider: &str, token: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, provider).unwrap();
    let text = explain(&path, "v");
    assert!(text.contains("kind = \"http\""), "{text}");
    assert!(!text.contains(token), "no secret printed: {text}");
    text.replace("\"***\"", &format!("\"{token}\""))
}

async fn both_ways(e: Expect) {
    whole_loop(&e, &e.provider).await;
    let pasted = explained(&e.provider, e.token);
    let before = e.core.creates();
    whole_loop(&e, &pasted).await;
    assert!(e.core.creates() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onepin_whole_loop_and_its_explained_description() {
    let f = FakeOnePin::start().await;
    both_ways(Expect {
        core: f.core.clone(),
        provider: f.provider(),
        token: common::onepin::TOKEN,
        output: json!([{"node_id": "sink_1", "node_type": "audio_out", "display_name": "Narration", "status": "completed",
            "lines": [{"text": "hello"}, {"text": "world"}], "line_count": 2, "truncated": true}]),
        error_text: "node tts_1 failed: voice not found",
        cancel_status: 200,
        local_cancel: false,
    })
    .await;
    let bodies: Vec<Value> = f.core.runs().iter().map(|r| r.body.clone()).collect();
    assert!(
        bodies.contains(&json!({"script_text": "Hello", "source_language": "en-us"})),
        "{bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retab_seed_shape_whole_loop_and_its_explained_description() {
    let f = FakeRetab::start(true).await;
    both_ways(Expect {
        core: f.core.clone(),
        provider: f.provider(),
        token: common::retab::KEY,
        output: json!({"end_1": {"label": "Invoice", "json_data": {"total": 42}}}),
        error_text: "extraction failed: document unreadable",
        cancel_status: 202,
        local_cancel: false,
    })
    .await;
    let run = &f.core.runs()[0];
    assert_eq!(
        run.body,
        json!({"json_inputs": {"start_1": {"a": 1}}}),
        "node-keyed inputs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retab_current_shape_whole_loop_and_its_explained_description() {
    let f = FakeRetab::start(false).await;
    both_ways(Expect {
        core: f.core.clone(),
        provider: f.provider(),
        token: common::retab::KEY,
        output: json!({"data": [{"step_id": "extract_1", "status": "completed", "handle_outputs": {"output": {"total": 42}}}]}),
        error_text: "extraction failed: document unreadable",
        cancel_status: 202,
        local_cancel: false,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altostrat_whole_loop_with_local_cancel_and_its_explained_description() {
    let f = FakeAltostrat::start().await;
    both_ways(Expect {
        core: f.core.clone(),
        provider: f.provider(),
        token: common::altostrat::TOKEN,
        output: json!({"ticket": "T-42"}),
        error_text: "Step 'Send email' failed: SMTP refused",
        cancel_status: 200,
        local_cancel: true,
    })
    .await
}
