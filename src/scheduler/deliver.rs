//! Callback deliveries of a claimed run: every due delivery sent once
//! (held while its endpoint is paused or over its limit), each outcome
//! recorded on the run, which the caller persists.

use super::Scheduler;
use crate::delivery;
use crate::run::Run;
use crate::secret::redact_url;
use crate::store::StoreError;

impl Scheduler {
    /// Sends every due delivery of `run` once, recording the outcomes.
    pub(super) async fn send_due(&self, run: &mut Run) {
        let topo = self.topology.load();
        let ds = topo.settings.delivery.clone();
        let route = topo.settings.routes.get(run.route());
        let now = self.now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut held = Vec::new();
        let mut paused = Vec::new();
        for (i, d) in run.deliveries().iter().enumerate() {
            if !d.is_due(now) {
                continue;
            }
            if self.paused.is_paused(&d.url) {
                // Held without an attempt until resumed (which releases it).
                self.paused.note_held(&d.url, run.id());
                paused.push((i, now.plus(crate::delivery::pause::PAUSE_HOLD)));
                continue;
            }
            let cb = route.and_then(|r| r.callbacks.iter().find(|c| c.url == d.url));
            let admitted = match cb {
                Some(c) => match self.endpoints.admit(&d.url, &c.limit) {
                    Ok(a) => Some(a),
                    Err(wait) => {
                        held.push((i, now.plus(wait)));
                        continue;
                    }
                },
                None => None,
            };
            let key = cb.map(|c| (c.keys.clone(), delivery::header_map(&c.headers), c.breaker));
            let body = delivery::event_body(run, d);
            let (client, url, id, ds) = (
                self.client.clone(),
                d.url.clone(),
                d.webhook_id.clone(),
                ds.clone(),
            );
            tasks.spawn(async move {
                let outcome = match key {
                    Some((keys, headers, breaker)) => {
                        let o =
                            delivery::attempt(&client, &url, &keys, &headers, &id, body, &ds).await;
                        drop(admitted);
                        Some((o, breaker))
                    }
                    None => None,
                };
                (i, outcome)
            });
        }
        for (i, until) in held {
            metrics::counter!("runbridge_deliveries_total", "outcome" => "held").increment(1);
            run.hold_delivery(i, until);
        }
        for (i, until) in paused {
            metrics::counter!("runbridge_deliveries_total", "outcome" => "paused").increment(1);
            run.hold_delivery(i, until);
        }
        // Refreshed after this step's attempts are reported, below.
        let _refresh = RefreshBreakers(self);
        while let Some(joined) = tasks.join_next().await {
            let Ok((i, outcome)) = joined else { continue };
            let now = self.now();
            let Some(d) = run.deliveries().get(i) else {
                continue;
            };
            match outcome {
                Some((o, breaker)) => {
                    // 410 is an answer, not an endpoint failure; a refused
                    // destination was never contacted.
                    if !o.refused {
                        self.endpoints
                            .report(&d.url, o.succeeded || o.gone, &breaker);
                    }
                    let next = if o.succeeded {
                        None
                    } else {
                        delivery::next_attempt(now, d.attempts.len() + 1, &o, &ds)
                    };
                    metrics::histogram!("runbridge_delivery_attempt_seconds")
                        .record(o.attempt.duration_ms as f64 / 1000.0);
                    let reason = o
                        .attempt
                        .status_code
                        .map(|c| format!("HTTP {c}"))
                        .or_else(|| o.attempt.error.clone())
                        .unwrap_or_else(|| "failed".into());
                    if o.succeeded {
                        metrics::counter!("runbridge_deliveries_total", "outcome" => "delivered")
                            .increment(1);
                        tracing::info!(run_id = %run.id(), url = %redact_url(&d.url), "callback delivered");
                    } else if let Some(at) = next {
                        metrics::counter!("runbridge_deliveries_total", "outcome" => "retry")
                            .increment(1);
                        if let Some(suppressed) = self.delivery_log.allow(run.route()) {
                            tracing::warn!(
                                run_id = %run.id(),
                                url = %redact_url(&d.url),
                                attempt = d.attempts.len() + 1,
                                reason = %reason,
                                next_attempt = %at,
                                suppressed,
                                "callback attempt failed; will retry"
                            );
                        }
                    } else if o.refused {
                        metrics::counter!("runbridge_deliveries_total", "outcome" => "refused")
                            .increment(1);
                        tracing::warn!(run_id = %run.id(), url = %redact_url(&d.url), reason = %reason, "callback refused (destination not allowed); not retried");
                        run.record_refused(i, o.attempt);
                        continue;
                    } else {
                        let outcome = if o.gone { "gone" } else { "dead" };
                        metrics::counter!("runbridge_deliveries_total", "outcome" => outcome)
                            .increment(1);
                    }
                    if o.gone {
                        tracing::warn!(run_id = %run.id(), url = %redact_url(&d.url), "receiver answered 410 Gone; callback disabled for the rest of this run");
                        run.callback_gone(i, o.attempt);
                    } else {
                        let dead = !o.succeeded && next.is_none();
                        run.record_attempt(i, o.attempt, o.succeeded, next);
                        if dead {
                            self.report_dead(run, i, &reason);
                        }
                    }
                }
                None => {
                    let attempt = crate::run::Attempt {
                        at: now,
                        duration_ms: 0,
                        status_code: None,
                        error: Some("callback is no longer configured for this route".into()),
                        response: None,
                    };
                    run.record_attempt(i, attempt, false, None);
                    self.report_dead(run, i, "callback is no longer configured for this route");
                }
            }
        }
    }

    /// A delivery just went dead: counted, logged, alerted (never silent).
    fn report_dead(&self, run: &Run, i: usize, reason: &str) {
        if let Some(d) = run.deliveries().get(i) {
            self.alerts.report(crate::delivery::alert::DeadDelivery {
                run,
                index: i,
                delivery: d,
                reason,
            });
        }
    }

    /// Sends the due deliveries of `run` and persists their outcomes.
    pub(super) async fn deliver(&self, mut run: Run) -> Result<Run, StoreError> {
        self.send_due(&mut run).await;
        run.replan(self.now());
        self.saved(run).await
    }
}

/// Publishes the open breakers to readiness and the gauge when dropped
/// (at the end of a delivery step, whichever way it ends).
struct RefreshBreakers<'a>(&'a Scheduler);

impl Drop for RefreshBreakers<'_> {
    fn drop(&mut self) {
        self.0.health.set_open_breakers(self.0.endpoints.open());
    }
}
