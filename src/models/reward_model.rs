//! One loaded reward model: an ONNX Runtime session and a tokenizer owned by a worker
//! thread, fed score jobs through a bounded queue.
//!
//! Loading validates before anything is published: the spec, the files, the session's
//! inputs (`input_ids` required; `attention_mask`, `token_type_ids` fed when the model
//! declares them; int64 or int32 as declared), the score output, and a probe run on a
//! short input that checks the output's shape against `output_index`.
//!
//! Cost per job (one query): tokenization of `n` (prompt, response) pairs and one
//! inference over a `[n, longest]` batch padded with the tokenizer's pad id (masked out by
//! `attention_mask`). Cross-query batching is still to come.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};
use tokenizers::{Encoding, Tokenizer, TruncationParams, TruncationStrategy};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::{InputFormat, ModelError, RewardModelSpec, runtime};
use crate::telemetry::metric;

/// Execution provider of this version's sessions.
pub const PROVIDER_CPU: &str = "cpu";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputKind {
    InputIds,
    AttentionMask,
    TokenTypeIds,
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
        let scorer = Scorer::new(spec.clone())?;
        let input_names = scorer.inputs.iter().map(|i| i.name.clone()).collect();
        let output_name = scorer.output_name.clone();
        let (jobs, queue) = sync_channel(spec.queue_capacity);
        let queue_depth = Arc::new(AtomicUsize::new(0));
        let depth = queue_depth.clone();
        std::thread::Builder::new()
            .name(format!("rm-{}", spec.name))
            .spawn(move || run_worker(scorer, queue, depth))
            .map_err(|e| ModelError::Load {
                name: spec.name.clone(),
                reason: format!("cannot start worker thread: {e}"),
            })?;
        tracing::info!(reward_model = %spec.name, model = %spec.model.display(), "reward model loaded");
        Ok(Self {
            spec,
            source,
            input_names,
            output_name,
            jobs,
            queue_depth,
        })
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
        answer
            .instrument(tracing::debug_span!("await_scores"))
            .await
            .unwrap_or(Err(ModelError::WorkerStopped { name }))
    }
}

fn run_worker(mut scorer: Scorer, queue: Receiver<ScoreJob>, depth: Arc<AtomicUsize>) {
    let name = scorer.spec.name.clone();
    while let Ok(job) = queue.recv() {
        let remaining = depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        metrics::gauge!(metric::RM_QUEUE_DEPTH, "reward_model" => name.clone())
            .set(remaining as f64);
        metrics::histogram!(metric::RM_QUEUE_SECONDS, "reward_model" => name.clone())
            .record(job.enqueued.elapsed().as_secs_f64());
        if job
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
            || job.reply.is_closed()
        {
            // Nobody waits for this any more (deadline passed, client gone): skip the work.
            let _ = job
                .reply
                .send(Err(ModelError::DeadlineExceeded { name: name.clone() }));
            metrics::counter!(metric::RM_REQUESTS, "reward_model" => name.clone(), "status" => "dropped").increment(1);
            continue;
        }
        let result = job
            .span
            .in_scope(|| scorer.score(&job.prompt, &job.responses));
        let status = if result.is_ok() { "ok" } else { "error" };
        if let Err(error) = &result {
            job.span
                .in_scope(|| tracing::warn!(%error, "scoring failed"));
        }
        metrics::counter!(metric::RM_REQUESTS, "reward_model" => name.clone(), "status" => status)
            .increment(1);
        // The requester may have gone away (deadline, disconnect); nothing to do then.
        let _ = job.reply.send(result);
    }
    drop(scorer);
    crate::memory::release_freed_memory();
    tracing::info!(reward_model = %name, "reward model worker stopped");
}

/// Session, tokenizer and input layout of one model; lives on its worker thread.
struct Scorer {
    spec: RewardModelSpec,
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
        let session = Session::builder(environment)
            .map_err(|e| load_error(e.to_string()))?
            .commit_from_file(&spec.model)
            .map_err(|e| load_error(e.to_string()))?;
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

    fn score(&mut self, prompt: &str, responses: &[String]) -> Result<Vec<f32>, ModelError> {
        let name = &self.spec.name;
        let started = Instant::now();
        let encodings = responses
            .iter()
            .map(|response| match self.spec.input_format {
                InputFormat::Pair => self.tokenizer.encode((prompt, response.as_str()), true),
                InputFormat::Template => self
                    .tokenizer
                    .encode(self.spec.render(prompt, response), true),
            })
            .collect::<Result<Vec<Encoding>, _>>()
            .map_err(|e| ModelError::Tokenizer {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        metrics::histogram!(metric::RM_TOKENIZE_SECONDS, "reward_model" => name.clone())
            .record(started.elapsed().as_secs_f64());

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
                let source: Vec<i64> = match input.kind {
                    InputKind::InputIds => encoding.get_ids().iter().map(|&v| v as i64).collect(),
                    InputKind::AttentionMask => encoding
                        .get_attention_mask()
                        .iter()
                        .map(|&v| v as i64)
                        .collect(),
                    InputKind::TokenTypeIds => {
                        encoding.get_type_ids().iter().map(|&v| v as i64).collect()
                    }
                };
                let start = row * sequence;
                values[start..start + source.len()].copy_from_slice(&source);
                if input.kind == InputKind::InputIds {
                    values[start + source.len()..start + sequence].fill(self.pad_id as i64);
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
        let index = self.spec.output_index;
        if index >= width {
            return Err(ModelError::InvalidSpec {
                name: name.clone(),
                reason: format!(
                    "output_index {index} is out of range for output {:?} of shape {dims:?}",
                    self.output_name
                ),
            });
        }
        Ok((0..batch).map(|row| data[row * width + index]).collect())
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
        other => {
            return Err(ModelError::Load {
                name: model.to_string(),
                reason: format!(
                    "unsupported model input {other:?}; supported: input_ids, attention_mask, token_type_ids"
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
