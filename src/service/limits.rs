//! The request limits the service enforces (the config file's `[limits]`): sizes, counts
//! and concurrency. The api layer checks a request's sizes against them while converting
//! it; the service bounds routers, RMs and requests in progress. Plain data.

use serde::Deserialize;

/// Request limits; exceeding one is answered with the limit's name and value.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest gRPC message accepted, in bytes (default 16 MiB).
    pub max_message_bytes: usize,
    /// Queries per Score request (default 1024).
    pub max_queries_per_score: usize,
    /// Responses per query (default 256).
    pub max_responses_per_query: usize,
    /// Bytes per prompt and per response beyond which a Score is refused (default 1 MiB).
    pub max_text_bytes: usize,
    /// Cut longer prompts and responses to `kept_text_bytes` instead of refusing the Score
    /// (default true): RMs read only their first or last `max_length` tokens, and one long
    /// completion should not fail a training step.
    pub truncate_long_texts: bool,
    /// Bytes kept of a longer text: its first and last halves, joined by " … ", so an RM
    /// that reads either end sees what it would have read (default 64 KiB).
    pub kept_text_bytes: usize,
    /// Decision ids per Feedback request (default 4096).
    pub max_decision_ids_per_feedback: usize,
    /// Largest router context dimension (default 16384).
    pub max_context_dim: usize,
    /// Routers per server (default 1000).
    pub max_routers: usize,
    /// Reward models per server (default 64).
    pub max_reward_models: usize,
    /// Requests handled at once per service (RewardRouter, Admin); beyond it requests are
    /// refused at once with RESOURCE_EXHAUSTED (default 256).
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
            max_queries_per_score: 1024,
            max_responses_per_query: 256,
            max_text_bytes: 1024 * 1024,
            truncate_long_texts: true,
            kept_text_bytes: 64 * 1024,
            max_decision_ids_per_feedback: 4096,
            max_context_dim: 16384,
            max_routers: 1000,
            max_reward_models: 64,
            max_concurrent_requests: 256,
        }
    }
}
