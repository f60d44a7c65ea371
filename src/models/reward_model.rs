//! One loaded reward model: `workers` ONNX Runtime sessions (each with its tokenizer, each
//! owned by a worker thread, [`super::worker`]) sharing one bounded queue of score jobs
//! (one job = one query's responses). Loading ([`super::session`]) validates and probes
//! before anything is published.
//!
//! Async ends at a channel: [`RewardModel::score`] sends a job and awaits a oneshot reply;
//! a full queue answers `QueueFull` at once. Cost on the caller: one channel send.

use std::time::Instant;

use super::score_normalization::RunningScores;
use super::session::Head;
use super::worker::{Workers, off_runtime};
use super::{ModelError, RewardModelSpec};

/// Where a loaded reward model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// The config file's `[[reward_models]]`.
    Config,
    /// `Admin.AddRewardModel` (durable: loaded again after a restart).
    Admin,
}

impl ModelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSource::Config => "config",
            ModelSource::Admin => "admin",
        }
    }
}

/// A reward model ready to score. Dropping it stops its workers once queued jobs finish.
pub struct RewardModel {
    spec: RewardModelSpec,
    source: ModelSource,
    /// Running mean and variance of every score this RM returned.
    running: RunningScores,
    workers: Workers,
}

impl RewardModel {
    /// Load, validate and probe the model, then start its workers. Blocking (file I/O,
    /// session creation, a probe inference): call it off the async runtime.
    pub fn load(spec: RewardModelSpec, source: ModelSource) -> Result<Self, ModelError> {
        spec.validate()?;
        let workers = Workers::start(&spec, Head::Score)?;
        tracing::info!(reward_model = %spec.name, model = %spec.model.display(), provider = %workers.provider, workers = spec.workers, "reward model loaded");
        Ok(Self {
            spec,
            source,
            running: RunningScores::default(),
            workers,
        })
    }

    /// `scores` on the ensemble's common scale, per the spec's `score_normalization`.
    pub fn normalize(&self, scores: &[f32]) -> Vec<f32> {
        self.running
            .normalize(self.spec.score_normalization, scores)
    }

    /// Load and probe on a blocking thread, off the async runtime.
    pub async fn load_off_runtime(
        spec: RewardModelSpec,
        source: ModelSource,
    ) -> Result<Self, ModelError> {
        off_runtime(spec.name.clone(), move || Self::load(spec, source)).await
    }

    /// The execution provider the sessions run on (`cpu`, `cuda:0`, ...).
    pub fn provider(&self) -> &str {
        &self.workers.provider
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &RewardModelSpec {
        &self.spec
    }

    pub fn source(&self) -> ModelSource {
        self.source
    }

    /// Model inputs as ONNX Runtime reports them.
    pub fn input_names(&self) -> &[String] {
        &self.workers.input_names
    }

    /// The output the score is read from.
    pub fn output_name(&self) -> &str {
        &self.workers.output_name
    }

    pub fn queue_depth(&self) -> usize {
        self.workers.queue_depth()
    }

    /// Score every (prompt, response) pair; one score per response, in order. A job still
    /// waiting in the queue when `deadline` passes is dropped without inference.
    pub async fn score(
        &self,
        prompt: String,
        responses: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<f32>, ModelError> {
        let scores = self.workers.submit(prompt, responses, deadline).await?;
        self.running.observe(&scores);
        Ok(scores)
    }
}
