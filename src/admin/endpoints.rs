//! Callback endpoints (one URL across routes and runs): list them, pause
//! and resume them (persisted, so a pause survives a restart), and send a
//! signed `test` event.

use super::view::{EndpointView, TestResult};
use super::{endpoint_id, Admin, AdminError, AdminResult};
use crate::config::CallbackSettings;
use crate::delivery::pause::META_KEY;
use crate::run::Phase;
use crate::secret::redact_url;
use crate::store::RunQuery;
use crate::time::Timestamp;
use std::collections::BTreeMap;

/// Pages of 500 unfinished runs per phase a resume looks through.
const MAX_RELEASE_PAGES: usize = 200;

/// One configured endpoint: its URL, the routes using it, and the first
/// callback's settings (keys, headers) for a test event.
struct Found {
    url: String,
    routes: Vec<String>,
    callback: CallbackSettings,
}

impl Admin {
    /// Every configured callback URL, by endpoint id.
    fn configured(&self) -> BTreeMap<String, Found> {
        let topo = self.inner.topology.load();
        let mut out: BTreeMap<String, Found> = BTreeMap::new();
        for (name, r) in &topo.settings.routes {
            for c in &r.callbacks {
                let f = out.entry(endpoint_id(&c.url)).or_insert_with(|| Found {
                    url: c.url.clone(),
                    routes: Vec::new(),
                    callback: c.clone(),
                });
                if !f.routes.contains(name) {
                    f.routes.push(name.clone());
                }
            }
        }
        out
    }

    fn endpoint_view(&self, id: &str, f: &Found) -> EndpointView {
        let shown = redact_url(&f.url);
        let breaker_open = self.inner.health.open_breakers().contains(&shown);
        EndpointView {
            id: id.to_string(),
            url: shown,
            routes: f.routes.clone(),
            paused: self.inner.scheduler.paused().is_paused_id(id),
            breaker_open,
        }
    }

    fn find_endpoint(&self, id: &str) -> AdminResult<Found> {
        self.configured()
            .remove(id)
            .ok_or_else(|| AdminError::NotFound {
                code: "endpoint_not_found",
                message: format!(
                    "no configured callback endpoint with id {id:?} (see GET /endpoints)"
                ),
            })
    }

    /// Loads the paused endpoints persisted by an earlier run (at start).
    pub async fn load_paused(&self) -> AdminResult<usize> {
        let raw = self.blocking(|s| s.get_meta(META_KEY)).await?;
        let ids: Vec<String> = match raw {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| AdminError::Internal(format!("stored paused endpoints: {e}")))?,
            None => Vec::new(),
        };
        let n = ids.len();
        self.inner.scheduler.paused().set_all(ids);
        Ok(n)
    }

    /// `GET /endpoints`: every configured callback URL.
    pub async fn endpoints(&self) -> AdminResult<Vec<EndpointView>> {
        Ok(self
            .configured()
            .iter()
            .map(|(id, f)| self.endpoint_view(id, f))
            .collect())
    }

    /// Pauses or resumes an endpoint, persisted before it takes effect on
    /// a resume (and before it is answered either way).
    async fn set_paused(&self, id: &str, paused: bool) -> AdminResult<EndpointView> {
        let found = self.find_endpoint(id)?;
        let set = self.inner.scheduler.paused();
        // One writer at a time, so the persisted set is the in-memory one.
        let _guard = self.inner.pause_lock.lock().await;
        let was = set.is_paused_id(id);
        set.set(id, paused);
        let value = serde_json::to_vec(&set.all())
            .map_err(|e| AdminError::Internal(format!("encoding paused endpoints: {e}")))?;
        if let Err(e) = self.inner.store.put_meta(META_KEY, Some(value)).await {
            set.set(id, was);
            return Err(e.into());
        }
        let url = redact_url(&found.url);
        if paused {
            tracing::info!(endpoint = id, url = %url, "callback endpoint paused by an operator; its deliveries wait");
        } else {
            let released =
                self.inner.scheduler.release_paused(id).await + self.release_unnoted(id).await;
            tracing::info!(endpoint = id, url = %url, released, "callback endpoint resumed by an operator");
            self.inner.wake.notify_one();
        }
        Ok(self.endpoint_view(id, &found))
    }

    /// Runs holding deliveries for a resumed endpoint that the scheduler
    /// did not note (held before a restart): found among the unfinished
    /// runs (tracking or terminal) and made due now.
    async fn release_unnoted(&self, id: &str) -> usize {
        let now = Timestamp::now();
        let mut found = Vec::new();
        for phase in [Phase::Terminal, Phase::Tracking] {
            let mut before = None;
            for _ in 0..MAX_RELEASE_PAGES {
                let q = RunQuery {
                    phase: Some(phase),
                    before,
                    limit: 500,
                    ..Default::default()
                };
                let Ok(page) = self.blocking(move |s| s.list_runs(&q)).await else {
                    break;
                };
                before = page.last().map(|r| r.id());
                found.extend(
                    page.iter()
                        .filter(|r| {
                            r.deliveries().iter().any(|d| {
                                d.state.is_open()
                                    && d.next_attempt_at.is_some_and(|t| t > now)
                                    && endpoint_id(&d.url) == id
                            })
                        })
                        .map(|r| r.id()),
                );
                if page.len() < 500 {
                    break;
                }
            }
        }
        let mut released = 0;
        for run_id in found {
            let result = self
                .inner
                .scheduler
                .modify_run(run_id, |r| {
                    let urls: Vec<String> = r
                        .deliveries()
                        .iter()
                        .filter(|d| endpoint_id(&d.url) == id)
                        .map(|d| d.url.clone())
                        .collect();
                    let mut changed = false;
                    for u in urls {
                        changed |= r.release_held(&u, now);
                    }
                    Ok::<_, std::convert::Infallible>(changed)
                })
                .await;
            released += usize::from(result.is_ok());
        }
        released
    }

    /// `POST /endpoints/{id}/pause`: deliveries to it wait (none dropped,
    /// none counted as a failed attempt) until it is resumed.
    pub async fn pause_endpoint(&self, id: &str) -> AdminResult<EndpointView> {
        self.set_paused(id, true).await
    }

    /// `POST /endpoints/{id}/resume`: held deliveries flow at once.
    pub async fn resume_endpoint(&self, id: &str) -> AdminResult<EndpointView> {
        self.set_paused(id, false).await
    }

    /// `POST /endpoints/{id}/test`: a signed `test` event sent now (also to
    /// a paused endpoint), signed and with headers like the first route's
    /// callback to it; answers with the attempt's outcome.
    pub async fn test_endpoint(&self, id: &str) -> AdminResult<TestResult> {
        let found = self.find_endpoint(id)?;
        let now = Timestamp::now();
        let webhook_id = format!("test_{}", ulid::Ulid::new());
        let body = serde_json::json!({
            "type": "test",
            "timestamp": now,
            "data": {
                "endpoint_id": id,
                "routes": found.routes,
                "message": "a test event sent by a runbridge operator",
            }
        });
        let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let ds = self.inner.topology.load().settings.delivery.clone();
        let c = &found.callback;
        let o = crate::delivery::attempt(
            &self.inner.client,
            &found.url,
            &c.keys,
            &crate::delivery::header_map(&c.headers),
            &webhook_id,
            body,
            &ds,
        )
        .await;
        let redactor = self.inner.topology.load().redactor.clone();
        let secrets = super::present::url_secrets(&found.url);
        let url_redactor = crate::secret::Redactor::new(secrets.iter().map(String::as_str));
        let scrub = |t: String| url_redactor.scrub(&redactor.scrub(&t));
        tracing::info!(
            endpoint = id,
            delivered = o.succeeded,
            "test event sent by an operator"
        );
        Ok(TestResult {
            delivered: o.succeeded,
            status_code: o.attempt.status_code,
            duration_ms: o.attempt.duration_ms,
            error: o.attempt.error.map(scrub),
            response: o.attempt.response.map(scrub),
            webhook_id,
        })
    }
}
