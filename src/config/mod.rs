//! Configuration: a TOML file layered under `RUNBRIDGE__SECTION__KEY`
//! environment variables, checked into typed [`Settings`].
//!
//! Loading never stops at the first problem: every section, provider and
//! route is read on its own and checked, so `check-config` can list every
//! problem with the key path where it is.

pub mod admin;
mod delivery;
mod providers;
mod routes;
mod scheduler;
mod server;
mod storage;

pub use admin::{AdminSettings, AdminToken, Role};
pub use delivery::DeliverySettings;
pub use providers::{HttpSettings, ProviderSettings, SimulatedSettings};
pub use routes::{
    CallbackHeader, CallbackSettings, InputSettings, InputSource, RouteSettings, VerifySettings,
};
pub use scheduler::SchedulerSettings;
pub use server::{ServerSettings, TlsSettings};
pub use storage::StorageSettings;

/// Every documented maximum (README, "Limits"), in one place.
pub mod limits {
    pub use super::delivery::{
        MAX_DELIVERY_TIMEOUT, MAX_RESPONSE_BYTES, MAX_RETRY_AFTER, MAX_SCHEDULE_DELAY,
        MAX_SCHEDULE_LEN,
    };
    pub use super::providers::{
        MAX_PROVIDER_TIMEOUT, MAX_SIMULATED_DURATION, MAX_VENDOR_RESPONSE_BYTES,
    };
    pub use super::routes::{MAX_DEDUPE_TTL, MAX_TOLERANCE};
    pub use super::scheduler::{
        MAX_CONCURRENCY, MAX_POLL_INTERVAL, MAX_POLL_SLOWDOWN_AFTER, MAX_RETRY_BASE, MAX_RETRY_MAX,
        MAX_RUN_TIMEOUT,
    };
    pub use super::server::{
        MAX_BODY_BUFFER, MAX_BODY_LIMIT, MAX_CONNECTIONS, MAX_EDGE_TIMEOUT, MAX_HEADERS,
        MAX_HEADER_BYTES, MAX_LINGER_BYTES, MAX_REQUEST_TIMEOUT, MAX_SHUTDOWN_TIMEOUT,
    };
    pub use super::storage::{MAX_CACHE_CAPACITY, MAX_RETENTION};
    pub use crate::limit::{MAX_IN_FLIGHT, MAX_RATE};
}

use admin::{check_admin, RawAdmin};
use delivery::{check_delivery, RawDelivery};
use providers::{check_provider, RawProvider};
use routes::{check_route, RawRoute};
use scheduler::{check_scheduler, RawScheduler};
use server::{check_server, RawServer};
use storage::RawStorage;

use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The environment-variable prefix: `RUNBRIDGE__SERVER__LISTEN` sets `server.listen`.
pub const ENV_PREFIX: &str = "RUNBRIDGE";

/// One problem found in the configuration, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem that made a configuration unusable.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The checked configuration the daemon runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub scheduler: SchedulerSettings,
    pub delivery: DeliverySettings,
    /// `[admin]`: API tokens and roles, the dead-delivery alert.
    pub admin: AdminSettings,
    pub providers: BTreeMap<String, ProviderSettings>,
    pub routes: BTreeMap<String, RouteSettings>,
}

impl Settings {
    /// Loads a TOML file with environment overrides and checks it.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        if !path.exists() {
            let looked = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(ConfigError(vec![Problem {
                key: path.display().to_string(),
                message: format!(
                    "no configuration file at {} (a relative path is read from the working directory, {cwd}); pass --config PATH or set RUNBRIDGE_CONFIG",
                    looked.display()
                ),
            }]));
        }
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true);
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(env)
            .build()
            .map_err(|e| {
                ConfigError(vec![Problem {
                    key: path.display().to_string(),
                    message: without_source_lines(&e.to_string()),
                }])
            })?;
        Self::from_config(built)
    }

    /// Checks an already layered configuration.
    pub fn from_config(cfg: config::Config) -> Result<Settings, ConfigError> {
        let mut p = Problems::default();
        let root: BTreeMap<String, config::Value> = match cfg.try_deserialize() {
            Ok(r) => r,
            Err(e) => {
                return Err(ConfigError(vec![Problem {
                    key: "(root)".into(),
                    message: e.to_string(),
                }]))
            }
        };
        for key in root.keys() {
            if ![
                "server",
                "storage",
                "scheduler",
                "delivery",
                "admin",
                "providers",
                "routes",
            ]
            .contains(&key.as_str())
            {
                p.add(key, "unknown section; expected server, storage, scheduler, delivery, admin, providers or routes");
            }
        }
        let section = |name: &str| root.get(name).cloned();
        let server: RawServer = p.parse("server", section("server")).unwrap_or_default();
        let storage: RawStorage = p.parse("storage", section("storage")).unwrap_or_default();
        let scheduler: RawScheduler = p
            .parse("scheduler", section("scheduler"))
            .unwrap_or_default();
        let delivery: RawDelivery = p.parse("delivery", section("delivery")).unwrap_or_default();
        let admin: RawAdmin = p.parse("admin", section("admin")).unwrap_or_default();
        let raw_providers: BTreeMap<String, config::Value> = p
            .parse("providers", section("providers"))
            .unwrap_or_default();
        let raw_routes: BTreeMap<String, config::Value> =
            p.parse("routes", section("routes")).unwrap_or_default();

        let server = check_server(server, &mut p);
        let storage = storage.check(&mut p);
        let scheduler = check_scheduler(scheduler, &mut p);
        let delivery = check_delivery(delivery, &mut p);
        let admin = check_admin(admin, server.admin_token.as_ref(), &mut p);

        let declared: std::collections::BTreeSet<String> = raw_providers.keys().cloned().collect();
        let mut providers = BTreeMap::new();
        for (name, value) in raw_providers {
            let key = format!("providers.{name}");
            check_name(&key, &name, &mut p);
            if let Some(raw) = p.parse::<RawProvider>(&key, Some(value)) {
                if let Some(settings) = check_provider(&key, raw, &mut p) {
                    providers.insert(name, settings);
                }
            }
        }
        let mut routes = BTreeMap::new();
        for (name, value) in raw_routes {
            let key = format!("routes.{name}");
            check_name(&key, &name, &mut p);
            if let Some(raw) = p.parse::<RawRoute>(&key, Some(value)) {
                if let Some(settings) = check_route(&key, raw, &declared, &mut p) {
                    routes.insert(name, settings);
                }
            }
        }
        if p.0.is_empty() {
            Ok(Settings {
                server,
                storage,
                scheduler,
                delivery,
                admin,
                providers,
                routes,
            })
        } else {
            Err(ConfigError(p.0))
        }
    }

    /// The run timeout that applies to a route.
    pub fn run_timeout(&self, route: &RouteSettings) -> Duration {
        route.run_timeout.unwrap_or(self.scheduler.run_timeout)
    }
}

#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Deserializes one value, recording an error with its full key path.
    pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
        &mut self,
        prefix: &str,
        value: Option<config::Value>,
    ) -> Option<T> {
        let value = value?;
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                let key = if path == "." || path.is_empty() {
                    prefix.to_string()
                } else {
                    format!("{prefix}.{path}")
                };
                self.add(key, clean_serde_message(&e.inner().to_string()));
                None
            }
        }
    }
}

/// Drops the quoted source lines of a TOML syntax error (`4 | token = x`,
/// `  |   ^^^`): the broken line may be a secret's. Line and column stay.
fn without_source_lines(msg: &str) -> String {
    msg.lines()
        .filter(|l| {
            !l.trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
                .starts_with('|')
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Drops the config crate's own location suffix; we give the key path ourselves.
fn clean_serde_message(msg: &str) -> String {
    match msg.find(" for key `") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn check_name(key: &str, name: &str, p: &mut Problems) {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        p.add(key, "names use only a-z, 0-9, '-' and '_'");
    }
}

/// Resolves `env:NAME`, `file:/path`, `credential:NAME` (a systemd
/// credential: the file `NAME` in `$CREDENTIALS_DIRECTORY`, as
/// `LoadCredential=` provides it) or a literal.
pub fn resolve_secret(raw: &str, key: &str, p: &mut impl FnMut(String, String)) -> Option<Secret> {
    if let Some(name) = raw.strip_prefix("credential:") {
        let valid = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        if !valid {
            p(
                key.into(),
                format!("credential name {name:?} must be a plain file name"),
            );
            return None;
        }
        let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
            p(
                key.into(),
                format!("credential {name:?}: $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the systemd unit)"),
            );
            return None;
        };
        let path = std::path::Path::new(&dir).join(name);
        return resolve_secret(&format!("file:{}", path.display()), key, p);
    }
    if let Some(var) = raw.strip_prefix("env:") {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            Ok(_) => {
                p(key.into(), format!("environment variable {var} is empty"));
                None
            }
            Err(_) => {
                p(key.into(), format!("environment variable {var} is not set"));
                None
            }
        }
    } else if let Some(path) = raw.strip_prefix("file:") {
        match std::fs::read_to_string(path) {
            Ok(v) => {
                let v = v.trim_end_matches(['\n', '\r']).to_string();
                if v.is_empty() {
                    p(key.into(), format!("secret file {path} is empty"));
                    None
                } else {
                    Some(Secret::new(v))
                }
            }
            Err(e) => {
                p(key.into(), format!("cannot read secret file {path}: {e}"));
                None
            }
        }
    } else if raw.is_empty() {
        p(key.into(), "must not be empty".into());
        None
    } else {
        Some(Secret::new(raw))
    }
}

pub(crate) fn secret(raw: &RawSecret, key: &str, p: &mut Problems) -> Option<Secret> {
    resolve_secret(raw.as_str(), key, &mut |k, m| p.add(k, m))
}

fn check_url(key: &str, raw: &str, p: &mut Problems) -> Option<String> {
    match reqwest::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Some(raw.trim_end_matches('/').to_string())
        }
        Ok(_) => {
            p.add(
                key,
                format!(
                    "{:?} must be an http or https URL with a host",
                    crate::secret::redact_url(raw)
                ),
            );
            None
        }
        Err(e) => {
            // The text is not shown: it may carry a token.
            p.add(key, format!("not a URL: {e}"));
            None
        }
    }
}

pub(crate) fn positive(key: &str, d: Duration, p: &mut Problems) {
    if d.is_zero() {
        p.add(key, "must be greater than zero");
    }
}

/// Records a problem when a duration exceeds its documented maximum (see
/// README "Limits"): bounds keep every deadline and delay the daemon
/// computes well inside what timestamps, timers and RFC 3339 can represent.
pub(crate) fn bounded(key: &str, d: Duration, max: Duration, p: &mut Problems) {
    if d > max {
        p.add(
            key,
            format!(
                "{} is more than the maximum of {}",
                humantime::format_duration(d),
                humantime::format_duration(max)
            ),
        );
    }
}

/// Records a problem when a size (bytes) exceeds its documented maximum.
pub(crate) fn bounded_size(key: &str, bytes: u64, max: u64, p: &mut Problems) {
    if bytes > max {
        p.add(
            key,
            format!(
                "{} is more than the maximum of {}",
                bytesize::ByteSize::b(bytes),
                bytesize::ByteSize::b(max)
            ),
        );
    }
}

/// A secret as given in the config, before `env:`/`file:` resolution.
///
/// Accepts strings and also numbers and booleans, because environment
/// overrides are parsed (`RUNBRIDGE__..._TOKEN=12345` arrives as an
/// integer) and are stringified back. Its errors never include the value
/// given, and `Debug` prints `***`, so a secret cannot leak through a config
/// error. Parsing can change the text (`007` becomes `7`, `TRUE` becomes
/// `true`): give such secrets as `env:NAME` or `file:/path`.
#[derive(Clone, PartialEq, Eq)]
pub struct RawSecret(String);

impl RawSecret {
    /// The configured text (a literal, `env:NAME` or `file:/path`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawSecret(***)")
    }
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawSecretVisitor)
    }
}

struct RawSecretVisitor;

/// The one error a secret key gives for a value of the wrong shape.
fn secret_shape<E: serde::de::Error>(what: &str) -> E {
    E::custom(format!(
        "a secret must be a string, number or boolean, not {what} (the value is not shown)"
    ))
}

impl<'de> serde::de::Visitor<'de> for RawSecretVisitor {
    type Value = RawSecret;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a secret string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSecret, E> {
        Ok(RawSecret(v.to_string()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RawSecret, E> {
        Ok(RawSecret(v))
    }
    fn visit_char<E: serde::de::Error>(self, v: char) -> Result<RawSecret, E> {
        Ok(RawSecret(v.to_string()))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawSecret, E> {
        Ok(RawSecret(v.to_string()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSecret, E> {
        Ok(RawSecret(v.to_string()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSecret, E> {
        Ok(RawSecret(v.to_string()))
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<RawSecret, E> {
        Ok(RawSecret(v.to_string()))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<RawSecret, E> {
        Ok(RawSecret(v.to_string()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawSecret, E> {
        Ok(RawSecret(v.to_string()))
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawSecret, E> {
        String::from_utf8(v.to_vec())
            .map(RawSecret)
            .map_err(|_| secret_shape("bytes that are not UTF-8"))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<RawSecret, E> {
        Err(secret_shape("nothing"))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<RawSecret, E> {
        Err(secret_shape("nothing"))
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawSecret, D::Error> {
        d.deserialize_any(RawSecretVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
        Err(secret_shape("a list"))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
        Err(secret_shape("a table"))
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
        Err(secret_shape("an enum"))
    }
}

#[cfg(test)]
mod tests;
