//! vLLM as a [`Protocol`] of the remote model.
//!
//! - Readiness: `GET /health` on every server (and on the reference model's servers for an
//!   implicit reward). At start (and when a down model comes back) `GET /v1/models` checks
//!   that the server serves `model_name` (and the reference its name) and that `max_length`
//!   fits the served `max_model_len`.
//! - A causal LM (`log_likelihood`, `mean_log_likelihood`, `implicit`, `judge`): each
//!   response is tokenized here exactly as the in-process path does (the same `TextEncoder`:
//!   chat template, prompt part and response part, prompt cut from the left), sent as token
//!   ids to `/v1/completions` with `prompt_logprobs: 0` (vLLM returns each prompt token's
//!   log-prob; one generated token is asked for and ignored), and summed over the response's
//!   tokens; the same ids go to the reference model's servers for an implicit reward; a
//!   judge's prompts (one per rating) are folded as in process. So a vLLM RM and an ONNX RM
//!   of the same weights give the same scores (to float rounding). The server never sees
//!   logits: vLLM computes the log-softmax where the weights are.
//! - A classifier (`index`, `difference`, `softmax`): `/pooling` with texts (vLLM
//!   tokenizes) or token ids; each input's values are the row the head is read from.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{Client, PoolingInput};
use super::spec::VllmSpec;
use crate::models::causal_lm::{CAUSAL_LM_ROW, fold_rows, scored_tokens};
use crate::models::kserve::spec::RemoteInput;
use crate::models::remote::input::{Input, texts};
use crate::models::remote::{Answer, Built, CallError, EndpointSet, Limits, Protocol};
use crate::models::spec::{Backend, ScoreRead};
use crate::models::{ModelError, RewardModelSpec};

/// One RM on vLLM servers.
pub struct Vllm {
    spec: RewardModelSpec,
    vllm: VllmSpec,
    client: Client,
    policy: EndpointSet<()>,
    /// The reference model's servers (implicit reward; empty otherwise).
    reference: EndpointSet<()>,
    input: Input,
}

/// What the start checks found.
pub struct Layout {
    /// The served model's context length, as `/v1/models` reports it.
    max_model_len: Option<usize>,
}

/// One causal-LM prompt: its token ids and the tokens whose log-probs are summed.
#[derive(Clone, Debug)]
pub struct Prompt {
    ids: Vec<u32>,
    scored: Range<usize>,
}

/// One call's inputs (shared, so sending it again to another server copies nothing).
#[derive(Clone)]
pub enum Request {
    /// A classifier's inputs, one per response.
    Pooling(Arc<PoolingInput>),
    /// Per response, its prompts: one, or a judge's one per rating.
    Likelihood(Arc<Vec<Vec<Prompt>>>),
}

impl Vllm {
    /// Load what building requests needs (off the runtime) and the HTTP client.
    pub async fn connect(spec: &RewardModelSpec) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::InvalidSpec {
            name: spec.name.clone(),
            reason,
        };
        let Backend::Vllm(vllm) = &spec.backend else {
            return Err(invalid("not a vllm model".into()));
        };
        let send = match spec.score.is_causal_lm() {
            true => RemoteInput::Tokens,
            false => vllm.send,
        };
        let input = Input::load_off_runtime(spec, send).await?;
        let client = Client::new(vllm).map_err(invalid)?;
        let servers = |urls: &[String]| EndpointSet::new(urls.iter().map(|url| (url.clone(), ())));
        Ok(Self {
            policy: servers(&vllm.endpoints),
            reference: servers(&vllm.reference_endpoints),
            spec: spec.clone(),
            vllm: (**vllm).clone(),
            client,
            input,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.vllm.timeout_ms)
    }

    /// Per prompt, the reference model's log-probs, from a ready reference server (one that
    /// cannot be reached is taken out and the next tried). Its failures are the call's.
    async fn reference_logprobs(
        &self,
        prompts: &[&[u32]],
        timeout: Duration,
    ) -> Result<Result<Vec<Vec<f64>>, String>, CallError> {
        let model = &self.vllm.reference_model_name;
        let mut last = None;
        for _ in 0..self.reference.len() {
            let Some(server) = self.reference.pick() else {
                break;
            };
            let base = self.reference.url(server);
            match self
                .client
                .prompt_logprobs(base, model, prompts, timeout)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(error) if error.unreachable => {
                    self.reference.set_ready(server, false);
                    last = Some(error);
                }
                Err(error) => return Err(reference_error(error)),
            }
        }
        Err(reference_error(last.unwrap_or(CallError {
            endpoint: self.vllm.reference_endpoints.join(","),
            reason: "no server is ready".into(),
            unreachable: false,
            timed_out: false,
        })))
    }
}

/// A reference server's failure as the call's (it never takes a policy server out).
fn reference_error(error: CallError) -> CallError {
    CallError {
        reason: format!("reference model at {}: {}", error.endpoint, error.reason),
        unreachable: false,
        ..error
    }
}

/// Each response's prompts: a judge's `ratings` of them in a row, else one.
fn grouped(encodings: Vec<tokenizers::Encoding>, per_response: usize) -> Vec<Vec<Prompt>> {
    let prompts: Vec<Prompt> = encodings
        .iter()
        .map(|encoding| Prompt {
            ids: encoding.get_ids().to_vec(),
            scored: scored_tokens(encoding),
        })
        .collect();
    prompts
        .chunks(per_response.max(1))
        .map(<[Prompt]>::to_vec)
        .collect()
}

impl Protocol for Vllm {
    const KIND: &'static str = "vllm";
    type Request = Request;
    type Layout = Layout;
    type Client = ();

    fn limits(&self) -> Limits {
        Limits {
            timeout: self.timeout(),
            max_concurrency: self.vllm.max_concurrency,
            health_interval: Duration::from_millis(self.vllm.health_interval_ms),
            failures_before_unavailable: self.vllm.failures_before_unavailable,
        }
    }

    fn endpoints(&self) -> &EndpointSet<()> {
        &self.policy
    }

    fn model_name(&self) -> &str {
        &self.vllm.model_name
    }

    async fn probe(&self) -> Result<(), String> {
        let timeout = self.timeout();
        let reasons = self
            .policy
            .probe_each("vLLM", |server| {
                self.client.healthy(self.policy.url(server), timeout)
            })
            .await;
        if !self.policy.any_ready() {
            return Err(reasons.join("; "));
        }
        if self.reference.len() > 0 {
            let reasons = self
                .reference
                .probe_each("vLLM", |server| {
                    self.client.healthy(self.reference.url(server), timeout)
                })
                .await;
            if !self.reference.any_ready() {
                return Err(format!("reference model: {}", reasons.join("; ")));
            }
        }
        Ok(())
    }

    async fn learn_layout(&self, endpoint: usize) -> Result<Layout, ModelError> {
        let name = &self.spec.name;
        let refused = |error: CallError| ModelError::EngineRefused {
            name: name.clone(),
            reason: error.to_string(),
        };
        let invalid = |reason: String| ModelError::InvalidSpec {
            name: name.clone(),
            reason,
        };
        let base = self.policy.url(endpoint);
        let max_model_len = self
            .client
            .max_model_len(base, &self.vllm.model_name, self.timeout())
            .await
            .map_err(refused)?
            .map_err(invalid)?;
        // A causal LM's prompt and the one token generated after it.
        let needed = self.spec.max_length + usize::from(self.spec.score.is_causal_lm());
        if let Some(served) = max_model_len
            && needed > served
        {
            return Err(invalid(format!(
                "max_length {} does not fit: {base} serves {:?} with max_model_len {served} (lower max_length, or raise --max-model-len)",
                self.spec.max_length, self.vllm.model_name
            )));
        }
        if let Some(server) = self.reference.pick() {
            let base = self.reference.url(server);
            self.client
                .max_model_len(base, &self.vllm.reference_model_name, self.timeout())
                .await
                .map_err(refused)?
                .map_err(|reason| invalid(format!("reference model: {reason}")))?;
        }
        Ok(Layout { max_model_len })
    }

    fn max_batch(&self, _layout: &Layout) -> usize {
        // vLLM schedules the sequences of a call itself.
        self.spec.max_batch_sequences
    }

    fn tensor_names(&self, layout: &Layout) -> (Vec<String>, String) {
        let context = layout
            .max_model_len
            .map_or(String::new(), |len| format!(" (max_model_len {len})"));
        match &self.input {
            Input::Tokens { .. } if self.spec.score.is_causal_lm() => (
                vec![format!("prompt token ids{context}")],
                "/v1/completions prompt_logprobs".into(),
            ),
            Input::Tokens { .. } => (vec![format!("token ids{context}")], "/pooling data".into()),
            Input::Texts { .. } => (vec![format!("texts{context}")], "/pooling data".into()),
        }
    }

    fn requests(&self, _layout: &Layout, queries: &[(String, Vec<String>)]) -> Built<Request> {
        let max_batch = self.spec.max_batch_sequences;
        match &self.input {
            Input::Texts { chat } => Built::new(
                queries,
                max_batch,
                |prompt, responses| texts(&self.spec, chat.as_deref(), prompt, responses),
                |_| 0,
                |texts| {
                    Request::Pooling(Arc::new(PoolingInput::Texts(
                        texts.into_iter().cloned().collect(),
                    )))
                },
            ),
            Input::Tokens { encoder } if self.spec.score.is_causal_lm() => {
                let per_response = match &self.spec.score {
                    ScoreRead::Judge(rubric) => rubric.ratings.len(),
                    _ => 1,
                };
                Built::new(
                    queries,
                    max_batch,
                    |prompt, responses| {
                        Ok(grouped(encoder.encode(prompt, responses)?, per_response))
                    },
                    |group| group.iter().map(|prompt| prompt.ids.len()).sum::<usize>(),
                    |groups| Request::Likelihood(Arc::new(groups.into_iter().cloned().collect())),
                )
            }
            Input::Tokens { encoder } => Built::new(
                queries,
                max_batch,
                |prompt, responses| encoder.encode(prompt, responses),
                |encoding| encoding.len(),
                |encodings| {
                    let ids = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
                    Request::Pooling(Arc::new(PoolingInput::Tokens(ids)))
                },
            ),
        }
    }

    async fn infer(
        &self,
        endpoint: usize,
        _layout: &Layout,
        request: Request,
        rows: usize,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        let base = self.policy.url(endpoint);
        let model = &self.vllm.model_name;
        let groups = match request {
            Request::Pooling(input) => {
                return self
                    .client
                    .pooling(base, model, &input, rows, timeout)
                    .await;
            }
            Request::Likelihood(groups) => groups,
        };
        let started = Instant::now();
        let prompts: Vec<&[u32]> = groups
            .iter()
            .flatten()
            .map(|prompt| prompt.ids.as_slice())
            .collect();
        let policy = match self
            .client
            .prompt_logprobs(base, model, &prompts, timeout)
            .await?
        {
            Ok(logprobs) => logprobs,
            Err(reason) => return Ok(Err(reason)),
        };
        let reference = match self.reference.len() {
            0 => None,
            _ => {
                let left = timeout
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1));
                match self.reference_logprobs(&prompts, left).await? {
                    Ok(logprobs) => Some(logprobs),
                    Err(reason) => return Ok(Err(format!("reference model: {reason}"))),
                }
            }
        };
        let mut values = Vec::with_capacity(prompts.len() * CAUSAL_LM_ROW);
        for (i, prompt) in groups.iter().flatten().enumerate() {
            let sum =
                |logprobs: &[Vec<f64>]| -> f64 { logprobs[i][prompt.scored.clone()].iter().sum() };
            values.push(sum(&policy) as f32);
            values.push(prompt.scored.len() as f32);
            values.push(reference.as_deref().map_or(0.0, sum) as f32);
        }
        Ok(Ok((fold_rows(&self.spec.score, values), CAUSAL_LM_ROW)))
    }
}
