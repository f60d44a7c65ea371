//! One loaded encoder: turns prompts into a router's contexts. The same worker threads,
//! bounded queue, batching (length-sorted, padded-token budget) and execution providers as
//! a reward model, reading the session's output as one vector per prompt (mean-pooled over
//! the prompt's tokens, or an already pooled output; L2-normalized by default). Loading
//! probes the model and learns its dimension, which a router's `context_dim` must equal.
//! Cost: one forward pass per prompt, batched across concurrent requests.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::session::{Head, Pooling};
use super::spec::{
    InputFormat, Provider, RewardModelSpec, TruncationSide, default_max_batch_delay_ms,
    default_max_batch_sequences, default_max_batch_tokens, default_queue_capacity, default_workers,
};
use super::worker::{Workers, off_runtime};
use super::{ModelError, ModelSource};

/// An encoder ready to embed. Dropping it stops its workers once queued jobs finish.
pub struct Encoder {
    spec: EncoderSpec,
    source: ModelSource,
    workers: Workers,
}

impl Encoder {
    /// Load, validate and probe; start the workers. Blocking: call it off the runtime.
    pub fn load(spec: EncoderSpec, source: ModelSource) -> Result<Self, ModelError> {
        spec.validate()?;
        let head = Head::Embedding {
            pooling: spec.pooling,
            normalize: spec.normalize,
        };
        let workers = Workers::start(&spec.model_spec(), head)?;
        tracing::info!(encoder = %spec.name, model = %spec.model.display(), provider = %workers.provider, dim = workers.width, "encoder loaded");
        Ok(Self {
            spec,
            source,
            workers,
        })
    }

    /// [`Encoder::load`] on a blocking thread, off the async runtime.
    pub async fn load_off_runtime(
        spec: EncoderSpec,
        source: ModelSource,
    ) -> Result<Self, ModelError> {
        off_runtime(spec.name.clone(), move || Self::load(spec, source)).await
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &EncoderSpec {
        &self.spec
    }

    pub fn source(&self) -> ModelSource {
        self.source
    }

    /// The length of every vector it returns.
    pub fn dim(&self) -> usize {
        self.workers.width
    }

    pub fn provider(&self) -> &str {
        &self.workers.provider
    }

    pub fn output_name(&self) -> &str {
        &self.workers.output_name
    }

    pub fn queue_depth(&self) -> usize {
        self.workers.queue_depth()
    }

    /// One vector of [`Encoder::dim`] values per prompt, in order.
    pub async fn embed(
        &self,
        prompts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let values = self
            .workers
            .submit(String::new(), prompts, deadline)
            .await?;
        Ok(values.chunks(self.dim()).map(<[f32]>::to_vec).collect())
    }
}

fn default_true() -> bool {
    true
}

fn default_encoder_max_length() -> usize {
    256
}

/// An encoder that turns a prompt into a router's context: an ONNX sentence encoder and
/// its `tokenizer.json`, on the same workers, batching and providers as reward models.
///
/// ```toml
/// [[encoders]]
/// name = "minilm"
/// model = "../../models/demo/model.onnx"
/// tokenizer = "../../models/demo/tokenizer.json"
/// output = "embedding"          # default: the model's first output
/// pooling = "none"              # "mean" (default) over last_hidden_state, or "none"
/// normalize = true              # L2-normalize (default)
/// max_length = 256
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSpec {
    /// Unique among encoders. `[A-Za-z0-9._-]`, 1 to 64 characters.
    pub name: String,
    pub model: PathBuf,
    pub tokenizer: PathBuf,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Longest token sequence embedded (the prompt's start is kept).
    #[serde(default = "default_encoder_max_length")]
    pub max_length: usize,
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    #[serde(default)]
    pub provider: Provider,
    #[serde(default)]
    pub device_id: i32,
    #[serde(default)]
    pub fallback_to_cpu: bool,
    #[serde(default)]
    pub intra_threads: usize,
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default = "default_max_batch_sequences")]
    pub max_batch_sequences: usize,
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    #[serde(default = "default_max_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
}

impl EncoderSpec {
    /// A spec with every optional field at its default.
    pub fn new(name: String, model: PathBuf, tokenizer: PathBuf) -> Self {
        let base = RewardModelSpec::new(
            name.clone(),
            model.clone(),
            tokenizer.clone(),
            InputFormat::Text,
        );
        Self {
            name,
            model,
            tokenizer,
            output: None,
            pooling: Pooling::Mean,
            normalize: true,
            max_length: default_encoder_max_length(),
            queue_capacity: base.queue_capacity,
            provider: base.provider,
            device_id: base.device_id,
            fallback_to_cpu: base.fallback_to_cpu,
            intra_threads: base.intra_threads,
            workers: base.workers,
            max_batch_sequences: base.max_batch_sequences,
            max_batch_tokens: base.max_batch_tokens,
            max_batch_delay_ms: base.max_batch_delay_ms,
        }
    }

    /// The model spec the shared loading, batching and inference code runs: text input,
    /// truncation keeping the prompt's start.
    pub fn model_spec(&self) -> RewardModelSpec {
        RewardModelSpec {
            output: self.output.clone(),
            max_length: self.max_length,
            queue_capacity: self.queue_capacity,
            truncation_side: TruncationSide::Right,
            provider: self.provider,
            device_id: self.device_id,
            fallback_to_cpu: self.fallback_to_cpu,
            intra_threads: self.intra_threads,
            workers: self.workers,
            max_batch_sequences: self.max_batch_sequences,
            max_batch_tokens: self.max_batch_tokens,
            max_batch_delay_ms: self.max_batch_delay_ms,
            ..RewardModelSpec::new(
                self.name.clone(),
                self.model.clone(),
                self.tokenizer.clone(),
                InputFormat::Text,
            )
        }
    }

    /// Resolve relative file paths against `base` (the config file's directory).
    pub fn resolve_paths(mut self, base: &Path) -> Self {
        if self.model.is_relative() {
            self.model = base.join(&self.model);
        }
        if self.tokenizer.is_relative() {
            self.tokenizer = base.join(&self.tokenizer);
        }
        self
    }

    /// Checks that need no files.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.model_spec().validate()
    }
}
