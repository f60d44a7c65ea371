//! vLLM's HTTP API, the calls a reward model needs: `GET /health`, `GET /v1/models` (the
//! served model and its `max_model_len`), `POST /v1/completions` asking for the prompt's
//! log-probs (`prompt_logprobs: 0`, one generated token, which is ignored), and `POST
//! /pooling` (a classifier's outputs). One connection pool per RM (reqwest, rustls); every
//! call carries the API key and a timeout.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::models::remote::CallError;
use crate::models::vllm::spec::VllmSpec;

/// The HTTP client of one RM's servers.
pub(super) struct Client {
    http: reqwest::Client,
    api_key: Option<HeaderValue>,
}

/// `GET /v1/models`.
#[derive(Deserialize)]
struct Models {
    data: Vec<ModelCard>,
}

#[derive(Deserialize)]
struct ModelCard {
    id: String,
    #[serde(default)]
    max_model_len: Option<usize>,
}

/// `POST /v1/completions` with `prompt_logprobs`.
#[derive(Deserialize)]
struct Completions {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    index: usize,
    /// Per prompt token: null for the first, else the token's log-prob keyed by its id.
    prompt_logprobs: Option<Vec<Option<HashMap<String, TokenLogprob>>>>,
}

#[derive(Deserialize)]
struct TokenLogprob {
    logprob: f64,
}

/// `POST /pooling`.
#[derive(Deserialize)]
struct Pooled {
    data: Vec<PooledItem>,
}

#[derive(Deserialize)]
struct PooledItem {
    index: usize,
    data: serde_json::Value,
}

/// What `/pooling` is given: texts, or token ids.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(untagged)]
pub(in crate::models) enum PoolingInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl Client {
    pub(super) fn new(spec: &VllmSpec) -> Result<Self, String> {
        let api_key = match &spec.api_key_env {
            Some(variable) => {
                let key = std::env::var(variable).map_err(|_| {
                    format!("vllm.api_key_env: environment variable {variable} is not set")
                })?;
                let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                    format!("environment variable {variable} holds no valid header value")
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(path) = &spec.tls_ca {
            let pem = std::fs::read(path)
                .map_err(|e| format!("vllm.tls_ca: cannot read {}: {e}", path.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("vllm.tls_ca: {}: {e}", path.display()))?;
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(certificate);
        }
        let http = builder
            .build()
            .map_err(|e| format!("vllm: HTTP client: {e}"))?;
        Ok(Self { http, api_key })
    }

    /// One call of `request` on `base` under `timeout`, its JSON answer as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        base: &str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let failed = |reason: String, unreachable: bool| CallError {
            endpoint: base.to_string(),
            reason,
            unreachable,
            timed_out: false,
        };
        let mut request = request.timeout(timeout);
        if let Some(key) = &self.api_key {
            request = request.header(AUTHORIZATION, key.clone());
        }
        let send = async {
            let response = request.send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(timeout, send).await {
            Err(_) => return Err(CallError::no_answer(base.to_string(), timeout)),
            Ok(Err(error)) if error.is_timeout() => {
                return Err(CallError::no_answer(base.to_string(), timeout));
            }
            Ok(Err(error)) => {
                let unreachable = error.is_connect();
                return Err(failed(error_chain(&error), unreachable));
            }
            Ok(Ok(answer)) => answer,
        };
        if !status.is_success() {
            let message = String::from_utf8_lossy(&body);
            let message: String = message.chars().take(500).collect();
            return Err(failed(format!("HTTP {status}: {message}"), false));
        }
        serde_json::from_slice(&body).map_err(|e| failed(format!("unexpected answer: {e}"), false))
    }

    fn url(base: &str, path: &str) -> String {
        format!("{}{path}", base.trim_end_matches('/'))
    }

    /// `GET /health` answers 200.
    pub(super) async fn healthy(&self, base: &str, timeout: Duration) -> Result<bool, CallError> {
        let mut request = self.http.get(Self::url(base, "/health")).timeout(timeout);
        if let Some(key) = &self.api_key {
            request = request.header(AUTHORIZATION, key.clone());
        }
        match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => Err(CallError::no_answer(base.to_string(), timeout)),
            Ok(Ok(response)) => Ok(response.status().is_success()),
            Ok(Err(error)) => Err(CallError {
                endpoint: base.to_string(),
                reason: error_chain(&error),
                unreachable: true,
                timed_out: error.is_timeout(),
            }),
        }
    }

    /// `model`'s `max_model_len` on `base`; `Ok(Err)`: the server does not serve it (the
    /// names it serves).
    pub(super) async fn max_model_len(
        &self,
        base: &str,
        model: &str,
        timeout: Duration,
    ) -> Result<Result<Option<usize>, String>, CallError> {
        let models: Models = self
            .call(base, self.http.get(Self::url(base, "/v1/models")), timeout)
            .await?;
        match models.data.iter().find(|card| card.id == model) {
            Some(card) => Ok(Ok(card.max_model_len)),
            None => {
                let served: Vec<&str> = models.data.iter().map(|card| card.id.as_str()).collect();
                Ok(Err(format!(
                    "{base} does not serve a model named {model:?} (it serves {served:?})"
                )))
            }
        }
    }

    /// Per prompt (token ids), the log-prob of each of its tokens given those before it
    /// (`NaN` for the first, which has no context).
    pub(super) async fn prompt_logprobs(
        &self,
        base: &str,
        model: &str,
        prompts: &[&[u32]],
        timeout: Duration,
    ) -> Result<Result<Vec<Vec<f64>>, String>, CallError> {
        let body = serde_json::json!({
            "model": model,
            "prompt": prompts,
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": 0,
        });
        let answer: Completions = self
            .call(
                base,
                self.http
                    .post(Self::url(base, "/v1/completions"))
                    .json(&body),
                timeout,
            )
            .await?;
        Ok(read_prompt_logprobs(answer, prompts))
    }

    /// Per input, the values `/pooling` returns (a classifier's outputs).
    pub(super) async fn pooling(
        &self,
        base: &str,
        model: &str,
        input: &PoolingInput,
        rows: usize,
        timeout: Duration,
    ) -> Result<Result<(Vec<f32>, usize), String>, CallError> {
        let body = serde_json::json!({ "model": model, "input": input });
        let answer: Pooled = self
            .call(
                base,
                self.http.post(Self::url(base, "/pooling")).json(&body),
                timeout,
            )
            .await?;
        Ok(read_pooled(answer, rows))
    }
}

/// The error and its sources, one line (reqwest's own message hides the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn read_prompt_logprobs(answer: Completions, prompts: &[&[u32]]) -> Result<Vec<Vec<f64>>, String> {
    if answer.choices.len() != prompts.len() {
        return Err(format!(
            "{} choices for {} prompts",
            answer.choices.len(),
            prompts.len()
        ));
    }
    let mut out: Vec<Option<Vec<f64>>> = vec![None; prompts.len()];
    for choice in answer.choices {
        let ids = prompts
            .get(choice.index)
            .ok_or_else(|| format!("choice index {} out of range", choice.index))?;
        let entries = choice
            .prompt_logprobs
            .ok_or("no prompt_logprobs in the answer (is this vLLM?)")?;
        if entries.len() != ids.len() {
            return Err(format!(
                "prompt {} has {} tokens but {} prompt log-probs",
                choice.index,
                ids.len(),
                entries.len()
            ));
        }
        let logprobs = entries
            .iter()
            .zip(ids.iter())
            .enumerate()
            .map(|(t, (entry, id))| match (t, entry) {
                (0, _) => Ok(f64::NAN),
                (_, Some(tokens)) => tokens
                    .get(&id.to_string())
                    .map(|token| token.logprob)
                    .ok_or_else(|| format!("no log-prob for token {id} at position {t}")),
                (_, None) => Err(format!("no log-prob at position {t}")),
            })
            .collect::<Result<Vec<f64>, String>>()?;
        out[choice.index] = Some(logprobs);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, logprobs)| logprobs.ok_or_else(|| format!("no choice for prompt {i}")))
        .collect()
}

fn read_pooled(answer: Pooled, rows: usize) -> Result<(Vec<f32>, usize), String> {
    if answer.data.len() != rows {
        return Err(format!("{} outputs for {rows} inputs", answer.data.len()));
    }
    let mut items = answer.data;
    items.sort_by_key(|item| item.index);
    let mut values = Vec::new();
    let mut width = None;
    for item in items {
        let row: Vec<f32> = match &item.data {
            serde_json::Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN) as f32],
            serde_json::Value::Array(numbers) => numbers
                .iter()
                .map(|n| n.as_f64().map(|v| v as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or(
                    "a pooling output is not a flat list of numbers (a per-token output?): serve the classifier with sequence pooling",
                )?,
            other => return Err(format!("a pooling output is {other}, not numbers")),
        };
        match width {
            None => width = Some(row.len()),
            Some(w) if w != row.len() => {
                return Err(format!("pooling outputs of {w} and {} values", row.len()));
            }
            Some(_) => {}
        }
        values.extend(row);
    }
    Ok((values, width.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_logprobs_are_read_by_token_id_in_prompt_order() {
        let answer: Completions = serde_json::from_str(
            r#"{"choices": [
                {"index": 1, "prompt_logprobs": [null, {"8": {"logprob": -0.5, "rank": 1}}]},
                {"index": 0, "prompt_logprobs": [null, {"5": {"logprob": -1.0}, "9": {"logprob": -0.1}},
                                                 {"6": {"logprob": -2.0}}]}
            ]}"#,
        )
        .unwrap();
        let prompts: [&[u32]; 2] = [&[1, 5, 6], &[1, 8]];
        let got = read_prompt_logprobs(answer, &prompts).unwrap();
        assert!(got[0][0].is_nan() && got[1][0].is_nan());
        assert_eq!(&got[0][1..], &[-1.0, -2.0]);
        assert_eq!(&got[1][1..], &[-0.5]);
        let short: Completions =
            serde_json::from_str(r#"{"choices": [{"index": 0, "prompt_logprobs": [null]}]}"#)
                .unwrap();
        assert!(
            read_prompt_logprobs(short, &[&[1, 2]])
                .unwrap_err()
                .contains("1 prompt log-probs")
        );
    }

    #[test]
    fn pooled_rows_are_flat_and_of_one_width() {
        let answer: Pooled = serde_json::from_str(
            r#"{"data": [{"index": 1, "data": [0.5, 1.5]}, {"index": 0, "data": [0.25, 2.0]}]}"#,
        )
        .unwrap();
        assert_eq!(
            read_pooled(answer, 2).unwrap(),
            (vec![0.25, 2.0, 0.5, 1.5], 2)
        );
        let per_token: Pooled =
            serde_json::from_str(r#"{"data": [{"index": 0, "data": [[0.1], [0.2]]}]}"#).unwrap();
        assert!(read_pooled(per_token, 1).unwrap_err().contains("per-token"));
    }
}
