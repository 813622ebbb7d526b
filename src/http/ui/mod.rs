//! The web console at `/ui`: server-rendered pages over the admin domain
//! layer, for operators who would rather look than curl. Sign-in turns an
//! admin token into an in-memory session (cookie `HttpOnly; SameSite=Strict;
//! Path=/ui`); every form POST carries the session's CSRF token; read-only
//! sessions get no buttons and their POSTs are refused. No script is needed
//! to read; nothing is loaded from anywhere but the daemon itself.

mod layout;
mod pages;
pub mod session;
mod views;

use crate::admin::{Admin, AdminError};
use crate::config::Role;
use crate::secret::Secret;
use crate::topology::SharedTopology;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use layout::Viewer;
use maud::Markup;
use session::{Access, Session, Sessions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// The cookie holding the session id.
const COOKIE: &str = "runbridge_session";
/// The console's stylesheet, compiled into the binary.
const CSS: &str = include_str!("assets/console.css");
/// Tight: only the daemon itself, no inline script, no framing, forms
/// only to itself.
const CSP: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// What the console's handlers share.
#[derive(Clone)]
pub struct UiState {
    /// Every read and action goes through the admin layer.
    pub admin: Admin,
    /// For `server.tls` (the cookie's `Secure` flag).
    pub topology: SharedTopology,
    pub sessions: Arc<Sessions>,
    /// One-time keys of action forms: a repeat gets the first's redirect.
    pub once: Arc<crate::admin::idempotency::Idempotency>,
}

impl UiState {
    /// The console over the admin layer, with an empty session table.
    pub fn new(admin: Admin, topology: SharedTopology) -> Self {
        UiState {
            admin,
            topology,
            sessions: Arc::new(Sessions::default()),
            once: Arc::default(),
        }
    }
}

/// Every `/ui` path, with the security headers on every answer.
pub fn router(st: UiState) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/assets/console.css", get(css))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/runs", get(pages::runs))
        .route("/ui/runs/{id}", get(pages::run))
        .route(
            "/ui/runs/{id}/deliveries/{index}/redeliver",
            post(pages::redeliver),
        )
        .route("/ui/runs/{id}/replay", post(pages::replay))
        .route("/ui/deliveries", get(pages::deliveries))
        .route("/ui/routes", get(pages::routes))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .with_state(st)
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn css() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/css; charset=utf-8"),
        )],
        CSS,
    )
        .into_response()
}

/// An HTML answer with this status.
fn html_page(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// An error page (the JSON error layer leaves `text/html` answers alone).
fn error_page(status: StatusCode, message: &str, signed_in: bool) -> Response {
    html_page(status, layout::error(status.as_u16(), message, signed_in))
}

async fn not_found(State(st): State<UiState>, headers: HeaderMap) -> Response {
    let signed_in = current(&st, &headers).is_some();
    error_page(StatusCode::NOT_FOUND, "No such page.", signed_in)
}

/// The role `token` has in the live admin config (the admin API's own
/// check), if it signs in at all.
fn role_of(admin: &Admin, token: &str) -> Option<Access> {
    match admin.authenticate(Some(token)).ok()? {
        Role::Read => Some(Access::Read),
        Role::Write => Some(Access::Write),
    }
}

/// The session id from the request's cookies.
fn cookie_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
}

/// A signed-in request: its session, cookie value and current access.
struct SignedIn {
    id: String,
    session: Session,
    access: Access,
}

impl SignedIn {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            access: self.access,
            csrf: &self.session.csrf,
        }
    }
}

/// The live session of this request, its token still valid in the current
/// config (a token removed or downgraded by a reload takes effect at once).
fn current(st: &UiState, headers: &HeaderMap) -> Option<SignedIn> {
    let id = cookie_id(headers)?;
    let session = st.sessions.get(&id)?;
    let Some(access) = role_of(&st.admin, session.token.expose()) else {
        st.sessions.close(&id);
        return None;
    };
    Some(SignedIn {
        id,
        session,
        access,
    })
}

/// Why a console request is not served; answered as a page (or, for a
/// page without a session, a redirect to the sign-in form).
enum Refused {
    /// No session: to the sign-in form.
    SignIn,
    /// No session on a POST: 401 with a link to sign in.
    Ended,
    /// A signed-in request refused or failed: this status and message.
    Message(StatusCode, String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::SignIn => Redirect::to("/ui/login").into_response(),
            Refused::Ended => error_page(
                StatusCode::UNAUTHORIZED,
                "Your session has ended; sign in again.",
                false,
            ),
            Refused::Message(status, msg) => error_page(status, &msg, true),
        }
    }
}

/// For a page: the session, or a redirect to the sign-in form.
fn require(st: &UiState, headers: &HeaderMap) -> Result<SignedIn, Refused> {
    current(st, headers).ok_or(Refused::SignIn)
}

/// A form body, decoded (`application/x-www-form-urlencoded`).
fn form(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// For a POST: a session, its CSRF token in the form, and (when `write`)
/// a write role; otherwise the refusal to answer (401 without a session,
/// 403 for a missing or wrong CSRF token or a read-only session).
fn authorize_post(
    st: &UiState,
    headers: &HeaderMap,
    f: &[(String, String)],
    write: bool,
) -> Result<SignedIn, Refused> {
    let s = current(st, headers).ok_or(Refused::Ended)?;
    if !s.session.csrf_ok(field(f, "csrf")) {
        return Err(Refused::Message(
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or wrong; reload the page and try again.".into(),
        ));
    }
    if write && s.access != Access::Write {
        return Err(Refused::Message(
            StatusCode::FORBIDDEN,
            "This session is read-only: sign in with a write token to act.".into(),
        ));
    }
    Ok(s)
}

fn session_cookie(st: &UiState, value: &str, max_age: Option<u64>) -> HeaderValue {
    let secure = st.topology.load().settings.server.tls.is_some();
    let mut c = format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    // The value is hex (or empty): always a valid header value.
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn login_form(State(st): State<UiState>, headers: HeaderMap) -> Response {
    if current(&st, &headers).is_some() {
        return Redirect::to("/ui/runs").into_response();
    }
    html_page(StatusCode::OK, layout::login(disabled(&st)))
}

/// The sign-in problem when no admin token is configured at all.
fn disabled(st: &UiState) -> Option<&'static str> {
    matches!(st.admin.authenticate(None), Err(AdminError::Disabled))
        .then_some("The console is disabled: configure [[admin.tokens]] or server.admin_token.")
}

/// `POST /ui/login`: a valid admin token opens a session; a wrong one is a
/// 401 with the form again, and too many from one address a 429.
async fn login(
    State(st): State<UiState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer: IpAddr = peer
        .map(|Extension(ConnectInfo(a))| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Some(wait) = st.sessions.limited(peer) {
        let msg = format!(
            "Too many failed sign-ins; try again in {} s.",
            wait.as_secs().max(1)
        );
        let mut resp = html_page(StatusCode::TOO_MANY_REQUESTS, layout::login(Some(&msg)));
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let f = form(&body);
    let token = field(&f, "token").unwrap_or("").trim();
    if token.is_empty() || role_of(&st.admin, token).is_none() {
        st.sessions.failed(peer);
        tracing::warn!(peer = %peer, "console sign-in refused");
        let problem = disabled(&st).unwrap_or("That token does not sign in.");
        return html_page(StatusCode::UNAUTHORIZED, layout::login(Some(problem)));
    }
    // A new sign-in never reuses a session id (no fixation).
    if let Some(old) = cookie_id(&headers) {
        st.sessions.close(&old);
    }
    let (id, _) = st.sessions.open(Secret::new(token));
    let mut resp = Redirect::to("/ui/runs").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&st, &id, Some(session::SESSION_TTL.as_secs())),
    );
    resp
}

/// `POST /ui/logout`: ends the session (CSRF-checked, any role).
async fn logout(
    State(st): State<UiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    let f = form(&body);
    let s = authorize_post(&st, &headers, &f, false)?;
    st.sessions.close(&s.id);
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&st, "", Some(0)));
    Ok(resp)
}
