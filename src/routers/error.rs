//! `RouterError`: what went wrong in a router operation, from the caller's point of view.
//! Every part of `routers` returns it; `api/status.rs` maps it to a gRPC status.

use crate::store::StoreError;

/// What went wrong in a router operation, from the caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The router takes its contexts from an encoder, and the request sent contexts.
    #[error(
        "router {router:?} takes its contexts from encoder {encoder:?} (the prompt's embedding); send queries without context"
    )]
    ContextsNotTaken { router: String, encoder: String },
    #[error("router {name:?} not found")]
    UnknownRouter { name: String },
    #[error("router {name:?} already exists")]
    RouterExists { name: String },
    /// CreateRouter for an existing router with other settings.
    #[error(
        "router {name:?} already exists with other settings: {fields:?} differ; delete it first or create it with its settings"
    )]
    SettingsDiffer {
        name: String,
        fields: Vec<&'static str>,
    },
    #[error("router name {name:?} is invalid: use 1 to {max} characters from [A-Za-z0-9._-]")]
    InvalidRouterName { name: String, max: usize },
    #[error("context of query {query} has dimension {got}; router {router:?} expects {expected}")]
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
    #[error("decisions not found in router {router:?} (unknown or expired): {decision_ids:?}")]
    UnknownDecisions {
        router: String,
        decision_ids: Vec<String>,
    },
    /// A Feedback idempotency key already answered a different request.
    #[error(
        "idempotency key {key:?} of router {router:?} was used for a different Feedback; use a new key per request"
    )]
    IdempotencyKeyReused { router: String, key: String },
    /// Labels for a decision whose response count differs.
    #[error(
        "labels for decision {decision_id:?} of router {router:?}: {got} labels; the decision scored {expected} responses (one label per response, in request order)"
    )]
    LabelCount {
        router: String,
        decision_id: String,
        expected: usize,
        got: usize,
    },
    #[error(
        "preferred response {index} of decision {decision_id:?} of router {router:?} is out of range: the decision scored {responses} responses"
    )]
    PreferredIndex {
        router: String,
        decision_id: String,
        index: u32,
        responses: usize,
    },
    /// A prior needs a model per arm to enter.
    #[error(
        "router {router:?} runs policy {policy}, which keeps no per-arm model for a prior; use linucb, thompson or offline"
    )]
    PriorNeedsLinearArms {
        router: String,
        policy: &'static str,
    },
    /// Labels for a decision recorded before decisions kept their scores.
    #[error(
        "decision {decision_id:?} of router {router:?} was recorded without its scores (before this server version); send a loss or reward for it"
    )]
    ScoresNotKept { router: String, decision_id: String },
    #[error("reward {reward} is outside [0, 1]; router {router:?} has reward_is_normalized set")]
    RewardOutOfRange { router: String, reward: f64 },
    /// `field` is the settings key (config `[routers]`, CreateRouter's `settings`).
    #[error("{field}: {reason}")]
    InvalidSettings { field: &'static str, reason: String },
    #[error("router {router:?}: state does not fit its settings: {reason}")]
    InvalidState { router: String, reason: String },
    #[error("the server already has {max} routers (limits.max_routers = {max})")]
    TooManyRouters { max: usize },
    /// Another replica owns the router (PostgreSQL backend): the request belongs there.
    #[error(
        "router {router:?} is served by the replica at {address} (its owner changed while this request was on its way): retry"
    )]
    ServedElsewhere { router: String, address: String },
    /// This replica's lease on the router may have lapsed (its last renewal began more than
    /// a lease ago) and no other replica holds it: nothing is answered from a copy that may
    /// be stale until the lease is renewed or taken over.
    #[error(
        "this replica's lease on router {router:?} may have lapsed ({overdue_ms} ms past its last renewal) and is being renewed or taken over: retry"
    )]
    LeaseUnconfirmed { router: String, overdue_ms: u64 },
    /// The store refused the change: nothing was applied.
    #[error("cannot make the change durable: {0}")]
    StateWrite(#[source] StoreError),
    /// The change was applied but the store could not make it durable: not acknowledged.
    #[error("not acknowledged: {0}")]
    NotAcknowledged(#[source] StoreError),
    /// A change or snapshot could not be encoded for the log.
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    /// A logged record or snapshot cannot be read back.
    #[error("record {seq} cannot be decoded: {source}")]
    Decode {
        seq: u64,
        #[source]
        source: postcard::Error,
    },
    /// A logged record does not apply to the recovered state.
    #[error("record {seq} does not apply: {source}")]
    Replay {
        seq: u64,
        #[source]
        source: Box<RouterError>,
    },
    /// Recovery or a snapshot failed in the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task of the routers' front panicked or was cancelled.
    #[error("internal task failed: {0}")]
    TaskFailed(#[source] tokio::task::JoinError),
}
