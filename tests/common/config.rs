//! The daemon's config as the tests build it ([`RouteCfg`], [`Config`]) and render it to TOML, plus a GitHub-like payload.

use std::path::Path;

use serde_json::{json, Value};

use super::{FakeSlate, ADMIN_TOKEN, CALLBACK_SECRET, GH_SECRET, SLATE_TOKEN};

/// A route as the tests configure it: GitHub-verified, deduped on
/// X-GitHub-Delivery, inputs `repo` (pointer, required), `event` (header,
/// optional) and `source` (constant "tests").
#[derive(Clone, Debug)]
pub struct RouteCfg {
    pub name: String,
    pub provider: String,
    pub workflow_id: String,
    pub run_timeout: Option<String>,
    pub callbacks: Vec<String>,
}

impl RouteCfg {
    pub fn new(name: &str, workflow_id: &str) -> Self {
        RouteCfg {
            name: name.into(),
            provider: "slate".into(),
            workflow_id: workflow_id.into(),
            run_timeout: None,
            callbacks: Vec::new(),
        }
    }
    pub fn callback(mut self, url: &str) -> Self {
        self.callbacks.push(url.into());
        self
    }
    pub fn run_timeout(mut self, t: &str) -> Self {
        self.run_timeout = Some(t.into());
        self
    }
}

/// The daemon's config; rendered to TOML once the temp dir is known.
#[derive(Clone, Debug)]
pub struct Config {
    pub slate_base: String,
    pub body_limit: String,
    pub shutdown_timeout: String,
    pub poll_interval: String,
    pub run_timeout: String,
    pub retry_base: String,
    pub retry_max: String,
    pub schedule: Vec<String>,
    pub delivery_timeout: String,
    pub max_retry_after: String,
    pub provider_timeout: String,
    pub routes: Vec<RouteCfg>,
    /// `delivery.allow_destinations`: loopback by default, since the test
    /// receivers listen there (the daemon's own default admits nothing).
    pub allow_destinations: Vec<String>,
    /// `storage.retention`, when a test needs it short.
    pub retention: Option<String>,
}

pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Config {
    pub fn new(slate: &FakeSlate) -> Self {
        Config {
            slate_base: slate.base_url(),
            body_limit: "64KiB".into(),
            shutdown_timeout: "5s".into(),
            poll_interval: "50ms".into(),
            run_timeout: "30s".into(),
            retry_base: "50ms".into(),
            retry_max: "500ms".into(),
            schedule: [
                "0s", "100ms", "200ms", "300ms", "300ms", "300ms", "300ms", "300ms",
            ]
            .map(String::from)
            .to_vec(),
            delivery_timeout: "2s".into(),
            max_retry_after: "2s".into(),
            provider_timeout: "2s".into(),
            routes: Vec::new(),
            allow_destinations: vec!["127.0.0.0/8".into()],
            retention: None,
        }
    }

    pub fn route(mut self, r: RouteCfg) -> Self {
        self.routes.push(r);
        self
    }

    pub fn schedule(mut self, s: &[&str]) -> Self {
        self.schedule = s.iter().map(|x| x.to_string()).collect();
        self
    }

    pub fn render(&self, dir: &Path) -> String {
        let db = dir.join("db");
        let schedule = self
            .schedule
            .iter()
            .map(|s| toml_str(s))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = format!(
            r#"[server]
listen = "127.0.0.1:0"
body_limit = {body_limit}
admin_token = {admin}
shutdown_timeout = {shutdown}

[storage]
path = {db}
{retention}
[scheduler]
poll_interval = {poll}
poll_slowdown_after = "1h"
max_poll_interval = "1s"
run_timeout = {run_timeout}
concurrency = 32
retry_base = {retry_base}
retry_max = {retry_max}

[delivery]
schedule = [{schedule}]
jitter = 0.0
timeout = {dtimeout}
max_retry_after = {mra}
allow_destinations = [{allow}]

[providers.slate]
kind = "slate"
base_url = {base}
token = {token}
timeout = {ptimeout}
"#,
            body_limit = toml_str(&self.body_limit),
            admin = toml_str(ADMIN_TOKEN),
            shutdown = toml_str(&self.shutdown_timeout),
            db = toml_str(&db.to_string_lossy()),
            poll = toml_str(&self.poll_interval),
            run_timeout = toml_str(&self.run_timeout),
            retry_base = toml_str(&self.retry_base),
            retry_max = toml_str(&self.retry_max),
            dtimeout = toml_str(&self.delivery_timeout),
            mra = toml_str(&self.max_retry_after),
            base = toml_str(&self.slate_base),
            token = toml_str(SLATE_TOKEN),
            ptimeout = toml_str(&self.provider_timeout),
            retention = self
                .retention
                .as_ref()
                .map(|r| format!("retention = {}\n", toml_str(r)))
                .unwrap_or_default(),
            allow = self
                .allow_destinations
                .iter()
                .map(|s| toml_str(s))
                .collect::<Vec<_>>()
                .join(", "),
        );
        for r in &self.routes {
            let n = &r.name;
            out.push_str(&format!(
                "\n[routes.{n}]\nprovider = {}\nworkflow_id = {}\n",
                toml_str(&r.provider),
                toml_str(&r.workflow_id)
            ));
            if let Some(t) = &r.run_timeout {
                out.push_str(&format!("run_timeout = {}\n", toml_str(t)));
            }
            out.push_str(&format!(
                "dedupe_header = \"X-GitHub-Delivery\"\nverify = {{ kind = \"github\", secret = {} }}\n",
                toml_str(GH_SECRET)
            ));
            out.push_str(&format!(
                "\n[[routes.{n}.inputs]]\nname = \"repo\"\npointer = \"/repository/full_name\"\n\
                 \n[[routes.{n}.inputs]]\nname = \"event\"\nheader = \"X-GitHub-Event\"\nrequired = false\n\
                 \n[[routes.{n}.inputs]]\nname = \"source\"\nvalue = \"tests\"\n"
            ));
            for url in &r.callbacks {
                out.push_str(&format!(
                    "\n[[routes.{n}.callbacks]]\nurl = {}\nsecret = {}\n",
                    toml_str(url),
                    toml_str(CALLBACK_SECRET)
                ));
            }
        }
        out
    }
}

/// A GitHub-like push payload whose `/repository/full_name` is `repo`.
pub fn gh_payload(repo: &str) -> Value {
    json!({
        "ref": "refs/heads/main",
        "repository": { "full_name": repo, "private": false },
        "sender": { "login": "octocat" }
    })
}
