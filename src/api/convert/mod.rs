//! Validation and conversion between `pb` messages and domain calls, one file per RPC
//! family. Everything a request can get wrong without looking at server state is caught
//! here, before any state is touched; checks that need state (context dimension, unknown
//! ids) live with that state.
//!
//! - [`score`]: ScoreRequest -> [`ScoreCall`](crate::service::ScoreCall), results -> ScoreResponse.
//! - [`feedback`]: FeedbackRequest -> [`FeedbackCall`](crate::service::FeedbackCall) and back.
//! - [`admin`]: router settings (a [`RouterSettingsPatch`](crate::routers::RouterSettingsPatch)),
//!   reward-model specs, and the info messages of routers and reward models.

pub mod admin;
pub mod feedback;
pub mod prior;
pub mod score;

use super::pb;
use crate::routers::SelectionMode;

/// A request the server refuses on its face. Messages name the field and the limit.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: {value} exceeds {limit} = {max}")]
    OverLimit {
        field: String,
        limit: &'static str,
        value: usize,
        max: usize,
    },
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) fn at_most(
    field: impl Into<String>,
    value: usize,
    limit: &'static str,
    max: usize,
) -> Result<(), RequestError> {
    if value > max {
        return Err(RequestError::OverLimit {
            field: field.into(),
            limit,
            value,
            max,
        });
    }
    Ok(())
}

/// A proto enum field's value; INVALID_ARGUMENT naming `field` for a number `E` lacks.
pub(crate) fn known_enum<E: TryFrom<i32>>(
    value: i32,
    field: &str,
    enum_name: &str,
) -> Result<E, RequestError> {
    E::try_from(value).map_err(|_| invalid(field, format!("unknown {enum_name} value {value}")))
}

pub(crate) fn selection_mode(
    value: i32,
    field: &str,
) -> Result<Option<SelectionMode>, RequestError> {
    Ok(match known_enum(value, field, "SelectionMode")? {
        pb::SelectionMode::Unspecified => None,
        pb::SelectionMode::PerQuery => Some(SelectionMode::PerQuery),
        pb::SelectionMode::PerBatch => Some(SelectionMode::PerBatch),
    })
}

#[cfg(test)]
mod tests;
