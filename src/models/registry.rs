//! Loaded models by name: [`RewardModels`] and [`Encoders`], one generic [`Registry`].
//! Readers take a snapshot of the names or an `Arc` of one model; a model stays alive
//! while a request holds it, so removing one lets in-flight requests finish before its
//! sessions are freed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{Encoder, ModelError, ModelSource, RewardModel, RewardModelSpec};

/// What a registry needs of the models it holds.
pub trait Registered {
    fn name(&self) -> &str;
    /// The error for a name that is not registered.
    fn unknown(name: &str) -> ModelError;
    /// The error for a name that is taken.
    fn exists(name: &str) -> ModelError;
}

impl Registered for RewardModel {
    fn name(&self) -> &str {
        RewardModel::name(self)
    }
    fn unknown(name: &str) -> ModelError {
        ModelError::UnknownRewardModel {
            name: name.to_string(),
        }
    }
    fn exists(name: &str) -> ModelError {
        ModelError::RewardModelExists {
            name: name.to_string(),
        }
    }
}

impl Registered for Encoder {
    fn name(&self) -> &str {
        Encoder::name(self)
    }
    fn unknown(name: &str) -> ModelError {
        ModelError::UnknownEncoder {
            name: name.to_string(),
        }
    }
    fn exists(name: &str) -> ModelError {
        ModelError::EncoderExists {
            name: name.to_string(),
        }
    }
}

/// Models that can be down for a while (a remote RM whose engine is unreachable).
pub trait Available {
    fn is_available(&self) -> bool;
}

impl Available for RewardModel {
    fn is_available(&self) -> bool {
        RewardModel::is_available(self)
    }
}

pub struct Registry<M> {
    models: RwLock<BTreeMap<String, Arc<M>>>,
}

/// Reward models serving now, by name.
pub type RewardModels = Registry<RewardModel>;
/// Encoders serving now, by name.
pub type Encoders = Registry<Encoder>;

impl<M> Default for Registry<M> {
    fn default() -> Self {
        Self {
            models: RwLock::new(BTreeMap::new()),
        }
    }
}

impl<M: Registered> Registry<M> {
    /// Publish a loaded model.
    pub fn insert(&self, model: M) -> Result<Arc<M>, ModelError> {
        let mut models = self.models.write().expect("model registry lock poisoned");
        if models.contains_key(model.name()) {
            return Err(M::exists(model.name()));
        }
        let model = Arc::new(model);
        models.insert(model.name().to_string(), model.clone());
        Ok(model)
    }

    /// Unpublish a model: new requests no longer see it; requests holding it finish, and
    /// its workers stop (freeing the sessions) when the last of them drops it.
    pub fn remove(&self, name: &str) -> Result<Arc<M>, ModelError> {
        self.models
            .write()
            .expect("model registry lock poisoned")
            .remove(name)
            .ok_or_else(|| M::unknown(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.models
            .read()
            .expect("model registry lock poisoned")
            .contains_key(name)
    }

    /// Names of the models serving now, sorted.
    pub fn names(&self) -> Vec<String> {
        self.models
            .read()
            .expect("model registry lock poisoned")
            .keys()
            .cloned()
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<Arc<M>, ModelError> {
        self.models
            .read()
            .expect("model registry lock poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| M::unknown(name))
    }

    /// Names of the models serving now that routers may select, sorted.
    pub fn available_names(&self) -> Vec<String>
    where
        M: Available,
    {
        self.models
            .read()
            .expect("model registry lock poisoned")
            .iter()
            .filter(|(_, model)| model.is_available())
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn list(&self) -> Vec<Arc<M>> {
        self.models
            .read()
            .expect("model registry lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}

impl Registry<RewardModel> {
    /// Load every spec (blocking: sessions are created and probed). Fails on the first
    /// model that does not load, or on a repeated name.
    pub fn load_all(specs: Vec<(RewardModelSpec, ModelSource)>) -> Result<Self, ModelError> {
        let registry = Self::default();
        for (spec, source) in specs {
            let model = match registry.session_for(&spec) {
                Some(shared) => RewardModel::sharing(spec, source, &shared)?,
                None => RewardModel::load(spec, source)?,
            };
            registry.insert(model)?;
        }
        Ok(registry)
    }

    /// A loaded model whose session a model with `spec` would share (same model, inputs and
    /// batching; another head).
    pub fn session_for(&self, spec: &RewardModelSpec) -> Option<Arc<RewardModel>> {
        self.list()
            .into_iter()
            .find(|model| model.shares_session_with(spec))
    }

    /// Load `spec` off the async runtime, on the session of a loaded model it shares one
    /// with (no new session then), else on a new, probed one.
    pub async fn load_off_runtime(
        &self,
        spec: RewardModelSpec,
        source: ModelSource,
    ) -> Result<RewardModel, ModelError> {
        match self.session_for(&spec) {
            Some(shared) => RewardModel::sharing(spec, source, &shared),
            None => RewardModel::load_off_runtime(spec, source).await,
        }
    }

    /// [`RewardModels::load_all`] on a blocking thread, off the async runtime.
    pub async fn open(specs: Vec<(RewardModelSpec, ModelSource)>) -> Result<Self, ModelError> {
        super::worker::off_runtime("*".to_string(), move || Self::load_all(specs)).await
    }
}
