//! Operators' actions on one run: replay it as a new run, redeliver one of
//! its deliveries.

use super::view::{DeliveryView, RunSummary};
use super::{present, Admin, AdminError, AdminResult};
use crate::run::{Run, RunId, RunSpec};
use crate::scheduler::ModifyError;
use crate::store::Created;
use crate::time::Timestamp;

impl From<ModifyError> for AdminError {
    fn from(e: ModifyError) -> Self {
        match e {
            ModifyError::NotFound => AdminError::NotFound {
                code: "run_not_found",
                message: "no such run".into(),
            },
            ModifyError::Busy => AdminError::Conflict {
                code: "run_busy",
                message: "a step is working on the run; retry in a moment".into(),
            },
            ModifyError::Refused(m) => AdminError::NotFound {
                code: "delivery_not_found",
                message: m,
            },
            ModifyError::Store(e) => AdminError::Store(e),
        }
    }
}

impl Admin {
    /// `POST /runs/{id}/replay`: a new run (new id) with the same route,
    /// provider, workflow and inputs, linked both ways (`replay_of` on the
    /// new run, `replays` on the old). Deadline and callbacks come from the
    /// route's current config. 404 when the route is gone, 409 when it or
    /// the provider was removed by a reload.
    pub async fn replay_run(&self, id: &str) -> AdminResult<RunSummary> {
        let old = self.load_run(id).await?;
        let topo = self.inner.topology.load_full();
        let route_name = old.route().to_string();
        let Some(route) = topo.settings.routes.get(&route_name) else {
            return Err(AdminError::NotFound {
                code: "route_not_found",
                message: format!(
                    "route {route_name:?} of run {id} is no longer configured; nothing to replay it on"
                ),
            });
        };
        if topo.retired_routes.contains(&route_name) {
            return Err(AdminError::Conflict {
                code: "route_removed",
                message: format!(
                    "route {route_name:?} was removed by a reload; it takes no new runs"
                ),
            });
        }
        let provider = old.provider().to_string();
        if !topo.providers.contains_key(&provider) || topo.retired_providers.contains(&provider) {
            return Err(AdminError::Conflict {
                code: "provider_removed",
                message: format!(
                    "provider {provider:?} of run {id} is no longer configured; the run cannot be replayed"
                ),
            });
        }
        let now = Timestamp::now();
        let new_id = RunId::new();
        let spec = RunSpec {
            route: route_name.clone(),
            provider,
            workflow_id: old.workflow_id().to_string(),
            inputs: old.inputs().clone(),
            delivery_id: None,
        };
        let deadline = now.plus(topo.settings.run_timeout(route));
        let run = Run::accepted(new_id, spec, now, deadline).replaying(old.id());
        let gated = route
            .limiter
            .max_in_flight()
            .map(|m| (m, route.limiter.mode()));
        if let Some((max, mode)) = gated {
            if !self.inner.gate.admit(&route_name, new_id, max, mode) {
                return Err(AdminError::Conflict {
                    code: "route_at_capacity",
                    message: format!(
                        "route {route_name:?} has max_in_flight = {max} unfinished runs; retry when one ends"
                    ),
                });
            }
        }
        match self.inner.store.create_run(&run, None).await {
            Ok(Created::New) => {}
            Ok(Created::Duplicate(_)) => {
                self.inner.gate.cancel(new_id);
                return Err(AdminError::Internal("a new run id was taken".into()));
            }
            Err(e) => {
                self.inner.gate.cancel(new_id);
                return Err(e.into());
            }
        }
        self.inner.wake.notify_one();
        tracing::info!(run_id = %new_id, replay_of = %old.id(), route = %route_name, "run replayed");
        // The link on the old run is a convenience: a failure to add it
        // does not undo the replay.
        let linked = self
            .inner
            .scheduler
            .modify_run(old.id(), |r| {
                r.add_replay(new_id);
                Ok::<_, std::convert::Infallible>(true)
            })
            .await;
        if let Err(e) = linked {
            tracing::warn!(run_id = %old.id(), error = %e, "could not note the replay on the replayed run");
        }
        Ok(present::summary(&run))
    }

    /// `POST /runs/{id}/deliveries/{index}/redeliver`: a new attempt now
    /// (also for a dead, failing or delivered delivery), with the same
    /// `webhook-id`. Persisted before the scheduler is woken; a done run
    /// goes back to delivering.
    pub async fn redeliver(&self, id: &str, index: u32) -> AdminResult<DeliveryView> {
        let run_id = Self::parse_run_id(id)?;
        let i = index as usize;
        let now = Timestamp::now();
        let run = self
            .inner
            .scheduler
            .modify_run(run_id, |r| r.redeliver(i, now).map(|()| true))
            .await
            .map_err(|e| match e {
                ModifyError::NotFound => AdminError::run_not_found(id),
                other => other.into(),
            })?;
        let d = run
            .deliveries()
            .get(i)
            .ok_or_else(|| AdminError::Internal("the redelivered delivery vanished".into()))?;
        tracing::info!(run_id = %run.id(), delivery = i, url = %crate::secret::redact_url(&d.url), "delivery requeued by an operator");
        let redactor = self.inner.topology.load().redactor.clone();
        let scrub = present::Scrub::new(&run, &redactor);
        Ok(present::delivery(&run, i, d, &scrub))
    }
}
