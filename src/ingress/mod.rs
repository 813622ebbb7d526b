//! Inbound webhooks: verify the sender, check and parse the body, filter,
//! map it to workflow inputs, limit, persist the run. Nothing here knows
//! HTTP types: the handler hands over headers, query and peer address
//! through [`Headers`] and the raw body bytes.

pub mod body;
pub mod filter;
pub mod inflight;
pub mod limit;
pub mod map;
pub mod verify;

use crate::config::{RouteSettings, Settings};
use crate::run::{Run, RunId, RunSpec};
use crate::store::{Created, DedupeKey, Store, StoreError};
use crate::time::Timestamp;
use limit::Admit;
use map::RequestScope;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
use verify::DedupeSource;

/// Read access to what a request carries besides its body: headers (names
/// are lowercase), query parameters and the connection's peer address.
pub trait Headers {
    /// The value of a header, if present and valid UTF-8.
    fn get(&self, name: &str) -> Option<&str>;
    /// The raw bytes of a header, if present (valid UTF-8 or not), so a
    /// present-but-garbled header is not mistaken for a missing one.
    fn raw(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(str::as_bytes)
    }
    /// Every value of a repeated header, in order (a proxy may add its own
    /// `X-Forwarded-For` line instead of appending to the sender's).
    fn all(&self, name: &str) -> Vec<&str> {
        self.get(name).into_iter().collect()
    }
    /// The (percent-decoded) value of a query parameter, if present.
    fn query(&self, _name: &str) -> Option<String> {
        None
    }
    /// The address of the connection's peer (a proxy, or the sender itself).
    fn peer(&self) -> Option<IpAddr> {
        None
    }
}

/// Why a webhook was refused. Each maps to one HTTP status in `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// 404: no such route.
    #[error("no route named {0:?}")]
    RouteNotFound(String),
    /// 401: verification failed (the message names what, never a secret).
    #[error("{0}")]
    Unauthorized(String),
    /// 413: the body is over `server.body_limit`.
    #[error("body is larger than the {0}-byte limit")]
    PayloadTooLarge(usize),
    /// 415: neither JSON nor a URL-encoded form.
    #[error("content type {0:?} is not supported; send application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType(String),
    /// 400: the body (or a form's `payload` field) is not JSON.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// 422: a required input found no value.
    #[error("{0}")]
    MissingInput(String),
    /// 429: over the route's rate or `max_in_flight`; retry after this long.
    #[error("the route's limit is reached; retry after {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// 503: the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A persisted (or deduplicated) trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The new run, or the duplicate's original.
    pub run_id: RunId,
    /// The delivery id was seen before; no new run was created.
    pub duplicate: bool,
}

/// Where a route's delivery id comes from: configured (`dedupe_header`,
/// `dedupe_pointer`), or the sender's own for kinds that define one.
pub fn dedupe_source(route: &RouteSettings) -> Option<DedupeSource> {
    if let Some(h) = &route.dedupe_header {
        return Some(DedupeSource::Header(h.clone()));
    }
    if let Some(p) = &route.dedupe_pointer {
        return Some(DedupeSource::Pointer(p.clone()));
    }
    route.verify.dedupe()
}

fn delivery_id(route: &RouteSettings, req: &dyn Headers, payload: &Value) -> Option<String> {
    let id = match dedupe_source(route)? {
        DedupeSource::Header(h) => req.get(&h)?.trim().to_string(),
        DedupeSource::Pointer(p) => match p.find(payload)? {
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        },
    };
    (!id.is_empty()).then_some(id)
}

/// The checks that need no body, run before any body byte is read: the
/// route exists, header-only verification (a token), and, when that alone
/// authenticates the sender, the content type. Returns the route.
pub fn before_body<'a>(
    settings: &'a Settings,
    route_name: &str,
    headers: &dyn Headers,
    now: Timestamp,
) -> Result<&'a RouteSettings, IngressError> {
    let route = settings
        .routes
        .get(route_name)
        .ok_or_else(|| IngressError::RouteNotFound(route_name.to_string()))?;
    route.verify.before_body(headers, now)?;
    if route.verify.complete_before_body() {
        body::format(headers.raw("content-type"))?;
    }
    Ok(route)
}

/// A verified, parsed and mapped webhook, ready to be persisted.
#[derive(Debug)]
pub struct Prepared {
    run: Run,
    dedupe: Option<DedupeKey>,
    /// The route's `max_in_flight` and what happens over it.
    in_flight: Option<(usize, limit::OverLimit)>,
}

/// What a verified request comes to, before the store.
#[derive(Debug)]
pub enum Outcome {
    /// A run to persist.
    Run(Box<Prepared>),
    /// The route's filter ignored it: answer `status` with the reason; nothing starts.
    Ignored {
        /// The configured answer status (2xx).
        status: u16,
        /// Which rule failed.
        reason: String,
    },
    /// Slack's `url_verification`: answer 200 with the challenge; nothing starts.
    Challenge(String),
}

/// Verifies the body, checks and parses it, filters, maps the inputs,
/// applies the route's limit and builds the run; persists nothing (so it
/// may be cut off at any point).
pub fn prepare(
    settings: &Settings,
    route_name: &str,
    headers: &dyn Headers,
    body: &[u8],
    now: Timestamp,
) -> Result<Outcome, IngressError> {
    let route = settings
        .routes
        .get(route_name)
        .ok_or_else(|| IngressError::RouteNotFound(route_name.to_string()))?;
    route.verify.with_body(headers, body, now)?;
    let format = body::format(headers.raw("content-type"))?;
    let payload = body::parse(format, body)?;
    if route.verify.has_slack()
        && payload.get("type").and_then(Value::as_str) == Some("url_verification")
    {
        if let Some(c) = payload.get("challenge").and_then(Value::as_str) {
            return Ok(Outcome::Challenge(c.to_string()));
        }
    }
    let scope = RequestScope {
        payload: &payload,
        req: headers,
    };
    if let Some(rule) = &route.filter {
        if let Err(reason) = rule.check(&scope) {
            return Ok(Outcome::Ignored {
                status: route.ignored_status,
                reason,
            });
        }
    }
    let inputs =
        map::inputs(&route.inputs, &payload, headers).map_err(IngressError::MissingInput)?;
    let start_at = match route.limiter.admit() {
        Admit::Now => now,
        Admit::Later(d) => now.plus(d),
        Admit::Refuse(d) => return Err(IngressError::RateLimited(d)),
    };

    let delivery_id = delivery_id(route, headers, &payload);
    let dedupe = delivery_id.as_ref().map(|id| DedupeKey {
        route: route_name.to_string(),
        delivery_id: id.clone(),
        expires_at: now.plus(route.dedupe_ttl),
    });
    let id = RunId::new();
    let deadline = start_at.plus(settings.run_timeout(route));
    let spec = RunSpec {
        route: route_name.to_string(),
        provider: route.provider.clone(),
        workflow_id: route.workflow_id.clone(),
        inputs,
        delivery_id,
    };
    // A queued run stays `accepted` and comes due at its turn in the rate.
    let run = Run::accepted(id, spec, now, deadline).due_from(start_at);
    let in_flight = route
        .limiter
        .max_in_flight()
        .map(|m| (m, route.limiter.mode()));
    Ok(Outcome::Run(Box::new(Prepared {
        run,
        dedupe,
        in_flight,
    })))
}

/// Durably persists a prepared run (or finds the duplicate's original),
/// after the route's `max_in_flight` admits it (429 otherwise, nothing
/// persisted). Returns only once the outcome is durable; callers must await
/// it to the end, never cut it off, so that an answer always matches the store.
pub async fn persist(
    store: &dyn Store,
    gate: &inflight::Gate,
    prepared: Prepared,
) -> Result<Accepted, IngressError> {
    let id = prepared.run.id();
    if let Some((max, mode)) = prepared.in_flight {
        if !gate.admit(prepared.run.route(), id, max, mode) {
            return Err(IngressError::RateLimited(Duration::from_secs(1)));
        }
    }
    let created = store.create_run(&prepared.run, prepared.dedupe).await;
    match created {
        Ok(Created::New) => Ok(Accepted {
            run_id: id,
            duplicate: false,
        }),
        Ok(Created::Duplicate(existing)) => {
            gate.cancel(id);
            Ok(Accepted {
                run_id: existing,
                duplicate: true,
            })
        }
        Err(e) => {
            gate.cancel(id);
            Err(e.into())
        }
    }
}
