//! One loaded reward model: `workers` ONNX Runtime sessions (each with its tokenizer, each
//! owned by a worker thread, [`super::worker`]) sharing one bounded queue of score jobs
//! (one job = one query's responses). Loading ([`super::session`]) validates and probes
//! before anything is published.
//!
//! Async ends at a channel: [`RewardModel::score`] sends a job and awaits a oneshot reply;
//! a full queue answers `QueueFull` at once. Cost on the caller: one channel send.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::Instrument;

use super::score_normalization::RunningScores;
use super::session::Scorer;
use super::worker::{ScoreJob, run_worker};
use super::{ModelError, RewardModelSpec};
use crate::telemetry::metric;

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

/// A reward model ready to score. Dropping it stops its worker once queued jobs finish.
pub struct RewardModel {
    spec: RewardModelSpec,
    source: ModelSource,
    provider: String,
    /// Running mean and variance of every score this RM returned.
    running: RunningScores,
    input_names: Vec<String>,
    output_name: String,
    jobs: SyncSender<ScoreJob>,
    queue_depth: Arc<AtomicUsize>,
}

impl RewardModel {
    /// Load, validate and probe the model, then start its worker. Blocking (file I/O,
    /// session creation, a probe inference): call it off the async runtime.
    pub fn load(spec: RewardModelSpec, source: ModelSource) -> Result<Self, ModelError> {
        spec.validate()?;
        let mut scorers = vec![Scorer::new(spec.clone())?];
        for _ in 1..spec.workers {
            scorers.push(Scorer::new(spec.clone())?);
        }
        let provider = scorers[0].provider.clone();
        let input_names = scorers[0].inputs.iter().map(|i| i.name.clone()).collect();
        let output_name = scorers[0].output_name.clone();
        let (jobs, queue) = sync_channel(spec.queue_capacity);
        let queue = Arc::new(Mutex::new(queue));
        let queue_depth = Arc::new(AtomicUsize::new(0));
        for (index, scorer) in scorers.into_iter().enumerate() {
            let (queue, depth) = (queue.clone(), queue_depth.clone());
            std::thread::Builder::new()
                .name(format!("rm-{}-{index}", spec.name))
                .spawn(move || run_worker(scorer, queue, depth))
                .map_err(|e| ModelError::Load {
                    name: spec.name.clone(),
                    reason: format!("cannot start worker thread: {e}"),
                })?;
        }
        tracing::info!(reward_model = %spec.name, model = %spec.model.display(), %provider, workers = spec.workers, "reward model loaded");
        Ok(Self {
            spec,
            source,
            provider,
            running: RunningScores::default(),
            input_names,
            output_name,
            jobs,
            queue_depth,
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
        let name = spec.name.clone();
        tokio::task::spawn_blocking(move || Self::load(spec, source))
            .await
            .map_err(|e| ModelError::LoaderFailed {
                name,
                reason: e.to_string(),
            })?
    }

    /// The execution provider the sessions run on (`cpu`, `cuda:0`, ...).
    pub fn provider(&self) -> &str {
        &self.provider
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
        &self.input_names
    }

    /// The output the score is read from.
    pub fn output_name(&self) -> &str {
        &self.output_name
    }

    pub fn queue_depth(&self) -> usize {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// Score every (prompt, response) pair; one score per response, in order. A job still
    /// waiting in the queue when `deadline` passes is dropped without inference.
    pub async fn score(
        &self,
        prompt: String,
        responses: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<f32>, ModelError> {
        let (reply, answer) = oneshot::channel();
        let job = ScoreJob {
            prompt,
            responses,
            deadline,
            reply,
            span: tracing::Span::current(),
            enqueued: Instant::now(),
        };
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.jobs.try_send(job) {
            self.queue_depth.fetch_sub(1, Ordering::Relaxed);
            let name = self.spec.name.clone();
            return Err(match error {
                TrySendError::Full(_) => ModelError::QueueFull {
                    name,
                    capacity: self.spec.queue_capacity,
                },
                TrySendError::Disconnected(_) => ModelError::WorkerStopped { name },
            });
        }
        metrics::gauge!(metric::RM_QUEUE_DEPTH, "reward_model" => self.spec.name.clone())
            .set(self.queue_depth() as f64);
        let name = self.spec.name.clone();
        let scores = answer
            .instrument(tracing::debug_span!("await_scores"))
            .await
            .unwrap_or(Err(ModelError::WorkerStopped { name }))?;
        self.running.observe(&scores);
        Ok(scores)
    }
}
