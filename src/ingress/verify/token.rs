//! `kind = "token"`: a shared token in `Authorization: Bearer` (default), in
//! a named header (`header = "X-Gitlab-Token"`) or in a query parameter
//! (`query = "token"`). Checked before the body is read.

use super::{any_ct_eq, deny, exposed, secrets, Kind};
use crate::config::{Problems, RawSecret};
use crate::ingress::{Headers, IngressError};
use crate::secret::Secret;
use crate::time::Timestamp;
use serde::Deserialize;

/// As written: `token` or `tokens`, and at most one of `header`, `query`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    token: Option<RawSecret>,
    #[serde(default)]
    tokens: Vec<RawSecret>,
    header: Option<String>,
    query: Option<String>,
}

impl Raw {
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<Token> {
        let place = match (self.header, self.query) {
            (None, None) => Place::Bearer,
            (Some(h), None) => {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    p.add(
                        format!("{key}.header"),
                        format!("{h:?} is not a header name"),
                    );
                }
                Place::Header(h.to_ascii_lowercase())
            }
            (None, Some(q)) if !q.is_empty() => Place::Query(q),
            (None, Some(_)) => {
                p.add(format!("{key}.query"), "must not be empty");
                Place::Bearer
            }
            (Some(_), Some(_)) => {
                p.add(format!("{key}.query"), "give header or query, not both");
                Place::Bearer
            }
        };
        secrets(
            key,
            self.token.as_ref(),
            &self.tokens,
            ("token", "tokens"),
            p,
        )
        .map(|tokens| Token { tokens, place })
    }
}

/// Where the token is carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The whole value of this header (lowercase name).
    Header(String),
    /// The value of this query parameter.
    Query(String),
}

/// A shared token, any of `tokens` accepted.
#[derive(Debug, Clone)]
pub struct Token {
    /// The accepted tokens (old and new while rotating).
    pub tokens: Vec<Secret>,
    /// Where the sender puts it.
    pub place: Place,
}

impl Kind for Token {
    fn before_body(&self, req: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        let given: String = match &self.place {
            Place::Bearer => {
                let v = req
                    .get("authorization")
                    .ok_or_else(|| deny("missing Authorization header"))?;
                crate::http::auth::bearer_token(v)
                    .ok_or_else(|| deny("Authorization must be a Bearer token"))?
                    .to_string()
            }
            Place::Header(h) => req
                .get(h)
                .ok_or_else(|| deny(format!("missing {h} header")))?
                .trim()
                .to_string(),
            Place::Query(q) => req
                .query(q)
                .ok_or_else(|| deny(format!("missing {q} query parameter")))?,
        };
        if any_ct_eq(
            given.as_bytes(),
            self.tokens.iter().map(|t| t.expose().as_bytes()),
        ) {
            Ok(())
        } else {
            Err(deny("invalid token"))
        }
    }

    fn with_body(&self, _: &dyn Headers, _: &[u8], _: Timestamp) -> Result<(), IngressError> {
        Ok(())
    }

    fn header_only(&self) -> bool {
        true
    }

    fn secrets(&self) -> Vec<String> {
        exposed(&self.tokens)
    }
}
