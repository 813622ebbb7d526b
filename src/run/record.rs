//! The stored form of a run, in two parts: what never changes after
//! acceptance ([`Fixed`]: route, provider, workflow, inputs, delivery id,
//! times fixed at acceptance, the replayed run) and the small mutable state
//! ([`State`]: phase, status, vendor ids, counters, history, deliveries, due
//! times). A store writes the fixed part once, at create, and each
//! transition rewrites only the state (issue 10: compact records).
//!
//! Both parts keep the field names, defaults and aliases of [`Run`]'s own
//! JSON, so a whole record written by an older version decodes as either
//! part (serde skips the other part's fields): that is what lets a store
//! migrate in place. They stay JSON: the state holds `serde_json::Value`s
//! (vendor output and errors) and relies on serde defaults for fields added
//! over time, which a non-self-describing format (postcard, bincode) cannot
//! read; a binary encoding would need its own versioned layout.
//!
//! The `*Ref` types borrow from a run for encoding; the owned types decode.

use super::{CancelRequest, Delivery, EventRecord, Phase, Run, RunId, RunStatus, StatusChange};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The fixed part of a run, borrowed for encoding.
#[derive(Serialize)]
pub struct FixedRef<'a> {
    id: RunId,
    route: &'a str,
    provider: &'a str,
    workflow_id: &'a str,
    inputs: &'a Value,
    delivery_id: &'a Option<String>,
    created_at: Timestamp,
    deadline: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_of: Option<RunId>,
}

/// The fixed part of a run, decoded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Fixed {
    id: RunId,
    route: String,
    provider: String,
    workflow_id: String,
    inputs: Value,
    delivery_id: Option<String>,
    created_at: Timestamp,
    deadline: Timestamp,
    #[serde(default)]
    replay_of: Option<RunId>,
}

/// The mutable state of a run, borrowed for encoding (the run id is the
/// record's key, not part of it).
#[derive(Serialize)]
pub struct StateRef<'a> {
    phase: Phase,
    status: RunStatus,
    raw_status: &'a Option<String>,
    vendor_run_id: &'a Option<String>,
    output: &'a Option<Value>,
    error: &'a Option<Value>,
    updated_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    failures: u32,
    start_attempts: u32,
    polls: u32,
    last_error: &'a Option<String>,
    history: &'a [StatusChange],
    deliveries: &'a [Delivery],
    due_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_began_at: Option<Timestamp>,
    start_unsure: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_since: Option<Timestamp>,
    unknown_status_logged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel: &'a Option<CancelRequest>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    events: &'a [EventRecord],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    replays: &'a [RunId],
}

/// The mutable state of a run, decoded (same defaults as [`Run`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct State {
    phase: Phase,
    status: RunStatus,
    raw_status: Option<String>,
    vendor_run_id: Option<String>,
    output: Option<Value>,
    error: Option<Value>,
    updated_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    failures: u32,
    start_attempts: u32,
    polls: u32,
    last_error: Option<String>,
    history: Vec<StatusChange>,
    deliveries: Vec<Delivery>,
    due_at: Option<Timestamp>,
    #[serde(default)]
    start_began_at: Option<Timestamp>,
    #[serde(default)]
    start_unsure: bool,
    #[serde(default)]
    waiting_since: Option<Timestamp>,
    #[serde(default)]
    unknown_status_logged: bool,
    #[serde(default)]
    poll_at: Option<Timestamp>,
    #[serde(default)]
    cancel: Option<CancelRequest>,
    #[serde(default)]
    events: Vec<EventRecord>,
    #[serde(default)]
    replays: Vec<RunId>,
}

impl Fixed {
    /// The run this part belongs to.
    pub fn id(&self) -> RunId {
        self.id
    }
}

impl Run {
    /// The part of this run fixed at acceptance, for encoding.
    pub fn fixed_part(&self) -> FixedRef<'_> {
        FixedRef {
            id: self.id,
            route: &self.route,
            provider: &self.provider,
            workflow_id: &self.workflow_id,
            inputs: &self.inputs,
            delivery_id: &self.delivery_id,
            created_at: self.created_at,
            deadline: self.deadline,
            replay_of: self.replay_of,
        }
    }

    /// The mutable part of this run, for encoding.
    pub fn state_part(&self) -> StateRef<'_> {
        StateRef {
            phase: self.phase,
            status: self.status,
            raw_status: &self.raw_status,
            vendor_run_id: &self.vendor_run_id,
            output: &self.output,
            error: &self.error,
            updated_at: self.updated_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            failures: self.failures,
            start_attempts: self.start_attempts,
            polls: self.polls,
            last_error: &self.last_error,
            history: &self.history,
            deliveries: &self.deliveries,
            due_at: self.due_at,
            start_began_at: self.start_began_at,
            start_unsure: self.start_unsure,
            waiting_since: self.waiting_since,
            unknown_status_logged: self.unknown_status_logged,
            poll_at: self.poll_at,
            cancel: &self.cancel,
            events: &self.events,
            replays: &self.replays,
        }
    }

    /// The run made of its two stored parts.
    pub fn join(fixed: Fixed, state: State) -> Run {
        Run {
            id: fixed.id,
            route: fixed.route,
            provider: fixed.provider,
            workflow_id: fixed.workflow_id,
            inputs: fixed.inputs,
            delivery_id: fixed.delivery_id,
            phase: state.phase,
            status: state.status,
            raw_status: state.raw_status,
            vendor_run_id: state.vendor_run_id,
            output: state.output,
            error: state.error,
            created_at: fixed.created_at,
            updated_at: state.updated_at,
            started_at: state.started_at,
            finished_at: state.finished_at,
            deadline: fixed.deadline,
            failures: state.failures,
            start_attempts: state.start_attempts,
            polls: state.polls,
            last_error: state.last_error,
            history: state.history,
            deliveries: state.deliveries,
            due_at: state.due_at,
            start_began_at: state.start_began_at,
            start_unsure: state.start_unsure,
            waiting_since: state.waiting_since,
            unknown_status_logged: state.unknown_status_logged,
            poll_at: state.poll_at,
            cancel: state.cancel,
            events: state.events,
            replay_of: fixed.replay_of,
            replays: state.replays,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Observation, RunSpec, Target};

    fn busy_run() -> Run {
        let t = Timestamp(1_700_000_000_000);
        let spec = RunSpec {
            delivery_id: Some("dlv-1".into()),
            inputs: serde_json::json!({"repo": "acme/x", "n": [1, 2]}),
            ..RunSpec::example()
        };
        let mut run =
            Run::accepted(RunId::new(), spec, t, Timestamp(t.0 + 60_000)).replaying(RunId::new());
        run.add_replay(RunId::new());
        run.begin_start(t, Timestamp(t.0 + 1_000)).unwrap();
        let targets = [Target {
            url: "https://receiver.example/hook".into(),
            events: vec!["run.succeeded".into()],
        }];
        let obs = Observation::local(RunStatus::Running, None, None);
        run.started(t, "v-1".into(), obs, Timestamp(t.0 + 2_000), &targets)
            .unwrap();
        let done = Observation::local(RunStatus::Succeeded, None, None);
        run.observed(
            Timestamp(t.0 + 3_000),
            done,
            Timestamp(t.0 + 4_000),
            &targets,
        )
        .unwrap();
        run
    }

    fn split(run: &Run) -> (Vec<u8>, Vec<u8>) {
        (
            serde_json::to_vec(&run.fixed_part()).unwrap(),
            serde_json::to_vec(&run.state_part()).unwrap(),
        )
    }

    #[test]
    fn a_split_run_joins_back_equal() {
        for run in [
            Run::accepted(RunId::new(), RunSpec::example(), Timestamp(5), Timestamp(9)),
            busy_run(),
        ] {
            let (fixed, state) = split(&run);
            let back = Run::join(
                serde_json::from_slice(&fixed).unwrap(),
                serde_json::from_slice(&state).unwrap(),
            );
            assert_eq!(back, run);
            let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
            assert!(state.get("inputs").is_none() && state.get("id").is_none());
        }
    }

    #[test]
    fn a_whole_record_of_an_older_version_decodes_as_both_parts() {
        let run = busy_run();
        let whole = serde_json::to_vec(&run).unwrap();
        let back = Run::join(
            serde_json::from_slice(&whole).unwrap(),
            serde_json::from_slice(&whole).unwrap(),
        );
        assert_eq!(back, run);
        let fixed: Fixed = serde_json::from_slice(&whole).unwrap();
        assert_eq!(fixed.id(), run.id());
        // A fixed part alone is not a whole run (how a migration tells them apart).
        let (fixed, _) = split(&run);
        assert!(serde_json::from_slice::<Run>(&fixed).is_err());
    }
}
