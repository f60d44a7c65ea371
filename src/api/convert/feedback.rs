//! FeedbackRequest -> [`FeedbackCall`] (ids and signal checked) and the summary ->
//! FeedbackResponse.

use super::{RequestError, at_most, invalid};
use crate::api::pb;
use crate::config::Limits;
use crate::routers::FeedbackSignal;
use crate::service::{FeedbackCall, FeedbackSummary};

/// A Feedback request checked against `limits`.
pub fn feedback_call(
    request: pb::FeedbackRequest,
    limits: &Limits,
) -> Result<FeedbackCall, RequestError> {
    if request.router.is_empty() {
        return Err(invalid("router", "is empty"));
    }
    if request.decision_ids.is_empty() {
        return Err(invalid("decision_ids", "is empty"));
    }
    at_most(
        "decision_ids",
        request.decision_ids.len(),
        "limits.max_decision_ids_per_feedback",
        limits.max_decision_ids_per_feedback,
    )?;
    if let Some(position) = request.decision_ids.iter().position(|id| id.is_empty()) {
        return Err(invalid(format!("decision_ids[{position}]"), "is empty"));
    }
    let signal = match request.signal {
        None => return Err(invalid("signal", "set loss or reward")),
        Some(pb::feedback_request::Signal::Loss(loss)) => {
            finite("loss", loss)?;
            FeedbackSignal::Loss(loss)
        }
        Some(pb::feedback_request::Signal::Reward(reward)) => {
            finite("reward", reward)?;
            FeedbackSignal::Reward(reward)
        }
    };
    Ok(FeedbackCall {
        router: request.router,
        decision_ids: request.decision_ids,
        signal,
    })
}

fn finite(field: &str, value: f64) -> Result<(), RequestError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(invalid(field, format!("is {value}; must be finite")))
    }
}
/// The reply for a Feedback's summary.
pub fn feedback_response(summary: FeedbackSummary) -> pb::FeedbackResponse {
    pb::FeedbackResponse {
        applied: summary.applied as u32,
        duplicate: summary.duplicate as u32,
        not_applied: summary.not_applied as u32,
    }
}
