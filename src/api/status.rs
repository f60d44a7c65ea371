//! Domain errors to gRPC status: one exhaustive mapping per error enum, no catch-all arm,
//! so a new error variant cannot ship without a deliberate status code.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::convert::RequestError;
use crate::models::ModelError;
use crate::routers::RouterError;
use crate::store::StoreError;

/// A status carrying a `google.rpc.BadRequest` field violation for `field`.
fn field_violation(code: Code, field: &str, message: String) -> Status {
    Status::with_error_details(
        code,
        message.clone(),
        ErrorDetails::with_bad_request_violation(field, message),
    )
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Self {
        let message = error.to_string();
        match &error {
            RequestError::Invalid { field, .. } => {
                field_violation(Code::InvalidArgument, field, message)
            }
            RequestError::OverLimit { field, .. } => {
                field_violation(Code::ResourceExhausted, field, message)
            }
        }
    }
}

impl From<RouterError> for Status {
    fn from(error: RouterError) -> Self {
        if let RouterError::ContextDimension { query, .. } = &error {
            return field_violation(
                Code::InvalidArgument,
                &format!("queries[{query}].context"),
                error.to_string(),
            );
        }
        let code = match &error {
            RouterError::UnknownRouter { .. } => Code::NotFound,
            RouterError::RouterExists { .. } => Code::AlreadyExists,
            RouterError::InvalidRouterName { .. } => Code::InvalidArgument,
            RouterError::ContextDimension { .. } => Code::InvalidArgument,
            RouterError::NoRewardModels { .. } => Code::FailedPrecondition,
            RouterError::FixedRewardModelUnavailable { .. } => Code::FailedPrecondition,
            RouterError::RewardOutOfRange { .. } => Code::InvalidArgument,
            RouterError::UnknownDecisions { .. } => Code::NotFound,
            RouterError::InvalidSettings { .. } => Code::InvalidArgument,
            RouterError::InvalidState { .. } => Code::InvalidArgument,
            RouterError::StateWrite { .. } => Code::Unavailable,
            RouterError::TooManyRouters { .. } => Code::ResourceExhausted,
        };
        Status::new(code, error.to_string())
    }
}

impl From<ModelError> for Status {
    fn from(error: ModelError) -> Self {
        let code = match &error {
            ModelError::RuntimeMissing { .. } => Code::Internal,
            ModelError::RuntimeInit { .. } => Code::Internal,
            ModelError::InvalidSpec { .. } => Code::InvalidArgument,
            ModelError::MissingFile { .. } => Code::InvalidArgument,
            ModelError::Load { .. } => Code::InvalidArgument,
            ModelError::Tokenizer { .. } => Code::InvalidArgument,
            ModelError::Inference { .. } => Code::Internal,
            ModelError::QueueFull { .. } => Code::ResourceExhausted,
            ModelError::UnknownRewardModel { .. } => Code::NotFound,
            ModelError::RewardModelExists { .. } => Code::AlreadyExists,
            ModelError::WorkerStopped { .. } => Code::Unavailable,
            ModelError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            ModelError::TooManyRewardModels { .. } => Code::ResourceExhausted,
        };
        Status::new(code, error.to_string())
    }
}

/// The store could not make a change durable: the change is not acknowledged.
pub(crate) fn store_status(error: StoreError) -> Status {
    let code = match &error {
        StoreError::Io { .. } => Code::Unavailable,
        StoreError::Locked { .. } => Code::Unavailable,
        StoreError::Corrupt { .. } => Code::Internal,
        StoreError::Decode { .. } => Code::Internal,
        StoreError::WriterStopped { .. } => Code::Unavailable,
    };
    Status::new(code, format!("not acknowledged: {error}"))
}

/// A blocking task that panicked or was cancelled.
pub(crate) fn join_error(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("internal task failed: {error}"))
}
