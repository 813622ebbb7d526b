//! Inbound webhooks: verify the sender, check and parse the body, map it to
//! workflow inputs, persist the run. Nothing here knows HTTP types: the
//! handler hands over headers through [`Headers`] and the raw body bytes.

pub mod map;
pub mod verify;

use crate::config::{RouteSettings, Settings, VerifySettings};
use crate::run::{Run, RunId, RunSpec};
use crate::store::{Created, DedupeKey, Store, StoreError};
use crate::time::Timestamp;
use verify::Kind;

/// Read access to request headers (names are lowercase).
pub trait Headers {
    /// The value of a header, if present and valid UTF-8.
    fn get(&self, name: &str) -> Option<&str>;
    /// The raw bytes of a header, if present (valid UTF-8 or not), so a
    /// present-but-garbled header is not mistaken for a missing one.
    fn raw(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(str::as_bytes)
    }
}

/// Why a webhook was refused. Each maps to one HTTP status in `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("no route named {0:?}")]
    RouteNotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("body is larger than the {0}-byte limit")]
    PayloadTooLarge(usize),
    #[error("content type {0:?} is not supported; send application/json")]
    UnsupportedMediaType(String),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    MissingInput(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A persisted (or deduplicated) trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub run_id: RunId,
    /// The delivery id was seen before; no new run was created.
    pub duplicate: bool,
}

/// The header carrying a route's delivery id: configured, or the sender's
/// own for signature kinds that define one.
pub fn dedupe_header(route: &RouteSettings) -> Option<&str> {
    route.dedupe_header.as_deref().or(match route.verify {
        VerifySettings::Github { .. } => Some("x-github-delivery"),
        VerifySettings::StandardWebhooks { .. } => Some("webhook-id"),
        _ => None,
    })
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
        check_content_type(headers.raw("content-type"))?;
    }
    Ok(route)
}

/// A verified, parsed and mapped webhook, ready to be persisted.
#[derive(Debug)]
pub struct Prepared {
    run: Run,
    dedupe: Option<DedupeKey>,
}

/// Verifies the body, checks and parses it, maps the inputs and builds the
/// run; persists nothing (so it may be cut off at any point).
pub fn prepare(
    settings: &Settings,
    route_name: &str,
    headers: &dyn Headers,
    body: &[u8],
    now: Timestamp,
) -> Result<Prepared, IngressError> {
    let route = settings
        .routes
        .get(route_name)
        .ok_or_else(|| IngressError::RouteNotFound(route_name.to_string()))?;
    route.verify.with_body(headers, body, now)?;
    check_content_type(headers.raw("content-type"))?;
    let payload: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| IngressError::InvalidJson(e.to_string()))?;
    let inputs =
        map::inputs(&route.inputs, &payload, headers).map_err(IngressError::MissingInput)?;

    let delivery_id = dedupe_header(route)
        .and_then(|h| headers.get(h))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let dedupe = delivery_id.as_ref().map(|id| DedupeKey {
        route: route_name.to_string(),
        delivery_id: id.clone(),
        expires_at: now.plus(route.dedupe_ttl),
    });
    let id = RunId::new();
    let deadline = now.plus(settings.run_timeout(route));
    let spec = RunSpec {
        route: route_name.to_string(),
        provider: route.provider.clone(),
        workflow_id: route.workflow_id.clone(),
        inputs,
        delivery_id,
    };
    Ok(Prepared {
        run: Run::accepted(id, spec, now, deadline),
        dedupe,
    })
}

/// Durably persists a prepared run (or finds the duplicate's original).
/// Returns only once the outcome is durable; callers must await it to the
/// end, never cut it off, so that an answer always matches the store.
pub async fn persist(store: &dyn Store, prepared: Prepared) -> Result<Accepted, IngressError> {
    let id = prepared.run.id();
    match store.create_run(&prepared.run, prepared.dedupe).await? {
        Created::New => Ok(Accepted {
            run_id: id,
            duplicate: false,
        }),
        Created::Duplicate(existing) => Ok(Accepted {
            run_id: existing,
            duplicate: true,
        }),
    }
}

/// Verifies, parses, maps and durably persists one webhook. Returns only
/// once the run (or the duplicate's original) is durable.
pub async fn accept(
    settings: &Settings,
    store: &dyn Store,
    route_name: &str,
    headers: &impl Headers,
    body: &[u8],
    now: Timestamp,
) -> Result<Accepted, IngressError> {
    before_body(settings, route_name, headers, now)?;
    let prepared = prepare(settings, route_name, headers, body, now)?;
    persist(store, prepared).await
}

/// JSON (`application/json`, `application/*+json`) or no content type at
/// all. A present but unparseable one (not UTF-8, not a MIME type) is refused.
fn check_content_type(ct: Option<&[u8]>) -> Result<(), IngressError> {
    let Some(raw) = ct else { return Ok(()) };
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(IngressError::UnsupportedMediaType(
            String::from_utf8_lossy(raw).into_owned(),
        ));
    };
    let refuse = || IngressError::UnsupportedMediaType(text.to_string());
    let m: mime::Mime = text.trim().parse().map_err(|_| refuse())?;
    let json = m.type_() == mime::APPLICATION
        && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON));
    if json {
        Ok(())
    } else {
        Err(refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let ct = |s: &str| check_content_type(Some(s.as_bytes()));
        assert!(check_content_type(None).is_ok());
        assert!(ct("application/json; charset=utf-8").is_ok());
        assert!(ct("Application/JSON").is_ok());
        assert!(ct("application/cloudevents+json").is_ok());
        assert!(ct("application/x-www-form-urlencoded").is_err());
        assert!(ct("text/plain").is_err());
        assert!(ct("").is_err(), "empty is not a MIME type");
        assert!(ct("json").is_err(), "no subtype");
        assert!(ct("application/json;;;=").is_err());
        assert!(check_content_type(Some(b"application/json\xff")).is_err());
    }
}
