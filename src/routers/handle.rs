//! The routers' async front. [`RoutersHandle`] owns the seam between the async runtime and
//! the routers' blocking work: every method runs the registry's locks and bandit math on
//! tokio's blocking pool (select O(K·d²) per query, feedback O(d²·r) per arm, router info
//! O(K·d²) at d = 4096) and then waits, without blocking, until the change is durable.
//! Callers only `.await`; none of them locks a router or holds one.
//!
//! Router state leaves here as plain data ([`RouterInfo`], [`Selection`]), never as a
//! shared router.
//!
//! Where a router lives is `placement`'s business: one [`Routers`] holds every router, or,
//! on PostgreSQL, [`Replicas`] places each (owned here, or served by another replica:
//! [`RouterError::ServedElsewhere`], which the api layer forwards).

use std::sync::Arc;

use crate::models::{EncoderSpec, RewardModelSpec};
use crate::routers::Routers;
use crate::routers::catalog::ledger::StateEvent;
use crate::routers::catalog::ledger::{EncoderChanges, RewardModelChanges};
use crate::routers::catalog::registry::{FirstUse, SharedRouter};
use crate::routers::decisions::events::{Evictions, FeedbackForm, FeedbackOutcome, Selection};
use crate::routers::error::RouterError;
use crate::routers::instance::router::{QueriesIn, Router};
use crate::routers::instance::settings::{RouterSettings, RouterSettingsPatch, SelectionMode};
use crate::routers::instance::statistics::ArmStatistics;
use crate::routers::placement::Placement;
use crate::routers::replicas::{Placed, Replicas};
use crate::store::Durable;

/// A cheap, clonable async handle on the routers.
#[derive(Clone)]
pub struct RoutersHandle {
    placement: Arc<Placement>,
}

/// A router looked up (or created) once for a request: later steps of the request use it
/// without looking it up by name again ([`RoutersHandle::find`]).
pub struct FoundRouter {
    name: String,
    routers: Arc<Routers>,
    router: SharedRouter,
    /// The router's encoder (`None`: clients send contexts).
    pub encoder: Option<String>,
    pub context_dim: usize,
}

/// Which router a selection runs on: one to look up by name (created on first use, in the
/// same trip to the blocking pool as the selection), or one the request found already.
pub enum RouterRef {
    Name(String),
    Found(FoundRouter),
}

/// A selection made on one router, to record on that same router.
pub struct SelectedFor {
    routers: Arc<Routers>,
    router: SharedRouter,
    pub selection: Selection,
}

/// What a Score asks of the router: a context and optional group per query.
pub struct SelectionInput {
    pub contexts: Vec<Vec<f32>>,
    pub groups: Vec<Option<String>>,
    /// Each query's category (`Query.category`): the arms see it with
    /// `context_categories`.
    pub categories: Vec<Option<String>>,
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
    /// (decision id, the category it counts under) of the recorded decisions that have one.
    pub categories: Vec<(String, String)>,
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
    /// Per category and RM: decisions and mean reward.
    pub categories: Vec<crate::routers::instance::statistics::CategoryArm>,
    /// Per RM: what priors put into its arm.
    pub priors: crate::routers::instance::statistics::PriorTable,
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
            categories: router.category_statistics(),
            priors: router.prior_statistics().clone(),
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
    /// Every router in `routers`.
    pub fn new(routers: Routers) -> Self {
        Self {
            placement: Arc::new(Placement::Single(Arc::new(routers))),
        }
    }

    /// Routers spread over the replicas sharing a database.
    pub fn replicated(replicas: Replicas) -> Self {
        Self {
            placement: Arc::new(Placement::Replicas(Box::new(replicas))),
        }
    }

    /// Run `work` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Placement) -> Result<T, RouterError> + Send + 'static,
    ) -> Result<T, RouterError> {
        let placement = self.placement.clone();
        tokio::task::spawn_blocking(move || work(&placement))
            .await
            .map_err(RouterError::TaskFailed)?
    }

    /// Run `work` on the blocking pool with the routers serving router `name`.
    async fn for_router<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce(&Routers) -> Result<T, RouterError> + Send + 'static,
    ) -> Result<T, RouterError> {
        let name = name.to_string();
        self.blocking(move |placement| {
            let routers = placement.routers_for(&name)?;
            work(&routers).map_err(|error| placement.unless_stale(&name, &routers, error))
        })
        .await
    }

    /// Run `work` on the blocking pool with the catalog of models.
    async fn for_catalog<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Routers) -> Result<T, RouterError> + Send + 'static,
    ) -> Result<T, RouterError> {
        self.blocking(move |placement| work(placement.catalog()))
            .await
    }

    /// The address of the replica serving router `name`, when that is not this one
    /// (taking the router over when nobody owns it).
    pub async fn served_elsewhere(&self, name: &str) -> Result<Option<String>, RouterError> {
        let replicas = match &*self.placement {
            Placement::Single(_) => return Ok(None),
            Placement::Replicas(replicas) => replicas,
        };
        // The usual case, without a trip to the blocking pool.
        match replicas.place_known(name) {
            Some(Placed::Here(_)) => return Ok(None),
            Some(Placed::There { address }) => return Ok(Some(address)),
            None => {}
        }
        match self.for_router(name, |_| Ok(())).await {
            Ok(()) => Ok(None),
            Err(RouterError::ServedElsewhere { address, .. }) => Ok(Some(address)),
            Err(error) => Err(error),
        }
    }

    /// Whether routers are spread over replicas sharing a database.
    pub fn is_replicated(&self) -> bool {
        matches!(&*self.placement, Placement::Replicas(_))
    }

    /// Run `work` on the blocking pool with the replicas; without replicas, `T::default()`
    /// at once.
    async fn for_replicas<T: Default + Send + 'static>(
        &self,
        work: impl FnOnce(&Replicas) -> Result<T, RouterError> + Send + 'static,
    ) -> Result<T, RouterError> {
        if let Placement::Single(_) = &*self.placement {
            return Ok(T::default());
        }
        self.blocking(move |placement| match placement {
            Placement::Single(_) => Ok(T::default()),
            Placement::Replicas(replicas) => work(replicas),
        })
        .await
    }

    /// The names of every router of the database the replicas share (`None`: all routers
    /// are here; see [`RoutersHandle::list`]).
    pub async fn shared_router_names(&self) -> Result<Option<Vec<String>>, RouterError> {
        self.for_replicas(|replicas| replicas.router_names().map(Some))
            .await
    }

    /// Apply the catalog changes other replicas made since the last call; returns them
    /// (none without replicas).
    pub async fn catch_up_catalog(&self) -> Result<Vec<StateEvent>, RouterError> {
        self.for_replicas(|replicas| replicas.catch_up()).await
    }

    /// Hand back the leases of every router held here (replicas; the server is stopping,
    /// after its final snapshot).
    pub async fn release_all(&self) -> Result<(), RouterError> {
        self.for_replicas(|replicas| {
            replicas.release_all();
            Ok(())
        })
        .await
    }

    /// Hand back the leases of routers no longer held here (replicas only).
    pub async fn release_idle(&self) -> Result<(), RouterError> {
        self.for_replicas(|replicas| {
            replicas.release_idle();
            Ok(())
        })
        .await
    }

    /// Pick RMs among `serving` for each context on the router `target` (one named is
    /// created on first use when the server does that; the creation is durable before this
    /// returns). Queries of a group share its decision (see `Router::select_grouped`); fresh
    /// decisions get their ids here.
    pub async fn select(
        &self,
        target: RouterRef,
        queries: SelectionInput,
        serving: Vec<String>,
        now_unix_ms: i64,
    ) -> Result<SelectedFor, RouterError> {
        let (routers, router, created, selection) = self
            .blocking(move |placement| {
                let (name, routers, router, created) = match target {
                    RouterRef::Name(name) => {
                        let routers = placement.routers_for(&name)?;
                        let (router, created) = routers.get_or_create(&name, &serving)?;
                        (name, routers, router, created)
                    }
                    RouterRef::Found(found) => {
                        placement.still_serves(&found.name, &found.routers)?;
                        (found.name, found.routers, found.router, None)
                    }
                };
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
                                QueriesIn {
                                    contexts: &queries.contexts,
                                    groups: &queries.groups,
                                    categories: &queries.categories,
                                },
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
                Ok((routers, router, created, selection))
            })
            .await?;
        if let Some(created) = created {
            Ticket(created).acknowledged().await?;
        }
        Ok(SelectedFor {
            routers,
            router,
            selection: selection?,
        })
    }

    /// Look up the router `name` once for a request, creating it as `first_use` says when it
    /// does not exist (durably); the request's later steps use what this returns.
    pub async fn find(
        &self,
        name: String,
        first_use: FirstUse,
        serving: Vec<String>,
    ) -> Result<FoundRouter, RouterError> {
        let (found, created) = self
            .blocking(move |placement| {
                let routers = placement.routers_for(&name)?;
                let (router, created) = routers
                    .get_or_create_as(&name, &serving, &first_use)
                    .map_err(|error| placement.unless_stale(&name, &routers, error))?;
                let (encoder, context_dim) = {
                    let locked = router.lock().expect("router lock poisoned");
                    let settings = locked.settings();
                    (settings.encoder.clone(), settings.context_dim)
                };
                let found = FoundRouter {
                    name,
                    routers,
                    router,
                    encoder,
                    context_dim,
                };
                Ok((found, created))
            })
            .await?;
        if let Some(created) = created {
            Ticket(created).acknowledged().await?;
        }
        Ok(found)
    }

    pub fn creates_on_first_use(&self) -> bool {
        self.placement.catalog().creates_on_first_use()
    }

    /// Log that encoder `spec` is being published; acknowledge after publishing it.
    pub async fn encoder_added(&self, spec: EncoderSpec) -> Result<Ticket, RouterError> {
        self.for_catalog(move |catalog| catalog.encoder_added(spec).map(Ticket))
            .await
    }

    /// Log that encoder `name` is being unpublished, unless routers use it (their names;
    /// with replicas, the routers this one owns).
    pub async fn encoder_removed(
        &self,
        name: String,
    ) -> Result<Result<Ticket, Vec<String>>, RouterError> {
        self.blocking(move |placement| {
            let users: Vec<String> = placement
                .all()
                .iter()
                .flat_map(|routers| routers.encoder_users(&name))
                .collect();
            if !users.is_empty() {
                return Ok(Err(users));
            }
            Ok(placement.catalog().encoder_removed(&name)?.map(Ticket))
        })
        .await
    }

    /// The encoder changes made through Admin (recovered ones included).
    pub fn encoder_changes(&self) -> EncoderChanges {
        self.placement.catalog().encoder_changes()
    }

    /// Record a selection's new decisions; returns once they are durable.
    pub async fn record(
        &self,
        selected: SelectedFor,
        now_unix_ms: i64,
    ) -> Result<RecordReport, RouterError> {
        let SelectedFor {
            routers,
            router,
            selection,
        } = selected;
        let recorded =
            tokio::task::spawn_blocking(move || routers.record(&router, &selection, now_unix_ms))
                .await
                .map_err(RouterError::TaskFailed)??;
        Ticket(recorded.durable).acknowledged().await?;
        Ok(RecordReport {
            pending: recorded.pending,
            evictions: recorded.evictions,
            categories: recorded.categories,
        })
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
            .for_router(&name.clone(), move |routers| {
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
            .for_router(&name.clone(), move |routers| {
                let settings = routers.settings_for(&patch);
                let center_named = patch.reward_center.is_some();
                let (router, durable) =
                    routers.create_or_confirm(&name, settings, center_named, &serving)?;
                Ok((RouterInfo::of(&router, &serving), durable))
            })
            .await?;
        Ticket(durable).acknowledged().await?;
        Ok(info)
    }

    /// Enter a prior from labelled pairs into the router `name`, once durable.
    pub async fn prior(
        &self,
        name: String,
        prior: crate::routers::PriorObservations,
        serving: Vec<String>,
    ) -> Result<crate::routers::PriorOutcome, RouterError> {
        let (outcome, durable) = self
            .for_router(&name.clone(), move |routers| {
                routers.prior(&name, prior, serving)
            })
            .await?;
        Ticket(durable).acknowledged().await?;
        Ok(outcome)
    }

    /// Forget what the router learned; returns its info after the reset.
    pub async fn reset(
        &self,
        name: String,
        serving: Vec<String>,
    ) -> Result<RouterInfo, RouterError> {
        let (info, durable) = self
            .for_router(&name.clone(), move |routers| {
                let (router, durable) = routers.reset(&name, &serving)?;
                Ok((RouterInfo::of(&router, &serving), durable))
            })
            .await?;
        Ticket(durable).acknowledged().await?;
        Ok(info)
    }

    pub async fn delete(&self, name: String) -> Result<(), RouterError> {
        let durable = self
            .for_router(&name.clone(), move |routers| routers.delete(&name))
            .await?;
        Ticket(durable).acknowledged().await
    }

    pub async fn info(
        &self,
        name: String,
        serving: Vec<String>,
    ) -> Result<RouterInfo, RouterError> {
        self.for_router(&name.clone(), move |routers| {
            Ok(RouterInfo::of(&routers.get(&name)?, &serving))
        })
        .await
    }

    /// Every router's info, by name (with replicas: the routers this one owns).
    pub async fn list(&self, serving: Vec<String>) -> Result<Vec<RouterInfo>, RouterError> {
        self.blocking(move |placement| {
            let mut infos: Vec<RouterInfo> = placement
                .all()
                .iter()
                .flat_map(|routers| routers.list())
                .map(|router| RouterInfo::of(&router, &serving))
                .collect();
            infos.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(infos)
        })
        .await
    }

    /// Log that `spec` is being published; acknowledge the ticket after publishing it.
    pub async fn reward_model_added(&self, spec: RewardModelSpec) -> Result<Ticket, RouterError> {
        self.for_catalog(move |catalog| catalog.reward_model_added(spec).map(Ticket))
            .await
    }

    /// Log that the RM `name` is being unpublished.
    pub async fn reward_model_removed(&self, name: String) -> Result<Ticket, RouterError> {
        self.for_catalog(move |catalog| catalog.reward_model_removed(&name).map(Ticket))
            .await
    }

    /// The RM set changes made through Admin (recovered ones included).
    pub fn reward_model_changes(&self) -> RewardModelChanges {
        self.placement.catalog().reward_model_changes()
    }

    pub fn snapshot_due(&self) -> bool {
        self.placement
            .all()
            .iter()
            .any(|routers| routers.snapshot_due())
    }

    /// Why changes cannot be made durable now (the log is failing), or `None`.
    /// (With replicas, also while the database cannot be read: no router could be taken
    /// over or changed here.)
    pub fn state_unwritable(&self) -> Option<String> {
        if let Placement::Replicas(replicas) = &*self.placement
            && let Some(reason) = replicas.unreachable()
        {
            return Some(reason);
        }
        self.placement
            .all()
            .iter()
            .find_map(|routers| routers.store().unwritable())
    }

    /// Write snapshots on the blocking pool (`every`: of every store, else of those due):
    /// (sequence number, bytes) of each written.
    pub async fn snapshot(&self, every: bool) -> Result<Vec<(u64, u64)>, RouterError> {
        self.blocking(move |placement| {
            let mut written = Vec::new();
            for routers in placement.all() {
                if every || routers.snapshot_due() {
                    written.extend(routers.snapshot()?);
                }
            }
            Ok(written)
        })
        .await
    }
}
