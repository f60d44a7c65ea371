//! Admin operations: reward models added (loaded and probed on a blocking thread before
//! anything changes, then logged, published, acknowledged once durable) and removed
//! (logged, unpublished; requests holding the model finish), and routers created,
//! inspected, listed, reset and deleted through the routers' front.

use std::sync::Arc;

use super::{Service, ServiceError};
use crate::models::{Encoder, EncoderSpec, ModelError, ModelSource, RewardModel, RewardModelSpec};
use crate::routers::{RouterError, RouterInfo, RouterSettingsPatch, StateEvent};
use crate::telemetry::{self, metric};

impl Service {
    /// Load and probe `spec`, log it, publish it. A spec that fails changes nothing.
    pub async fn add_reward_model(
        &self,
        spec: RewardModelSpec,
    ) -> Result<Arc<RewardModel>, ServiceError> {
        let _admin = self.model_admin.lock().await;
        if self.reward_models.contains(&spec.name) {
            return Err(ModelError::RewardModelExists { name: spec.name }.into());
        }
        let max = self.limits.max_reward_models;
        if self.reward_models.names().len() >= max {
            return Err(ModelError::TooManyRewardModels { max }.into());
        }
        let model = self
            .reward_models
            .load_off_runtime(spec.clone(), ModelSource::Admin)
            .await?;
        let ticket = self.routers.reward_model_added(spec).await?;
        telemetry::record_reward_model_loaded(model.gauges());
        let model = self.reward_models.insert(model)?;
        ticket.acknowledged().await?;
        tracing::info!(reward_model = %model.name(), "reward model added");
        Ok(model)
    }

    /// Unpublish the RM `name`: new requests no longer see it; requests holding it finish.
    pub async fn remove_reward_model(&self, name: String) -> Result<(), ServiceError> {
        let _admin = self.model_admin.lock().await;
        if !self.reward_models.contains(&name) {
            return Err(ModelError::UnknownRewardModel { name }.into());
        }
        let ticket = self.routers.reward_model_removed(name.clone()).await?;
        self.unpublish_reward_model(&name)?;
        ticket.acknowledged().await?;
        tracing::info!(reward_model = %name, "reward model removed");
        Ok(())
    }

    /// Take the RM `name` out of service; its worker stops when the last request holding
    /// it drops it.
    fn unpublish_reward_model(&self, name: &str) -> Result<(), ServiceError> {
        let removed = self.reward_models.remove(name)?;
        metrics::gauge!(metric::RM_LOADED, "reward_model" => name.to_string(), "provider" => removed.provider().to_string()).set(0.0);
        metrics::gauge!(metric::RM_AVAILABLE, "reward_model" => name.to_string()).set(0.0);
        Ok(())
    }

    pub fn list_reward_models(&self) -> Vec<Arc<RewardModel>> {
        self.reward_models.list()
    }

    /// Create the router `name`: `patch` over the config's defaults, an arm per serving RM.
    /// A router with an encoder takes the encoder's dimension as its `context_dim`.
    pub async fn create_router(
        &self,
        name: String,
        mut patch: RouterSettingsPatch,
    ) -> Result<RouterInfo, ServiceError> {
        if let Some(encoder) = &patch.encoder {
            let dim = match self.encoders.get(encoder) {
                Ok(encoder) => encoder.dim(),
                Err(_) => {
                    return Err(RouterError::InvalidSettings {
                        field: "encoder",
                        reason: format!(
                            "{encoder:?} is not an encoder of this server (serving {:?})",
                            self.encoders.names()
                        ),
                    }
                    .into());
                }
            };
            match patch.context_dim {
                None => patch.context_dim = Some(dim),
                Some(context_dim) if context_dim != dim => {
                    return Err(RouterError::InvalidSettings {
                        field: "context_dim",
                        reason: format!(
                            "{context_dim} differs from encoder {encoder:?}'s dimension {dim}; leave it 0"
                        ),
                    }
                    .into());
                }
                Some(_) => {}
            }
        }
        let serving = self.reward_models.names();
        let info = self.routers.create(name, patch, serving).await?;
        tracing::info!(router = %info.name, "router created");
        Ok(info)
    }

    /// Every router's name in the database the replicas share (`None`: no replicas).
    pub async fn shared_router_names(&self) -> Result<Option<Vec<String>>, ServiceError> {
        Ok(self.routers.shared_router_names().await?)
    }

    pub async fn router_info(&self, name: String) -> Result<RouterInfo, ServiceError> {
        Ok(self.routers.info(name, self.reward_models.names()).await?)
    }

    pub async fn list_routers(&self) -> Result<Vec<RouterInfo>, ServiceError> {
        Ok(self.routers.list(self.reward_models.names()).await?)
    }

    pub async fn delete_router(&self, name: String) -> Result<(), ServiceError> {
        self.routers.delete(name.clone()).await?;
        tracing::info!(router = %name, "router deleted");
        Ok(())
    }

    /// Forget what the router learned; keep its settings.
    pub async fn reset_router(&self, name: String) -> Result<RouterInfo, ServiceError> {
        let info = self.routers.reset(name, self.reward_models.names()).await?;
        tracing::info!(router = %info.name, "router reset");
        Ok(info)
    }
}

impl Service {
    /// Load and probe an encoder, log it, publish it. A spec that fails changes nothing.
    pub async fn add_encoder(&self, spec: EncoderSpec) -> Result<Arc<Encoder>, ServiceError> {
        let _admin = self.model_admin.lock().await;
        if self.encoders.contains(&spec.name) {
            return Err(ModelError::EncoderExists { name: spec.name }.into());
        }
        let encoder = Encoder::load_off_runtime(spec.clone(), ModelSource::Admin).await?;
        let ticket = self.routers.encoder_added(spec).await?;
        let encoder = self.encoders.insert(encoder)?;
        ticket.acknowledged().await?;
        tracing::info!(encoder = %encoder.name(), dim = encoder.dim(), "encoder added");
        Ok(encoder)
    }

    /// Unpublish encoder `name`; refused while routers take their contexts from it.
    pub async fn remove_encoder(&self, name: String) -> Result<(), ServiceError> {
        let _admin = self.model_admin.lock().await;
        if !self.encoders.contains(&name) {
            return Err(ModelError::UnknownEncoder { name }.into());
        }
        let ticket = match self.routers.encoder_removed(name.clone()).await? {
            Ok(ticket) => ticket,
            Err(routers) => return Err(ModelError::EncoderInUse { name, routers }.into()),
        };
        drop(self.encoders.remove(&name)?);
        ticket.acknowledged().await?;
        tracing::info!(encoder = %name, "encoder removed");
        Ok(())
    }

    pub fn list_encoders(&self) -> Vec<Arc<Encoder>> {
        self.encoders.list()
    }
}

impl Service {
    /// Replicas: load or unload the models that other replicas published or unpublished
    /// through Admin since the last call (a model that fails to load here is reported and
    /// left out; Scores on this replica do not see it).
    pub async fn follow_catalog(&self) -> Result<(), ServiceError> {
        let _admin = self.model_admin.lock().await;
        for event in self.routers.catch_up_catalog().await? {
            let done = match event {
                StateEvent::RewardModelAdded { spec } => self.load_published(*spec).await,
                StateEvent::RewardModelAddedV1 { spec } => {
                    self.load_published((*spec).into()).await
                }
                StateEvent::RewardModelRemoved { name } if self.reward_models.contains(&name) => {
                    self.unpublish_reward_model(&name)
                }
                StateEvent::EncoderAdded { spec } if !self.encoders.contains(&spec.name) => {
                    Encoder::load_off_runtime(spec, ModelSource::Admin)
                        .await
                        .and_then(|encoder| self.encoders.insert(encoder).map(drop))
                        .map_err(ServiceError::from)
                }
                StateEvent::EncoderRemoved { name } if self.encoders.contains(&name) => self
                    .encoders
                    .remove(&name)
                    .map(drop)
                    .map_err(ServiceError::from),
                _ => Ok(()),
            };
            match done {
                Ok(()) => tracing::info!("a model change made on another replica is applied here"),
                Err(error) => {
                    tracing::error!(%error, "a model change made on another replica cannot be applied here")
                }
            }
        }
        Ok(())
    }

    /// Load and publish an RM another replica published (unless it is here already).
    async fn load_published(&self, spec: RewardModelSpec) -> Result<(), ServiceError> {
        if self.reward_models.contains(&spec.name) {
            return Ok(());
        }
        let model = self
            .reward_models
            .load_off_runtime(spec, ModelSource::Admin)
            .await?;
        telemetry::record_reward_model_loaded(model.gauges());
        self.reward_models.insert(model)?;
        Ok(())
    }
}
