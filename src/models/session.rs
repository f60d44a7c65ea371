//! One ONNX Runtime session of a reward model and what it takes to run it: the execution
//! provider (ONNX Runtime's own reason when it is unavailable, or a CPU fallback with a
//! warning when the spec allows it), the session's inputs (`input_ids` required;
//! `attention_mask`, `token_type_ids`, `position_ids` fed when the model declares them;
//! int64 or int32 as declared), the score output, a probe run at load that checks the
//! output's shape against the spec, and one padded inference per batch.
//!
//! Cost: one inference per call, over batch × longest-sequence padded tokens.

use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};
use tokenizers::Encoding;

use serde::{Deserialize, Serialize};

use super::chat::ChatTemplate;
use super::spec::Provider;
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
    /// embeddings (found by the probe).
    pub(super) width: usize,
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
            encoder: TextEncoder::new(spec.clone(), tokenizer, chat),
            spec,
            head,
            provider,
            session,
            inputs,
            output_name,
            width: 1,
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
        self.infer(&refs)
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
        let mut feed: Vec<(String, SessionInputValue<'static>)> =
            Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            let values = token_matrix(input.kind, encodings, sequence, self.encoder.pad_id());
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
        if let Head::Embedding { pooling, normalize } = self.head {
            let masks: Vec<&[u32]> = encodings.iter().map(|e| e.get_attention_mask()).collect();
            return embeddings(data, &dims, &masks, pooling, normalize).map_err(|reason| {
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
        Ok(data[..batch * width].to_vec())
    }
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
