//! Secondary index keys (pure: no sled here), so the admin API's filters
//! walk only the runs they can match instead of every run.
//!
//! Two trees, empty values, every key ending in the 16-byte run id (a ULID,
//! so ids sort by creation time and newest first is reverse iteration):
//!
//! - `idx_runs`: a few keys per run, a tag byte first: route+status+phase,
//!   provider, and delivery id+route (a prefix of which serves a delivery
//!   id alone). Strings end in NUL.
//! - `idx_deliveries`: one key per failing or dead delivery, by state then
//!   run id then delivery index (across routes), and by state, route, run
//!   id, index (one route). Those are the deliveries an operator must see.
//!
//! A key is only a hint: readers load the record and check the whole query
//! against it, so a stale key (left by a crash or a moved run) never yields
//! a wrong answer, only a wasted lookup.

use crate::run::{DeliveryState, Phase, Run, RunId, RunStatus};
use crate::store::{DeliveryQuery, RunQuery};
use crate::time::Timestamp;
use serde::Deserialize;

/// Tags of `idx_runs` keys. One key holds route, status and phase (route
/// names use only `a-z 0-9 - _`, so the NUL after the route is unambiguous):
/// a query reads the union of the prefixes it allows, e.g. route+status
/// reads five (one per phase), status alone one per (route, phase). So a
/// run has two or three keys (provider, and delivery id when it has one
/// never change) and a transition moves one.
const ROUTE_STATUS_PHASE: u8 = 1;
const PROVIDER: u8 = 4;
const DELIVERY_ID: u8 = 6;

const STATUSES: [RunStatus; 8] = [
    RunStatus::Queued,
    RunStatus::Starting,
    RunStatus::Running,
    RunStatus::Waiting,
    RunStatus::Succeeded,
    RunStatus::Failed,
    RunStatus::Canceled,
    RunStatus::TimedOut,
];
const PHASES: [Phase; 5] = [
    Phase::Accepted,
    Phase::Starting,
    Phase::Tracking,
    Phase::Terminal,
    Phase::Done,
];

/// Tags of `idx_deliveries` keys.
const BY_STATE: u8 = 1;
const BY_ROUTE: u8 = 2;

/// Bytes of a run id at the end of every key.
pub(super) const ID_LEN: usize = 16;
/// Bytes of (run id, delivery index) at the end of a deliveries key.
pub(super) const DELIVERY_SUFFIX: usize = ID_LEN + 4;

/// How far a run's `created_at` may lie from the time in its id (both are
/// taken at acceptance, microseconds apart): a time filter widens its id
/// range by this much and then checks `created_at` exactly.
const ID_TIME_SLACK_MS: u64 = 60_000;

/// The version of the key layout; a store whose marker differs (or has
/// none: written before the index existed) gets its index built at open.
pub(super) const VERSION: &[u8] = b"3";

fn status_code(s: RunStatus) -> u8 {
    match s {
        RunStatus::Queued => 1,
        RunStatus::Starting => 2,
        RunStatus::Running => 3,
        RunStatus::Waiting => 4,
        RunStatus::Succeeded => 5,
        RunStatus::Failed => 6,
        RunStatus::Canceled => 7,
        RunStatus::TimedOut => 8,
    }
}

fn phase_code(p: Phase) -> u8 {
    match p {
        Phase::Accepted => 1,
        Phase::Starting => 2,
        Phase::Tracking => 3,
        Phase::Terminal => 4,
        Phase::Done => 5,
    }
}

/// The delivery states the deliveries index holds, and their codes.
fn state_code(s: DeliveryState) -> Option<u8> {
    match s {
        DeliveryState::Failing => Some(1),
        DeliveryState::Dead => Some(2),
        _ => None,
    }
}

/// The one delivery field the index reads.
#[derive(Deserialize)]
pub(super) struct DeliveryMeta {
    state: DeliveryState,
}

/// The index fields of a run's fixed part (they never change).
#[derive(Deserialize)]
struct FixedMeta {
    id: RunId,
    route: String,
    provider: String,
    #[serde(default)]
    delivery_id: Option<String>,
}

/// The index fields of a run's state (they change with transitions).
#[derive(Deserialize)]
pub(super) struct StateMeta {
    pub(super) phase: Phase,
    status: RunStatus,
    #[serde(default)]
    deliveries: Vec<DeliveryMeta>,
}

/// The fields of a run its index keys derive from: taken from a [`Run`],
/// or decoded from its stored parts without decoding all of them.
pub(super) struct IndexMeta {
    pub(super) id: RunId,
    route: String,
    provider: String,
    delivery_id: Option<String>,
    pub(super) state: StateMeta,
}

/// Every index key of one run.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct IndexKeys {
    pub(super) runs: Vec<Vec<u8>>,
    pub(super) deliveries: Vec<Vec<u8>>,
}

impl IndexKeys {
    /// The keys of `self` that `other` lacks, per tree.
    pub(super) fn minus(&self, other: &IndexKeys) -> IndexKeys {
        IndexKeys {
            runs: only_in(&self.runs, &other.runs),
            deliveries: only_in(&self.deliveries, &other.deliveries),
        }
    }
}

fn only_in(a: &[Vec<u8>], b: &[Vec<u8>]) -> Vec<Vec<u8>> {
    a.iter().filter(|k| !b.contains(k)).cloned().collect()
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

impl IndexMeta {
    /// The index fields of `run`.
    pub(super) fn of(run: &Run) -> IndexMeta {
        IndexMeta {
            id: run.id(),
            route: run.route().to_string(),
            provider: run.provider().to_string(),
            delivery_id: run.delivery_id().clone(),
            state: StateMeta {
                phase: run.phase(),
                status: run.status(),
                deliveries: run
                    .deliveries()
                    .iter()
                    .map(|d| DeliveryMeta { state: d.state })
                    .collect(),
            },
        }
    }

    /// Decodes the index fields of a stored run (`None` if it cannot).
    pub(super) fn decode(fixed: &[u8], state: &[u8]) -> Option<IndexMeta> {
        let f: FixedMeta = serde_json::from_slice(fixed).ok()?;
        Some(IndexMeta {
            id: f.id,
            route: f.route,
            provider: f.provider,
            delivery_id: f.delivery_id,
            state: serde_json::from_slice(state).ok()?,
        })
    }

    /// The keys this run had in a stored (older) state: its fixed fields
    /// cannot have changed, so only the state is decoded.
    pub(super) fn keys_in_state(&self, state: &[u8]) -> Option<IndexKeys> {
        let old: StateMeta = serde_json::from_slice(state).ok()?;
        Some(self.keys_with(&old))
    }

    /// Every index key of this run.
    pub(super) fn keys(&self) -> IndexKeys {
        self.keys_with(&self.state)
    }

    fn keys_with(&self, state: &StateMeta) -> IndexKeys {
        let id = self.id.to_bytes();
        let route = self.route.as_bytes();
        let (status, phase) = (status_code(state.status), phase_code(state.phase));
        let mut runs = vec![
            key(&[&[ROUTE_STATUS_PHASE], route, &[0, status, phase], &id]),
            key(&[&[PROVIDER], self.provider.as_bytes(), &[0], &id]),
        ];
        if let Some(d) = &self.delivery_id {
            runs.push(key(&[&[DELIVERY_ID], d.as_bytes(), &[0], route, &[0], &id]));
        }
        let mut deliveries = Vec::new();
        for (i, d) in state.deliveries.iter().enumerate() {
            let Some(code) = state_code(d.state) else {
                continue;
            };
            let i = (i as u32).to_be_bytes();
            deliveries.push(key(&[&[BY_STATE, code], &id, &i]));
            deliveries.push(key(&[&[BY_ROUTE, code], route, &[0], &id, &i]));
        }
        IndexKeys { runs, deliveries }
    }
}

/// An id as a number (ids compare as their big-endian bytes do).
pub(super) fn id_num(id: RunId) -> u128 {
    u128::from_be_bytes(id.to_bytes())
}

/// The smallest id minted at `ms` or later.
fn id_at(ms: u64) -> u128 {
    (ms.min((1 << 48) - 1) as u128) << 80
}

/// The ids a time range and a cursor allow, widened by the slack
/// (inclusive bounds); `None` when nothing can match.
fn id_bounds(
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    before: Option<u128>,
) -> Option<(u128, u128)> {
    let lo = since.map_or(0, |t| id_at(t.0.saturating_sub(ID_TIME_SLACK_MS)));
    let mut hi = u128::MAX;
    if let Some(t) = until {
        let end = t.0.saturating_add(ID_TIME_SLACK_MS);
        if end < 1 << 48 {
            hi = id_at(end).checked_sub(1)?;
        }
    }
    if let Some(b) = before {
        hi = hi.min(b.checked_sub(1)?);
    }
    (lo <= hi).then_some((lo, hi))
}

/// How a runs query walks the index.
pub(super) enum Plan {
    /// Nothing can match.
    Empty,
    /// No indexed field: walk the runs tree itself within the id range.
    Scan { lo: u128, hi: u128 },
    /// Intersect these streams within the id range: each stream is the
    /// union of key prefixes (each followed by the run id).
    /// `any_route_delivery_id` is a delivery id without a route, whose keys
    /// (prefix `[tag, id, NUL]`) must be collected and sorted, since the
    /// route sits between that prefix and the run id.
    Index {
        lo: u128,
        hi: u128,
        streams: Vec<Vec<Vec<u8>>>,
        any_route_delivery_id: Option<Vec<u8>>,
    },
}

/// Whether [`plan_runs`] needs the routes present in the index (a status
/// or phase without a route reads every route's prefixes).
pub(super) fn needs_routes(q: &RunQuery) -> bool {
    q.route.is_none() && (q.status.is_some() || q.phase.is_some())
}

/// The first key of the route+status+phase keys after every key of `route`
/// (to find the next route).
pub(super) fn after_route(route: &[u8]) -> Vec<u8> {
    key(&[&[ROUTE_STATUS_PHASE], route, &[1]])
}

/// The start of the route+status+phase keys.
pub(super) fn routes_start() -> Vec<u8> {
    vec![ROUTE_STATUS_PHASE]
}

/// The route of a route+status+phase key (`None` for any other key).
pub(super) fn route_of(k: &[u8]) -> Option<&[u8]> {
    let rest = k.strip_prefix(&[ROUTE_STATUS_PHASE])?;
    let end = rest.iter().position(|b| *b == 0)?;
    Some(&rest[..end])
}

/// The plan of a runs query: every field it names narrows one index
/// stream, and the streams are intersected, so the cost follows the rarest
/// field, not the first. `routes` are the routes in the index, needed only
/// when [`needs_routes`] says so.
pub(super) fn plan_runs(q: &RunQuery, routes: &[Vec<u8>]) -> Plan {
    let Some((lo, hi)) = id_bounds(q.since, q.until, q.before.map(id_num)) else {
        return Plan::Empty;
    };
    let route = q.route.as_deref().map(str::as_bytes);
    let mut streams: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut any_route_delivery_id = None;
    match (&q.delivery_id, route) {
        (Some(d), Some(r)) => {
            streams.push(vec![key(&[&[DELIVERY_ID], d.as_bytes(), &[0], r, &[0]])])
        }
        (Some(d), None) => any_route_delivery_id = Some(key(&[&[DELIVERY_ID], d.as_bytes(), &[0]])),
        (None, _) => {}
    }
    // Route, status and phase narrow one stream, unless only the route is
    // asked for and a delivery id (with that route) already narrowed it.
    let only_route = q.status.is_none() && q.phase.is_none();
    if (route.is_some() && !(only_route && q.delivery_id.is_some())) || needs_routes(q) {
        let statuses: &[RunStatus] = match &q.status {
            Some(s) => std::slice::from_ref(s),
            None => &STATUSES,
        };
        let phases: &[Phase] = match &q.phase {
            Some(p) => std::slice::from_ref(p),
            None => &PHASES,
        };
        let routes: Vec<&[u8]> = match route {
            Some(r) => vec![r],
            None => routes.iter().map(Vec::as_slice).collect(),
        };
        let mut union = Vec::new();
        for r in &routes {
            for s in statuses {
                for p in phases {
                    union.push(key(&[
                        &[ROUTE_STATUS_PHASE],
                        r,
                        &[0, status_code(*s), phase_code(*p)],
                    ]));
                }
            }
        }
        streams.push(union);
    }
    if let Some(p) = &q.provider {
        streams.push(vec![key(&[&[PROVIDER], p.as_bytes(), &[0]])]);
    }
    if streams.is_empty() && any_route_delivery_id.is_none() {
        Plan::Scan { lo, hi }
    } else {
        Plan::Index {
            lo,
            hi,
            streams,
            any_route_delivery_id,
        }
    }
}

/// How a deliveries query walks the index.
pub(super) enum DeliveryPlan {
    /// A state the index does not hold was asked for: scan the runs.
    Scan,
    /// Merge these prefixes (each followed by run id and index), newest
    /// first, from `lo` (inclusive suffix) up to `hi` (exclusive suffix).
    Index {
        prefixes: Vec<Vec<u8>>,
        lo: [u8; DELIVERY_SUFFIX],
        hi: Option<[u8; DELIVERY_SUFFIX]>,
    },
}

/// The plan of a deliveries query: one stream per wanted state.
pub(super) fn plan_deliveries(q: &DeliveryQuery) -> DeliveryPlan {
    let mut codes = Vec::new();
    for s in q.wanted() {
        match state_code(s) {
            Some(c) if !codes.contains(&c) => codes.push(c),
            Some(_) => {}
            None => return DeliveryPlan::Scan,
        }
    }
    let lo_id = q
        .since
        .map_or(0, |t| id_at(t.0.saturating_sub(ID_TIME_SLACK_MS)));
    let mut lo = [0u8; DELIVERY_SUFFIX];
    lo[..ID_LEN].copy_from_slice(&lo_id.to_be_bytes());
    let hi = q.before.map(|(id, i)| {
        let mut h = [0u8; DELIVERY_SUFFIX];
        h[..ID_LEN].copy_from_slice(&id.to_bytes());
        h[ID_LEN..].copy_from_slice(&i.to_be_bytes());
        h
    });
    let prefixes = codes
        .into_iter()
        .map(|c| match q.route.as_deref() {
            Some(r) => key(&[&[BY_ROUTE, c], r.as_bytes(), &[0]]),
            None => vec![BY_STATE, c],
        })
        .collect();
    DeliveryPlan::Index { prefixes, lo, hi }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_range_becomes_a_widened_id_range() {
        let (lo, hi) = id_bounds(Some(Timestamp(100_000)), Some(Timestamp(200_000)), None).unwrap();
        assert_eq!(lo, id_at(40_000));
        assert_eq!(hi, id_at(260_000) - 1);
        assert!(
            id_bounds(None, None, Some(0)).is_none(),
            "nothing before id 0"
        );
        let (_, hi) = id_bounds(None, None, Some(7)).unwrap();
        assert_eq!(hi, 6, "the cursor is exclusive");
    }

    #[test]
    fn route_and_status_read_one_prefix_per_phase() {
        let q = RunQuery {
            route: Some("gh".into()),
            status: Some(RunStatus::Failed),
            limit: 1,
            ..Default::default()
        };
        let Plan::Index { streams, .. } = plan_runs(&q, &[]) else {
            panic!("expected an index plan");
        };
        let phases: Vec<Vec<u8>> = (1..=5).map(|p| vec![1, b'g', b'h', 0, 6, p]).collect();
        assert_eq!(streams, vec![phases]);
        assert!(matches!(
            plan_runs(&RunQuery::default(), &[]),
            Plan::Scan {
                lo: 0,
                hi: u128::MAX
            }
        ));
    }

    #[test]
    fn only_failing_and_dead_are_indexed() {
        let q = DeliveryQuery {
            states: vec![DeliveryState::Delivered],
            ..Default::default()
        };
        assert!(matches!(plan_deliveries(&q), DeliveryPlan::Scan));
        let q = DeliveryQuery::default();
        let DeliveryPlan::Index { prefixes, .. } = plan_deliveries(&q) else {
            panic!("expected an index plan");
        };
        assert_eq!(prefixes, vec![vec![BY_STATE, 1], vec![BY_STATE, 2]]);
    }
}
