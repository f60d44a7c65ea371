//! `laser.v1.Admin`: add, remove and list reward models; create, inspect, list, reset and
//! delete routers; give a router a prior from labelled pairs. Behind [`super::auth`]; each handler is admit -> convert -> call the
//! [`Service`] -> convert.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::convert::admin::{
    encoder_info, encoder_spec, reward_model_info, reward_model_spec, router_info,
    router_settings_patch,
};
use super::convert::prior::{prior_call, prior_response};
use super::forward::{Peers, forward_to_owner};
use super::pb;
use super::pb::admin_client::AdminClient;
use super::reward_router::request_deadline;
use crate::service::{RequestKind, Service};

pub struct AdminService {
    service: Arc<Service>,
    peers: Arc<Peers>,
}

impl AdminService {
    pub fn new(service: Arc<Service>, peers: Arc<Peers>) -> Self {
        Self { service, peers }
    }

    /// Every router's info, across the replicas sharing a database (each from its owner,
    /// as GetRouter answers it).
    async fn all_routers(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Vec<pb::RouterInfo>, Status> {
        let Some(names) = self.service.shared_router_names().await? else {
            let routers = self.service.list_routers().await?;
            return Ok(routers.into_iter().map(router_info).collect());
        };
        let mut routers = Vec::new();
        for name in names {
            let request = Request::from_parts(
                metadata.clone(),
                Default::default(),
                pb::GetRouterRequest { name },
            );
            match pb::admin_server::Admin::get_router(self, request).await {
                Ok(response) => routers.extend(response.into_inner().router),
                // Deleted meanwhile.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        Ok(routers)
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn add_reward_model(
        &self,
        request: Request<pb::AddRewardModelRequest>,
    ) -> Result<Response<pb::AddRewardModelResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let spec = reward_model_spec(request.into_inner().spec)?;
            let model = self.service.add_reward_model(spec).await?;
            Ok::<_, Status>(pb::AddRewardModelResponse {
                reward_model: Some(reward_model_info(&model)),
            })
        }
        .await;
        super::observe("AddRewardModel", started, result)
    }

    async fn remove_reward_model(
        &self,
        request: Request<pb::RemoveRewardModelRequest>,
    ) -> Result<Response<pb::RemoveRewardModelResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let name = request.into_inner().name;
            self.service.remove_reward_model(name).await?;
            Ok::<_, Status>(pb::RemoveRewardModelResponse {})
        }
        .await;
        super::observe("RemoveRewardModel", started, result)
    }

    async fn list_reward_models(
        &self,
        _request: Request<pb::ListRewardModelsRequest>,
    ) -> Result<Response<pb::ListRewardModelsResponse>, Status> {
        let started = Instant::now();
        let result = (|| {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let reward_models = self
                .service
                .list_reward_models()
                .iter()
                .map(|model| reward_model_info(model))
                .collect();
            Ok::<_, Status>(pb::ListRewardModelsResponse { reward_models })
        })();
        super::observe("ListRewardModels", started, result)
    }

    async fn create_router(
        &self,
        request: Request<pb::CreateRouterRequest>,
    ) -> Result<Response<pb::CreateRouterResponse>, Status> {
        forward_to_owner!(
            self,
            "CreateRouter",
            request,
            &request.get_ref().name,
            AdminClient::create_router
        );
        let started = Instant::now();
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let request = request.into_inner();
            let patch = router_settings_patch(request.settings)?;
            let router = self.service.create_router(request.name, patch).await?;
            Ok::<_, Status>(pb::CreateRouterResponse {
                router: Some(router_info(router)),
            })
        }
        .await;
        super::observe("CreateRouter", started, result)
    }

    async fn get_router(
        &self,
        request: Request<pb::GetRouterRequest>,
    ) -> Result<Response<pb::GetRouterResponse>, Status> {
        forward_to_owner!(
            self,
            "GetRouter",
            request,
            &request.get_ref().name,
            AdminClient::get_router
        );
        let started = Instant::now();
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let router = self.service.router_info(request.into_inner().name).await?;
            Ok::<_, Status>(pb::GetRouterResponse {
                router: Some(router_info(router)),
            })
        }
        .await;
        super::observe("GetRouter", started, result)
    }

    async fn list_routers(
        &self,
        request: Request<pb::ListRoutersRequest>,
    ) -> Result<Response<pb::ListRoutersResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let routers = self.all_routers(request.metadata()).await?;
            Ok::<_, Status>(pb::ListRoutersResponse { routers })
        }
        .await;
        super::observe("ListRouters", started, result)
    }

    async fn delete_router(
        &self,
        request: Request<pb::DeleteRouterRequest>,
    ) -> Result<Response<pb::DeleteRouterResponse>, Status> {
        forward_to_owner!(
            self,
            "DeleteRouter",
            request,
            &request.get_ref().name,
            AdminClient::delete_router
        );
        let started = Instant::now();
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            self.service
                .delete_router(request.into_inner().name)
                .await?;
            Ok::<_, Status>(pb::DeleteRouterResponse {})
        }
        .await;
        super::observe("DeleteRouter", started, result)
    }

    async fn reset_router(
        &self,
        request: Request<pb::ResetRouterRequest>,
    ) -> Result<Response<pb::ResetRouterResponse>, Status> {
        forward_to_owner!(
            self,
            "ResetRouter",
            request,
            &request.get_ref().name,
            AdminClient::reset_router
        );
        let started = Instant::now();
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let router = self.service.reset_router(request.into_inner().name).await?;
            Ok::<_, Status>(pb::ResetRouterResponse {
                router: Some(router_info(router)),
            })
        }
        .await;
        super::observe("ResetRouter", started, result)
    }

    async fn add_prior(
        &self,
        request: Request<pb::AddPriorRequest>,
    ) -> Result<Response<pb::AddPriorResponse>, Status> {
        forward_to_owner!(
            self,
            "AddPrior",
            request,
            &request.get_ref().router,
            AdminClient::add_prior
        );
        let started = Instant::now();
        let deadline = request_deadline(&request, started);
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let call = prior_call(request.into_inner(), self.service.limits())?;
            Ok::<_, Status>(prior_response(
                self.service.add_prior(call, deadline).await?,
            ))
        }
        .await;
        super::observe("AddPrior", started, result)
    }

    async fn add_encoder(
        &self,
        request: Request<pb::AddEncoderRequest>,
    ) -> Result<Response<pb::AddEncoderResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let spec = encoder_spec(request.into_inner().spec)?;
            let encoder = self.service.add_encoder(spec).await?;
            Ok::<_, Status>(pb::AddEncoderResponse {
                encoder: Some(encoder_info(&encoder)),
            })
        }
        .await;
        super::observe("AddEncoder", started, result)
    }

    async fn remove_encoder(
        &self,
        request: Request<pb::RemoveEncoderRequest>,
    ) -> Result<Response<pb::RemoveEncoderResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let _slot = self.service.admit(RequestKind::Admin)?;
            self.service
                .remove_encoder(request.into_inner().name)
                .await?;
            Ok::<_, Status>(pb::RemoveEncoderResponse {})
        }
        .await;
        super::observe("RemoveEncoder", started, result)
    }

    async fn list_encoders(
        &self,
        _request: Request<pb::ListEncodersRequest>,
    ) -> Result<Response<pb::ListEncodersResponse>, Status> {
        let started = Instant::now();
        let result = (|| {
            let _slot = self.service.admit(RequestKind::Admin)?;
            let encoders = self
                .service
                .list_encoders()
                .iter()
                .map(|encoder| encoder_info(encoder))
                .collect();
            Ok::<_, Status>(pb::ListEncodersResponse { encoders })
        })();
        super::observe("ListEncoders", started, result)
    }
}
