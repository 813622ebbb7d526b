//! Route recovery (Svix's "recover"): after a receiver outage, every
//! failing or dead delivery of a route since a time is requeued for one
//! more attempt, in the background and paced (a bounded batch per tick, on
//! top of the endpoint's own limits in the delivery layer), so it cannot
//! flood the receiver that just came back. Each run is persisted as it is
//! requeued; the recovery's progress is kept in memory and in the store's
//! metadata, and `GET /recoveries/{id}` reads it.

use super::view::{Recovery, RecoveryState};
use super::{present, Admin, AdminError, AdminResult};
use crate::run::{DeliveryState, RunId};
use crate::store::DeliveryQuery;
use crate::time::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// Most deliveries one recovery takes on (a larger outage takes several).
pub const MAX_MATCHED: usize = 100_000;
/// Deliveries requeued per tick, and the tick: at most 100 a second.
pub const BATCH: usize = 25;
pub const TICK: Duration = Duration::from_millis(250);
/// How long a recovery watches its requeued deliveries for their outcome.
pub const WATCH: Duration = Duration::from_secs(15 * 60);
/// Recoveries kept in memory (the oldest finished ones are forgotten).
const KEPT: usize = 100;
/// The metadata key of a recovery's progress.
fn meta_key(id: &str) -> String {
    format!("admin/recovery/{id}")
}

/// The recoveries of this process, by id.
#[derive(Default)]
pub(super) struct Recoveries {
    map: Mutex<BTreeMap<String, Recovery>>,
}

impl Recoveries {
    fn put(&self, r: &Recovery) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(r.id.clone(), r.clone());
        while map.len() > KEPT {
            // Ids are ULIDs: the first finished one is the oldest.
            let Some(old) = map
                .iter()
                .find(|(_, r)| r.state != RecoveryState::Running)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&old);
        }
    }

    fn get(&self, id: &str) -> Option<Recovery> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

impl Admin {
    /// `POST /routes/{route}/recover?since=`: starts a recovery and answers
    /// with it at once (state `running`); poll `GET /recoveries/{id}`.
    pub async fn recover(&self, route: &str, since: &str) -> AdminResult<Recovery> {
        let topo = self.inner.topology.load();
        if !topo.settings.routes.contains_key(route) {
            return Err(AdminError::NotFound {
                code: "route_not_found",
                message: format!("no route named {route:?}"),
            });
        }
        let now = Timestamp::now();
        let since_t = present::parse_time("since", since, now)?;
        let rec = Recovery {
            id: ulid::Ulid::new().to_string(),
            route: route.to_string(),
            since: since_t.to_string(),
            state: RecoveryState::Running,
            matched: 0,
            requeued: 0,
            delivered: 0,
            still_failing: 0,
            started_at: now.to_string(),
            finished_at: None,
            error: None,
        };
        self.save_recovery(&rec).await?;
        tracing::info!(recovery = %rec.id, route, since = %rec.since, "route recovery started by an operator");
        let me = self.clone();
        let started = rec.clone();
        tokio::spawn(async move {
            let mut rec = started;
            if let Err(e) = me.run_recovery(&mut rec, since_t).await {
                tracing::warn!(recovery = %rec.id, error = %e, "route recovery failed");
                rec.state = RecoveryState::Failed;
                rec.error = Some(e.to_string());
            } else {
                rec.state = RecoveryState::Done;
            }
            rec.finished_at = Some(Timestamp::now().to_string());
            let _ = me.save_recovery(&rec).await;
            tracing::info!(
                recovery = %rec.id, matched = rec.matched, requeued = rec.requeued,
                delivered = rec.delivered, still_failing = rec.still_failing,
                "route recovery finished"
            );
        });
        Ok(rec)
    }

    /// `GET /recoveries/{id}`: a recovery's progress.
    pub async fn recovery(&self, id: &str) -> AdminResult<Recovery> {
        if let Some(r) = self.inner.recoveries.get(id) {
            return Ok(r);
        }
        let key = meta_key(id);
        let stored = if id.len() <= 64 {
            self.blocking(move |s| s.get_meta(&key)).await?
        } else {
            None
        };
        stored
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| AdminError::NotFound {
                code: "recovery_not_found",
                message: format!("no recovery with id {id:?}"),
            })
    }

    async fn save_recovery(&self, r: &Recovery) -> AdminResult<()> {
        self.inner.recoveries.put(r);
        let bytes = serde_json::to_vec(r)
            .map_err(|e| AdminError::Internal(format!("encoding a recovery: {e}")))?;
        self.inner
            .store
            .put_meta(&meta_key(&r.id), Some(bytes))
            .await?;
        Ok(())
    }

    async fn run_recovery(&self, rec: &mut Recovery, since: Timestamp) -> AdminResult<()> {
        // 1. What to recover: failing and dead deliveries of the route.
        let mut matched: Vec<(RunId, u32)> = Vec::new();
        let mut before = None;
        loop {
            let q = DeliveryQuery {
                states: vec![DeliveryState::Failing, DeliveryState::Dead],
                route: Some(rec.route.clone()),
                since: Some(since),
                before,
                limit: 500,
            };
            let page = self.blocking(move |s| s.list_deliveries(&q)).await?;
            let full = page.len() == 500;
            before = page.last().map(|(r, i)| (r.id(), *i));
            matched.extend(page.iter().map(|(r, i)| (r.id(), *i)));
            if !full || matched.len() >= MAX_MATCHED {
                break;
            }
        }
        matched.truncate(MAX_MATCHED);
        // Oldest first: the receiver sees events in about the order they happened.
        matched.reverse();
        rec.matched = matched.len() as u32;
        self.save_recovery(rec).await?;

        // 2. Requeue, a bounded batch per tick, each run persisted.
        let mut requeued: Vec<(RunId, u32)> = Vec::new();
        let mut tick = tokio::time::interval(TICK);
        for batch in matched.chunks(BATCH) {
            tick.tick().await;
            let mut by_run: Vec<(RunId, Vec<u32>)> = Vec::new();
            for (id, i) in batch {
                match by_run.last_mut() {
                    Some((last, v)) if last == id => v.push(*i),
                    _ => by_run.push((*id, vec![*i])),
                }
            }
            for (id, indexes) in by_run {
                let now = Timestamp::now();
                let mut done = Vec::new();
                let result = self
                    .inner
                    .scheduler
                    .modify_run(id, |r| {
                        for &i in &indexes {
                            // Settled since it was listed (delivered by a
                            // retry, or redelivered by hand): leave it.
                            let open = r.deliveries().get(i as usize).is_some_and(|d| {
                                matches!(d.state, DeliveryState::Failing | DeliveryState::Dead)
                            });
                            if open && r.redeliver(i as usize, now).is_ok() {
                                done.push(i);
                            }
                        }
                        Ok::<_, std::convert::Infallible>(!done.is_empty())
                    })
                    .await;
                match result {
                    Ok(_) => requeued.extend(done.iter().map(|i| (id, *i))),
                    // Removed by retention meanwhile: nothing to recover.
                    Err(crate::scheduler::ModifyError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            rec.requeued = requeued.len() as u32;
            self.inner.wake.notify_one();
            self.save_recovery(rec).await?;
        }

        // 3. Watch the requeued deliveries until each had its attempt.
        let deadline = tokio::time::Instant::now() + WATCH;
        let mut open: HashMap<RunId, Vec<u32>> = HashMap::new();
        for (id, i) in requeued {
            open.entry(id).or_default().push(i);
        }
        let (mut delivered, mut failing) = (0u32, 0u32);
        while !open.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let ids: Vec<RunId> = open.keys().copied().collect();
            let runs = self
                .blocking(move |s| {
                    ids.into_iter()
                        .map(|id| s.get_run(id).map(|r| (id, r)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?;
            for (id, run) in runs {
                let Some(indexes) = open.get_mut(&id) else {
                    continue;
                };
                indexes.retain(|&i| {
                    let state = run
                        .as_ref()
                        .and_then(|r| r.deliveries().get(i as usize))
                        .map(|d| d.state);
                    match state {
                        Some(DeliveryState::Pending) => true,
                        Some(DeliveryState::Delivered) => {
                            delivered += 1;
                            false
                        }
                        _ => {
                            failing += 1;
                            false
                        }
                    }
                });
                if indexes.is_empty() {
                    open.remove(&id);
                }
            }
            if (delivered, failing) != (rec.delivered, rec.still_failing) {
                rec.delivered = delivered;
                rec.still_failing = failing;
                self.save_recovery(rec).await?;
            }
        }
        // Still pending at the end of the watch (a paused endpoint...).
        rec.still_failing += open.values().map(|v| v.len() as u32).sum::<u32>();
        Ok(())
    }
}
