//! The ledger of the routers' durable state: every change as a [`StateEvent`] appended to
//! the store's log, recovery (newest snapshot, then every later record through the same
//! [`Routers::apply`] the live path uses), and snapshots of a consistent cut.
//!
//! Locking: the `gate` is read-locked by every change (log + apply) and write-locked by a
//! snapshot, which so sees every record up to the store's last sequence number applied
//! and none after. Cost: one encode + append per change; a snapshot copies every router
//! under the gate (O(K·d²) per LinUCB router), then encodes and writes outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};

use crate::models::spec::RewardModelSpecV1;
use crate::models::{EncoderSpec, ModelSource, RewardModelSpec};
use crate::routers::error::RouterError;
use crate::routers::instance::router::Router;
use crate::routers::instance::settings::RouterSettings;
use crate::routers::instance::state::{
    RouterSettingsV1, RouterSettingsV2, RouterSettingsV3, RouterState, RouterStateV1,
    RouterStateV2, RouterStateV3, RouterStateV4,
};
use crate::routers::{RouterEvent, Routers};
use crate::store::{Durable, Recovered, Store};

/// One logged change of the routers' state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StateEvent {
    /// A router created, in format 1 (logs written before format 2).
    RouterCreatedV1 {
        name: String,
        settings: RouterSettingsV1,
        serving: Vec<String>,
    },
    RouterDeleted {
        name: String,
    },
    Router {
        name: String,
        event: RouterEvent,
    },
    /// A whole router state in format 1 (imports logged before format 2).
    RouterImportedV1 {
        name: String,
        state: Box<RouterStateV1>,
    },
    /// An RM published through Admin.AddRewardModel, before backends existed.
    RewardModelAddedV1 {
        spec: Box<RewardModelSpecV1>,
    },
    /// An RM unpublished through Admin.RemoveRewardModel (config RMs included).
    RewardModelRemoved {
        name: String,
    },
    /// A whole router state in format 2 (imports logged before format 3), replacing any
    /// router of that name.
    RouterImportedV2 {
        name: String,
        state: Box<RouterStateV2>,
    },
    /// A router created, in formats 2 and 3 (logs written before format 4).
    RouterCreatedV2 {
        name: String,
        settings: RouterSettingsV2,
        serving: Vec<String>,
    },
    /// An encoder published through Admin.AddEncoder.
    EncoderAdded {
        spec: EncoderSpec,
    },
    /// An encoder unpublished through Admin.RemoveEncoder (config encoders included).
    EncoderRemoved {
        name: String,
    },
    /// An RM published through Admin.AddRewardModel (any backend).
    RewardModelAdded {
        spec: Box<RewardModelSpec>,
    },
    /// A whole router state in format 3 (imports logged before format 4), replacing any
    /// router of that name.
    RouterImportedV3 {
        name: String,
        state: Box<RouterStateV3>,
    },
    /// A whole router state in format 4 (imports logged before format 5), replacing any
    /// router of that name.
    RouterImportedV4 {
        name: String,
        state: Box<RouterStateV4>,
    },
    /// A router created, in format 4 (logs written before format 5).
    RouterCreatedV3 {
        name: String,
        settings: RouterSettingsV3,
        serving: Vec<String>,
    },
    /// A whole router state (import), replacing any router of that name.
    RouterImported {
        name: String,
        state: Box<RouterState>,
    },
    RouterCreated {
        name: String,
        settings: RouterSettings,
        serving: Vec<String>,
    },
}

/// Changes to one of the server's model sets (reward models, encoders) made through Admin,
/// to redo at startup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelChanges<S> {
    /// Added models, by name (loaded after the config's).
    pub added: BTreeMap<String, S>,
    /// Removed models (config models of these names are not loaded).
    pub removed: BTreeSet<String>,
}

impl<S> Default for ModelChanges<S> {
    fn default() -> Self {
        Self {
            added: BTreeMap::new(),
            removed: BTreeSet::new(),
        }
    }
}

impl<S: Clone> ModelChanges<S> {
    fn add(&mut self, name: String, spec: S) {
        self.removed.remove(&name);
        self.added.insert(name, spec);
    }

    fn remove(&mut self, name: String) {
        self.added.remove(&name);
        self.removed.insert(name);
    }

    /// What to load at startup: the config's `(name, spec)`s less those removed, then those
    /// added.
    pub fn startup<'a>(
        &self,
        config: impl IntoIterator<Item = (&'a str, &'a S)>,
    ) -> Vec<(S, ModelSource)>
    where
        S: 'a,
    {
        config
            .into_iter()
            .filter(|(name, _)| !self.removed.contains(*name))
            .map(|(_, spec)| (spec.clone(), ModelSource::Config))
            .chain(
                self.added
                    .values()
                    .map(|spec| (spec.clone(), ModelSource::Admin)),
            )
            .collect()
    }
}

/// Changes to the server's reward models made through Admin.
pub type RewardModelChanges = ModelChanges<RewardModelSpec>;
/// Changes to the server's encoders made through Admin.
pub type EncoderChanges = ModelChanges<EncoderSpec>;

/// The payload of a snapshot, and of the versions before it by the router state and RM
/// spec formats they held (the field order is the format).
#[derive(Serialize, Deserialize)]
struct SnapshotOf<R, M = RewardModelSpec> {
    routers: Vec<R>,
    reward_models: ModelChanges<M>,
    encoders: EncoderChanges,
}

/// The payload of a snapshot.
type Snapshot = SnapshotOf<RouterState>;

/// The payload of a version 1 snapshot (before encoders).
#[derive(Deserialize)]
struct SnapshotV1 {
    routers: Vec<RouterStateV1>,
    reward_models: ModelChanges<RewardModelSpecV1>,
}

impl From<ModelChanges<RewardModelSpecV1>> for RewardModelChanges {
    fn from(old: ModelChanges<RewardModelSpecV1>) -> Self {
        Self {
            added: old
                .added
                .into_iter()
                .map(|(name, spec)| (name, spec.into()))
                .collect(),
            removed: old.removed,
        }
    }
}

impl<R: Into<RouterState>, M> SnapshotOf<R, M>
where
    RewardModelChanges: From<ModelChanges<M>>,
{
    /// The current payload for an older one.
    fn upgrade(self) -> Snapshot {
        Snapshot {
            routers: self.routers.into_iter().map(Into::into).collect(),
            reward_models: self.reward_models.into(),
            encoders: self.encoders,
        }
    }
}

impl Snapshot {
    /// Decode a snapshot payload written with store snapshot `version`: 2 before RM
    /// backends, 3 before pending decisions kept their scores, 4 before the prior counts
    /// per RM, 5 before the settings' context categories.
    fn decode(version: u32, payload: &[u8]) -> Result<Self, postcard::Error> {
        Ok(match version {
            1 => {
                let old: SnapshotV1 = postcard::from_bytes(payload)?;
                Snapshot {
                    routers: old.routers.into_iter().map(RouterState::from).collect(),
                    reward_models: old.reward_models.into(),
                    encoders: EncoderChanges::default(),
                }
            }
            2 => postcard::from_bytes::<SnapshotOf<RouterStateV2, RewardModelSpecV1>>(payload)?
                .upgrade(),
            3 => postcard::from_bytes::<SnapshotOf<RouterStateV2>>(payload)?.upgrade(),
            4 => postcard::from_bytes::<SnapshotOf<RouterStateV3>>(payload)?.upgrade(),
            5 => postcard::from_bytes::<SnapshotOf<RouterStateV4>>(payload)?.upgrade(),
            _ => postcard::from_bytes(payload)?,
        })
    }
}

/// The store and the bookkeeping around it.
pub(in crate::routers) struct Ledger {
    store: Store,
    gate: RwLock<()>,
    snapshot_every_records: u64,
    records_since_snapshot: AtomicU64,
    snapshot_running: AtomicBool,
}

impl Ledger {
    pub(in crate::routers) fn new(store: Store, snapshot_every_records: u64) -> Self {
        Self {
            store,
            gate: RwLock::new(()),
            snapshot_every_records,
            records_since_snapshot: AtomicU64::new(0),
            snapshot_running: AtomicBool::new(false),
        }
    }

    pub(in crate::routers) fn store(&self) -> &Store {
        &self.store
    }

    /// Held by every change while it is logged and applied.
    pub(in crate::routers) fn change(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().expect("gate poisoned")
    }

    /// Append `event` (the caller holds [`Ledger::change`] and the locks that order it).
    pub(in crate::routers) fn log(&self, event: &StateEvent) -> Result<Durable, RouterError> {
        if !self.store.is_durable() {
            return self
                .store
                .append(Vec::new())
                .map_err(RouterError::StateWrite);
        }
        let payload = postcard::to_stdvec(event).map_err(|source| RouterError::Encode {
            what: "event",
            source,
        })?;
        self.records_since_snapshot.fetch_add(1, Ordering::Relaxed);
        self.store.append(payload).map_err(RouterError::StateWrite)
    }
}

impl Routers {
    /// Apply a logged event (recovery). The live path goes through the registry's methods,
    /// which log then apply the same events.
    pub fn apply(&self, event: StateEvent) -> Result<(), RouterError> {
        match event {
            StateEvent::RewardModelAdded { spec } => {
                self.reward_model_changes
                    .lock()
                    .expect("RM changes lock poisoned")
                    .add(spec.name.clone(), *spec);
            }
            StateEvent::RewardModelAddedV1 { spec } => {
                let spec = RewardModelSpec::from(*spec);
                self.reward_model_changes
                    .lock()
                    .expect("RM changes lock poisoned")
                    .add(spec.name.clone(), spec);
            }
            StateEvent::RewardModelRemoved { name } => {
                self.reward_model_changes
                    .lock()
                    .expect("RM changes lock poisoned")
                    .remove(name);
            }
            StateEvent::RouterCreated {
                name,
                settings,
                serving,
            } => self.insert_created(name, settings, &serving),
            StateEvent::RouterCreatedV3 {
                name,
                settings,
                serving,
            } => self.insert_created(name, settings.into(), &serving),
            StateEvent::RouterCreatedV2 {
                name,
                settings,
                serving,
            } => self.insert_created(name, settings.into(), &serving),
            StateEvent::RouterCreatedV1 {
                name,
                settings,
                serving,
            } => self.insert_created(name, settings.into(), &serving),
            StateEvent::EncoderAdded { spec } => {
                self.encoder_changes
                    .lock()
                    .expect("encoder changes lock poisoned")
                    .add(spec.name.clone(), spec);
            }
            StateEvent::EncoderRemoved { name } => {
                self.encoder_changes
                    .lock()
                    .expect("encoder changes lock poisoned")
                    .remove(name);
            }
            StateEvent::RouterDeleted { name } => {
                self.map_mut().remove(&name);
            }
            StateEvent::Router { name, event } => {
                self.get(&name)?
                    .lock()
                    .expect("router lock poisoned")
                    .apply(event)?;
            }
            StateEvent::RouterImported { name, state } => self.replace_router(name, *state)?,
            StateEvent::RouterImportedV4 { name, state } => {
                self.replace_router(name, RouterState::from(*state))?
            }
            StateEvent::RouterImportedV3 { name, state } => {
                self.replace_router(name, RouterState::from(*state))?
            }
            StateEvent::RouterImportedV2 { name, state } => {
                self.replace_router(name, RouterState::from(*state))?
            }
            StateEvent::RouterImportedV1 { name, state } => {
                self.replace_router(name, RouterState::from(*state))?
            }
        }
        Ok(())
    }

    /// A logged creation: router `name` with an arm per RM in `serving` its settings accept.
    fn insert_created(&self, name: String, settings: RouterSettings, serving: &[String]) {
        let router = Router::new(name.clone(), settings, serving);
        self.map_mut().insert(name, Arc::new(Mutex::new(router)));
    }

    /// An imported router state becomes router `name`, replacing any of that name.
    fn replace_router(&self, name: String, state: RouterState) -> Result<(), RouterError> {
        let router = Router::from_state(name.clone(), state)?;
        self.map_mut().insert(name, Arc::new(Mutex::new(router)));
        Ok(())
    }

    /// Rebuild the routers from what the store recovered: the snapshot, then every later
    /// record through [`Routers::apply`]. Returns the number of records replayed.
    pub fn recover(&self, recovered: Recovered) -> Result<usize, RouterError> {
        if let Some((seq, payload)) = recovered.snapshot {
            let snapshot = Snapshot::decode(recovered.snapshot_version, &payload)
                .map_err(|source| RouterError::Decode { seq, source })?;
            *self
                .reward_model_changes
                .lock()
                .expect("RM changes lock poisoned") = snapshot.reward_models;
            *self
                .encoder_changes
                .lock()
                .expect("encoder changes lock poisoned") = snapshot.encoders;
            let mut routers = self.map_mut();
            for state in snapshot.routers {
                let name = state.name.clone();
                let router = Router::from_state(name.clone(), state).map_err(|source| {
                    RouterError::Replay {
                        seq,
                        source: Box::new(source),
                    }
                })?;
                routers.insert(name, Arc::new(Mutex::new(router)));
            }
        }
        let count = recovered.records.len();
        for (seq, payload) in recovered.records {
            let event: StateEvent = postcard::from_bytes(&payload)
                .map_err(|source| RouterError::Decode { seq, source })?;
            self.apply(event).map_err(|source| RouterError::Replay {
                seq,
                source: Box::new(source),
            })?;
        }
        self.ledger
            .records_since_snapshot
            .store(count as u64, Ordering::Relaxed);
        Ok(count)
    }

    /// Apply the records other replicas appended to this shared store (the catalog) since
    /// it was last read, in order; returns them. Changes wait meanwhile. Blocking.
    pub fn catch_up(&self) -> Result<Vec<StateEvent>, RouterError> {
        let _gate = self.ledger.gate.write().expect("gate poisoned");
        let mut applied = Vec::new();
        for (seq, payload) in self
            .ledger
            .store
            .read_new()
            .map_err(RouterError::StateWrite)?
        {
            let event: StateEvent = postcard::from_bytes(&payload)
                .map_err(|source| RouterError::Decode { seq, source })?;
            self.apply(event.clone())
                .map_err(|source| RouterError::Replay {
                    seq,
                    source: Box::new(source),
                })?;
            applied.push(event);
        }
        Ok(applied)
    }

    /// Whether enough records were logged since the last snapshot to take another.
    pub fn snapshot_due(&self) -> bool {
        let ledger = &self.ledger;
        ledger.store.is_durable()
            && ledger.snapshot_every_records > 0
            && ledger.records_since_snapshot.load(Ordering::Relaxed)
                >= ledger.snapshot_every_records
            && !ledger.snapshot_running.load(Ordering::Relaxed)
    }

    /// Write a snapshot of every router. Changes wait only while the state is copied;
    /// encoding and writing happen after. Blocking: run it off the async runtime.
    /// Returns (sequence number, bytes written), or `None` without a durable store.
    pub fn snapshot(&self) -> Result<Option<(u64, u64)>, RouterError> {
        let ledger = &self.ledger;
        if !ledger.store.is_durable() || ledger.snapshot_running.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let result = (|| {
            let (seq, snapshot) = {
                let _gate = ledger.gate.write().expect("gate poisoned");
                let seq = ledger.store.last_seq();
                let routers: Vec<RouterState> = self
                    .list()
                    .iter()
                    .map(|router| router.lock().expect("router lock poisoned").to_state())
                    .collect();
                ledger.records_since_snapshot.store(0, Ordering::Relaxed);
                let reward_models = self.reward_model_changes();
                let encoders = self.encoder_changes();
                (
                    seq,
                    Snapshot {
                        routers,
                        reward_models,
                        encoders,
                    },
                )
            };
            let payload = postcard::to_stdvec(&snapshot).map_err(|source| RouterError::Encode {
                what: "snapshot",
                source,
            })?;
            let bytes = ledger.store.write_snapshot(seq, &payload)?;
            Ok(Some((seq, bytes)))
        })();
        ledger.snapshot_running.store(false, Ordering::Release);
        result
    }
}

/// The model sets' changes made through Admin: logged here, redone at startup.
impl Routers {
    /// Log that `spec` was published (the caller loaded and probed it, and publishes it
    /// after this returns; Admin changes to the RM set are serialized by the caller).
    pub fn reward_model_added(&self, spec: RewardModelSpec) -> Result<Durable, RouterError> {
        let _gate = self.ledger.change();
        let event = StateEvent::RewardModelAdded {
            spec: Box::new(spec),
        };
        let durable = self.ledger.log(&event)?;
        self.apply(event)?;
        Ok(durable)
    }

    /// Log that the RM `name` was unpublished.
    pub fn reward_model_removed(&self, name: &str) -> Result<Durable, RouterError> {
        let _gate = self.ledger.change();
        let event = StateEvent::RewardModelRemoved {
            name: name.to_string(),
        };
        let durable = self.ledger.log(&event)?;
        self.apply(event)?;
        Ok(durable)
    }

    /// Log that encoder `spec` was published (loaded and probed by the caller).
    pub fn encoder_added(&self, spec: EncoderSpec) -> Result<Durable, RouterError> {
        let _gate = self.ledger.change();
        let event = StateEvent::EncoderAdded { spec };
        let durable = self.ledger.log(&event)?;
        self.apply(event)?;
        Ok(durable)
    }

    /// Log that encoder `name` was unpublished; refused while a router takes its contexts
    /// from it (the names of those routers come back).
    pub fn encoder_removed(&self, name: &str) -> Result<Result<Durable, Vec<String>>, RouterError> {
        let _gate = self.ledger.change();
        let users = self.encoder_users(name);
        if !users.is_empty() {
            return Ok(Err(users));
        }
        let event = StateEvent::EncoderRemoved {
            name: name.to_string(),
        };
        let durable = self.ledger.log(&event)?;
        self.apply(event)?;
        Ok(Ok(durable))
    }

    /// The routers that take their contexts from encoder `name`.
    pub fn encoder_users(&self, name: &str) -> Vec<String> {
        self.list()
            .iter()
            .filter_map(|router| {
                let router = router.lock().expect("router lock poisoned");
                (router.settings().encoder.as_deref() == Some(name))
                    .then(|| router.name().to_string())
            })
            .collect()
    }

    /// The encoder changes made through Admin so far (recovered ones included).
    pub fn encoder_changes(&self) -> EncoderChanges {
        self.encoder_changes
            .lock()
            .expect("encoder changes lock poisoned")
            .clone()
    }

    /// The RM set changes made through Admin so far (recovered ones included).
    pub fn reward_model_changes(&self) -> RewardModelChanges {
        self.reward_model_changes
            .lock()
            .expect("RM changes lock poisoned")
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routers::tests::settings;

    #[test]
    fn a_version_4_snapshot_decodes_as_the_current_payload_without_prior_counts() {
        let serving = vec!["a".to_string(), "b".to_string()];
        let state = Router::new("r".into(), settings(2), &serving).to_state();
        let v4 = SnapshotOf::<RouterStateV3> {
            routers: vec![RouterStateV3::from(&state)],
            reward_models: RewardModelChanges::default(),
            encoders: EncoderChanges::default(),
        };
        let decoded = Snapshot::decode(4, &postcard::to_stdvec(&v4).unwrap()).unwrap();
        assert_eq!(decoded.routers, vec![state.clone()]);
        let current = Snapshot {
            routers: vec![state.clone()],
            reward_models: RewardModelChanges::default(),
            encoders: EncoderChanges::default(),
        };
        let bytes = postcard::to_stdvec(&current).unwrap();
        assert_eq!(
            Snapshot::decode(crate::store::SNAPSHOT_VERSION, &bytes)
                .unwrap()
                .routers,
            vec![state]
        );
    }

    #[test]
    fn event_variants_keep_their_logged_indices() {
        // postcard writes an enum's variant index first: a variant renamed for an older
        // format keeps its place, new ones are appended.
        let index = |event: &StateEvent| postcard::to_stdvec(event).unwrap()[0];
        let created = |settings: RouterSettings| StateEvent::RouterCreated {
            name: "r".into(),
            settings,
            serving: Vec::new(),
        };
        assert_eq!(
            index(&StateEvent::RouterCreatedV2 {
                name: "r".into(),
                settings: RouterSettingsV2::from(&settings(2)),
                serving: Vec::new(),
            }),
            7
        );
        assert_eq!(
            index(&StateEvent::RouterCreatedV3 {
                name: "r".into(),
                settings: RouterSettingsV3::from(&settings(2)),
                serving: Vec::new(),
            }),
            13
        );
        let state = Router::new("r".into(), settings(2), &[]).to_state();
        assert_eq!(
            index(&StateEvent::RouterImportedV4 {
                name: "r".into(),
                state: Box::new(RouterStateV4::from(&state)),
            }),
            12
        );
        assert_eq!(
            index(&StateEvent::RouterImported {
                name: "r".into(),
                state: Box::new(state),
            }),
            14
        );
        assert_eq!(index(&created(settings(2))), 15);
    }

    #[test]
    fn a_version_5_snapshot_and_a_format_4_creation_read_without_context_categories() {
        let serving = vec!["a".to_string(), "b".to_string()];
        let centred = RouterSettings {
            reward_center: 0.5,
            ..settings(2)
        };
        let state = Router::new("r".into(), centred.clone(), &serving).to_state();
        let v5 = SnapshotOf::<RouterStateV4> {
            routers: vec![RouterStateV4::from(&state)],
            reward_models: RewardModelChanges::default(),
            encoders: EncoderChanges::default(),
        };
        let decoded = Snapshot::decode(5, &postcard::to_stdvec(&v5).unwrap()).unwrap();
        assert_eq!(decoded.routers, vec![state]);
        let routers = Routers::new(crate::routers::RoutersOptions::default());
        let logged = StateEvent::RouterCreatedV3 {
            name: "old".into(),
            settings: RouterSettingsV3::from(&centred),
            serving,
        };
        let bytes = postcard::to_stdvec(&logged).unwrap();
        routers
            .apply(postcard::from_bytes(&bytes).unwrap())
            .unwrap();
        let router = routers.get("old").unwrap();
        let router = router.lock().unwrap();
        assert_eq!(router.settings(), &centred);
        assert!(router.settings().context_categories.is_empty());
    }

    #[test]
    fn routers_logged_before_the_reward_centre_replay_uncentred() {
        let serving = vec!["a".to_string()];
        let routers = Routers::new(crate::routers::RoutersOptions::default());
        let old = settings(2);
        assert_eq!(old.reward_center, 0.0);
        let logged = StateEvent::RouterCreatedV2 {
            name: "old".into(),
            settings: RouterSettingsV2::from(&old),
            serving: serving.clone(),
        };
        let bytes = postcard::to_stdvec(&logged).unwrap();
        routers
            .apply(postcard::from_bytes(&bytes).unwrap())
            .unwrap();
        let centred = RouterSettings {
            reward_center: 0.5,
            ..old.clone()
        };
        let current = StateEvent::RouterCreated {
            name: "new".into(),
            settings: centred.clone(),
            serving,
        };
        let bytes = postcard::to_stdvec(&current).unwrap();
        routers
            .apply(postcard::from_bytes(&bytes).unwrap())
            .unwrap();
        let settings_of = |name: &str| {
            routers
                .get(name)
                .unwrap()
                .lock()
                .unwrap()
                .settings()
                .clone()
        };
        assert_eq!(settings_of("old"), old);
        assert_eq!(settings_of("new"), centred);
    }
}
