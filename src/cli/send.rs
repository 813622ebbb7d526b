//! `runbridge send ROUTE`: signs a payload exactly as the route's configured
//! sender would and posts it to the daemon, so a route can be tried before a
//! real sender points at it (as `stripe trigger` does). Secrets come from the
//! local config file only (the admin API never hands them out) and are never
//! printed.

use super::http::{client, read_bounded};
use runbridge::config::{InputSource, RouteSettings, Settings};
use runbridge::ingress::verify::{fresh_id, Check, Outgoing};
use runbridge::time::Timestamp;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `runbridge send` arguments.
#[derive(clap::Args)]
pub struct SendArgs {
    /// The route to send to (a `[routes.NAME]` of the config).
    pub route: String,
    /// The payload to send (default: a sample for the route's sender kind).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Configuration file holding the route and its secrets.
    #[arg(
        long,
        short,
        default_value = "config/runbridge.toml",
        env = "RUNBRIDGE_CONFIG"
    )]
    pub config: PathBuf,
    /// The daemon's base URL.
    #[arg(long, env = "RUNBRIDGE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The event name: `X-GitHub-Event`, `X-Shopify-Topic`, or the sample
    /// payload's `type` for other kinds.
    #[arg(long, value_name = "NAME")]
    pub event: Option<String>,
    /// An extra header (`Name: value`), repeatable; set before signing.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The body's content type.
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The sender kind a route's sample payload imitates: its first signature
/// kind, else the first kind of any sort.
fn sender(route: &RouteSettings) -> &'static str {
    let checks = route.verify.checks();
    let name = |c: &Check| match c {
        Check::Github(_) => Some("github"),
        Check::Stripe(_) => Some("stripe"),
        Check::Slack(_) => Some("slack"),
        Check::Shopify(_) => Some("shopify"),
        Check::StandardWebhooks(_) => Some("standard-webhooks"),
        Check::Hmac(_) => Some("hmac"),
        _ => None,
    };
    checks.iter().find_map(name).unwrap_or("generic")
}

/// A sample payload shaped like the sender's, with fresh ids where the
/// sender's delivery id lives (Stripe `/id`, Slack `/event_id`).
pub fn sample(kind: &str, event: Option<&str>, now: Timestamp) -> Value {
    let secs = now.unix_seconds();
    match kind {
        "github" => json!({
            "ref": "refs/heads/main",
            "before": "0000000000000000000000000000000000000000",
            "after": "1111111111111111111111111111111111111111",
            "repository": {"full_name": "octo-org/sample", "private": false},
            "sender": {"login": "runbridge-send"},
        }),
        "stripe" => json!({
            "id": fresh_id("evt_"),
            "object": "event",
            "type": event.unwrap_or("payment_intent.succeeded"),
            "created": secs,
            "livemode": false,
            "data": {"object": {"id": "pi_sample", "object": "payment_intent",
                                 "amount": 1000, "currency": "usd"}},
        }),
        "slack" => json!({
            "type": "event_callback",
            "event_id": fresh_id("Ev"),
            "event_time": secs,
            "team_id": "T0SAMPLE",
            "event": {"type": event.unwrap_or("app_mention"), "user": "U0SAMPLE",
                      "text": "hello from runbridge send"},
        }),
        "shopify" => json!({
            "id": secs,
            "email": "sample@example.com",
            "total_price": "10.00",
            "currency": "USD",
        }),
        _ => json!({
            "type": event.unwrap_or("sample.event"),
            "id": fresh_id("evt_"),
            "timestamp": now.to_string(),
            "data": {"message": "hello from runbridge send"},
        }),
    }
}

/// Sets `value` at a JSON pointer, creating objects on the way (an array
/// or scalar in the way is left alone: the payload is the user's).
fn set_at(doc: &mut Value, pointer: &str, value: Value) {
    if pointer.is_empty() {
        return;
    }
    let tokens: Vec<String> = pointer
        .trim_start_matches('/')
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut cur = doc;
    for (i, t) in tokens.iter().enumerate() {
        let Value::Object(m) = cur else { return };
        if i + 1 == tokens.len() {
            m.insert(t.clone(), value);
            return;
        }
        cur = m
            .entry(t.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Fills what the route needs for a run to start from a sample: every
/// required input without a default (pointer, header or query) and a fresh
/// delivery id where the route dedupes.
fn complete(route: &RouteSettings, body: Option<&mut Value>, out: &mut Outgoing) {
    if let Some(h) = &route.dedupe_header {
        out.set_default(h, || fresh_id(""));
    }
    let Some(body) = body else {
        for input in route
            .inputs
            .iter()
            .filter(|i| i.required && i.default.is_none())
        {
            fill_header_or_query(&input.source, out);
        }
        return;
    };
    if let Some(p) = &route.dedupe_pointer {
        set_at(body, p.as_str(), json!(fresh_id("")));
    }
    for input in route
        .inputs
        .iter()
        .filter(|i| i.required && i.default.is_none())
    {
        if let InputSource::Pointer(p) = &input.source {
            if p.find(body).is_none_or(Value::is_null) {
                set_at(body, p.as_str(), json!("sample"));
            }
        }
        fill_header_or_query(&input.source, out);
    }
}

fn fill_header_or_query(source: &InputSource, out: &mut Outgoing) {
    match source {
        InputSource::Header(h) => out.set_default(h, || "sample".into()),
        InputSource::Query(q) if out.query.iter().all(|(n, _)| n != q) => {
            out.query.push((q.clone(), "sample".into()))
        }
        _ => {}
    }
}

/// The event header of the senders that carry one.
fn event_header(kind: &str) -> Option<&'static str> {
    match kind {
        "github" => Some("x-github-event"),
        "shopify" => Some("x-shopify-topic"),
        _ => None,
    }
}

/// Runs `runbridge send`: prints the status and the answer, exits 1 unless 2xx.
pub async fn send(args: SendArgs) -> ExitCode {
    let settings = match Settings::load(&args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "{}: configuration has {} problem(s):",
                args.config.display(),
                e.0.len()
            );
            for p in &e.0 {
                eprintln!("  {p}");
            }
            return ExitCode::from(2);
        }
    };
    let Some(route) = settings.routes.get(&args.route) else {
        let names: Vec<&str> = settings.routes.keys().map(String::as_str).collect();
        eprintln!(
            "no route {:?} in {} (routes: {})",
            args.route,
            args.config.display(),
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let now = Timestamp::now();
    let kind = sender(route);
    let mut out = Outgoing::default();
    for h in &args.headers {
        match h.split_once(':') {
            Some((n, v))
                if reqwest::header::HeaderName::from_bytes(n.trim().as_bytes()).is_ok() =>
            {
                out.set(n.trim(), v.trim())
            }
            _ => {
                eprintln!("--header {h:?}: expected \"Name: value\"");
                return ExitCode::from(2);
            }
        }
    }
    if let (Some(e), Some(h)) = (&args.event, event_header(kind)) {
        out.set(h, e.clone());
    }
    let body: Vec<u8> = match &args.file {
        Some(path) => match std::fs::read(path) {
            Ok(b) => {
                complete(route, None, &mut out);
                b
            }
            Err(e) => {
                eprintln!("--file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => {
            let mut v = sample(kind, args.event.as_deref(), now);
            complete(route, Some(&mut v), &mut out);
            serde_json::to_vec(&v).unwrap_or_default()
        }
    };
    route.verify.sign(&mut out, &body, now);
    post(&args, &out, body).await
}

async fn post(args: &SendArgs, out: &Outgoing, body: Vec<u8>) -> ExitCode {
    let http = match client(args.timeout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runbridge send: {e}");
            return ExitCode::from(1);
        }
    };
    let url = format!(
        "{}/hooks/{}",
        args.url.trim_end_matches('/'),
        percent_encoding::utf8_percent_encode(&args.route, percent_encoding::NON_ALPHANUMERIC)
    );
    let mut req = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, &args.content_type)
        .body(body);
    if !out.query.is_empty() {
        req = req.query(&out.query);
    }
    for (n, v) in &out.headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            // Without the URL: a query token must not be printed.
            eprintln!("runbridge send: {}: {}", args.url, e.without_url());
            return ExitCode::from(1);
        }
    };
    let status = resp.status();
    let text = read_bounded(resp).await.unwrap_or_default();
    println!("HTTP {}", status.as_u16());
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text)),
        Err(_) if !text.is_empty() => println!("{text}"),
        Err(_) => {}
    }
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_at_creates_objects_and_unescapes() {
        let mut v = json!({"a": {"b": 1}});
        set_at(&mut v, "/a/c/d", json!("x"));
        set_at(&mut v, "/e~1f", json!(2));
        assert_eq!(v, json!({"a": {"b": 1, "c": {"d": "x"}}, "e/f": 2}));
        let mut arr = json!({"a": [1]});
        set_at(&mut arr, "/a/0", json!(5));
        assert_eq!(arr, json!({"a": [1]}));
    }

    #[test]
    fn samples_carry_fresh_ids_and_the_event() {
        let now = Timestamp::now();
        let a = sample("stripe", Some("charge.failed"), now);
        let b = sample("stripe", None, now);
        assert_ne!(a["id"], b["id"]);
        assert_eq!(a["type"], "charge.failed");
        assert_ne!(
            sample("slack", None, now)["event_id"],
            sample("slack", None, now)["event_id"]
        );
    }
}
