//! Loaded reward models by name. Readers take a snapshot of the names or an `Arc` of one
//! model; a model stays alive while a request holds it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{ModelError, RewardModel, RewardModelSpec};

#[derive(Default)]
pub struct RewardModels {
    models: RwLock<BTreeMap<String, Arc<RewardModel>>>,
}

impl RewardModels {
    /// Load every spec (blocking: sessions are created and probed). Fails on the first
    /// model that does not load, or on a repeated name.
    pub fn load_all(specs: Vec<RewardModelSpec>) -> Result<Self, ModelError> {
        let registry = Self::default();
        for spec in specs {
            registry.insert(RewardModel::load(spec)?)?;
        }
        Ok(registry)
    }

    /// Publish a loaded model.
    pub fn insert(&self, model: RewardModel) -> Result<(), ModelError> {
        let mut models = self.models.write().expect("reward model lock poisoned");
        if models.contains_key(model.name()) {
            return Err(ModelError::RewardModelExists {
                name: model.name().to_string(),
            });
        }
        models.insert(model.name().to_string(), Arc::new(model));
        Ok(())
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
