//! Reward models served by vLLM over its HTTP API (the OpenAI-compatible server verl's reward
//! loop and OpenRLHF call), backend `vllm`.
//!
//! - [`spec`]: the `backend.vllm` settings of an RM (servers, served model name, the
//!   reference model's servers for an implicit reward, limits, TLS, API key).
//! - `client`: the HTTP calls (`/health`, `/v1/models`, `/v1/completions` with prompt
//!   log-probs, `/pooling`).
//! - `protocol`: [`Vllm`], vLLM as the remote model ([`crate::models::remote`]) runs it: a
//!   causal LM (likelihood, implicit reward, judge) is tokenized here exactly as in process
//!   and scored from vLLM's prompt log-probs; a classifier through `/pooling`. Queueing,
//!   coalescing, deadlines and health are the remote model's.

mod client;
mod protocol;
pub mod spec;

pub use protocol::Vllm;
