//! The `backend.vllm` table of a reward model's spec: where vLLM's OpenAI-compatible server
//! is (endpoints, served model name; for an implicit reward the reference model's server
//! too), what is sent to a classifier (texts or tokens), and the call's limits, TLS, API key
//! and health probing. Plain data with its own checks; the RM's spec (`models::spec`) holds
//! it in `Backend::Vllm` and checks what its score kind needs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::models::remote::defaults;

use crate::models::kserve::spec::RemoteInput;

/// A reward model served by vLLM (`vllm serve`, or `python -m vllm.entrypoints.openai.api_server`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VllmSpec {
    /// Base URLs of the model's servers (`http://host:8000`, or `https://` with TLS), used
    /// round-robin among those that are healthy.
    pub endpoints: Vec<String>,
    /// The served model name (`--served-model-name`, else the model path vLLM was given).
    pub model_name: String,
    /// `score = { implicit = ... }`: the servers of the reference model (vLLM serves one
    /// model per server).
    #[serde(default)]
    pub reference_endpoints: Vec<String>,
    /// ...and its served name.
    #[serde(default)]
    pub reference_model_name: String,
    /// A classifier (`score` index, difference or softmax, through `/pooling`): `texts`
    /// (default; vLLM tokenizes) or `tokens` (tokenized here with the RM's tokenizer). A
    /// causal LM is always sent tokens: the response's span is known only here.
    #[serde(default)]
    pub send: RemoteInput,
    /// Limit on each call (and each probe); a client deadline that comes sooner wins.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Calls in flight at once; jobs queued meanwhile are coalesced into one call.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: usize,
    /// PEM file of the CA that signed the servers' certificates (`https://`; default: the
    /// public web roots).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// The environment variable of the server process holding vLLM's API key (`--api-key`),
    /// sent as `Authorization: Bearer <key>` (the value is never written to the state log).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// How often `/health` is asked of each server.
    #[serde(default = "defaults::health_interval_ms")]
    pub health_interval_ms: u64,
    /// Consecutive failed calls after which the RM is unavailable until a probe finds it
    /// healthy again (an unreachable server is taken out at once).
    #[serde(default = "defaults::failures_before_unavailable")]
    pub failures_before_unavailable: u32,
}

impl VllmSpec {
    /// A spec with every optional field at its default.
    pub fn new(endpoints: Vec<String>, model_name: String) -> Self {
        Self {
            endpoints,
            model_name,
            reference_endpoints: Vec::new(),
            reference_model_name: String::new(),
            send: RemoteInput::Texts,
            timeout_ms: defaults::timeout_ms(),
            max_concurrency: defaults::max_concurrency(),
            tls_ca: None,
            api_key_env: None,
            health_interval_ms: defaults::health_interval_ms(),
            failures_before_unavailable: defaults::failures_before_unavailable(),
        }
    }

    /// Check this table's own fields; what the score kind needs (a reference model for an
    /// implicit reward, a tokenizer for a causal LM) is checked with the whole spec
    /// (`RewardModelSpec::validate`).
    pub(in crate::models) fn validate(&self) -> Result<(), String> {
        for (field, urls) in [
            ("endpoints", &self.endpoints),
            ("reference_endpoints", &self.reference_endpoints),
        ] {
            if urls.len() > 64 || (field == "endpoints" && urls.is_empty()) {
                return Err(format!("vllm.{field} must list 1 to 64 URLs"));
            }
            for url in urls {
                let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
                if !scheme_ok || reqwest::Url::parse(url).is_err() {
                    return Err(format!(
                        "vllm.{field}: {url:?} is not an http:// or https:// URL"
                    ));
                }
            }
        }
        if self.model_name.is_empty() {
            return Err("vllm.model_name is empty".into());
        }
        if self.reference_endpoints.is_empty() != self.reference_model_name.is_empty() {
            return Err(
                "vllm.reference_endpoints and vllm.reference_model_name go together".into(),
            );
        }
        defaults::check_call_limits(
            "vllm",
            self.timeout_ms,
            self.max_concurrency,
            self.health_interval_ms,
            self.failures_before_unavailable,
        )
    }
}
