//! Configuration: a TOML file layered under `RUNBRIDGE__SECTION__KEY`
//! environment variables, checked into typed [`Settings`].
//!
//! Loading never stops at the first problem: every section, provider and
//! route is read on its own and checked, so `check-config` can list every
//! problem with the key path where it is.

use crate::run::RunStatus;
use crate::secret::Secret;
use crate::signing::WebhookKey;
use bytesize::ByteSize;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    pub providers: BTreeMap<String, ProviderSettings>,
    pub routes: BTreeMap<String, RouteSettings>,
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// `None` disables the admin API (it answers 403).
    pub admin_token: Option<Secret>,
    pub shutdown_timeout: Duration,
}

/// `[storage]`
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub path: PathBuf,
    pub cache_capacity: u64,
}

/// `[scheduler]`
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    pub poll_interval: Duration,
    pub poll_slowdown_after: Duration,
    pub max_poll_interval: Duration,
    pub run_timeout: Duration,
    pub concurrency: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

/// `[delivery]`
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub schedule: Vec<Duration>,
    pub jitter: f64,
    pub timeout: Duration,
    pub max_retry_after: Duration,
}

/// `[providers.NAME]`
#[derive(Debug, Clone)]
pub enum ProviderSettings {
    Slate(SlateSettings),
    Simulated(SimulatedSettings),
}

/// A Slate account.
#[derive(Debug, Clone)]
pub struct SlateSettings {
    pub base_url: String,
    pub token: Secret,
    pub workspace_id: Option<String>,
    pub timeout: Duration,
}

/// A provider that needs no account: runs move through statuses over time.
#[derive(Debug, Clone)]
pub struct SimulatedSettings {
    pub duration: Duration,
    pub outcome: RunStatus,
    pub output: Option<Value>,
}

/// `[routes.NAME]`
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub provider: String,
    pub workflow_id: String,
    pub verify: VerifySettings,
    pub inputs: Vec<InputSettings>,
    pub dedupe_header: Option<String>,
    pub dedupe_ttl: Duration,
    pub run_timeout: Option<Duration>,
    pub callbacks: Vec<CallbackSettings>,
}

/// How a route authenticates its sender.
#[derive(Debug, Clone)]
pub enum VerifySettings {
    None,
    Token {
        token: Secret,
    },
    Github {
        secret: Secret,
    },
    StandardWebhooks {
        key: WebhookKey,
        tolerance: Duration,
    },
}

/// Where one workflow input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// A JSON pointer into the payload ("" is the whole payload).
    Pointer(String),
    /// A request header.
    Header(String),
    /// A constant.
    Value(Value),
}

/// One workflow input of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSettings {
    pub name: String,
    pub source: InputSource,
    pub required: bool,
    pub default: Option<Value>,
}

/// One callback target of a route.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub url: String,
    pub key: WebhookKey,
}

impl Settings {
    /// Loads a TOML file with environment overrides and checks it.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
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
                    message: e.to_string(),
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
                "providers",
                "routes",
            ]
            .contains(&key.as_str())
            {
                p.add(key, "unknown section; expected server, storage, scheduler, delivery, providers or routes");
            }
        }
        let section = |name: &str| root.get(name).cloned();
        let server: RawServer = p.parse("server", section("server")).unwrap_or_default();
        let storage: RawStorage = p.parse("storage", section("storage")).unwrap_or_default();
        let scheduler: RawScheduler = p
            .parse("scheduler", section("scheduler"))
            .unwrap_or_default();
        let delivery: RawDelivery = p.parse("delivery", section("delivery")).unwrap_or_default();
        let raw_providers: BTreeMap<String, config::Value> = p
            .parse("providers", section("providers"))
            .unwrap_or_default();
        let raw_routes: BTreeMap<String, config::Value> =
            p.parse("routes", section("routes")).unwrap_or_default();

        let server = check_server(server, &mut p);
        let storage = StorageSettings {
            path: storage.path,
            cache_capacity: storage.cache_capacity.as_u64(),
        };
        let scheduler = check_scheduler(scheduler, &mut p);
        let delivery = check_delivery(delivery, &mut p);

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
                if let Some(settings) = check_route(&key, raw, &providers, &mut p) {
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
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Deserializes one value, recording an error with its full key path.
    fn parse<T: for<'de> Deserialize<'de>>(
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

/// Resolves `env:NAME`, `file:/path` or a literal.
pub fn resolve_secret(raw: &str, key: &str, p: &mut impl FnMut(String, String)) -> Option<Secret> {
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

fn secret(raw: &str, key: &str, p: &mut Problems) -> Option<Secret> {
    resolve_secret(raw, key, &mut |k, m| p.add(k, m))
}

fn check_url(key: &str, raw: &str, p: &mut Problems) -> Option<String> {
    match reqwest::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Some(raw.trim_end_matches('/').to_string())
        }
        Ok(_) => {
            p.add(
                key,
                format!("{raw:?} must be an http or https URL with a host"),
            );
            None
        }
        Err(e) => {
            p.add(key, format!("{raw:?} is not a URL: {e}"));
            None
        }
    }
}

fn positive(key: &str, d: Duration, p: &mut Problems) {
    if d.is_zero() {
        p.add(key, "must be greater than zero");
    }
}

// ---- raw (file) shapes -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    body_limit: ByteSize,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    admin_token: Option<String>,
    #[serde(with = "humantime_serde")]
    shutdown_timeout: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            body_limit: ByteSize::mib(1),
            request_timeout: Duration::from_secs(30),
            admin_token: None,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

fn check_server(raw: RawServer, p: &mut Problems) -> ServerSettings {
    let listen = raw.listen.parse().unwrap_or_else(|_| {
        p.add(
            "server.listen",
            format!("{:?} is not an address like 127.0.0.1:8080", raw.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    if raw.body_limit.as_u64() == 0 {
        p.add("server.body_limit", "must be greater than zero");
    }
    positive("server.request_timeout", raw.request_timeout, p);
    positive("server.shutdown_timeout", raw.shutdown_timeout, p);
    let admin_token = raw
        .admin_token
        .as_deref()
        .and_then(|t| secret(t, "server.admin_token", p));
    ServerSettings {
        listen,
        body_limit: usize::try_from(raw.body_limit.as_u64()).unwrap_or(usize::MAX),
        request_timeout: raw.request_timeout,
        admin_token,
        shutdown_timeout: raw.shutdown_timeout,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    path: PathBuf,
    cache_capacity: ByteSize,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            path: PathBuf::from("./data/runbridge"),
            cache_capacity: ByteSize::mib(64),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawScheduler {
    #[serde(with = "humantime_serde")]
    poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    poll_slowdown_after: Duration,
    #[serde(with = "humantime_serde")]
    max_poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    run_timeout: Duration,
    concurrency: usize,
    #[serde(with = "humantime_serde")]
    retry_base: Duration,
    #[serde(with = "humantime_serde")]
    retry_max: Duration,
}

impl Default for RawScheduler {
    fn default() -> Self {
        RawScheduler {
            poll_interval: Duration::from_secs(5),
            poll_slowdown_after: Duration::from_secs(120),
            max_poll_interval: Duration::from_secs(60),
            run_timeout: Duration::from_secs(24 * 3600),
            concurrency: 64,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

fn check_scheduler(raw: RawScheduler, p: &mut Problems) -> SchedulerSettings {
    positive("scheduler.poll_interval", raw.poll_interval, p);
    positive("scheduler.poll_slowdown_after", raw.poll_slowdown_after, p);
    positive("scheduler.run_timeout", raw.run_timeout, p);
    positive("scheduler.retry_base", raw.retry_base, p);
    if raw.max_poll_interval < raw.poll_interval {
        p.add(
            "scheduler.max_poll_interval",
            "must not be less than scheduler.poll_interval",
        );
    }
    if raw.retry_max < raw.retry_base {
        p.add(
            "scheduler.retry_max",
            "must not be less than scheduler.retry_base",
        );
    }
    if raw.concurrency == 0 {
        p.add("scheduler.concurrency", "must be at least 1");
    }
    SchedulerSettings {
        poll_interval: raw.poll_interval,
        poll_slowdown_after: raw.poll_slowdown_after,
        max_poll_interval: raw.max_poll_interval,
        run_timeout: raw.run_timeout,
        concurrency: raw.concurrency,
        retry_base: raw.retry_base,
        retry_max: raw.retry_max,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    schedule: Vec<String>,
    jitter: f64,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    #[serde(with = "humantime_serde")]
    max_retry_after: Duration,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            schedule: ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            jitter: 0.2,
            timeout: Duration::from_secs(15),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

fn check_delivery(raw: RawDelivery, p: &mut Problems) -> DeliverySettings {
    let mut schedule = Vec::new();
    for (i, s) in raw.schedule.iter().enumerate() {
        match humantime::parse_duration(s) {
            Ok(d) => schedule.push(d),
            Err(e) => p.add(
                format!("delivery.schedule[{i}]"),
                format!("{s:?} is not a duration: {e}"),
            ),
        }
    }
    if raw.schedule.is_empty() {
        p.add("delivery.schedule", "needs at least one attempt");
    }
    if !(0.0..=1.0).contains(&raw.jitter) {
        p.add("delivery.jitter", "must be between 0 and 1");
    }
    positive("delivery.timeout", raw.timeout, p);
    DeliverySettings {
        schedule,
        jitter: raw.jitter,
        timeout: raw.timeout,
        max_retry_after: raw.max_retry_after,
    }
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum RawProvider {
    Slate(RawSlate),
    Simulated(RawSimulated),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlate {
    base_url: String,
    token: String,
    workspace_id: Option<String>,
    #[serde(default = "default_provider_timeout", with = "humantime_serde")]
    timeout: Duration,
}

fn default_provider_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimulated {
    #[serde(default = "default_sim_duration", with = "humantime_serde")]
    duration: Duration,
    #[serde(default = "default_sim_outcome")]
    outcome: String,
    output: Option<Value>,
}

fn default_sim_duration() -> Duration {
    Duration::from_secs(3)
}

fn default_sim_outcome() -> String {
    "succeeded".into()
}

fn check_provider(key: &str, raw: RawProvider, p: &mut Problems) -> Option<ProviderSettings> {
    match raw {
        RawProvider::Slate(s) => {
            let base_url = check_url(&format!("{key}.base_url"), &s.base_url, p);
            let token = secret(&s.token, &format!("{key}.token"), p);
            positive(&format!("{key}.timeout"), s.timeout, p);
            Some(ProviderSettings::Slate(SlateSettings {
                base_url: base_url?,
                token: token?,
                workspace_id: s.workspace_id,
                timeout: s.timeout,
            }))
        }
        RawProvider::Simulated(s) => {
            let outcome = match s.outcome.as_str() {
                "succeeded" => RunStatus::Succeeded,
                "failed" => RunStatus::Failed,
                "canceled" => RunStatus::Canceled,
                other => {
                    p.add(
                        format!("{key}.outcome"),
                        format!("{other:?} is not one of succeeded, failed, canceled"),
                    );
                    return None;
                }
            };
            Some(ProviderSettings::Simulated(SimulatedSettings {
                duration: s.duration,
                outcome,
                output: s.output,
            }))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    provider: String,
    workflow_id: String,
    #[serde(default)]
    verify: Option<RawVerify>,
    #[serde(default)]
    inputs: Vec<RawInput>,
    dedupe_header: Option<String>,
    #[serde(default = "default_dedupe_ttl", with = "humantime_serde")]
    dedupe_ttl: Duration,
    #[serde(default, with = "humantime_serde")]
    run_timeout: Option<Duration>,
    #[serde(default)]
    callbacks: Vec<RawCallback>,
}

fn default_dedupe_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum RawVerify {
    None(RawNoVerify),
    Token(RawToken),
    Github(RawGithub),
    StandardWebhooks(RawStandard),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNoVerify {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStandard {
    secret: String,
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    tolerance: Duration,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    pointer: Option<String>,
    header: Option<String>,
    value: Option<Value>,
    #[serde(default = "yes")]
    required: bool,
    default: Option<Value>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallback {
    url: String,
    secret: String,
}

fn check_route(
    key: &str,
    raw: RawRoute,
    providers: &BTreeMap<String, ProviderSettings>,
    p: &mut Problems,
) -> Option<RouteSettings> {
    let before = p.0.len();
    if !providers.contains_key(&raw.provider) {
        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
        p.add(
            format!("{key}.provider"),
            format!(
                "unknown provider {:?} (configured: {})",
                raw.provider,
                known.join(", ")
            ),
        );
    }
    if raw.workflow_id.trim().is_empty() {
        p.add(format!("{key}.workflow_id"), "must not be empty");
    }
    let verify = match raw.verify {
        None => {
            p.add(
                format!("{key}.verify"),
                "missing; say verify = { kind = \"none\" } to accept unauthenticated requests",
            );
            None
        }
        Some(RawVerify::None(_)) => Some(VerifySettings::None),
        Some(RawVerify::Token(t)) => secret(&t.token, &format!("{key}.verify.token"), p)
            .map(|token| VerifySettings::Token { token }),
        Some(RawVerify::Github(g)) => secret(&g.secret, &format!("{key}.verify.secret"), p)
            .map(|secret| VerifySettings::Github { secret }),
        Some(RawVerify::StandardWebhooks(s)) => {
            let k = format!("{key}.verify.secret");
            secret(&s.secret, &k, p).and_then(|sec| match WebhookKey::parse(sec.expose()) {
                Ok(key) => Some(VerifySettings::StandardWebhooks {
                    key,
                    tolerance: s.tolerance,
                }),
                Err(e) => {
                    p.add(k, e.to_string());
                    None
                }
            })
        }
    };
    let mut inputs = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, inp) in raw.inputs.into_iter().enumerate() {
        let ik = format!("{key}.inputs[{i}]");
        if inp.name.is_empty() {
            p.add(format!("{ik}.name"), "must not be empty");
        } else if !names.insert(inp.name.clone()) {
            p.add(
                format!("{ik}.name"),
                format!("input {:?} is defined twice", inp.name),
            );
        }
        let source = match (inp.pointer, inp.header, inp.value) {
            (Some(ptr), None, None) => {
                if !ptr.is_empty() && !ptr.starts_with('/') {
                    p.add(
                        format!("{ik}.pointer"),
                        format!("{ptr:?} is not a JSON pointer (use \"\" or start with '/')"),
                    );
                }
                InputSource::Pointer(ptr)
            }
            (None, Some(h), None) => {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    p.add(
                        format!("{ik}.header"),
                        format!("{h:?} is not a header name"),
                    );
                }
                InputSource::Header(h.to_ascii_lowercase())
            }
            (None, None, Some(v)) => InputSource::Value(v),
            _ => {
                p.add(ik.clone(), "needs exactly one of pointer, header or value");
                continue;
            }
        };
        inputs.push(InputSettings {
            name: inp.name,
            source,
            required: inp.required,
            default: inp.default,
        });
    }
    if let Some(h) = &raw.dedupe_header {
        if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.add(
                format!("{key}.dedupe_header"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    if let Some(t) = raw.run_timeout {
        positive(&format!("{key}.run_timeout"), t, p);
    }
    let mut callbacks = Vec::new();
    for (i, cb) in raw.callbacks.into_iter().enumerate() {
        let ck = format!("{key}.callbacks[{i}]");
        let url = check_url(&format!("{ck}.url"), &cb.url, p);
        let sk = format!("{ck}.secret");
        let key = secret(&cb.secret, &sk, p).and_then(|s| match WebhookKey::parse(s.expose()) {
            Ok(k) => Some(k),
            Err(e) => {
                p.add(sk, e.to_string());
                None
            }
        });
        if let (Some(url), Some(key)) = (url, key) {
            callbacks.push(CallbackSettings { url, key });
        }
    }
    if p.0.len() > before {
        return None;
    }
    Some(RouteSettings {
        provider: raw.provider,
        workflow_id: raw.workflow_id,
        verify: verify?,
        inputs,
        dedupe_header: raw.dedupe_header.map(|h| h.to_ascii_lowercase()),
        dedupe_ttl: raw.dedupe_ttl,
        run_timeout: raw.run_timeout,
        callbacks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str) -> Result<Settings, ConfigError> {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap();
        Settings::from_config(cfg)
    }

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        body_limit = "64KiB"
        admin_token = "t"
        [providers.sim]
        kind = "simulated"
        duration = "1s"
        [routes.demo]
        provider = "sim"
        workflow_id = "wf"
        verify = { kind = "github", secret = "s" }
        [[routes.demo.inputs]]
        name = "brandDomain"
        pointer = "/a/b"
        [[routes.demo.inputs]]
        name = "c"
        value = { camelCase = 1 }
        [[routes.demo.callbacks]]
        url = "http://127.0.0.1:1/cb"
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    "#;

    #[test]
    fn good_config_loads() {
        let s = load_str(GOOD).unwrap();
        assert_eq!(s.server.body_limit, 64 * 1024);
        let r = &s.routes["demo"];
        assert_eq!(
            r.inputs[0].name, "brandDomain",
            "input names keep their case"
        );
        assert_eq!(
            r.inputs[1].source,
            InputSource::Value(serde_json::json!({"camelCase": 1}))
        );
        assert!(matches!(r.verify, VerifySettings::Github { .. }));
        assert_eq!(s.scheduler.poll_interval, Duration::from_secs(5));
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("\"t\""),
            "secrets never in debug output: {dbg}"
        );
    }

    #[test]
    fn every_problem_is_named_by_key() {
        let bad = r#"
            bogus = 1
            [server]
            listen = "nope"
            colour = "red"
            [scheduler]
            poll_interval = "5 parsecs"
            [providers.sim]
            kind = "simulated"
            outcome = "maybe"
            [routes.a]
            provider = "missing"
            workflow_id = "wf"
            verify = { kind = "token", token = "env:RUNBRIDGE_TEST_SURELY_UNSET" }
            [[routes.a.callbacks]]
            url = "ftp://x"
            secret = "whsec_short"
        "#;
        let err = load_str(bad).unwrap_err();
        let text = err.to_string();
        for key in [
            "bogus",
            "server.colour",
            "scheduler.poll_interval",
            "providers.sim.outcome",
            "routes.a.provider",
            "routes.a.verify.token",
            "routes.a.callbacks[0].url",
            "routes.a.callbacks[0].secret",
        ] {
            assert!(
                err.0.iter().any(|p| p.key == key),
                "expected a problem at {key}; got:\n{text}"
            );
        }
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/runbridge.toml");
        Settings::load(&path).unwrap();
    }
}
