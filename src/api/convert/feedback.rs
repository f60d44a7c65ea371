//! FeedbackRequest -> [`FeedbackCall`] (one of the three forms, ids, signals and key
//! checked, each refusal naming the field) and the summary -> FeedbackResponse.

use super::{RequestError, at_most, invalid};
use crate::api::pb;
use crate::config::Limits;
use crate::routers::{FeedbackForm, FeedbackSignal};
use crate::service::{FeedbackCall, FeedbackSummary};

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// A Feedback request checked against `limits`: exactly one of its three forms
/// (decision_ids + signal, signals, all_pending + signal).
pub fn feedback_call(
    request: pb::FeedbackRequest,
    limits: &Limits,
) -> Result<FeedbackCall, RequestError> {
    if request.router.is_empty() {
        return Err(invalid("router", "is empty"));
    }
    if request.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(invalid(
            "idempotency_key",
            format!(
                "is {} bytes; at most {MAX_IDEMPOTENCY_KEY_BYTES}",
                request.idempotency_key.len()
            ),
        ));
    }
    let idempotency_key = (!request.idempotency_key.is_empty()).then_some(request.idempotency_key);
    let signal = request.signal.map(|signal| match signal {
        pb::feedback_request::Signal::Loss(loss) => ("loss", FeedbackSignal::Loss(loss)),
        pb::feedback_request::Signal::Reward(reward) => ("reward", FeedbackSignal::Reward(reward)),
    });
    let form = if !request.signals.is_empty() {
        if !request.decision_ids.is_empty() || signal.is_some() || request.all_pending {
            return Err(invalid(
                "signals",
                "carries a signal per decision; leave decision_ids, loss/reward and all_pending unset",
            ));
        }
        at_most(
            "signals",
            request.signals.len(),
            "limits.max_decision_ids_per_feedback",
            limits.max_decision_ids_per_feedback,
        )?;
        let signals = request
            .signals
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                if item.decision_id.is_empty() {
                    return Err(invalid(format!("signals[{index}].decision_id"), "is empty"));
                }
                let signal = match item.signal {
                    None => {
                        return Err(invalid(format!("signals[{index}]"), "set loss or reward"));
                    }
                    Some(pb::decision_signal::Signal::Loss(loss)) => {
                        finite(&format!("signals[{index}].loss"), loss)?;
                        FeedbackSignal::Loss(loss)
                    }
                    Some(pb::decision_signal::Signal::Reward(reward)) => {
                        finite(&format!("signals[{index}].reward"), reward)?;
                        FeedbackSignal::Reward(reward)
                    }
                };
                Ok((item.decision_id, signal))
            })
            .collect::<Result<Vec<_>, _>>()?;
        FeedbackForm::PerDecision(signals)
    } else {
        if request.all_pending && !request.decision_ids.is_empty() {
            return Err(invalid(
                "decision_ids",
                "must be empty with all_pending (the signal applies to every decision awaiting feedback)",
            ));
        }
        if !request.all_pending {
            if request.decision_ids.is_empty() {
                return Err(invalid(
                    "decision_ids",
                    "is empty; name decisions, send signals, or set all_pending",
                ));
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
        }
        let Some((field, signal)) = signal else {
            return Err(invalid("signal", "set loss or reward"));
        };
        match signal {
            FeedbackSignal::Loss(value) | FeedbackSignal::Reward(value) => finite(field, value)?,
        }
        if request.all_pending {
            FeedbackForm::AllPending { signal }
        } else {
            FeedbackForm::Decisions {
                decision_ids: request.decision_ids,
                signal,
            }
        }
    };
    Ok(FeedbackCall {
        router: request.router,
        form,
        idempotency_key,
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
        replayed: summary.replayed,
    }
}
