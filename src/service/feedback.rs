//! Feedback: apply the signal(s) to the router's decisions — listed ones, a signal per
//! decision, or everything awaiting feedback before the request arrived — all or nothing
//! (routers' front, blocking pool: O(d²·r) per arm for its r decisions), wait until it is
//! durable, then record the feedback metrics. Acknowledged feedback is durable and applied
//! once; with an idempotency key a retry gets the first answer, across restarts.

use super::{Service, ServiceError, record_evictions, unix_ms};
use crate::routers::{FeedbackForm, RouterError};
use crate::telemetry::metric;

/// A Feedback call, valid on its face.
#[derive(Debug)]
pub struct FeedbackCall {
    pub router: String,
    pub form: FeedbackForm,
    /// A retry with the same key gets the first answer and applies nothing.
    pub idempotency_key: Option<String>,
}

/// What a Feedback did, counted.
#[derive(Debug, PartialEq, Eq)]
pub struct FeedbackSummary {
    pub applied: usize,
    pub duplicate: usize,
    pub not_applied: usize,
    /// The answer first given for the call's idempotency key (nothing applied now).
    pub replayed: bool,
}

impl Service {
    pub async fn feedback(&self, call: FeedbackCall) -> Result<FeedbackSummary, ServiceError> {
        let arrived_unix_ms = unix_ms();
        let serving = self.reward_models.names();
        let name = call.router.clone();
        let report = match self
            .routers
            .feedback(
                call.router,
                call.form,
                call.idempotency_key,
                serving,
                arrived_unix_ms,
            )
            .await
        {
            Ok(report) => report,
            Err(error) => {
                if let RouterError::UnknownDecisions { decision_ids, .. } = &error {
                    metrics::counter!(metric::FEEDBACK, "router" => name.clone(), "outcome" => "unknown")
                        .increment(decision_ids.len() as u64);
                }
                return Err(error.into());
            }
        };
        let outcome = report.outcome;
        if let Some(counts) = outcome.replayed {
            metrics::counter!(metric::FEEDBACK, "router" => name.clone(), "outcome" => "replayed")
                .increment(1);
            return Ok(FeedbackSummary {
                applied: counts.applied as usize,
                duplicate: counts.duplicate as usize,
                not_applied: counts.not_applied as usize,
                replayed: true,
            });
        }
        metrics::gauge!(metric::PENDING_DECISIONS, "router" => name.clone())
            .set(report.pending as f64);
        record_evictions(&name, report.evictions);
        for (outcome_label, count) in [
            ("applied", outcome.applied.len()),
            ("duplicate", outcome.duplicate),
            ("arm_removed", outcome.not_applied.len()),
        ] {
            metrics::counter!(metric::FEEDBACK, "router" => name.clone(), "outcome" => outcome_label)
                .increment(count as u64);
        }
        for decision in &outcome.applied {
            for reward_model in &decision.reward_models {
                metrics::histogram!(metric::REWARD, "router" => name.clone(), "reward_model" => reward_model.clone())
                    .record(decision.reward);
                if let Some(category) = &decision.category {
                    let labels = [
                        ("router", name.clone()),
                        ("category", category.clone()),
                        ("reward_model", reward_model.clone()),
                    ];
                    metrics::counter!(metric::CATEGORY_FEEDBACK, &labels).increment(1);
                    metrics::gauge!(metric::CATEGORY_REWARD_SUM, &labels)
                        .increment(decision.reward);
                }
            }
        }
        for (reward_model, mean) in &outcome.arm_mean_rewards {
            metrics::gauge!(metric::ARM_MEAN_REWARD, "router" => name.clone(), "reward_model" => reward_model.clone())
                .set(*mean);
        }
        for lag_ms in &outcome.lags_ms {
            metrics::histogram!(metric::FEEDBACK_LAG_SECONDS, "router" => name.clone())
                .record(*lag_ms as f64 / 1000.0);
        }
        tracing::debug!(applied = ?outcome.applied, not_applied = ?outcome.not_applied, duplicate = outcome.duplicate, "feedback applied");
        Ok(FeedbackSummary {
            applied: outcome.applied.len(),
            duplicate: outcome.duplicate,
            not_applied: outcome.not_applied.len(),
            replayed: false,
        })
    }
}
