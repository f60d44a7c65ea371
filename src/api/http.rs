//! HTTP/JSON next to gRPC, on its own listener (`server.http_listen`, `--http-listen`; off
//! unless set): the same Service, limits, load shedding and deadlines as the gRPC API.
//!
//! - `POST /v1/routers/{router}/score`: a `ScoreRequest` in proto3 JSON (its `router` may be
//!   left out; the path names it) -> `ScoreResponse`.
//! - `POST /v1/routers/{router}/feedback`: a `FeedbackRequest` -> `FeedbackResponse`.
//! - `POST /v1/routers/{router}/get_reward`: OpenRLHF's remote reward model protocol
//!   (`--remote_rm_url`): `{"query": [prompt + response], "prompts": [...], "labels": [...]}`
//!   -> `{"rewards": [...], "scores": [...], "extra_logs": {...}}`. Each response is its
//!   query less its prompt; the prompt is the query's group, so the samples of one prompt
//!   share one decision; the router must take its contexts from an encoder.
//!
//! The JSON mapping of the messages is generated from the protos (pbjson), not written by
//! hand. With replicas (PostgreSQL), a request for a router another replica owns goes to
//! it over gRPC ([`super::forward`]) and its answer comes back in JSON.
//! Errors answer the gRPC status's HTTP equivalent (400, 404, 409, 413, 415, 429, 503,
//! 504, 500) with `{"error": {"code", "message", "field"}}`, the field and limit named as
//! in gRPC. A client deadline comes in `x-request-timeout-ms`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic_types::StatusExt;

use super::convert::feedback::{feedback_call, feedback_response};
use super::convert::score::{score_call, score_response};
use super::convert::{RequestError, invalid};
use super::forward::{Peers, owner_elsewhere};
use super::pb;
use super::pb::reward_router_client::RewardRouterClient;
use crate::service::{RequestKind, Service};

/// What every HTTP handler serves with.
#[derive(Clone)]
struct Serving {
    service: Arc<Service>,
    /// The other replicas, for routers they own.
    peers: Arc<Peers>,
}

/// The HTTP routes, serving `service` (and forwarding to `peers`), accepting bodies up to
/// `max_body_bytes`.
pub fn routes(service: Arc<Service>, peers: Arc<Peers>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/routers/{router}/score", post(score))
        .route("/v1/routers/{router}/feedback", post(feedback))
        .route("/v1/routers/{router}/get_reward", post(get_reward))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(Serving { service, peers })
}

impl Serving {
    /// The replica that owns `router`, when another one does.
    async fn owner(&self, router: &str) -> Result<Option<String>, tonic::Status> {
        owner_elsewhere(&self.service, router, &tonic::metadata::MetadataMap::new()).await
    }

    /// `request` for `router`: to the router's owner over gRPC with `remote` (with what is
    /// left of `deadline`) when another replica owns it, else here with `local`.
    async fn here_or_there<T, R>(
        &self,
        rpc: &'static str,
        router: &str,
        request: T,
        deadline: Option<Instant>,
        remote: impl AsyncFnOnce(
            RewardRouterClient<tonic::transport::Channel>,
            tonic::Request<T>,
        ) -> Result<tonic::Response<R>, tonic::Status>,
        local: impl AsyncFnOnce(T) -> Result<R, tonic::Status>,
    ) -> Result<R, tonic::Status> {
        // As on gRPC: a request for a router owned elsewhere is forwarded without taking a
        // request slot here (the owner admits it); one served here takes a slot first.
        let Some(owner) = self.owner(router).await? else {
            let _slot = self.service.admit(RequestKind::RewardRouter)?;
            return local(request).await;
        };
        let mut request = tonic::Request::new(request);
        if let Some(deadline) = deadline {
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        let max = self.peers.max_message_bytes;
        self.peers
            .forward(rpc, &owner, request, |channel, request| {
                let client = RewardRouterClient::new(channel)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max);
                remote(client, request)
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// A Score, here or on the router's owner.
    async fn score(
        &self,
        request: pb::ScoreRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::ScoreResponse, tonic::Status> {
        let router = request.router.clone();
        self.here_or_there(
            "Score",
            &router,
            request,
            deadline,
            async |mut client, request| client.score(request).await,
            async |request| {
                let call = score_call(request, self.service.limits())?;
                Ok(score_response(self.service.score(call, deadline).await?))
            },
        )
        .await
    }

    /// A Feedback, here or on the router's owner.
    async fn feedback(
        &self,
        request: pb::FeedbackRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::FeedbackResponse, tonic::Status> {
        let router = request.router.clone();
        self.here_or_there(
            "Feedback",
            &router,
            request,
            deadline,
            async |mut client, request| client.feedback(request).await,
            async |request| {
                let call = feedback_call(request, self.service.limits())?;
                Ok(feedback_response(self.service.feedback(call).await?))
            },
        )
        .await
    }
}

/// `x-request-timeout-ms`: the client's deadline.
fn deadline(headers: &HeaderMap, received: Instant) -> Option<Instant> {
    let millis: u64 = headers
        .get("x-request-timeout-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    received.checked_add(Duration::from_millis(millis))
}

/// The body as `T` from JSON, or the error response (boxed: a response is large).
fn json_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Box<Response>> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !json {
        return Err(Box::new(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "INVALID_ARGUMENT",
            "content-type: send application/json".into(),
            Some("content-type".into()),
        )));
    }
    let body = body.map_err(|rejection| {
        error_response(
            rejection.status(),
            "RESOURCE_EXHAUSTED",
            format!("body: {}", rejection.body_text()),
            Some("body".into()),
        )
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| Box::new(status_response(invalid("body", e.to_string()).into())))
}

/// `{"error": {...}}` with `status`.
fn error_response(
    status: StatusCode,
    code: &str,
    message: String,
    field: Option<String>,
) -> Response {
    #[derive(Serialize)]
    struct Error {
        code: String,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    }
    #[derive(Serialize)]
    struct Body {
        error: Error,
    }
    let body = Body {
        error: Error {
            code: code.to_string(),
            message,
            field,
        },
    };
    (status, axum::Json(body)).into_response()
}

/// A gRPC status as its HTTP equivalent, the BadRequest field named.
fn status_response(status: tonic::Status) -> Response {
    let http = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Ok | Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let field = status
        .get_details_bad_request()
        .and_then(|details| details.field_violations.first().map(|v| v.field.clone()));
    let code = format!("{:?}", status.code());
    error_response(http, &screaming(&code), status.message().to_string(), field)
}

/// `InvalidArgument` -> `INVALID_ARGUMENT` (the gRPC code names).
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn answer<T: Serialize>(
    method: &'static str,
    started: Instant,
    result: Result<T, tonic::Status>,
) -> Response {
    match super::observe(method, started, result) {
        Ok(reply) => axum::Json(reply.into_inner()).into_response(),
        Err(status) => status_response(status),
    }
}

/// A request that names its router (which the path names too).
trait Routed: for<'de> Deserialize<'de> {
    fn router_mut(&mut self) -> &mut String;
}

impl Routed for pb::ScoreRequest {
    fn router_mut(&mut self) -> &mut String {
        &mut self.router
    }
}

impl Routed for pb::FeedbackRequest {
    fn router_mut(&mut self) -> &mut String {
        &mut self.router
    }
}

/// The body as a request for the path's router: a `router` in the body must equal it.
fn routed_request<T: Routed>(
    router: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Box<Response>> {
    let mut request: T = json_body(headers, body)?;
    let named = request.router_mut();
    if named.is_empty() {
        *named = router.to_string();
    }
    if named != router {
        let status: tonic::Status = invalid(
            "router",
            format!("is {named:?} in the body and {router:?} in the path"),
        )
        .into();
        return Err(Box::new(status_response(status)));
    }
    Ok(request)
}

async fn score(
    State(serving): State<Serving>,
    Path(router): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let request: pb::ScoreRequest = match routed_request(&router, &headers, body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let result = serving.score(request, deadline(&headers, started)).await;
    answer("http:Score", started, result)
}

async fn feedback(
    State(serving): State<Serving>,
    Path(router): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let request: pb::FeedbackRequest = match routed_request(&router, &headers, body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let result = serving.feedback(request, deadline(&headers, started)).await;
    answer("http:Feedback", started, result)
}

/// OpenRLHF's remote reward model request.
#[derive(Deserialize)]
struct RewardRequest {
    query: Vec<String>,
    #[serde(default)]
    prompts: Vec<String>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "OpenRLHF sends them; reward models here do not read labels"
    )]
    labels: Vec<serde_json::Value>,
}

/// OpenRLHF's remote reward model reply.
#[derive(Serialize)]
struct RewardReply {
    rewards: Vec<f32>,
    scores: Vec<f32>,
    extra_logs: HashMap<&'static str, Vec<f32>>,
}

/// The ScoreRequest for an OpenRLHF request: one query per sample, its group the prompt.
fn reward_score_request(
    router: String,
    request: RewardRequest,
) -> Result<pb::ScoreRequest, RequestError> {
    if request.query.is_empty() {
        return Err(invalid("query", "is empty; send at least one sample"));
    }
    if request.prompts.len() != request.query.len() {
        return Err(invalid(
            "prompts",
            format!(
                "has {} items for {} queries; send the prompt of every query",
                request.prompts.len(),
                request.query.len()
            ),
        ));
    }
    let queries = request
        .query
        .into_iter()
        .zip(request.prompts)
        .enumerate()
        .map(|(index, (query, prompt))| {
            let response = match query.strip_prefix(prompt.as_str()) {
                Some(response) => response.to_string(),
                None => query,
            };
            pb::Query {
                id: index.to_string(),
                context: Vec::new(),
                group: prompt.clone(),
                prompt,
                responses: vec![response],
                category: String::new(),
            }
        })
        .collect();
    Ok(pb::ScoreRequest {
        router,
        queries,
        mode: 0,
        explain: false,
    })
}

async fn get_reward(
    State(serving): State<Serving>,
    Path(router): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let request: RewardRequest = match json_body(&headers, body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let result = async {
        let score = reward_score_request(router, request)?;
        let names = serving.service.reward_models().names();
        let results = serving
            .score(score, deadline(&headers, started))
            .await?
            .results;
        let rewards: Vec<f32> = results
            .iter()
            .map(|r| r.scores.first().copied().unwrap_or(f32::NAN))
            .collect();
        let arm = |name: &str| {
            names
                .iter()
                .position(|s| s == name)
                .map_or(-1.0, |i| i as f32)
        };
        let extra_logs = HashMap::from([(
            "laser_reward_model_index",
            results.iter().map(|r| arm(&r.reward_model)).collect(),
        )]);
        Ok::<_, tonic::Status>(RewardReply {
            scores: rewards.clone(),
            rewards,
            extra_logs,
        })
    }
    .await;
    answer("http:GetReward", started, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_get_their_names() {
        assert_eq!(screaming("InvalidArgument"), "INVALID_ARGUMENT");
        assert_eq!(screaming("NotFound"), "NOT_FOUND");
    }

    #[test]
    fn openrlhf_samples_become_grouped_queries_without_their_prompt() {
        let request = RewardRequest {
            query: vec!["Q: 2+2? A: 4".into(), "other text".into()],
            prompts: vec!["Q: 2+2?".into(), "P".into()],
            labels: Vec::new(),
        };
        let score = reward_score_request("r".into(), request).unwrap();
        assert_eq!(score.queries[0].responses, vec![" A: 4".to_string()]);
        assert_eq!(score.queries[0].group, "Q: 2+2?");
        assert_eq!(score.queries[1].responses, vec!["other text".to_string()]);
        let mismatched = RewardRequest {
            query: vec!["a".into()],
            prompts: Vec::new(),
            labels: Vec::new(),
        };
        assert!(
            reward_score_request("r".into(), mismatched)
                .unwrap_err()
                .to_string()
                .starts_with("prompts")
        );
    }
}
