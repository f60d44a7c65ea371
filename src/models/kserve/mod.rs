//! Reward models served by an inference engine (Triton, KServe, MLServer, OpenVINO Model
//! Server) over the Open Inference Protocol's gRPC service, `inference.GRPCInferenceService`
//! (`proto/inference/grpc_service.proto`, client only).
//!
//! - [`spec`]: the `backend.kserve_v2` settings of an RM (endpoints, what is sent, limits).
//! - [`engine`]: the endpoints of one model (round-robin among ready ones, TLS, an auth
//!   header, a timeout per call) and the protocol's calls.
//! - [`tensors`]: what goes in (a BYTES tensor of texts, or token tensors tokenized here) and
//!   how the score output comes back (typed or raw contents, any numeric datatype).
//! - [`protocol`]: [`Kserve`], the protocol as the remote model ([`crate::models::remote`])
//!   runs it: readiness is `ModelReady` (at add time and every `health_interval_ms`), the
//!   layout comes from `ModelMetadata`, a request is one ModelInfer of up to the model's max
//!   batch. Queueing, coalescing, deadlines and health are the remote model's.

mod engine;
mod protocol;
pub mod spec;
mod tensors;

/// The protocol's generated client and messages.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("inference");
}

pub use protocol::Kserve;
