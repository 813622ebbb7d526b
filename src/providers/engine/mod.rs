//! The engine for JSON workflow APIs: a [`Compiled`] description says where
//! things are; presets and `kind = "http"` fill it in. Strict in what it
//! sends, tolerant in what it accepts (unknown fields and statuses). Every
//! call waits for the provider's [`Limiter`] (rate and concurrency shared
//! by starts, polls, output fetches and cancels), and a `429` with
//! `Retry-After` holds the whole provider off.

use super::{
    CancelOutcome, CancelSupport, Capabilities, FailureKind, PollRequest, Provider, ProviderError,
    ReconcileRequest, Reconciled, StartRequest, Started,
};
use crate::backoff::parse_retry_after;
use crate::config::HttpSettings;
use crate::limit::Limiter;
use crate::run::{Observation, RunId, RunStatus};
use crate::secret::Redactor;
use crate::template::{MapScope, Pointer, Template};
use crate::time::Timestamp;
use async_trait::async_trait;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

use super::spec::{Compiled, Request};

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Largest vendor error body kept in a run record.
const MAX_ERROR_TEXT: usize = 2048;
/// Largest part of a vendor answer quoted in an error (`last_error`).
const MAX_EXCERPT: usize = 200;
/// Runs a listing page is expected to hold; a page this full of candidates
/// cannot rule out more.
const LIST_PAGE: usize = 100;

/// A provider driven by a description.
pub struct Engine {
    name: String,
    api: Compiled,
    base_url: String,
    headers: HeaderMap,
    timeout: Duration,
    /// How much of one answer is read (`max_response_bytes`).
    max_response: u64,
    client: reqwest::Client,
    limiter: Arc<Limiter>,
    /// Scrubs vendor text before it is truncated (a cut could otherwise
    /// leave half a token that the provider wrapper no longer recognizes).
    redactor: Arc<Redactor>,
}

/// A vendor answer with a success status.
struct Answer {
    status: u16,
    body: Value,
    /// False when the body was not JSON (then `body` is `{"text": ...}`).
    json: bool,
}

impl Answer {
    /// A short quote of the answer for `last_error`.
    fn excerpt(&self) -> String {
        let text = match (&self.body, self.json) {
            (Value::Object(o), false) => o
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            (v, _) => v.to_string(),
        };
        truncate(&text, MAX_EXCERPT)
    }

    fn bad(&self, what: &str) -> ProviderError {
        let detail = if self.json {
            format!(
                "vendor answered HTTP {} {what}: {}",
                self.status,
                self.excerpt()
            )
        } else {
            format!(
                "vendor answered HTTP {} with a body that is not JSON ({what}): {}",
                self.status,
                self.excerpt()
            )
        };
        ProviderError::Transient {
            kind: FailureKind::BadAnswer,
            detail,
            retry_after: None,
        }
    }
}

/// How one call reads answer codes beyond the common ones.
#[derive(Default)]
struct Codes<'a> {
    busy: &'a [u16],
    refused: &'a [u16],
}

/// What the answer-reading templates and paths may name.
struct Vars<'a> {
    run_id: Option<RunId>,
    workflow_id: &'a str,
    vendor_run_id: Option<&'a str>,
    inputs: Option<&'a Value>,
}

impl Vars<'_> {
    /// The scope of request templates; `encode` percent-encodes strings (paths).
    fn scope(&self, encode: bool) -> MapScope {
        let s = |v: &str| {
            if encode {
                json!(utf8_percent_encode(v, SEGMENT).to_string())
            } else {
                json!(v)
            }
        };
        let mut named = vec![("workflow_id".to_string(), s(self.workflow_id))];
        if let Some(id) = self.run_id {
            named.push(("run_id".into(), s(&id.to_string())));
            named.push(("idempotency_key".into(), s(&id.idempotency_key())));
        }
        if let Some(v) = self.vendor_run_id {
            named.push(("vendor_run_id".into(), s(v)));
        }
        if let Some(i) = self.inputs {
            named.push(("inputs".into(), i.clone()));
        }
        MapScope {
            main: None,
            named,
            keyed: Vec::new(),
        }
    }
}

/// The scope of answer templates: the answer is the main document and
/// also `answer`.
fn answer_scope(body: &Value) -> MapScope {
    MapScope {
        main: Some(body.clone()),
        named: vec![("answer".into(), body.clone())],
        keyed: Vec::new(),
    }
}

/// Renders an answer template; an empty object or `null` is no value.
fn pick(t: &Option<Template>, body: &Value) -> Option<Value> {
    let v = t.as_ref()?.render(&answer_scope(body)).ok().flatten()?;
    match &v {
        Value::Null => None,
        Value::Object(m) if m.is_empty() => None,
        _ => Some(v),
    }
}

impl Engine {
    /// An engine for provider `name`.
    pub fn new(
        name: &str,
        s: &HttpSettings,
        client: reqwest::Client,
        redactor: Arc<Redactor>,
    ) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(t) = &s.token {
            let auth = &s.api.source.auth;
            if let (Ok(k), Ok(mut v)) = (
                HeaderName::from_bytes(auth.header.as_bytes()),
                HeaderValue::from_str(&format!("{}{}", auth.prefix, t.expose())),
            ) {
                v.set_sensitive(true);
                headers.insert(k, v);
            }
        }
        for (k, v) in &s.api.source.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        Engine {
            name: name.to_string(),
            api: s.api.clone(),
            base_url: s.base_url.trim_end_matches('/').to_string(),
            headers,
            timeout: s.timeout,
            max_response: s.max_response_bytes,
            client,
            limiter: Arc::new(Limiter::new(s.limit)),
            redactor,
        }
    }

    fn url(&self, r: &Request, vars: &Vars<'_>) -> Result<String, ProviderError> {
        let path = r
            .path
            .render(&vars.scope(true))
            .map_err(|e| ProviderError::Rejected {
                detail: format!("cannot build the request path: {e}"),
                body: Value::Null,
            })?
            .unwrap_or(Value::Null);
        Ok(format!(
            "{}{}",
            self.base_url,
            path.as_str().unwrap_or_default()
        ))
    }

    /// Sends one request under the provider's limits and classifies the answer.
    async fn call(
        &self,
        r: &Request,
        vars: &Vars<'_>,
        idempotency: Option<(&str, String)>,
        codes: Codes<'_>,
    ) -> Result<Answer, ProviderError> {
        let url = self.url(r, vars)?;
        let mut builder = self
            .client
            .request(r.method.clone(), url)
            .headers(self.headers.clone())
            .timeout(self.timeout);
        if let Some(body) = &r.body {
            let rendered = body
                .render(&vars.scope(false))
                .map_err(|e| ProviderError::Rejected {
                    detail: format!("cannot build the request body: {e}"),
                    body: Value::Null,
                })?
                .unwrap_or_else(|| json!({}));
            builder = builder.json(&rendered);
        }
        if let Some((h, key)) = idempotency {
            builder = builder.header(h, key);
        }
        let _permit = self.limiter.acquire().await;
        let resp = builder.send().await.map_err(|e| ProviderError::Transient {
            kind: reqwest_kind(&e),
            detail: describe_reqwest(&e),
            retry_after: None,
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Read up to the bound only: an endless answer cannot exhaust
        // memory. A cut answer is not JSON and is handled as text.
        let (bytes, cut) = crate::read::bounded(
            resp,
            self.max_response,
            &crate::read::VENDOR_BYTES_READ,
            "vendor",
        )
        .await
        .map_err(|e| ProviderError::Transient {
            kind: reqwest_kind(&e),
            detail: format!("reading response: {}", describe_reqwest(&e)),
            retry_after: None,
        })?;
        if cut {
            tracing::warn!(provider = %self.name, max_response_bytes = self.max_response, "vendor answer longer than max_response_bytes; cut there");
        }
        let (body, json) = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => (v, true),
            Err(_) => {
                let text = self.redactor.scrub(&String::from_utf8_lossy(&bytes));
                (json!({ "text": truncate(&text, MAX_ERROR_TEXT) }), false)
            }
        };
        let code = status.as_u16();
        let answer = Answer {
            status: code,
            body,
            json,
        };
        if status.is_success() {
            return Ok(answer);
        }
        let detail = format!("vendor answered HTTP {code}: {}", answer.excerpt());
        if code == 429 {
            // The vendor's limit is the provider's, not this run's.
            if let Some(d) = retry_after {
                self.limiter.hold_off(d);
            }
        }
        let kind = match code {
            429 => Some(FailureKind::RateLimited),
            408 => Some(FailureKind::Timeout),
            _ if status.is_server_error() => Some(FailureKind::ServerError),
            _ => None,
        };
        Err(if let Some(kind) = kind {
            ProviderError::Transient {
                kind,
                detail,
                retry_after,
            }
        } else if codes.busy.contains(&code) {
            ProviderError::Busy {
                detail,
                retry_after,
            }
        } else if code == 401 || code == 403 {
            ProviderError::Unauthorized {
                detail: format!(
                    "vendor refused our credentials (HTTP {code}): {}",
                    answer.excerpt()
                ),
                vendor_code: code,
            }
        } else if codes.refused.contains(&code) {
            ProviderError::Rejected {
                detail,
                body: answer.body,
            }
        } else if code == 404 || code == 410 {
            ProviderError::NotFound {
                detail,
                body: answer.body,
            }
        } else {
            ProviderError::Rejected {
                detail,
                body: answer.body,
            }
        })
    }

    /// The raw status of an answer, if it has one where the description says.
    fn raw_status(&self, body: &Value) -> Option<String> {
        self.api
            .status_at
            .iter()
            .find_map(|p| p.find(body).and_then(Value::as_str))
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    }

    fn observe(&self, body: &Value) -> Observation {
        let raw = self.raw_status(body);
        let (status, unknown) = match &raw {
            Some(r) => match self.normalize(r) {
                Some(s) => (s, false),
                None => (RunStatus::Running, true),
            },
            None => (RunStatus::Running, false),
        };
        Observation {
            status,
            raw_status: raw,
            output: pick(&self.api.output_at, body),
            error: pick(&self.api.error_at, body),
            unknown,
        }
    }

    /// Case-insensitive; `None` for a status the description does not know
    /// (the scheduler counts it as running and logs it once per run).
    fn normalize(&self, raw: &str) -> Option<RunStatus> {
        self.api
            .statuses
            .iter()
            .find(|(r, _)| r.eq_ignore_ascii_case(raw))
            .map(|(_, s)| *s)
    }

    fn vars<'a>(req: &PollRequest<'a>) -> Vars<'a> {
        Vars {
            run_id: None,
            workflow_id: req.workflow_id,
            vendor_run_id: Some(req.vendor_run_id),
            inputs: None,
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The failure kind of a transport error.
fn reqwest_kind(e: &reqwest::Error) -> FailureKind {
    if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_connect() || e.is_request() || e.is_body() {
        FailureKind::Connection
    } else {
        FailureKind::Other
    }
}

/// Describes a transport error without the URL's query (which may carry tokens).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    };
    let mut detail = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = format!("{kind}: {s}");
        source = s.source();
    }
    detail
}

fn id_at(body: &Value, pointers: &[Pointer]) -> Option<String> {
    pointers.iter().find_map(|p| match p.find(body)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

#[async_trait]
impl Provider for Engine {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotent_start: self.api.source.start.idempotent,
            reconcile: self.api.list.is_some(),
            cancel: if self.api.cancel.is_some() {
                CancelSupport::Vendor
            } else {
                CancelSupport::LocalOnly
            },
            output_request: self.api.output.is_some(),
        }
    }

    async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProviderError> {
        let vars = Vars {
            run_id: Some(req.run_id),
            workflow_id: req.workflow_id,
            vendor_run_id: None,
            inputs: Some(req.inputs),
        };
        let idem = self
            .api
            .source
            .start
            .idempotency_header
            .as_deref()
            .map(|h| (h, req.run_id.idempotency_key()));
        let codes = Codes {
            busy: &self.api.source.start.busy,
            refused: &[],
        };
        let answer = self.call(&self.api.start, &vars, idem, codes).await?;
        let vendor_run_id =
            id_at(&answer.body, &self.api.run_id).ok_or_else(|| answer.bad("without a run id"))?;
        let mut observation = self.observe(&answer.body);
        if observation.raw_status.is_none() {
            observation.status = RunStatus::Queued;
        }
        // A start answer's error/output are not final results.
        observation.output = None;
        observation.error = None;
        if observation.status.is_terminal() {
            observation.status = RunStatus::Running;
        }
        tracing::debug!(provider = %self.name, %vendor_run_id, "vendor created the run");
        Ok(Started {
            vendor_run_id,
            observation,
        })
    }

    async fn poll(&self, req: PollRequest<'_>) -> Result<Observation, ProviderError> {
        let answer = self
            .call(&self.api.status, &Self::vars(&req), None, Codes::default())
            .await?;
        // A success without a status is a failed call (retried with
        // backoff, recorded in last_error), never a silent `running`.
        if self.raw_status(&answer.body).is_none() {
            return Err(answer.bad("without a recognizable status"));
        }
        Ok(self.observe(&answer.body))
    }

    async fn output(&self, req: PollRequest<'_>) -> Result<Option<Value>, ProviderError> {
        let Some((r, value)) = &self.api.output else {
            return Ok(None);
        };
        let answer = self
            .call(r, &Self::vars(&req), None, Codes::default())
            .await?;
        if !answer.json {
            return Err(answer.bad("for the output"));
        }
        Ok(pick(&Some(value.clone()), &answer.body))
    }

    async fn cancel(&self, req: PollRequest<'_>) -> Result<CancelOutcome, ProviderError> {
        let (Some((r, result)), Some(spec)) = (&self.api.cancel, &self.api.source.cancel) else {
            return Ok(CancelOutcome::Canceled(None));
        };
        let codes = Codes {
            busy: &spec.busy,
            refused: &spec.refused,
        };
        let answer = match self.call(r, &Self::vars(&req), None, codes).await {
            Ok(a) => a,
            Err(ProviderError::Rejected { body, .. }) => return Ok(CancelOutcome::Refused(body)),
            Err(e) => return Err(e),
        };
        let is = |list: &[String], v: &str| list.iter().any(|x| x.eq_ignore_ascii_case(v));
        if let Some(p) = result {
            let Some(v) = p.find(&answer.body).and_then(Value::as_str) else {
                return Err(answer.bad("without a cancel result"));
            };
            return Ok(if is(&spec.canceled, v) {
                CancelOutcome::Canceled(None)
            } else if is(&spec.ended, v) {
                CancelOutcome::AlreadyEnded
            } else {
                CancelOutcome::Pending
            });
        }
        if self.raw_status(&answer.body).is_none() {
            // A success without a readable status: the vendor took it.
            return Ok(CancelOutcome::Pending);
        }
        let obs = self.observe(&answer.body);
        Ok(match obs.status {
            RunStatus::Canceled => CancelOutcome::Canceled(Some(obs)),
            s if s.is_terminal() => CancelOutcome::AlreadyEnded,
            _ => CancelOutcome::Pending,
        })
    }

    async fn reconcile(&self, req: ReconcileRequest<'_>) -> Result<Reconciled, ProviderError> {
        let (Some((r, items, id, created)), Some(spec)) = (&self.api.list, &self.api.source.list)
        else {
            return Ok(Reconciled::TooMany);
        };
        let vars = Vars {
            run_id: None,
            workflow_id: req.workflow_id,
            vendor_run_id: None,
            inputs: None,
        };
        let answer = self.call(r, &vars, None, Codes::default()).await?;
        let Some(list) = items.find(&answer.body).and_then(Value::as_array) else {
            return Err(answer.bad("without a runs list"));
        };
        let since = Timestamp(
            req.since
                .0
                .saturating_sub(spec.clock_skew.as_millis() as u64),
        );
        let mut out = Vec::new();
        for item in list {
            let Some(vid) = id_at(item, std::slice::from_ref(id)) else {
                continue;
            };
            let at = created.iter().find_map(|p| {
                let v = p.find(item)?.clone();
                serde_json::from_value::<Timestamp>(v).ok()
            });
            // Without a creation time the run cannot be ruled out.
            if at.is_none_or(|t| t >= since) {
                out.push(vid);
            }
        }
        if out.len() >= LIST_PAGE {
            return Ok(Reconciled::TooMany);
        }
        Ok(Reconciled::Candidates(out))
    }
}

#[cfg(test)]
mod tests;
