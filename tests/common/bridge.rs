//! Daemon configs for the provider tests: any provider block (named `v`),
//! routes without verification taking the JSON body whole as inputs, and
//! one callback URL per route subscribed to the given events.

use super::{toml_str, Daemon, ADMIN_TOKEN, CALLBACK_SECRET};
use serde_json::Value;
use std::path::Path;

/// One route of provider `v`.
pub struct Route {
    pub name: String,
    pub workflow_id: String,
    pub waiting_timeout: Option<String>,
    pub events: Vec<String>,
}

impl Route {
    /// Route `name` for `workflow_id`, terminal events only.
    pub fn new(name: &str, workflow_id: &str) -> Route {
        Route {
            name: name.into(),
            workflow_id: workflow_id.into(),
            waiting_timeout: None,
            events: Vec::new(),
        }
    }

    pub fn waiting(mut self, timeout: &str) -> Route {
        self.waiting_timeout = Some(timeout.into());
        self.events = [
            "run.waiting",
            "run.succeeded",
            "run.failed",
            "run.canceled",
            "run.timed_out",
        ]
        .map(String::from)
        .to_vec();
        self
    }
}

/// The whole config text.
pub fn config(dir: &Path, provider: &str, routes: &[Route], callback: &str, poll: &str) -> String {
    let db = dir.join("db");
    let mut out = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_token = {admin}
shutdown_timeout = "5s"

[storage]
path = {db}

[scheduler]
poll_interval = {poll}
poll_slowdown_after = "1h"
max_poll_interval = "1s"
run_timeout = "60s"
concurrency = 64
retry_base = "50ms"
retry_max = "300ms"

[delivery]
schedule = ["0s", "100ms", "200ms", "300ms", "300ms", "300ms"]
jitter = 0.0
timeout = "2s"
max_retry_after = "1s"
# The test receivers listen on loopback, which the guard refuses by default.
allow_destinations = ["127.0.0.0/8"]

{provider}
"#,
        admin = toml_str(ADMIN_TOKEN),
        db = toml_str(&db.to_string_lossy()),
        poll = toml_str(poll),
    );
    for r in routes {
        let n = &r.name;
        out.push_str(&format!(
            "\n[routes.{n}]\nprovider = \"v\"\nworkflow_id = {}\nverify = {{ kind = \"none\" }}\n",
            toml_str(&r.workflow_id)
        ));
        if let Some(t) = &r.waiting_timeout {
            out.push_str(&format!("waiting_timeout = {}\n", toml_str(t)));
        }
        out.push_str(&format!(
            "\n[[routes.{n}.callbacks]]\nurl = {}\nsecret = {}\n",
            toml_str(callback),
            toml_str(CALLBACK_SECRET)
        ));
        if !r.events.is_empty() {
            let list: Vec<String> = r.events.iter().map(|e| toml_str(e)).collect();
            out.push_str(&format!("events = [{}]\n", list.join(", ")));
        }
    }
    out
}

impl Daemon {
    /// POSTs `body` to an unverified route and requires 202; the run id.
    pub async fn trigger_json(&self, route: &str, body: &Value) -> String {
        let r = self
            .post_hook(
                route,
                serde_json::to_vec(body).unwrap(),
                &[("Content-Type", "application/json".to_string())],
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}\n{}", self.stderr_tail(30));
        r.run_id()
    }

    /// `POST /runs/{id}/cancel` with the admin token: status and body.
    pub async fn cancel(&self, id: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(&format!("/runs/{id}/cancel")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// `runbridge check-config --explain NAME` on a config file: its stdout.
pub fn explain(config_path: &Path, name: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runbridge"))
        .args(["check-config", "--config"])
        .arg(config_path)
        .args(["--explain", name])
        .output()
        .expect("run check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
