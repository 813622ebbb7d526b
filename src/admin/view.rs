//! The admin API's types: what `GET`/`POST` answer, exactly as the CLI
//! deserializes them and the OpenAPI document describes them. Built from
//! the store's records by [`super::Admin`]; never carry a secret (callback
//! URLs are redacted, secrets shown as `"***"`). Timestamps are RFC 3339
//! strings in UTC with milliseconds.

use crate::run::{CancelPhase, DeliveryState, Phase, RunStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// How a secret is shown: never its value.
pub const HIDDEN: &str = "***";

/// One run in a list: what a table row needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    /// The run id (a ULID: newest sorts last).
    pub id: String,
    pub route: String,
    pub provider: String,
    pub workflow_id: String,
    /// Where the run is in runbridge's lifecycle.
    pub phase: Phase,
    /// The vendor-neutral status.
    pub status: RunStatus,
    /// The vendor's own status name.
    pub raw_status: Option<String>,
    pub vendor_run_id: Option<String>,
    /// The trigger's delivery id (dedupe header value).
    pub delivery_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// The run this one replays (`POST /runs/{id}/replay`).
    pub replay_of: Option<String>,
    /// Deliveries of the run by state. Named `delivery_counts` in JSON, so
    /// a [`RunDetail`] can list the deliveries themselves as `deliveries`.
    #[serde(rename = "delivery_counts")]
    pub deliveries: DeliveryCounts,
}

/// Deliveries of a run counted by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryCounts {
    pub pending: u32,
    pub failing: u32,
    pub delivered: u32,
    pub dead: u32,
    pub refused: u32,
    pub gone: u32,
}

/// A page of `GET /runs`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One vendor status change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusChangeView {
    pub at: String,
    pub status: RunStatus,
    pub raw_status: Option<String>,
}

/// One event of a run (its own `webhook-id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// The event's `webhook-id`.
    pub id: String,
    /// `run.started`, `run.waiting`, `run.succeeded`...
    #[serde(rename = "type")]
    pub kind: String,
    pub at: String,
    pub status: RunStatus,
    pub raw_status: Option<String>,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub at: String,
    pub duration_ms: u64,
    /// The receiver's HTTP status; `null` when none answered.
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The first bytes of the receiver's answer (secrets scrubbed).
    pub response: Option<String>,
}

/// One delivery of a run: an event to one callback URL, every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// Its index in the run (the `{index}` of `.../deliveries/{index}/redeliver`).
    pub index: u32,
    /// The callback URL without userinfo or query values.
    pub url: String,
    /// The event it carries.
    pub event_id: Option<String>,
    pub event_type: String,
    /// The `webhook-id` header: the same on every attempt and redelivery.
    pub webhook_id: String,
    pub state: DeliveryState,
    pub attempts: Vec<AttemptView>,
    pub next_attempt_at: Option<String>,
}

/// An operator's cancel request, as `GET /runs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CancelView {
    pub requested_at: String,
    pub phase: CancelPhase,
    /// The vendor's reason for refusing.
    pub reason: Option<Value>,
    /// Canceled on runbridge's side only; the vendor run may still go on.
    pub local_only: bool,
}

/// One run with everything an operator needs to see why it is where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    /// The inputs the workflow was started with (known secrets scrubbed).
    pub inputs: Value,
    pub output: Option<Value>,
    pub error: Option<Value>,
    /// The last transient error (a vendor call that will be retried).
    pub last_error: Option<String>,
    /// After this the run ends `timed_out`.
    pub deadline: String,
    pub started_at: Option<String>,
    /// Consecutive failed provider calls.
    pub failures: u32,
    /// Start calls made (more than one: retries with the same key).
    pub start_attempts: u32,
    pub polls: u32,
    /// When the scheduler next acts on the run; `null` once done.
    pub due_at: Option<String>,
    pub history: Vec<StatusChangeView>,
    pub events: Vec<EventView>,
    pub deliveries: Vec<DeliveryView>,
    pub cancel: Option<CancelView>,
    /// Runs started by replaying this one.
    pub replays: Vec<String>,
}

/// One delivery across runs (`GET /deliveries`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryItem {
    pub run_id: String,
    pub route: String,
    pub index: u32,
    /// Redacted callback URL.
    pub url: String,
    pub event_type: String,
    pub webhook_id: String,
    pub state: DeliveryState,
    /// How many attempts were made.
    pub attempts: u32,
    pub last_attempt: Option<AttemptView>,
    pub next_attempt_at: Option<String>,
}

/// A page of `GET /deliveries`, newest run first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryItem>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Where a recovery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryState {
    Running,
    Done,
    Failed,
}

/// A bulk redelivery of a route's failing and dead deliveries
/// (`POST /routes/{route}/recover`), with its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recovery {
    pub id: String,
    pub route: String,
    /// Deliveries of runs created at or after this time are recovered.
    pub since: String,
    pub state: RecoveryState,
    /// Failing or dead deliveries found.
    pub matched: u32,
    /// Of those, put back in the queue so far.
    pub requeued: u32,
    /// Of the requeued, delivered since.
    pub delivered: u32,
    /// Of the requeued, failing or dead again.
    pub still_failing: u32,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Why it failed (state `failed`).
    pub error: Option<String>,
}

/// A callback endpoint (one URL, across routes and runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EndpointView {
    /// A short stable hash of the URL: the `{id}` of `/endpoints/{id}/...`.
    pub id: String,
    /// Redacted URL.
    pub url: String,
    /// Routes with a callback to this URL.
    pub routes: Vec<String>,
    /// Deliveries to a paused endpoint wait (none is dropped or counted as
    /// a failed attempt) until it is resumed.
    pub paused: bool,
    /// The circuit breaker is open (consecutive failures).
    pub breaker_open: bool,
}

/// What `POST /endpoints/{id}/test` got back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestResult {
    /// The receiver answered 2xx.
    pub delivered: bool,
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// The first bytes of the answer.
    pub response: Option<String>,
    /// The test event's `webhook-id`.
    pub webhook_id: String,
}

/// Why an inbound request started nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// Refused with an error (bad signature, unknown route, too large...).
    Rejected,
    /// Accepted but ignored by the route's filter.
    Ignored,
}

/// One inbound request that started nothing (no body, no headers kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestRecord {
    pub at: String,
    /// The route named in the path (`(unknown)` if none is configured).
    pub route: String,
    pub outcome: RequestOutcome,
    /// The HTTP status answered.
    pub status: u16,
    /// The error code answered (`unauthorized`...); `null` when ignored.
    pub error: Option<String>,
    /// What was wrong, or the filter's reason.
    pub reason: String,
}

/// A route's verification, as configured (secrets hidden).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerifyView {
    /// `github`, `stripe`, `token`, `hmac`...
    pub kind: String,
    /// One `"***"` per configured secret.
    pub secrets: Vec<String>,
}

/// A callback of a route, as configured (secrets hidden).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallbackView {
    /// Redacted URL.
    pub url: String,
    /// The endpoint id of the URL.
    pub endpoint_id: String,
    pub events: Vec<String>,
    /// One `"***"` per signing key.
    pub signing_secrets: Vec<String>,
    /// Extra header names (values hidden).
    pub headers: Vec<String>,
}

/// A route of the live configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteView {
    pub name: String,
    pub provider: String,
    pub workflow_id: String,
    /// Removed by a reload, kept until its unfinished runs are done.
    pub retired: bool,
    pub verify: Vec<VerifyView>,
    pub dedupe_header: Option<String>,
    /// e.g. `24h`.
    pub dedupe_ttl: String,
    pub run_timeout: Option<String>,
    pub inputs: Vec<String>,
    pub callbacks: Vec<CallbackView>,
}

/// A provider of the live configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProviderView {
    pub name: String,
    /// `http` or `simulated`.
    pub kind: String,
    /// The vendor's base URL (redacted), for `http`.
    pub base_url: Option<String>,
    /// `"***"` when a token is configured.
    pub token: Option<String>,
    /// Removed by a reload, kept until its unfinished runs are done.
    pub retired: bool,
}

/// What `POST /runs/{id}/cancel` answers with (200 canceled, 202 pending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CancelResult {
    pub run_id: String,
    pub status: RunStatus,
    /// `canceled`, `pending` or `requested`.
    pub cancel: String,
    /// Canceled on runbridge's side only (the provider has no cancel).
    pub vendor_run_may_continue: Option<bool>,
}

/// What `POST /reload` answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReloadResult {
    /// Always `reloaded`.
    pub status: String,
    pub report: ReloadReportView,
}

/// What a reload changed and what it left for a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReloadReportView {
    pub routes: usize,
    pub providers: usize,
    pub restart_needed: Vec<String>,
    pub retired_routes: Vec<String>,
    pub retired_providers: Vec<String>,
}

/// Every error answer: `{"error": code, "message": text}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code (`run_not_found`, `forbidden`...).
    pub error: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// Query of `GET /runs` (every filter optional; combined with AND).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunFilter {
    pub route: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`...
    pub status: Option<String>,
    pub provider: Option<String>,
    /// `accepted`, `starting`, `tracking`, `terminal`, `done`.
    pub phase: Option<String>,
    /// Runs created at or after this (RFC 3339, or a duration ago: `2h`).
    pub since: Option<String>,
    /// Runs created before this (RFC 3339, or a duration ago).
    pub until: Option<String>,
    /// The trigger's delivery id.
    pub delivery_id: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size: default 50, at most 500 (larger asks get 500).
    pub limit: Option<usize>,
}

/// Query of `GET /deliveries`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryFilter {
    /// `dead` or `failing` (comma-separated for both; default both).
    pub state: Option<String>,
    pub route: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size: default 50, at most 500 (larger asks get 500).
    pub limit: Option<usize>,
}

/// Query of `GET /requests`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestFilter {
    /// `rejected` or `ignored`; default both.
    pub outcome: Option<String>,
    pub route: Option<String>,
    /// Most records (newest first): default 100.
    pub limit: Option<usize>,
}

/// Query of `POST /routes/{route}/recover`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecoverParams {
    /// RFC 3339, or a duration ago (`2h`, `30m`).
    pub since: String,
}
