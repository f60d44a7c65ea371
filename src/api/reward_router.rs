//! `laser.v1.RewardRouter`: Score and Feedback. Each handler is admit -> convert -> call
//! the [`Service`] -> convert; the service runs the request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert::feedback::{feedback_call, feedback_response};
use super::convert::score::{score_call, score_response};
use super::forward::{Peers, forward_to_owner};
use super::pb;
use crate::service::{RequestKind, Service};

pub struct RewardRouterService {
    service: Arc<Service>,
    peers: Arc<Peers>,
}

impl RewardRouterService {
    pub fn new(service: Arc<Service>, peers: Arc<Peers>) -> Self {
        Self { service, peers }
    }
}

use pb::reward_router_client::RewardRouterClient;

/// How much earlier than the client's deadline the service gives up: tonic's own timer on
/// the same `grpc-timeout` started when the request arrived (before the handler ran) and
/// answers CANCELLED when it fires; giving up first answers DEADLINE_EXCEEDED, as it should.
const DEADLINE_MARGIN: Duration = Duration::from_millis(25);

/// The client's deadline from the `grpc-timeout` header (e.g. `500m`, `2S`), less a margin
/// ([`DEADLINE_MARGIN`], at most a tenth of the timeout).
pub(super) fn request_deadline<T>(request: &Request<T>, received: Instant) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    received.checked_add(timeout - DEADLINE_MARGIN.min(timeout / 10))
}

#[tonic::async_trait]
impl pb::reward_router_server::RewardRouter for RewardRouterService {
    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        forward_to_owner!(
            self,
            "Score",
            request,
            &request.get_ref().router,
            RewardRouterClient::score
        );
        let started = Instant::now();
        let deadline = request_deadline(&request, started);
        let request = request.into_inner();
        let span =
            tracing::info_span!("score", router = %request.router, queries = request.queries.len());
        let result = async {
            let _slot = self.service.admit(RequestKind::RewardRouter)?;
            let call = score_call(request, self.service.limits())?;
            Ok::<_, Status>(score_response(self.service.score(call, deadline).await?))
        }
        .instrument(span.clone())
        .await;
        super::answer("Score", started, &span, result)
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        forward_to_owner!(
            self,
            "Feedback",
            request,
            &request.get_ref().router,
            RewardRouterClient::feedback
        );
        let started = Instant::now();
        let request = request.into_inner();
        let span = tracing::info_span!("feedback", router = %request.router, decisions = request.decision_ids.len());
        let result = async {
            let _slot = self.service.admit(RequestKind::RewardRouter)?;
            let call = feedback_call(request, self.service.limits())?;
            Ok::<_, Status>(feedback_response(self.service.feedback(call).await?))
        }
        .instrument(span.clone())
        .await;
        super::answer("Feedback", started, &span, result)
    }
}
