//! Routers: named bandit instances, their decisions awaiting feedback, and applying
//! feedback to them.
//!
//! - [`settings`]: a router's settings and policies (LinUCB and the paper's baselines).
//! - [`router`]: one router (arms, pending decisions); select, record, feedback, reset.
//! - [`registry`]: routers keyed by name, created explicitly or on first use.
//!
//! A router changes only through `Router::apply` with a `RouterEvent`, and the registry
//! logs every event to the store before applying it, so recovery replays exactly what was
//! acknowledged; the bandit math lives in [`crate::bandit`].

pub mod registry;
pub mod router;
pub mod settings;
#[cfg(test)]
mod tests;

pub use registry::{Routers, StateEvent};
pub use router::{
    ArmStatistics, Decision, Evictions, FeedbackOutcome, FeedbackSignal, Router, RouterEvent,
    RouterState, Selection,
};
pub use settings::{Policy, RouterSettings, SelectionMode};

/// What went wrong in a router operation, from the caller's point of view.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouterError {
    #[error("router {name:?} not found")]
    UnknownRouter { name: String },
    #[error("router {name:?} already exists")]
    RouterExists { name: String },
    #[error("router name {name:?} is invalid: use 1 to {max} characters from [A-Za-z0-9._-]")]
    InvalidRouterName { name: String, max: usize },
    #[error("queries[{query}].context has dimension {got}; router {router:?} expects {expected}")]
    ContextDimension {
        router: String,
        query: usize,
        expected: usize,
        got: usize,
    },
    #[error("router {router:?} has no reward model to route to")]
    NoRewardModels { router: String },
    #[error("router {router:?} uses the fixed reward model {reward_model:?}, which is not serving")]
    FixedRewardModelUnavailable {
        router: String,
        reward_model: String,
    },
    #[error("decision_ids not found in router {router:?} (unknown or expired): {decision_ids:?}")]
    UnknownDecisions {
        router: String,
        decision_ids: Vec<String>,
    },
    #[error("reward {reward} is outside [0, 1]; router {router:?} has reward_is_normalized set")]
    RewardOutOfRange { router: String, reward: f64 },
    #[error("settings.{field}: {reason}")]
    InvalidSettings { field: &'static str, reason: String },
    #[error("router {router:?}: state does not fit its settings: {reason}")]
    InvalidState { router: String, reason: String },
    #[error("cannot make the change durable: {reason}")]
    StateWrite { reason: String },
    #[error("the server already has {max} routers (limits.max_routers = {max})")]
    TooManyRouters { max: usize },
}
