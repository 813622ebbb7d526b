//! The one place errors become HTTP responses: a status code and a JSON body
//! `{"error": <code>, "message": <text>}` that says what is wrong.

use crate::admin::AdminError;
use crate::ingress::IngressError;
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Every error an HTTP handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Ingress(#[from] IngressError),
    /// An admin operation's refusal or failure.
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request took longer than {}", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An answer the router or an extractor produced without a body of our
    /// shape (404 unknown path, 405, rejections...), rewritten into it.
    #[error("{1}")]
    Status(StatusCode, String),
    /// `POST /reload` with a config that has problems: a 422 listing them
    /// all (key and message; never a secret's value).
    #[error("the new configuration has {} problem(s); the running one stays", .0.len())]
    InvalidConfig(Vec<crate::config::Problem>),
}

impl ApiError {
    /// The `error` code this error answers with (for logs and metrics).
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }
}

/// The `error` code of a bare HTTP status (answers axum or our edge make
/// without a more specific error).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable_entity",
        429 => "rate_limited",
        431 => "headers_too_large",
        500 => "internal_error",
        503 => "unavailable",
        s if s >= 500 => "server_error",
        _ => "client_error",
    }
}

/// The body of the canned `503` the accept loop writes itself when every
/// connection is busy (it has no router to ask).
pub fn at_capacity_body() -> String {
    json!({
        "error": "too_many_connections",
        "message": "the server is at its connection limit; retry later",
    })
    .to_string()
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Ingress(e) => match e {
                IngressError::RouteNotFound(_) => (StatusCode::NOT_FOUND, "route_not_found"),
                IngressError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
                IngressError::PayloadTooLarge(_) => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
                }
                IngressError::UnsupportedMediaType(_) => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
                }
                IngressError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
                IngressError::MissingInput(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "missing_input")
                }
                IngressError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                IngressError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            },
            ApiError::Admin(e) => match e {
                AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
                AdminError::Disabled => (StatusCode::FORBIDDEN, "admin_disabled"),
                AdminError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
                AdminError::NotFound { code, .. } => (StatusCode::NOT_FOUND, *code),
                AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                AdminError::Conflict { code, .. } => (StatusCode::CONFLICT, *code),
                AdminError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
                AdminError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            },
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            ApiError::Status(status, _) => (*status, code_for_status(*status)),
            ApiError::InvalidConfig(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match &self {
            ApiError::Ingress(IngressError::RateLimited(d)) => {
                Some(d.as_secs() + u64::from(d.subsec_nanos() > 0))
            }
            _ => None,
        };
        let message = match code {
            // Backend details go to the log, not to the caller.
            "storage_unavailable" => {
                // Once per interval: a store fault under load answers
                // hundreds of requests a second.
                static LOG: std::sync::LazyLock<crate::throttle::Throttle> =
                    std::sync::LazyLock::new(|| {
                        crate::throttle::Throttle::new(std::time::Duration::from_secs(10))
                    });
                if let Some(suppressed) = LOG.allow("storage_unavailable") {
                    tracing::error!(error = %self, suppressed, "storage error while answering a request");
                }
                "storage is unavailable; retry later".to_string()
            }
            "internal_error" => {
                tracing::error!(error = %self, "internal error while answering a request");
                "internal error; the details are in the server's log".to_string()
            }
            _ => self.to_string(),
        };
        let mut body = json!({ "error": code, "message": message });
        if let ApiError::InvalidConfig(problems) = &self {
            body["problems"] = problems
                .iter()
                .map(|p| json!({ "key": p.key, "message": p.message }))
                .collect();
        }
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            if let Ok(v) = "Bearer".parse() {
                resp.headers_mut()
                    .insert(axum::http::header::WWW_AUTHENTICATE, v);
            }
        }
        if let Some(secs) = retry_after {
            if let Ok(v) = secs.max(1).to_string().parse() {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            if let Ok(v) = "1".parse() {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
