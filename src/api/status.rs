//! Domain errors to gRPC status: one exhaustive mapping per error enum, no catch-all arm,
//! so a new error variant cannot ship without a deliberate status code. This is also
//! where a domain error gets its wire field name (`queries[3].context`).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::convert::RequestError;
use crate::models::ModelError;
use crate::routers::RouterError;
use crate::service::ServiceError;
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

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Router(error) => error.into(),
            ServiceError::Model(error) => error.into(),
            ServiceError::Overloaded { .. } => Status::resource_exhausted(error.to_string()),
            ServiceError::DeadlineExceeded => Status::deadline_exceeded(error.to_string()),
            ServiceError::TaskFailed(_) => Status::internal(error.to_string()),
            ServiceError::EmptyPrompt { query, .. } => {
                let field = format!("queries[{query}].prompt");
                field_violation(Code::InvalidArgument, &field, format!("{field}: {error}"))
            }
            ServiceError::ContextsMissing { .. } | ServiceError::NoEncoderForNewRouter { .. } => {
                let field = "queries[0].context";
                field_violation(Code::InvalidArgument, field, format!("{field}: {error}"))
            }
        }
    }
}

impl From<RouterError> for Status {
    fn from(error: RouterError) -> Self {
        let code = match &error {
            RouterError::ContextsNotTaken { .. } => {
                let field = "queries[0].context";
                return field_violation(Code::InvalidArgument, field, format!("{field}: {error}"));
            }
            RouterError::ContextDimension {
                router,
                query,
                expected,
                got,
            } => {
                let field = format!("queries[{query}].context");
                return field_violation(
                    Code::InvalidArgument,
                    &field,
                    format!("{field} has dimension {got}; router {router:?} expects {expected}"),
                );
            }
            RouterError::UnknownRouter { .. } => Code::NotFound,
            RouterError::RouterExists { .. } => Code::AlreadyExists,
            RouterError::SettingsDiffer { .. } => Code::FailedPrecondition,
            RouterError::InvalidRouterName { .. } => Code::InvalidArgument,
            RouterError::NoRewardModels { .. } => Code::FailedPrecondition,
            RouterError::FixedRewardModelUnavailable { .. } => Code::FailedPrecondition,
            RouterError::RewardOutOfRange { .. } => Code::InvalidArgument,
            RouterError::LabelCount { .. } => Code::InvalidArgument,
            RouterError::PreferredIndex { .. } => Code::InvalidArgument,
            RouterError::ScoresNotKept { .. } => Code::FailedPrecondition,
            RouterError::PriorNeedsLinearArms { .. } => Code::FailedPrecondition,
            RouterError::IdempotencyKeyReused { .. } => Code::FailedPrecondition,
            RouterError::UnknownDecisions {
                router,
                decision_ids,
            } => {
                return Status::not_found(format!(
                    "decision_ids not found in router {router:?} (unknown or expired): {decision_ids:?}"
                ));
            }
            RouterError::InvalidSettings { field, reason } => {
                let field = format!("settings.{field}");
                return field_violation(
                    Code::InvalidArgument,
                    &field,
                    format!("{field}: {reason}"),
                );
            }
            RouterError::InvalidState { .. } => Code::InvalidArgument,
            RouterError::TooManyRouters { .. } => Code::ResourceExhausted,
            RouterError::ServedElsewhere { .. } => Code::Unavailable,
            RouterError::LeaseUnconfirmed { .. } => Code::Unavailable,
            RouterError::StateWrite(store) => store_code(store),
            RouterError::NotAcknowledged(store) | RouterError::Store(store) => store_code(store),
            RouterError::Encode { .. } => Code::Internal,
            RouterError::Decode { .. } => Code::Internal,
            RouterError::Replay { .. } => Code::Internal,
            RouterError::TaskFailed(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

/// The store could not make a change durable: the change is not acknowledged.
fn store_code(error: &StoreError) -> Code {
    match error {
        StoreError::Io { .. } => Code::Unavailable,
        StoreError::Locked { .. } => Code::Unavailable,
        StoreError::Held { .. } => Code::Unavailable,
        StoreError::Fenced { .. } => Code::Unavailable,
        StoreError::Concurrent { .. } => Code::Aborted,
        StoreError::Corrupt { .. } => Code::Internal,
        StoreError::WriterStopped { .. } => Code::Unavailable,
        // Disk full or failing: retryable, and the client library retries UNAVAILABLE.
        StoreError::NotDurable { .. } => Code::Unavailable,
        StoreError::Unwritable { .. } => Code::Unavailable,
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
            ModelError::LoaderFailed { .. } => Code::Internal,
            ModelError::EngineRefused { .. } => Code::FailedPrecondition,
            ModelError::Unavailable { .. } => Code::Unavailable,
            ModelError::UnknownEncoder { .. } => Code::NotFound,
            ModelError::EncoderExists { .. } => Code::AlreadyExists,
            ModelError::EncoderInUse { .. } => Code::FailedPrecondition,
        };
        Status::new(code, error.to_string())
    }
}
