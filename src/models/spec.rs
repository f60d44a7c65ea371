//! A reward model's spec: the same shape in the config file and (later) AddRewardModel.
//!
//! ```toml
//! [[reward_models]]
//! name = "polite"
//! model = "models/polite/model.onnx"        # relative to the config file
//! tokenizer = "models/tokenizer.json"
//! input_format = "pair"                      # or "template"
//! # template = "Question: {prompt}\nAnswer: {response}"   (input_format = "template")
//! max_length = 512
//! output = "logits"                          # default: the model's first output
//! output_index = 0                           # index in the output's last dimension
//! score = "index"                            # or "difference", "softmax"; a causal LM:
//!                                            #   "log_likelihood", "mean_log_likelihood",
//!                                            #   { implicit = { reference_model = "..",
//!                                            #     beta = 0.1 } }, or a judge:
//!                                            #   { judge = { template = "..", ratings =
//!                                            #     ["1", .., "5"] } } (docs/llm-reward-models.md)
//! score_normalization = "running"            # ensemble scale: "per_query" | "running" |
//!                                            #   { affine = { scale = 2.0, shift = 0.0 } }
//! truncation_side = "left"                   # keep the end of the response
//! provider = "cpu"                           # or "cuda", "tensorrt" (device_id = 0)
//! workers = 1                                # sessions sharing the queue
//! max_batch_sequences = 64                   # batching across requests
//! max_batch_tokens = 1024                    # padded tokens per inference (CPU; raise on GPU)
//! max_batch_delay_ms = 0                     # wait for more jobs (default: none)
//! ```
//!
//! The same spec serves a model hosted by an inference engine (Triton, KServe, MLServer) over
//! the Open Inference Protocol: `backend` says where the model runs, and the remote kind
//! needs no `model` file ([`KserveV2Spec`]):
//!
//! ```toml
//! [[reward_models]]
//! name = "skywork"
//! tokenizer = "models/skywork/tokenizer.json" # send = "tokens", or a chat template's
//! input_format = "chat"
//! output = "score"
//! [reward_models.backend.kserve_v2]
//! endpoints = ["http://triton-0:8001", "http://triton-1:8001"]   # round-robin
//! model_name = "skywork"
//! send = "tokens"                            # or "texts" (a BYTES tensor, engine tokenizes)
//! ```
//!
//! Or by vLLM's HTTP server ([`VllmSpec`]): a causal LM scored by likelihood, implicit
//! reward or as a judge (tokenized here, log-probs from vLLM), or a classifier (`/pooling`):
//!
//! ```toml
//! [[reward_models]]
//! name = "zephyr"
//! tokenizer = "models/zephyr/tokenizer.json"  # the served model's; causal LMs are tokenized here
//! input_format = "chat"
//! score = { implicit = { beta = 0.1 } }      # the reference is on vLLM too:
//! [reward_models.backend.vllm]
//! endpoints = ["http://vllm-0:8000"]
//! model_name = "zephyr-7b-beta"
//! reference_endpoints = ["http://vllm-ref-0:8000"]
//! reference_model_name = "mistral-7b-sft-beta"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ModelError;
pub use super::kserve::spec::{KserveV2Spec, RemoteInput};
pub use super::vllm::spec::VllmSpec;

/// `max_length` when a spec leaves it out.
pub const DEFAULT_MAX_LENGTH: usize = 512;
/// `queue_capacity` when a spec leaves it out.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;

fn default_max_length() -> usize {
    DEFAULT_MAX_LENGTH
}

pub(super) fn default_queue_capacity() -> usize {
    DEFAULT_QUEUE_CAPACITY
}

pub(super) fn default_workers() -> usize {
    1
}

pub(super) fn default_max_batch_sequences() -> usize {
    64
}

/// Chosen from measurement on CPU (`cargo bench --bench scoring`, int8 MiniLM RM, 2 cores):
/// larger budgets pad more than batching gains there; GPUs want far larger budgets.
pub(super) fn default_max_batch_tokens() -> usize {
    1024
}

/// No waiting: a job starts as soon as a worker is free, and batches form from what queued
/// while the workers were busy (continuous batching). Measured in `cargo bench --bench
/// scoring`: the 2 ms it used to wait cost one client 2 ms per request and gained nothing
/// under concurrency.
pub(super) fn default_max_batch_delay_ms() -> u64 {
    0
}

/// Where ONNX Runtime runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    #[default]
    Cpu,
    Cuda,
    Tensorrt,
}

/// How the score is read: from a classifier's output (its last dimension), or from a
/// causal LM's per-token log-probabilities of the response (the graph's `token_logprobs`
/// output, `[batch, tokens - 1]`: log π(token t+1 | tokens ..= t); `scripts/export_causal_lm.py`
/// writes such graphs). New kinds are appended: the state log stores the variant's index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreRead {
    /// `output[output_index]`.
    #[default]
    Index,
    /// `output[output_index] - output[output_other_index]`.
    Difference,
    /// softmax over the last dimension, at `output_index`.
    Softmax,
    /// A causal LM: Σ log π(response tokens | prompt) (LASeR's reference code scores its
    /// RMs by this, as the negative LM loss of the response).
    LogLikelihood,
    /// A causal LM: the same sum divided by the response's token count.
    MeanLogLikelihood,
    /// A DPO-trained causal LM's implicit reward, RewardBench's definition:
    /// β·(Σ log π(response | prompt) − Σ log π_ref(response | prompt)).
    Implicit(ImplicitReward),
    /// A chat model as a judge (LLM-as-judge): asked to rate the response on a rubric, its
    /// score is the probability-weighted mean of the ratings, each rating's probability its
    /// continuation's likelihood normalized over the ratings (not a parsed string).
    Judge(JudgeRubric),
}

/// What a judge is asked, and the ratings it may answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeRubric {
    /// The judge's instruction, with `{prompt}` and `{response}`: the user turn of the chat
    /// template (`input_format = "chat"`), else the text the rating continues.
    pub template: String,
    /// The rating strings (each a number, e.g. "1" to "5"; 2 to 16 of them): a rating's
    /// value is its number.
    pub ratings: Vec<String>,
}

impl JudgeRubric {
    /// The judge's instruction for one (prompt, response).
    pub fn render(&self, prompt: &str, response: &str) -> String {
        self.template
            .replace("{prompt}", prompt)
            .replace("{response}", response)
    }

    /// Each rating's value (checked by `RewardModelSpec::validate`).
    pub fn values(&self) -> Vec<f64> {
        self.ratings
            .iter()
            .map(|rating| rating.trim().parse().unwrap_or(f64::NAN))
            .collect()
    }
}

/// The reference model of an implicit reward.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImplicitReward {
    /// The reference policy's ONNX graph (same inputs and `token_logprobs` output), relative
    /// to the config file (backend `onnx`; a vLLM RM names its reference's servers in
    /// `backend.vllm`).
    #[serde(default)]
    pub reference_model: PathBuf,
    /// Its tokenizer, when it has its own file: it must be the policy's (same vocabulary);
    /// by default the policy's tokenizer is used.
    #[serde(default)]
    pub reference_tokenizer: Option<PathBuf>,
    /// β > 0 (DPO's temperature).
    pub beta: f64,
}

impl ScoreRead {
    /// Whether the model is a causal LM scored by the log-likelihood of the response.
    pub fn is_causal_lm(&self) -> bool {
        matches!(
            self,
            ScoreRead::LogLikelihood
                | ScoreRead::MeanLogLikelihood
                | ScoreRead::Implicit(_)
                | ScoreRead::Judge(_)
        )
    }

    /// The name the config file uses.
    pub fn name(&self) -> &'static str {
        match self {
            ScoreRead::Index => "index",
            ScoreRead::Difference => "difference",
            ScoreRead::Softmax => "softmax",
            ScoreRead::LogLikelihood => "log_likelihood",
            ScoreRead::MeanLogLikelihood => "mean_log_likelihood",
            ScoreRead::Implicit(_) => "implicit",
            ScoreRead::Judge(_) => "judge",
        }
    }
}

/// The output a causal LM's graph must have.
pub const TOKEN_LOGPROBS_OUTPUT: &str = "token_logprobs";

/// How an RM's scores are put on a common scale for the ensemble policy. Externally tagged
/// (the state log's postcard encoding cannot read internally tagged enums):
/// `"per_query"`, `"running"` or `{ affine = { scale = .., shift = .. } }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreNormalization {
    /// Standardize over each query's responses (the ensemble's default).
    #[default]
    PerQuery,
    /// `scale · score + shift`.
    Affine { scale: f64, shift: f64 },
    /// `(score − mean) / std` with the RM's running mean and std over every score it made.
    Running,
}

/// Which end of a too-long input is cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationSide {
    /// Cut the start, keep the end of the response (the default).
    #[default]
    Left,
    Right,
}

/// How the model's input text is built from a prompt and one response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Tokenizer pair encoding of (prompt, response): cross-encoders and classifiers.
    Pair,
    /// One text from `template`, with `{prompt}` and `{response}` replaced.
    Template,
    /// The HF `chat_template` of `tokenizer_config` over [user: prompt, assistant:
    /// response] (LLM-based RMs such as Skywork-Reward or ArmoRM).
    Chat,
    /// The text alone (the response for an RM, the prompt for an encoder).
    Text,
}

impl InputFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            InputFormat::Pair => "pair",
            InputFormat::Template => "template",
            InputFormat::Chat => "chat",
            InputFormat::Text => "text",
        }
    }
}

/// Where a reward model runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// In process, on ONNX Runtime (`model`, `provider`, `workers`).
    #[default]
    Onnx,
    /// On an inference engine speaking the Open Inference Protocol (KServe v2) over gRPC.
    KserveV2(Box<KserveV2Spec>),
    /// On vLLM's HTTP server (OpenAI-compatible API, `/v1/completions` and `/pooling`).
    Vllm(Box<VllmSpec>),
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Onnx => "onnx",
            Backend::KserveV2(_) => "kserve_v2",
            Backend::Vllm(_) => "vllm",
        }
    }

    /// Whether the model runs on an engine (not in process).
    pub fn is_remote(&self) -> bool {
        !matches!(self, Backend::Onnx)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardModelSpec {
    /// Arm name; unique per server. `[A-Za-z0-9._-]`, 1 to 64 characters.
    pub name: String,
    /// Path of `model.onnx` (backend `onnx`; empty for a remote model).
    #[serde(default)]
    pub model: PathBuf,
    /// Path of the model's `tokenizer.json`. Padding and truncation baked into the file
    /// are ignored: `max_length` decides. Empty only for a remote model sent texts.
    #[serde(default)]
    pub tokenizer: PathBuf,
    pub input_format: InputFormat,
    /// `tokenizer_config.json` holding the chat template (`input_format = "chat"`); by
    /// default the one next to `tokenizer`.
    #[serde(default)]
    pub tokenizer_config: Option<PathBuf>,
    /// Required with `input_format = "template"`.
    #[serde(default)]
    pub template: Option<String>,
    /// Longest token sequence fed to the model (longer inputs are truncated).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Output the score is read from; the model's first output when unset.
    #[serde(default)]
    pub output: Option<String>,
    /// Index in the output's last dimension (`[batch, n]` outputs); 0 for `[batch]` and
    /// `[batch, 1]`.
    #[serde(default)]
    pub output_index: usize,
    /// Score jobs allowed to wait for this RM's workers; a full queue answers
    /// RESOURCE_EXHAUSTED.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Normalization for the ensemble policy: `"per_query"` (default),
    /// `{ affine = { scale = .., shift = .. } }` or `"running"`.
    #[serde(default)]
    pub score_normalization: ScoreNormalization,
    /// How the score is read: `index` (default), `difference`, `softmax` (classifiers);
    /// `log_likelihood`, `mean_log_likelihood` or
    /// `{ implicit = { reference_model = "..", beta = 0.1 } }` (causal LMs).
    #[serde(default)]
    pub score: ScoreRead,
    /// The subtracted index for `score = "difference"`.
    #[serde(default)]
    pub output_other_index: usize,
    /// `left` (default: keep the end of the response) or `right`.
    #[serde(default)]
    pub truncation_side: TruncationSide,
    /// `cpu` (default), `cuda` or `tensorrt`.
    #[serde(default)]
    pub provider: Provider,
    /// GPU ordinal for `cuda` / `tensorrt`.
    #[serde(default)]
    pub device_id: i32,
    /// When the provider is unavailable, load on CPU with a warning instead of failing.
    #[serde(default)]
    pub fallback_to_cpu: bool,
    /// ONNX Runtime intra-op threads per session (0: ONNX Runtime's default).
    #[serde(default)]
    pub intra_threads: usize,
    /// Sessions (each on its own worker thread) sharing the queue.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Batching across requests: at most this many sequences per inference...
    #[serde(default = "default_max_batch_sequences")]
    pub max_batch_sequences: usize,
    /// ...and this many padded tokens (sequences × longest) per inference...
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    /// ...waiting at most this long for more work once a job arrives.
    #[serde(default = "default_max_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
    /// `onnx` (default: in process) or `{ kserve_v2 = { .. } }` (an inference engine).
    #[serde(default)]
    pub backend: Backend,
}

impl RewardModelSpec {
    /// Longest reward model name accepted.
    pub const MAX_NAME_LEN: usize = 64;

    /// A spec with every optional field at its default.
    pub fn new(
        name: String,
        model: PathBuf,
        tokenizer: PathBuf,
        input_format: InputFormat,
    ) -> Self {
        Self {
            name,
            model,
            tokenizer,
            input_format,
            tokenizer_config: None,
            template: None,
            max_length: DEFAULT_MAX_LENGTH,
            output: None,
            output_index: 0,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            score_normalization: ScoreNormalization::PerQuery,
            score: ScoreRead::Index,
            output_other_index: 0,
            truncation_side: TruncationSide::Left,
            provider: Provider::Cpu,
            device_id: 0,
            fallback_to_cpu: false,
            intra_threads: 0,
            workers: default_workers(),
            max_batch_sequences: default_max_batch_sequences(),
            max_batch_tokens: default_max_batch_tokens(),
            max_batch_delay_ms: default_max_batch_delay_ms(),
            backend: Backend::Onnx,
        }
    }

    /// The engine and model of a KServe-v2 RM; `None` otherwise.
    pub fn remote(&self) -> Option<&KserveV2Spec> {
        match &self.backend {
            Backend::KserveV2(remote) => Some(remote),
            Backend::Onnx | Backend::Vllm(_) => None,
        }
    }

    /// Resolve relative file paths against `base` (the config file's directory).
    pub fn resolve_paths(mut self, base: &Path) -> Self {
        let set = |path: &PathBuf| !path.as_os_str().is_empty();
        if set(&self.model) && self.model.is_relative() {
            self.model = base.join(&self.model);
        }
        if set(&self.tokenizer) && self.tokenizer.is_relative() {
            self.tokenizer = base.join(&self.tokenizer);
        }
        let tls_ca = match &mut self.backend {
            Backend::KserveV2(remote) => remote.tls_ca.as_mut(),
            Backend::Vllm(vllm) => vllm.tls_ca.as_mut(),
            Backend::Onnx => None,
        };
        if let Some(ca) = tls_ca
            && ca.is_relative()
        {
            *ca = base.join(&*ca);
        }
        if let Some(config) = &self.tokenizer_config
            && config.is_relative()
        {
            self.tokenizer_config = Some(base.join(config));
        }
        if let ScoreRead::Implicit(implicit) = &mut self.score {
            if set(&implicit.reference_model) && implicit.reference_model.is_relative() {
                implicit.reference_model = base.join(&implicit.reference_model);
            }
            if let Some(tokenizer) = &implicit.reference_tokenizer
                && tokenizer.is_relative()
            {
                implicit.reference_tokenizer = Some(base.join(tokenizer));
            }
        }
        self
    }

    /// Checks that need no files: name, template, limits.
    pub fn validate(&self) -> Result<(), ModelError> {
        let invalid = |reason: String| ModelError::InvalidSpec {
            name: self.name.clone(),
            reason,
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= Self::MAX_NAME_LEN
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(invalid(format!(
                "name must be 1 to {} characters from [A-Za-z0-9._-]",
                Self::MAX_NAME_LEN
            )));
        }
        match (&self.input_format, &self.template) {
            (InputFormat::Template, None) => {
                return Err(invalid(
                    "input_format \"template\" needs a template with {prompt} and {response}"
                        .into(),
                ));
            }
            (InputFormat::Template, Some(t)) if !t.contains("{response}") => {
                return Err(invalid("template must contain {response}".into()));
            }
            (InputFormat::Pair | InputFormat::Chat | InputFormat::Text, Some(_)) => {
                return Err(invalid(
                    "template is only used with input_format = \"template\"".into(),
                ));
            }
            _ => {}
        }
        if !(8..=131_072).contains(&self.max_length) {
            return Err(invalid(format!(
                "max_length {} is outside 8..=131072",
                self.max_length
            )));
        }
        if self.queue_capacity == 0 {
            return Err(invalid("queue_capacity must be > 0".into()));
        }
        if !(1..=64).contains(&self.workers) {
            return Err(invalid(format!(
                "workers {} is outside 1..=64",
                self.workers
            )));
        }
        if self.max_batch_sequences == 0 || self.max_batch_tokens == 0 {
            return Err(invalid(
                "max_batch_sequences and max_batch_tokens must be > 0".into(),
            ));
        }
        if self.max_batch_delay_ms > 1000 {
            return Err(invalid(format!(
                "max_batch_delay_ms {} exceeds 1000",
                self.max_batch_delay_ms
            )));
        }
        if let ScoreNormalization::Affine { scale, shift } = self.score_normalization
            && !(scale.is_finite() && scale != 0.0 && shift.is_finite())
        {
            return Err(invalid(
                "score_normalization: affine needs a finite, non-zero scale and a finite shift"
                    .into(),
            ));
        }
        if let ScoreRead::Implicit(implicit) = &self.score
            && !(implicit.beta.is_finite() && implicit.beta > 0.0)
        {
            return Err(invalid(format!(
                "score.implicit.beta {} must be a finite number > 0",
                implicit.beta
            )));
        }
        if let ScoreRead::Judge(rubric) = &self.score {
            if !(2..=16).contains(&rubric.ratings.len()) {
                return Err(invalid(format!(
                    "score.judge.ratings has {} ratings; give 2 to 16",
                    rubric.ratings.len()
                )));
            }
            if let Some(rating) = rubric
                .ratings
                .iter()
                .find(|rating| !rating.trim().parse::<f64>().is_ok_and(f64::is_finite))
            {
                return Err(invalid(format!(
                    "score.judge.ratings: {rating:?} is not a number (a rating's value is its number)"
                )));
            }
            if !rubric.template.contains("{response}") {
                return Err(invalid(
                    "score.judge.template must contain {response}".into(),
                ));
            }
        }
        if self.score.is_causal_lm() && matches!(self.backend, Backend::KserveV2(_)) {
            return Err(invalid(format!(
                "score = \"{}\" runs causal LMs in process (backend onnx) or on vLLM (backend vllm); a kserve_v2 engine serves classifier heads",
                self.score.name()
            )));
        }
        if self.score.is_causal_lm() && self.max_length < 2 {
            return Err(invalid(
                "max_length must be at least 2 for a causal LM (a token and its successor)".into(),
            ));
        }
        if let ScoreRead::Implicit(implicit) = &self.score
            && self.backend == Backend::Onnx
            && implicit.reference_model.as_os_str().is_empty()
        {
            return Err(invalid(
                "score.implicit.reference_model (the reference policy's ONNX file) is missing"
                    .into(),
            ));
        }
        if self.score == ScoreRead::Difference && self.output_other_index == self.output_index {
            return Err(invalid(
                "score = \"difference\" needs output_other_index != output_index".into(),
            ));
        }
        match &self.backend {
            Backend::Onnx if self.model.as_os_str().is_empty() => {
                Err(invalid("model (the ONNX file) is missing".into()))
            }
            Backend::Onnx if self.tokenizer.as_os_str().is_empty() => {
                Err(invalid("tokenizer is missing".into()))
            }
            Backend::Onnx => Ok(()),
            Backend::KserveV2(_) if !self.model.as_os_str().is_empty() => Err(invalid(
                "model is a local ONNX file: a kserve_v2 model lives on its engine".into(),
            )),
            Backend::KserveV2(remote) => remote
                .validate()
                .and_then(|()| check_remote_input("kserve_v2", remote.send, self))
                .map_err(invalid),
            Backend::Vllm(_) if !self.model.as_os_str().is_empty() => Err(invalid(
                "model is a local ONNX file: a vllm model lives on its servers".into(),
            )),
            Backend::Vllm(vllm) => vllm
                .validate()
                .and_then(|()| self.check_vllm(vllm))
                .map_err(invalid),
        }
    }

    /// What a vLLM RM's score kind needs of its `backend.vllm` table and tokenizer.
    fn check_vllm(&self, vllm: &VllmSpec) -> Result<(), String> {
        let implicit = matches!(self.score, ScoreRead::Implicit(_));
        if let ScoreRead::Implicit(reference) = &self.score
            && !reference.reference_model.as_os_str().is_empty()
        {
            return Err(format!(
                "score.implicit.reference_model {:?} is an ONNX file: a vllm RM's reference is vllm.reference_model_name on vllm.reference_endpoints",
                reference.reference_model
            ));
        }
        if implicit && vllm.reference_endpoints.is_empty() {
            return Err(
                "score = \"implicit\" on vllm needs vllm.reference_endpoints and vllm.reference_model_name (the reference model's servers)".into(),
            );
        }
        if !implicit && !vllm.reference_endpoints.is_empty() {
            return Err(format!(
                "vllm.reference_endpoints is only read by score = \"implicit\" (this RM's score is \"{}\")",
                self.score.name()
            ));
        }
        if self.score.is_causal_lm() {
            if self.tokenizer.as_os_str().is_empty() {
                return Err(format!(
                    "score = \"{}\" on vllm needs the served model's tokenizer: the response's tokens are found here",
                    self.score.name()
                ));
            }
            return Ok(());
        }
        check_remote_input("vllm", vllm.send, self)
    }

    /// The `tokenizer_config.json` a `chat` model's template comes from.
    pub fn tokenizer_config_path(&self) -> PathBuf {
        self.tokenizer_config.clone().unwrap_or_else(|| {
            self.tokenizer
                .parent()
                .unwrap_or(Path::new("."))
                .join("tokenizer_config.json")
        })
    }

    /// The text fed to a `template` model.
    pub fn render(&self, prompt: &str, response: &str) -> String {
        self.template
            .as_deref()
            .unwrap_or("{prompt}\n{response}")
            .replace("{prompt}", prompt)
            .replace("{response}", response)
    }
}

/// A reward model spec as logs and snapshots written before backends existed hold it (every
/// one of them in process on ONNX Runtime). Read only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardModelSpecV1 {
    name: String,
    model: PathBuf,
    tokenizer: PathBuf,
    input_format: InputFormat,
    tokenizer_config: Option<PathBuf>,
    template: Option<String>,
    max_length: usize,
    output: Option<String>,
    output_index: usize,
    queue_capacity: usize,
    score_normalization: ScoreNormalization,
    score: ScoreRead,
    output_other_index: usize,
    truncation_side: TruncationSide,
    provider: Provider,
    device_id: i32,
    fallback_to_cpu: bool,
    intra_threads: usize,
    workers: usize,
    max_batch_sequences: usize,
    max_batch_tokens: usize,
    max_batch_delay_ms: u64,
}

impl From<RewardModelSpecV1> for RewardModelSpec {
    fn from(old: RewardModelSpecV1) -> Self {
        Self {
            name: old.name,
            model: old.model,
            tokenizer: old.tokenizer,
            input_format: old.input_format,
            tokenizer_config: old.tokenizer_config,
            template: old.template,
            max_length: old.max_length,
            output: old.output,
            output_index: old.output_index,
            queue_capacity: old.queue_capacity,
            score_normalization: old.score_normalization,
            score: old.score,
            output_other_index: old.output_other_index,
            truncation_side: old.truncation_side,
            provider: old.provider,
            device_id: old.device_id,
            fallback_to_cpu: old.fallback_to_cpu,
            intra_threads: old.intra_threads,
            workers: old.workers,
            max_batch_sequences: old.max_batch_sequences,
            max_batch_tokens: old.max_batch_tokens,
            max_batch_delay_ms: old.max_batch_delay_ms,
            backend: Backend::Onnx,
        }
    }
}

/// What `send` needs of the RM's tokenizer and input format.
fn check_remote_input(
    backend: &str,
    send: RemoteInput,
    spec: &RewardModelSpec,
) -> Result<(), String> {
    match send {
        RemoteInput::Tokens if spec.tokenizer.as_os_str().is_empty() => {
            Err(format!("{backend}.send = \"tokens\" needs the RM's tokenizer"))
        }
        RemoteInput::Texts if spec.input_format == InputFormat::Pair => Err(
            "input_format \"pair\" cannot be sent as one text: use send = \"tokens\", or a template"
                .into(),
        ),
        RemoteInput::Texts
            if spec.input_format == InputFormat::Chat
                && spec.tokenizer.as_os_str().is_empty()
                && spec.tokenizer_config.is_none() =>
        {
            Err("input_format \"chat\" needs tokenizer_config (or tokenizer beside it)".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RewardModelSpec {
        toml::from_str(
            r#"
            name = "numeric"
            model = "numeric/model.onnx"
            tokenizer = "/abs/tokenizer.json"
            input_format = "template"
            template = "Q: {prompt} A: {response}"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_and_path_resolution() {
        let spec = spec().resolve_paths(Path::new("/etc/laser"));
        assert_eq!(spec.model, PathBuf::from("/etc/laser/numeric/model.onnx"));
        assert_eq!(spec.tokenizer, PathBuf::from("/abs/tokenizer.json"));
        assert_eq!(spec.max_length, 512);
        assert_eq!(spec.output, None);
        assert!(spec.validate().is_ok());
        assert_eq!(spec.render("2+2?", "4"), "Q: 2+2? A: 4");
    }

    /// The state log stores specs of hot-added RMs with postcard: every field must survive.
    #[test]
    fn specs_round_trip_through_the_state_log_encoding() {
        let mut full = spec();
        full.score_normalization = ScoreNormalization::Affine {
            scale: 2.0,
            shift: -1.0,
        };
        full.tokenizer_config = Some(PathBuf::from("/x/tokenizer_config.json"));
        full.provider = Provider::Cuda;
        for normalization in [
            ScoreNormalization::PerQuery,
            ScoreNormalization::Running,
            full.score_normalization,
        ] {
            let spec = RewardModelSpec {
                score_normalization: normalization,
                ..full.clone()
            };
            let bytes = postcard::to_stdvec(&spec).unwrap();
            assert_eq!(
                postcard::from_bytes::<RewardModelSpec>(&bytes).unwrap(),
                spec
            );
        }
        let parsed: RewardModelSpec = toml::from_str(
            "name = \"a\"\nmodel = \"m\"\ntokenizer = \"t\"\ninput_format = \"pair\"\nscore_normalization = { affine = { scale = 2.0, shift = -1.0 } }",
        )
        .unwrap();
        assert_eq!(parsed.score_normalization, full.score_normalization);
    }

    /// A spec logged before backends existed reads as the same in-process spec.
    #[test]
    fn specs_logged_before_backends_read_as_onnx() {
        let spec = spec();
        let old = RewardModelSpecV1 {
            name: spec.name.clone(),
            model: spec.model.clone(),
            tokenizer: spec.tokenizer.clone(),
            input_format: spec.input_format.clone(),
            tokenizer_config: None,
            template: spec.template.clone(),
            max_length: spec.max_length,
            output: None,
            output_index: 0,
            queue_capacity: spec.queue_capacity,
            score_normalization: spec.score_normalization,
            score: spec.score.clone(),
            output_other_index: 0,
            truncation_side: spec.truncation_side,
            provider: spec.provider,
            device_id: 0,
            fallback_to_cpu: false,
            intra_threads: 0,
            workers: 1,
            max_batch_sequences: spec.max_batch_sequences,
            max_batch_tokens: spec.max_batch_tokens,
            max_batch_delay_ms: spec.max_batch_delay_ms,
        };
        let bytes = postcard::to_stdvec(&old).unwrap();
        let read: RewardModelSpec = postcard::from_bytes::<RewardModelSpecV1>(&bytes)
            .unwrap()
            .into();
        assert_eq!(read, spec);
    }

    #[test]
    fn causal_lm_scores_parse_resolve_round_trip_and_say_what_is_wrong() {
        let implicit: RewardModelSpec = toml::from_str(
            r#"
            name = "zephyr"
            model = "zephyr/model.onnx"
            tokenizer = "zephyr/tokenizer.json"
            input_format = "chat"
            score = { implicit = { reference_model = "ref/model.onnx", beta = 0.1 } }
            "#,
        )
        .unwrap();
        let implicit = implicit.resolve_paths(Path::new("/etc/laser"));
        implicit.validate().unwrap();
        let ScoreRead::Implicit(reference) = &implicit.score else {
            panic!("{:?}", implicit.score)
        };
        assert_eq!(
            reference.reference_model,
            PathBuf::from("/etc/laser/ref/model.onnx")
        );
        assert!(implicit.score.is_causal_lm());
        // The state log keeps it (postcard), and older variants keep their indices.
        let bytes = postcard::to_stdvec(&implicit).unwrap();
        assert_eq!(
            postcard::from_bytes::<RewardModelSpec>(&bytes).unwrap(),
            implicit
        );
        assert_eq!(postcard::to_stdvec(&ScoreRead::Softmax).unwrap(), vec![2]);
        let likelihood: RewardModelSpec = toml::from_str(
            r#"
            name = "olmo"
            model = "m.onnx"
            tokenizer = "t.json"
            input_format = "template"
            template = "{prompt} {response}"
            score = "mean_log_likelihood"
            "#,
        )
        .unwrap();
        likelihood.validate().unwrap();

        let refused = |edit: &dyn Fn(&mut RewardModelSpec)| {
            let mut spec = implicit.clone();
            edit(&mut spec);
            spec.validate().unwrap_err().to_string()
        };
        for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let error = refused(&|spec| {
                if let ScoreRead::Implicit(reference) = &mut spec.score {
                    reference.beta = beta;
                }
            });
            assert!(error.contains("beta"), "{error}");
        }
        let engine = refused(&|spec| {
            spec.model = PathBuf::new();
            spec.backend = Backend::KserveV2(Box::new(KserveV2Spec::new(
                vec!["http://127.0.0.1:8001".into()],
                "zephyr".into(),
            )));
        });
        assert!(engine.contains("in process"), "{engine}");
        assert!(refused(&|spec| spec.max_length = 1).contains("max_length"));

        let judge: RewardModelSpec = toml::from_str(
            r#"
            name = "judge"
            model = "m.onnx"
            tokenizer = "t.json"
            input_format = "chat"
            score = { judge = { template = "Rate 1-5: {prompt} / {response}", ratings = ["1", "2", "3"] } }
            "#,
        )
        .unwrap();
        judge.validate().unwrap();
        let ScoreRead::Judge(rubric) = &judge.score else {
            panic!("{:?}", judge.score)
        };
        assert_eq!(rubric.values(), vec![1.0, 2.0, 3.0]);
        assert_eq!(rubric.render("Q", "A"), "Rate 1-5: Q / A");
        let judged = |edit: &dyn Fn(&mut JudgeRubric)| {
            let mut spec = judge.clone();
            if let ScoreRead::Judge(rubric) = &mut spec.score {
                edit(rubric);
            }
            spec.validate().unwrap_err().to_string()
        };
        assert!(judged(&|r| r.ratings = vec!["1".into()]).contains("2 to 16"));
        assert!(judged(&|r| r.ratings[1] = "two".into()).contains("not a number"));
        assert!(judged(&|r| r.template = "Rate {prompt}".into()).contains("{response}"));
    }

    #[test]
    fn remote_specs_parse_round_trip_and_say_what_is_wrong() {
        let remote: RewardModelSpec = toml::from_str(
            r#"
            name = "big"
            tokenizer = "tok/tokenizer.json"
            input_format = "pair"
            output = "score"
            [backend.kserve_v2]
            endpoints = ["http://127.0.0.1:8001", "https://rm.example:443"]
            model_name = "big-rm"
            send = "tokens"
            tls_ca = "ca.pem"
            "#,
        )
        .unwrap();
        let remote = remote.resolve_paths(Path::new("/etc/laser"));
        remote.validate().unwrap();
        let kserve = remote.remote().unwrap();
        assert_eq!(kserve.send, RemoteInput::Tokens);
        assert_eq!(kserve.tls_ca, Some(PathBuf::from("/etc/laser/ca.pem")));
        assert_eq!(remote.model, PathBuf::new());
        let bytes = postcard::to_stdvec(&remote).unwrap();
        assert_eq!(
            postcard::from_bytes::<RewardModelSpec>(&bytes).unwrap(),
            remote
        );

        let with = |edit: &dyn Fn(&mut KserveV2Spec)| {
            let mut spec = remote.clone();
            if let Backend::KserveV2(k) = &mut spec.backend {
                edit(k);
            }
            spec.validate().unwrap_err().to_string()
        };
        assert!(with(&|k| k.endpoints.clear()).contains("endpoints"));
        assert!(with(&|k| k.endpoints = vec!["grpc://x:1".into()]).contains("grpc://x:1"));
        assert!(with(&|k| k.model_name.clear()).contains("model_name"));
        assert!(with(&|k| k.send = RemoteInput::Texts).contains("pair"));
        assert!(with(&|k| k.auth_header = Some("authorization".into())).contains("auth_value_env"));
        assert!(with(&|k| k.max_concurrency = 0).contains("max_concurrency"));
        let local_file = RewardModelSpec {
            model: "m.onnx".into(),
            ..remote.clone()
        };
        assert!(
            local_file
                .validate()
                .unwrap_err()
                .to_string()
                .contains("engine")
        );
        let no_model = RewardModelSpec {
            backend: Backend::Onnx,
            ..remote
        };
        assert!(
            no_model
                .validate()
                .unwrap_err()
                .to_string()
                .contains("model")
        );
    }

    #[test]
    fn vllm_specs_parse_round_trip_and_say_what_each_score_kind_needs() {
        let dpo: RewardModelSpec = toml::from_str(
            r#"
            name = "zephyr"
            tokenizer = "zephyr/tokenizer.json"
            input_format = "chat"
            score = { implicit = { beta = 0.1 } }
            [backend.vllm]
            endpoints = ["http://vllm-0:8000"]
            model_name = "zephyr-7b-beta"
            reference_endpoints = ["http://vllm-ref:8000"]
            reference_model_name = "mistral-sft"
            tls_ca = "ca.pem"
            api_key_env = "VLLM_API_KEY"
            "#,
        )
        .unwrap();
        let dpo = dpo.resolve_paths(Path::new("/etc/laser"));
        dpo.validate().unwrap();
        let Backend::Vllm(vllm) = &dpo.backend else {
            panic!("not vllm: {:?}", dpo.backend);
        };
        assert_eq!(vllm.tls_ca, Some(PathBuf::from("/etc/laser/ca.pem")));
        assert_eq!(dpo.backend.kind(), "vllm");
        let bytes = postcard::to_stdvec(&dpo).unwrap();
        assert_eq!(
            postcard::from_bytes::<RewardModelSpec>(&bytes).unwrap(),
            dpo
        );

        let with = |edit: &dyn Fn(&mut RewardModelSpec, &mut VllmSpec)| {
            let mut spec = dpo.clone();
            let Backend::Vllm(mut vllm) = spec.backend.clone() else {
                unreachable!()
            };
            edit(&mut spec, &mut vllm);
            spec.backend = Backend::Vllm(vllm);
            spec.validate().unwrap_err().to_string()
        };
        assert!(with(&|_, v| v.reference_endpoints.clear()).contains("reference_model_name"));
        assert!(
            with(&|_, v| {
                v.reference_endpoints.clear();
                v.reference_model_name.clear();
            })
            .contains("vllm.reference_endpoints")
        );
        assert!(with(&|s, _| s.score = ScoreRead::LogLikelihood).contains("only read by"));
        assert!(
            with(&|s, _| {
                s.score = ScoreRead::Implicit(ImplicitReward {
                    reference_model: "ref.onnx".into(),
                    reference_tokenizer: None,
                    beta: 0.1,
                })
            })
            .contains("ONNX file")
        );
        assert!(with(&|s, _| s.tokenizer = PathBuf::new()).contains("tokenizer"));
        assert!(with(&|s, _| s.model = "m.onnx".into()).contains("its servers"));
        assert!(with(&|_, v| v.endpoints = vec!["vllm-0:8000".into()]).contains("vllm-0:8000"));
        assert!(with(&|_, v| v.timeout_ms = 0).contains("timeout_ms"));
        // A classifier sent texts cannot be a pair; sent tokens it needs the tokenizer.
        let classifier = |edit: &dyn Fn(&mut RewardModelSpec, &mut VllmSpec)| {
            with(&|s, v| {
                s.score = ScoreRead::Index;
                v.reference_endpoints.clear();
                v.reference_model_name.clear();
                edit(s, v);
            })
        };
        assert!(classifier(&|s, _| s.input_format = InputFormat::Pair).contains("pair"));
        assert!(
            classifier(&|s, v| {
                v.send = RemoteInput::Tokens;
                s.tokenizer = PathBuf::new();
            })
            .contains("vllm.send")
        );
        // An in-process implicit reward still needs its reference graph.
        let onnx = RewardModelSpec {
            backend: Backend::Onnx,
            model: "m.onnx".into(),
            ..dpo.clone()
        };
        assert!(
            onnx.validate()
                .unwrap_err()
                .to_string()
                .contains("reference_model")
        );
        // A kserve_v2 engine serves no causal LM.
        let kserve = RewardModelSpec {
            backend: Backend::KserveV2(Box::new(KserveV2Spec::new(
                vec!["http://e:8001".into()],
                "m".into(),
            ))),
            ..dpo
        };
        assert!(kserve.validate().unwrap_err().to_string().contains("vllm"));
    }

    #[test]
    fn invalid_specs_say_why() {
        let no_template = RewardModelSpec {
            template: None,
            ..spec()
        };
        assert!(
            no_template
                .validate()
                .unwrap_err()
                .to_string()
                .contains("template")
        );
        let bad_name = RewardModelSpec {
            name: "a b".into(),
            ..spec()
        };
        assert!(
            bad_name
                .validate()
                .unwrap_err()
                .to_string()
                .contains("name")
        );
        let short = RewardModelSpec {
            max_length: 2,
            ..spec()
        };
        assert!(
            short
                .validate()
                .unwrap_err()
                .to_string()
                .contains("max_length")
        );
    }
}
