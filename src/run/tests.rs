//! The state machine's transitions, events and the record format.

use super::*;

fn obs(status: RunStatus, raw: &str) -> Observation {
    Observation {
        status,
        raw_status: Some(raw.into()),
        output: None,
        error: None,
        unknown: false,
    }
}

fn targets(url: &str) -> Vec<Target> {
    vec![Target {
        url: url.into(),
        events: EVENT_TYPES.map(String::from).to_vec(),
    }]
}

fn run() -> Run {
    let t = Timestamp(1_000);
    let spec = RunSpec {
        delivery_id: Some("d1".into()),
        ..RunSpec::example()
    };
    Run::accepted(RunId::new(), spec, t, Timestamp(100_000))
}

#[test]
fn happy_path_reaches_done() {
    let mut r = run();
    assert_eq!(r.due_at, Some(Timestamp(1_000)));
    r.begin_start(Timestamp(1_001), Timestamp(5_000)).unwrap();
    assert_eq!((r.phase, r.start_attempts), (Phase::Starting, 1));
    r.started(
        Timestamp(1_002),
        "v1".into(),
        obs(RunStatus::Queued, "QUEUED"),
        Timestamp(6_000),
        &[],
    )
    .unwrap();
    assert_eq!(r.phase, Phase::Tracking);
    assert_eq!(r.due_at, Some(Timestamp(6_000)));
    r.observed(
        Timestamp(6_000),
        obs(RunStatus::Running, "RUNNING"),
        Timestamp(11_000),
        &[],
    )
    .unwrap();
    r.observed(
        Timestamp(6_500),
        obs(RunStatus::Running, "RUNNING"),
        Timestamp(11_000),
        &[],
    )
    .unwrap();
    assert_eq!(r.history.len(), 2, "unchanged statuses are not repeated");
    let cbs = targets("http://a");
    r.observed(
        Timestamp(11_000),
        obs(RunStatus::Succeeded, "COMPLETED"),
        Timestamp(0),
        &cbs,
    )
    .unwrap();
    assert_eq!(r.phase, Phase::Terminal);
    assert_eq!(r.due_at, Some(Timestamp(11_000)));
    assert_eq!(
        r.deliveries[0].webhook_id,
        format!("{}_1", r.id.webhook_id())
    );
    let d = &mut r.deliveries[0];
    let a = Attempt {
        at: Timestamp(11_001),
        duration_ms: 3,
        status_code: Some(500),
        error: None,
        response: None,
    };
    d.record(a.clone(), false, Some(Timestamp(16_000)));
    r.settle_deliveries(Timestamp(11_002));
    assert_eq!(r.due_at, Some(Timestamp(16_000)));
    r.deliveries[0].record(a, true, None);
    r.settle_deliveries(Timestamp(16_001));
    assert_eq!((r.phase, r.due_at), (Phase::Done, None));
}

#[test]
fn polls_never_scheduled_past_deadline_and_timeout_creates_event() {
    let mut r = run();
    r.begin_start(Timestamp(1_001), Timestamp(500_000)).unwrap();
    assert_eq!(
        r.due_at,
        Some(Timestamp(500_000)),
        "start retry is not clamped: the start is the crash guard"
    );
    r.started(
        Timestamp(1_002),
        "v".into(),
        obs(RunStatus::Running, "RUNNING"),
        Timestamp(900_000),
        &[],
    )
    .unwrap();
    assert_eq!(r.due_at, Some(r.deadline));
    r.time_out(
        Timestamp(100_000),
        std::time::Duration::from_secs(99),
        &targets("u"),
    )
    .unwrap();
    assert_eq!(r.status, RunStatus::TimedOut);
    assert_eq!(r.error.as_ref().unwrap()["code"], "TIMED_OUT");
    assert_eq!(r.deliveries.len(), 1);
}

#[test]
fn dead_delivery_finishes_run() {
    let mut r = run();
    r.finish(
        Timestamp(2_000),
        obs(RunStatus::Failed, "FAILED"),
        &targets("u"),
    )
    .unwrap();
    let a = Attempt {
        at: Timestamp(2_001),
        duration_ms: 1,
        status_code: None,
        error: Some("refused".into()),
        response: None,
    };
    r.deliveries[0].record(a, false, None);
    r.settle_deliveries(Timestamp(2_002));
    assert_eq!(r.deliveries[0].state, DeliveryState::Dead);
    assert_eq!(r.phase, Phase::Done);
}

#[test]
fn run_id_round_trips() {
    let id = RunId::new();
    assert_eq!(id.to_string().parse::<RunId>().unwrap(), id);
    assert_eq!(RunId::from_bytes(id.to_bytes()), id);
    assert!(!id.webhook_id().contains('.'));
    assert_eq!(
        "timed_out".parse::<RunStatus>().unwrap(),
        RunStatus::TimedOut
    );
}

#[test]
fn illegal_transitions_are_errors_and_change_nothing() {
    let mut r = run();
    let before = r.clone();
    let e = r
        .started(
            Timestamp(2),
            "v".into(),
            obs(RunStatus::Running, "R"),
            Timestamp(3),
            &[],
        )
        .unwrap_err();
    assert_eq!(
        (e.phase, e.what),
        (Phase::Accepted, "record a started vendor run")
    );
    assert_eq!(r, before);
    r.finish(Timestamp(2_000), obs(RunStatus::Failed, "FAILED"), &[])
        .unwrap();
    assert!(r.begin_start(Timestamp(2_001), Timestamp(3_000)).is_err());
    assert!(r.request_cancel(Timestamp(2_001)).is_err(), "already ended");
}

#[test]
fn a_waiting_spell_sends_one_event_with_its_own_id() {
    let mut r = run();
    let t = targets("http://a");
    r.begin_start(Timestamp(1_001), Timestamp(5_000)).unwrap();
    r.started(
        Timestamp(1_002),
        "v".into(),
        obs(RunStatus::Running, "running"),
        Timestamp(2_000),
        &[],
    )
    .unwrap();
    for at in [2_000, 3_000] {
        r.observed(
            Timestamp(at),
            obs(RunStatus::Waiting, "paused"),
            Timestamp(at + 1_000),
            &t,
        )
        .unwrap();
    }
    assert_eq!(r.events.len(), 1, "one event per waiting spell");
    assert_eq!(
        r.due_at,
        Some(Timestamp(2_000)),
        "the waiting event is due at once"
    );
    r.observed(
        Timestamp(4_000),
        obs(RunStatus::Running, "running"),
        Timestamp(5_000),
        &t,
    )
    .unwrap();
    r.observed(
        Timestamp(5_000),
        obs(RunStatus::Waiting, "paused"),
        Timestamp(6_000),
        &t,
    )
    .unwrap();
    r.observed(
        Timestamp(6_000),
        obs(RunStatus::Succeeded, "completed"),
        Timestamp(7_000),
        &t,
    )
    .unwrap();
    let ids: Vec<&str> = r.deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    // A callback not subscribed to run.waiting gets the terminal event only.
    let mut r2 = run();
    let only_terminal = vec![Target {
        url: "http://b".into(),
        events: DEFAULT_EVENTS.map(String::from).to_vec(),
    }];
    r2.begin_start(Timestamp(1_001), Timestamp(5_000)).unwrap();
    r2.started(
        Timestamp(1_002),
        "v".into(),
        obs(RunStatus::Waiting, "paused"),
        Timestamp(2_000),
        &[],
    )
    .unwrap();
    r2.observed(
        Timestamp(2_000),
        obs(RunStatus::Waiting, "paused"),
        Timestamp(3_000),
        &only_terminal,
    )
    .unwrap();
    assert!(r2.deliveries.is_empty());
    assert_eq!(
        r2.waiting_since,
        Some(Timestamp(2_000)),
        "a run that starts out waiting still gets its waiting limit"
    );
}

/// A record as the previous version wrote it (no event ids, no cancel,
/// no waiting fields) opens, and its pending delivery keeps `msg_<run id>`.
#[test]
fn a_record_in_the_previous_json_form_opens_and_keeps_its_event_id() {
    let json = r#"{"id":"01KAT2Q7Q8V1G5M6H8R4S0ZB9N","route":"gh","provider":"slate",
            "workflow_id":"wf","inputs":{"repo":"o/r"},"delivery_id":"d1","phase":"terminal",
            "status":"succeeded","raw_status":"COMPLETED","vendor_run_id":"v-1",
            "output":{"ok":true},"error":null,"created_at":"2026-11-23T10:00:00.000Z",
            "updated_at":"2026-11-23T10:00:05.000Z","started_at":"2026-11-23T10:00:01.000Z",
            "finished_at":"2026-11-23T10:00:05.000Z","deadline":"2026-11-24T10:00:00.000Z",
            "failures":0,"start_attempts":1,"polls":3,"last_error":null,
            "history":[{"at":"2026-11-23T10:00:05.000Z","status":"succeeded","raw_status":"COMPLETED"}],
            "deliveries":[{"url":"http://r/cb","webhook_id":"msg_01KAT2Q7Q8V1G5M6H8R4S0ZB9N",
              "state":"pending","attempts":[],"next_attempt_at":"2026-11-23T10:00:05.000Z"}],
            "due_at":"2026-11-23T10:00:05.000Z"}"#;
    let r: Run = serde_json::from_str(json).unwrap();
    let d = &r.deliveries[0];
    assert_eq!(d.webhook_id, r.id.webhook_id());
    assert!(r.event_of(d).is_none(), "the terminal event");
    let body: Value = serde_json::from_slice(&crate::delivery::event_body(&r, d)).unwrap();
    assert_eq!(body["type"], "run.succeeded");
    assert_eq!(body["data"]["event_id"], r.id.webhook_id());
    assert!(r.cancel.is_none() && r.events.is_empty() && !r.start_unsure);
}

#[test]
fn run_started_is_one_event_for_the_targets_asking() {
    let mut r = run();
    r.begin_start(Timestamp(1_001), Timestamp(5_000)).unwrap();
    let asked = vec![
        Target {
            url: "a".into(),
            events: vec!["run.started".into(), "run.succeeded".into()],
        },
        Target {
            url: "b".into(),
            events: DEFAULT_EVENTS.map(String::from).to_vec(),
        },
    ];
    r.started(
        Timestamp(1_002),
        "v".into(),
        obs(RunStatus::Running, "RUNNING"),
        Timestamp(6_000),
        &asked,
    )
    .unwrap();
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].kind, "run.started");
    assert_eq!(r.deliveries.len(), 1);
    assert_eq!(r.deliveries[0].url, "a");
    assert_eq!(r.due_at, Some(Timestamp(1_002)), "the event is due at once");
    r.finish(Timestamp(2_000), obs(RunStatus::Succeeded, "OK"), &asked)
        .unwrap();
    let ids: Vec<&str> = r.deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert_ne!(ids[0], ids[1], "each event has its own id");
}

#[test]
fn gone_disables_the_url_for_the_rest_of_the_run() {
    let mut r = run();
    r.begin_start(Timestamp(1_001), Timestamp(5_000)).unwrap();
    let t = vec![
        Target {
            url: "a".into(),
            events: vec![
                "run.started".into(),
                "run.waiting".into(),
                "run.succeeded".into(),
            ],
        },
        Target {
            url: "b".into(),
            events: vec!["run.succeeded".into()],
        },
    ];
    r.started(
        Timestamp(1_002),
        "v".into(),
        obs(RunStatus::Running, "RUNNING"),
        Timestamp(6_000),
        &t,
    )
    .unwrap();
    let a = Attempt {
        at: Timestamp(1_003),
        duration_ms: 1,
        status_code: Some(410),
        error: Some("receiver answered HTTP 410".into()),
        response: None,
    };
    r.callback_gone(0, a);
    assert_eq!(r.deliveries[0].state, DeliveryState::Gone);
    assert!(r.is_gone("a") && !r.is_gone("b"));
    r.observed(
        Timestamp(1_500),
        obs(RunStatus::Waiting, "W"),
        Timestamp(6_000),
        &t,
    )
    .unwrap();
    r.finish(Timestamp(2_000), obs(RunStatus::Succeeded, "OK"), &t)
        .unwrap();
    let urls: Vec<&str> = r.deliveries.iter().map(|d| d.url.as_str()).collect();
    assert_eq!(urls, ["a", "b"], "no later event goes to the gone URL");
    // Old records without the state still open; `gone` round-trips.
    let json = serde_json::to_string(&r.deliveries[0]).unwrap();
    assert!(json.contains("\"gone\""));
    let back: Delivery = serde_json::from_str(&json).unwrap();
    assert_eq!(back.state, DeliveryState::Gone);
}
