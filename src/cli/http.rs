//! The CLI's HTTP side: one client with a timeout on every request, bounded
//! reads of answers, and the admin API's bearer token and error shape.

use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

/// Largest answer read (a page of runs with details stays far below it).
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// A client with a whole-request timeout, no proxy from the environment
/// (the daemon is usually local) and no redirects (a token must not follow one).
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("runbridge-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Reads an answer's body, at most [`MAX_ANSWER`] bytes, as text.
pub async fn read_bounded(mut resp: reqwest::Response) -> Result<String, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if buf.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("the answer is larger than {MAX_ANSWER} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Why a command failed; printed on stderr, exit code 1.
#[derive(Debug)]
pub enum Failure {
    /// The API answered an error (`{"error", "message"}`).
    Api {
        /// HTTP status.
        status: u16,
        /// The error code.
        error: String,
        /// The explanation.
        message: String,
    },
    /// No answer (connection, timeout) or an unreadable one.
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Api {
                status,
                error,
                message,
            } => write!(f, "HTTP {status} {error}: {message}"),
            Failure::Transport(m) => f.write_str(m),
        }
    }
}

/// The admin API at one base URL, with an optional bearer token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    idempotency_key: Option<String>,
}

/// One answer: the typed view and the raw JSON (for `--json`).
pub struct Answer<T> {
    /// The deserialized view.
    pub view: T,
    /// The JSON as the daemon sent it.
    pub raw: Value,
}

impl Api {
    /// An API client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Api, Failure> {
        Ok(Api {
            http: client(timeout).map_err(Failure::Transport)?,
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            idempotency_key: None,
        })
    }

    /// Sends `Idempotency-Key: key` with every POST, so a command run again
    /// (a retry after a timeout) gets the first answer and acts once.
    pub fn with_idempotency_key(mut self, key: Option<String>) -> Api {
        self.idempotency_key = key.filter(|k| !k.is_empty());
        self
    }

    /// `GET path?query`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Answer<T>, Failure> {
        self.call(reqwest::Method::GET, path, query).await
    }

    /// `POST path?query` with no body.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Answer<T>, Failure> {
        self.call(reqwest::Method::POST, path, query).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Answer<T>, Failure> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = self
            .idempotency_key
            .as_ref()
            .filter(|_| method == reqwest::Method::POST)
        {
            req = req.header("idempotency-key", k);
        }
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out".to_string()
            } else {
                e.without_url().to_string()
            };
            Failure::Transport(format!("{method} {}{path}: {why}", self.base))
        })?;
        let status = resp.status();
        let text = read_bounded(resp)
            .await
            .map_err(|e| Failure::Transport(format!("{method} {path}: {e}")))?;
        let raw: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let field = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_string);
            return Err(Failure::Api {
                status: status.as_u16(),
                error: field("error").unwrap_or_else(|| "error".into()),
                message: field("message").unwrap_or_else(|| text.chars().take(300).collect()),
            });
        }
        let view = serde_json::from_value(raw.clone()).map_err(|e| {
            Failure::Transport(format!(
                "{method} {path}: unexpected answer ({e}); is the daemon the same version?"
            ))
        })?;
        Ok(Answer { view, raw })
    }
}

/// Encodes one path segment (an id or a route name).
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
