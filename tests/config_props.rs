//! Property test: no config value, accepted or not, makes anything panic.
//! Random durations, sizes, numbers, booleans and strings go to every key
//! through `Settings::from_config`; whatever is accepted then feeds the time
//! math it drives (poll intervals, provider backoff, callback schedule,
//! deadlines and their RFC 3339 display). The same math is also run on raw
//! values far past every maximum, which must saturate rather than panic.

use std::time::Duration;

use proptest::prelude::*;
use runbridge::backoff;
use runbridge::config::Settings;
use runbridge::delivery::{next_attempt, Outcome};
use runbridge::run::Attempt;
use runbridge::time::Timestamp;

const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_token = "admin-token-1"
[storage]
path = "/nonexistent/runbridge-proptest"
[providers.slate]
kind = "slate"
base_url = "http://127.0.0.1:1/v1"
token = "slat_proptest"
[providers.sim]
kind = "simulated"
[routes.r]
provider = "slate"
workflow_id = "wf"
verify = { kind = "standard-webhooks", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
[[routes.r.callbacks]]
url = "http://127.0.0.1:1/cb"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;

/// What a key holds, so most random values are plausible for it (and
/// many configs are accepted), while any value may go to any key.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Duration,
    Size,
    Number,
    Fraction,
    Secret,
}

const KEYS: &[(&str, Kind)] = &[
    ("server.body_limit", Kind::Size),
    ("server.request_timeout", Kind::Duration),
    ("server.shutdown_timeout", Kind::Duration),
    ("server.admin_token", Kind::Secret),
    ("storage.cache_capacity", Kind::Size),
    ("scheduler.poll_interval", Kind::Duration),
    ("scheduler.poll_slowdown_after", Kind::Duration),
    ("scheduler.max_poll_interval", Kind::Duration),
    ("scheduler.run_timeout", Kind::Duration),
    ("scheduler.concurrency", Kind::Number),
    ("scheduler.retry_base", Kind::Duration),
    ("scheduler.retry_max", Kind::Duration),
    ("delivery.jitter", Kind::Fraction),
    ("delivery.timeout", Kind::Duration),
    ("delivery.max_retry_after", Kind::Duration),
    ("providers.slate.timeout", Kind::Duration),
    ("providers.slate.token", Kind::Secret),
    ("providers.sim.duration", Kind::Duration),
    ("routes.r.run_timeout", Kind::Duration),
    ("routes.r.dedupe_ttl", Kind::Duration),
    ("routes.r.verify.tolerance", Kind::Duration),
    ("routes.r.verify.secret", Kind::Secret),
];

#[derive(Debug, Clone)]
enum V {
    S(String),
    I(i64),
    F(f64),
    B(bool),
    List(Vec<String>),
}

fn duration_text() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec![
        "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", "years", "",
    ]);
    prop_oneof![
        // Mostly log-uniform from 1 ms to about 30 years (around the maxima)...
        6 => (0u32..13)
            .prop_flat_map(|e| 0u64..10u64.pow(e).max(2))
            .prop_map(|n| format!("{n}ms")),
        2 => (0u64..100, unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        // ...and some far past them.
        1 => (any::<u64>(), unit).prop_map(|(n, u)| format!("{n}{u}")),
        1 => Just("9000y".to_string()),
        1 => (0u64..1000, 0u64..1000).prop_map(|(a, b)| format!("{a}d {b}h")),
    ]
}

fn size_text() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec![
        "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "KB", "",
    ]);
    prop_oneof![
        3 => (0u64..100_000, prop::sample::select(vec!["KiB", "MiB", "B"]))
            .prop_map(|(n, u)| format!("{n}{u}")),
        1 => (any::<u64>(), unit).prop_map(|(n, u)| format!("{n}{u}")),
    ]
}

/// Any value of any type, for any key.
fn anything() -> impl Strategy<Value = V> {
    prop_oneof![
        duration_text().prop_map(V::S),
        size_text().prop_map(V::S),
        any::<i64>().prop_map(V::I),
        any::<f64>().prop_map(V::F),
        any::<bool>().prop_map(V::B),
        ".{0,16}".prop_map(V::S),
    ]
}

fn value(kind: Kind) -> BoxedStrategy<V> {
    let typed = match kind {
        Kind::Duration => duration_text().prop_map(V::S).boxed(),
        Kind::Size => size_text().prop_map(V::S).boxed(),
        Kind::Number => prop_oneof![0i64..20_000, any::<i64>()]
            .prop_map(V::I)
            .boxed(),
        Kind::Fraction => prop_oneof![0.0f64..=1.0, any::<f64>()]
            .prop_map(V::F)
            .boxed(),
        Kind::Secret => prop_oneof![
            "[a-z0-9_]{0,40}".prop_map(V::S),
            any::<i64>().prop_map(V::I),
            any::<f64>().prop_map(V::F),
            any::<bool>().prop_map(V::B),
        ]
        .boxed(),
    };
    prop_oneof![8 => typed, 1 => anything()].boxed()
}

fn edit() -> impl Strategy<Value = (String, V)> {
    let keyed = prop::sample::select(KEYS)
        .prop_flat_map(|(k, kind)| value(kind).prop_map(move |v| (k.to_string(), v)));
    prop_oneof![
        6 => keyed,
        1 => prop::collection::vec(duration_text(), 0..10)
            .prop_map(|s| ("delivery.schedule".to_string(), V::List(s))),
    ]
}

fn settings(edits: &[(String, V)]) -> Option<Settings> {
    let mut b = config::Config::builder()
        .add_source(config::File::from_str(BASE, config::FileFormat::Toml));
    for (k, v) in edits {
        b = match v.clone() {
            V::S(s) => b.set_override(k, s),
            V::I(i) => b.set_override(k, i),
            V::F(f) => b.set_override(k, f),
            V::B(x) => b.set_override(k, x),
            V::List(l) => b.set_override(k, l),
        }
        .ok()?;
    }
    let cfg = b.build().ok()?;
    // Errors must render too (Display of every problem).
    match Settings::from_config(cfg) {
        Ok(s) => Some(s),
        Err(e) => {
            let _ = e.to_string();
            None
        }
    }
}

fn outcome(retry_after: Option<Duration>, gone: bool) -> Outcome {
    Outcome {
        attempt: Attempt {
            at: Timestamp(0),
            duration_ms: 0,
            status_code: Some(503),
            error: None,
            response: None,
        },
        succeeded: false,
        retry_after,
        gone,
        refused: false,
    }
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..10_000_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::MAX),
        Just(Duration::ZERO),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_config_value_panics(
        edits in prop::collection::vec(edit(), 1..4),
        now in prop_oneof![Just(Timestamp::now().0), any::<u64>()],
        age in any_duration(),
        attempt in any::<u32>(),
        made in 0usize..64,
        retry_after in prop::option::of(any_duration()),
    ) {
        let Some(s) = settings(&edits) else { return Ok(()) };
        let now = Timestamp(now);
        let sc = &s.scheduler;
        let poll = backoff::poll_interval(age, sc.poll_interval, sc.poll_slowdown_after, sc.max_poll_interval);
        prop_assert!(poll <= sc.max_poll_interval);
        let next = now.plus(backoff::spread(poll, 0.1));
        prop_assert!(next >= now);
        let retry = backoff::exponential(attempt, sc.retry_base, sc.retry_max, 0.2);
        let retry = backoff::honour_retry_after(retry, retry_after, Duration::from_secs(3600));
        let _ = now.plus(retry).to_string();
        for gone in [false, true] {
            if let Some(at) = next_attempt(now, made, &outcome(retry_after, gone), &s.delivery) {
                prop_assert!(at >= now);
                let _ = at.to_string();
            }
        }
        for route in s.routes.values() {
            let deadline = now.plus(s.run_timeout(route));
            let _ = serde_json::to_string(&deadline).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let _ = now.plus(route.dedupe_ttl).to_string();
            prop_assert!(deadline.since(now) <= runbridge::config::limits::MAX_RUN_TIMEOUT);
        }
    }

    #[test]
    fn time_math_saturates_past_every_maximum(
        now in any::<u64>(),
        a in any_duration(),
        b in any_duration(),
        c in any_duration(),
        attempt in any::<u32>(),
        jitter in any::<f64>(),
        factor in any::<f64>(),
    ) {
        let now = Timestamp(now);
        let _ = now.plus(a).to_string();
        let _ = now.since(Timestamp(a.as_millis().min(u64::MAX as u128) as u64));
        let _ = backoff::exponential(attempt, a, b, jitter);
        let _ = backoff::spread(a, jitter);
        let _ = backoff::mul_saturating(a, factor);
        let _ = backoff::poll_interval(a, b, c, b.max(c));
        let _ = backoff::honour_retry_after(a, Some(b), c);
    }
}
