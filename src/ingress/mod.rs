//! Inbound webhooks: verify the sender, check and parse the body, map it to
//! workflow inputs, persist the run. Nothing here knows HTTP types: the
//! handler hands over headers through [`Headers`] and the raw body bytes.

pub mod map;
pub mod verify;

use crate::config::{RouteSettings, Settings, VerifySettings};
use crate::run::{Run, RunId, RunSpec};
use crate::store::{Created, DedupeKey, Store, StoreError};
use crate::time::Timestamp;

/// Read access to request headers (names are lowercase).
pub trait Headers {
    /// The value of a header, if present and valid UTF-8.
    fn get(&self, name: &str) -> Option<&str>;
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
    let route = settings
        .routes
        .get(route_name)
        .ok_or_else(|| IngressError::RouteNotFound(route_name.to_string()))?;
    verify::verify(&route.verify, headers, body, now)?;
    check_content_type(headers.get("content-type"))?;
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
    let run = Run::accepted(id, spec, now, deadline);
    match store.create_run(&run, dedupe).await? {
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

/// JSON (`application/json`, `application/*+json`) or no content type at all.
fn check_content_type(ct: Option<&str>) -> Result<(), IngressError> {
    let Some(ct) = ct else { return Ok(()) };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if ok {
        Ok(())
    } else {
        Err(IngressError::UnsupportedMediaType(ct.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(check_content_type(None).is_ok());
        assert!(check_content_type(Some("application/json; charset=utf-8")).is_ok());
        assert!(check_content_type(Some("Application/JSON")).is_ok());
        assert!(check_content_type(Some("application/cloudevents+json")).is_ok());
        assert!(check_content_type(Some("application/x-www-form-urlencoded")).is_err());
        assert!(check_content_type(Some("text/plain")).is_err());
    }
}
