//! `laser.v1.Admin`: list reward models; create, inspect, list and delete routers.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::convert::{router_settings, router_settings_to_pb};
use super::pb;
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

/// Settings and per-arm statistics of a router.
pub fn router_info(router: &Router) -> pb::RouterInfo {
    pb::RouterInfo {
        name: router.name().to_string(),
        settings: Some(router_settings_to_pb(router.settings())),
        arms: router
            .arm_statistics()
            .into_iter()
            .map(|arm| pb::ArmStatistics {
                mean_reward: arm.mean_reward(),
                reward_model: arm.reward_model,
                selections: arm.selections,
                feedback_count: arm.feedback_count,
                last_selected_unix_ms: arm.last_selected_unix_ms,
                theta_norm: arm.theta_norm,
            })
            .collect(),
        pending_decisions: router.pending_decisions() as u64,
        rewards_seen: router.rewards_seen() as u64,
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
        let result = (|| -> Result<pb::CreateRouterResponse, Status> {
            let settings = router_settings(request.settings, routers.defaults())?;
            let router = routers.create(&request.name, settings)?;
            let info = router_info(&router.lock().expect("router lock poisoned"));
            tracing::info!(router = %request.name, "router created");
            Ok(pb::CreateRouterResponse { router: Some(info) })
        })();
        answer("CreateRouter", started, result)
    }

    async fn get_router(
        &self,
        request: Request<pb::GetRouterRequest>,
    ) -> Result<Response<pb::GetRouterResponse>, Status> {
        let started = Instant::now();
        let result = self
            .state
            .routers
            .get(&request.into_inner().name)
            .map(|router| pb::GetRouterResponse {
                router: Some(router_info(&router.lock().expect("router lock poisoned"))),
            })
            .map_err(Status::from);
        answer("GetRouter", started, result)
    }

    async fn list_routers(
        &self,
        _request: Request<pb::ListRoutersRequest>,
    ) -> Result<Response<pb::ListRoutersResponse>, Status> {
        let started = Instant::now();
        let routers = self
            .state
            .routers
            .list()
            .iter()
            .map(|router| router_info(&router.lock().expect("router lock poisoned")))
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
        let result = self
            .state
            .routers
            .delete(&name)
            .map(|()| {
                tracing::info!(router = %name, "router deleted");
                pb::DeleteRouterResponse {}
            })
            .map_err(Status::from);
        answer("DeleteRouter", started, result)
    }
}
