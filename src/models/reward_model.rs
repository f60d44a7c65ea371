//! One loaded reward model: `workers` ONNX Runtime sessions (each with its tokenizer, each
//! owned by a worker thread, [`super::worker`]) sharing one bounded queue of score jobs
//! (one job = one query's responses). Loading ([`super::session`]) validates and probes
//! before anything is published.
//!
//! Async ends at a channel: [`RewardModel::score`] sends a job and awaits a oneshot reply;
//! a full queue answers `QueueFull` at once. Cost on the caller: one channel send.
//!
//! Heads share a session: reward models whose specs differ only in which head of the output
//! they read (`output_index`, `output_other_index`, `score`, `score_normalization`: the demo's
//! three heads, a multi-objective RM's many) share one set of workers, whose jobs return
//! whole output rows; each model reads its head. So K such models cost one session in memory
//! and, for a query they all score (the ensemble), one forward pass
//! ([`RewardModel::shares_session_with`], [`RewardModel::session_id`]).

use std::sync::Arc;
use std::time::Instant;

use super::score_normalization::RunningScores;
use super::session::Head;
use super::spec::ScoreRead;
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
    workers: Arc<Workers>,
}

impl RewardModel {
    /// Load, validate and probe the model, then start its workers. Blocking (file I/O,
    /// session creation, a probe inference): call it off the async runtime.
    pub fn load(spec: RewardModelSpec, source: ModelSource) -> Result<Self, ModelError> {
        spec.validate()?;
        let workers = Arc::new(Workers::start(&spec, Head::Score)?);
        tracing::info!(reward_model = %spec.name, model = %spec.model.display(), provider = %workers.provider, workers = spec.workers, "reward model loaded");
        Self::on(spec, source, workers)
    }

    /// A model reading its head from `other`'s session (see [`RewardModel::shares_session_with`]).
    pub fn sharing(
        spec: RewardModelSpec,
        source: ModelSource,
        other: &RewardModel,
    ) -> Result<Self, ModelError> {
        spec.validate()?;
        tracing::info!(reward_model = %spec.name, shares_with = %other.name(), "reward model loaded on a shared session");
        Self::on(spec, source, other.workers.clone())
    }

    fn on(
        spec: RewardModelSpec,
        source: ModelSource,
        workers: Arc<Workers>,
    ) -> Result<Self, ModelError> {
        let (index, other) = (spec.output_index, spec.output_other_index);
        let needed = match spec.score {
            ScoreRead::Difference => index.max(other),
            ScoreRead::Index | ScoreRead::Softmax => index,
        };
        if needed >= workers.width {
            return Err(ModelError::InvalidSpec {
                name: spec.name.clone(),
                reason: format!(
                    "output index {needed} is out of range for output {:?} of {} values per sequence",
                    workers.output_name, workers.width
                ),
            });
        }
        Ok(Self {
            spec,
            source,
            running: RunningScores::default(),
            workers,
        })
    }

    /// Whether a model with `spec` would run the very same session as this one: the specs
    /// differ at most in their name and in which head they read.
    pub fn shares_session_with(&self, spec: &RewardModelSpec) -> bool {
        let head_free = |spec: &RewardModelSpec| RewardModelSpec {
            name: String::new(),
            output_index: 0,
            output_other_index: 0,
            score: ScoreRead::Index,
            score_normalization: Default::default(),
            ..spec.clone()
        };
        head_free(&self.spec) == head_free(spec)
    }

    /// Equal for models on the same session: one job serves them all.
    pub fn session_id(&self) -> usize {
        Arc::as_ptr(&self.workers) as usize
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
        let rows = self.output_rows(prompt, responses, deadline).await?;
        Ok(self.scores_from(&rows))
    }

    /// The session's whole output rows for each (prompt, response), which every model on
    /// the session reads with [`RewardModel::scores_from`].
    pub async fn output_rows(
        &self,
        prompt: String,
        responses: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<f32>, ModelError> {
        self.workers.submit(prompt, responses, deadline).await
    }

    /// This model's scores from its session's output rows (one row per response).
    pub fn scores_from(&self, rows: &[f32]) -> Vec<f32> {
        let width = self.workers.width;
        let (index, other) = (self.spec.output_index, self.spec.output_other_index);
        let scores: Vec<f32> = rows
            .chunks(width)
            .map(|values| match self.spec.score {
                ScoreRead::Index => values[index],
                ScoreRead::Difference => values[index] - values[other],
                ScoreRead::Softmax => {
                    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let total: f32 = values.iter().map(|v| (v - max).exp()).sum();
                    (values[index] - max).exp() / total
                }
            })
            .collect();
        self.running.observe(&scores);
        scores
    }
}
