//! Routers keyed by name, and every live change to them: checked, logged through the
//! [`ledger`](super::ledger), then applied under the router's lock, so each router's log
//! order is its apply order. Callers reply to clients only after the returned [`Durable`]
//! completes ([`crate::routers::RoutersHandle`] does that for async callers).
//!
//! Locking: the ledger's gate is read-locked by every change (a snapshot write-locks it);
//! the map's `RwLock` is taken only to find, add or remove a router; each router has its
//! own `Mutex`, so routers never wait on each other. Everything here blocks (locks, the
//! bandit math): call it from a blocking thread. (Past the ~500-line guide only by its unit
//! tests at the end.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};

use crate::routers::Router;
use crate::routers::catalog::ledger::{EncoderChanges, Ledger, RewardModelChanges, StateEvent};
use crate::routers::decisions::events::{
    Evictions, FeedbackForm, FeedbackOutcome, FeedbackSignals, IdempotencyKey, RouterEvent,
    Selection,
};
use crate::routers::decisions::events::{PriorObservations, PriorOutcome};
use crate::routers::error::RouterError;
use crate::routers::instance::settings::{RouterSettings, RouterSettingsPatch};
use crate::routers::instance::state::RouterState;
use crate::store::{Durable, Store};

/// Longest router name accepted.
pub const MAX_ROUTER_NAME_LEN: usize = 128;

pub type SharedRouter = Arc<Mutex<Router>>;

/// How the routers behave; one struct for every way they are built.
#[derive(Clone, Debug)]
pub struct RoutersOptions {
    /// Settings for fields a new router leaves unset (the config's `[routers]`).
    pub defaults: RouterSettingsPatch,
    /// Create a router with the defaults the first time Score names it.
    pub create_on_first_use: bool,
    /// Largest context dimension a router may have (limits.max_context_dim).
    pub max_context_dim: usize,
    /// Routers per server (limits.max_routers).
    pub max_routers: usize,
    /// Records between snapshots (0: only when asked).
    pub snapshot_every_records: u64,
}

impl Default for RoutersOptions {
    fn default() -> Self {
        Self {
            defaults: RouterSettingsPatch::default(),
            create_on_first_use: true,
            max_context_dim: 16384,
            max_routers: usize::MAX,
            snapshot_every_records: 0,
        }
    }
}

/// How a router that does not exist yet is created on first use.
#[derive(Clone, Debug)]
pub enum FirstUse {
    /// With the default settings.
    Defaults,
    /// With this patch over the defaults.
    With(Box<RouterSettingsPatch>),
    /// Not at all: the router must exist.
    Refuse,
}

/// The outcome of recording a Score's decisions.
pub struct Recorded {
    pub durable: Durable,
    /// Decisions the router holds awaiting feedback, after recording.
    pub pending: usize,
    pub evictions: Evictions,
    /// (decision id, the category it counts under) of the recorded decisions that have one.
    pub categories: Vec<(String, String)>,
}

/// The outcome of a logged Feedback.
pub struct FeedbackApplied {
    pub outcome: FeedbackOutcome,
    pub pending: usize,
    pub evictions: Evictions,
    pub durable: Durable,
}

pub struct Routers {
    options: RoutersOptions,
    /// `options.defaults` resolved: what a router created on first use gets.
    default_settings: RouterSettings,
    routers: RwLock<BTreeMap<String, SharedRouter>>,
    pub(in crate::routers) reward_model_changes: Mutex<RewardModelChanges>,
    pub(in crate::routers) encoder_changes: Mutex<EncoderChanges>,
    pub(in crate::routers) ledger: Ledger,
}

impl Routers {
    /// Routers whose state lives in memory only.
    pub fn new(options: RoutersOptions) -> Self {
        Self::with_store(options, Store::in_memory())
    }

    /// Routers whose changes are logged to `store`.
    pub fn with_store(options: RoutersOptions, store: Store) -> Self {
        Self {
            default_settings: options.defaults.resolve(),
            ledger: Ledger::new(store, options.snapshot_every_records),
            options,
            routers: RwLock::new(BTreeMap::new()),
            reward_model_changes: Mutex::new(RewardModelChanges::default()),
            encoder_changes: Mutex::new(EncoderChanges::default()),
        }
    }

    /// The settings a router gets when every field is left unset.
    pub fn defaults(&self) -> &RouterSettings {
        &self.default_settings
    }

    /// The settings `patch` names, unset fields from the defaults.
    pub fn settings_for(&self, patch: &RouterSettingsPatch) -> RouterSettings {
        patch.apply(&self.options.defaults)
    }

    /// Whether a Score may create the router it names.
    pub fn creates_on_first_use(&self) -> bool {
        self.options.create_on_first_use
    }

    pub fn max_context_dim(&self) -> usize {
        self.options.max_context_dim
    }

    pub fn store(&self) -> &Store {
        self.ledger.store()
    }

    pub fn get(&self, name: &str) -> Result<SharedRouter, RouterError> {
        self.routers
            .read()
            .expect("router map lock poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| RouterError::UnknownRouter {
                name: name.to_string(),
            })
    }

    /// All routers, by name.
    pub fn list(&self) -> Vec<SharedRouter> {
        self.routers
            .read()
            .expect("router map lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub(in crate::routers) fn map_mut(
        &self,
    ) -> RwLockWriteGuard<'_, BTreeMap<String, SharedRouter>> {
        self.routers.write().expect("router map lock poisoned")
    }

    /// The named router, created with the default settings (and an arm per RM in
    /// `serving`) if it does not exist and the server creates routers on first use. The
    /// ticket is `Some` when the router was created.
    pub fn get_or_create(
        &self,
        name: &str,
        serving: &[String],
    ) -> Result<(SharedRouter, Option<Durable>), RouterError> {
        self.get_or_create_as(name, serving, &FirstUse::Defaults)
    }

    /// [`Routers::get_or_create`], creating as `first_use` says.
    pub fn get_or_create_as(
        &self,
        name: &str,
        serving: &[String],
        first_use: &FirstUse,
    ) -> Result<(SharedRouter, Option<Durable>), RouterError> {
        let settings = match first_use {
            FirstUse::Defaults => self.default_settings.clone(),
            FirstUse::With(patch) => self.settings_for(patch),
            FirstUse::Refuse => return self.get(name).map(|router| (router, None)),
        };
        match self.get(name) {
            Ok(router) => Ok((router, None)),
            Err(RouterError::UnknownRouter { .. }) if self.options.create_on_first_use => {
                match self.create(name, settings, serving) {
                    Ok((router, durable)) => {
                        tracing::info!(router = name, "router created on first use");
                        Ok((router, Some(durable)))
                    }
                    // Another request created it in between.
                    Err(RouterError::RouterExists { .. }) => Ok((self.get(name)?, None)),
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// The router `name` with `settings`: created (an arm for every RM in `serving` that
    /// `settings` accept), or the existing one when its settings are equal (a resumed
    /// training run creating its router again); `SettingsDiffer` names the fields otherwise.
    /// `reward_center` is compared only when the request named it (`center_named`): routers
    /// created before the setting existed have 0, and a run resumed with the CreateRouter it
    /// was started with must still find its router.
    pub fn create_or_confirm(
        &self,
        name: &str,
        settings: RouterSettings,
        center_named: bool,
        serving: &[String],
    ) -> Result<(SharedRouter, Durable), RouterError> {
        match self.create(name, settings.clone(), serving) {
            Err(RouterError::RouterExists { .. }) => {
                let settings = settings.validate(self.options.max_context_dim)?;
                let router = self.get(name)?;
                let mut fields = router
                    .lock()
                    .expect("router lock poisoned")
                    .settings()
                    .differences(&settings);
                if !center_named {
                    fields.retain(|&field| field != "reward_center");
                }
                if fields.is_empty() {
                    Ok((router, Durable::done()))
                } else {
                    Err(RouterError::SettingsDiffer {
                        name: name.to_string(),
                        fields,
                    })
                }
            }
            other => other,
        }
    }

    /// A new router with an arm for every RM in `serving` that `settings` accept.
    pub fn create(
        &self,
        name: &str,
        settings: RouterSettings,
        serving: &[String],
    ) -> Result<(SharedRouter, Durable), RouterError> {
        validate_name(name)?;
        let settings = settings.validate(self.options.max_context_dim)?;
        let _gate = self.ledger.change();
        let mut routers = self.map_mut();
        if routers.contains_key(name) {
            return Err(RouterError::RouterExists {
                name: name.to_string(),
            });
        }
        if routers.len() >= self.options.max_routers {
            return Err(RouterError::TooManyRouters {
                max: self.options.max_routers,
            });
        }
        let event = StateEvent::RouterCreated {
            name: name.to_string(),
            settings: settings.clone(),
            serving: serving.to_vec(),
        };
        let durable = self.ledger.log(&event)?;
        let router = Arc::new(Mutex::new(Router::new(name.to_string(), settings, serving)));
        routers.insert(name.to_string(), router.clone());
        Ok((router, durable))
    }

    pub fn delete(&self, name: &str) -> Result<Durable, RouterError> {
        let _gate = self.ledger.change();
        let mut routers = self.map_mut();
        if !routers.contains_key(name) {
            return Err(RouterError::UnknownRouter {
                name: name.to_string(),
            });
        }
        let durable = self.ledger.log(&StateEvent::RouterDeleted {
            name: name.to_string(),
        })?;
        routers.remove(name);
        Ok(durable)
    }

    /// Forget what the router learned; keep its settings.
    pub fn reset(
        &self,
        name: &str,
        serving: &[String],
    ) -> Result<(SharedRouter, Durable), RouterError> {
        let router = self.get(name)?;
        let _gate = self.ledger.change();
        let mut locked = router.lock().expect("router lock poisoned");
        let event = RouterEvent::Reset {
            serving: serving.to_vec(),
        };
        let durable = self.ledger.log(&StateEvent::Router {
            name: name.to_string(),
            event: event.clone(),
        })?;
        locked.apply(event)?;
        drop(locked);
        Ok((router, durable))
    }

    /// Record the decisions of a completed Score (its fresh decisions, and reserved ones
    /// no other Score recorded meanwhile). Returns the router's pending count and evictions
    /// after recording, and the recorded decisions' categories.
    pub fn record(
        &self,
        router: &SharedRouter,
        selection: &Selection,
        now_unix_ms: i64,
    ) -> Result<Recorded, RouterError> {
        let _gate = self.ledger.change();
        let mut locked = router.lock().expect("router lock poisoned");
        let (durable, categories) = match locked.recording(selection, now_unix_ms) {
            Some(event) => {
                let durable = self.ledger.log(&StateEvent::Router {
                    name: locked.name().to_string(),
                    event: event.clone(),
                })?;
                let recorded = event.recorded_ids();
                locked.apply(event)?;
                (durable, locked.categories_of(&recorded))
            }
            None => (Durable::done(), Vec::new()),
        };
        Ok(Recorded {
            durable,
            pending: locked.pending_decisions(),
            evictions: locked.evictions(),
            categories,
        })
    }

    /// Check, log and apply a Feedback, all or nothing. `arrived_unix_ms` is when the
    /// request arrived (the cut of [`FeedbackForm::AllPending`]). With an idempotency key
    /// already answered for the same request, the first answer comes back and nothing is
    /// logged; for another request, `IdempotencyKeyReused`.
    pub fn feedback(
        &self,
        name: &str,
        form: FeedbackForm,
        idempotency_key: Option<String>,
        serving: Vec<String>,
        arrived_unix_ms: i64,
        now_unix_ms: i64,
    ) -> Result<FeedbackApplied, RouterError> {
        let router = self.get(name)?;
        let _gate = self.ledger.change();
        let mut locked = router.lock().expect("router lock poisoned");
        let key = idempotency_key.map(|key| IdempotencyKey {
            key,
            fingerprint: form.fingerprint(),
        });
        if let Some(key) = &key
            && let Some(counts) = locked.replayed_answer(key)?
        {
            return Ok(FeedbackApplied {
                outcome: FeedbackOutcome {
                    replayed: Some(counts),
                    ..FeedbackOutcome::default()
                },
                pending: locked.pending_decisions(),
                evictions: locked.evictions(),
                // The first answer is acknowledged only once its record is durable (it may
                // still be queued, or kept after a failed write).
                durable: self.store().barrier(),
            });
        }
        let signals = match form {
            FeedbackForm::Decisions {
                decision_ids,
                signal,
            } => FeedbackSignals::Shared {
                decision_ids,
                signal,
            },
            FeedbackForm::PerDecision(signals) => FeedbackSignals::PerDecision(signals),
            FeedbackForm::PerDecisionLabelled(items) => {
                FeedbackSignals::PerDecision(locked.resolve_labels(items, now_unix_ms)?)
            }
            FeedbackForm::AllPending { signal } => FeedbackSignals::Shared {
                decision_ids: locked.pending_made_before(arrived_unix_ms, now_unix_ms),
                signal,
            },
        };
        locked.check_feedback(&signals, now_unix_ms)?;
        if signals.decision_ids().is_empty() && key.is_none() {
            // Nothing awaited feedback: nothing to log.
            return Ok(FeedbackApplied {
                outcome: FeedbackOutcome::default(),
                pending: locked.pending_decisions(),
                evictions: locked.evictions(),
                durable: Durable::done(),
            });
        }
        let event = RouterEvent::FeedbackKeyed {
            now_unix_ms,
            serving,
            signals,
            key,
        };
        let durable = self.ledger.log(&StateEvent::Router {
            name: name.to_string(),
            event: event.clone(),
        })?;
        let outcome = locked.apply(event)?;
        Ok(FeedbackApplied {
            outcome,
            pending: locked.pending_decisions(),
            evictions: locked.evictions(),
            durable,
        })
    }

    /// Enter a prior from labelled pairs into the router `name` (checked, logged, then
    /// applied: the same [`Router::apply_prior`] that replaying the event runs).
    pub fn prior(
        &self,
        name: &str,
        prior: PriorObservations,
        serving: Vec<String>,
    ) -> Result<(PriorOutcome, Durable), RouterError> {
        let router = self.get(name)?;
        let _gate = self.ledger.change();
        let mut locked = router.lock().expect("router lock poisoned");
        if locked.check_prior(&prior)? {
            let outcome = PriorOutcome {
                replayed: true,
                ..PriorOutcome::default()
            };
            return Ok((outcome, self.store().barrier()));
        }
        let event = RouterEvent::PriorObserved {
            serving: serving.clone(),
            prior: prior.clone(),
        };
        let durable = self.ledger.log(&StateEvent::Router {
            name: name.to_string(),
            event,
        })?;
        let outcome = locked.apply_prior(&serving, prior)?;
        Ok((outcome, durable))
    }

    /// Replace (or create) the router `name` with an exported state.
    pub fn import(&self, name: &str, mut state: RouterState) -> Result<Durable, RouterError> {
        validate_name(name)?;
        state.name = name.to_string();
        state.settings = state
            .settings
            .clone()
            .validate(self.options.max_context_dim)?;
        let router = Router::from_state(name.to_string(), state.clone())?;
        let _gate = self.ledger.change();
        let mut routers = self.map_mut();
        let durable = self.ledger.log(&StateEvent::RouterImported {
            name: name.to_string(),
            state: Box::new(state),
        })?;
        routers.insert(name.to_string(), Arc::new(Mutex::new(router)));
        Ok(durable)
    }

    /// The exportable state of one router.
    pub fn export(&self, name: &str) -> Result<RouterState, RouterError> {
        Ok(self
            .get(name)?
            .lock()
            .expect("router lock poisoned")
            .to_state())
    }
}

pub(in crate::routers) fn validate_name(name: &str) -> Result<(), RouterError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_ROUTER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(RouterError::InvalidRouterName {
            name: name.chars().take(MAX_ROUTER_NAME_LEN + 8).collect(),
            max: MAX_ROUTER_NAME_LEN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routers::tests::settings;

    fn routers(create_on_first_use: bool) -> Routers {
        Routers::new(RoutersOptions {
            defaults: (&settings(4)).into(),
            create_on_first_use,
            max_context_dim: 1024,
            ..RoutersOptions::default()
        })
    }

    #[test]
    fn first_use_creates_only_when_allowed() {
        assert!(routers(true).get_or_create("run-1", &[]).is_ok());
        assert!(matches!(
            routers(false).get_or_create("run-1", &[]).err(),
            Some(RouterError::UnknownRouter { name }) if name == "run-1"
        ));
    }

    #[test]
    fn names_are_validated() {
        let routers = routers(true);
        assert!(matches!(
            routers.get_or_create("bad name", &[]),
            Err(RouterError::InvalidRouterName { .. })
        ));
        assert!(matches!(
            routers.get_or_create(&"x".repeat(200), &[]),
            Err(RouterError::InvalidRouterName { .. })
        ));
        assert!(routers.list().is_empty());
    }

    #[test]
    fn create_get_delete() {
        let routers = routers(false);
        let settings = routers.defaults().clone();
        routers.create("a", settings.clone(), &[]).unwrap();
        assert!(matches!(
            routers.create("a", settings.clone(), &[]),
            Err(RouterError::RouterExists { .. })
        ));
        assert!(routers.get("a").is_ok());
        assert_eq!(routers.list().len(), 1);
        routers.delete("a").unwrap();
        assert!(routers.get("a").is_err());
        let bad = RouterSettings {
            context_dim: 0,
            ..settings
        };
        assert!(matches!(
            routers.create("b", bad, &[]),
            Err(RouterError::InvalidSettings {
                field: "context_dim",
                ..
            })
        ));
    }

    #[test]
    fn creating_again_with_equal_settings_confirms_and_other_settings_are_named() {
        let routers = routers(false);
        let settings = routers.defaults().clone();
        routers
            .create_or_confirm("a", settings.clone(), true, &[])
            .unwrap();
        routers
            .create_or_confirm("a", settings.clone(), true, &[])
            .unwrap();
        assert_eq!(routers.list().len(), 1);
        let other = RouterSettings {
            alpha: 2.0,
            seed: 9,
            ..settings
        };
        match routers.create_or_confirm("a", other.clone(), true, &[]) {
            Err(RouterError::SettingsDiffer { fields, .. }) => {
                assert_eq!(fields, vec!["alpha", "seed"])
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        // A router from before reward_center (0) is confirmed by a request that leaves
        // the field to the default (0.5), and refused by one that names another value.
        let uncentred = RouterSettings {
            reward_center: 0.0,
            ..other.clone()
        };
        routers.create("old", uncentred, &[]).unwrap();
        let centred = RouterSettings {
            reward_center: 0.5,
            ..other
        };
        routers
            .create_or_confirm("old", centred.clone(), false, &[])
            .unwrap();
        match routers.create_or_confirm("old", centred, true, &[]) {
            Err(RouterError::SettingsDiffer { fields, .. }) => {
                assert_eq!(fields, vec!["reward_center"])
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_full_patch_gives_its_settings_back() {
        let settings = settings(4);
        let patch = RouterSettingsPatch::from(&settings);
        assert_eq!(patch.resolve(), settings);
        assert_eq!(routers(true).defaults(), &settings);
    }
}
