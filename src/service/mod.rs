//! The domain service between the gRPC handlers and the components: it runs each request
//! from start to finish, as text-embeddings-inference's `infer.rs` does.
//!
//! - [`score`]: Score — selection, fan-out to reward models, deadline check, decision ids,
//!   ensemble combination, ranking, recording, waiting for durability, metrics.
//! - [`feedback`]: Feedback — applying the signal, durability, metrics.
//! - [`prior`]: AddPrior — labelled pairs scored by every RM, each RM's correctness
//!   entered into its arm.
//! - [`admin`]: reward models added and removed (load, probe, log, publish) and routers
//!   created, inspected, reset, deleted.
//! - [`slots`]: the bound on requests in progress (load shedding).
//! - [`limits`]: the request limits (`[limits]` of the config file).
//!
//! The service only `.await`s: the routers' front ([`RoutersHandle`]) and the reward
//! models' workers own their threads. Its inputs are domain calls the api layer built from
//! requests; its errors are [`ServiceError`], which the api maps to statuses in one place.

pub mod admin;
pub mod feedback;
pub mod limits;
pub mod prior;
pub mod score;
pub mod slots;

pub use feedback::{FeedbackCall, FeedbackSummary};
pub use limits::Limits;
pub use prior::{LabelledPair, PriorCall, PriorSummary};
pub use score::{ArmScore, QueryInput, ScoreCall, ScoredQuery, ranking};
pub use slots::RequestSlots;

use crate::models::{Encoders, ModelError, RewardModels};
use crate::routers::{Evictions, RouterError, RoutersHandle, unix_ms};
use crate::telemetry::metric;

/// What went wrong running a request, from the caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Router(#[from] RouterError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Too many requests in progress; the request was refused at once.
    #[error(
        "the server is at its limit of {limit} concurrent requests (limits.max_concurrent_requests); retry with backoff"
    )]
    Overloaded { limit: usize },
    #[error("the request's deadline passed while scoring; no decision was recorded")]
    DeadlineExceeded,
    /// The router takes contexts from clients, and the request sent none.
    #[error(
        "router {router:?} has no encoder: send a context of dimension {context_dim} with every query"
    )]
    ContextsMissing { router: String, context_dim: usize },
    /// A router with an encoder embeds each query's prompt: an empty one has nothing to
    /// embed.
    #[error("is empty; router {router:?} embeds the prompt with encoder {encoder:?}")]
    EmptyPrompt {
        router: String,
        encoder: String,
        query: usize,
    },
    /// A Score without contexts names a router that does not exist, and the server has no
    /// default encoder to create it with.
    #[error(
        "router {router:?} does not exist and the server has no default encoder (routers.default_encoder): send contexts, or create the router with an encoder"
    )]
    NoEncoderForNewRouter { router: String },
    /// A scoring task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    TaskFailed(#[source] tokio::task::JoinError),
}

/// The models a service runs.
pub struct Models {
    pub reward_models: RewardModels,
    pub encoders: Encoders,
    /// The encoder of routers that a Score without contexts creates on first use.
    pub default_encoder: Option<String>,
}

/// Which gRPC service a request belongs to (each has its own bound on requests in progress).
#[derive(Clone, Copy, Debug)]
pub enum RequestKind {
    RewardRouter,
    Admin,
}

/// Everything a request needs, shared by every handler.
pub struct Service {
    routers: RoutersHandle,
    reward_models: RewardModels,
    encoders: Encoders,
    /// The encoder of routers a Score without contexts creates on first use.
    default_encoder: Option<String>,
    limits: Limits,
    /// Serializes the changes to the model sets (load, log, publish as one step).
    model_admin: tokio::sync::Mutex<()>,
    reward_router_slots: RequestSlots,
    admin_slots: RequestSlots,
}

impl Service {
    pub fn new(models: Models, routers: RoutersHandle, limits: Limits) -> Self {
        Self {
            routers,
            reward_models: models.reward_models,
            encoders: models.encoders,
            default_encoder: models.default_encoder,
            reward_router_slots: RequestSlots::new(limits.max_concurrent_requests),
            admin_slots: RequestSlots::new(limits.max_concurrent_requests),
            limits,
            model_admin: tokio::sync::Mutex::new(()),
        }
    }

    /// A slot for one request of `api`, held until the permit drops, or `Overloaded`.
    pub fn admit(
        &self,
        kind: RequestKind,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ServiceError> {
        match kind {
            RequestKind::RewardRouter => self.reward_router_slots.try_acquire(),
            RequestKind::Admin => self.admin_slots.try_acquire(),
        }
    }

    /// The address of the replica that serves router `name`, when that is another one
    /// (replicas on PostgreSQL; a router nobody owns is taken over here).
    pub async fn router_served_elsewhere(
        &self,
        name: &str,
    ) -> Result<Option<String>, ServiceError> {
        Ok(self.routers.served_elsewhere(name).await?)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn reward_models(&self) -> &RewardModels {
        &self.reward_models
    }

    pub fn encoders(&self) -> &Encoders {
        &self.encoders
    }
}

fn record_evictions(router: &str, evictions: Evictions) {
    for (reason, total) in [("capacity", evictions.capacity), ("ttl", evictions.ttl)] {
        metrics::counter!(metric::DECISIONS_EVICTED, "router" => router.to_string(), "reason" => reason)
            .absolute(total);
    }
}
