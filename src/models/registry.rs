//! Loaded reward models by name. Readers take a snapshot of the names or an `Arc` of one
//! model; a model stays alive while a request holds it, so removing one lets in-flight
//! requests finish before its session is freed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{ModelError, ModelSource, RewardModel, RewardModelSpec};

#[derive(Default)]
pub struct RewardModels {
    models: RwLock<BTreeMap<String, Arc<RewardModel>>>,
}

impl RewardModels {
    /// Load every spec (blocking: sessions are created and probed). Fails on the first
    /// model that does not load, or on a repeated name.
    pub fn load_all(specs: Vec<(RewardModelSpec, ModelSource)>) -> Result<Self, ModelError> {
        let registry = Self::default();
        for (spec, source) in specs {
            registry.insert(RewardModel::load(spec, source)?)?;
        }
        Ok(registry)
    }

    /// [`RewardModels::load_all`] on a blocking thread, off the async runtime.
    pub async fn open(specs: Vec<(RewardModelSpec, ModelSource)>) -> Result<Self, ModelError> {
        tokio::task::spawn_blocking(move || Self::load_all(specs))
            .await
            .map_err(|e| ModelError::LoaderFailed {
                name: "*".to_string(),
                reason: e.to_string(),
            })?
    }

    /// Publish a loaded model.
    pub fn insert(&self, model: RewardModel) -> Result<Arc<RewardModel>, ModelError> {
        let mut models = self.models.write().expect("reward model lock poisoned");
        if models.contains_key(model.name()) {
            return Err(ModelError::RewardModelExists {
                name: model.name().to_string(),
            });
        }
        let model = Arc::new(model);
        models.insert(model.name().to_string(), model.clone());
        Ok(model)
    }

    /// Unpublish a model: new requests no longer see it; requests holding it finish, and
    /// its worker stops (freeing the session) when the last of them drops it.
    pub fn remove(&self, name: &str) -> Result<Arc<RewardModel>, ModelError> {
        self.models
            .write()
            .expect("reward model lock poisoned")
            .remove(name)
            .ok_or_else(|| ModelError::UnknownRewardModel {
                name: name.to_string(),
            })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.models
            .read()
            .expect("reward model lock poisoned")
            .contains_key(name)
    }

    /// Names of the models serving now, sorted.
    pub fn names(&self) -> Vec<String> {
        self.models
            .read()
            .expect("reward model lock poisoned")
            .keys()
            .cloned()
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<Arc<RewardModel>, ModelError> {
        self.models
            .read()
            .expect("reward model lock poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::UnknownRewardModel {
                name: name.to_string(),
            })
    }

    pub fn list(&self) -> Vec<Arc<RewardModel>> {
        self.models
            .read()
            .expect("reward model lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}
