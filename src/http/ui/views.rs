//! The console's data pages as `maud` templates over the admin API's view
//! types: runs, one run's timeline, deliveries needing attention, routes.
//! Every value is escaped by the template; links are built with
//! [`query_link`], which percent-encodes.

use super::layout::{badge, dash, when, Viewer};
use crate::admin::view::{
    AttemptView, DeliveryItem, DeliveryPage, DeliveryView, RouteView, RunDetail, RunPage,
    RunSummary,
};
use crate::run::Phase;
use maud::{html, Markup};

/// The run statuses offered by the runs filter.
pub const STATUSES: [&str; 8] = [
    "queued",
    "starting",
    "running",
    "waiting",
    "succeeded",
    "failed",
    "canceled",
    "timed_out",
];

/// The phase's API name.
pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Accepted => "accepted",
        Phase::Starting => "starting",
        Phase::Tracking => "tracking",
        Phase::Terminal => "terminal",
        Phase::Done => "done",
    }
}

/// `path?k=v&...` with every value percent-encoded; empty values dropped.
pub fn query_link(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        ser.append_pair(k, v);
    }
    let q = ser.finish();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    }
}

/// A run's page (ids are ULIDs: safe in a path, but encoded anyway).
pub fn run_link(id: &str) -> String {
    format!(
        "/ui/runs/{}",
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// A short notice after an action (fixed texts chosen by code, never
/// reflected from the request).
pub fn notice(code: Option<&str>) -> Markup {
    let text = match code {
        Some("redelivered") => "Redelivery queued: a new attempt goes out now.",
        Some("replayed") => "Replay started: this is the new run, with the same inputs.",
        _ => return html! {},
    };
    html! { div.notice.ok id="notice" { (text) } }
}

fn select(name: &str, label: &str, current: &str, options: &[String]) -> Markup {
    html! {
        label {
            (label)
            select name=(name) id=(format!("f-{name}")) {
                option value="" selected[current.is_empty()] { "any" }
                @for o in options {
                    option value=(o) selected[o.as_str() == current] { (o) }
                }
            }
        }
    }
}

/// The current filters of the runs page.
pub struct RunFilters<'a> {
    pub route: &'a str,
    pub status: &'a str,
    pub provider: &'a str,
}

/// `/ui/runs`: filters, the table, an "older" link.
pub fn runs(
    page: &RunPage,
    f: &RunFilters,
    routes: &[String],
    providers: &[String],
    first_page: bool,
) -> Markup {
    let statuses: Vec<String> = STATUSES.iter().map(|s| s.to_string()).collect();
    html! {
        h1 { "Runs" }
        p.sub { span.live { "Live: this page refreshes every 5 s" } }
        form.filters method="get" action="/ui/runs" {
            (select("route", "Route", f.route, routes))
            (select("status", "Status", f.status, &statuses))
            (select("provider", "Provider", f.provider, providers))
            button.ghost type="submit" { "Filter" }
            @if !(f.route.is_empty() && f.status.is_empty() && f.provider.is_empty()) {
                a.button.ghost href="/ui/runs" { "Clear" }
            }
        }
        div.panel {
            @if page.runs.is_empty() {
                div.empty { "No runs match." }
            } @else {
                table #runs {
                    thead { tr {
                        th { "Run" } th { "Route" } th { "Status" } th { "Phase" }
                        th { "Workflow" } th { "Created" } th { "Callbacks" }
                    } }
                    tbody {
                        @for r in &page.runs { (run_row(r)) }
                    }
                }
            }
        }
        div.pager {
            @if !first_page {
                a.button.ghost href=(query_link("/ui/runs", &[("route", f.route), ("status", f.status), ("provider", f.provider)])) { "Newest" }
            }
            @if let Some(c) = &page.next_cursor {
                a.button.ghost #older href=(query_link("/ui/runs", &[("route", f.route), ("status", f.status), ("provider", f.provider), ("cursor", c)])) { "Older →" }
            }
        }
    }
}

fn run_row(r: &RunSummary) -> Markup {
    let d = &r.deliveries;
    html! {
        tr data-run=(r.id) {
            td.nowrap {
                a.mono href=(run_link(&r.id)) { (r.id) }
                @if r.replay_of.is_some() { " " span.badge.small title="a replay of an earlier run" { "replay" } }
            }
            td { (r.route) }
            td.status { (badge(r.status.as_str())) }
            td { span.badge { (phase_name(r.phase)) } }
            td.mono { (r.workflow_id) }
            td { (when(&r.created_at)) }
            td {
                @if d.delivered > 0 { span.badge.b-ok title="delivered" { (d.delivered) " ok" } " " }
                @if d.pending + d.failing > 0 { span.badge.b-warn title="pending or failing" { (d.pending + d.failing) " open" } " " }
                @if d.dead + d.refused + d.gone > 0 { span.badge.b-bad title="dead, refused or gone" { (d.dead + d.refused + d.gone) " dead" } }
                @if d.delivered + d.pending + d.failing + d.dead + d.refused + d.gone == 0 { (dash()) }
            }
        }
    }
}

fn fact(label: &str, value: Option<&str>) -> Markup {
    html! { dt { (label) } dd { @if let Some(v) = value { (v) } @else { (dash()) } } }
}

/// One line of a run's timeline: when, what, and a tone for the dot.
struct Step {
    at: String,
    tone: &'static str,
    body: Markup,
}

fn timeline(run: &RunDetail) -> Vec<Step> {
    let s = &run.summary;
    let mut steps = vec![Step {
        at: s.created_at.clone(),
        tone: "",
        body: html! { strong { "Accepted" } " from route " code { (s.route) } },
    }];
    if let Some(at) = &run.started_at {
        steps.push(Step {
            at: at.clone(),
            tone: "",
            body: html! {
                strong { "Started" } " on " code { (s.provider) }
                @if let Some(v) = &s.vendor_run_id { " as " code { (v) } }
            },
        });
    }
    for h in &run.history {
        steps.push(Step {
            at: h.at.clone(),
            tone: "",
            body: html! {
                "Vendor status " (badge(h.status.as_str()))
                @if let Some(raw) = &h.raw_status { " " span.mono { "(" (raw) ")" } }
            },
        });
    }
    if let Some(at) = &s.finished_at {
        let bad = !matches!(s.status.as_str(), "succeeded");
        steps.push(Step {
            at: at.clone(),
            tone: if bad { "t-bad" } else { "t-ok" },
            body: html! { strong { "Finished" } " " (badge(s.status.as_str())) },
        });
    }
    if let Some(c) = &run.cancel {
        steps.push(Step {
            at: c.requested_at.clone(),
            tone: "",
            body: html! { "Cancel requested by an operator" },
        });
    }
    for d in &run.deliveries {
        for a in &d.attempts {
            let ok = a.status_code.is_some_and(|c| (200..300).contains(&c));
            steps.push(Step {
                at: a.at.clone(),
                tone: if ok { "t-ok" } else { "t-bad" },
                body: html! {
                    "Delivery #" (d.index) " " code { (d.event_type) } " → "
                    (attempt_outcome(a)) " in " (a.duration_ms) " ms"
                },
            });
        }
    }
    // RFC 3339 UTC strings of one format sort in time order.
    steps.sort_by(|a, b| a.at.cmp(&b.at));
    steps
}

fn attempt_outcome(a: &AttemptView) -> Markup {
    html! {
        @match a.status_code {
            Some(c) if (200..300).contains(&c) => span.badge.b-ok { (c) },
            Some(c) => span.badge.b-bad { (c) },
            None => span.badge.b-bad { "no answer" },
        }
    }
}

/// `/ui/runs/{id}`: facts, the timeline, each delivery with its attempts.
pub fn run(run: &RunDetail, viewer: &Viewer, notice_code: Option<&str>) -> Markup {
    let s = &run.summary;
    html! {
        (notice(notice_code))
        div.title-row {
            h1 { "Run " span.mono { (s.id) } " " span #run-status { (badge(s.status.as_str())) } }
            @if viewer.can_write() {
                form.inline method="post" action=(format!("{}/replay", run_link(&s.id))) {
                    (viewer.action_fields())
                    button.ghost #replay type="submit" title="Start a new run with the same inputs" { "Replay" }
                }
            }
        }
        div.panel {
            dl.facts {
                (fact("Route", Some(&s.route)))
                (fact("Provider", Some(&s.provider)))
                (fact("Workflow", Some(&s.workflow_id)))
                (fact("Phase", Some(phase_name(s.phase))))
                (fact("Vendor run", s.vendor_run_id.as_deref()))
                (fact("Vendor status", s.raw_status.as_deref()))
                (fact("Trigger delivery id", s.delivery_id.as_deref()))
                dt { "Created" } dd { (when(&s.created_at)) }
                dt { "Deadline" } dd { (when(&run.deadline)) }
                (fact("Last error", run.last_error.as_deref()))
                @if let Some(o) = &s.replay_of {
                    dt { "Replay of" } dd { a.mono.replay-of href=(run_link(o)) { (o) } }
                }
                @if !run.replays.is_empty() {
                    dt { "Replayed as" }
                    dd { @for r in &run.replays { a.mono href=(run_link(r)) { (r) } " " } }
                }
            }
        }
        h2 { "Timeline" }
        div.panel {
            ol.timeline #timeline {
                @for step in timeline(run) {
                    li class=(step.tone) {
                        span.when title=(step.at) { (step.at.get(11..23).unwrap_or(&step.at)) }
                        (step.body)
                    }
                }
            }
        }
        h2 { "Deliveries" }
        @if run.deliveries.is_empty() {
            div.panel { div.empty { "No callbacks for this run (yet)." } }
        }
        div.stack {
            @for d in &run.deliveries { (delivery(&s.id, d, viewer)) }
        }
    }
}

fn redeliver_button(run_id: &str, index: u32, back: &str, viewer: &Viewer) -> Markup {
    html! {
        @if viewer.can_write() {
            form.inline.redeliver method="post"
                action=(format!("{}/deliveries/{index}/redeliver", run_link(run_id))) {
                (viewer.action_fields())
                input type="hidden" name="back" value=(back);
                button.small.redeliver type="submit" { "Redeliver" }
            }
        }
    }
}

fn delivery(run_id: &str, d: &DeliveryView, viewer: &Viewer) -> Markup {
    html! {
        section.panel.delivery data-index=(d.index) data-state=(d.state.as_str()) {
            div.delivery-head {
                div {
                    strong { "#" (d.index) " " (d.event_type) } " "
                    (badge(d.state.as_str())) " "
                    span.url { (d.url) }
                    div.mono.hook-id { "webhook-id " (d.webhook_id) }
                }
                div {
                    @if let Some(n) = &d.next_attempt_at { span.muted { "next attempt " (when(n)) } " " }
                    (redeliver_button(run_id, d.index, "run", viewer))
                }
            }
            @if d.attempts.is_empty() {
                div.empty { "No attempt yet." }
            } @else {
                table.attempts {
                    thead { tr { th { "#" } th { "Time" } th { "Answer" } th.num { "Duration" } th { "First bytes of the answer" } th { "Error" } } }
                    tbody {
                        @for (i, a) in d.attempts.iter().enumerate() {
                            tr {
                                td { (i + 1) }
                                td { (when(&a.at)) }
                                td { (attempt_outcome(a)) }
                                td.num { (a.duration_ms) " ms" }
                                td { div.answer title=[a.response.as_deref()] { @if let Some(r) = &a.response { (r) } @else { (dash()) } } }
                                td { @if let Some(e) = &a.error { (e) } @else { (dash()) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `/ui/deliveries`: failing and dead deliveries across runs.
pub fn deliveries(
    page: &DeliveryPage,
    state: &str,
    route: &str,
    routes: &[String],
    viewer: &Viewer,
    notice_code: Option<&str>,
) -> Markup {
    let states = vec!["dead".to_string(), "failing".to_string()];
    html! {
        (notice(notice_code))
        h1 { "Deliveries needing attention" }
        p.sub { "Failing deliveries are still being retried; dead ones gave up. Redeliver sends a new attempt with the same webhook-id." }
        form.filters method="get" action="/ui/deliveries" {
            (select("state", "State", state, &states))
            (select("route", "Route", route, routes))
            button.ghost type="submit" { "Filter" }
        }
        div.panel {
            @if page.deliveries.is_empty() {
                div.empty { "Nothing needs attention." }
            } @else {
                table #deliveries {
                    thead { tr {
                        th { "Run" } th { "Event" } th { "State" } th.num { "Attempts" }
                        th { "Last attempt" } th { "Endpoint" } th {}
                    } }
                    tbody { @for d in &page.deliveries { (delivery_row(d, viewer)) } }
                }
            }
        }
        div.pager {
            @if let Some(c) = &page.next_cursor {
                a.button.ghost #older href=(query_link("/ui/deliveries", &[("state", state), ("route", route), ("cursor", c)])) { "Older →" }
            }
        }
    }
}

fn delivery_row(d: &DeliveryItem, viewer: &Viewer) -> Markup {
    html! {
        tr data-delivery=(format!("{}/{}", d.run_id, d.index)) {
            td.nowrap {
                a.mono href=(run_link(&d.run_id)) { (d.run_id) } span.idx { "#" (d.index) }
                div.muted.small { "route " (d.route) }
            }
            td { code { (d.event_type) } }
            td { (badge(d.state.as_str())) }
            td.num { (d.attempts) }
            td {
                @if let Some(a) = &d.last_attempt {
                    div.nowrap { (attempt_outcome(a)) " " (when(&a.at)) }
                    @if let Some(e) = &a.error { div.answer.narrow title=(e) { (e) } }
                } @else { (dash()) }
            }
            td { div.answer.narrow title=(d.url) { (d.url) } }
            td.nowrap { (redeliver_button(&d.run_id, d.index, "deliveries", viewer)) }
        }
    }
}

/// Counts of one route, over its most recent runs.
pub struct RouteCounts {
    pub route: RouteView,
    /// (status, runs) over the newest `window` runs, most common first.
    pub by_status: Vec<(String, usize)>,
    pub runs_seen: usize,
    pub dead: usize,
    /// The counts stop here ("500+").
    pub window: usize,
}

fn capped(n: usize, window: usize) -> String {
    if n >= window {
        format!("{window}+")
    } else {
        n.to_string()
    }
}

/// `/ui/routes`: one card per route.
pub fn routes(counts: &[RouteCounts], window: usize) -> Markup {
    html! {
        h1 { "Routes" }
        p.sub { "Runs by status over each route's newest " (window) " runs; dead deliveries across all of its runs (up to " (window) ")." }
        @if counts.is_empty() { div.panel { div.empty { "No routes configured." } } }
        div.cards {
            @for c in counts {
                div.card data-route=(c.route.name) {
                    h3 { a href=(query_link("/ui/runs", &[("route", &c.route.name)])) { (c.route.name) }
                        @if c.route.retired { " " span.badge.b-warn { "retired" } } }
                    div.row { span.muted { "provider" } span { (c.route.provider) } }
                    div.row { span.muted { "workflow" } span.mono { (c.route.workflow_id) } }
                    div.row { span.muted { "runs" } span { (capped(c.runs_seen, c.window)) } }
                    @for (status, n) in &c.by_status {
                        div.row {
                            a href=(query_link("/ui/runs", &[("route", &c.route.name), ("status", status)])) { (badge(status)) }
                            span { (n) }
                        }
                    }
                    div.row.dead {
                        a href=(query_link("/ui/deliveries", &[("state", "dead"), ("route", &c.route.name)])) { "dead deliveries" }
                        span { @if c.dead > 0 { span.badge.b-bad { (capped(c.dead, c.window)) } } @else { "0" } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::view::DeliveryCounts;
    use crate::run::RunStatus;

    fn summary(route: &str) -> RunSummary {
        RunSummary {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            route: route.into(),
            provider: "slate".into(),
            workflow_id: "wf\"><img src=x>".into(),
            phase: Phase::Done,
            status: RunStatus::Succeeded,
            raw_status: None,
            vendor_run_id: None,
            delivery_id: None,
            created_at: "2026-11-24T15:03:59.659Z".into(),
            updated_at: "2026-11-24T15:03:59.659Z".into(),
            finished_at: None,
            replay_of: None,
            deliveries: DeliveryCounts::default(),
        }
    }

    #[test]
    fn every_value_is_escaped() {
        let page = RunPage {
            runs: vec![summary("<script>alert(1)</script>")],
            next_cursor: Some("a&b=\"c\"".into()),
        };
        let f = RunFilters {
            route: "<b>",
            status: "",
            provider: "",
        };
        let html = runs(&page, &f, &["x'y".into()], &[], true).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        // The cursor and filters are percent-encoded into the link.
        assert!(html.contains("cursor=a%26b%3D%22c%22"), "{html}");
    }

    #[test]
    fn links_encode_and_drop_empty_values() {
        assert_eq!(
            query_link("/ui/runs", &[("route", ""), ("status", "")]),
            "/ui/runs"
        );
        assert_eq!(
            query_link("/ui/runs", &[("route", "a b&c"), ("status", "failed")]),
            "/ui/runs?route=a+b%26c&status=failed"
        );
        assert_eq!(run_link("../x"), "/ui/runs/%2E%2E%2Fx");
    }

    #[test]
    fn notices_are_fixed_texts() {
        assert!(notice(Some("<script>")).into_string().is_empty());
        assert!(notice(Some("redelivered"))
            .into_string()
            .contains("Redelivery"));
    }
}
