//! The live configuration: settings plus the providers built from them,
//! behind one swappable handle, so a reload can replace routes, providers
//! and secrets atomically while runs keep going. Tasks load the current
//! topology when they need it instead of keeping copies.

use crate::config::Settings;
use crate::providers::{self, Provider};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One consistent view of the configuration.
pub struct Topology {
    pub settings: Settings,
    pub providers: BTreeMap<String, Arc<dyn Provider>>,
}

impl Topology {
    /// Builds providers for `settings`, sharing `client`.
    pub fn new(settings: Settings, client: &reqwest::Client) -> Self {
        let providers = settings
            .providers
            .iter()
            .map(|(name, s)| (name.clone(), providers::build(s, client)))
            .collect();
        Topology {
            settings,
            providers,
        }
    }
}

/// The handle every task holds.
pub type SharedTopology = Arc<ArcSwap<Topology>>;

/// Wraps a topology in its swappable handle.
pub fn shared(t: Topology) -> SharedTopology {
    Arc::new(ArcSwap::from_pointee(t))
}
