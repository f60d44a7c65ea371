//! The only place that sees prost types: gRPC handlers, request validation and
//! conversion, and the one mapping from domain errors to `tonic::Status`.
//!
//! Handlers are admit -> convert -> call the [`Service`](crate::service::Service) -> convert:
//! - [`convert`]: `pb` requests into domain calls that are valid by construction, and
//!   domain results back into `pb` replies (one file per RPC family).
//! - [`status`]: every error enum of the crate mapped to a gRPC status, exhaustively.
//! - [`reward_router`]: `laser.v1.RewardRouter` (Score, Feedback).
//! - [`admin`]: `laser.v1.Admin` (reward models and routers), behind [`auth`].
//! - [`http`]: HTTP/JSON forms of Score and Feedback, and OpenRLHF's `get_reward`.
//! - [`auth`]: the admin bearer token.
//! - [`forward`]: requests for a router another replica owns, forwarded to it.
//! - [`deadline`]: a request whose deadline passes ends as DEADLINE_EXCEEDED.

pub mod admin;
pub mod auth;
pub mod convert;
pub mod deadline;
pub mod forward;
pub mod http;
pub mod reward_router;
pub mod status;

/// Generated protobuf and gRPC code for `proto/laser/v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("laser.v1");
    // The proto3 JSON mapping of every message (serde), for the HTTP/JSON API.
    include!(concat!(env!("OUT_DIR"), "/laser.v1.serde.rs"));

    /// Encoded file descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/laser_descriptor.bin"));
}

use std::time::Instant;

use crate::telemetry::metric;

/// Count and time one handled RPC, and wrap its reply.
pub(crate) fn observe<T, E: Into<tonic::Status>>(
    method: &'static str,
    started: Instant,
    result: Result<T, E>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let result = result.map_err(Into::into);
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics::counter!(metric::GRPC_REQUESTS, "method" => method, "code" => format!("{code:?}"))
        .increment(1);
    metrics::histogram!(metric::GRPC_SECONDS, "method" => method)
        .record(started.elapsed().as_secs_f64());
    result.map(tonic::Response::new)
}

/// [`observe`], logging a refusal in the request's span (RewardRouter's calls).
pub(crate) fn answer<T>(
    method: &'static str,
    started: Instant,
    span: &tracing::Span,
    result: Result<T, tonic::Status>,
) -> Result<tonic::Response<T>, tonic::Status> {
    if let Err(status) = &result {
        span.in_scope(|| tracing::info!(method, code = ?status.code(), message = status.message(), "request refused"));
    }
    observe(method, started, result)
}
