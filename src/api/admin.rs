//! `laser.v1.Admin`: list reward models; create, inspect, list, reset and delete routers.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::convert::reward_model_spec;
use super::convert::{router_settings, router_settings_to_pb};
use super::pb;
use super::status::{join_error, store_status};
use crate::app::AppState;
use crate::models::RewardModel;
use crate::models::{ModelError, ModelSource};
use crate::routers::Router;
use crate::telemetry::metric;

pub struct AdminService {
    state: Arc<AppState>,
}

impl AdminService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

fn reward_model_info(model: &RewardModel) -> pb::RewardModelInfo {
    let spec = model.spec();
    pb::RewardModelInfo {
        name: spec.name.clone(),
        model_path: spec.model.display().to_string(),
        tokenizer_path: spec.tokenizer.display().to_string(),
        input_format: spec.input_format.as_str().to_string(),
        max_length: spec.max_length as u32,
        output_name: model.output_name().to_string(),
        output_index: spec.output_index as u32,
        input_names: model.input_names().to_vec(),
        provider: model.provider().to_string(),
        source: model.source().as_str().to_string(),
        queue_depth: model.queue_depth() as u32,
        queue_capacity: spec.queue_capacity as u32,
        template: spec.template.clone().unwrap_or_default(),
    }
}

/// Settings and per-arm statistics of a router; `serving` tells which arms are removed.
pub fn router_info(router: &Router, serving: &[String]) -> pb::RouterInfo {
    let evictions = router.evictions();
    pb::RouterInfo {
        name: router.name().to_string(),
        settings: Some(router_settings_to_pb(router.settings())),
        arms: router
            .arm_statistics(serving)
            .into_iter()
            .map(|arm| pb::ArmStatistics {
                mean_reward: arm.mean_reward(),
                reward_model: arm.reward_model,
                selections: arm.selections,
                feedback_count: arm.feedback_count,
                last_selected_unix_ms: arm.last_selected_unix_ms,
                theta_norm: arm.theta_norm,
                mean_at_context_mean: arm.mean_at_context_mean,
                bonus_at_context_mean: arm.bonus_at_context_mean,
                probability: arm.probability,
                removed: arm.removed,
            })
            .collect(),
        pending_decisions: router.pending_decisions() as u64,
        rewards_seen: router.rewards_seen(),
        evicted_by_capacity: evictions.capacity,
        evicted_by_ttl: evictions.ttl,
        arm_state_bytes: router.arm_state_bytes() as u64,
    }
}

fn answer<T>(
    method: &'static str,
    started: Instant,
    result: Result<T, Status>,
) -> Result<Response<T>, Status> {
    super::observe(method, started, &result);
    result.map(Response::new)
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn add_reward_model(
        &self,
        request: Request<pb::AddRewardModelRequest>,
    ) -> Result<Response<pb::AddRewardModelResponse>, Status> {
        let started = Instant::now();
        let _slot = self.state.admin_slots.try_acquire()?;
        let result = async {
            let spec = reward_model_spec(request.into_inner().spec)?;
            let state = &self.state;
            let _admin = state.reward_model_admin.lock().await;
            if state.reward_models.contains(&spec.name) {
                return Err(ModelError::RewardModelExists { name: spec.name }.into());
            }
            let max = state.limits.max_reward_models;
            if state.reward_models.names().len() >= max {
                return Err(ModelError::TooManyRewardModels { max }.into());
            }
            // Load and probe before anything changes; a spec that fails changes nothing.
            let loading = spec.clone();
            let model =
                tokio::task::spawn_blocking(move || RewardModel::load(loading, ModelSource::Admin))
                    .await
                    .map_err(join_error)??;
            let info = reward_model_info(&model);
            let durable = state.routers.reward_model_added(spec)?;
            crate::telemetry::record_reward_model_loaded(&model);
            state.reward_models.insert(model)?;
            durable.wait().await.map_err(store_status)?;
            tracing::info!(reward_model = %info.name, "reward model added");
            Ok(pb::AddRewardModelResponse {
                reward_model: Some(info),
            })
        }
        .await;
        answer("AddRewardModel", started, result)
    }

    async fn remove_reward_model(
        &self,
        request: Request<pb::RemoveRewardModelRequest>,
    ) -> Result<Response<pb::RemoveRewardModelResponse>, Status> {
        let started = Instant::now();
        let _slot = self.state.admin_slots.try_acquire()?;
        let name = request.into_inner().name;
        let result = async {
            let state = &self.state;
            let _admin = state.reward_model_admin.lock().await;
            if !state.reward_models.contains(&name) {
                return Err(ModelError::UnknownRewardModel { name }.into());
            }
            let durable = state.routers.reward_model_removed(&name)?;
            // Requests holding the model finish; its worker stops when the last drops it.
            let removed = state.reward_models.remove(&name)?;
            metrics::gauge!(metric::RM_LOADED, "reward_model" => name.clone(), "provider" => removed.provider().to_string()).set(0.0);
            drop(removed);
            durable.wait().await.map_err(store_status)?;
            tracing::info!(reward_model = %name, "reward model removed");
            Ok(pb::RemoveRewardModelResponse {})
        }
        .await;
        answer("RemoveRewardModel", started, result)
    }

    async fn list_reward_models(
        &self,
        _request: Request<pb::ListRewardModelsRequest>,
    ) -> Result<Response<pb::ListRewardModelsResponse>, Status> {
        let started = Instant::now();
        let _slot = self.state.admin_slots.try_acquire()?;
        let reward_models = self
            .state
            .reward_models
            .list()
            .iter()
            .map(|model| reward_model_info(model))
            .collect();
        answer(
            "ListRewardModels",
            started,
            Ok(pb::ListRewardModelsResponse { reward_models }),
        )
    }

    async fn create_router(
        &self,
        request: Request<pb::CreateRouterRequest>,
    ) -> Result<Response<pb::CreateRouterResponse>, Status> {
        let started = Instant::now();
        let _slot = self.state.admin_slots.try_acquire()?;
        let request = request.into_inner();
        let routers = &self.state.routers;
        let serving = self.state.reward_models.names();
        let created = (|| -> Result<_, Status> {
            let settings = router_settings(request.settings, &self.state.router_defaults)?;
            let (router, durable) = routers.create(&request.name, settings, &serving)?;
            let info = router_info(&router.lock().expect("router lock poisoned"), &serving);
            Ok((info, durable))
        })();
        let result = match created {
            Ok((info, durable)) => durable.wait().await.map_err(store_status).map(|()| {
                tracing::info!(router = %request.name, "router created");
                pb::CreateRouterResponse { router: Some(info) }
            }),
            Err(status) => Err(status),
        };
        answer("CreateRouter", started, result)
    }

    async fn get_router(
        &self,
        request: Request<pb::GetRouterRequest>,
    ) -> Result<Response<pb::GetRouterResponse>, Status> {
        let started = Instant::now();
        let _slot = self.state.admin_slots.try_acquire()?;
        let serving = self.state.reward_models.names();
        let result = self
            .state
            .routers
            .get(&request.into_inner().name)
            .map(|router| pb::GetRouterResponse {
                router: Some(router_info(
                    &router.lock().expect("router lock poisoned"),
                    &serving,
                )),
            })
            .map_err(Status::from);
        answer("GetRouter", started, result)
    }

    async fn list_routers(
        &self,
        _request: Request<pb::ListRoutersRequest>,
    ) -> Result<Response<pb::ListRoutersResponse>, Status> {
        let started = Instant::now();
        let _slot = self.state.admin_slots.try_acquire()?;
        let serving = self.state.reward_models.names();
        let routers = self
            .state
            .routers
            .list()
            .iter()
            .map(|router| router_info(&router.lock().expect("router lock poisoned"), &serving))
            .collect();
        answer(
            "ListRouters",
            started,
            Ok(pb::ListRoutersResponse { routers }),
        )
    }

    async fn delete_router(
        &self,
        request: Request<pb::DeleteRouterRequest>,
    ) -> Result<Response<pb::DeleteRouterResponse>, Status> {
        let started = Instant::now();
        let _slot = self.state.admin_slots.try_acquire()?;
        let name = request.into_inner().name;
        let result = match self.state.routers.delete(&name) {
            Ok(durable) => durable.wait().await.map_err(store_status).map(|()| {
                tracing::info!(router = %name, "router deleted");
                pb::DeleteRouterResponse {}
            }),
            Err(error) => Err(error.into()),
        };
        answer("DeleteRouter", started, result)
    }

    async fn reset_router(
        &self,
        request: Request<pb::ResetRouterRequest>,
    ) -> Result<Response<pb::ResetRouterResponse>, Status> {
        let started = Instant::now();
        let _slot = self.state.admin_slots.try_acquire()?;
        let name = request.into_inner().name;
        let serving = self.state.reward_models.names();
        let result = match self.state.routers.reset(&name, &serving) {
            Ok((router, durable)) => {
                let info = router_info(&router.lock().expect("router lock poisoned"), &serving);
                durable.wait().await.map_err(store_status).map(|()| {
                    tracing::info!(router = %name, "router reset");
                    pb::ResetRouterResponse { router: Some(info) }
                })
            }
            Err(error) => Err(error.into()),
        };
        answer("ResetRouter", started, result)
    }
}
