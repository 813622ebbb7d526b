//! A scriptable Slate-shaped vendor for hardening tests: by default it
//! starts runs (202) and answers every status check with COMPLETED, but a
//! test can make start or poll answer anything (status, body, delay) for as
//! long as it likes, including bodies that echo the request's
//! `Authorization` header as careless vendors do.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;

use super::SLATE_PREFIX;

/// One scripted answer. In `body`, `{AUTH}` is replaced by the request's
/// `Authorization` header as received.
#[derive(Clone, Debug)]
pub struct Scripted {
    /// HTTP status of the answer.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its body (`{AUTH}` is replaced, see above).
    pub body: String,
    /// How long to wait before answering (to exceed the provider's timeout).
    pub delay: Option<Duration>,
}

impl Scripted {
    /// A JSON answer.
    pub fn json(status: u16, body: &str) -> Self {
        Scripted {
            status,
            content_type: "application/json",
            body: body.into(),
            delay: None,
        }
    }

    /// A non-JSON answer (HTML, text).
    pub fn text(status: u16, content_type: &'static str, body: &str) -> Self {
        Scripted {
            status,
            content_type,
            body: body.into(),
            delay: None,
        }
    }

    /// A 200 that arrives only after `d` (past the provider's timeout).
    pub fn slow(d: Duration) -> Self {
        Scripted {
            delay: Some(d),
            ..Scripted::json(200, r#"{"status":"RUNNING"}"#)
        }
    }
}

#[derive(Default)]
struct VendorState {
    start: Option<Scripted>,
    poll: Option<Scripted>,
    starts: Vec<u16>,
    polls: Vec<u16>,
    next_id: u64,
}

/// The scriptable vendor.
#[derive(Clone)]
pub struct ScriptedVendor {
    state: Arc<Mutex<VendorState>>,
    /// Where it listens (loopback, a free port).
    pub addr: SocketAddr,
}

fn answer(s: &Scripted, headers: &HeaderMap) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = s.body.replace("{AUTH}", auth);
    (
        StatusCode::from_u16(s.status).unwrap(),
        [("content-type", s.content_type)],
        body,
    )
        .into_response()
}

async fn start(
    State(st): State<Arc<Mutex<VendorState>>>,
    UrlPath(_wf): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let scripted = {
        let mut s = st.lock().unwrap();
        let scripted = s.start.clone();
        s.starts.push(scripted.as_ref().map_or(202, |x| x.status));
        if scripted.is_none() {
            s.next_id += 1;
        }
        scripted.ok_or(s.next_id)
    };
    match scripted {
        Ok(x) => {
            if let Some(d) = x.delay {
                tokio::time::sleep(d).await;
            }
            answer(&x, &headers)
        }
        Err(id) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"run_id": format!("v-{id}"), "status": "QUEUED"})),
        )
            .into_response(),
    }
}

async fn poll(
    State(st): State<Arc<Mutex<VendorState>>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let scripted = {
        let mut s = st.lock().unwrap();
        let scripted = s.poll.clone();
        s.polls.push(scripted.as_ref().map_or(200, |x| x.status));
        scripted
    };
    match scripted {
        Some(x) => {
            if let Some(d) = x.delay {
                tokio::time::sleep(d).await;
            }
            answer(&x, &headers)
        }
        None => axum::Json(json!({
            "run_id": id, "status": "COMPLETED", "output": {"ok": true}, "error": null
        }))
        .into_response(),
    }
}

impl ScriptedVendor {
    /// Serves on a free loopback port, answering normally until scripted.
    pub async fn start() -> ScriptedVendor {
        let state = Arc::new(Mutex::new(VendorState::default()));
        let app = Router::new()
            .route(
                &format!("{SLATE_PREFIX}/workflows/{{workflow_id}}/runs"),
                post(start),
            )
            .route(
                &format!("{SLATE_PREFIX}/workflow-runs/{{run_id}}"),
                get(poll),
            )
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind vendor");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ScriptedVendor { state, addr }
    }

    /// The `base_url` of a `kind = "slate"` provider pointing here.
    pub fn base_url(&self) -> String {
        format!("http://{}{SLATE_PREFIX}", self.addr)
    }

    /// Every start answers `s` until [`ScriptedVendor::set_start`]`(None)`.
    pub fn set_start(&self, s: Option<Scripted>) {
        self.state.lock().unwrap().start = s;
    }

    /// Every status check answers `s` until [`ScriptedVendor::set_poll`]`(None)`.
    pub fn set_poll(&self, s: Option<Scripted>) {
        self.state.lock().unwrap().poll = s;
    }

    /// HTTP statuses of the start calls answered so far.
    pub fn starts(&self) -> Vec<u16> {
        self.state.lock().unwrap().starts.clone()
    }

    /// HTTP statuses of the status checks answered so far.
    pub fn polls(&self) -> Vec<u16> {
        self.state.lock().unwrap().polls.clone()
    }
}
