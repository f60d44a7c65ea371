//! The tensors of a remote reward model: the [`Layout`] read from its metadata (which inputs
//! to send, which output holds the score, the largest batch), the request tensors built from
//! texts or tokens, and the score output decoded from typed or raw contents.

use tokenizers::Encoding;

use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataResponse,
};
use crate::models::RewardModelSpec;
use crate::models::kserve::spec::{KserveV2Spec, RemoteInput};
use crate::models::session::{InputKind, token_matrix};

/// What the model takes and gives, from its metadata and the spec.
#[derive(Clone, Debug)]
pub(in crate::models) struct Layout {
    pub(super) inputs: Vec<LayoutInput>,
    pub(super) output: String,
    /// Sequences per ModelInfer: the spec's `max_batch_sequences`, or less when the
    /// metadata fixes the batch dimension.
    pub(super) max_batch: usize,
}

#[derive(Clone, Debug)]
pub(super) enum LayoutInput {
    /// A BYTES tensor `[n]` of texts.
    Texts { name: String },
    /// A token tensor `[n, longest]`, INT64 or INT32.
    Tokens {
        name: String,
        kind: InputKind,
        datatype: &'static str,
    },
}

impl LayoutInput {
    pub(super) fn name(&self) -> &str {
        match self {
            LayoutInput::Texts { name } | LayoutInput::Tokens { name, .. } => name,
        }
    }
}

const NUMERIC: [&str; 12] = [
    "FP32", "FP64", "FP16", "BF16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64",
];

/// The layout for `spec` on a model with `metadata`; the reason when they do not fit.
pub(super) fn layout(
    spec: &RewardModelSpec,
    remote: &KserveV2Spec,
    metadata: &ModelMetadataResponse,
) -> Result<Layout, String> {
    let described = |tensors: &[super::proto::model_metadata_response::TensorMetadata]| {
        tensors
            .iter()
            .map(|t| format!("{} ({})", t.name, t.datatype))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let inputs = match remote.send {
        RemoteInput::Texts => {
            let bytes: Vec<_> = metadata
                .inputs
                .iter()
                .filter(|t| t.datatype == "BYTES")
                .collect();
            let chosen = match &remote.text_input {
                Some(wanted) => metadata
                    .inputs
                    .iter()
                    .find(|t| &t.name == wanted)
                    .ok_or_else(|| {
                        format!(
                            "kserve_v2.text_input {wanted:?} is not an input of model {:?}; its inputs are {}",
                            metadata.name,
                            described(&metadata.inputs)
                        )
                    })?,
                None if bytes.len() == 1 => bytes[0],
                None => {
                    return Err(format!(
                        "send = \"texts\" needs one BYTES input (or kserve_v2.text_input); model {:?} has inputs {}",
                        metadata.name,
                        described(&metadata.inputs)
                    ));
                }
            };
            if chosen.datatype != "BYTES" {
                return Err(format!(
                    "input {:?} has datatype {}; send = \"texts\" needs BYTES",
                    chosen.name, chosen.datatype
                ));
            }
            if let Some(other) = metadata.inputs.iter().find(|t| t.name != chosen.name) {
                return Err(format!(
                    "model {:?} also takes input {:?}, which send = \"texts\" cannot fill",
                    metadata.name, other.name
                ));
            }
            vec![LayoutInput::Texts {
                name: chosen.name.clone(),
            }]
        }
        RemoteInput::Tokens => {
            let mut inputs = Vec::with_capacity(metadata.inputs.len());
            for tensor in &metadata.inputs {
                let kind = InputKind::from_name(&tensor.name).ok_or_else(|| {
                    format!(
                        "send = \"tokens\" cannot fill input {:?}; supported: {}",
                        tensor.name,
                        InputKind::SUPPORTED
                    )
                })?;
                let datatype = match tensor.datatype.as_str() {
                    "INT64" => "INT64",
                    "INT32" => "INT32",
                    other => {
                        return Err(format!(
                            "input {:?} has datatype {other}; send = \"tokens\" needs INT64 or INT32",
                            tensor.name
                        ));
                    }
                };
                inputs.push(LayoutInput::Tokens {
                    name: tensor.name.clone(),
                    kind,
                    datatype,
                });
            }
            if !inputs.iter().any(|i| {
                matches!(
                    i,
                    LayoutInput::Tokens {
                        kind: InputKind::InputIds,
                        ..
                    }
                )
            }) {
                return Err(format!(
                    "model {:?} has no input_ids input; its inputs are {}",
                    metadata.name,
                    described(&metadata.inputs)
                ));
            }
            inputs
        }
    };
    let output = match &spec.output {
        Some(wanted) => metadata.outputs.iter().find(|t| &t.name == wanted),
        None => metadata.outputs.first(),
    }
    .ok_or_else(|| {
        format!(
            "output {:?} is not an output of model {:?}; its outputs are {}",
            spec.output.as_deref().unwrap_or("(first)"),
            metadata.name,
            described(&metadata.outputs)
        )
    })?;
    if !NUMERIC.contains(&output.datatype.as_str()) {
        return Err(format!(
            "output {:?} has datatype {}; a score needs a numeric datatype",
            output.name, output.datatype
        ));
    }
    let fixed_batch = metadata
        .inputs
        .iter()
        .filter_map(|t| t.shape.first().copied())
        .filter(|&dim| dim > 0)
        .min();
    let max_batch = match fixed_batch {
        Some(dim) => (dim as usize).min(spec.max_batch_sequences),
        None => spec.max_batch_sequences,
    };
    Ok(Layout {
        inputs,
        output: output.name.clone(),
        max_batch,
    })
}

/// A ModelInfer request of `texts` (send = "texts").
pub(super) fn texts_request(layout: &Layout, texts: Vec<String>) -> ModelInferRequest {
    let inputs = layout
        .inputs
        .iter()
        .map(|input| InferInputTensor {
            name: input.name().to_string(),
            datatype: "BYTES".into(),
            shape: vec![texts.len() as i64],
            parameters: Default::default(),
            contents: Some(InferTensorContents {
                bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
                ..Default::default()
            }),
        })
        .collect();
    request(layout, inputs)
}

/// A ModelInfer request of tokenized `encodings`, right-padded to the longest (send =
/// "tokens"), exactly as the in-process backend feeds ONNX Runtime.
pub(super) fn tokens_request(
    layout: &Layout,
    encodings: &[&Encoding],
    pad_id: u32,
) -> ModelInferRequest {
    let sequence = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
    let shape = vec![encodings.len() as i64, sequence as i64];
    let inputs = layout
        .inputs
        .iter()
        .filter_map(|input| match input {
            LayoutInput::Tokens {
                name,
                kind,
                datatype,
            } => {
                let values = token_matrix(*kind, encodings, sequence, pad_id);
                let contents = match *datatype {
                    "INT32" => InferTensorContents {
                        int_contents: values.into_iter().map(|v| v as i32).collect(),
                        ..Default::default()
                    },
                    _ => InferTensorContents {
                        int64_contents: values,
                        ..Default::default()
                    },
                };
                Some(InferInputTensor {
                    name: name.clone(),
                    datatype: datatype.to_string(),
                    shape: shape.clone(),
                    parameters: Default::default(),
                    contents: Some(contents),
                })
            }
            LayoutInput::Texts { .. } => None,
        })
        .collect();
    request(layout, inputs)
}

fn request(layout: &Layout, inputs: Vec<InferInputTensor>) -> ModelInferRequest {
    ModelInferRequest {
        inputs,
        outputs: vec![InferRequestedOutputTensor {
            name: layout.output.clone(),
            parameters: Default::default(),
        }],
        ..Default::default()
    }
}

/// The `output` values of a response for `rows` sequences: `rows × width` values, row-major.
pub(super) fn read_output(
    response: &ModelInferResponse,
    output: &str,
    rows: usize,
) -> Result<(Vec<f32>, usize), String> {
    let (index, tensor) = response
        .outputs
        .iter()
        .enumerate()
        .find(|(_, t)| t.name == output)
        .ok_or_else(|| {
            let names: Vec<&str> = response.outputs.iter().map(|t| t.name.as_str()).collect();
            format!("the response has no output {output:?} (it has {names:?})")
        })?;
    let values = match response.raw_output_contents.get(index) {
        Some(raw) if !response.raw_output_contents.is_empty() => decode_raw(&tensor.datatype, raw)?,
        _ => {
            let contents = tensor.contents.clone().unwrap_or_default();
            match tensor.datatype.as_str() {
                "FP32" => contents.fp32_contents,
                "FP64" => contents.fp64_contents.iter().map(|&v| v as f32).collect(),
                "INT8" | "INT16" | "INT32" => {
                    contents.int_contents.iter().map(|&v| v as f32).collect()
                }
                "INT64" => contents.int64_contents.iter().map(|&v| v as f32).collect(),
                "UINT8" | "UINT16" | "UINT32" => {
                    contents.uint_contents.iter().map(|&v| v as f32).collect()
                }
                "UINT64" => contents.uint64_contents.iter().map(|&v| v as f32).collect(),
                other => {
                    return Err(format!(
                        "output {output:?} has datatype {other}, not a number"
                    ));
                }
            }
        }
    };
    if rows == 0 || values.is_empty() || values.len() % rows != 0 {
        return Err(format!(
            "output {output:?} holds {} values for {rows} sequences",
            values.len()
        ));
    }
    let width = values.len() / rows;
    Ok((values, width))
}

/// Raw little-endian contents of one tensor.
fn decode_raw(datatype: &str, raw: &[u8]) -> Result<Vec<f32>, String> {
    fn chunks<const N: usize>(
        raw: &[u8],
        read: impl Fn([u8; N]) -> f32,
    ) -> Result<Vec<f32>, String> {
        if !raw.len().is_multiple_of(N) {
            return Err(format!(
                "raw output of {} bytes is not a whole number of {N}-byte values",
                raw.len()
            ));
        }
        Ok(raw
            .chunks_exact(N)
            .map(|c| read(c.try_into().expect("N bytes")))
            .collect())
    }
    match datatype {
        "FP32" => chunks::<4>(raw, f32::from_le_bytes),
        "FP64" => chunks::<8>(raw, |b| f64::from_le_bytes(b) as f32),
        "FP16" => chunks::<2>(raw, |b| f16_to_f32(u16::from_le_bytes(b))),
        "BF16" => chunks::<2>(raw, |b| {
            f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
        }),
        "INT8" => chunks::<1>(raw, |b| b[0] as i8 as f32),
        "INT16" => chunks::<2>(raw, |b| i16::from_le_bytes(b) as f32),
        "INT32" => chunks::<4>(raw, |b| i32::from_le_bytes(b) as f32),
        "INT64" => chunks::<8>(raw, |b| i64::from_le_bytes(b) as f32),
        "UINT8" => chunks::<1>(raw, |b| b[0] as f32),
        "UINT16" => chunks::<2>(raw, |b| u16::from_le_bytes(b) as f32),
        "UINT32" => chunks::<4>(raw, |b| u32::from_le_bytes(b) as f32),
        "UINT64" => chunks::<8>(raw, |b| u64::from_le_bytes(b) as f32),
        other => Err(format!("output datatype {other} is not a number")),
    }
}

/// IEEE 754 half precision to single.
fn f16_to_f32(half: u16) -> f32 {
    let sign = ((half >> 15) as u32) << 31;
    let exponent = ((half >> 10) & 0x1f) as u32;
    let fraction = (half & 0x3ff) as u32;
    let bits = match (exponent, fraction) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalize the fraction.
            let mut exponent = 127 - 15 + 1;
            let mut fraction = fraction;
            while fraction & 0x400 == 0 {
                fraction <<= 1;
                exponent -= 1;
            }
            sign | (exponent << 23) | ((fraction & 0x3ff) << 13)
        }
        (0x1f, _) => sign | (0xff << 23) | (fraction << 13),
        _ => sign | ((exponent + 127 - 15) << 23) | (fraction << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::super::proto::model_infer_response::InferOutputTensor;
    use super::super::proto::model_metadata_response::TensorMetadata;
    use super::*;

    fn tensor(name: &str, datatype: &str, shape: &[i64]) -> TensorMetadata {
        TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        }
    }

    fn remote_spec(send: RemoteInput) -> (RewardModelSpec, KserveV2Spec) {
        let mut remote = KserveV2Spec::new(vec!["http://127.0.0.1:1".into()], "rm".into());
        remote.send = send;
        let mut spec = RewardModelSpec::new(
            "rm".into(),
            Default::default(),
            "tokenizer.json".into(),
            crate::models::InputFormat::Template,
        );
        spec.template = Some("{prompt} {response}".into());
        spec.max_batch_sequences = 64;
        (spec, remote)
    }

    #[test]
    fn half_precision_decodes() {
        for (bits, value) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x0000, 0.0),
            (0x7bff, 65504.0),
        ] {
            assert_eq!(f16_to_f32(bits), value, "{bits:#x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
    }

    #[test]
    fn layouts_follow_the_metadata_and_say_what_does_not_fit() {
        let (spec, remote) = remote_spec(RemoteInput::Tokens);
        let metadata = ModelMetadataResponse {
            name: "rm".into(),
            inputs: vec![
                tensor("input_ids", "INT64", &[-1, -1]),
                tensor("attention_mask", "INT32", &[-1, -1]),
            ],
            outputs: vec![
                tensor("logits", "FP32", &[-1, 3]),
                tensor("emb", "FP32", &[-1, 8]),
            ],
            ..Default::default()
        };
        let layout = layout(&spec, &remote, &metadata).unwrap();
        assert_eq!(layout.output, "logits");
        assert_eq!(layout.max_batch, 64);
        assert_eq!(layout.inputs.len(), 2);

        let fixed = ModelMetadataResponse {
            inputs: vec![tensor("input_ids", "INT64", &[8, -1])],
            ..metadata.clone()
        };
        assert_eq!(super::layout(&spec, &remote, &fixed).unwrap().max_batch, 8);

        let wrong_dtype = ModelMetadataResponse {
            inputs: vec![tensor("input_ids", "FP32", &[-1, -1])],
            ..metadata.clone()
        };
        let error = super::layout(&spec, &remote, &wrong_dtype).unwrap_err();
        assert!(error.contains("FP32") && error.contains("INT64"), "{error}");

        let unknown_output = RewardModelSpec {
            output: Some("score".into()),
            ..spec.clone()
        };
        let error = super::layout(&unknown_output, &remote, &metadata).unwrap_err();
        assert!(
            error.contains("\"score\"") && error.contains("logits (FP32)"),
            "{error}"
        );

        let (spec, remote) = remote_spec(RemoteInput::Texts);
        let error = super::layout(&spec, &remote, &metadata).unwrap_err();
        assert!(error.contains("BYTES"), "{error}");
        let texts = ModelMetadataResponse {
            inputs: vec![tensor("text", "BYTES", &[-1])],
            ..metadata
        };
        let layout = super::layout(&spec, &remote, &texts).unwrap();
        let request = texts_request(&layout, vec!["a".into(), "bc".into()]);
        assert_eq!(request.inputs[0].shape, vec![2]);
        assert_eq!(request.outputs[0].name, "logits");
    }

    #[test]
    fn outputs_read_from_typed_or_raw_contents() {
        let typed = ModelInferResponse {
            outputs: vec![InferOutputTensor {
                name: "logits".into(),
                datatype: "FP64".into(),
                shape: vec![2, 2],
                contents: Some(InferTensorContents {
                    fp64_contents: vec![1.0, 2.0, 3.0, 4.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            read_output(&typed, "logits", 2).unwrap(),
            (vec![1.0, 2.0, 3.0, 4.0], 2)
        );
        assert!(
            read_output(&typed, "logits", 3)
                .unwrap_err()
                .contains("4 values")
        );
        assert!(
            read_output(&typed, "score", 2)
                .unwrap_err()
                .contains("logits")
        );

        let raw = ModelInferResponse {
            outputs: vec![
                InferOutputTensor {
                    name: "other".into(),
                    datatype: "INT64".into(),
                    ..Default::default()
                },
                InferOutputTensor {
                    name: "score".into(),
                    datatype: "FP16".into(),
                    shape: vec![2],
                    ..Default::default()
                },
            ],
            raw_output_contents: vec![
                7i64.to_le_bytes().to_vec(),
                [0x3c00u16.to_le_bytes(), 0xc000u16.to_le_bytes()].concat(),
            ],
            ..Default::default()
        };
        assert_eq!(read_output(&raw, "score", 2).unwrap(), (vec![1.0, -2.0], 1));
    }
}
