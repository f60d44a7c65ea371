//! Reward models served by an inference engine (Triton, KServe, MLServer, OpenVINO Model
//! Server) over the Open Inference Protocol's gRPC service, `inference.GRPCInferenceService`
//! (`proto/inference/grpc_service.proto`, client only).
//!
//! - [`spec`]: the `backend.kserve_v2` settings of an RM (endpoints, what is sent, limits).
//! - [`engine`]: the endpoints of one model (round-robin among ready ones, TLS, an auth
//!   header, a timeout per call) and the protocol's calls.
//! - [`tensors`]: what goes in (a BYTES tensor of texts, or token tensors tokenized here) and
//!   how the score output comes back (typed or raw contents, any numeric datatype).
//! - [`remote`]: [`RemoteModel`]: the queue of score jobs coalesced into ModelInfer requests
//!   (up to the model's max batch, `max_concurrency` in flight), and the model's health:
//!   `ModelReady` at add time and every `health_interval_ms`, unreachable endpoints taken
//!   out at once, `failures_before_unavailable` failed inferences in a row marking the model
//!   unavailable until a probe finds it ready again.
//!
//! Cost per score job on the caller: one channel send. Rendering and tokenizing run on a
//! blocking thread per batch, never on the async runtime; the network call is async.

mod engine;
mod remote;
pub mod spec;
mod tensors;

/// The protocol's generated client and messages.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("inference");
}

pub use remote::RemoteModel;
