//! Text to tokens for one reward model: its `tokenizer.json` (padding off, truncation at the
//! spec's `max_length` on the spec's side), the input text built as the spec says (a
//! (prompt, response) pair, a template, or the model's chat template), and the pad id used
//! to fill batches. Runs on the RM's worker threads; cost O(total text length).

use tokenizers::{
    EncodeInput, Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::chat::ChatTemplate;
use super::spec::TruncationSide;
use super::{InputFormat, ModelError, RewardModelSpec};

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
        tokenizer: Tokenizer,
        chat: Option<ChatTemplate>,
    ) -> Self {
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
