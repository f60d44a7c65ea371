//! Typed settings: a TOML file, then environment variables and flags on top, validated.
//!
//! With no `--config`, the embedded `deploy/config/default.toml` is used (demo reward
//! models from `tests/fixtures`, relative paths resolved as if the file were read from
//! `deploy/config/` under the working directory). Relative paths in a config file resolve
//! against the file's directory, except `server.data_dir`, which is relative to the
//! working directory. Every field has a documented default; see
//! `deploy/config/default.toml` for an annotated example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::models::{EncoderSpec, RewardModelSpec};
use crate::routers::{RouterError, RouterSettings, RouterSettingsPatch, RoutersOptions};
use crate::service::Limits;
use crate::store::StoreOptions;
use crate::telemetry::LogFormat;
use crate::tls::TlsConfig;

/// The config used when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../deploy/config/default.toml");
/// Directory (relative to the working directory) the embedded default's paths resolve from.
pub const DEFAULT_CONFIG_DIR: &str = "deploy/config";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub routers: RoutersConfig,
    pub limits: Limits,
    pub store: StoreConfig,
    pub reward_models: Vec<RewardModelSpec>,
    /// Encoders routers can take their contexts from (`[[encoders]]`).
    pub encoders: Vec<EncoderSpec>,
}

/// Durable state under `<data_dir>/state` (see `crates/store/src/lib.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Log and snapshot state (default true); false keeps state in memory only.
    pub durable: bool,
    /// fsync each group of records before acknowledging (default true).
    pub fsync: bool,
    /// Records between snapshots (default 10000; 0: only at shutdown).
    pub snapshot_every_records: u64,
    /// Size at which a new log segment starts (default 64 MiB).
    pub segment_bytes: u64,
    /// `local` (default: the log in `<data_dir>/state`) or `postgres` (`url`).
    pub backend: StoreBackend,
    /// The PostgreSQL database of `backend = "postgres"`
    /// (`postgres://user:password@host:5432/dbname`; env `LASER_STORE_URL` overrides it).
    pub url: Option<String>,
    /// PostgreSQL: how long a router's lease lasts unrenewed before another replica may
    /// take over (default 10 s; renewed every third of it).
    pub lease_seconds: f64,
}

/// Where durable state lives.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    #[default]
    Local,
    Postgres,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durable: true,
            fsync: true,
            snapshot_every_records: 10_000,
            segment_bytes: 64 << 20,
            backend: StoreBackend::Local,
            url: None,
            lease_seconds: 10.0,
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL URL when the backend is PostgreSQL (`LASER_STORE_URL` first).
    pub fn postgres_url(&self) -> Option<String> {
        match self.backend {
            StoreBackend::Local => None,
            StoreBackend::Postgres => std::env::var("LASER_STORE_URL")
                .ok()
                .filter(|url| !url.is_empty())
                .or_else(|| self.url.clone()),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC address (default 127.0.0.1:50051).
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address (default 127.0.0.1:9464).
    pub metrics_listen: SocketAddr,
    /// HTTP/JSON address (Score, Feedback, OpenRLHF's get_reward); off unless set. Same
    /// TLS, limits, load shedding and deadlines as gRPC.
    pub http_listen: Option<SocketAddr>,
    /// Directory for local state (default `data`, relative to the working directory).
    pub data_dir: PathBuf,
    /// `text` (default) or `json` logs on stderr.
    pub log_format: LogFormat,
    /// On SIGTERM/SIGINT, how long in-flight requests may take before the remaining
    /// connections are closed (default 10 s).
    pub shutdown_grace_seconds: f64,
    /// Bearer token for Admin RPCs (better set by `LASER_ADMIN_TOKEN`). Without one, Admin
    /// is served only when `listen` is a loopback address.
    pub admin_token: Option<String>,
    /// TLS for the gRPC port (both services); off when unset.
    pub tls: Option<TlsConfig>,
    /// Replicas on PostgreSQL: the gRPC address other replicas forward to the requests for
    /// the routers this one owns (env `LASER_ADVERTISE_ADDRESS` wins; default: `listen`,
    /// with the host name for an unspecified IP; set it when `listen` has port 0). It names
    /// the replica: a process restarted at the same address takes its routers back at once.
    pub advertise: Option<String>,
}

impl ServerConfig {
    /// The address registered with the leases of the routers this server owns.
    pub fn advertised_address(&self) -> String {
        if let Ok(address) = std::env::var("LASER_ADVERTISE_ADDRESS")
            && !address.is_empty()
        {
            return address;
        }
        if let Some(address) = &self.advertise {
            return address.clone();
        }
        if self.listen.ip().is_unspecified() {
            return format!("{}:{}", crate::store::host::host_name(), self.listen.port());
        }
        self.listen.to_string()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            http_listen: None,
            data_dir: PathBuf::from("data"),
            log_format: LogFormat::Text,
            shutdown_grace_seconds: 10.0,
            admin_token: None,
            tls: None,
            advertise: None,
        }
    }
}

/// The `[routers]` table: router settings every new router starts from (a
/// [`RouterSettingsPatch`]: its keys, each optional, LASeR's values by default: LinUCB,
/// α = 0.1, λ = 1, 20th/80th percentile normalization over the whole reward history, raw
/// contexts, d = 4096, per-query selection as the paper's text — the reference code selects
/// per batch), plus `create_on_first_use` and `default_encoder`.
#[derive(Clone, Debug)]
pub struct RoutersConfig {
    /// Create a router with these defaults the first time Score names it (default true).
    pub create_on_first_use: bool,
    /// The encoder of routers that a Score without contexts creates on first use (their
    /// `context_dim` is its dimension). Unset: such a Score needs an existing router.
    pub default_encoder: Option<String>,
    /// Defaults for every field a CreateRouter request leaves unset.
    pub defaults: RouterSettingsPatch,
}

impl Default for RoutersConfig {
    fn default() -> Self {
        Self {
            create_on_first_use: true,
            default_encoder: None,
            defaults: RouterSettingsPatch::default(),
        }
    }
}

impl RoutersConfig {
    /// The settings of a router created with nothing set.
    pub fn settings(&self) -> RouterSettings {
        self.defaults.resolve()
    }
}

impl<'de> Deserialize<'de> for RoutersConfig {
    /// One table: `create_on_first_use` and the patch's keys side by side (serde's
    /// `flatten` cannot refuse unknown keys, so the table is split by hand).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let create_on_first_use = match table.remove("create_on_first_use") {
            None => true,
            Some(toml::Value::Boolean(value)) => value,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "create_on_first_use: expected a boolean, found {}",
                    other.type_str()
                )));
            }
        };
        let default_encoder = match table.remove("default_encoder") {
            None => None,
            Some(toml::Value::String(name)) => Some(name),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "default_encoder: expected an encoder name, found {}",
                    other.type_str()
                )));
            }
        };
        let defaults = RouterSettingsPatch::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(e.to_string()))?;
        Ok(Self {
            create_on_first_use,
            default_encoder,
            defaults,
        })
    }
}

impl Config {
    /// Read `path` (or the embedded default), resolve relative paths, validate.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (text, shown, base) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                (text, path.display().to_string(), base)
            }
            None => (
                DEFAULT_CONFIG.to_string(),
                "<embedded deploy/config/default.toml>".to_string(),
                PathBuf::from(DEFAULT_CONFIG_DIR),
            ),
        };
        Self::parse(&text, &shown, &base)
    }

    /// Parse TOML text; `base` is the directory relative paths resolve against.
    pub fn parse(text: &str, shown: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown.to_string(),
            reason: e.to_string(),
        })?;
        config.reward_models = config
            .reward_models
            .into_iter()
            .map(|spec| spec.resolve_paths(base))
            .collect();
        config.encoders = config
            .encoders
            .into_iter()
            .map(|spec| spec.resolve_paths(base))
            .collect();
        if let Some(tls) = &mut config.server.tls {
            for path in [
                Some(&mut tls.cert_path),
                Some(&mut tls.key_path),
                tls.client_ca_path.as_mut(),
                tls.peer_ca_path.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// How the store opens under this config: no recovery truncation and no advertised
    /// address (what the `state` commands use; the server adds its own).
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            durable: self.store.durable,
            fsync: self.store.fsync,
            segment_bytes: self.store.segment_bytes,
            recover_truncate: false,
            postgres_url: self.store.postgres_url(),
            postgres_stream: String::new(),
            lease: Duration::from_secs_f64(self.store.lease_seconds),
            advertise: None,
        }
    }

    /// How the routers are built from this config.
    pub fn routers_options(&self) -> RoutersOptions {
        RoutersOptions {
            defaults: self.routers.defaults.clone(),
            create_on_first_use: self.routers.create_on_first_use,
            max_context_dim: self.limits.max_context_dim,
            max_routers: self.limits.max_routers,
            snapshot_every_records: self.store.snapshot_every_records,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: field.to_string(),
            reason,
        };
        self.routers
            .settings()
            .validate(self.limits.max_context_dim)
            .map_err(|e| match e {
                RouterError::InvalidSettings { field, reason } => {
                    invalid(&format!("routers.{field}"), reason)
                }
                other => invalid("routers", other.to_string()),
            })?;
        if self.store.backend == StoreBackend::Postgres
            && self.store.durable
            && self.store.postgres_url().is_none()
        {
            return Err(invalid(
                "store.url",
                "backend \"postgres\" needs url (or LASER_STORE_URL)".into(),
            ));
        }
        if !(0.2..=3600.0).contains(&self.store.lease_seconds) {
            return Err(invalid(
                "store.lease_seconds",
                format!("{} is outside 0.2..=3600", self.store.lease_seconds),
            ));
        }
        let limits = [
            ("limits.max_message_bytes", self.limits.max_message_bytes),
            (
                "limits.max_queries_per_score",
                self.limits.max_queries_per_score,
            ),
            (
                "limits.max_responses_per_query",
                self.limits.max_responses_per_query,
            ),
            ("limits.max_text_bytes", self.limits.max_text_bytes),
            ("limits.kept_text_bytes", self.limits.kept_text_bytes),
            (
                "limits.max_decision_ids_per_feedback",
                self.limits.max_decision_ids_per_feedback,
            ),
            ("limits.max_context_dim", self.limits.max_context_dim),
            ("limits.max_routers", self.limits.max_routers),
            ("limits.max_reward_models", self.limits.max_reward_models),
            (
                "limits.max_concurrent_requests",
                self.limits.max_concurrent_requests,
            ),
        ];
        for (field, value) in limits {
            if value == 0 {
                return Err(invalid(field, "must be > 0".into()));
            }
        }
        let mut encoders = std::collections::BTreeSet::new();
        for spec in &self.encoders {
            spec.validate()
                .map_err(|e| invalid("encoders", e.to_string()))?;
            if !encoders.insert(spec.name.as_str()) {
                return Err(invalid(
                    "encoders",
                    format!("name {:?} appears twice", spec.name),
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for spec in &self.reward_models {
            spec.validate()
                .map_err(|e| invalid("reward_models", e.to_string()))?;
            if !names.insert(spec.name.as_str()) {
                return Err(invalid(
                    "reward_models",
                    format!("name {:?} appears twice", spec.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_names_demo_models() {
        let config = Config::load(None).unwrap();
        assert!(!config.reward_models.is_empty());
        for spec in &config.reward_models {
            assert!(
                spec.model.starts_with(DEFAULT_CONFIG_DIR),
                "{:?}",
                spec.model
            );
        }
        assert_eq!(config.server.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = Config::parse("", "test.toml", Path::new("/etc/laser")).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.server.metrics_listen.to_string(), "127.0.0.1:9464");
        let routers = config.routers.settings();
        assert_eq!(routers.context_dim, 4096);
        assert_eq!(routers.alpha, 1.0);
        assert!(routers.l2_normalize_context);
        assert_eq!(routers.l2_lambda, 1.0);
        assert!(config.routers.create_on_first_use);
        assert_eq!(config.server.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn the_routers_table_is_a_settings_patch_beside_create_on_first_use() {
        use crate::routers::{Policy, PolicyKind, SelectionMode};
        let text = "[routers]\ncreate_on_first_use = false\npolicy = \"exp3\"\nexp3_gamma = 0.3\nfixed_reward_model = \"b\"\ndefault_mode = \"per_batch\"\n";
        let config = Config::parse(text, "t.toml", Path::new(".")).unwrap();
        assert!(!config.routers.create_on_first_use);
        let settings = config.routers.settings();
        assert_eq!(settings.policy, Policy::Exp3 { gamma: 0.3 });
        assert_eq!(settings.default_mode, SelectionMode::PerBatch);
        // A request that names `fixed` without its RM gets the config's.
        let request = RouterSettingsPatch {
            policy: Some(PolicyKind::Fixed),
            ..RouterSettingsPatch::default()
        };
        assert_eq!(
            request.apply(&config.routers.defaults).policy,
            Policy::Fixed {
                reward_model: "b".into()
            }
        );
        let wrong_type = Config::parse(
            "[routers]\ncreate_on_first_use = 1\n",
            "t.toml",
            Path::new("."),
        );
        assert!(
            wrong_type
                .unwrap_err()
                .to_string()
                .contains("create_on_first_use")
        );
    }

    #[test]
    fn unknown_and_invalid_fields_are_refused() {
        let unknown = Config::parse("[routers]\nalpah = 1.0\n", "t.toml", Path::new("."));
        assert!(unknown.unwrap_err().to_string().contains("alpah"));
        let bad = Config::parse("[routers]\nl2_lambda = 0.0\n", "t.toml", Path::new("."));
        assert!(bad.unwrap_err().to_string().contains("routers.l2_lambda"));
        let zero = Config::parse("[limits]\nmax_text_bytes = 0\n", "t.toml", Path::new("."));
        assert!(
            zero.unwrap_err()
                .to_string()
                .contains("limits.max_text_bytes")
        );
    }
}
