//! Routers keyed by name, and the one place durable state changes are logged and applied:
//! the routers' events and the changes to the RM set made through Admin.
//!
//! Every change is a [`StateEvent`]: checked, appended to the store's log, then applied
//! with [`Routers::apply`], under the router's lock, so each router's log order is its
//! apply order. Callers reply to clients only after the returned [`Durable`] completes.
//! Recovery ([`Routers::recover`]) loads the newest snapshot and applies every later
//! record through the same `apply`.
//!
//! Locking: `gate` is read-locked by every change and write-locked by a snapshot, which so
//! sees a consistent cut (every record up to the store's last sequence number applied,
//! none after); the map's `RwLock` is taken only to find, add or remove a router; each
//! router has its own `Mutex`, so routers never wait on each other.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::router::{FeedbackOutcome, FeedbackSignal, RouterEvent, RouterState};
use super::{Router, RouterError, RouterSettings, Selection};
use crate::models::RewardModelSpec;
use crate::store::{Durable, Recovered, Store, StoreError};

/// Longest router name accepted.
pub const MAX_ROUTER_NAME_LEN: usize = 128;

pub type SharedRouter = Arc<Mutex<Router>>;

/// One logged change of the routers' state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StateEvent {
    RouterCreated {
        name: String,
        settings: RouterSettings,
        serving: Vec<String>,
    },
    RouterDeleted {
        name: String,
    },
    Router {
        name: String,
        event: RouterEvent,
    },
    /// A whole router state (import), replacing any router of that name.
    RouterImported {
        name: String,
        state: Box<RouterState>,
    },
    /// An RM published through Admin.AddRewardModel.
    RewardModelAdded {
        spec: RewardModelSpec,
    },
    /// An RM unpublished through Admin.RemoveRewardModel (config RMs included).
    RewardModelRemoved {
        name: String,
    },
}

/// Changes to the server's RM set made through Admin, to redo at startup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardModelChanges {
    /// Added RMs, by name (loaded after the config's).
    pub added: BTreeMap<String, RewardModelSpec>,
    /// Removed RMs (config RMs of these names are not loaded).
    pub removed: BTreeSet<String>,
}

/// The payload of a snapshot.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    routers: Vec<RouterState>,
    reward_models: RewardModelChanges,
}

/// The outcome of a logged Feedback.
pub struct FeedbackApplied {
    pub outcome: FeedbackOutcome,
    pub pending: usize,
    pub evictions: super::Evictions,
    pub durable: Durable,
}

pub struct Routers {
    defaults: RouterSettings,
    create_on_first_use: bool,
    max_context_dim: usize,
    routers: RwLock<BTreeMap<String, SharedRouter>>,
    reward_model_changes: Mutex<RewardModelChanges>,
    store: Store,
    gate: RwLock<()>,
    snapshot_every_records: u64,
    max_routers: usize,
    records_since_snapshot: AtomicU64,
    snapshot_running: AtomicBool,
}

fn state_write(error: StoreError) -> RouterError {
    RouterError::StateWrite {
        reason: error.to_string(),
    }
}

impl Routers {
    pub fn new(
        defaults: RouterSettings,
        create_on_first_use: bool,
        max_context_dim: usize,
    ) -> Self {
        Self::with_store(
            defaults,
            create_on_first_use,
            max_context_dim,
            Store::in_memory(),
            0,
        )
    }

    /// Routers whose changes are logged to `store`; a snapshot becomes due every
    /// `snapshot_every_records` records (0: never).
    pub fn with_store(
        defaults: RouterSettings,
        create_on_first_use: bool,
        max_context_dim: usize,
        store: Store,
        snapshot_every_records: u64,
    ) -> Self {
        Self {
            defaults,
            create_on_first_use,
            max_context_dim,
            routers: RwLock::new(BTreeMap::new()),
            reward_model_changes: Mutex::new(RewardModelChanges::default()),
            store,
            gate: RwLock::new(()),
            snapshot_every_records,
            max_routers: usize::MAX,
            records_since_snapshot: AtomicU64::new(0),
            snapshot_running: AtomicBool::new(false),
        }
    }

    /// Refuse to create routers beyond `max_routers`.
    pub fn with_max_routers(mut self, max_routers: usize) -> Self {
        self.max_routers = max_routers;
        self
    }

    /// The settings a router gets when a field is left unset.
    pub fn defaults(&self) -> &RouterSettings {
        &self.defaults
    }

    pub fn max_context_dim(&self) -> usize {
        self.max_context_dim
    }

    pub fn store(&self) -> &Store {
        &self.store
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

    /// Log `event` (the caller holds the gate and the locks that order it).
    fn log(&self, event: &StateEvent) -> Result<Durable, RouterError> {
        if !self.store.is_durable() {
            return self.store.append(Vec::new()).map_err(state_write);
        }
        let payload = postcard::to_stdvec(event).map_err(|e| RouterError::StateWrite {
            reason: format!("cannot encode event: {e}"),
        })?;
        self.records_since_snapshot.fetch_add(1, Ordering::Relaxed);
        self.store.append(payload).map_err(state_write)
    }

    /// The named router, created with the default settings (and an arm per RM in
    /// `serving`) if it does not exist and the server creates routers on first use. The
    /// ticket is `Some` when the router was created.
    pub fn get_or_create(
        &self,
        name: &str,
        serving: &[String],
    ) -> Result<(SharedRouter, Option<Durable>), RouterError> {
        match self.get(name) {
            Ok(router) => Ok((router, None)),
            Err(RouterError::UnknownRouter { .. }) if self.create_on_first_use => {
                match self.create(name, self.defaults.clone(), serving) {
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

    /// A new router with an arm for every RM in `serving` that `settings` accept.
    pub fn create(
        &self,
        name: &str,
        settings: RouterSettings,
        serving: &[String],
    ) -> Result<(SharedRouter, Durable), RouterError> {
        validate_name(name)?;
        let settings = settings.validate(self.max_context_dim)?;
        let _gate = self.gate.read().expect("gate poisoned");
        let mut routers = self.routers.write().expect("router map lock poisoned");
        if routers.contains_key(name) {
            return Err(RouterError::RouterExists {
                name: name.to_string(),
            });
        }
        if routers.len() >= self.max_routers {
            return Err(RouterError::TooManyRouters {
                max: self.max_routers,
            });
        }
        let event = StateEvent::RouterCreated {
            name: name.to_string(),
            settings: settings.clone(),
            serving: serving.to_vec(),
        };
        let durable = self.log(&event)?;
        let router = Arc::new(Mutex::new(Router::new(name.to_string(), settings, serving)));
        routers.insert(name.to_string(), router.clone());
        Ok((router, durable))
    }

    pub fn delete(&self, name: &str) -> Result<Durable, RouterError> {
        let _gate = self.gate.read().expect("gate poisoned");
        let mut routers = self.routers.write().expect("router map lock poisoned");
        if !routers.contains_key(name) {
            return Err(RouterError::UnknownRouter {
                name: name.to_string(),
            });
        }
        let durable = self.log(&StateEvent::RouterDeleted {
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
        let _gate = self.gate.read().expect("gate poisoned");
        let mut locked = router.lock().expect("router lock poisoned");
        let event = RouterEvent::Reset {
            serving: serving.to_vec(),
        };
        let durable = self.log(&StateEvent::Router {
            name: name.to_string(),
            event: event.clone(),
        })?;
        locked.apply(event)?;
        drop(locked);
        Ok((router, durable))
    }

    /// Record the decisions of a completed Score under `decision_ids`. Returns the
    /// router's pending count and evictions after recording.
    pub fn record(
        &self,
        router: &SharedRouter,
        selection: Selection,
        decision_ids: Vec<String>,
        now_unix_ms: i64,
    ) -> Result<(Durable, usize, super::Evictions), RouterError> {
        let _gate = self.gate.read().expect("gate poisoned");
        let mut locked = router.lock().expect("router lock poisoned");
        let event = selection.recorded(decision_ids, now_unix_ms);
        let durable = self.log(&StateEvent::Router {
            name: locked.name().to_string(),
            event: event.clone(),
        })?;
        locked.apply(event)?;
        Ok((durable, locked.pending_decisions(), locked.evictions()))
    }

    /// Check, log and apply a Feedback, all or nothing.
    pub fn feedback(
        &self,
        name: &str,
        decision_ids: Vec<String>,
        signal: FeedbackSignal,
        serving: Vec<String>,
        now_unix_ms: i64,
    ) -> Result<FeedbackApplied, RouterError> {
        let router = self.get(name)?;
        let _gate = self.gate.read().expect("gate poisoned");
        let mut locked = router.lock().expect("router lock poisoned");
        locked.check_feedback(&decision_ids, signal, now_unix_ms)?;
        let event = RouterEvent::Feedback {
            now_unix_ms,
            serving,
            decision_ids,
            signal,
        };
        let durable = self.log(&StateEvent::Router {
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

    /// Replace (or create) the router `name` with an exported state.
    pub fn import(&self, name: &str, mut state: RouterState) -> Result<Durable, RouterError> {
        validate_name(name)?;
        state.name = name.to_string();
        state.settings = state.settings.clone().validate(self.max_context_dim)?;
        let router = Router::from_state(name.to_string(), state.clone())?;
        let _gate = self.gate.read().expect("gate poisoned");
        let mut routers = self.routers.write().expect("router map lock poisoned");
        let durable = self.log(&StateEvent::RouterImported {
            name: name.to_string(),
            state: Box::new(state),
        })?;
        routers.insert(name.to_string(), Arc::new(Mutex::new(router)));
        Ok(durable)
    }

    /// Log that `spec` was published (the caller loaded and probed it, and publishes it
    /// after this returns; Admin changes to the RM set are serialized by the caller).
    pub fn reward_model_added(&self, spec: RewardModelSpec) -> Result<Durable, RouterError> {
        let _gate = self.gate.read().expect("gate poisoned");
        let event = StateEvent::RewardModelAdded { spec };
        let durable = self.log(&event)?;
        self.apply(event)?;
        Ok(durable)
    }

    /// Log that the RM `name` was unpublished.
    pub fn reward_model_removed(&self, name: &str) -> Result<Durable, RouterError> {
        let _gate = self.gate.read().expect("gate poisoned");
        let event = StateEvent::RewardModelRemoved {
            name: name.to_string(),
        };
        let durable = self.log(&event)?;
        self.apply(event)?;
        Ok(durable)
    }

    /// The RM set changes made through Admin so far (recovered ones included).
    pub fn reward_model_changes(&self) -> RewardModelChanges {
        self.reward_model_changes
            .lock()
            .expect("RM changes lock poisoned")
            .clone()
    }

    /// Apply a logged event (recovery). The live path goes through the methods above.
    pub fn apply(&self, event: StateEvent) -> Result<(), RouterError> {
        match event {
            StateEvent::RewardModelAdded { spec } => {
                let mut changes = self
                    .reward_model_changes
                    .lock()
                    .expect("RM changes lock poisoned");
                changes.removed.remove(&spec.name);
                changes.added.insert(spec.name.clone(), spec);
                return Ok(());
            }
            StateEvent::RewardModelRemoved { name } => {
                let mut changes = self
                    .reward_model_changes
                    .lock()
                    .expect("RM changes lock poisoned");
                changes.added.remove(&name);
                changes.removed.insert(name);
                return Ok(());
            }
            _ => {}
        }
        let mut routers = self.routers.write().expect("router map lock poisoned");
        match event {
            StateEvent::RouterCreated {
                name,
                settings,
                serving,
            } => {
                let router = Router::new(name.clone(), settings, &serving);
                routers.insert(name, Arc::new(Mutex::new(router)));
            }
            StateEvent::RouterDeleted { name } => {
                routers.remove(&name);
            }
            StateEvent::Router { name, event } => {
                let router = routers
                    .get(&name)
                    .ok_or_else(|| RouterError::UnknownRouter { name: name.clone() })?;
                router.lock().expect("router lock poisoned").apply(event)?;
            }
            StateEvent::RouterImported { name, state } => {
                let router = Router::from_state(name.clone(), *state)?;
                routers.insert(name, Arc::new(Mutex::new(router)));
            }
            StateEvent::RewardModelAdded { .. } | StateEvent::RewardModelRemoved { .. } => {
                unreachable!("handled above")
            }
        }
        Ok(())
    }

    /// Rebuild the routers from what the store recovered: the snapshot, then every later
    /// record through [`Routers::apply`]. Returns the number of records replayed.
    pub fn recover(&self, recovered: Recovered) -> Result<usize, StoreError> {
        if let Some((seq, payload)) = recovered.snapshot {
            let snapshot: Snapshot =
                postcard::from_bytes(&payload).map_err(|e| StoreError::Decode {
                    seq,
                    reason: format!("snapshot: {e}"),
                })?;
            *self
                .reward_model_changes
                .lock()
                .expect("RM changes lock poisoned") = snapshot.reward_models;
            let mut routers = self.routers.write().expect("router map lock poisoned");
            for state in snapshot.routers {
                let name = state.name.clone();
                let router =
                    Router::from_state(name.clone(), state).map_err(|e| StoreError::Decode {
                        seq,
                        reason: e.to_string(),
                    })?;
                routers.insert(name, Arc::new(Mutex::new(router)));
            }
        }
        let count = recovered.records.len();
        for (seq, payload) in recovered.records {
            let event: StateEvent =
                postcard::from_bytes(&payload).map_err(|e| StoreError::Decode {
                    seq,
                    reason: e.to_string(),
                })?;
            self.apply(event).map_err(|e| StoreError::Decode {
                seq,
                reason: format!("does not apply: {e}"),
            })?;
        }
        self.records_since_snapshot
            .store(count as u64, Ordering::Relaxed);
        Ok(count)
    }

    /// Whether enough records were logged since the last snapshot to take another.
    pub fn snapshot_due(&self) -> bool {
        self.store.is_durable()
            && self.snapshot_every_records > 0
            && self.records_since_snapshot.load(Ordering::Relaxed) >= self.snapshot_every_records
            && !self.snapshot_running.load(Ordering::Relaxed)
    }

    /// Write a snapshot of every router. Changes wait only while the state is copied;
    /// encoding and writing happen after. Blocking: run it off the async runtime.
    /// Returns (sequence number, bytes written), or `None` without a durable store.
    pub fn snapshot(&self) -> Result<Option<(u64, u64)>, StoreError> {
        if !self.store.is_durable() || self.snapshot_running.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let result = (|| {
            let (seq, snapshot) = {
                let _gate = self.gate.write().expect("gate poisoned");
                let seq = self.store.last_seq();
                let routers: Vec<RouterState> = self
                    .list()
                    .iter()
                    .map(|router| router.lock().expect("router lock poisoned").to_state())
                    .collect();
                self.records_since_snapshot.store(0, Ordering::Relaxed);
                let reward_models = self.reward_model_changes();
                (
                    seq,
                    Snapshot {
                        routers,
                        reward_models,
                    },
                )
            };
            let payload = postcard::to_stdvec(&snapshot).map_err(|e| StoreError::Decode {
                seq,
                reason: format!("cannot encode snapshot: {e}"),
            })?;
            let bytes = self.store.write_snapshot(seq, &payload)?;
            Ok(Some((seq, bytes)))
        })();
        self.snapshot_running.store(false, Ordering::Release);
        result
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

fn validate_name(name: &str) -> Result<(), RouterError> {
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
        Routers::new(settings(4), create_on_first_use, 1024)
    }

    #[test]
    fn first_use_creates_only_when_allowed() {
        assert!(routers(true).get_or_create("run-1", &[]).is_ok());
        assert_eq!(
            routers(false).get_or_create("run-1", &[]).err(),
            Some(RouterError::UnknownRouter {
                name: "run-1".into()
            })
        );
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
}
