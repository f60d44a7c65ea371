//! Admin operations: reward models added (loaded and probed on a blocking thread before
//! anything changes, then logged, published, acknowledged once durable) and removed
//! (logged, unpublished; requests holding the model finish), and routers created,
//! inspected, listed, reset and deleted through the routers' front.

use std::sync::Arc;

use super::{Service, ServiceError};
use crate::models::{ModelError, ModelSource, RewardModel, RewardModelSpec};
use crate::routers::{RouterInfo, RouterSettingsPatch};
use crate::telemetry::{self, metric};

impl Service {
    /// Load and probe `spec`, log it, publish it. A spec that fails changes nothing.
    pub async fn add_reward_model(
        &self,
        spec: RewardModelSpec,
    ) -> Result<Arc<RewardModel>, ServiceError> {
        let _admin = self.reward_model_admin.lock().await;
        if self.reward_models.contains(&spec.name) {
            return Err(ModelError::RewardModelExists { name: spec.name }.into());
        }
        let max = self.limits.max_reward_models;
        if self.reward_models.names().len() >= max {
            return Err(ModelError::TooManyRewardModels { max }.into());
        }
        let model = RewardModel::load_off_runtime(spec.clone(), ModelSource::Admin).await?;
        let ticket = self.routers.reward_model_added(spec).await?;
        telemetry::record_reward_model_loaded(&model);
        let model = self.reward_models.insert(model)?;
        ticket.acknowledged().await?;
        tracing::info!(reward_model = %model.name(), "reward model added");
        Ok(model)
    }

    /// Unpublish the RM `name`: new requests no longer see it; requests holding it finish.
    pub async fn remove_reward_model(&self, name: String) -> Result<(), ServiceError> {
        let _admin = self.reward_model_admin.lock().await;
        if !self.reward_models.contains(&name) {
            return Err(ModelError::UnknownRewardModel { name }.into());
        }
        let ticket = self.routers.reward_model_removed(name.clone()).await?;
        // Its worker stops when the last request holding it drops it.
        let removed = self.reward_models.remove(&name)?;
        metrics::gauge!(metric::RM_LOADED, "reward_model" => name.clone(), "provider" => removed.provider().to_string()).set(0.0);
        drop(removed);
        ticket.acknowledged().await?;
        tracing::info!(reward_model = %name, "reward model removed");
        Ok(())
    }

    pub fn list_reward_models(&self) -> Vec<Arc<RewardModel>> {
        self.reward_models.list()
    }

    /// Create the router `name`: `patch` over the config's defaults, an arm per serving RM.
    pub async fn create_router(
        &self,
        name: String,
        patch: RouterSettingsPatch,
    ) -> Result<RouterInfo, ServiceError> {
        let serving = self.reward_models.names();
        let info = self.routers.create(name, patch, serving).await?;
        tracing::info!(router = %info.name, "router created");
        Ok(info)
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
