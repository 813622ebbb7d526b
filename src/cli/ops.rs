//! The admin commands over the HTTP API for endpoints and configuration:
//! `endpoints`, `requests`, `routes`, `providers`. Answers are deserialized
//! into the API's own view types, as in `admin.rs`.

use super::admin::{query, Remote};
use super::http::{seg, Answer};
use super::output::{cut, fail, name, opt, print, show, table};
use runbridge::admin::view::{EndpointView, ProviderView, RequestRecord, RouteView, TestResult};
use std::process::ExitCode;

/// `runbridge endpoints ...`
#[derive(clap::Args)]
pub struct Endpoints {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    cmd: EndpointsCmd,
}

#[derive(clap::Subcommand)]
enum EndpointsCmd {
    /// Callback endpoints, paused or not.
    List,
    /// Hold deliveries to an endpoint (nothing is dropped).
    Pause {
        /// The endpoint id (`endpoints list`).
        id: String,
    },
    /// Let held deliveries flow again.
    Resume {
        /// The endpoint id.
        id: String,
    },
    /// Send a signed `test` event to the endpoint now.
    Test {
        /// The endpoint id.
        id: String,
    },
}

fn endpoints_table(list: &[EndpointView]) {
    let mut t = table(&["ID", "URL", "ROUTES", "PAUSED", "BREAKER"]);
    for e in list {
        t.add_row(vec![
            e.id.clone(),
            e.url.clone(),
            e.routes.join(", "),
            if e.paused { "paused" } else { "-" }.into(),
            if e.breaker_open { "open" } else { "closed" }.into(),
        ]);
    }
    show(&t);
}

impl Endpoints {
    /// Runs the `endpoints` subcommand.
    pub async fn run(self) -> ExitCode {
        let api = match self.remote.api() {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let json = self.remote.json;
        let (verb, id) = match self.cmd {
            EndpointsCmd::List => {
                let res: Result<Answer<Vec<EndpointView>>, _> = api.get("/endpoints", &[]).await;
                return print(res, json, |l| endpoints_table(l));
            }
            EndpointsCmd::Test { id } => {
                let res: Result<Answer<TestResult>, _> = api
                    .post(&format!("/endpoints/{}/test", seg(&id)), &[])
                    .await;
                let delivered = matches!(&res, Ok(a) if a.view.delivered);
                let code = print(res, json, |r| {
                    println!(
                        "test event {} to endpoint {id}: {} in {} ms{}",
                        r.webhook_id,
                        if r.delivered {
                            "delivered"
                        } else {
                            "not delivered"
                        },
                        r.duration_ms,
                        match (&r.status_code, &r.error) {
                            (_, Some(e)) => format!(" ({})", cut(e, 100)),
                            (Some(s), None) => format!(" (HTTP {s})"),
                            _ => String::new(),
                        }
                    )
                });
                return if delivered { code } else { ExitCode::from(1) };
            }
            EndpointsCmd::Pause { id } => ("pause", id),
            EndpointsCmd::Resume { id } => ("resume", id),
        };
        let res: Result<Answer<EndpointView>, _> = api
            .post(&format!("/endpoints/{}/{verb}", seg(&id)), &[])
            .await;
        print(res, json, |e| endpoints_table(std::slice::from_ref(e)))
    }
}

/// `runbridge requests`: recent inbound requests that started nothing.
#[derive(clap::Args)]
pub struct RequestsArgs {
    #[command(flatten)]
    remote: Remote,
    /// `rejected` or `ignored` (default both).
    #[arg(long, value_parser = ["rejected", "ignored"])]
    outcome: Option<String>,
    #[arg(long)]
    route: Option<String>,
    #[arg(long)]
    limit: Option<usize>,
}

impl RequestsArgs {
    /// Runs `requests`.
    pub async fn run(self) -> ExitCode {
        let api = match self.remote.api() {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let q = query(&[
            ("outcome", self.outcome),
            ("route", self.route),
            ("limit", self.limit.map(|n| n.to_string())),
        ]);
        let res: Result<Answer<Vec<RequestRecord>>, _> = api.get("/requests", &q).await;
        print(res, self.remote.json, |list| {
            let mut t = table(&["AT", "ROUTE", "OUTCOME", "STATUS", "ERROR", "REASON"]);
            for r in list {
                t.add_row(vec![
                    r.at.clone(),
                    r.route.clone(),
                    name(&r.outcome),
                    r.status.to_string(),
                    opt(&r.error),
                    cut(&r.reason, 80),
                ]);
            }
            show(&t);
        })
    }
}

/// `runbridge routes`: the live routes (secrets shown as `***`).
#[derive(clap::Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    remote: Remote,
}

impl RoutesArgs {
    /// Runs `routes`.
    pub async fn run(self) -> ExitCode {
        let api = match self.remote.api() {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let res: Result<Answer<Vec<RouteView>>, _> = api.get("/routes", &[]).await;
        print(res, self.remote.json, |list| {
            let mut t = table(&[
                "ROUTE",
                "PROVIDER",
                "WORKFLOW",
                "VERIFY",
                "CALLBACKS",
                "INPUTS",
            ]);
            for r in list {
                let mut route = r.name.clone();
                if r.retired {
                    route.push_str(" (retired)");
                }
                let verify: Vec<&str> = r.verify.iter().map(|v| v.kind.as_str()).collect();
                let callbacks: Vec<&str> = r.callbacks.iter().map(|c| c.url.as_str()).collect();
                t.add_row(vec![
                    route,
                    r.provider.clone(),
                    r.workflow_id.clone(),
                    verify.join(" + "),
                    if callbacks.is_empty() {
                        "-".into()
                    } else {
                        callbacks.join(", ")
                    },
                    r.inputs.join(", "),
                ]);
            }
            show(&t);
        })
    }
}

/// `runbridge providers`: the live providers (tokens shown as `***`).
#[derive(clap::Args)]
pub struct ProvidersArgs {
    #[command(flatten)]
    remote: Remote,
}

impl ProvidersArgs {
    /// Runs `providers`.
    pub async fn run(self) -> ExitCode {
        let api = match self.remote.api() {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let res: Result<Answer<Vec<ProviderView>>, _> = api.get("/providers", &[]).await;
        print(res, self.remote.json, |list| {
            let mut t = table(&["PROVIDER", "KIND", "BASE URL", "TOKEN"]);
            for p in list {
                let mut n = p.name.clone();
                if p.retired {
                    n.push_str(" (retired)");
                }
                t.add_row(vec![n, p.kind.clone(), opt(&p.base_url), opt(&p.token)]);
            }
            show(&t);
        })
    }
}
