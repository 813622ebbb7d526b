//! Operators' changes to runs (redeliver, release held deliveries, link a
//! replay): made while no step holds the run, so a step's save cannot
//! overwrite them, and persisted before the scheduler is woken.

use super::{Claim, Scheduler};
use crate::run::{Run, RunId};
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;

/// How long an operator's change waits for a step working on the run
/// (a delivery step ends within the delivery timeout).
const HOLD_WAIT: Duration = Duration::from_secs(330);
/// How often it looks again.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// Why an operator's change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ModifyError {
    /// No such run.
    #[error("no such run")]
    NotFound,
    /// A step held the run for longer than the wait.
    #[error("the run is busy; retry later")]
    Busy,
    /// The change refused itself (the closure's error).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Scheduler {
    /// The endpoints operators paused (shared with the admin layer).
    pub fn paused(&self) -> Arc<crate::delivery::pause::Paused> {
        self.paused.clone()
    }

    /// The dead-delivery reporter; `app.rs` runs its sending task.
    pub fn alerts(&self) -> Arc<crate::delivery::alert::Alerts> {
        self.alerts.clone()
    }

    /// Claims `id` as a step would (waiting while a step holds it, at most
    /// until `deadline`), so an operator's change cannot race a step's
    /// save. Released on drop.
    async fn hold(
        self: &Arc<Self>,
        id: RunId,
        deadline: tokio::time::Instant,
    ) -> Result<Claim, ModifyError> {
        loop {
            {
                let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                if in_flight.insert(id) {
                    return Ok(Claim {
                        scheduler: self.clone(),
                        id,
                        permit: None,
                    });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ModifyError::Busy);
            }
            tokio::time::sleep(HOLD_POLL).await;
        }
    }

    /// Applies `change` to the stored run while no step holds it, persists
    /// it when `change` returns `Ok(true)`, and wakes the loop (the claim's
    /// release does). Returns the run as it is now.
    pub async fn modify_run<E: std::fmt::Display>(
        self: &Arc<Self>,
        id: RunId,
        change: impl FnOnce(&mut Run) -> Result<bool, E>,
    ) -> Result<Run, ModifyError> {
        let deadline = tokio::time::Instant::now() + HOLD_WAIT;
        self.modify_run_by(id, deadline, change).await
    }

    /// [`Scheduler::modify_run`] that waits for a step holding the run
    /// only until `deadline` ([`ModifyError::Busy`] then, nothing changed),
    /// for callers that must answer in time (an operator's cancel). The
    /// change is loaded, made and persisted while the run is held: a step
    /// cannot overwrite it, nor it a step's transition.
    pub async fn modify_run_by<E: std::fmt::Display>(
        self: &Arc<Self>,
        id: RunId,
        deadline: tokio::time::Instant,
        change: impl FnOnce(&mut Run) -> Result<bool, E>,
    ) -> Result<Run, ModifyError> {
        let claim = self.hold(id, deadline).await?;
        let store = self.store.clone();
        let mut run = tokio::task::spawn_blocking(move || store.get_run(id))
            .await
            .map_err(|e| StoreError::Backend(format!("a blocking task failed: {e}")))??
            .ok_or(ModifyError::NotFound)?;
        let changed = change(&mut run).map_err(|e| ModifyError::Refused(e.to_string()))?;
        if changed {
            self.store.save_run(&run).await?;
        }
        drop(claim);
        Ok(run)
    }

    /// An endpoint was resumed: the runs holding deliveries for it are
    /// made due now. Returns how many runs were released.
    pub async fn release_paused(self: &Arc<Self>, endpoint: &str) -> usize {
        let mut released = 0;
        for id in self.paused.take_held(endpoint) {
            let now = self.now();
            let result = self
                .modify_run(id, |run| {
                    let urls: Vec<String> = run
                        .deliveries()
                        .iter()
                        .filter(|d| crate::delivery::pause::endpoint_id(&d.url) == endpoint)
                        .map(|d| d.url.clone())
                        .collect();
                    let mut changed = false;
                    for url in urls {
                        changed |= run.release_held(&url, now);
                    }
                    Ok::<_, std::convert::Infallible>(changed)
                })
                .await;
            match result {
                Ok(_) => released += 1,
                // Gone (retention) or busy: it comes due on its own.
                Err(e) => tracing::debug!(run_id = %id, error = %e, "held run not released"),
            }
        }
        released
    }
}
