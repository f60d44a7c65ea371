//! The `backend.kserve_v2` table of a reward model's spec: where the engine is (endpoints,
//! model name and version), what is sent (texts or tokens), and the call's limits, TLS,
//! auth header and health probing. Plain data with its own checks; the RM's spec
//! (`models::spec`) holds it in `Backend::KserveV2` and checks what it needs of the RM's
//! tokenizer and input format.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::models::remote::defaults;

/// How a remote model takes its input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteInput {
    /// One BYTES tensor `[n]` of texts built with the RM's template or chat template (or the
    /// response alone, `input_format = "text"`): for engines that tokenize.
    #[default]
    Texts,
    /// `input_ids` (and `attention_mask`, `token_type_ids`, `position_ids` where the model's
    /// metadata lists them) `[n, longest]`, tokenized here with the RM's tokenizer: for
    /// engines serving a plain ONNX or TensorRT graph.
    Tokens,
}

impl RemoteInput {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteInput::Texts => "texts",
            RemoteInput::Tokens => "tokens",
        }
    }
}

/// A reward model served by an inference engine (Triton, KServe, MLServer, OpenVINO Model
/// Server) over the Open Inference Protocol's gRPC service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KserveV2Spec {
    /// gRPC endpoints (`http://host:port`, or `https://` with TLS), used round-robin among
    /// those that are ready.
    pub endpoints: Vec<String>,
    /// The engine's model name...
    pub model_name: String,
    /// ...and version (empty: the engine's choice).
    #[serde(default)]
    pub model_version: String,
    /// `texts` (default) or `tokens`.
    #[serde(default)]
    pub send: RemoteInput,
    /// The BYTES input carrying texts (`send = "texts"`); by default the model's only BYTES
    /// input.
    #[serde(default)]
    pub text_input: Option<String>,
    /// Limit on each ModelInfer (and each probe); a client deadline that comes sooner wins.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// ModelInfer requests in flight at once; jobs queued meanwhile are coalesced.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: usize,
    /// PEM file of the CA that signed the engine's certificate (`https://`; default: the
    /// public web roots).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Name checked against the engine's certificate (default: the endpoint's host).
    #[serde(default)]
    pub tls_domain: Option<String>,
    /// Metadata header sent with every call (`authorization`, `x-api-key`, ...)...
    #[serde(default)]
    pub auth_header: Option<String>,
    /// ...with the value of this environment variable of the server process (the value is
    /// never written to the state log).
    #[serde(default)]
    pub auth_value_env: Option<String>,
    /// How often `ModelReady` is asked of each endpoint.
    #[serde(default = "defaults::health_interval_ms")]
    pub health_interval_ms: u64,
    /// Consecutive failed inferences after which the RM is unavailable until a probe finds
    /// it ready again (an unreachable endpoint is taken out at once).
    #[serde(default = "defaults::failures_before_unavailable")]
    pub failures_before_unavailable: u32,
}

impl KserveV2Spec {
    /// A spec with every optional field at its default.
    pub fn new(endpoints: Vec<String>, model_name: String) -> Self {
        Self {
            endpoints,
            model_name,
            model_version: String::new(),
            send: RemoteInput::Texts,
            text_input: None,
            timeout_ms: defaults::timeout_ms(),
            max_concurrency: defaults::max_concurrency(),
            tls_ca: None,
            tls_domain: None,
            auth_header: None,
            auth_value_env: None,
            health_interval_ms: defaults::health_interval_ms(),
            failures_before_unavailable: defaults::failures_before_unavailable(),
        }
    }

    /// Check this table's own fields; what `send` needs of the RM's tokenizer and input
    /// format is checked with the whole spec (`RewardModelSpec::validate`).
    pub(in crate::models) fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() || self.endpoints.len() > 64 {
            return Err("kserve_v2.endpoints must list 1 to 64 URLs".into());
        }
        for endpoint in &self.endpoints {
            let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !scheme_ok || tonic::transport::Endpoint::from_shared(endpoint.clone()).is_err() {
                return Err(format!(
                    "kserve_v2.endpoints: {endpoint:?} is not an http:// or https:// URL"
                ));
            }
        }
        if self.model_name.is_empty() {
            return Err("kserve_v2.model_name is empty".into());
        }
        defaults::check_call_limits(
            "kserve_v2",
            self.timeout_ms,
            self.max_concurrency,
            self.health_interval_ms,
            self.failures_before_unavailable,
        )?;
        if self.auth_header.is_some() != self.auth_value_env.is_some() {
            return Err("kserve_v2.auth_header and kserve_v2.auth_value_env go together".into());
        }
        Ok(())
    }
}
