//! One loaded encoder: turns prompts into a router's contexts. The same worker threads,
//! bounded queue, batching (length-sorted, padded-token budget) and execution providers as
//! a reward model, reading the session's output as one vector per prompt (mean-pooled over
//! the prompt's tokens, or an already pooled output; L2-normalized by default). Loading
//! probes the model and learns its dimension, which a router's `context_dim` must equal.
//! Cost: one forward pass per prompt, batched across concurrent requests.

use std::time::Instant;

use super::session::Head;
use super::spec::EncoderSpec;
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
