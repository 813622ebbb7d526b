//! The console's data handlers: each reads or acts through
//! [`crate::admin::Admin`] (never the store) and renders a view.

use super::layout::{self, Nav};
use super::views::{self, RouteCounts, RunFilters};
use super::{authorize_post, field, form, html_page, require, Refused, SignedIn, UiState};
use crate::admin::idempotency::{self, Claim, Stored};
use crate::admin::view::{DeliveryFilter, RunFilter};
use crate::admin::AdminError;
use crate::http::error::ApiError;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::BTreeMap;

/// Runs per page.
const PAGE: usize = 50;
/// How many of a route's newest runs (and dead deliveries) the routes page
/// counts: a bounded read per route, whatever the store holds.
const COUNT_WINDOW: usize = 500;

/// The request's query as (key, value) pairs; empty values dropped.
fn query(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .filter(|(_, v)| !v.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn opt(q: &[(String, String)], name: &str) -> Option<String> {
    field(q, name).map(str::to_string)
}

/// An admin error as a page with the status the admin API answers for it
/// (`ApiError`, the one mapping); internal details are logged, not shown.
impl From<AdminError> for Refused {
    fn from(e: AdminError) -> Self {
        if matches!(e, AdminError::Unauthorized) {
            return Refused::SignIn;
        }
        let e = ApiError::Admin(e);
        let status = e.status();
        let msg = if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %e, "console: store unavailable");
            "The store cannot answer now; try again shortly.".to_string()
        } else if status.is_server_error() {
            tracing::error!(error = %e, "console: internal error");
            "Something failed inside runbridge; see its log.".to_string()
        } else {
            e.to_string()
        };
        Refused::Message(status, msg)
    }
}

async fn route_names(st: &UiState) -> Result<Vec<String>, Refused> {
    Ok(st
        .admin
        .routes()
        .await?
        .into_iter()
        .map(|r| r.name)
        .collect())
}

/// `GET /ui/runs?route&status&provider&cursor`: newest first, live.
pub async fn runs(
    State(st): State<UiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Refused> {
    let s = require(&st, &headers)?;
    let q = query(&raw);
    let filter = RunFilter {
        route: opt(&q, "route"),
        status: opt(&q, "status"),
        provider: opt(&q, "provider"),
        cursor: opt(&q, "cursor"),
        limit: Some(PAGE),
        ..RunFilter::default()
    };
    let page = st.admin.list_runs(filter.clone()).await?;
    let routes = route_names(&st).await?;
    let providers: Vec<String> = st
        .admin
        .providers()
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    let f = RunFilters {
        route: filter.route.as_deref().unwrap_or(""),
        status: filter.status.as_deref().unwrap_or(""),
        provider: filter.provider.as_deref().unwrap_or(""),
    };
    let body = views::runs(&page, &f, &routes, &providers, filter.cursor.is_none());
    Ok(html_page(
        StatusCode::OK,
        layout::page("Runs", Nav::Runs, &s.viewer(), Some(5), body),
    ))
}

/// `GET /ui/runs/{id}`: the timeline; refreshes while anything is open.
pub async fn run(
    State(st): State<UiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Refused> {
    let s = require(&st, &headers)?;
    let q = query(&raw);
    let run = st.admin.get_run(&id).await?;
    let open = run.summary.phase != crate::run::Phase::Done
        || run.deliveries.iter().any(|d| d.state.is_open());
    let title = format!("Run {}", run.summary.id);
    let body = views::run(&run, &s.viewer(), field(&q, "notice"));
    Ok(html_page(
        StatusCode::OK,
        layout::page(&title, Nav::Runs, &s.viewer(), open.then_some(5), body),
    ))
}

/// `POST /ui/runs/{id}/deliveries/{index}/redeliver` (write sessions,
/// CSRF-checked): a new attempt now with the same `webhook-id`, then back
/// to the page the button was on.
pub async fn redeliver(
    State(st): State<UiState>,
    headers: HeaderMap,
    Path((id, index)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Refused> {
    let f = form(&body);
    let s = authorize_post(&st, &headers, &f, true)?;
    let index: u32 = index
        .parse()
        .map_err(|_| Refused::Message(StatusCode::NOT_FOUND, "No such delivery.".into()))?;
    let path = format!("{}/deliveries/{index}/redeliver", views::run_link(&id));
    let to = once(&st, &s, &path, field(&f, "once"), || async {
        st.admin.redeliver(&id, index).await?;
        tracing::info!(run_id = %id, index, "console: redelivery requested");
        Ok(match field(&f, "back") {
            Some("deliveries") => "/ui/deliveries?notice=redelivered".to_string(),
            _ => format!("{}?notice=redelivered", views::run_link(&id)),
        })
    })
    .await?;
    // 303: the browser loads the target with GET (no resubmission).
    Ok(Redirect::to(&to).into_response())
}

/// `POST /ui/runs/{id}/replay` (write sessions, CSRF-checked): a new run
/// with the same inputs, linked to this one; then the new run's page.
pub async fn replay(
    State(st): State<UiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Refused> {
    let f = form(&body);
    let s = authorize_post(&st, &headers, &f, true)?;
    let path = format!("{}/replay", views::run_link(&id));
    let to = once(&st, &s, &path, field(&f, "once"), || async {
        let new = st.admin.replay_run(&id).await?;
        tracing::info!(run_id = %id, new_run_id = %new.id, "console: run replayed");
        Ok(format!("{}?notice=replayed", views::run_link(&new.id)))
    })
    .await?;
    Ok(Redirect::to(&to).into_response())
}

/// Runs `act` once per (session, path, one-time key): a repeat of the same
/// form (a double click) gets the first's redirect target without acting.
/// A form without a key just acts.
async fn once<F, Fut>(
    st: &UiState,
    s: &SignedIn,
    path: &str,
    key: Option<&str>,
    act: F,
) -> Result<String, Refused>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String, Refused>>,
{
    let Some(key) = key.filter(|k| !k.is_empty() && k.len() <= idempotency::MAX_KEY_LEN) else {
        return act().await;
    };
    // The session's CSRF token is unique per session: keys never collide
    // across sessions, and no admin token is used as a key.
    match st.once.claim(&s.session.csrf, "POST", path, key) {
        Claim::First(pending) => {
            let to = act().await?;
            pending.finish(Stored {
                status: 303,
                body: Bytes::from(to.clone()),
            });
            Ok(to)
        }
        Claim::Repeat(slot) => match idempotency::wait(slot).await {
            Some(first) => Ok(String::from_utf8_lossy(&first.body).into_owned()),
            None => Err(Refused::Message(
                StatusCode::CONFLICT,
                "The same form was submitted twice and the first did not finish; reload and try again."
                    .into(),
            )),
        },
    }
}

/// `GET /ui/deliveries?state&route&cursor`: failing and dead, across runs.
pub async fn deliveries(
    State(st): State<UiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Refused> {
    let s = require(&st, &headers)?;
    let q = query(&raw);
    let filter = DeliveryFilter {
        state: opt(&q, "state"),
        route: opt(&q, "route"),
        cursor: opt(&q, "cursor"),
        limit: Some(PAGE),
    };
    let page = st.admin.list_deliveries(filter.clone()).await?;
    let routes = route_names(&st).await?;
    let body = views::deliveries(
        &page,
        filter.state.as_deref().unwrap_or(""),
        filter.route.as_deref().unwrap_or(""),
        &routes,
        &s.viewer(),
        field(&q, "notice"),
    );
    Ok(html_page(
        StatusCode::OK,
        layout::page("Deliveries", Nav::Deliveries, &s.viewer(), None, body),
    ))
}

/// `GET /ui/routes`: per route, runs by status and dead deliveries, over
/// a bounded window of the newest runs.
pub async fn routes(State(st): State<UiState>, headers: HeaderMap) -> Result<Response, Refused> {
    let s = require(&st, &headers)?;
    let mut counts = Vec::new();
    for route in st.admin.routes().await? {
        let page = st
            .admin
            .list_runs(RunFilter {
                route: Some(route.name.clone()),
                limit: Some(COUNT_WINDOW),
                ..RunFilter::default()
            })
            .await?;
        let mut by: BTreeMap<&'static str, usize> = BTreeMap::new();
        for r in &page.runs {
            *by.entry(r.status.as_str()).or_default() += 1;
        }
        let mut by_status: Vec<(String, usize)> =
            by.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        by_status.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let dead = st
            .admin
            .list_deliveries(DeliveryFilter {
                state: Some("dead".into()),
                route: Some(route.name.clone()),
                limit: Some(COUNT_WINDOW),
                ..DeliveryFilter::default()
            })
            .await?
            .deliveries
            .len();
        counts.push(RouteCounts {
            runs_seen: page.runs.len(),
            by_status,
            dead,
            window: COUNT_WINDOW,
            route,
        });
    }
    let body = views::routes(&counts, COUNT_WINDOW);
    Ok(html_page(
        StatusCode::OK,
        layout::page("Routes", Nav::Routes, &s.viewer(), None, body),
    ))
}
