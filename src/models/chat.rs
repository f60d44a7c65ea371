//! Chat-template input for LLM-based reward models (Skywork-Reward, ArmoRM and the like):
//! the HF `chat_template` from `tokenizer_config.json`, rendered with minijinja (plus
//! Python-style string methods) over `[user: prompt, assistant: response]`, then tokenized
//! without adding special tokens (the template writes them), as `apply_chat_template` does.

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, context};
use serde_json::Value;

use super::ModelError;

pub struct ChatTemplate {
    environment: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A special token in tokenizer_config.json: a string or `{ "content": ... }`.
fn token(config: &Value, key: &str) -> String {
    match &config[key] {
        Value::String(text) => text.clone(),
        Value::Object(object) => object
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Read the template from `tokenizer_config.json` (`chat_template` as a string, or a
    /// list of named templates, of which `default` is used).
    pub fn load(path: &Path, reward_model: &str) -> Result<Self, ModelError> {
        let error = |reason: String| ModelError::InvalidSpec {
            name: reward_model.to_string(),
            reason: format!("chat template from {}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        let template = match &config["chat_template"] {
            Value::String(template) => template.clone(),
            Value::Array(named) => named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .ok_or_else(|| error("no template named \"default\"".into()))?
                .to_string(),
            _ => return Err(error("no chat_template".into())),
        };
        let mut environment = Environment::new();
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        environment
            .add_template_owned("chat", template)
            .map_err(|e| error(e.to_string()))?;
        Ok(Self {
            environment,
            bos_token: token(&config, "bos_token"),
            eos_token: token(&config, "eos_token"),
        })
    }

    /// The conversation `[user: prompt, assistant: response]` as the model expects it.
    pub fn render(&self, prompt: &str, response: &str) -> Result<String, String> {
        let template = self
            .environment
            .get_template("chat")
            .map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => vec![
                    context! { role => "user", content => prompt },
                    context! { role => "assistant", content => response },
                ],
                add_generation_prompt => false,
                bos_token => self.bos_token.clone(),
                eos_token => self.eos_token.clone(),
            })
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_hf_style_template_with_python_methods() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &path,
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "chat_template": "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}<|{{ m.role }}|>\n{{ m.content.strip() }}{{ eos_token }}\n{% endfor %}"}"#,
        )
        .unwrap();
        let template = ChatTemplate::load(&path, "rm").unwrap();
        assert_eq!(
            template.render("  Hi? ", "Hello.").unwrap(),
            "<s><|user|>\nHi?</s>\n<|assistant|>\nHello.</s>\n"
        );
    }

    #[test]
    fn missing_template_is_a_spec_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(&path, "{}").unwrap();
        let error = ChatTemplate::load(&path, "rm").err().unwrap().to_string();
        assert!(error.contains("no chat_template"), "{error}");
    }
}
