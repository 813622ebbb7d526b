//! Heavy service tests (run one at a time): SIGTERM in the middle of a
//! trigger load, and a debug-level log capture over the whole loop with
//! every kind of secret configured.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_sigterm_during_load_drains_exits_0_and_every_accepted_run_is_persisted() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_slow"));
    let mut d = Daemon::start(&cfg).await;
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let url = d.url("/hooks/gh");
    let mut senders = Vec::new();
    for w in 0..16 {
        let (accepted, url) = (accepted.clone(), url.clone());
        senders.push(tokio::spawn(async move {
            let http = hook_client();
            for i in 0.. {
                let body = serde_json::to_vec(&gh_payload(&format!("acme/{w}-{i}"))).unwrap();
                let mut req = http.post(&url).body(body.clone());
                for (k, v) in Daemon::github_headers(&format!("dlv-{w}-{i}"), &body) {
                    req = req.header(k, v);
                }
                match req.send().await {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some(id) = v["run_id"].as_str() {
                            accepted.lock().unwrap().push(id.to_string());
                        }
                    }
                    // Refused or cut off by the shutdown: nothing promised.
                    Ok(_) | Err(_) => return,
                }
            }
        }));
    }
    poll_until("200 runs accepted under load", DEADLINE, || async {
        let n = accepted.lock().unwrap().len();
        if n >= 200 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    let (status, took) = d
        .terminate(Duration::from_secs(30))
        .await
        .expect("exits after SIGTERM");
    for s in senders {
        let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
    }
    assert_eq!(status.code(), Some(0), "{}", d.stderr_tail(30));
    let ids = accepted.lock().unwrap().clone();
    eprintln!("{} runs accepted; SIGTERM to exit took {took:?}", ids.len());

    d.restart().await;
    for id in &ids {
        let (code, run) = d.admin_get(&format!("/runs/{id}")).await;
        assert_eq!(code, 200, "accepted run {id} must be persisted: {run}");
    }
}

/// Every kind of secret, each given a distinct value and each reachable
/// through a different reference kind (literal, env:, file:, credential:).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_debug_logs_over_the_whole_loop_show_no_secret() {
    const HOOK_TOKEN: &str = "hooktok_0a9b8c7d6e5f";
    const SW_SECRET: &str = "whsec_c2VjcmV0LXN0YW5kYXJkLXdlYmhvb2tzLWtleS0x";
    let slate = FakeSlate::start().await;
    let rx = Receiver::start(CALLBACK_SECRET).await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()));
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("hook-token"), format!("{HOOK_TOKEN}\n")).unwrap();
    let sw_file = dir.path().join("sw-secret");
    std::fs::write(&sw_file, SW_SECRET).unwrap();
    let mut text = cfg.render(dir.path());
    text.push_str(&format!(
        "\n[routes.tok]\nprovider = \"slate\"\nworkflow_id = \"wf_ok\"\n\
         verify = {{ kind = \"token\", token = \"credential:hook-token\" }}\n\
         [[routes.tok.callbacks]]\nurl = {}\nsecret = \"env:CB_SECRET\"\n\
         \n[routes.sw]\nprovider = \"slate\"\nworkflow_id = \"wf_ok\"\n\
         verify = {{ kind = \"standard-webhooks\", secret = \"file:{}\" }}\n",
        toml_str(&rx.url()),
        sw_file.display()
    ));
    let creds_s = creds.to_string_lossy().to_string();
    let mut d = Daemon::start_with_env(
        dir,
        &text,
        &[
            ("CREDENTIALS_DIRECTORY", &creds_s),
            ("CB_SECRET", CALLBACK_SECRET),
            ("RUNBRIDGE_LOG", "debug"),
        ],
    )
    .await;

    // The whole loop on every route, plus rejections and a reload.
    let id = d.trigger("gh", "dlv-s1", "acme/s").await;
    rx.wait_delivered(&id).await;
    let body = serde_json::to_vec(&gh_payload("acme/tok")).unwrap();
    let ok = d
        .post_hook(
            "tok",
            body.clone(),
            &[
                ("Content-Type", "application/json".into()),
                ("Authorization", format!("Bearer {HOOK_TOKEN}")),
            ],
        )
        .await;
    assert_eq!(ok.status, 202, "{ok:?}");
    rx.wait_delivered(&ok.run_id()).await;
    let bad = d
        .post_hook(
            "tok",
            body.clone(),
            &[("Authorization", "Bearer wrong-token-value".into())],
        )
        .await;
    assert_eq!(bad.status, 401);
    let ts = unix_now().to_string();
    let sig = format!(
        "v1,{}",
        standard_webhooks_signature(SW_SECRET, "msg_1", &ts, &body)
    );
    let sw = d
        .post_hook(
            "sw",
            body.clone(),
            &[
                ("Content-Type", "application/json".into()),
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", ts),
                ("webhook-signature", sig),
            ],
        )
        .await;
    assert_eq!(sw.status, 202, "{sw:?}");
    let bad_sig = d
        .post_hook(
            "sw",
            body.clone(),
            &[
                ("webhook-id", "msg_2".into()),
                ("webhook-timestamp", unix_now().to_string()),
                ("webhook-signature", "v1,AAAA".into()),
            ],
        )
        .await;
    assert_eq!(bad_sig.status, 401);
    let r = d
        .http
        .post(d.url("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    d.signal("HUP").await;
    let _ = d.admin_get(&format!("/runs/{id}")).await;
    let (status, _) = d.terminate(Duration::from_secs(20)).await.expect("exits");
    assert_eq!(status.code(), Some(0));

    let log = d.stderr();
    assert!(log.contains("DEBUG"), "the capture is at debug level");
    assert!(log.contains("webhook rejected"), "rejections are logged");
    let sw_b64 = SW_SECRET.trim_start_matches("whsec_");
    for secret in [
        ADMIN_TOKEN,
        SLATE_TOKEN,
        GH_SECRET,
        CALLBACK_SECRET,
        CALLBACK_SECRET.trim_start_matches("whsec_"),
        HOOK_TOKEN,
        SW_SECRET,
        sw_b64,
    ] {
        assert!(!log.contains(secret), "secret {secret:?} in the log");
    }
}
