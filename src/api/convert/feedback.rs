//! FeedbackRequest -> [`FeedbackCall`] (one of the three forms, ids, signals and key
//! checked, each refusal naming the field) and the summary -> FeedbackResponse.

use super::{RequestError, at_most, invalid};
use crate::api::pb;
use crate::routers::{DecisionFeedback, FeedbackForm, FeedbackSignal};
use crate::service::Limits;
use crate::service::{FeedbackCall, FeedbackSummary};

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Most labels for one decision (judging them costs O(n²)).
pub const MAX_LABELS_PER_DECISION: usize = 1024;

/// A Feedback request checked against `limits`: exactly one of its three forms
/// (decision_ids + signal, signals, all_pending + signal).
pub fn feedback_call(
    request: pb::FeedbackRequest,
    limits: &Limits,
) -> Result<FeedbackCall, RequestError> {
    if request.router.is_empty() {
        return Err(invalid("router", "is empty"));
    }
    let idempotency_key = idempotency_key(request.idempotency_key)?;
    let signal = request.signal.map(|signal| match signal {
        pb::feedback_request::Signal::Loss(loss) => ("loss", loss, FeedbackSignal::Loss(loss)),
        pb::feedback_request::Signal::Reward(reward) => {
            ("reward", reward, FeedbackSignal::Reward(reward))
        }
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
        let items = request
            .signals
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                if item.decision_id.is_empty() {
                    return Err(invalid(format!("signals[{index}].decision_id"), "is empty"));
                }
                let feedback = match item.signal {
                    None => {
                        return Err(invalid(
                            format!("signals[{index}]"),
                            "set loss, reward or labels",
                        ));
                    }
                    Some(pb::decision_signal::Signal::Loss(loss)) => {
                        finite(&format!("signals[{index}].loss"), loss)?;
                        DecisionFeedback::Signal(FeedbackSignal::Loss(loss))
                    }
                    Some(pb::decision_signal::Signal::Reward(reward)) => {
                        finite(&format!("signals[{index}].reward"), reward)?;
                        DecisionFeedback::Signal(FeedbackSignal::Reward(reward))
                    }
                    Some(pb::decision_signal::Signal::Labels(labels)) => {
                        response_labels(&format!("signals[{index}].labels"), labels)?
                    }
                };
                Ok((item.decision_id, feedback))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let all_signals = items
            .iter()
            .map(|(id, feedback)| match feedback {
                DecisionFeedback::Signal(signal) => Some((id.clone(), *signal)),
                DecisionFeedback::Labels(_)
                | DecisionFeedback::Preferred(_)
                | DecisionFeedback::ScoredLabels { .. } => None,
            })
            .collect::<Option<Vec<_>>>();
        match all_signals {
            // Without labels: the form (and idempotency fingerprint) it always had.
            Some(signals) => FeedbackForm::PerDecision(signals),
            None => FeedbackForm::PerDecisionLabelled(items),
        }
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
        let Some((field, value, signal)) = signal else {
            return Err(invalid("signal", "set loss or reward"));
        };
        finite(field, value)?;
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

/// One decision's labels: finite values (at most [`MAX_LABELS_PER_DECISION`]), with or
/// without the scores they label (as many, finite), or a preferred index alone.
fn response_labels(
    field: &str,
    labels: pb::ResponseLabels,
) -> Result<DecisionFeedback, RequestError> {
    match labels.preferred {
        Some(_) if !labels.values.is_empty() => Err(invalid(
            field,
            "sets both values and preferred; send one of them",
        )),
        Some(_) if !labels.scores.is_empty() => Err(invalid(
            format!("{field}.scores"),
            "come with values, not with preferred",
        )),
        Some(index) => Ok(DecisionFeedback::Preferred(index)),
        None if labels.values.is_empty() => Err(invalid(
            field,
            "is empty; send one value per response or the preferred index",
        )),
        None => {
            at_most(
                format!("{field}.values"),
                labels.values.len(),
                "MAX_LABELS_PER_DECISION",
                MAX_LABELS_PER_DECISION,
            )?;
            for (position, value) in labels.values.iter().enumerate() {
                finite(&format!("{field}.values[{position}]"), *value)?;
            }
            if labels.scores.is_empty() {
                return Ok(DecisionFeedback::Labels(labels.values));
            }
            if labels.scores.len() != labels.values.len() {
                return Err(invalid(
                    format!("{field}.scores"),
                    format!(
                        "has {} scores for {} values; send one score per value",
                        labels.scores.len(),
                        labels.values.len()
                    ),
                ));
            }
            for (position, score) in labels.scores.iter().enumerate() {
                finite(&format!("{field}.scores[{position}]"), f64::from(*score))?;
            }
            Ok(DecisionFeedback::ScoredLabels {
                labels: labels.values,
                scores: labels.scores,
            })
        }
    }
}

/// A request's `idempotency_key`: `None` when empty, refused beyond
/// [`MAX_IDEMPOTENCY_KEY_BYTES`].
pub(super) fn idempotency_key(key: String) -> Result<Option<String>, RequestError> {
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(invalid(
            "idempotency_key",
            format!(
                "is {} bytes; at most {MAX_IDEMPOTENCY_KEY_BYTES}",
                key.len()
            ),
        ));
    }
    Ok((!key.is_empty()).then_some(key))
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
