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
//!
//! Backends: `onnx` runs those workers in process; `kserve_v2` sends the same jobs to an
//! inference engine ([`super::kserve::RemoteModel`]), whose output rows are read the same way.
//! Only a remote RM can be unavailable ([`RewardModel::is_available`]): routers do not select
//! it then, and its arms keep their state.

use std::sync::Arc;
use std::time::Instant;

use super::causal_lm::CAUSAL_LM_ROW;
use super::kserve::Kserve;
use super::remote::RemoteModel;
use super::score_normalization::RunningScores;
use super::session::Head;
use super::spec::{Backend, ImplicitReward, ScoreRead};
use super::vllm::Vllm;
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

/// What runs a model's jobs (shared by the heads of one session).
#[derive(Clone)]
enum Runner {
    Onnx(Arc<Workers>),
    Remote(Arc<RemoteModel>),
}

/// A remote model on the engine its spec's backend names (see [`RemoteModel::start`]).
async fn start_remote(spec: &RewardModelSpec, strict: bool) -> Result<RemoteModel, ModelError> {
    match &spec.backend {
        Backend::KserveV2(_) => {
            RemoteModel::start(spec.clone(), Kserve::connect(spec).await?, strict).await
        }
        Backend::Vllm(_) => {
            RemoteModel::start(spec.clone(), Vllm::connect(spec).await?, strict).await
        }
        Backend::Onnx => Err(ModelError::InvalidSpec {
            name: spec.name.clone(),
            reason: "backend onnx runs in process".into(),
        }),
    }
}

/// A reward model ready to score. Dropping it stops its workers once queued jobs finish.
pub struct RewardModel {
    spec: RewardModelSpec,
    source: ModelSource,
    /// Running mean and variance of every score this RM returned.
    running: RunningScores,
    runner: Runner,
}

impl RewardModel {
    /// Load, validate and probe the model, then start its workers. Blocking (file I/O,
    /// session creation, a probe inference): call it off the async runtime, inside it (a
    /// remote model's probe runs on the runtime's handle). A remote model whose engine is
    /// down starts unavailable (startup); [`RewardModel::load_off_runtime`] refuses it.
    pub fn load(spec: RewardModelSpec, source: ModelSource) -> Result<Self, ModelError> {
        spec.validate()?;
        let runner = match spec.backend {
            Backend::Onnx => {
                let workers = Arc::new(Workers::start(&spec, Head::Score)?);
                tracing::info!(reward_model = %spec.name, model = %spec.model.display(), provider = %workers.provider, workers = spec.workers, "reward model loaded");
                Runner::Onnx(workers)
            }
            Backend::KserveV2(_) | Backend::Vllm(_) => {
                let remote =
                    tokio::runtime::Handle::current().block_on(start_remote(&spec, false))?;
                Runner::Remote(Arc::new(remote))
            }
        };
        Self::on(spec, source, runner)
    }

    /// A model reading its head from `other`'s session (see [`RewardModel::shares_session_with`]).
    pub fn sharing(
        spec: RewardModelSpec,
        source: ModelSource,
        other: &RewardModel,
    ) -> Result<Self, ModelError> {
        spec.validate()?;
        tracing::info!(reward_model = %spec.name, shares_with = %other.name(), "reward model loaded on a shared session");
        Self::on(spec, source, other.runner.clone())
    }

    fn on(spec: RewardModelSpec, source: ModelSource, runner: Runner) -> Result<Self, ModelError> {
        let model = Self {
            spec,
            source,
            running: RunningScores::default(),
            runner,
        };
        model.check_head()?;
        Ok(model)
    }

    /// The spec's head is inside the output (a remote model not probed yet passes: it is
    /// checked again at each request).
    fn check_head(&self) -> Result<(), ModelError> {
        let (index, other) = (self.spec.output_index, self.spec.output_other_index);
        let needed = match self.spec.score {
            ScoreRead::Difference => index.max(other),
            ScoreRead::Index | ScoreRead::Softmax => index,
            // The session's own row: [Σ log π, response tokens, Σ log π_ref].
            ScoreRead::LogLikelihood
            | ScoreRead::MeanLogLikelihood
            | ScoreRead::Implicit(_)
            | ScoreRead::Judge(_) => CAUSAL_LM_ROW - 1,
        };
        let width = self.width();
        if width > 0 && needed >= width {
            return Err(ModelError::InvalidSpec {
                name: self.spec.name.clone(),
                reason: format!(
                    "output index {needed} is out of range for output {:?} of {width} values per sequence",
                    self.output_name()
                ),
            });
        }
        Ok(())
    }

    /// Output values per sequence (0 while a remote model was never probed).
    fn width(&self) -> usize {
        match &self.runner {
            Runner::Onnx(workers) => workers.width,
            Runner::Remote(remote) => remote.width(),
        }
    }

    /// Whether a model with `spec` would run the very same session as this one: the specs
    /// differ at most in their name and in which head they read.
    pub fn shares_session_with(&self, spec: &RewardModelSpec) -> bool {
        let head_free = |spec: &RewardModelSpec| RewardModelSpec {
            name: String::new(),
            output_index: 0,
            output_other_index: 0,
            // Heads of one classifier output share a session; likelihood RMs share one with
            // the same graph (and reference model: it runs in the session too).
            score: match &spec.score {
                ScoreRead::Implicit(implicit) => ScoreRead::Implicit(ImplicitReward {
                    beta: 1.0,
                    ..implicit.clone()
                }),
                ScoreRead::LogLikelihood | ScoreRead::MeanLogLikelihood => ScoreRead::LogLikelihood,
                ScoreRead::Judge(rubric) => ScoreRead::Judge(rubric.clone()),
                ScoreRead::Index | ScoreRead::Difference | ScoreRead::Softmax => ScoreRead::Index,
            },
            score_normalization: Default::default(),
            ..spec.clone()
        };
        head_free(&self.spec) == head_free(spec)
    }

    /// Equal for models on the same session: one job serves them all.
    pub fn session_id(&self) -> usize {
        match &self.runner {
            Runner::Onnx(workers) => Arc::as_ptr(workers) as usize,
            Runner::Remote(remote) => Arc::as_ptr(remote) as usize,
        }
    }

    /// `scores` on the ensemble's common scale, per the spec's `score_normalization`.
    pub fn normalize(&self, scores: &[f32]) -> Vec<f32> {
        self.running
            .normalize(self.spec.score_normalization, scores)
    }

    /// Load and probe on a blocking thread, off the async runtime; a remote model must be
    /// ready on its engine (AddRewardModel).
    pub async fn load_off_runtime(
        spec: RewardModelSpec,
        source: ModelSource,
    ) -> Result<Self, ModelError> {
        if spec.backend.is_remote() {
            spec.validate()?;
            let remote = start_remote(&spec, true).await?;
            return Self::on(spec, source, Runner::Remote(Arc::new(remote)));
        }
        off_runtime(spec.name.clone(), move || Self::load(spec, source)).await
    }

    /// The execution provider the sessions run on (`cpu`, `cuda:0`, ...), or `kserve_v2`.
    pub fn provider(&self) -> &str {
        match &self.runner {
            Runner::Onnx(workers) => &workers.provider,
            Runner::Remote(remote) => remote.kind(),
        }
    }

    /// Whether routers may select the model now (a remote one may be down).
    pub fn is_available(&self) -> bool {
        match &self.runner {
            Runner::Onnx(_) => true,
            Runner::Remote(remote) => remote.is_available(),
        }
    }

    /// Why the model is unavailable; empty while it is available.
    pub fn unavailable_reason(&self) -> String {
        match &self.runner {
            Runner::Onnx(_) => String::new(),
            Runner::Remote(remote) => remote.unavailable_reason(),
        }
    }

    /// A remote model's engine endpoints; empty in process.
    pub fn endpoints(&self) -> Vec<String> {
        match &self.runner {
            Runner::Onnx(_) => Vec::new(),
            Runner::Remote(remote) => remote.endpoints(),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What the "loaded" gauges show of this RM ([`crate::telemetry::record_reward_model_loaded`]).
    pub fn gauges(&self) -> crate::telemetry::LoadedRewardModel<'_> {
        crate::telemetry::LoadedRewardModel {
            name: self.name(),
            provider: self.provider(),
            queue_capacity: self.spec().queue_capacity,
            available: self.is_available(),
        }
    }

    pub fn spec(&self) -> &RewardModelSpec {
        &self.spec
    }

    pub fn source(&self) -> ModelSource {
        self.source
    }

    /// Model inputs as ONNX Runtime (or the engine's metadata) reports them.
    pub fn input_names(&self) -> Vec<String> {
        match &self.runner {
            Runner::Onnx(workers) => workers.input_names.clone(),
            Runner::Remote(remote) => remote.tensor_names().0,
        }
    }

    /// The output the score is read from.
    pub fn output_name(&self) -> String {
        match &self.runner {
            Runner::Onnx(workers) => workers.output_name.clone(),
            Runner::Remote(remote) => remote.tensor_names().1,
        }
    }

    pub fn queue_depth(&self) -> usize {
        match &self.runner {
            Runner::Onnx(workers) => workers.queue_depth(),
            Runner::Remote(remote) => remote.queue_depth(),
        }
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
        match &self.runner {
            Runner::Onnx(workers) => workers.submit(prompt, responses, deadline).await,
            Runner::Remote(remote) => {
                let rows = remote.submit(prompt, responses, deadline).await?;
                // A remote model probed after load: its head is checked now.
                self.check_head().map_err(|error| ModelError::Unavailable {
                    name: self.spec.name.clone(),
                    reason: error.to_string(),
                })?;
                Ok(rows)
            }
        }
    }

    /// This model's scores from its session's output rows (one row per response).
    pub fn scores_from(&self, rows: &[f32]) -> Vec<f32> {
        let width = self.width().max(1);
        let (index, other) = (self.spec.output_index, self.spec.output_other_index);
        let scores: Vec<f32> = rows
            .chunks(width)
            .map(|values| match &self.spec.score {
                ScoreRead::Index => values[index],
                ScoreRead::LogLikelihood | ScoreRead::Judge(_) => values[0],
                ScoreRead::MeanLogLikelihood => values[0] / values[1].max(1.0),
                ScoreRead::Implicit(implicit) => {
                    (implicit.beta * (values[0] as f64 - values[2] as f64)) as f32
                }
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
