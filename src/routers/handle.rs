//! The routers' async front. [`RoutersHandle`] owns the seam between the async runtime and
//! the routers' blocking work: every method runs the registry's locks and bandit math on
//! tokio's blocking pool (select O(K·d²) per query, feedback O(d²·r) per arm, router info
//! O(K·d²) at d = 4096) and then waits, without blocking, until the change is durable.
//! Callers only `.await`; none of them locks a router or holds one.
//!
//! Router state leaves here as plain data ([`RouterInfo`], [`Selection`]), never as a
//! shared router.

use std::sync::Arc;

use super::events::{Evictions, FeedbackForm, FeedbackOutcome, Selection};
use super::ledger::{EncoderChanges, RewardModelChanges};
use super::registry::{FirstUse, SharedRouter};
use super::router::Router;
use super::settings::{RouterSettings, RouterSettingsPatch, SelectionMode};
use super::statistics::ArmStatistics;
use super::{RouterError, Routers};
use crate::models::{EncoderSpec, RewardModelSpec};
use crate::store::Durable;

/// A cheap, clonable async handle on the routers.
#[derive(Clone)]
pub struct RoutersHandle {
    routers: Arc<Routers>,
}

/// A selection made on one router, to record on that same router.
pub struct SelectedFor {
    router: SharedRouter,
    pub selection: Selection,
}

/// What a Score asks of the router: a context and optional group per query.
pub struct SelectionInput {
    pub contexts: Vec<Vec<f32>>,
    pub groups: Vec<Option<String>>,
    pub mode: Option<SelectionMode>,
    pub explain: bool,
    /// The client sent `contexts` (else the router's encoder made them): refused by a
    /// router that takes its contexts from an encoder.
    pub client_contexts: bool,
}

/// Milliseconds since the Unix epoch (the clock events are stamped with).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// After decisions are recorded (and durable).
pub struct RecordReport {
    /// Decisions the router holds awaiting feedback.
    pub pending: usize,
    pub evictions: Evictions,
}

/// After a Feedback is applied (and durable).
pub struct FeedbackReport {
    pub outcome: FeedbackOutcome,
    pub pending: usize,
    pub evictions: Evictions,
}

/// A router's settings and statistics, as GetRouter shows them.
#[derive(Clone, Debug)]
pub struct RouterInfo {
    pub name: String,
    pub settings: RouterSettings,
    pub arms: Vec<ArmStatistics>,
    pub pending_decisions: usize,
    pub rewards_seen: u64,
    pub evictions: Evictions,
    pub arm_state_bytes: usize,
}

impl RouterInfo {
    /// Cost: O(K·d²) for the LinUCB estimates at the mean context.
    fn of(router: &SharedRouter, serving: &[String]) -> Self {
        let router: &Router = &router.lock().expect("router lock poisoned");
        Self {
            name: router.name().to_string(),
            settings: router.settings().clone(),
            arms: router.arm_statistics(serving),
            pending_decisions: router.pending_decisions(),
            rewards_seen: router.rewards_seen(),
            evictions: router.evictions(),
            arm_state_bytes: router.arm_state_bytes(),
        }
    }
}

/// A change that is applied and logged; [`Ticket::acknowledged`] completes when it is
/// durable.
pub struct Ticket(Durable);

impl Ticket {
    pub async fn acknowledged(self) -> Result<(), RouterError> {
        self.0.wait().await.map_err(RouterError::NotAcknowledged)
    }
}

impl RoutersHandle {
    pub fn new(routers: Routers) -> Self {
        Self {
            routers: Arc::new(routers),
        }
    }

    /// Run `work` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Routers) -> Result<T, RouterError> + Send + 'static,
    ) -> Result<T, RouterError> {
        let routers = self.routers.clone();
        tokio::task::spawn_blocking(move || work(&routers))
            .await
            .map_err(RouterError::TaskFailed)?
    }

    /// Pick RMs among `serving` for each context on the router `name` (created on first
    /// use when the server does that; the creation is durable before this returns).
    /// Queries of a group share its decision (see `Router::select_grouped`); fresh
    /// decisions get their ids here.
    pub async fn select(
        &self,
        name: String,
        queries: SelectionInput,
        serving: Vec<String>,
        now_unix_ms: i64,
    ) -> Result<SelectedFor, RouterError> {
        let (router, created, selection) = self
            .blocking(move |routers| {
                let (router, created) = routers.get_or_create(&name, &serving)?;
                let selection = {
                    let mut locked = router.lock().expect("router lock poisoned");
                    let encoder = locked.settings().encoder.clone();
                    match encoder {
                        Some(encoder) if queries.client_contexts => {
                            Err(RouterError::ContextsNotTaken {
                                router: name.clone(),
                                encoder,
                            })
                        }
                        _ => locked
                            .select_grouped(
                                &queries.contexts,
                                &queries.groups,
                                queries.mode,
                                queries.explain,
                                &serving,
                                now_unix_ms,
                            )
                            .map(|mut selection| {
                                let new_id = || uuid::Uuid::new_v4().simple().to_string();
                                locked.reserve(&mut selection, new_id, now_unix_ms);
                                selection
                            }),
                    }
                };
                Ok((router, created, selection))
            })
            .await?;
        if let Some(created) = created {
            Ticket(created).acknowledged().await?;
        }
        Ok(SelectedFor {
            router,
            selection: selection?,
        })
    }

    /// The router `name`'s encoder (`None`: clients send contexts) and context dimension,
    /// creating the router as `first_use` says when it does not exist (durably).
    pub async fn prepare(
        &self,
        name: String,
        first_use: FirstUse,
        serving: Vec<String>,
    ) -> Result<(Option<String>, usize), RouterError> {
        let (encoder, created) = self
            .blocking(move |routers| {
                let (router, created) = routers.get_or_create_as(&name, &serving, &first_use)?;
                let locked = router.lock().expect("router lock poisoned");
                let settings = locked.settings();
                Ok(((settings.encoder.clone(), settings.context_dim), created))
            })
            .await?;
        if let Some(created) = created {
            Ticket(created).acknowledged().await?;
        }
        Ok(encoder)
    }

    pub fn creates_on_first_use(&self) -> bool {
        self.routers.creates_on_first_use()
    }

    /// Log that encoder `spec` is being published; acknowledge after publishing it.
    pub async fn encoder_added(&self, spec: EncoderSpec) -> Result<Ticket, RouterError> {
        self.blocking(move |routers| routers.encoder_added(spec).map(Ticket))
            .await
    }

    /// Log that encoder `name` is being unpublished, unless routers use it (their names).
    pub async fn encoder_removed(
        &self,
        name: String,
    ) -> Result<Result<Ticket, Vec<String>>, RouterError> {
        self.blocking(move |routers| Ok(routers.encoder_removed(&name)?.map(Ticket)))
            .await
    }

    /// The encoder changes made through Admin (recovered ones included).
    pub fn encoder_changes(&self) -> EncoderChanges {
        self.routers.encoder_changes()
    }

    /// Record a selection's new decisions; returns once they are durable.
    pub async fn record(
        &self,
        selected: SelectedFor,
        now_unix_ms: i64,
    ) -> Result<RecordReport, RouterError> {
        let SelectedFor { router, selection } = selected;
        let (durable, pending, evictions) = self
            .blocking(move |routers| routers.record(&router, &selection, now_unix_ms))
            .await?;
        Ticket(durable).acknowledged().await?;
        Ok(RecordReport { pending, evictions })
    }

    /// Check, log and apply a Feedback, all or nothing; returns once it is durable.
    pub async fn feedback(
        &self,
        name: String,
        form: FeedbackForm,
        idempotency_key: Option<String>,
        serving: Vec<String>,
        arrived_unix_ms: i64,
    ) -> Result<FeedbackReport, RouterError> {
        let applied = self
            .blocking(move |routers| {
                let now_unix_ms = arrived_unix_ms.max(crate::routers::handle::unix_ms());
                routers.feedback(
                    &name,
                    form,
                    idempotency_key,
                    serving,
                    arrived_unix_ms,
                    now_unix_ms,
                )
            })
            .await?;
        Ticket(applied.durable).acknowledged().await?;
        Ok(FeedbackReport {
            outcome: applied.outcome,
            pending: applied.pending,
            evictions: applied.evictions,
        })
    }

    /// Create the router `name` with `patch` over the defaults (or confirm it, when it
    /// exists with equal settings).
    pub async fn create(
        &self,
        name: String,
        patch: RouterSettingsPatch,
        serving: Vec<String>,
    ) -> Result<RouterInfo, RouterError> {
        let (info, durable) = self
            .blocking(move |routers| {
                let settings = routers.settings_for(&patch);
                let (router, durable) = routers.create_or_confirm(&name, settings, &serving)?;
                Ok((RouterInfo::of(&router, &serving), durable))
            })
            .await?;
        Ticket(durable).acknowledged().await?;
        Ok(info)
    }

    /// Forget what the router learned; returns its info after the reset.
    pub async fn reset(
        &self,
        name: String,
        serving: Vec<String>,
    ) -> Result<RouterInfo, RouterError> {
        let (info, durable) = self
            .blocking(move |routers| {
                let (router, durable) = routers.reset(&name, &serving)?;
                Ok((RouterInfo::of(&router, &serving), durable))
            })
            .await?;
        Ticket(durable).acknowledged().await?;
        Ok(info)
    }

    pub async fn delete(&self, name: String) -> Result<(), RouterError> {
        let durable = self.blocking(move |routers| routers.delete(&name)).await?;
        Ticket(durable).acknowledged().await
    }

    pub async fn info(
        &self,
        name: String,
        serving: Vec<String>,
    ) -> Result<RouterInfo, RouterError> {
        self.blocking(move |routers| Ok(RouterInfo::of(&routers.get(&name)?, &serving)))
            .await
    }

    /// Every router's info, by name.
    pub async fn list(&self, serving: Vec<String>) -> Result<Vec<RouterInfo>, RouterError> {
        self.blocking(move |routers| {
            Ok(routers
                .list()
                .iter()
                .map(|router| RouterInfo::of(router, &serving))
                .collect())
        })
        .await
    }

    /// Log that `spec` is being published; acknowledge the ticket after publishing it.
    pub async fn reward_model_added(&self, spec: RewardModelSpec) -> Result<Ticket, RouterError> {
        self.blocking(move |routers| routers.reward_model_added(spec).map(Ticket))
            .await
    }

    /// Log that the RM `name` is being unpublished.
    pub async fn reward_model_removed(&self, name: String) -> Result<Ticket, RouterError> {
        self.blocking(move |routers| routers.reward_model_removed(&name).map(Ticket))
            .await
    }

    /// The RM set changes made through Admin (recovered ones included).
    pub fn reward_model_changes(&self) -> RewardModelChanges {
        self.routers.reward_model_changes()
    }

    pub fn snapshot_due(&self) -> bool {
        self.routers.snapshot_due()
    }

    /// Why changes cannot be made durable now (the log is failing), or `None`.
    pub fn state_unwritable(&self) -> Option<String> {
        self.routers.store().unwritable()
    }

    /// Write a snapshot on the blocking pool: (sequence number, bytes), or `None`.
    pub async fn snapshot(&self) -> Result<Option<(u64, u64)>, RouterError> {
        self.blocking(|routers| routers.snapshot()).await
    }
}
