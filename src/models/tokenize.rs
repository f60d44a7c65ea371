//! Text to tokens for one reward model: its `tokenizer.json` (padding off, truncation at the
//! spec's `max_length` on the spec's side), the input text built as the spec says (a
//! (prompt, response) pair, a template, or the model's chat template), and the pad id used
//! to fill batches. Runs on the RM's worker threads; cost O(total text length).
//!
//! A causal LM scored by likelihood reads the prompt part and the response part as two
//! sequences of one encoding (sequence ids 0 and 1, so the session knows which tokens are
//! the response's): the input text is rendered once with a marker in the response's place,
//! the text before the marker is the prompt part (tokenized with the tokenizer's special
//! tokens, unless a chat template writes them), and the rest of the full text — the
//! response and whatever the template closes the turn with — is the response part,
//! tokenized without special tokens and concatenated, as TRL's DPO tokenization and
//! RewardBench do. Over `max_length` the prompt is cut from the left; the response is kept
//! whole unless it alone does not fit (then cut at its end); both are counted.

use tokenizers::{
    EncodeInput, Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::chat::ChatTemplate;
use super::spec::{JudgeRubric, ScoreRead, TruncationSide};
use super::{InputFormat, ModelError, RewardModelSpec};
use crate::telemetry::metric;

/// Stands in for the response when the prompt part of a causal LM's input is rendered.
const RESPONSE_MARK: &str = "\u{1}laser-response\u{1}";

/// One RM's tokenizer and input format.
pub(super) struct TextEncoder {
    spec: RewardModelSpec,
    tokenizer: Tokenizer,
    chat: Option<ChatTemplate>,
    pad_id: u32,
}

impl TextEncoder {
    pub(super) fn new(
        spec: RewardModelSpec,
        mut tokenizer: Tokenizer,
        chat: Option<ChatTemplate>,
    ) -> Self {
        if spec.score.is_causal_lm() {
            // Truncation keeps the response (`encode_continuations`), not the tokenizer's.
            tokenizer
                .with_truncation(None)
                .expect("no truncation is valid");
        }
        let pad_id = ["[PAD]", "<pad>", "<|pad|>"]
            .iter()
            .find_map(|token| tokenizer.token_to_id(token))
            .unwrap_or(0);
        Self {
            spec,
            tokenizer,
            chat,
            pad_id,
        }
    }

    /// The id that fills padded positions of `input_ids`.
    pub(super) fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub(super) fn encode(
        &self,
        prompt: &str,
        responses: &[String],
    ) -> Result<Vec<Encoding>, ModelError> {
        if self.spec.score.is_causal_lm() {
            return self.encode_continuations(prompt, responses);
        }
        let error = |reason: String| ModelError::Tokenizer {
            name: self.spec.name.clone(),
            reason,
        };
        let inputs: Vec<EncodeInput> = responses
            .iter()
            .map(|response| -> Result<EncodeInput, ModelError> {
                Ok(match self.spec.input_format {
                    InputFormat::Pair => (prompt.to_string(), response.clone()).into(),
                    _ => model_text(&self.spec, self.chat.as_ref(), prompt, response)?.into(),
                })
            })
            .collect::<Result<_, _>>()?;
        // A chat template writes its own special tokens.
        let add_special_tokens = self.spec.input_format != InputFormat::Chat;
        self.tokenizer
            .encode_batch(inputs, add_special_tokens)
            .map_err(|e| error(e.to_string()))
    }
}

impl TextEncoder {
    /// Each response as a continuation of the prompt: sequence 0 the prompt part, sequence 1
    /// the response part, at most `max_length` tokens in all (see the module comment).
    fn encode_continuations(
        &self,
        prompt: &str,
        responses: &[String],
    ) -> Result<Vec<Encoding>, ModelError> {
        if let ScoreRead::Judge(rubric) = &self.spec.score {
            return self.encode_judgements(rubric, prompt, responses);
        }
        let error = |reason: String| ModelError::Tokenizer {
            name: self.spec.name.clone(),
            reason,
        };
        let marked = model_text(&self.spec, self.chat.as_ref(), prompt, RESPONSE_MARK)?;
        let Some((prefix, _)) = marked.split_once(RESPONSE_MARK) else {
            return Err(error(
                "the input text does not contain the response (the template drops it)".into(),
            ));
        };
        let add_special_tokens = self.spec.input_format != InputFormat::Chat;
        let prompt_part = self
            .tokenizer
            .encode(prefix, add_special_tokens)
            .map_err(|e| error(e.to_string()))?;
        let mut encodings = Vec::with_capacity(responses.len());
        for response in responses {
            let full = model_text(&self.spec, self.chat.as_ref(), prompt, response)?;
            let Some(rest) = full.strip_prefix(prefix) else {
                return Err(error(
                    "the template renders the prompt differently with this response".into(),
                ));
            };
            encodings.push(self.continuation(&prompt_part, rest)?);
        }
        Ok(encodings)
    }

    /// A judge's inputs: per response, one continuation per rating of the judge's
    /// instruction (the user turn of the chat template, or the instruction as text), in
    /// response order, ratings in rubric order.
    fn encode_judgements(
        &self,
        rubric: &JudgeRubric,
        prompt: &str,
        responses: &[String],
    ) -> Result<Vec<Encoding>, ModelError> {
        let error = |reason: String| ModelError::Tokenizer {
            name: self.spec.name.clone(),
            reason,
        };
        let mut encodings = Vec::with_capacity(responses.len() * rubric.ratings.len());
        for response in responses {
            let instruction = rubric.render(prompt, response);
            let (prefix, add_special_tokens) = match &self.chat {
                Some(chat) => {
                    let marked = chat
                        .render(&instruction, RESPONSE_MARK)
                        .map_err(|e| error(format!("chat template: {e}")))?;
                    let Some((prefix, _)) = marked.split_once(RESPONSE_MARK) else {
                        return Err(error("the chat template drops the assistant's turn".into()));
                    };
                    (prefix.to_string(), false)
                }
                None => (instruction, true),
            };
            let prompt_part = self
                .tokenizer
                .encode(prefix.as_str(), add_special_tokens)
                .map_err(|e| error(e.to_string()))?;
            for rating in &rubric.ratings {
                encodings.push(self.continuation(&prompt_part, rating)?);
            }
        }
        Ok(encodings)
    }

    /// `prompt_part` then `rest` tokenized without special tokens, as sequences 0 and 1, at
    /// most `max_length` tokens: the prompt cut from the left first, the rest at its end only
    /// when it alone does not fit (each counted).
    fn continuation(&self, prompt_part: &Encoding, rest: &str) -> Result<Encoding, ModelError> {
        let name = &self.spec.name;
        let max_length = self.spec.max_length;
        let mut response_part =
            self.tokenizer
                .encode(rest, false)
                .map_err(|e| ModelError::Tokenizer {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
        let mut prompt_part = prompt_part.clone();
        if response_part.len() >= max_length {
            response_part.truncate(max_length - 1, 0, TruncationDirection::Right);
            metrics::counter!(metric::CAUSAL_LM_TRUNCATED, "reward_model" => name.clone(), "part" => "response").increment(1);
        }
        let prompt_room = max_length - response_part.len();
        if prompt_part.len() > prompt_room {
            prompt_part.truncate(prompt_room, 0, TruncationDirection::Left);
            metrics::counter!(metric::CAUSAL_LM_TRUNCATED, "reward_model" => name.clone(), "part" => "prompt").increment(1);
        }
        prompt_part.set_sequence_id(0);
        response_part.set_sequence_id(1);
        Ok(Encoding::merge([prompt_part, response_part], false))
    }
}

/// The response's tokens in a causal LM's encoding (sequence 1): `start..end`.
pub(super) fn response_span(encoding: &Encoding) -> std::ops::Range<usize> {
    let ids = encoding.get_sequence_ids();
    let start = ids
        .iter()
        .position(|id| *id == Some(1))
        .unwrap_or(ids.len());
    start..ids.len()
}

/// The one text a `template`, `chat` or `text` model reads for (prompt, response) (a `pair`
/// model reads the two: the prompt, then the response, joined by a newline here).
pub(super) fn model_text(
    spec: &RewardModelSpec,
    chat: Option<&ChatTemplate>,
    prompt: &str,
    response: &str,
) -> Result<String, ModelError> {
    let error = |reason: String| ModelError::Tokenizer {
        name: spec.name.clone(),
        reason,
    };
    match (&spec.input_format, chat) {
        (InputFormat::Pair, _) => Ok(format!("{prompt}\n{response}")),
        (InputFormat::Text, _) => Ok(response.to_string()),
        (InputFormat::Template, _) => Ok(spec.render(prompt, response)),
        (InputFormat::Chat, Some(chat)) => chat
            .render(prompt, response)
            .map_err(|e| error(format!("chat template: {e}"))),
        (InputFormat::Chat, None) => Err(error("no chat template loaded".into())),
    }
}

pub(super) fn load_tokenizer(spec: &RewardModelSpec) -> Result<Tokenizer, ModelError> {
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
