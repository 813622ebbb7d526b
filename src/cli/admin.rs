//! The admin commands over the HTTP API for runs and deliveries: `runs`,
//! `deliveries`, `recover` (the others are in `ops.rs`), and the options
//! every admin command shares ([`Remote`]). Answers are deserialized into
//! the API's own view types (`runbridge::admin::view`), so the CLI and the
//! daemon cannot drift apart silently.

use super::http::{seg, Answer, Api, Failure};
use super::output::{cut, fail, fields, name, opt, print, short, show, table};
use runbridge::admin::view::{
    CancelResult, DeliveryCounts, DeliveryItem, DeliveryPage, DeliveryView, Recovery,
    RecoveryState, RunDetail, RunPage, RunSummary,
};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where the admin API is and how to call it (every admin command).
#[derive(clap::Args)]
pub struct Remote {
    /// The daemon's base URL.
    #[arg(
        long,
        global = true,
        env = "RUNBRIDGE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// An admin token (`[[admin.tokens]]` or `server.admin_token`).
    #[arg(
        long,
        global = true,
        env = "RUNBRIDGE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long one request may take.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Sent as `Idempotency-Key` on POSTs: the same key (and token) within
    /// 24 h answers the first answer again without acting twice.
    #[arg(long, global = true, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

impl Remote {
    pub(super) fn api(&self) -> Result<Api, Failure> {
        Ok(Api::new(&self.url, self.token.clone(), self.timeout)?
            .with_idempotency_key(self.idempotency_key.clone()))
    }
}

/// `runbridge runs ...`
#[derive(clap::Args)]
pub struct Runs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    cmd: RunsCmd,
}

#[derive(clap::Subcommand)]
enum RunsCmd {
    /// List runs, newest first, filtered.
    List(RunsList),
    /// One run: its statuses, events, deliveries and every attempt.
    Show {
        /// The run id.
        id: String,
    },
    /// Ask the provider to cancel a run.
    Cancel {
        /// The run id.
        id: String,
    },
    /// Start a new run with the same inputs, linked to this one.
    Replay {
        /// The run id.
        id: String,
    },
}

#[derive(clap::Args)]
struct RunsList {
    #[arg(long)]
    route: Option<String>,
    /// queued, starting, running, waiting, succeeded, failed, canceled, timed_out.
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    provider: Option<String>,
    /// accepted, starting, tracking, terminal, done.
    #[arg(long)]
    phase: Option<String>,
    /// Created at or after: RFC 3339 or a duration ago (`2h`).
    #[arg(long)]
    since: Option<String>,
    /// Created before: RFC 3339 or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// The trigger's delivery id.
    #[arg(long)]
    delivery_id: Option<String>,
    /// Page size (the daemon's default 50, at most 500).
    #[arg(long)]
    limit: Option<usize>,
    /// The `next cursor` printed under the previous page.
    #[arg(long)]
    cursor: Option<String>,
}

/// `(name, value)` query pairs of the options that are set.
pub(super) fn query(pairs: &[(&'static str, Option<String>)]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect()
}

fn counts(c: &DeliveryCounts) -> String {
    let parts: Vec<String> = [
        ("delivered", c.delivered),
        ("pending", c.pending),
        ("failing", c.failing),
        ("dead", c.dead),
        ("refused", c.refused),
        ("gone", c.gone),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{n} {k}"))
    .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn runs_table(runs: &[RunSummary]) {
    let mut t = table(&[
        "ID",
        "ROUTE",
        "PROVIDER",
        "STATUS",
        "PHASE",
        "CREATED",
        "DELIVERIES",
    ]);
    for r in runs {
        let mut status = name(&r.status);
        if let Some(of) = &r.replay_of {
            status = format!("{status} (replay of {of})");
        }
        t.add_row(vec![
            r.id.clone(),
            r.route.clone(),
            r.provider.clone(),
            status,
            name(&r.phase),
            r.created_at.clone(),
            counts(&r.deliveries),
        ]);
    }
    show(&t);
}

fn attempt_text(status: Option<u16>, error: &Option<String>) -> String {
    match (status, error) {
        (Some(s), Some(e)) => format!("HTTP {s}: {}", cut(e, 60)),
        (Some(s), None) => format!("HTTP {s}"),
        (None, Some(e)) => cut(e, 60),
        (None, None) => "-".into(),
    }
}

fn show_run(d: &RunDetail) {
    let s = &d.summary;
    let mut rows = vec![
        ("id", s.id.clone()),
        ("route", s.route.clone()),
        (
            "provider",
            format!("{} (workflow {})", s.provider, s.workflow_id),
        ),
        (
            "status",
            format!("{} ({})", name(&s.status), opt(&s.raw_status)),
        ),
        ("phase", name(&s.phase)),
        ("vendor run", opt(&s.vendor_run_id)),
        ("delivery id", opt(&s.delivery_id)),
        ("created", s.created_at.clone()),
        ("started", opt(&d.started_at)),
        ("finished", opt(&s.finished_at)),
        ("deadline", d.deadline.clone()),
        ("inputs", short(&d.inputs, 100)),
    ];
    if let Some(o) = &d.output {
        rows.push(("output", short(o, 100)));
    }
    if let Some(e) = &d.error {
        rows.push(("error", short(e, 100)));
    }
    if let Some(e) = &d.last_error {
        rows.push(("last error", cut(e, 100)));
    }
    if let Some(c) = &d.cancel {
        rows.push((
            "cancel",
            format!("{} at {}", name(&c.phase), c.requested_at),
        ));
    }
    if let Some(of) = &s.replay_of {
        rows.push(("replay of", of.clone()));
    }
    if !d.replays.is_empty() {
        rows.push(("replays", d.replays.join(", ")));
    }
    show(&fields(&rows));
    if !d.history.is_empty() {
        let mut t = table(&["AT", "STATUS", "VENDOR STATUS"]);
        for h in &d.history {
            t.add_row(vec![h.at.clone(), name(&h.status), opt(&h.raw_status)]);
        }
        println!("\nStatus history");
        show(&t);
    }
    if !d.deliveries.is_empty() {
        let mut t = table(&["#", "EVENT", "STATE", "URL", "ATTEMPT AT", "RESULT", "MS"]);
        for dv in &d.deliveries {
            let head = vec![
                dv.index.to_string(),
                dv.event_type.clone(),
                name(&dv.state),
                dv.url.clone(),
            ];
            if dv.attempts.is_empty() {
                t.add_row(head.iter().cloned().chain([
                    opt(&dv.next_attempt_at),
                    "not yet".into(),
                    "-".into(),
                ]));
            }
            for (i, a) in dv.attempts.iter().enumerate() {
                let lead = if i == 0 {
                    head.clone()
                } else {
                    vec![String::new(); 4]
                };
                t.add_row(lead.into_iter().chain([
                    a.at.clone(),
                    attempt_text(a.status_code, &a.error),
                    a.duration_ms.to_string(),
                ]));
            }
        }
        println!("\nDeliveries");
        show(&t);
    }
}

impl Runs {
    /// Runs the `runs` subcommand.
    pub async fn run(self) -> ExitCode {
        let api = match self.remote.api() {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let json = self.remote.json;
        match self.cmd {
            RunsCmd::List(l) => {
                let q = query(&[
                    ("route", l.route),
                    ("status", l.status),
                    ("provider", l.provider),
                    ("phase", l.phase),
                    ("since", l.since),
                    ("until", l.until),
                    ("delivery_id", l.delivery_id),
                    ("cursor", l.cursor),
                    ("limit", l.limit.map(|n| n.to_string())),
                ]);
                let res: Result<Answer<RunPage>, _> = api.get("/runs", &q).await;
                print(res, json, |p| {
                    runs_table(&p.runs);
                    if let Some(c) = &p.next_cursor {
                        println!("next cursor: {c}");
                    }
                })
            }
            RunsCmd::Show { id } => {
                let res: Result<Answer<RunDetail>, _> =
                    api.get(&format!("/runs/{}", seg(&id)), &[]).await;
                print(res, json, show_run)
            }
            RunsCmd::Cancel { id } => {
                let res: Result<Answer<CancelResult>, _> =
                    api.post(&format!("/runs/{}/cancel", seg(&id)), &[]).await;
                print(res, json, |c| {
                    println!(
                        "run {}: cancel {} (status {})",
                        c.run_id,
                        c.cancel,
                        name(&c.status)
                    );
                    if c.vendor_run_may_continue == Some(true) {
                        println!("the provider cannot cancel: its run may go on");
                    }
                })
            }
            RunsCmd::Replay { id } => {
                let res: Result<Answer<RunSummary>, _> =
                    api.post(&format!("/runs/{}/replay", seg(&id)), &[]).await;
                print(res, json, |r| {
                    println!("run {id} replayed as {}", r.id);
                    runs_table(std::slice::from_ref(r));
                })
            }
        }
    }
}

/// `runbridge deliveries ...`
#[derive(clap::Args)]
pub struct Deliveries {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    cmd: DeliveriesCmd,
}

#[derive(clap::Subcommand)]
enum DeliveriesCmd {
    /// Deliveries that need attention (failing and dead), newest run first.
    List {
        /// `dead` or `failing` (default both).
        #[arg(long, value_parser = ["dead", "failing"])]
        state: Option<String>,
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// The `next cursor` printed under the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Send one delivery again now (also a dead one), with the same webhook-id.
    Redeliver {
        /// The run id.
        run: String,
        /// The delivery's index in the run (the `#` of `runs show`).
        index: u32,
    },
}

fn deliveries_table(items: &[DeliveryItem]) {
    let mut t = table(&[
        "RUN", "#", "ROUTE", "EVENT", "STATE", "ATTEMPTS", "LAST", "NEXT", "URL",
    ]);
    for d in items {
        let last = d
            .last_attempt
            .as_ref()
            .map(|a| attempt_text(a.status_code, &a.error))
            .unwrap_or_else(|| "-".into());
        t.add_row(vec![
            d.run_id.clone(),
            d.index.to_string(),
            d.route.clone(),
            d.event_type.clone(),
            name(&d.state),
            d.attempts.to_string(),
            last,
            opt(&d.next_attempt_at),
            d.url.clone(),
        ]);
    }
    show(&t);
}

fn delivery_view(run: &str, d: &DeliveryView) {
    println!(
        "run {run} delivery {} ({}, webhook-id {}): {}",
        d.index,
        d.event_type,
        d.webhook_id,
        name(&d.state)
    );
    show(&fields(&[
        ("url", d.url.clone()),
        ("attempts", d.attempts.len().to_string()),
        ("next attempt", opt(&d.next_attempt_at)),
    ]));
}

impl Deliveries {
    /// Runs the `deliveries` subcommand.
    pub async fn run(self) -> ExitCode {
        let api = match self.remote.api() {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let json = self.remote.json;
        match self.cmd {
            DeliveriesCmd::List {
                state,
                route,
                limit,
                cursor,
            } => {
                let q = query(&[
                    ("state", state),
                    ("route", route),
                    ("cursor", cursor),
                    ("limit", limit.map(|n| n.to_string())),
                ]);
                let res: Result<Answer<DeliveryPage>, _> = api.get("/deliveries", &q).await;
                print(res, json, |p| {
                    deliveries_table(&p.deliveries);
                    if let Some(c) = &p.next_cursor {
                        println!("next cursor: {c}");
                    }
                })
            }
            DeliveriesCmd::Redeliver { run, index } => {
                let path = format!("/runs/{}/deliveries/{index}/redeliver", seg(&run));
                let res: Result<Answer<DeliveryView>, _> = api.post(&path, &[]).await;
                print(res, json, |d| delivery_view(&run, d))
            }
        }
    }
}

/// `runbridge recover ROUTE --since 1h`
#[derive(clap::Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    remote: Remote,
    /// The route whose failing and dead deliveries are sent again.
    #[arg(required_unless_present = "follow")]
    route: Option<String>,
    /// Deliveries of runs created since: a duration ago (`2h`) or RFC 3339.
    #[arg(long, required_unless_present = "follow")]
    since: Option<String>,
    /// Follow a recovery already started (its id) instead of starting one.
    #[arg(long, value_name = "RECOVERY_ID", conflicts_with_all = ["route", "since"])]
    follow: Option<String>,
    /// How often progress is asked for.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop waiting after this long (the recovery goes on in the daemon).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    wait: Duration,
}

fn progress(r: &Recovery) -> String {
    format!(
        "recover {} ({}): {} matched, {} requeued, {} delivered, {} still failing",
        r.route,
        name(&r.state),
        r.matched,
        r.requeued,
        r.delivered,
        r.still_failing
    )
}

fn recovery_table(r: &Recovery) {
    show(&fields(&[
        ("recovery", r.id.clone()),
        ("route", r.route.clone()),
        ("since", r.since.clone()),
        ("state", name(&r.state)),
        ("matched", r.matched.to_string()),
        ("requeued", r.requeued.to_string()),
        ("delivered", r.delivered.to_string()),
        ("still failing", r.still_failing.to_string()),
        ("started", r.started_at.clone()),
        ("finished", opt(&r.finished_at)),
        ("error", opt(&r.error)),
    ]));
}

impl RecoverArgs {
    /// Starts a recovery (or takes one with `--follow`) and follows it:
    /// progress on stderr, the result on stdout; exit 1 if it failed or is
    /// still running after `--wait`.
    pub async fn run(self) -> ExitCode {
        let api = match self.remote.api() {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let first = match (&self.follow, &self.route, &self.since) {
            (Some(id), _, _) => api.get(&format!("/recoveries/{}", seg(id)), &[]).await,
            (None, Some(route), Some(since)) => {
                let path = format!("/routes/{}/recover", seg(route));
                api.post(&path, &[("since", since.clone())]).await
            }
            // clap requires ROUTE and --since without --follow.
            _ => return ExitCode::from(2),
        };
        let mut last: Answer<Recovery> = match first {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let end = Instant::now() + self.wait;
        let mut shown = String::new();
        loop {
            let line = progress(&last.view);
            if line != shown {
                eprintln!("{line}");
                shown = line;
            }
            if last.view.state != RecoveryState::Running || Instant::now() >= end {
                break;
            }
            tokio::time::sleep(self.interval).await;
            let poll = format!("/recoveries/{}", seg(&last.view.id));
            match api.get(&poll, &[]).await {
                Ok(a) => last = a,
                Err(e) => return fail(&e),
            }
        }
        let (state, id) = (last.view.state, last.view.id.clone());
        let code = print(Ok(last), self.remote.json, recovery_table);
        match state {
            RecoveryState::Done => code,
            RecoveryState::Running => {
                eprintln!(
                    "runbridge: still running after {:?}; it goes on in the daemon \
                     (runbridge recover --follow {id})",
                    self.wait
                );
                ExitCode::from(1)
            }
            RecoveryState::Failed => ExitCode::from(1),
        }
    }
}
