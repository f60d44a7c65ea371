//! One loaded reward model: `workers` ONNX Runtime sessions (each with its tokenizer, each
//! owned by a worker thread) sharing one bounded queue of score jobs (one job = one query's
//! responses).
//!
//! Loading validates before anything is published: the spec, the files, the execution
//! provider (ONNX Runtime's own reason when it is unavailable, or a CPU fallback with a
//! warning when the spec allows it), the session's inputs (`input_ids` required;
//! `attention_mask`, `token_type_ids`, `position_ids` fed when the model declares them;
//! int64 or int32 as declared), the score output, and a probe run that checks the output's
//! shape against the spec.
//!
//! Batching across requests: a worker takes the first queued job, then more for up to
//! `max_batch_delay_ms` or until `max_batch_sequences`; jobs whose deadline passed (or whose
//! client left) are dropped unscored; every (prompt, response) pair is tokenized; sequences
//! are sorted by length and cut into inferences of at most `max_batch_sequences` sequences
//! and `max_batch_tokens` padded tokens (so similar lengths share a batch and padding
//! stays low); scores go back to each job.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};
use tokenizers::{
    EncodeInput, Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::chat::ChatTemplate;
use super::spec::{Provider, ScoreNormalization, ScoreRead, TruncationSide};
use super::{InputFormat, ModelError, RewardModelSpec, runtime};
use crate::telemetry::metric;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputKind {
    InputIds,
    AttentionMask,
    TokenTypeIds,
    PositionIds,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IntegerType {
    I64,
    I32,
}

#[derive(Clone, Debug)]
struct ModelInput {
    name: String,
    kind: InputKind,
    integer_type: IntegerType,
}

struct ScoreJob {
    prompt: String,
    responses: Vec<String>,
    /// The client's deadline: a job still queued past it is dropped unscored.
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Vec<f32>, ModelError>>,
    span: tracing::Span,
    enqueued: Instant,
}

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
    /// Welford running (count, mean, M2) of every score this RM returned.
    running: Mutex<(u64, f64, f64)>,
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
            running: Mutex::new((0, 0.0, 0.0)),
            input_names,
            output_name,
            jobs,
            queue_depth,
        })
    }

    /// `scores` on the ensemble's common scale, per the spec's `score_normalization`.
    pub fn normalize(&self, scores: &[f32]) -> Vec<f32> {
        match self.spec.score_normalization {
            ScoreNormalization::PerQuery => crate::bandit::ensemble::standardize(scores),
            ScoreNormalization::Affine { scale, shift } => scores
                .iter()
                .map(|&s| (scale * s as f64 + shift) as f32)
                .collect(),
            ScoreNormalization::Running => {
                let (count, mean, m2) = *self.running.lock().expect("running stats lock poisoned");
                let std = if count > 1 {
                    (m2 / (count - 1) as f64).sqrt()
                } else {
                    0.0
                };
                scores
                    .iter()
                    .map(|&s| {
                        if std > 0.0 {
                            ((s as f64 - mean) / std) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
        }
    }

    fn observe_scores(&self, scores: &[f32]) {
        let mut running = self.running.lock().expect("running stats lock poisoned");
        for &score in scores.iter().filter(|s| s.is_finite()) {
            let (count, mean, m2) = &mut *running;
            *count += 1;
            let delta = score as f64 - *mean;
            *mean += delta / *count as f64;
            *m2 += delta * (score as f64 - *mean);
        }
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
        self.observe_scores(&scores);
        Ok(scores)
    }
}

fn run_worker(mut scorer: Scorer, queue: Arc<Mutex<Receiver<ScoreJob>>>, depth: Arc<AtomicUsize>) {
    let name = scorer.spec.name.clone();
    loop {
        let jobs = {
            let receiver = queue.lock().expect("queue lock poisoned");
            gather(&receiver, &scorer.spec)
        };
        let Some(jobs) = jobs else { break };
        let remaining = depth
            .fetch_sub(jobs.len(), Ordering::Relaxed)
            .saturating_sub(jobs.len());
        metrics::gauge!(metric::RM_QUEUE_DEPTH, "reward_model" => name.clone())
            .set(remaining as f64);
        scorer.process(jobs);
    }
    drop(scorer);
    crate::memory::release_freed_memory();
    tracing::info!(reward_model = %name, "reward model worker stopped");
}

/// The first queued job, then more for up to `max_batch_delay_ms` or until
/// `max_batch_sequences`. `None` once the model is removed and the queue is drained.
fn gather(receiver: &Receiver<ScoreJob>, spec: &RewardModelSpec) -> Option<Vec<ScoreJob>> {
    let first = receiver.recv().ok()?;
    let mut sequences = first.responses.len();
    let mut jobs = vec![first];
    let wait_until = Instant::now() + Duration::from_millis(spec.max_batch_delay_ms);
    while sequences < spec.max_batch_sequences {
        let remaining = wait_until.saturating_duration_since(Instant::now());
        let next = if remaining.is_zero() {
            receiver.try_recv().ok()
        } else {
            receiver.recv_timeout(remaining).ok()
        };
        match next {
            Some(job) => {
                sequences += job.responses.len();
                jobs.push(job);
            }
            None => break,
        }
    }
    Some(jobs)
}

/// Session, tokenizer and input layout of one model; lives on its worker thread.
struct Scorer {
    spec: RewardModelSpec,
    provider: String,
    chat: Option<ChatTemplate>,
    session: Session,
    tokenizer: Tokenizer,
    pad_id: u32,
    inputs: Vec<ModelInput>,
    output_name: String,
}

impl Scorer {
    fn new(spec: RewardModelSpec) -> Result<Self, ModelError> {
        let name = spec.name.clone();
        for path in [&spec.model, &spec.tokenizer] {
            std::fs::metadata(path).map_err(|e| ModelError::MissingFile {
                name: name.clone(),
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let tokenizer = load_tokenizer(&spec)?;
        let pad_id = ["[PAD]", "<pad>", "<|pad|>"]
            .iter()
            .find_map(|token| tokenizer.token_to_id(token))
            .unwrap_or(0);
        let environment = runtime::environment()?;
        let load_error = |reason: String| ModelError::Load {
            name: name.clone(),
            reason,
        };
        let (session, provider) = build_session(&spec, environment)?;
        let chat = match spec.input_format {
            InputFormat::Chat => Some(ChatTemplate::load(&spec.tokenizer_config_path(), &name)?),
            InputFormat::Pair | InputFormat::Template => None,
        };
        let inputs = session
            .inputs()
            .iter()
            .map(|outlet| model_input(&name, outlet.name(), outlet.dtype()))
            .collect::<Result<Vec<_>, _>>()?;
        if !inputs.iter().any(|i| i.kind == InputKind::InputIds) {
            return Err(load_error("the model has no input named input_ids".into()));
        }
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let output_name = match &spec.output {
            Some(wanted) if outputs.contains(wanted) => wanted.clone(),
            Some(wanted) => {
                return Err(ModelError::InvalidSpec {
                    name,
                    reason: format!(
                        "output {wanted:?} is not an output of the model; the model's outputs are {outputs:?}"
                    ),
                });
            }
            None => outputs
                .first()
                .cloned()
                .ok_or_else(|| load_error("the model has no outputs".into()))?,
        };
        let mut scorer = Self {
            spec,
            provider,
            chat,
            session,
            tokenizer,
            pad_id,
            inputs,
            output_name,
        };
        scorer
            .score("probe", &["probe".to_string()])
            .map_err(|e| match e {
                ModelError::Inference { name, reason } => ModelError::Load {
                    name,
                    reason: format!("probe run failed: {reason}"),
                },
                other => other,
            })?;
        Ok(scorer)
    }

    /// Score one query's responses (the probe).
    fn score(&mut self, prompt: &str, responses: &[String]) -> Result<Vec<f32>, ModelError> {
        let encodings = self.tokenize(prompt, responses)?;
        let refs: Vec<&Encoding> = encodings.iter().collect();
        self.infer(&refs)
    }

    fn tokenize(&self, prompt: &str, responses: &[String]) -> Result<Vec<Encoding>, ModelError> {
        let error = |reason: String| ModelError::Tokenizer {
            name: self.spec.name.clone(),
            reason,
        };
        let inputs: Vec<EncodeInput> = responses
            .iter()
            .map(|response| -> Result<EncodeInput, ModelError> {
                Ok(match (&self.spec.input_format, &self.chat) {
                    (InputFormat::Pair, _) => (prompt.to_string(), response.clone()).into(),
                    (InputFormat::Template, _) => self.spec.render(prompt, response).into(),
                    (InputFormat::Chat, Some(chat)) => chat
                        .render(prompt, response)
                        .map_err(|e| error(format!("chat template: {e}")))?
                        .into(),
                    (InputFormat::Chat, None) => {
                        return Err(error("no chat template loaded".into()));
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        // A chat template writes its own special tokens.
        let add_special_tokens = self.spec.input_format != InputFormat::Chat;
        self.tokenizer
            .encode_batch(inputs, add_special_tokens)
            .map_err(|e| error(e.to_string()))
    }

    /// Score a batch of jobs: tokenize, cut length-sorted sequences into inferences under
    /// the batch limits, reply to each job.
    fn process(&mut self, jobs: Vec<ScoreJob>) {
        let name = self.spec.name.clone();
        let now = Instant::now();
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            metrics::histogram!(metric::RM_QUEUE_SECONDS, "reward_model" => name.clone())
                .record(job.enqueued.elapsed().as_secs_f64());
            if job.deadline.is_some_and(|deadline| now >= deadline) || job.reply.is_closed() {
                // Nobody waits for this any more (deadline passed, client gone): skip it.
                let _ = job
                    .reply
                    .send(Err(ModelError::DeadlineExceeded { name: name.clone() }));
                metrics::counter!(metric::RM_REQUESTS, "reward_model" => name.clone(), "status" => "dropped").increment(1);
            } else {
                live.push(job);
            }
        }

        let started = Instant::now();
        let mut outcomes: Vec<Result<Vec<f32>, ModelError>> = Vec::with_capacity(live.len());
        let mut encodings: Vec<Vec<Encoding>> = Vec::with_capacity(live.len());
        for job in &live {
            match self.tokenize(&job.prompt, &job.responses) {
                Ok(encoded) => {
                    outcomes.push(Ok(vec![f32::NAN; encoded.len()]));
                    encodings.push(encoded);
                }
                Err(error) => {
                    outcomes.push(Err(error));
                    encodings.push(Vec::new());
                }
            }
        }
        metrics::histogram!(metric::RM_TOKENIZE_SECONDS, "reward_model" => name.clone())
            .record(started.elapsed().as_secs_f64());

        // (job, response, length), shortest first.
        let mut order: Vec<(usize, usize, usize)> = encodings
            .iter()
            .enumerate()
            .flat_map(|(job, encoded)| {
                encoded
                    .iter()
                    .enumerate()
                    .map(move |(r, e)| (job, r, e.len()))
            })
            .collect();
        order.sort_by_key(|&(_, _, len)| len);
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len()
                && end - start < self.spec.max_batch_sequences
                && (end - start + 1) * order[end].2.max(1) <= self.spec.max_batch_tokens
            {
                end += 1;
            }
            let chunk = &order[start..end];
            let refs: Vec<&Encoding> = chunk
                .iter()
                .map(|&(job, r, _)| &encodings[job][r])
                .collect();
            match self.infer(&refs) {
                Ok(scores) => {
                    for (&(job, r, _), score) in chunk.iter().zip(scores) {
                        if let Ok(job_scores) = &mut outcomes[job] {
                            job_scores[r] = score;
                        }
                    }
                }
                Err(error) => {
                    for &(job, _, _) in chunk {
                        outcomes[job] = Err(error.clone());
                    }
                }
            }
            start = end;
        }

        for (job, outcome) in live.into_iter().zip(outcomes) {
            let status = if outcome.is_ok() { "ok" } else { "error" };
            if let Err(error) = &outcome {
                job.span
                    .in_scope(|| tracing::warn!(%error, "scoring failed"));
            }
            metrics::counter!(metric::RM_REQUESTS, "reward_model" => name.clone(), "status" => status).increment(1);
            // The requester may have gone away; nothing to do then.
            let _ = job.reply.send(outcome);
        }
    }

    /// One inference over `encodings`, padded to the longest.
    fn infer(&mut self, encodings: &[&Encoding]) -> Result<Vec<f32>, ModelError> {
        let name = &self.spec.name;
        let batch = encodings.len();
        let sequence = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let inference_error = |reason: String| ModelError::Inference {
            name: name.clone(),
            reason,
        };
        let mut feed: Vec<(String, SessionInputValue<'static>)> =
            Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            let mut values = vec![0i64; batch * sequence];
            for (row, encoding) in encodings.iter().enumerate() {
                let start = row * sequence;
                let len = encoding.len();
                let target = &mut values[start..start + len];
                match input.kind {
                    InputKind::InputIds => target
                        .iter_mut()
                        .zip(encoding.get_ids())
                        .for_each(|(t, &v)| *t = v as i64),
                    InputKind::AttentionMask => target
                        .iter_mut()
                        .zip(encoding.get_attention_mask())
                        .for_each(|(t, &v)| *t = v as i64),
                    InputKind::TokenTypeIds => target
                        .iter_mut()
                        .zip(encoding.get_type_ids())
                        .for_each(|(t, &v)| *t = v as i64),
                    InputKind::PositionIds => target
                        .iter_mut()
                        .enumerate()
                        .for_each(|(i, t)| *t = i as i64),
                }
                if input.kind == InputKind::InputIds {
                    values[start + len..start + sequence].fill(self.pad_id as i64);
                }
            }
            let shape = [batch as i64, sequence as i64];
            let value: SessionInputValue<'static> = match input.integer_type {
                IntegerType::I64 => Tensor::from_array((shape, values))
                    .map_err(|e| inference_error(e.to_string()))?
                    .into(),
                IntegerType::I32 => {
                    let narrowed: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
                    Tensor::from_array((shape, narrowed))
                        .map_err(|e| inference_error(e.to_string()))?
                        .into()
                }
            };
            feed.push((input.name.clone(), value));
        }

        let started = Instant::now();
        let outputs = self
            .session
            .run(feed)
            .map_err(|e| inference_error(e.to_string()))?;
        metrics::histogram!(metric::RM_INFERENCE_SECONDS, "reward_model" => name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::RM_BATCH_SIZE, "reward_model" => name.clone())
            .record(batch as f64);
        metrics::histogram!(metric::RM_PADDED_TOKENS, "reward_model" => name.clone())
            .record((batch * sequence) as f64);
        metrics::histogram!(metric::RM_TOKENS, "reward_model" => name.clone())
            .record(encodings.iter().map(|e| e.len()).sum::<usize>() as f64);
        let output = outputs
            .get(&self.output_name)
            .ok_or_else(|| inference_error(format!("no output {:?}", self.output_name)))?;
        let (shape, data) = output.try_extract_tensor::<f32>().map_err(|e| {
            inference_error(format!(
                "output {:?}: {e} (expected float32)",
                self.output_name
            ))
        })?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        let width = match dims.as_slice() {
            [rows] if *rows as usize == batch => 1,
            [rows, width] if *rows as usize == batch => *width as usize,
            _ => {
                return Err(inference_error(format!(
                    "output {:?} has shape {dims:?}; expected [{batch}] or [{batch}, n]",
                    self.output_name
                )));
            }
        };
        let (index, other) = (self.spec.output_index, self.spec.output_other_index);
        let needed = match self.spec.score {
            ScoreRead::Difference => index.max(other),
            ScoreRead::Index | ScoreRead::Softmax => index,
        };
        if needed >= width {
            return Err(ModelError::InvalidSpec {
                name: name.clone(),
                reason: format!(
                    "output index {needed} is out of range for output {:?} of shape {dims:?}",
                    self.output_name
                ),
            });
        }
        Ok((0..batch)
            .map(|row| {
                let values = &data[row * width..(row + 1) * width];
                match self.spec.score {
                    ScoreRead::Index => values[index],
                    ScoreRead::Difference => values[index] - values[other],
                    ScoreRead::Softmax => {
                        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let total: f32 = values.iter().map(|v| (v - max).exp()).sum();
                        (values[index] - max).exp() / total
                    }
                }
            })
            .collect())
    }
}

/// A session on the spec's execution provider: (session, provider label). An unavailable
/// provider fails with ONNX Runtime's reason, or falls back to CPU with a warning when the
/// spec allows it.
fn build_session(
    spec: &RewardModelSpec,
    environment: &ort::environment::Environment,
) -> Result<(Session, String), ModelError> {
    let load_error = |reason: String| ModelError::Load {
        name: spec.name.clone(),
        reason,
    };
    let cpu = || -> Result<Session, ModelError> {
        let mut builder = Session::builder(environment).map_err(|e| load_error(e.to_string()))?;
        if spec.intra_threads > 0 {
            builder = builder
                .with_intra_threads(spec.intra_threads)
                .map_err(|e| load_error(e.to_string()))?;
        }
        builder
            .commit_from_file(&spec.model)
            .map_err(|e| load_error(e.to_string()))
    };
    let (dispatch, label) = match spec.provider {
        Provider::Cpu => return Ok((cpu()?, "cpu".to_string())),
        Provider::Cuda => (
            ort::ep::CUDA::default()
                .with_device_id(spec.device_id)
                .build()
                .error_on_failure(),
            format!("cuda:{}", spec.device_id),
        ),
        Provider::Tensorrt => (
            ort::ep::TensorRT::default()
                .with_device_id(spec.device_id)
                .build()
                .error_on_failure(),
            format!("tensorrt:{}", spec.device_id),
        ),
    };
    let accelerated = (|| -> Result<Session, String> {
        let mut builder = Session::builder(environment).map_err(|e| e.to_string())?;
        if spec.intra_threads > 0 {
            builder = builder
                .with_intra_threads(spec.intra_threads)
                .map_err(|e| e.to_string())?;
        }
        builder
            .with_execution_providers([dispatch])
            .map_err(|e| e.to_string())?
            .commit_from_file(&spec.model)
            .map_err(|e| e.to_string())
    })();
    match accelerated {
        Ok(session) => Ok((session, label)),
        Err(reason) if spec.fallback_to_cpu => {
            tracing::warn!(reward_model = %spec.name, provider = %label, %reason, "execution provider unavailable; running on CPU (fallback_to_cpu)");
            Ok((cpu()?, format!("cpu (fallback from {label})")))
        }
        Err(reason) => Err(load_error(format!("execution provider {label}: {reason}"))),
    }
}

fn load_tokenizer(spec: &RewardModelSpec) -> Result<Tokenizer, ModelError> {
    let error = |reason: String| ModelError::Tokenizer {
        name: spec.name.clone(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(&spec.tokenizer)
        .map_err(|e| error(format!("{}: {e}", spec.tokenizer.display())))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: spec.max_length,
            strategy: TruncationStrategy::LongestFirst,
            direction: match spec.truncation_side {
                TruncationSide::Left => TruncationDirection::Left,
                TruncationSide::Right => TruncationDirection::Right,
            },
            ..TruncationParams::default()
        }))
        .map_err(|e| error(e.to_string()))?;
    Ok(tokenizer)
}

fn model_input(model: &str, name: &str, dtype: &ValueType) -> Result<ModelInput, ModelError> {
    let kind = match name {
        "input_ids" => InputKind::InputIds,
        "attention_mask" => InputKind::AttentionMask,
        "token_type_ids" => InputKind::TokenTypeIds,
        "position_ids" => InputKind::PositionIds,
        other => {
            return Err(ModelError::Load {
                name: model.to_string(),
                reason: format!(
                    "unsupported model input {other:?}; supported: input_ids, attention_mask, token_type_ids, position_ids"
                ),
            });
        }
    };
    let integer_type = match dtype.tensor_type() {
        Some(TensorElementType::Int64) => IntegerType::I64,
        Some(TensorElementType::Int32) => IntegerType::I32,
        other => {
            return Err(ModelError::Load {
                name: model.to_string(),
                reason: format!("input {name:?} has type {other:?}; expected int64 or int32"),
            });
        }
    };
    Ok(ModelInput {
        name: name.to_string(),
        kind,
        integer_type,
    })
}
