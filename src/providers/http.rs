//! The engine for JSON workflow APIs: a declarative [`ApiSpec`] says where
//! things are; vendor presets fill it in. Strict in what it sends, tolerant
//! in what it accepts (unknown fields and statuses).

use super::{FailureKind, PollRequest, Provider, ProviderError, StartRequest, Started};
use crate::backoff::parse_retry_after;
use crate::config::SlateSettings;
use crate::run::{Observation, RunStatus};
use crate::secret::{Redactor, Secret};
use async_trait::async_trait;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

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

/// Where a JSON workflow API keeps things.
#[derive(Debug, Clone)]
pub struct ApiSpec {
    /// `POST` path; `{workflow_id}` is substituted.
    pub start_path: String,
    /// Body field wrapping the inputs (`{"inputs": ...}`), or the inputs as the body.
    pub inputs_field: Option<String>,
    /// JSON pointers tried in order for the vendor run id in the start answer.
    pub run_id_pointers: Vec<String>,
    /// `GET` path; `{workflow_id}` and `{run_id}` are substituted.
    pub status_path: String,
    /// JSON pointers tried in order for the raw status.
    pub status_pointers: Vec<String>,
    pub output_pointer: Option<String>,
    pub error_pointer: Option<String>,
    /// Raw status (compared case-insensitively) to normalized status.
    pub statuses: Vec<(String, RunStatus)>,
    /// Header carrying our idempotency key on start, if the vendor has one.
    pub idempotency_header: Option<String>,
}

/// A provider driven by an [`ApiSpec`].
pub struct HttpProvider {
    spec: ApiSpec,
    base_url: String,
    headers: HeaderMap,
    timeout: Duration,
    client: reqwest::Client,
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

/// The Slate preset, exactly as documented (see shared/providers.md).
pub fn slate(s: &SlateSettings, client: reqwest::Client) -> HttpProvider {
    let spec = ApiSpec {
        start_path: "/workflows/{workflow_id}/runs".into(),
        inputs_field: Some("inputs".into()),
        run_id_pointers: vec!["/run_id".into()],
        status_path: "/workflow-runs/{run_id}".into(),
        status_pointers: vec!["/status".into()],
        output_pointer: Some("/output".into()),
        error_pointer: Some("/error".into()),
        statuses: [
            ("QUEUED", RunStatus::Queued),
            ("STARTING", RunStatus::Starting),
            ("RUNNING", RunStatus::Running),
            ("COMPLETED", RunStatus::Succeeded),
            ("FAILED", RunStatus::Failed),
            ("CANCELED", RunStatus::Canceled),
            ("CANCELLED", RunStatus::Canceled),
        ]
        .into_iter()
        .map(|(raw, st)| (raw.to_string(), st))
        .collect(),
        idempotency_header: Some("Idempotency-Key".into()),
    };
    let mut extra = Vec::new();
    if let Some(ws) = &s.workspace_id {
        extra.push(("X-Workspace-Id".to_string(), ws.clone()));
    }
    HttpProvider::new(spec, &s.base_url, Some(&s.token), &extra, s.timeout, client)
}

impl HttpProvider {
    /// An engine instance; `token` is sent as a bearer token.
    pub fn new(
        spec: ApiSpec,
        base_url: &str,
        token: Option<&Secret>,
        extra_headers: &[(String, String)],
        timeout: Duration,
        client: reqwest::Client,
    ) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", t.expose())) {
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
        }
        for (k, v) in extra_headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        HttpProvider {
            spec,
            base_url: base_url.trim_end_matches('/').to_string(),
            headers,
            timeout,
            client,
            redactor: Arc::new(Redactor::default()),
        }
    }

    /// Scrubs the secrets `redactor` knows from vendor text before truncating it.
    pub fn with_redactor(mut self, redactor: Arc<Redactor>) -> Self {
        self.redactor = redactor;
        self
    }

    fn url(&self, template: &str, workflow_id: &str, run_id: &str) -> String {
        let path = template
            .replace(
                "{workflow_id}",
                &utf8_percent_encode(workflow_id, SEGMENT).to_string(),
            )
            .replace(
                "{run_id}",
                &utf8_percent_encode(run_id, SEGMENT).to_string(),
            );
        format!("{}{}", self.base_url, path)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Answer, ProviderError> {
        let resp = req
            .headers(self.headers.clone())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| ProviderError::Transient {
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
        let bytes = resp.bytes().await.map_err(|e| ProviderError::Transient {
            kind: reqwest_kind(&e),
            detail: format!("reading response: {}", describe_reqwest(&e)),
            retry_after: None,
        })?;
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
        let kind = match code {
            429 => Some(FailureKind::RateLimited),
            408 => Some(FailureKind::Timeout),
            _ if status.is_server_error() => Some(FailureKind::ServerError),
            _ => None,
        };
        if let Some(kind) = kind {
            Err(ProviderError::Transient {
                kind,
                detail: format!("vendor answered HTTP {code}: {}", answer.excerpt()),
                retry_after,
            })
        } else if code == 401 || code == 403 {
            Err(ProviderError::Unauthorized {
                status: code,
                detail: format!(
                    "vendor refused our credentials (HTTP {code}): {}",
                    answer.excerpt()
                ),
            })
        } else {
            Err(ProviderError::Rejected {
                status: code,
                body: answer.body,
            })
        }
    }

    /// The raw status of an answer, if it has one where the spec says.
    fn raw_status(&self, body: &Value) -> Option<String> {
        self.spec
            .status_pointers
            .iter()
            .find_map(|p| body.pointer(p).and_then(Value::as_str))
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    }

    fn observe(&self, body: &Value) -> Observation {
        let raw = self.raw_status(body);
        let status = match &raw {
            Some(r) => self.normalize(r),
            None => RunStatus::Running,
        };
        let pick = |p: &Option<String>| {
            p.as_ref()
                .and_then(|p| body.pointer(p))
                .filter(|v| !v.is_null())
                .cloned()
        };
        Observation {
            status,
            raw_status: raw,
            output: pick(&self.spec.output_pointer),
            error: pick(&self.spec.error_pointer),
        }
    }

    /// Unknown statuses count as running: never terminal by accident; the
    /// run timeout bounds them.
    fn normalize(&self, raw: &str) -> RunStatus {
        self.spec
            .statuses
            .iter()
            .find(|(r, _)| r.eq_ignore_ascii_case(raw))
            .map(|(_, s)| *s)
            .unwrap_or_else(|| {
                tracing::warn!(
                    raw_status = raw,
                    "unknown vendor status, treating as running"
                );
                RunStatus::Running
            })
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

#[async_trait]
impl Provider for HttpProvider {
    async fn start(&self, req: StartRequest<'_>) -> Result<Started, ProviderError> {
        let url = self.url(&self.spec.start_path, req.workflow_id, "");
        let body = match &self.spec.inputs_field {
            Some(field) => json!({ field.as_str(): req.inputs }),
            None => req.inputs.clone(),
        };
        let mut builder = self.client.post(url).json(&body);
        if let Some(h) = &self.spec.idempotency_header {
            builder = builder.header(h.as_str(), req.run_id.idempotency_key());
        }
        let answer = self.send(builder).await?;
        // With an idempotency key, asking again returns the same run.
        let vendor_run_id = self
            .spec
            .run_id_pointers
            .iter()
            .find_map(|p| match answer.body.pointer(p)? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .ok_or_else(|| answer.bad("without a run id"))?;
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
        Ok(Started {
            vendor_run_id,
            observation,
        })
    }

    async fn poll(&self, req: PollRequest<'_>) -> Result<Observation, ProviderError> {
        let url = self.url(&self.spec.status_path, req.workflow_id, req.vendor_run_id);
        let answer = self.send(self.client.get(url)).await?;
        // A success without a status is a failed call (retried with
        // backoff, recorded in last_error), never a silent `running`.
        if self.raw_status(&answer.body).is_none() {
            return Err(answer.bad("without a recognizable status"));
        }
        Ok(self.observe(&answer.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> HttpProvider {
        let s = SlateSettings {
            base_url: "http://x/api/".into(),
            token: Secret::new("slat_1"),
            workspace_id: None,
            timeout: Duration::from_secs(1),
        };
        slate(&s, reqwest::Client::new())
    }

    #[test]
    fn urls_are_encoded() {
        let e = engine();
        assert_eq!(
            e.url(&e.spec.start_path, "wf/1 x", ""),
            "http://x/api/workflows/wf%2F1%20x/runs"
        );
        assert_eq!(
            e.url(&e.spec.status_path, "", "r-1"),
            "http://x/api/workflow-runs/r-1"
        );
    }

    #[test]
    fn observes_slate_shapes_tolerantly() {
        let e = engine();
        let done = json!({"run_id":"r","status":"completed","output":{"share_url":"u"},"error":null,"extra":1});
        let o = e.observe(&done);
        assert_eq!(o.status, RunStatus::Succeeded, "case-insensitive");
        assert_eq!(o.output, Some(json!({"share_url":"u"})));
        assert_eq!(o.error, None);
        let failed = json!({"status":"FAILED","error":{"code":"WORKFLOW_FAILED","message":"m"}});
        assert_eq!(e.observe(&failed).error.unwrap()["code"], "WORKFLOW_FAILED");
        let odd = e.observe(&json!({"status":"PAUSED_FOR_LUNCH"}));
        assert_eq!(
            (odd.status, odd.raw_status.as_deref()),
            (RunStatus::Running, Some("PAUSED_FOR_LUNCH"))
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_a_transient_connection_failure() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let s = SlateSettings {
            base_url: format!("http://127.0.0.1:{port}/api"),
            token: Secret::new("slat_1"),
            workspace_id: None,
            timeout: Duration::from_secs(2),
        };
        let e = slate(&s, reqwest::Client::new());
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

    #[test]
    fn token_never_in_debug() {
        let e = engine();
        let dbg = format!("{:?}", e.headers);
        assert!(!dbg.contains("slat_1"), "{dbg}");
    }
}
