//! Records as the admin API shows them: runs and deliveries with callback
//! URLs redacted and known secrets scrubbed from third-party text (vendor
//! output and errors, receivers' answers), and the live config with every
//! secret as `"***"`. Also the parsing of list filters.

use super::view::*;
use super::{AdminError, AdminResult, CancelOutcome, DEFAULT_LIMIT, MAX_LIMIT};
use crate::ingress::verify::Check;
use crate::run::{Attempt, CancelPhase, Delivery, DeliveryState, Phase, Run, RunId, RunStatus};
use crate::secret::{redact_url, Redactor};
use crate::store::{DeliveryQuery, RunQuery};
use crate::time::Timestamp;
use crate::topology::Topology;

fn ts(t: Timestamp) -> String {
    t.to_string()
}

fn ots(t: Option<Timestamp>) -> Option<String> {
    t.map(ts)
}

/// A point in time as a filter gives it: RFC 3339, or a duration ago
/// (`2h`, `30m`) counted back from `now`.
pub(super) fn parse_time(key: &str, raw: &str, now: Timestamp) -> AdminResult<Timestamp> {
    if let Ok(t) = humantime::parse_rfc3339_weak(raw) {
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        return Ok(Timestamp(ms));
    }
    if let Ok(d) = humantime::parse_duration(raw) {
        return Ok(now.minus(d));
    }
    Err(AdminError::BadRequest(format!(
        "{key} must be an RFC 3339 time (2026-01-02T03:04:05Z) or a duration ago (2h, 30m); got {raw:?}"
    )))
}

/// The page size a query asks for: default 50, clamped to 1..=500 (a
/// larger ask gets the largest page, with a cursor for the rest).
pub(super) fn page_limit(limit: Option<usize>) -> AdminResult<usize> {
    Ok(limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT))
}

/// Checks the filters of `GET /runs` into a store query.
pub(super) fn run_query(f: &RunFilter, now: Timestamp) -> AdminResult<RunQuery> {
    let status = f
        .status
        .as_deref()
        .map(str::parse::<RunStatus>)
        .transpose()
        .map_err(AdminError::BadRequest)?;
    let phase = f
        .phase
        .as_deref()
        .map(|p| {
            serde_json::from_value::<Phase>(serde_json::Value::String(p.to_string())).map_err(
                |_| {
                    AdminError::BadRequest(format!(
                        "phase must be one of accepted, starting, tracking, terminal, done; got {p:?}"
                    ))
                },
            )
        })
        .transpose()?;
    let before = f
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<RunId>().map_err(|_| {
                AdminError::BadRequest(format!("cursor must be a next_cursor value; got {c:?}"))
            })
        })
        .transpose()?;
    let since = f
        .since
        .as_deref()
        .map(|s| parse_time("since", s, now))
        .transpose()?;
    let until = f
        .until
        .as_deref()
        .map(|s| parse_time("until", s, now))
        .transpose()?;
    Ok(RunQuery {
        route: f.route.clone(),
        status,
        provider: f.provider.clone(),
        phase,
        since,
        until,
        delivery_id: f.delivery_id.clone(),
        before,
        limit: page_limit(f.limit)?,
    })
}

/// Checks the filters of `GET /deliveries` into a store query. The cursor
/// is `<run id>.<index>`.
pub(super) fn delivery_query(f: &DeliveryFilter) -> AdminResult<DeliveryQuery> {
    let mut states = Vec::new();
    for s in f.state.as_deref().unwrap_or("").split(',') {
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        let st = serde_json::from_value::<DeliveryState>(serde_json::Value::String(s.into()))
            .map_err(|_| {
                AdminError::BadRequest(format!(
                    "state must be one of pending, failing, delivered, dead, refused, gone; got {s:?}"
                ))
            })?;
        if !states.contains(&st) {
            states.push(st);
        }
    }
    let before = f
        .cursor
        .as_deref()
        .map(|c| {
            let bad =
                || AdminError::BadRequest(format!("cursor must be a next_cursor value; got {c:?}"));
            let (id, i) = c.split_once('.').ok_or_else(bad)?;
            Ok::<_, AdminError>((
                id.parse::<RunId>().map_err(|_| bad())?,
                i.parse::<u32>().map_err(|_| bad())?,
            ))
        })
        .transpose()?;
    Ok(DeliveryQuery {
        states,
        route: f.route.clone(),
        since: None,
        before,
        limit: page_limit(f.limit)?,
    })
}

/// Deliveries of a run by state.
pub(super) fn counts(run: &Run) -> DeliveryCounts {
    let mut c = DeliveryCounts::default();
    for d in run.deliveries() {
        let n = match d.state {
            DeliveryState::Pending => &mut c.pending,
            DeliveryState::Failing => &mut c.failing,
            DeliveryState::Delivered => &mut c.delivered,
            DeliveryState::Dead => &mut c.dead,
            DeliveryState::Refused => &mut c.refused,
            DeliveryState::Gone => &mut c.gone,
        };
        *n += 1;
    }
    c
}

/// A run as a list row.
pub(super) fn summary(run: &Run) -> RunSummary {
    RunSummary {
        id: run.id().to_string(),
        route: run.route().to_string(),
        provider: run.provider().to_string(),
        workflow_id: run.workflow_id().to_string(),
        phase: run.phase(),
        status: run.status(),
        raw_status: run.raw_status().clone(),
        vendor_run_id: run.vendor_run_id().clone(),
        delivery_id: run.delivery_id().clone(),
        created_at: ts(run.created_at()),
        updated_at: ts(run.updated_at()),
        finished_at: ots(run.finished_at()),
        replay_of: run.replay_of().map(|r| r.to_string()),
        deliveries: counts(run),
    }
}

/// The query values and password of a URL: what [`redact_url`] hides,
/// which a receiver may echo in its answer.
pub(super) fn url_secrets(url: &str) -> Vec<String> {
    let Ok(u) = reqwest::Url::parse(url) else {
        return Vec::new();
    };
    let mut out: Vec<String> = u.query_pairs().map(|(_, v)| v.into_owned()).collect();
    out.extend(u.password().map(str::to_string));
    out
}

/// The event type a delivery carries.
pub(super) fn event_type(run: &Run, d: &Delivery) -> String {
    run.event_of(d)
        .map(|e| e.kind.clone())
        .unwrap_or_else(|| run.status().event_type().to_string())
}

/// Scrubs known secrets (the config's and the run's callback URL secrets).
pub(super) struct Scrub<'a> {
    config: &'a Redactor,
    urls: Redactor,
}

impl<'a> Scrub<'a> {
    pub(super) fn new(run: &Run, config: &'a Redactor) -> Self {
        let secrets: Vec<String> = run
            .deliveries()
            .iter()
            .flat_map(|d| url_secrets(&d.url))
            .collect();
        Scrub {
            config,
            urls: Redactor::new(secrets.iter().map(String::as_str)),
        }
    }

    fn text(&self, s: &str) -> String {
        self.urls.scrub(&self.config.scrub(s))
    }

    fn opt(&self, s: &Option<String>) -> Option<String> {
        s.as_deref().map(|s| self.text(s))
    }

    fn json(&self, v: &serde_json::Value) -> serde_json::Value {
        self.urls.scrub_json(self.config.scrub_json(v.clone()))
    }

    pub(super) fn attempt(&self, a: &Attempt) -> AttemptView {
        AttemptView {
            at: ts(a.at),
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error: self.opt(&a.error),
            response: self.opt(&a.response),
        }
    }
}

/// One delivery of a run.
pub(super) fn delivery(run: &Run, i: usize, d: &Delivery, scrub: &Scrub) -> DeliveryView {
    DeliveryView {
        index: i as u32,
        url: redact_url(&d.url),
        event_id: d.event_id.clone(),
        event_type: event_type(run, d),
        webhook_id: d.webhook_id.clone(),
        state: d.state,
        attempts: d.attempts.iter().map(|a| scrub.attempt(a)).collect(),
        next_attempt_at: ots(d.next_attempt_at),
    }
}

/// One delivery across runs (`GET /deliveries`).
pub(super) fn delivery_item(run: &Run, i: usize, redactor: &Redactor) -> Option<DeliveryItem> {
    let d = run.deliveries().get(i)?;
    let scrub = Scrub::new(run, redactor);
    Some(DeliveryItem {
        run_id: run.id().to_string(),
        route: run.route().to_string(),
        index: i as u32,
        url: redact_url(&d.url),
        event_type: event_type(run, d),
        webhook_id: d.webhook_id.clone(),
        state: d.state,
        attempts: d.attempts.len() as u32,
        last_attempt: d.attempts.last().map(|a| scrub.attempt(a)),
        next_attempt_at: ots(d.next_attempt_at),
    })
}

/// A run with everything: history, events, deliveries and attempts.
pub(super) fn detail(run: &Run, redactor: &Redactor) -> RunDetail {
    let scrub = Scrub::new(run, redactor);
    RunDetail {
        summary: RunSummary {
            raw_status: scrub.opt(run.raw_status()),
            ..summary(run)
        },
        inputs: scrub.json(run.inputs()),
        output: run.output().as_ref().map(|v| scrub.json(v)),
        error: run.error().as_ref().map(|v| scrub.json(v)),
        last_error: scrub.opt(run.last_error()),
        deadline: ts(run.deadline()),
        started_at: ots(run.started_at()),
        failures: run.failures(),
        start_attempts: run.start_attempts(),
        polls: run.polls(),
        due_at: ots(run.due_at()),
        history: run
            .history()
            .iter()
            .map(|h| StatusChangeView {
                at: ts(h.at),
                status: h.status,
                raw_status: scrub.opt(&h.raw_status),
            })
            .collect(),
        events: run
            .events()
            .iter()
            .map(|e| EventView {
                id: e.id.clone(),
                kind: e.kind.clone(),
                at: ts(e.at),
                status: e.status,
                raw_status: scrub.opt(&e.raw_status),
            })
            .collect(),
        deliveries: run
            .deliveries()
            .iter()
            .enumerate()
            .map(|(i, d)| delivery(run, i, d, &scrub))
            .collect(),
        cancel: run.cancel().as_ref().map(|c| CancelView {
            requested_at: ts(c.requested_at),
            phase: c.phase,
            reason: c.reason.as_ref().map(|v| scrub.json(v)),
            local_only: c.local_only,
        }),
        replays: run.replays().iter().map(ToString::to_string).collect(),
    }
}

/// What a cancel request came to: 200 canceled, 202 still going, 409
/// refused by the vendor or already ended.
pub(super) fn cancel_outcome(run: &Run) -> AdminResult<CancelOutcome> {
    let run_id = run.id().to_string();
    let status = run.status();
    let ended = |run_id: &str| AdminError::Conflict {
        code: "run_ended",
        message: format!("run {run_id} already ended {}", status.as_str()),
    };
    match run.cancel() {
        Some(c) if c.phase == CancelPhase::Done || status == RunStatus::Canceled => {
            Ok(CancelOutcome {
                result: CancelResult {
                    run_id,
                    status,
                    cancel: "canceled".into(),
                    vendor_run_may_continue: Some(c.local_only),
                },
                done: true,
            })
        }
        Some(_) if !run.is_unfinished() || run.phase() == Phase::Terminal => Err(ended(&run_id)),
        Some(c) if c.phase == CancelPhase::Refused => Err(AdminError::Conflict {
            code: "cancel_refused",
            message: format!(
                "the provider refused to cancel run {run_id}: {}",
                c.reason
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "no reason given".into())
            ),
        }),
        Some(c) => Ok(CancelOutcome {
            result: CancelResult {
                run_id,
                status,
                cancel: if c.phase == CancelPhase::Pending {
                    "pending"
                } else {
                    "requested"
                }
                .into(),
                vendor_run_may_continue: None,
            },
            done: false,
        }),
        None => Err(ended(&run_id)),
    }
}

/// The name of a verification kind as configured.
fn check_name(c: &Check) -> &'static str {
    match c {
        Check::None => "none",
        Check::IpAllow(_) => "ip_allow",
        Check::Token(_) => "token",
        Check::Basic(_) => "basic",
        Check::Github(_) => "github",
        Check::Stripe(_) => "stripe",
        Check::Slack(_) => "slack",
        Check::Shopify(_) => "shopify",
        Check::Hmac(_) => "hmac",
        Check::StandardWebhooks(_) => "standard-webhooks",
    }
}

fn hidden(n: usize) -> Vec<String> {
    vec![HIDDEN.to_string(); n]
}

/// The live routes, secrets hidden.
pub(super) fn routes(topo: &Topology) -> Vec<RouteView> {
    topo.settings
        .routes
        .iter()
        .map(|(name, r)| RouteView {
            name: name.clone(),
            provider: r.provider.clone(),
            workflow_id: r.workflow_id.clone(),
            retired: topo.retired_routes.contains(name),
            verify: r
                .verify
                .checks()
                .iter()
                .map(|c| VerifyView {
                    kind: check_name(c).to_string(),
                    secrets: hidden(
                        crate::ingress::verify::VerifySettings::new(vec![c.clone()])
                            .secrets()
                            .len(),
                    ),
                })
                .collect(),
            dedupe_header: r.dedupe_header.clone(),
            dedupe_ttl: humantime::format_duration(r.dedupe_ttl).to_string(),
            run_timeout: r
                .run_timeout
                .map(|d| humantime::format_duration(d).to_string()),
            inputs: r.inputs.iter().map(|i| i.name.clone()).collect(),
            callbacks: r
                .callbacks
                .iter()
                .map(|c| CallbackView {
                    url: redact_url(&c.url),
                    endpoint_id: super::endpoint_id(&c.url),
                    events: c.events.clone(),
                    signing_secrets: hidden(c.keys.len()),
                    headers: c.headers.iter().map(|h| h.name.to_string()).collect(),
                })
                .collect(),
        })
        .collect()
}

/// The live providers, secrets hidden.
pub(super) fn providers(topo: &Topology) -> Vec<ProviderView> {
    use crate::config::ProviderSettings;
    topo.settings
        .providers
        .iter()
        .map(|(name, p)| {
            let (kind, base_url, token) = match p {
                ProviderSettings::Http(h) => (
                    h.kind.clone(),
                    Some(redact_url(&h.base_url)),
                    h.token.as_ref().map(|_| HIDDEN.to_string()),
                ),
                ProviderSettings::Simulated(_) => ("simulated".to_string(), None, None),
            };
            ProviderView {
                name: name.clone(),
                kind,
                base_url,
                token,
                retired: topo.retired_providers.contains(name),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Observation, RunSpec, Target};
    use serde_json::json;

    #[test]
    fn runs_are_shown_without_url_tokens_or_known_secrets() {
        let mut run = Run::accepted(
            RunId::new(),
            RunSpec::example(),
            Timestamp(1_000),
            Timestamp(99_000),
        );
        let url = "https://user:pa55word@h.example/cb?token=cbtok_123456&v=1";
        run.finish(
            Timestamp(2_000),
            Observation {
                status: RunStatus::Failed,
                raw_status: None,
                output: Some(json!({"echo": "Bearer slat_secret_1"})),
                error: None,
                unknown: false,
            },
            &[Target {
                url: url.to_string(),
                events: vec!["run.failed".into()],
            }],
        )
        .unwrap();
        run.record_attempt(
            0,
            Attempt {
                at: Timestamp(2_001),
                duration_ms: 1,
                status_code: Some(500),
                error: None,
                response: Some(format!("no such hook: {url}")),
            },
            false,
            Some(Timestamp(3_000)),
        );
        let view = detail(&run, &Redactor::new(["slat_secret_1"]));
        let shown = serde_json::to_string(&view).unwrap();
        for secret in ["cbtok_123456", "pa55word", "slat_secret_1"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("\"url\":\"https://h.example/cb?token=***&v=***\""),
            "{shown}"
        );
        assert_eq!(view.deliveries[0].state, DeliveryState::Failing);
        assert_eq!(view.summary.deliveries.failing, 1);
        assert_eq!(
            run.deliveries()[0].url,
            url,
            "the record keeps the full URL"
        );
        let back: RunDetail = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, view, "the CLI reads what the API writes");
    }

    #[test]
    fn times_are_rfc3339_or_durations_ago() {
        let now = Timestamp(10_000_000);
        assert_eq!(
            parse_time("since", "1s", now).unwrap(),
            Timestamp(9_999_000)
        );
        assert_eq!(
            parse_time("since", "1970-01-01T00:00:01Z", now).unwrap(),
            Timestamp(1_000)
        );
        assert!(parse_time("since", "yesterday", now).is_err());
    }
}
