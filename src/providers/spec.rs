//! The config form of a JSON workflow API: where to send each request and
//! where the answers keep the run id, status, output and error. A user
//! writes one as `kind = "http"`; the vendor presets ([`super::presets`])
//! build the same thing, and `check-config --explain` prints it back in
//! this form, so any preset can be pasted and edited as an `http` provider.
//!
//! Paths, headers and bodies are templates and locations are pointers of
//! the shared language in [`crate::template`]. Requests see `run_id`,
//! `workflow_id`, `vendor_run_id`, `inputs` and `idempotency_key`;
//! locations read the vendor's answer.

use crate::run::RunStatus;
use crate::template::{Pointer, Template};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest clock-skew margin of a reconciliation.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// A whole API description (everything but the connection: base URL,
/// token, timeout and limits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// The header carrying the token, and what precedes the token in it.
    #[serde(default)]
    pub auth: Auth,
    /// Headers sent on every request (e.g. `X-Workspace-Id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// How a run is created.
    pub start: StartSpec,
    /// How a run's status is read.
    pub status: StatusSpec,
    /// Vendor statuses (compared case-insensitively) for each of ours.
    pub statuses: Statuses,
    /// A separate request for a succeeded run's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,
    /// The vendor's cancel request; without one a cancel is local only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<CancelSpec>,
    /// The workflow's runs listing, for reconciling interrupted starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<ListSpec>,
}

/// How the token is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Header name (`Authorization`, `Api-Key`, ...).
    pub header: String,
    /// Text before the token (`Bearer `), empty for a bare key.
    #[serde(default)]
    pub prefix: String,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            header: "Authorization".into(),
            prefix: "Bearer ".into(),
        }
    }
}

fn post() -> String {
    "POST".into()
}

fn get() -> String {
    "GET".into()
}

/// The start request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSpec {
    /// HTTP method (default `POST`).
    #[serde(default = "post")]
    pub method: String,
    /// Path template after `base_url`.
    pub path: String,
    /// JSON body template; members whose placeholder has no value are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Header carrying `idempotency_key`, if the vendor takes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_header: Option<String>,
    /// Whether the vendor reliably honours that header (a repeat returns the
    /// same run). When false an interrupted start is reconciled through
    /// `list`, or ends `failed` with `start_uncertain` without one.
    #[serde(default)]
    pub idempotent: bool,
    /// Pointers tried in order for the vendor run id in the answer.
    pub run_id: Vec<String>,
    /// Answer codes meaning "busy, try later" (OnePin's 409).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busy: Vec<u16>,
}

/// The status request and where its answer keeps things.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSpec {
    /// HTTP method (default `GET`).
    #[serde(default = "get")]
    pub method: String,
    /// Path template after `base_url`.
    pub path: String,
    /// Pointers tried in order for the raw status.
    pub status: Vec<String>,
    /// Output template over the answer (used once the run succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Error template over the answer (used once the run failed); members
    /// without a value are left out, an empty result means no error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// The status mapping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statuses {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub starting: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub succeeded: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canceled: Vec<String>,
}

impl Statuses {
    /// Every (raw, ours) pair.
    pub fn pairs(&self) -> Vec<(String, RunStatus)> {
        let groups = [
            (&self.queued, RunStatus::Queued),
            (&self.starting, RunStatus::Starting),
            (&self.running, RunStatus::Running),
            (&self.waiting, RunStatus::Waiting),
            (&self.succeeded, RunStatus::Succeeded),
            (&self.failed, RunStatus::Failed),
            (&self.canceled, RunStatus::Canceled),
        ];
        groups
            .iter()
            .flat_map(|(raws, st)| raws.iter().map(move |r| (r.clone(), *st)))
            .collect()
    }
}

/// A separate output request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// HTTP method (default `GET`).
    #[serde(default = "get")]
    pub method: String,
    /// Path template after `base_url`.
    pub path: String,
    /// Template over its answer.
    pub value: Value,
}

/// The cancel request and how to read its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelSpec {
    /// HTTP method (default `POST`).
    #[serde(default = "post")]
    pub method: String,
    /// Path template after `base_url`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Pointer to a cancel result in the answer (Retab's
    /// `cancellation_status`). Without one the answer's run status is read
    /// with the status pointers: canceled means done, another terminal
    /// status means it had ended, anything else pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canceled: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<String>,
    /// Answer codes meaning the vendor refuses (Slate's 409 after QUEUED).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<u16>,
    /// Answer codes meaning "try again" (OnePin's 409 update race).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busy: Vec<u16>,
}

/// The runs listing used to reconcile an interrupted start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    /// HTTP method (default `GET`).
    #[serde(default = "get")]
    pub method: String,
    /// Path template; should ask for the newest runs first.
    pub path: String,
    /// Pointer to the array of runs.
    pub items: String,
    /// Pointer to a run's id inside an item.
    pub id: String,
    /// Pointers tried in order for a run's creation time (RFC 3339) inside
    /// an item; an item without one counts as created in the window.
    pub created_at: Vec<String>,
    /// How far the vendor's clock may be behind ours.
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
}

fn default_skew() -> Duration {
    Duration::from_secs(5)
}

/// A request with its templates parsed.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: reqwest::Method,
    /// Path template after `base_url` (values percent-encoded).
    pub path: Template,
    /// JSON body template, if the request has a body.
    pub body: Option<Template>,
}

/// A description checked and parsed once, at config load.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The description as written (what `--explain` prints).
    pub source: Description,
    /// The start request.
    pub start: Request,
    /// Where the start answer keeps the vendor run id.
    pub run_id: Vec<Pointer>,
    /// The status request.
    pub status: Request,
    /// Where a status answer keeps the raw status.
    pub status_at: Vec<Pointer>,
    /// The output inside a status answer.
    pub output_at: Option<Template>,
    /// The error inside a status answer.
    pub error_at: Option<Template>,
    /// Raw status to ours.
    pub statuses: Vec<(String, RunStatus)>,
    /// A separate output request and where its answer keeps the output.
    pub output: Option<(Request, Template)>,
    /// The cancel request and where its answer keeps the result.
    pub cancel: Option<(Request, Option<Pointer>)>,
    /// The listing request, its items, an item's id and creation time.
    pub list: Option<(Request, Pointer, Pointer, Vec<Pointer>)>,
}

impl Description {
    /// Parses every template and pointer, reporting each problem with its
    /// key (relative to the provider) to `problem`.
    pub fn compile(&self, problem: &mut dyn FnMut(String, String)) -> Option<Compiled> {
        let mut errs: Vec<(String, String)> = Vec::new();
        let e = &mut errs;
        let start = request(
            e,
            "start",
            &self.start.method,
            &self.start.path,
            self.start.body.as_ref(),
        );
        let status = request(e, "status", &self.status.method, &self.status.path, None);
        let output = match &self.output {
            Some(o) => {
                let r = request(e, "output", &o.method, &o.path, None);
                let t = template(e, "output.value", &o.value);
                Some((r, t))
            }
            None => None,
        };
        let cancel = match &self.cancel {
            Some(c) => {
                let r = request(e, "cancel", &c.method, &c.path, c.body.as_ref());
                let res = c.result.as_ref().map(|p| pointer(e, "cancel.result", p));
                Some((r, res))
            }
            None => None,
        };
        let list = match &self.list {
            Some(l) => {
                if l.clock_skew > MAX_CLOCK_SKEW {
                    e.push((
                        "list.clock_skew".into(),
                        format!(
                            "is more than the maximum of {}",
                            humantime::format_duration(MAX_CLOCK_SKEW)
                        ),
                    ));
                }
                let r = request(e, "list", &l.method, &l.path, None);
                let items = pointer(e, "list.items", &l.items);
                let id = pointer(e, "list.id", &l.id);
                let created = pointers(e, "list.created_at", &l.created_at);
                Some((r, items, id, created))
            }
            None => None,
        };
        let run_id = pointers(e, "start.run_id", &self.start.run_id);
        let status_at = pointers(e, "status.status", &self.status.status);
        let output_at = self
            .status
            .output
            .as_ref()
            .map(|v| template(e, "status.output", v));
        let error_at = self
            .status
            .error
            .as_ref()
            .map(|v| template(e, "status.error", v));
        let statuses = self.statuses.pairs();
        if !statuses.iter().any(|(_, s)| s.is_terminal()) {
            e.push((
                "statuses".into(),
                "map at least one vendor status to succeeded, failed or canceled".into(),
            ));
        }
        let ok = errs.is_empty();
        for (k, m) in errs {
            problem(k, m);
        }
        ok.then(|| Compiled {
            source: self.clone(),
            start,
            run_id,
            status,
            status_at,
            output_at,
            error_at,
            statuses,
            output,
            cancel,
            list,
        })
    }
}

fn request(
    e: &mut Vec<(String, String)>,
    k: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Request {
    let method = match reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            e.push((
                format!("{k}.method"),
                format!("{method:?} is not an HTTP method"),
            ));
            reqwest::Method::GET
        }
    };
    if !path.starts_with('/') {
        e.push((format!("{k}.path"), "must start with '/'".into()));
    }
    let path = Template::parse_str(path).unwrap_or_else(|m| {
        e.push((format!("{k}.path"), m));
        Template::Literal(Value::Null)
    });
    let body = body.map(|b| template(e, &format!("{k}.body"), b));
    Request { method, path, body }
}

fn template(e: &mut Vec<(String, String)>, k: &str, v: &Value) -> Template {
    Template::parse(v).unwrap_or_else(|m| {
        e.push((k.to_string(), m));
        Template::Literal(Value::Null)
    })
}

fn pointer(e: &mut Vec<(String, String)>, k: &str, p: &str) -> Pointer {
    match Pointer::parse(p) {
        Ok(p) => p,
        Err(m) => {
            e.push((k.to_string(), m));
            whole()
        }
    }
}

fn pointers(e: &mut Vec<(String, String)>, k: &str, ps: &[String]) -> Vec<Pointer> {
    if ps.is_empty() {
        e.push((k.to_string(), "give at least one pointer".into()));
    }
    ps.iter().map(|p| pointer(e, k, p)).collect()
}

/// The whole-document pointer.
fn whole() -> Pointer {
    Pointer::parse("").unwrap_or_else(|_| whole())
}
