//! The live configuration: settings plus the providers built from them,
//! behind one swappable handle, so a reload can replace routes, providers
//! and secrets atomically while runs keep going. Tasks load the current
//! topology when they need it instead of keeping copies.

use crate::config::{ProviderSettings, Settings};
use crate::providers::{self, Provider};
use crate::secret::Redactor;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One consistent view of the configuration.
pub struct Topology {
    pub settings: Settings,
    pub providers: BTreeMap<String, Arc<dyn Provider>>,
    /// Scrubs every secret of `settings` from third-party text; swapped
    /// together with the secrets it knows.
    pub redactor: Arc<Redactor>,
    /// Routes a reload removed that still have unfinished runs: kept in
    /// `settings` (their runs need their callbacks and secrets) but no longer
    /// served; dropped once their last run is done.
    pub retired_routes: BTreeSet<String>,
    /// Providers a reload removed that unfinished runs still use.
    pub retired_providers: BTreeSet<String>,
}

impl Topology {
    /// Builds providers for `settings`, sharing `client`.
    pub fn new(settings: Settings, client: &reqwest::Client) -> Self {
        let redactor = Arc::new(redactor(&settings));
        let providers = settings
            .providers
            .iter()
            .map(|(name, s)| (name.clone(), providers::build(name, s, client, &redactor)))
            .collect();
        Topology {
            settings,
            providers,
            redactor,
            retired_routes: BTreeSet::new(),
            retired_providers: BTreeSet::new(),
        }
    }
}

/// A redactor for every secret in `settings`: vendor tokens, route
/// verification secrets, callback signing secrets and the admin token.
pub fn redactor(settings: &Settings) -> Redactor {
    let mut secrets: Vec<String> = Vec::new();
    if let Some(t) = &settings.server.admin_token {
        secrets.push(t.expose().to_string());
    }
    secrets.extend(
        settings
            .admin
            .tokens
            .iter()
            .map(|t| t.token.expose().to_string()),
    );
    secrets.extend(
        settings
            .admin
            .alert_keys
            .iter()
            .map(|k| k.to_secret_string()),
    );
    for p in settings.providers.values() {
        match p {
            ProviderSettings::Http(s) => {
                if let Some(t) = &s.token {
                    secrets.push(t.expose().to_string())
                }
            }
            ProviderSettings::Simulated(_) => {}
        }
    }
    for r in settings.routes.values() {
        secrets.extend(r.verify.secrets());
        for c in &r.callbacks {
            secrets.extend(c.keys.iter().map(|k| k.to_secret_string()));
            secrets.extend(
                c.headers
                    .iter()
                    .filter(|h| h.is_reference)
                    .map(|h| h.value.expose().to_string()),
            );
        }
    }
    Redactor::new(secrets.iter().map(String::as_str))
}

/// The handle every task holds.
pub type SharedTopology = Arc<ArcSwap<Topology>>;

/// Wraps a topology in its swappable handle.
pub fn shared(t: Topology) -> SharedTopology {
    Arc::new(ArcSwap::from_pointee(t))
}
