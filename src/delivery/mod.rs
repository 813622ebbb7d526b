//! Signed callbacks: build the event, sign it (Standard Webhooks), send one
//! attempt, decide when the next one is due.
//!
//! The event body is a pure function of the finished run, so every attempt
//! sends the same bytes under the same `webhook-id`; only
//! `webhook-timestamp` and the signature change per attempt.

pub mod alert;
pub mod endpoint;
pub mod pause;

use crate::backoff::{honour_retry_after, parse_retry_after, spread};
use crate::config::DeliverySettings;
use crate::run::{Attempt, Delivery, Run};
use crate::signing::WebhookKey;
use crate::time::Timestamp;
use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use serde_json::json;
use std::time::{Duration, Instant};

pub mod guard;

/// Largest part of a receiver's answer kept with an attempt.
const MAX_RESPONSE: usize = 1024;

/// The `User-Agent` of callbacks.
pub const AGENT: &str = concat!("runbridge/", env!("CARGO_PKG_VERSION"));

/// The body of the event a delivery carries: the run's terminal event, or
/// a `run.started`/`run.waiting` event as the run was when it happened. Every
/// attempt of one delivery sends the same bytes.
pub fn event_body(run: &Run, d: &Delivery) -> Bytes {
    let (kind, at, status, raw_status, terminal) = match run.event_of(d) {
        Some(e) if e.kind == "run.waiting" || e.kind == "run.started" => {
            (e.kind.as_str(), e.at, e.status, e.raw_status.clone(), false)
        }
        _ => (
            run.status().event_type(),
            run.finished_at().unwrap_or(run.updated_at()),
            run.status(),
            run.raw_status().clone(),
            true,
        ),
    };
    let mut data = json!({
        "run_id": run.id().to_string(),
        "route": run.route(),
        "provider": run.provider(),
        "workflow_id": run.workflow_id(),
        "vendor_run_id": run.vendor_run_id(),
        "status": status,
        "raw_status": raw_status,
        "output": if terminal { run.output().clone() } else { None },
        "error": if terminal { run.error().clone() } else { None },
        "created_at": run.created_at(),
        "started_at": run.started_at(),
        "finished_at": if terminal { run.finished_at() } else { None },
        "delivery_id": run.delivery_id(),
        "event_id": d.webhook_id,
    });
    if let (true, Some(c)) = (terminal, &run.cancel()) {
        if c.local_only {
            data["vendor_run_may_continue"] = json!(true);
        }
    }
    let event = json!({"type": kind, "timestamp": at, "data": data});
    Bytes::from(serde_json::to_vec(&event).unwrap_or_default())
}

/// A callback's custom headers as sent (configured values were checked at
/// load, so none is skipped in practice).
pub fn header_map(headers: &[crate::config::CallbackHeader]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for h in headers {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(h.value.expose()) {
            map.insert(h.name.clone(), v);
        }
    }
    map
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub attempt: Attempt,
    pub succeeded: bool,
    /// The receiver asked to wait (429/503 `Retry-After`).
    pub retry_after: Option<Duration>,
    /// 410 Gone: the receiver wants no more attempts.
    pub gone: bool,
    /// The destination was refused (see [`guard`]): terminal, never retried.
    pub refused: bool,
}

/// Sends one signed attempt, signed with every key (space-separated, for
/// rotation) and carrying the callback's own `headers`. Only a 2xx counts
/// as delivered; redirects are not followed (the shared client has
/// redirects off) and count as failures.
pub async fn attempt(
    client: &reqwest::Client,
    url: &str,
    keys: &[WebhookKey],
    headers: &HeaderMap,
    webhook_id: &str,
    body: Bytes,
    s: &DeliverySettings,
) -> Outcome {
    let timeout = s.timeout;
    let at = Timestamp::now();
    let started = Instant::now();
    // IP literals never reach the guarded resolver: check them here.
    if let Err(r) = guard::check_literal(url, &s.allow_destinations) {
        return refused(at, started, r);
    }
    let signature = crate::signing::sign_all(keys, webhook_id, at.unix_seconds(), &body);
    let result = client
        .post(url)
        .timeout(timeout)
        .headers(headers.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, AGENT)
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", at.unix_seconds().to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match result {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let (b, _) = crate::read::bounded(
                resp,
                s.max_response_bytes,
                &crate::read::RECEIVER_BYTES_READ,
                "receiver",
            )
            .await
            .unwrap_or_default();
            let end = b.len().min(MAX_RESPONSE);
            let text = Some(String::from_utf8_lossy(&b[..end]).into_owned());
            let succeeded = (200..300).contains(&code);
            Outcome {
                attempt: Attempt {
                    at,
                    duration_ms: started.elapsed().as_millis() as u64,
                    status_code: Some(code),
                    error: (!succeeded).then(|| format!("receiver answered HTTP {code}")),
                    response: text.filter(|t| !t.is_empty()),
                },
                succeeded,
                retry_after,
                gone: code == 410,
                refused: false,
            }
        }
        Err(e) => {
            if let Some(r) = guard::refusal_of(&e) {
                return refused(at, started, r);
            }
            let kind = if e.is_timeout() {
                format!("timed out after {}", humantime::format_duration(timeout))
            } else if e.is_connect() {
                "connection failed".to_string()
            } else {
                "request failed".to_string()
            };
            let mut detail = kind.clone();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail = format!("{kind}: {s}");
                source = s.source();
            }
            Outcome {
                attempt: Attempt {
                    at,
                    duration_ms: started.elapsed().as_millis() as u64,
                    status_code: None,
                    error: Some(detail),
                    response: None,
                },
                succeeded: false,
                retry_after: None,
                gone: false,
                refused: false,
            }
        }
    }
}

/// The outcome of a refused destination: nothing was sent.
fn refused(at: Timestamp, started: Instant, r: guard::Refused) -> Outcome {
    Outcome {
        attempt: Attempt {
            at,
            duration_ms: started.elapsed().as_millis() as u64,
            status_code: None,
            error: Some(r.to_string()),
            response: None,
        },
        succeeded: false,
        retry_after: None,
        gone: false,
        refused: true,
    }
}

/// The client for callbacks: like the providers' client, plus the SSRF
/// guard in its resolver, so every name is checked where it is connected.
pub fn callback_client(
    base: reqwest::ClientBuilder,
    allow: guard::AllowSource,
) -> reqwest::Result<reqwest::Client> {
    base.dns_resolver(std::sync::Arc::new(guard::GuardedResolver::new(allow)))
        .build()
}

/// When to try again after `made` failed attempts, or `None` when the
/// schedule is exhausted (or the receiver answered 410) and the delivery is dead.
pub fn next_attempt(
    now: Timestamp,
    made: usize,
    outcome: &Outcome,
    s: &DeliverySettings,
) -> Option<Timestamp> {
    if outcome.gone || outcome.refused {
        return None;
    }
    let delay = s.schedule.get(made)?;
    let delay = honour_retry_after(
        spread(*delay, s.jitter),
        outcome.retry_after,
        s.max_retry_after,
    );
    Some(now.plus(delay))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Observation, RunId, RunSpec, RunStatus};

    fn settings() -> DeliverySettings {
        DeliverySettings {
            schedule: vec![
                Duration::ZERO,
                Duration::from_secs(5),
                Duration::from_secs(300),
            ],
            jitter: 0.0,
            timeout: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(60),
            allow_destinations: Vec::new(),
            max_response_bytes: 65_536,
        }
    }

    fn failed(retry_after: Option<Duration>, gone: bool) -> Outcome {
        Outcome {
            attempt: Attempt {
                at: Timestamp(0),
                duration_ms: 0,
                status_code: Some(500),
                error: None,
                response: None,
            },
            succeeded: false,
            retry_after,
            gone,
            refused: false,
        }
    }

    #[test]
    fn schedule_then_dead() {
        let s = settings();
        let t = Timestamp(1_000);
        assert_eq!(
            next_attempt(t, 1, &failed(None, false), &s),
            Some(Timestamp(6_000))
        );
        assert_eq!(
            next_attempt(t, 2, &failed(None, false), &s),
            Some(Timestamp(301_000))
        );
        assert_eq!(next_attempt(t, 3, &failed(None, false), &s), None);
        assert_eq!(
            next_attempt(t, 1, &failed(None, true), &s),
            None,
            "410 stops"
        );
        assert_eq!(
            next_attempt(t, 1, &failed(Some(Duration::from_secs(30)), false), &s),
            Some(Timestamp(31_000)),
            "Retry-After honoured"
        );
        assert_eq!(
            next_attempt(t, 1, &failed(Some(Duration::from_secs(9999)), false), &s),
            Some(Timestamp(61_000)),
            "and clamped"
        );
    }

    #[test]
    fn event_is_stable_and_complete() {
        let spec = RunSpec {
            route: "gh".into(),
            provider: "slate".into(),
            workflow_id: "wf".into(),
            inputs: json!({"a": 1}),
            delivery_id: Some("d-1".into()),
        };
        let mut run = Run::accepted(RunId::new(), spec, Timestamp(1_000), Timestamp(99_000));
        run.finish(
            Timestamp(5_000),
            Observation {
                status: RunStatus::Succeeded,
                raw_status: Some("COMPLETED".into()),
                output: Some(json!({"x":1})),
                error: None,
                unknown: false,
            },
            &[crate::run::Target {
                url: "http://r".into(),
                events: vec!["run.succeeded".into()],
            }],
        )
        .unwrap();
        let d = &run.deliveries()[0];
        let a = event_body(&run, d);
        assert_eq!(a, event_body(&run, d));
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["type"], "run.succeeded");
        assert_eq!(v["data"]["raw_status"], "COMPLETED");
        assert_eq!(v["data"]["delivery_id"], "d-1");
        assert_eq!(v["data"]["output"]["x"], 1);
        assert_eq!(
            v["data"]["event_id"],
            format!("{}_1", run.id().webhook_id())
        );
    }
}
