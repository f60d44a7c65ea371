//! One ONNX Runtime session of a reward model and what it takes to run it: the execution
//! provider (ONNX Runtime's own reason when it is unavailable, or a CPU fallback with a
//! warning when the spec allows it), the session's inputs (`input_ids` required;
//! `attention_mask`, `token_type_ids`, `position_ids` fed when the model declares them;
//! int64 or int32 as declared), the score output, a probe run at load that checks the
//! output's shape against the spec, and one padded inference per batch.
//!
//! A causal LM (score `log_likelihood`, `mean_log_likelihood`, `implicit`, `judge`) reads the
//! graph's `token_logprobs` (`[batch, tokens − 1]`) and returns per sequence [`CAUSAL_LM_ROW`]
//! values: the sum over the response's tokens, their count, and the reference model's sum
//! (an implicit reward's reference runs here too, on the same tokens); a judge's rows (one
//! per rating) are folded into its mean rating per response (`Scorer::fold`).
//!
//! Cost: one inference per call (two with a reference model), over batch × longest-sequence
//! padded tokens.

use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};
use tokenizers::Encoding;

use serde::{Deserialize, Serialize};

use super::causal_lm::{CAUSAL_LM_ROW, fold_rows, scored_tokens};
use super::chat::ChatTemplate;
use super::spec::{ImplicitReward, Provider, ScoreRead, TOKEN_LOGPROBS_OUTPUT};
use super::tokenize::{TextEncoder, load_tokenizer};
use super::{InputFormat, ModelError, RewardModelSpec, runtime};
use crate::telemetry::metric;

/// The token inputs a model may declare (the same names on ONNX Runtime and on an engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InputKind {
    InputIds,
    AttentionMask,
    TokenTypeIds,
    PositionIds,
}

impl InputKind {
    pub(super) const SUPPORTED: &str = "input_ids, attention_mask, token_type_ids, position_ids";

    pub(super) fn from_name(name: &str) -> Option<Self> {
        match name {
            "input_ids" => Some(InputKind::InputIds),
            "attention_mask" => Some(InputKind::AttentionMask),
            "token_type_ids" => Some(InputKind::TokenTypeIds),
            "position_ids" => Some(InputKind::PositionIds),
            _ => None,
        }
    }
}

/// One token input of `encodings` as a row-major `[encodings.len(), sequence]` matrix,
/// right-padded (`pad_id` in `input_ids`, 0 elsewhere).
pub(super) fn token_matrix(
    kind: InputKind,
    encodings: &[&Encoding],
    sequence: usize,
    pad_id: u32,
) -> Vec<i64> {
    let mut values = vec![0i64; encodings.len() * sequence];
    for (row, encoding) in encodings.iter().enumerate() {
        let start = row * sequence;
        let len = encoding.len();
        let target = &mut values[start..start + len];
        match kind {
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
        if kind == InputKind::InputIds {
            values[start + len..start + sequence].fill(pad_id as i64);
        }
    }
    values
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IntegerType {
    I64,
    I32,
}

#[derive(Clone, Debug)]
pub(super) struct ModelInput {
    pub(super) name: String,
    kind: InputKind,
    integer_type: IntegerType,
}

/// How an encoder's output becomes one vector per text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the text's tokens of a `[batch, sequence, dim]` output (sentence encoders'
    /// `last_hidden_state`).
    #[default]
    Mean,
    /// The output is already `[batch, dim]` (a pooled output, such as the demo graph's
    /// `embedding`).
    None,
}

/// What a session's output is read as.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Head {
    /// One output row per sequence (reward models: each reads its head from the row).
    Score,
    /// One vector per sequence (encoders): the output `[batch, sequence, dim]` mean-pooled
    /// over each sequence's tokens, or `[batch, dim]` as it is; L2-normalized if asked.
    Embedding { pooling: Pooling, normalize: bool },
}

/// Session, tokenizer and input layout of one model; lives on its worker thread.
pub(super) struct Scorer {
    pub(super) spec: RewardModelSpec,
    pub(super) head: Head,
    pub(super) provider: String,
    pub(super) encoder: TextEncoder,
    session: Session,
    pub(super) inputs: Vec<ModelInput>,
    pub(super) output_name: String,
    /// Values per sequence in [`Scorer::infer`]'s result: 1 for scores, the dimension for
    /// embeddings (found by the probe), [`CAUSAL_LM_ROW`] for a causal LM.
    pub(super) width: usize,
    /// A causal LM scored by likelihood: its reference model, for an implicit reward.
    causal_lm: Option<CausalLm>,
}

/// What a causal LM's session runs beside the policy graph.
struct CausalLm {
    reference: Option<(Session, Vec<ModelInput>)>,
}

impl Scorer {
    pub(super) fn new(spec: RewardModelSpec, head: Head) -> Result<Self, ModelError> {
        let name = spec.name.clone();
        for path in [&spec.model, &spec.tokenizer] {
            std::fs::metadata(path).map_err(|e| ModelError::MissingFile {
                name: name.clone(),
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let tokenizer = load_tokenizer(&spec)?;
        let environment = runtime::environment()?;
        let load_error = |reason: String| ModelError::Load {
            name: name.clone(),
            reason,
        };
        let (session, provider) = build_session(&spec, environment)?;
        let chat = match spec.input_format {
            InputFormat::Chat => Some(ChatTemplate::load(&spec.tokenizer_config_path(), &name)?),
            InputFormat::Pair | InputFormat::Template | InputFormat::Text => None,
        };
        let (inputs, outputs) = inputs_and_outputs(&session, &name)?;
        if !inputs.iter().any(|i| i.kind == InputKind::InputIds) {
            return Err(load_error("the model has no input named input_ids".into()));
        }
        let causal_lm = match &spec.score {
            score if score.is_causal_lm() => {
                require_token_logprobs(&spec, &outputs, "model")?;
                let reference = match score {
                    ScoreRead::Implicit(implicit) => {
                        Some(reference_session(&spec, implicit, &tokenizer, environment)?)
                    }
                    _ => None,
                };
                Some(CausalLm { reference })
            }
            _ => None,
        };
        let output_name = match &spec.output {
            _ if causal_lm.is_some() => TOKEN_LOGPROBS_OUTPUT.to_string(),
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
            encoder: TextEncoder::new(spec.clone(), tokenizer, chat),
            spec,
            head,
            provider,
            session,
            inputs,
            output_name,
            width: 1,
            causal_lm,
        };
        let probe = scorer
            .score("probe", &["probe".to_string()])
            .map_err(|e| match e {
                ModelError::Inference { name, reason } => ModelError::Load {
                    name,
                    reason: format!("probe run failed: {reason}"),
                },
                other => other,
            })?;
        scorer.width = probe.len();
        Ok(scorer)
    }

    /// Score one query's responses (the probe).
    fn score(&mut self, prompt: &str, responses: &[String]) -> Result<Vec<f32>, ModelError> {
        let encodings = self.encoder.encode(prompt, responses)?;
        let refs: Vec<&Encoding> = encodings.iter().collect();
        let rows = self.infer(&refs)?;
        Ok(self.fold(rows))
    }

    /// One job's rows as the RMs sharing this session read them ([`fold_rows`]).
    pub(super) fn fold(&self, rows: Vec<f32>) -> Vec<f32> {
        fold_rows(&self.spec.score, rows)
    }

    /// One inference over `encodings`, padded to the longest: `width` values per sequence.
    pub(super) fn infer(&mut self, encodings: &[&Encoding]) -> Result<Vec<f32>, ModelError> {
        let name = &self.spec.name;
        let batch = encodings.len();
        let sequence = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let inference_error = |reason: String| ModelError::Inference {
            name: name.clone(),
            reason,
        };
        let pad_id = self.encoder.pad_id();
        let started = Instant::now();
        let (dims, mut data) = run(
            &mut self.session,
            &self.inputs,
            &self.output_name,
            encodings,
            pad_id,
        )
        .map_err(inference_error)?;
        let reference = match &mut self.causal_lm {
            Some(CausalLm {
                reference: Some((session, inputs)),
            }) => Some(
                run(session, inputs, TOKEN_LOGPROBS_OUTPUT, encodings, pad_id)
                    .map_err(|reason| inference_error(format!("reference model: {reason}")))?,
            ),
            _ => None,
        };
        metrics::histogram!(metric::RM_INFERENCE_SECONDS, "reward_model" => name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::RM_BATCH_SIZE, "reward_model" => name.clone())
            .record(batch as f64);
        metrics::histogram!(metric::RM_PADDED_TOKENS, "reward_model" => name.clone())
            .record((batch * sequence) as f64);
        metrics::histogram!(metric::RM_TOKENS, "reward_model" => name.clone())
            .record(encodings.iter().map(|e| e.len()).sum::<usize>() as f64);
        if self.causal_lm.is_some() {
            return causal_lm_rows(encodings, (&dims, &data), reference.as_ref()).map_err(
                |reason| inference_error(format!("output {TOKEN_LOGPROBS_OUTPUT:?}: {reason}")),
            );
        }
        if let Head::Embedding { pooling, normalize } = self.head {
            let masks: Vec<&[u32]> = encodings.iter().map(|e| e.get_attention_mask()).collect();
            return embeddings(&data, &dims, &masks, pooling, normalize).map_err(|reason| {
                inference_error(format!("output {:?}: {reason}", self.output_name))
            });
        }
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
        // Whole rows: each reward model sharing this session reads its own head from them.
        data.truncate(batch * width);
        Ok(data)
    }
}

/// One padded inference of `session` over `encodings`: the output `output`'s shape and
/// values (float32).
fn run(
    session: &mut Session,
    inputs: &[ModelInput],
    output: &str,
    encodings: &[&Encoding],
    pad_id: u32,
) -> Result<(Vec<i64>, Vec<f32>), String> {
    let batch = encodings.len();
    let sequence = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
    let mut feed: Vec<(String, SessionInputValue<'static>)> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let values = token_matrix(input.kind, encodings, sequence, pad_id);
        let shape = [batch as i64, sequence as i64];
        let value: SessionInputValue<'static> = match input.integer_type {
            IntegerType::I64 => Tensor::from_array((shape, values))
                .map_err(|e| e.to_string())?
                .into(),
            IntegerType::I32 => {
                let narrowed: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
                Tensor::from_array((shape, narrowed))
                    .map_err(|e| e.to_string())?
                    .into()
            }
        };
        feed.push((input.name.clone(), value));
    }
    let outputs = session.run(feed).map_err(|e| e.to_string())?;
    let value = outputs
        .get(output)
        .ok_or_else(|| format!("no output {output:?}"))?;
    let (shape, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| format!("output {output:?}: {e} (expected float32)"))?;
    Ok((shape.iter().copied().collect(), data.to_vec()))
}

/// A causal LM's rows ([`CAUSAL_LM_ROW`] values per sequence) from its `token_logprobs`
/// (`[batch, sequence - 1]`: position t holds log π(token t+1 | tokens ..= t)) and the
/// reference model's, summed over each sequence's response tokens (a response token at
/// position 0 has no context and is not scored).
fn causal_lm_rows(
    encodings: &[&Encoding],
    (dims, data): (&[i64], &[f32]),
    reference: Option<&(Vec<i64>, Vec<f32>)>,
) -> Result<Vec<f32>, String> {
    let batch = encodings.len();
    let sequence = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
    let expected = [batch as i64, sequence as i64 - 1];
    if dims != expected {
        return Err(format!(
            "has shape {dims:?}; expected {expected:?} (one log-prob per next token)"
        ));
    }
    if let Some((reference_dims, _)) = reference
        && reference_dims.as_slice() != expected
    {
        return Err(format!(
            "the reference model's has shape {reference_dims:?}; expected {expected:?}"
        ));
    }
    let width = sequence - 1;
    let mut rows = Vec::with_capacity(batch * CAUSAL_LM_ROW);
    for (row, encoding) in encodings.iter().enumerate() {
        // Token t is predicted at position t - 1.
        let tokens = scored_tokens(encoding);
        let positions = tokens.start - 1..tokens.end - 1;
        let sum = |values: &[f32]| -> f64 {
            values[row * width..][positions.clone()]
                .iter()
                .map(|&v| v as f64)
                .sum()
        };
        rows.push(sum(data) as f32);
        rows.push(positions.len() as f32);
        rows.push(reference.map_or(0.0, |(_, values)| sum(values)) as f32);
    }
    Ok(rows)
}

/// Refuse a causal LM graph without the `token_logprobs` output.
fn require_token_logprobs(
    spec: &RewardModelSpec,
    outputs: &[String],
    which: &str,
) -> Result<(), ModelError> {
    if outputs.iter().any(|o| o == TOKEN_LOGPROBS_OUTPUT) {
        return Ok(());
    }
    Err(ModelError::InvalidSpec {
        name: spec.name.clone(),
        reason: format!(
            "score = \"{}\" reads the {which}'s output {TOKEN_LOGPROBS_OUTPUT:?} (per-token log-probs, [batch, tokens - 1]; scripts/export_causal_lm.py writes it); its outputs are {outputs:?}",
            spec.score.name()
        ),
    })
}

/// The reference model of an implicit reward: its session on the policy's provider, and
/// its inputs. Its tokenizer, when it names one, must have the policy's vocabulary.
fn reference_session(
    spec: &RewardModelSpec,
    implicit: &ImplicitReward,
    tokenizer: &tokenizers::Tokenizer,
    environment: &ort::environment::Environment,
) -> Result<(Session, Vec<ModelInput>), ModelError> {
    let invalid = |reason: String| ModelError::InvalidSpec {
        name: spec.name.clone(),
        reason,
    };
    std::fs::metadata(&implicit.reference_model).map_err(|e| ModelError::MissingFile {
        name: spec.name.clone(),
        path: implicit.reference_model.display().to_string(),
        reason: e.to_string(),
    })?;
    if let Some(path) = &implicit.reference_tokenizer {
        let reference = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            invalid(format!(
                "score.implicit.reference_tokenizer {}: {e}",
                path.display()
            ))
        })?;
        if reference.get_vocab(true) != tokenizer.get_vocab(true) {
            return Err(invalid(format!(
                "score.implicit.reference_tokenizer {} differs from the policy's tokenizer {} (vocabularies of {} and {} tokens): an implicit reward compares log-probs of the same tokens",
                path.display(),
                spec.tokenizer.display(),
                reference.get_vocab_size(true),
                tokenizer.get_vocab_size(true)
            )));
        }
    }
    let reference_spec = RewardModelSpec {
        model: implicit.reference_model.clone(),
        ..spec.clone()
    };
    let (session, _) = build_session(&reference_spec, environment)?;
    let (inputs, outputs) = inputs_and_outputs(&session, &spec.name)?;
    require_token_logprobs(spec, &outputs, "reference model")?;
    if !inputs.iter().any(|i| i.kind == InputKind::InputIds) {
        return Err(invalid(
            "the reference model has no input named input_ids".into(),
        ));
    }
    Ok((session, inputs))
}

/// One vector per sequence from an encoder's output `data` of shape `dims`: mean over each
/// sequence's own tokens for `[batch, sequence, dim]` (padding excluded), or the rows of
/// `[batch, dim]`; then divided by its L2 norm when `normalize` (a zero vector stays zero).
fn embeddings(
    data: &[f32],
    dims: &[i64],
    masks: &[&[u32]],
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<f32>, String> {
    let batch = masks.len();
    let mut rows: Vec<f32> = match (pooling, dims) {
        (Pooling::Mean, &[b, sequence, dim]) if b as usize == batch => {
            let (sequence, dim) = (sequence as usize, dim as usize);
            let mut rows = vec![0f32; batch * dim];
            for (row, mask) in masks.iter().enumerate() {
                let kept = mask.iter().filter(|&&m| m == 1).count().max(1) as f32;
                let out = &mut rows[row * dim..(row + 1) * dim];
                for (t, _) in mask.iter().enumerate().filter(|(_, m)| **m == 1) {
                    let token = &data[(row * sequence + t) * dim..(row * sequence + t + 1) * dim];
                    out.iter_mut().zip(token).for_each(|(o, v)| *o += v);
                }
                out.iter_mut().for_each(|o| *o /= kept);
            }
            rows
        }
        (Pooling::None, &[b, _]) if b as usize == batch => data.to_vec(),
        (Pooling::Mean, _) => {
            return Err(format!(
                "has shape {dims:?}; pooling \"mean\" expects [{batch}, sequence, dim]"
            ));
        }
        (Pooling::None, _) => {
            return Err(format!(
                "has shape {dims:?}; pooling \"none\" expects [{batch}, dim]"
            ));
        }
    };
    if normalize {
        let dim = rows.len() / batch.max(1);
        for row in rows.chunks_mut(dim.max(1)) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
    }
    Ok(rows)
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

/// A session's token inputs (each checked: a supported name, an integer type) and its output
/// names, in the graph's order.
fn inputs_and_outputs(
    session: &Session,
    model: &str,
) -> Result<(Vec<ModelInput>, Vec<String>), ModelError> {
    let inputs = session
        .inputs()
        .iter()
        .map(|outlet| model_input(model, outlet.name(), outlet.dtype()))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    Ok((inputs, outputs))
}

fn model_input(model: &str, name: &str, dtype: &ValueType) -> Result<ModelInput, ModelError> {
    let Some(kind) = InputKind::from_name(name) else {
        return Err(ModelError::Load {
            name: model.to_string(),
            reason: format!(
                "unsupported model input {name:?}; supported: {}",
                InputKind::SUPPORTED
            ),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An encoding of `prompt` prompt tokens then `response` response tokens.
    fn continuation(prompt: usize, response: usize) -> Encoding {
        let part = |len: usize, sequence: usize| {
            let mut part = Encoding::new(
                vec![7; len],
                vec![0; len],
                vec![String::new(); len],
                vec![None; len],
                vec![(0, 0); len],
                vec![0; len],
                vec![1; len],
                Vec::new(),
                Default::default(),
            );
            part.set_sequence_id(sequence);
            part
        };
        Encoding::merge([part(prompt, 0), part(response, 1)], false)
    }

    #[test]
    fn causal_lm_rows_sum_the_response_tokens_only() {
        // Two sequences padded to 5 tokens: 4 next-token log-probs each.
        let (first, second) = (continuation(2, 3), continuation(1, 2));
        let policy = [-1.0, -2.0, -3.0, -4.0, -10.0, -20.0, -30.0, -99.0];
        let reference = [-0.5; 8];
        let rows = causal_lm_rows(
            &[&first, &second],
            (&[2, 4], &policy),
            Some(&(vec![2, 4], reference.to_vec())),
        )
        .unwrap();
        // First: tokens 2, 3, 4 are predicted at positions 1, 2, 3. Second: tokens 1, 2 at
        // positions 0, 1; its padding (position 3) is not read.
        assert_eq!(rows, vec![-9.0, 3.0, -1.5, -30.0, 2.0, -1.0]);
        // A response with no prompt before it: its first token has no context.
        let alone = continuation(0, 3);
        let rows = causal_lm_rows(&[&alone], (&[1, 2], &[-1.0, -2.0]), None).unwrap();
        assert_eq!(rows, vec![-3.0, 2.0, 0.0]);
        // A graph that returns logits-shaped output is refused, naming the shape.
        let error = causal_lm_rows(&[&alone], (&[1, 3, 8], &[0.0; 24]), None).unwrap_err();
        assert!(error.contains("[1, 2]"), "{error}");
    }

    #[test]
    fn mean_pooling_skips_padding_and_normalizes() {
        // Two sequences of up to 3 tokens, dim 2; the first has one padded position.
        let data = [
            1.0, 0.0, 3.0, 0.0, 100.0, 100.0, 0.0, 2.0, 0.0, 2.0, 0.0, 2.0,
        ];
        let masks: [&[u32]; 2] = [&[1, 1, 0], &[1, 1, 1]];
        let pooled = embeddings(&data, &[2, 3, 2], &masks, Pooling::Mean, false).unwrap();
        assert_eq!(pooled, vec![2.0, 0.0, 0.0, 2.0]);
        let unit = embeddings(&data, &[2, 3, 2], &masks, Pooling::Mean, true).unwrap();
        assert_eq!(unit, vec![1.0, 0.0, 0.0, 1.0]);
        let rows = embeddings(&[3.0, 4.0], &[1, 2], &masks[..1], Pooling::None, true).unwrap();
        assert!((rows[0] - 0.6).abs() < 1e-6 && (rows[1] - 0.8).abs() < 1e-6);
        assert!(embeddings(&data, &[2, 6], &masks, Pooling::Mean, true).is_err());
    }
}
