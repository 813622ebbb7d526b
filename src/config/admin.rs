//! `[admin]`: who may use the admin API (read or write tokens), where a
//! dead delivery is reported, and how many ignored or rejected inbound
//! requests are kept for `GET /requests`.
//!
//! ```toml
//! [admin]
//! alert_url = "https://ops.example/runbridge"
//! alert_secret = "env:ALERT_SECRET"      # whsec_...
//! recent_requests = 1000
//!
//! [[admin.tokens]]
//! token = "env:DASHBOARD_TOKEN"
//! role = "read"
//! ```
//!
//! `server.admin_token`, the older single key, is still read as one write
//! token.

use super::{check_url, secret, Problems, RawSecret};
use crate::secret::Secret;
use crate::signing::WebhookKey;
use serde::Deserialize;

/// Largest `admin.recent_requests` (the ring is kept in memory).
pub const MAX_RECENT_REQUESTS: usize = 100_000;
/// Most `[[admin.tokens]]`.
pub const MAX_ADMIN_TOKENS: usize = 64;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every `GET`; every `POST` is refused with 403 `forbidden`.
    Read,
    /// Everything.
    Write,
}

impl Role {
    /// The name the config and the console use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
        }
    }
}

/// One admin API token and its role.
#[derive(Debug, Clone)]
pub struct AdminToken {
    /// The bearer token (Debug prints `***`).
    pub token: Secret,
    pub role: Role,
}

/// `[admin]`, checked.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Every accepted token, `server.admin_token` first (as a write token).
    pub tokens: Vec<AdminToken>,
    /// Where a `delivery.dead` event is POSTed, signed with `alert_keys`.
    pub alert_url: Option<String>,
    /// The Standard Webhooks key(s) of the alert (from `alert_secret`).
    pub alert_keys: Vec<WebhookKey>,
    /// Size of the ring of inbound requests that started nothing.
    pub recent_requests: usize,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            tokens: Vec::new(),
            alert_url: None,
            alert_keys: Vec::new(),
            recent_requests: 1000,
        }
    }
}

impl AdminSettings {
    /// Whether any token is configured (otherwise the admin API answers 403
    /// `admin_disabled`).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    token: RawSecret,
    role: Role,
}

/// `[admin]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    tokens: Vec<RawToken>,
    alert_url: Option<String>,
    alert_secret: Option<RawSecret>,
    recent_requests: usize,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            tokens: Vec::new(),
            alert_url: None,
            alert_secret: None,
            recent_requests: 1000,
        }
    }
}

/// Checks `[admin]`; `legacy` is `server.admin_token`, kept as a write token.
pub(super) fn check_admin(
    raw: RawAdmin,
    legacy: Option<&Secret>,
    p: &mut Problems,
) -> AdminSettings {
    let mut tokens: Vec<AdminToken> = legacy
        .map(|t| AdminToken {
            token: t.clone(),
            role: Role::Write,
        })
        .into_iter()
        .collect();
    if raw.tokens.len() > MAX_ADMIN_TOKENS {
        p.add(
            "admin.tokens",
            format!("has more than {MAX_ADMIN_TOKENS} tokens"),
        );
    }
    for (i, t) in raw.tokens.iter().enumerate() {
        let key = format!("admin.tokens[{i}].token");
        if let Some(token) = secret(&t.token, &key, p) {
            if token.expose().trim().is_empty() {
                p.add(key, "must not be empty");
                continue;
            }
            if tokens.iter().any(|o| o.token.expose() == token.expose()) {
                p.add(key, "the same token is listed twice");
                continue;
            }
            tokens.push(AdminToken {
                token,
                role: t.role,
            });
        }
    }
    let alert_url = raw
        .alert_url
        .as_deref()
        .and_then(|u| check_url("admin.alert_url", u, p));
    let mut alert_keys = Vec::new();
    if let Some(s) = &raw.alert_secret {
        if let Some(v) = secret(s, "admin.alert_secret", p) {
            match WebhookKey::parse(v.expose()) {
                Ok(k) => alert_keys.push(k),
                Err(e) => p.add("admin.alert_secret", e.to_string()),
            }
        }
    }
    if alert_url.is_some() && alert_keys.is_empty() && raw.alert_secret.is_none() {
        p.add(
            "admin.alert_secret",
            "admin.alert_url needs alert_secret (whsec_...) to sign the alert",
        );
    }
    if raw.recent_requests == 0 || raw.recent_requests > MAX_RECENT_REQUESTS {
        p.add(
            "admin.recent_requests",
            format!("must be between 1 and {MAX_RECENT_REQUESTS}"),
        );
    }
    AdminSettings {
        tokens,
        alert_url,
        alert_keys,
        recent_requests: raw.recent_requests.clamp(1, MAX_RECENT_REQUESTS),
    }
}
