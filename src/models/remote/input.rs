//! What a remote model is sent, built here from (prompt, response): rendered texts (the
//! RM's template or chat template, or the response alone) for an engine that tokenizes, or
//! token encodings (the RM's tokenizer) for one that takes tokens. Loading reads the
//! tokenizer or the chat template: blocking.

use crate::models::chat::ChatTemplate;
use crate::models::kserve::spec::RemoteInput;
use crate::models::tokenize::{TextEncoder, load_tokenizer, model_text};
use crate::models::{InputFormat, ModelError, RewardModelSpec};

/// How texts become a request's inputs.
pub(in crate::models) enum Input {
    /// Rendered texts.
    Texts { chat: Option<Box<ChatTemplate>> },
    /// Tokenized here.
    Tokens { encoder: Box<TextEncoder> },
}

impl Input {
    /// The tokenizer (`send = "tokens"`) or the chat template (`send = "texts"`, chat
    /// input). Blocking.
    pub(in crate::models) fn load(
        spec: &RewardModelSpec,
        send: RemoteInput,
    ) -> Result<Self, ModelError> {
        let chat = match spec.input_format {
            InputFormat::Chat => Some(ChatTemplate::load(
                &spec.tokenizer_config_path(),
                &spec.name,
            )?),
            _ => None,
        };
        Ok(match send {
            RemoteInput::Texts => Input::Texts {
                chat: chat.map(Box::new),
            },
            RemoteInput::Tokens => {
                if let Err(e) = std::fs::metadata(&spec.tokenizer) {
                    return Err(ModelError::MissingFile {
                        name: spec.name.clone(),
                        path: spec.tokenizer.display().to_string(),
                        reason: e.to_string(),
                    });
                }
                Input::Tokens {
                    encoder: Box::new(TextEncoder::new(spec.clone(), load_tokenizer(spec)?, chat)),
                }
            }
        })
    }

    /// Off the async runtime.
    pub(in crate::models) async fn load_off_runtime(
        spec: &RewardModelSpec,
        send: RemoteInput,
    ) -> Result<Self, ModelError> {
        let spec = spec.clone();
        crate::models::worker::off_runtime(spec.name.clone(), move || Self::load(&spec, send)).await
    }
}

/// One text per response (`Input::Texts`).
pub(in crate::models) fn texts(
    spec: &RewardModelSpec,
    chat: Option<&ChatTemplate>,
    prompt: &str,
    responses: &[String],
) -> Result<Vec<String>, ModelError> {
    responses
        .iter()
        .map(|response| model_text(spec, chat, prompt, response))
        .collect()
}
