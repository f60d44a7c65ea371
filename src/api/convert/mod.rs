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

pub(crate) fn selection_mode(
    value: i32,
    field: &str,
) -> Result<Option<SelectionMode>, RequestError> {
    match pb::SelectionMode::try_from(value) {
        Ok(pb::SelectionMode::Unspecified) => Ok(None),
        Ok(pb::SelectionMode::PerQuery) => Ok(Some(SelectionMode::PerQuery)),
        Ok(pb::SelectionMode::PerBatch) => Ok(Some(SelectionMode::PerBatch)),
        Err(_) => Err(invalid(
            field,
            format!("unknown SelectionMode value {value}"),
        )),
    }
}

#[cfg(test)]
mod tests;
