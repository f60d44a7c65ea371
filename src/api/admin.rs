//! `laser.v1.Admin`: list reward models; create, inspect, list, reset and delete routers.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::convert::{router_settings, router_settings_to_pb};
use super::pb;
use super::status::store_status;
use crate::app::AppState;
use crate::models::RewardModel;
use crate::models::reward_model::PROVIDER_CPU;
use crate::routers::Router;

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
        provider: PROVIDER_CPU.to_string(),
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
    async fn list_reward_models(
        &self,
        _request: Request<pb::ListRewardModelsRequest>,
    ) -> Result<Response<pb::ListRewardModelsResponse>, Status> {
        let started = Instant::now();
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
