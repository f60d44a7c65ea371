//! The only place that sees prost types: gRPC handlers, request validation and
//! conversion, and the one mapping from domain errors to `tonic::Status`.
//!
//! Handlers are validate -> convert -> call -> `?`:
//! - [`convert`]: `pb` requests into domain calls that are valid by construction.
//! - [`status`]: every error enum of the crate mapped to a gRPC status, exhaustively.
//! - [`reward_router`]: `laser.v1.RewardRouter` (Score, Feedback).
//! - [`admin`]: `laser.v1.Admin` (reward models and routers), behind [`auth`].
//! - [`auth`]: the admin bearer token.

pub mod admin;
pub mod auth;
pub mod convert;
pub mod reward_router;
pub mod status;

/// Generated protobuf and gRPC code for `proto/laser/v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("laser.v1");

    /// Encoded file descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/laser_descriptor.bin"));
}

use std::time::Instant;

use crate::telemetry::metric;

/// Count and time one handled RPC.
pub(crate) fn observe<T>(
    method: &'static str,
    started: Instant,
    result: &Result<T, tonic::Status>,
) {
    let code = match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics::counter!(metric::GRPC_REQUESTS, "method" => method, "code" => format!("{code:?}"))
        .increment(1);
    metrics::histogram!(metric::GRPC_SECONDS, "method" => method)
        .record(started.elapsed().as_secs_f64());
}
