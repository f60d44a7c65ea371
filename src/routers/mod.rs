//! Routers: named bandit instances, their decisions awaiting feedback, the durable catalog
//! of them, and their placement over replicas. From the bottom up (each part imports only
//! the parts listed before it):
//!
//! - `error`: [`RouterError`], the one error of every part below.
//! - [`decisions`]: the book of decisions as plain data (selections, events, feedback forms,
//!   the pending-decision book).
//! - [`instance`]: one bandit instance, [`Router`]: settings, selection and the policy
//!   dispatch, applying feedback and priors, statistics, its snapshot formats.
//! - [`catalog`]: routers keyed by name ([`Routers`]) and the ledger that logs, replays and
//!   snapshots every change (and the RMs and encoders added through Admin).
//! - [`replicas`]: routers spread over replicas sharing a PostgreSQL database, one owner
//!   per router; placement, forwarding addresses and leases.
//! - `placement`: where a router lives (here, or the replica that owns it) and whether a
//!   copy found earlier may have gone stale.
//! - [`handle`]: the async front: runs the catalog's work on blocking threads and waits
//!   for durability, so callers only `.await`.
//!
//! A router changes only through `Router::apply` with a `RouterEvent`, and the registry
//! logs every event to the store before applying it, so recovery replays exactly what was
//! acknowledged; the bandit math lives in [`crate::bandit`].

pub mod catalog;
pub mod decisions;
mod error;
pub mod handle;
pub mod instance;
mod placement;
pub mod replicas;
#[cfg(test)]
mod tests;

pub use catalog::ledger::{EncoderChanges, ModelChanges, RewardModelChanges, StateEvent};
pub use catalog::registry::{FirstUse, Routers, RoutersOptions};
pub use decisions::events::{
    AnsweredDecision, Combination, Decision, DecisionFeedback, Evictions, FeedbackCounts,
    FeedbackForm, FeedbackOutcome, FeedbackSignal, FeedbackSignals, IdempotencyKey,
    MAX_PRIOR_WEIGHT, PriorObservations, PriorOutcome, RouterEvent, Selection,
};
pub use error::RouterError;
pub use handle::{
    FeedbackReport, FoundRouter, RecordReport, RouterInfo, RouterRef, RoutersHandle, SelectedFor,
    SelectionInput, Ticket, unix_ms,
};
pub use instance::router::Router;
pub use instance::settings::{
    FirstReward, Normalization, NormalizationKind, Policy, PolicyKind, Preset, RouterSettings,
    RouterSettingsPatch, SelectionMode,
};
pub use instance::state::RouterState;
pub use instance::statistics::ArmStatistics;
