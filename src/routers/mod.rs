//! Routers: named bandit instances, their decisions awaiting feedback, and applying
//! feedback to them.
//!
//! - [`router`]: one router (settings, arms, pending decisions); select and feedback.
//! - [`registry`]: routers keyed by name, created explicitly or on first use.
//!
//! A router is mutated only through `Router::record` (decisions returned to a client) and
//! `Router::apply_feedback`; the bandit math lives in [`crate::bandit`]. Router state is in
//! memory in this version (durable state is the store's job, still to come).

pub mod registry;
pub mod router;

pub use registry::Routers;
pub use router::{
    ArmStatistics, Decision, FeedbackOutcome, FeedbackSignal, Policy, Router, RouterSettings,
    Selection, SelectionMode,
};

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
    #[error("decision_ids not found in router {router:?} (unknown or expired): {decision_ids:?}")]
    UnknownDecisions {
        router: String,
        decision_ids: Vec<String>,
    },
    #[error("settings.{field}: {reason}")]
    InvalidSettings { field: &'static str, reason: String },
}
