//! A dead delivery is never silent: the scheduler calls [`DeadDelivery::report`]
//! when a delivery goes dead, which counts it
//! (`runbridge_deliveries_dead_total{route}`), logs a warning, and, when
//! `[admin] alert_url` is set, queues a Standard Webhooks-signed
//! `delivery.dead` event for the operator's endpoint.
//!
//! Alerts are sent by their own task ([`Alerts::run`]) through the callback
//! client (SSRF guard, timeouts, bounded reads), with a few retries and
//! backoff, in memory: the scheduler never waits for an alert, and a full
//! queue drops the alert with a log line rather than growing.

use crate::run::{Delivery, Run};
use crate::secret::redact_url;
use crate::time::Timestamp;
use crate::topology::SharedTopology;
use bytes::Bytes;
use serde_json::json;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Alerts waiting to be sent; more are dropped (and logged).
pub const QUEUE: usize = 1000;
/// Delays before the retries of an alert (so 4 attempts at most).
pub const RETRIES: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];

/// One `delivery.dead` alert to send.
#[derive(Debug, Clone)]
pub struct Alert {
    /// Its `webhook-id` (stable for one death of one delivery).
    pub id: String,
    pub body: Bytes,
}

/// The sending side, held by the scheduler.
pub struct Alerts {
    tx: mpsc::Sender<Alert>,
    rx: Mutex<Option<mpsc::Receiver<Alert>>>,
    topology: SharedTopology,
    client: reqwest::Client,
}

/// What the scheduler reports about a delivery that just went dead.
pub struct DeadDelivery<'a> {
    pub run: &'a Run,
    pub index: usize,
    pub delivery: &'a Delivery,
    /// The last attempt's failure (HTTP status or error).
    pub reason: &'a str,
}

impl Alerts {
    /// Alerts sent with `client` (the guarded callback client) to the
    /// topology's current `admin.alert_url`.
    pub fn new(topology: SharedTopology, client: reqwest::Client) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Alerts {
            tx,
            rx: Mutex::new(Some(rx)),
            topology,
            client,
        }
    }

    /// Counts, logs and (with `alert_url`) queues the alert of a dead delivery.
    pub fn report(&self, dead: DeadDelivery<'_>) {
        let DeadDelivery {
            run,
            index,
            delivery: d,
            reason,
        } = dead;
        metrics::counter!("runbridge_deliveries_dead_total", "route" => run.route().to_string())
            .increment(1);
        let url = redact_url(&d.url);
        tracing::warn!(
            run_id = %run.id(),
            route = %run.route(),
            url = %url,
            delivery = index,
            attempts = d.attempts.len(),
            reason = %reason,
            "callback delivery is dead: every scheduled attempt failed; redeliver it with POST /runs/{{id}}/deliveries/{{index}}/redeliver or recover the route"
        );
        if self.topology.load().settings.admin.alert_url.is_none() {
            return;
        }
        let event_type = run
            .event_of(d)
            .map(|e| e.kind.clone())
            .unwrap_or_else(|| run.status().event_type().to_string());
        let last = d.attempts.last();
        let now = Timestamp::now();
        let body = json!({
            "type": "delivery.dead",
            "timestamp": now,
            "data": {
                "run_id": run.id().to_string(),
                "route": run.route(),
                "delivery_index": index,
                "url": url,
                "event_type": event_type,
                "webhook_id": d.webhook_id,
                "attempts": d.attempts.len(),
                "last_status_code": last.and_then(|a| a.status_code),
                "reason": reason,
            }
        });
        let alert = Alert {
            id: format!("alert_{}_{}_{}", run.id(), index, d.attempts.len()),
            body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        };
        if self.tx.try_send(alert).is_err() {
            metrics::counter!("runbridge_alerts_total", "outcome" => "dropped").increment(1);
            tracing::warn!(
                run_id = %run.id(),
                "the alert queue is full; this delivery.dead alert is not sent (the log line above stands)"
            );
        }
    }

    /// Sends queued alerts until `stop` fires. Each alert is tried up to
    /// four times; retries wait in their own tasks, so one unreachable
    /// alert endpoint does not hold the others back.
    pub async fn run(self: std::sync::Arc<Self>, stop: CancellationToken) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            let alert = tokio::select! {
                a = rx.recv() => match a { Some(a) => a, None => break },
                _ = stop.cancelled() => break,
            };
            let me = self.clone();
            let stop = stop.clone();
            tasks.spawn(async move { me.deliver(alert, stop).await });
        }
        tasks.close();
    }

    async fn deliver(&self, alert: Alert, stop: CancellationToken) {
        for attempt in 0..=RETRIES.len() {
            let (url, keys, ds) = {
                let topo = self.topology.load();
                let Some(url) = topo.settings.admin.alert_url.clone() else {
                    return;
                };
                (
                    url,
                    topo.settings.admin.alert_keys.clone(),
                    topo.settings.delivery.clone(),
                )
            };
            let o = super::attempt(
                &self.client,
                &url,
                &keys,
                &Default::default(),
                &alert.id,
                alert.body.clone(),
                &ds,
            )
            .await;
            if o.succeeded {
                metrics::counter!("runbridge_alerts_total", "outcome" => "sent").increment(1);
                return;
            }
            let reason = o
                .attempt
                .status_code
                .map(|c| format!("HTTP {c}"))
                .or(o.attempt.error)
                .unwrap_or_default();
            let Some(wait) = RETRIES.get(attempt).filter(|_| !o.refused) else {
                metrics::counter!("runbridge_alerts_total", "outcome" => "failed").increment(1);
                tracing::warn!(url = %redact_url(&url), reason = %reason, alert = %alert.id, "the delivery.dead alert could not be sent; giving up");
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep(*wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
