//! Each preset's shapes, URL encoding, transport failures, the shared
//! hold-off after a 429.

use super::*;
use crate::providers::presets::{self, VendorOptions};
use crate::secret::Secret;

fn engine(kind: &str, o: &VendorOptions, base: &str) -> Engine {
    let d = presets::describe(kind, o).unwrap();
    let api = d.compile(&mut |k, m| panic!("{k}: {m}")).unwrap();
    let s = HttpSettings {
        kind: kind.into(),
        base_url: base.into(),
        token: Some(Secret::new("slat_1")),
        token_ref: None,
        timeout: Duration::from_secs(2),
        max_response_bytes: 1024 * 1024,
        limit: Default::default(),
        raw_limit: Default::default(),
        api,
    };
    Engine::new(kind, &s, reqwest::Client::new(), Arc::default())
}

#[test]
fn urls_are_encoded() {
    let e = engine("slate", &VendorOptions::default(), "http://x/api/");
    let vars = Vars {
        run_id: None,
        workflow_id: "wf/1 x",
        vendor_run_id: Some("r-1"),
        inputs: None,
    };
    assert_eq!(
        e.url(&e.api.start, &vars).unwrap(),
        "http://x/api/workflows/wf%2F1%20x/runs"
    );
    assert_eq!(
        e.url(&e.api.status, &vars).unwrap(),
        "http://x/api/workflow-runs/r-1"
    );
}

#[test]
fn observes_each_vendor_shape() {
    let slate = engine("slate", &VendorOptions::default(), "http://x");
    let done = json!({"run_id":"r","status":"completed","output":{"share_url":"u"},"error":null});
    let o = slate.observe(&done);
    assert_eq!(o.status, RunStatus::Succeeded, "case-insensitive");
    assert_eq!(o.output, Some(json!({"share_url":"u"})));
    assert_eq!(o.error, None);
    let odd = slate.observe(&json!({"status":"PAUSED_FOR_LUNCH"}));
    assert_eq!(
        (odd.status, odd.raw_status.as_deref(), odd.unknown),
        (RunStatus::Running, Some("PAUSED_FOR_LUNCH"), true)
    );
    let alto = engine("altostrat", &VendorOptions::default(), "http://x");
    let o =
        alto.observe(&json!({"status":"completed","logs":[{"output":1},{"output":{"last":true}}]}));
    assert_eq!(o.output, Some(json!({"last": true})));
    assert_eq!(
        alto.observe(&json!({"status":"awaiting_ui_interaction"}))
            .status,
        RunStatus::Waiting
    );
    let retab = engine("retab", &VendorOptions::default(), "http://x");
    let o = retab
        .observe(&json!({"lifecycle":{"status":"error","message":"boom","category":"permanent"}}));
    assert_eq!(o.status, RunStatus::Failed);
    assert_eq!(
        o.error,
        Some(json!({"message":"boom","category":"permanent"}))
    );
    let o = retab.observe(&json!({"lifecycle":{"kind":"awaiting_review"}}));
    assert_eq!(o.status, RunStatus::Waiting);
    let onepin = engine("onepin", &VendorOptions::default(), "http://x");
    let o = onepin.observe(&json!({"data":{"status":"failed","error":"node 3 crashed"}}));
    assert_eq!(
        (o.status, o.error),
        (RunStatus::Failed, Some(json!("node 3 crashed")))
    );
}

#[tokio::test]
async fn a_closed_port_is_a_transient_connection_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let e = engine(
        "slate",
        &VendorOptions::default(),
        &format!("http://127.0.0.1:{port}/api"),
    );
    let req = PollRequest {
        workflow_id: "wf",
        vendor_run_id: "r",
    };
    match e.poll(req).await {
        Err(err @ ProviderError::Transient { .. }) => {
            assert_eq!(err.kind(), FailureKind::Connection, "{err:?}")
        }
        other => panic!("{other:?}"),
    }
}

/// A 429 with `Retry-After` holds the whole provider off: a call for
/// another run made right after waits too.
#[tokio::test]
async fn a_429_with_retry_after_slows_every_run_of_the_provider() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/workflow-runs/{id}",
        axum::routing::get(move || {
            let h = h.clone();
            async move {
                if h.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        "{}",
                    )
                } else {
                    (
                        axum::http::StatusCode::OK,
                        [("retry-after", "0")],
                        r#"{"status":"RUNNING"}"#,
                    )
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let e = engine(
        "slate",
        &VendorOptions::default(),
        &format!("http://{addr}"),
    );
    let a = PollRequest {
        workflow_id: "wf",
        vendor_run_id: "a",
    };
    let b = PollRequest {
        workflow_id: "wf",
        vendor_run_id: "b",
    };
    match e.poll(a).await {
        Err(ProviderError::Transient {
            kind, retry_after, ..
        }) => {
            assert_eq!(
                (kind, retry_after),
                (FailureKind::RateLimited, Some(Duration::from_secs(1)))
            )
        }
        other => panic!("{other:?}"),
    }
    let t0 = std::time::Instant::now();
    assert!(e.poll(b).await.is_ok());
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "held off {:?}",
        t0.elapsed()
    );
}

#[test]
fn token_never_in_debug() {
    let e = engine("slate", &VendorOptions::default(), "http://x");
    let dbg = format!("{:?}", e.headers);
    assert!(!dbg.contains("slat_1"), "{dbg}");
}

#[test]
fn each_preset_declares_its_start_as_its_docs_allow() {
    // shared/providers.md: only Slate documents an idempotency key that
    // returns the existing run; the others are reconciled by listing.
    let o = VendorOptions::default();
    let seed = VendorOptions {
        api_shape: Some("seed".into()),
        ..Default::default()
    };
    for (kind, o, idempotent, reconcile) in [
        ("slate", &o, true, false),
        ("onepin", &o, false, true),
        ("altostrat", &o, false, true),
        ("retab", &o, false, true),
        ("retab", &seed, false, true),
    ] {
        let c = engine(kind, o, "http://127.0.0.1:1").capabilities();
        assert_eq!(
            (c.idempotent_start, c.reconcile),
            (idempotent, reconcile),
            "{kind}"
        );
    }
}
