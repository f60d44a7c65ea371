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

use crate::bandit::Normalization;
use crate::models::RewardModelSpec;
use crate::routers::{Policy, RouterError, RouterSettings, SelectionMode};

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
    pub routers: RouterDefaults,
    pub limits: Limits,
    pub store: StoreConfig,
    pub reward_models: Vec<RewardModelSpec>,
}

/// Durable state under `<data_dir>/state` (see `src/store/mod.rs`).
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durable: true,
            fsync: true,
            snapshot_every_records: 10_000,
            segment_bytes: 64 << 20,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC address (default 127.0.0.1:50051).
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address (default 127.0.0.1:9464).
    pub metrics_listen: SocketAddr,
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
}

/// TLS (rustls) for the gRPC port. Paths are PEM files, relative to the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_path: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            data_dir: PathBuf::from("data"),
            log_format: LogFormat::Text,
            shutdown_grace_seconds: 10.0,
            admin_token: None,
            tls: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NormalizationSetting {
    None,
    Quantile,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicySetting {
    Linucb,
    Random,
    RoundRobin,
    Fixed,
    Ensemble,
    Exp3,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModeSetting {
    PerQuery,
    PerBatch,
}

/// Settings a router gets unless CreateRouter says otherwise; defaults follow LASeR's
/// reference code (LinUCB, α = 0.1, λ = 1, 20th/80th percentile normalization over the
/// whole reward history, per-query selection, raw contexts).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterDefaults {
    /// Context dimension (LASeR: the policy LLM's hidden size; default 4096).
    pub context_dim: usize,
    /// `linucb` (default), `random`, `round_robin`, `fixed`, `ensemble` or `exp3`.
    pub policy: PolicySetting,
    /// The RM of the `fixed` policy.
    pub fixed_reward_model: Option<String>,
    /// Exploration rate of the `exp3` policy (default 0.1).
    pub exp3_gamma: f64,
    pub alpha: f64,
    pub l2_lambda: f64,
    /// `quantile` (default) or `none`.
    pub normalization: NormalizationSetting,
    pub quantile_low: f64,
    pub quantile_high: f64,
    /// Last raw rewards kept as the normalization history (0: all, as LASeR).
    pub reward_window: usize,
    /// Feedback.reward is already in [0, 1] and used as is (default false).
    pub reward_is_normalized: bool,
    /// `per_query` (default) or `per_batch`.
    pub default_mode: ModeSetting,
    /// Seed of each router's RNG (tie-breaking, sampling, projection).
    pub seed: u64,
    /// RMs added to the server later become arms of existing routers (default true).
    pub join_new_reward_models: bool,
    /// Divide contexts by their L2 norm (default false).
    pub l2_normalize_context: bool,
    /// Random projection dimension (0, the default: off).
    pub projection_dim: usize,
    /// Create a router with these defaults the first time Score names it.
    pub create_on_first_use: bool,
    /// Decisions kept awaiting feedback per router (oldest evicted beyond; default 100000).
    pub max_pending_decisions: usize,
    /// Seconds a decision waits for feedback before it is evicted (default 3600).
    pub pending_ttl_seconds: u64,
}

impl Default for RouterDefaults {
    fn default() -> Self {
        Self {
            context_dim: 4096,
            policy: PolicySetting::Linucb,
            fixed_reward_model: None,
            exp3_gamma: 0.1,
            alpha: 0.1,
            l2_lambda: 1.0,
            normalization: NormalizationSetting::Quantile,
            quantile_low: 20.0,
            quantile_high: 80.0,
            reward_window: 0,
            reward_is_normalized: false,
            default_mode: ModeSetting::PerQuery,
            seed: 0,
            join_new_reward_models: true,
            l2_normalize_context: false,
            projection_dim: 0,
            create_on_first_use: true,
            max_pending_decisions: 100_000,
            pending_ttl_seconds: 3600,
        }
    }
}

impl RouterDefaults {
    /// The policy named by `setting`, with this config's parameters.
    pub fn policy(
        &self,
        setting: PolicySetting,
        fixed_reward_model: Option<String>,
        exp3_gamma: Option<f64>,
    ) -> Policy {
        match setting {
            PolicySetting::Linucb => Policy::LinUcb,
            PolicySetting::Random => Policy::Random,
            PolicySetting::RoundRobin => Policy::RoundRobin,
            PolicySetting::Fixed => Policy::Fixed {
                reward_model: fixed_reward_model
                    .or_else(|| self.fixed_reward_model.clone())
                    .unwrap_or_default(),
            },
            PolicySetting::Ensemble => Policy::Ensemble,
            PolicySetting::Exp3 => Policy::Exp3 {
                gamma: exp3_gamma.unwrap_or(self.exp3_gamma),
            },
        }
    }

    /// The normalization named by `setting`, with the given or default percentiles.
    pub fn normalization(
        &self,
        setting: NormalizationSetting,
        low: Option<f64>,
        high: Option<f64>,
        window: Option<usize>,
    ) -> Normalization {
        match setting {
            NormalizationSetting::None => Normalization::None,
            NormalizationSetting::Quantile => Normalization::Quantile {
                low: low.unwrap_or(self.quantile_low),
                high: high.unwrap_or(self.quantile_high),
                window: match window.unwrap_or(self.reward_window) {
                    0 => None,
                    window => Some(window),
                },
            },
        }
    }

    pub fn settings(&self) -> RouterSettings {
        RouterSettings {
            context_dim: self.context_dim,
            policy: self.policy(self.policy, None, None),
            alpha: self.alpha,
            l2_lambda: self.l2_lambda,
            normalization: self.normalization(self.normalization, None, None, None),
            reward_is_normalized: self.reward_is_normalized,
            default_mode: match self.default_mode {
                ModeSetting::PerQuery => SelectionMode::PerQuery,
                ModeSetting::PerBatch => SelectionMode::PerBatch,
            },
            seed: self.seed,
            reward_models: None,
            join_new_reward_models: self.join_new_reward_models,
            l2_normalize_context: self.l2_normalize_context,
            projection_dim: self.projection_dim,
            max_pending_decisions: self.max_pending_decisions,
            pending_ttl: Duration::from_secs(self.pending_ttl_seconds),
        }
    }
}

/// Request limits; exceeding one is answered with the limit's name and value.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest gRPC message accepted, in bytes (default 16 MiB).
    pub max_message_bytes: usize,
    /// Queries per Score request (default 1024).
    pub max_queries_per_score: usize,
    /// Responses per query (default 256).
    pub max_responses_per_query: usize,
    /// Bytes per prompt and per response (default 64 KiB).
    pub max_text_bytes: usize,
    /// Decision ids per Feedback request (default 4096).
    pub max_decision_ids_per_feedback: usize,
    /// Largest router context dimension (default 16384).
    pub max_context_dim: usize,
    /// Routers per server (default 1000).
    pub max_routers: usize,
    /// Reward models per server (default 64).
    pub max_reward_models: usize,
    /// Requests handled at once per service (RewardRouter, Admin); beyond it requests are
    /// refused at once with RESOURCE_EXHAUSTED (default 256).
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
            max_queries_per_score: 1024,
            max_responses_per_query: 256,
            max_text_bytes: 64 * 1024,
            max_decision_ids_per_feedback: 4096,
            max_context_dim: 16384,
            max_routers: 1000,
            max_reward_models: 64,
            max_concurrent_requests: 256,
        }
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
        if let Some(tls) = &mut config.server.tls {
            for path in [
                Some(&mut tls.cert_path),
                Some(&mut tls.key_path),
                tls.client_ca_path.as_mut(),
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
        assert_eq!(config.routers.context_dim, 4096);
        assert_eq!(config.routers.alpha, 0.1);
        assert_eq!(config.routers.l2_lambda, 1.0);
        assert_eq!(config.server.data_dir, PathBuf::from("data"));
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
