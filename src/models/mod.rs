//! Reward models: specs, ONNX Runtime sessions on worker threads, tokenization, and the
//! registry of loaded models.
//!
//! - [`spec`]: what an RM is (files, how its input text is built, where its score is read:
//!   a classifier's output, or a causal LM's likelihood, implicit reward or judge rating).
//! - `causal_lm`: what a causal LM's scores are made of, whoever runs it: the tokens of the
//!   response that are scored, the row per response, a judge's ratings folded into one.
//! - [`chat`]: chat-template input (HF `chat_template` rendered with minijinja).
//! - [`runtime`]: loading ONNX Runtime's shared library once per process.
//! - [`reward_model`]: one loaded RM: its job queue, the async `score` call, its metadata.
//! - `worker`: the worker threads and the batcher that cuts queued jobs into inferences.
//! - `session`: one ONNX Runtime session: provider, inputs, output, probe, inference; for a
//!   causal LM the per-response sums of its `token_logprobs` (and its reference model's).
//! - `tokenize`: text to tokens (tokenizer, template or chat template, pad id); for a causal
//!   LM the prompt part and the response part as two sequences of one encoding.
//! - [`score_normalization`]: an RM's scores on the ensemble's common scale.
//! - [`encoder`]: one loaded encoder (prompt -> a router's context) on the same workers.
//! - [`remote`]: an RM served by an engine, whatever the protocol: its queue, request
//!   coalescing, deadlines, endpoints and health.
//! - [`kserve`]: the Open Inference Protocol over gRPC (backend `kserve_v2`: Triton, KServe,
//!   MLServer, OpenVINO Model Server).
//! - [`vllm`]: vLLM's HTTP API (backend `vllm`): causal LMs scored from prompt log-probs,
//!   classifiers through `/pooling`.
//! - [`registry`]: loaded RMs and encoders by name.
//!
//! Async ends at a channel: the service sends a job and awaits a oneshot reply;
//! tokenization and inference never run on the tokio runtime, and loading runs on a
//! blocking thread ([`RewardModel::load_off_runtime`], [`RewardModels::open`]).

mod causal_lm;
pub mod chat;
pub mod encoder;
pub mod kserve;
pub mod registry;
pub mod remote;
pub mod reward_model;
pub mod runtime;
pub mod score_normalization;
mod session;
pub mod spec;
mod tokenize;
pub mod vllm;
mod worker;

pub use encoder::{Encoder, EncoderSpec};
pub use registry::{Encoders, RewardModels};
pub use reward_model::{ModelSource, RewardModel};
pub use session::Pooling;
pub use spec::{Backend, InputFormat, KserveV2Spec, RemoteInput, RewardModelSpec, VllmSpec};

/// What went wrong loading or running a reward model.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library not found at {path}: run scripts/fetch-onnxruntime.sh (or set ORT_DYLIB_PATH)"
    )]
    RuntimeMissing { path: String },
    #[error("ONNX Runtime failed to initialize from {path}: {reason}")]
    RuntimeInit { path: String, reason: String },
    #[error("reward model {name:?}: {reason}")]
    InvalidSpec { name: String, reason: String },
    #[error("reward model {name:?}: cannot read {path}: {reason}")]
    MissingFile {
        name: String,
        path: String,
        reason: String,
    },
    #[error("reward model {name:?}: ONNX Runtime refused the model: {reason}")]
    Load { name: String, reason: String },
    #[error("reward model {name:?}: tokenizer: {reason}")]
    Tokenizer { name: String, reason: String },
    #[error("reward model {name:?}: inference failed: {reason}")]
    Inference { name: String, reason: String },
    #[error("reward model {name:?} queue is full ({capacity} jobs waiting); retry later")]
    QueueFull { name: String, capacity: usize },
    #[error("reward model {name:?} is not loaded")]
    UnknownRewardModel { name: String },
    #[error("reward model {name:?} already exists")]
    RewardModelExists { name: String },
    #[error("reward model {name:?} stopped before answering")]
    WorkerStopped { name: String },
    #[error(
        "reward model {name:?}: the request's deadline passed before scoring; nothing was recorded"
    )]
    DeadlineExceeded { name: String },
    #[error("the server already serves {max} reward models (limits.max_reward_models = {max})")]
    TooManyRewardModels { max: usize },
    #[error("encoder {name:?} is not loaded")]
    UnknownEncoder { name: String },
    #[error("encoder {name:?} already exists")]
    EncoderExists { name: String },
    /// An encoder that routers take their contexts from cannot be removed.
    #[error("encoder {name:?} is used by routers {routers:?}; delete them first")]
    EncoderInUse { name: String, routers: Vec<String> },
    /// A remote RM's engine refused it at add time (unreachable, model unknown or not ready,
    /// the probe inference failed): the engine's reason.
    #[error("reward model {name:?}: the inference engine refused it: {reason}")]
    EngineRefused { name: String, reason: String },
    /// A remote RM is down (routers skip it until it recovers) or its engine failed this
    /// request.
    #[error("reward model {name:?} is unavailable: {reason}")]
    Unavailable { name: String, reason: String },
    /// The blocking task loading the model panicked or was cancelled.
    #[error("reward model {name:?}: internal task failed: {reason}")]
    LoaderFailed { name: String, reason: String },
}
