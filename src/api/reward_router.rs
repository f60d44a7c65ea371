//! `laser.v1.RewardRouter`: Score and Feedback.
//!
//! Score: validate -> find or create the router -> select arms (blocking pool: O(K·d²) per
//! query) -> score every query with its RM, or every RM for the ensemble policy (worker
//! threads, concurrently) -> record the decisions -> reply. Nothing is recorded when
//! scoring fails.
//! Feedback: validate -> apply to the router all-or-nothing (blocking pool) -> reply.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert::{FeedbackCall, ScoreCall, ranking};
use super::pb;
use super::status::{join_error, store_status};
use crate::app::AppState;
use crate::bandit::ensemble;
use crate::routers::{Evictions, RouterError};
use crate::telemetry::metric;

pub struct RewardRouterService {
    state: Arc<AppState>,
}

impl RewardRouterService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn score(
        &self,
        call: ScoreCall,
        deadline: Option<Instant>,
    ) -> Result<pb::ScoreResponse, Status> {
        let state = &self.state;
        let serving = state.reward_models.names();
        let (router, created) = state.routers.get_or_create(&call.router, &serving)?;
        if let Some(created) = created {
            created.wait().await.map_err(store_status)?;
        }
        let (contexts, queries): (Vec<Vec<f32>>, Vec<_>) = call
            .queries
            .into_iter()
            .map(|q| (q.context, (q.id, q.prompt, q.responses)))
            .unzip();
        let (mode, explain) = (call.mode, call.explain);
        let selector = router.clone();
        let selection = tokio::task::spawn_blocking(move || {
            selector
                .lock()
                .expect("router lock poisoned")
                .select(&contexts, mode, explain, &serving)
        })
        .await
        .map_err(join_error)??;

        // Score every query with its decision's RM(s), all at once.
        let mut query_decision = vec![0usize; queries.len()];
        for (decision_index, decision) in selection.decisions.iter().enumerate() {
            for &query in &decision.queries {
                query_decision[query] = decision_index;
            }
        }
        let mut jobs = JoinSet::new();
        let mut per_query_scores: Vec<Vec<Vec<f32>>> = Vec::with_capacity(queries.len());
        for (query, (_, prompt, responses)) in queries.iter().enumerate() {
            let decision = &selection.decisions[query_decision[query]];
            per_query_scores.push(vec![Vec::new(); decision.reward_models.len()]);
            for (member, name) in decision.reward_models.iter().enumerate() {
                let reward_model = state.reward_models.get(name)?;
                let (prompt, responses) = (prompt.clone(), responses.clone());
                jobs.spawn(
                    async move {
                        (
                            query,
                            member,
                            reward_model.score(prompt, responses, deadline).await,
                        )
                    }
                    .in_current_span(),
                );
            }
        }
        while let Some(joined) = jobs.join_next().await {
            let (query, member, result) = joined.map_err(join_error)?;
            per_query_scores[query][member] = result?;
        }

        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(Status::deadline_exceeded(
                "the request's deadline passed while scoring; no decision was recorded",
            ));
        }
        let now_unix_ms = unix_ms();
        let chosen: Vec<(String, Vec<pb::ArmEstimate>, bool)> = selection
            .decisions
            .iter()
            .map(|decision| {
                let arms = decision
                    .estimates
                    .iter()
                    .map(|(reward_model, estimate)| pb::ArmEstimate {
                        reward_model: reward_model.clone(),
                        mean: estimate.mean,
                        bonus: estimate.bonus,
                        ucb: estimate.ucb,
                    })
                    .collect();
                let label = if decision.is_ensemble() {
                    ENSEMBLE_LABEL.to_string()
                } else {
                    decision.reward_models[0].clone()
                };
                (label, arms, decision.is_ensemble())
            })
            .collect();
        let members: Vec<Vec<String>> = selection
            .decisions
            .iter()
            .map(|d| d.reward_models.clone())
            .collect();
        let decision_ids: Vec<String> = (0..selection.decisions.len())
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect();
        let recorder = self.state.clone();
        let ids = decision_ids.clone();
        let (durable, pending, evictions) = tokio::task::spawn_blocking(move || {
            recorder
                .routers
                .record(&router, selection, ids, now_unix_ms)
        })
        .await
        .map_err(join_error)??;
        // Reply only once the decisions would survive a crash.
        durable.wait().await.map_err(store_status)?;
        for names in &members {
            for reward_model in names {
                metrics::counter!(metric::SELECTIONS, "router" => call.router.clone(), "reward_model" => reward_model.clone())
                    .increment(1);
            }
        }
        metrics::gauge!(metric::PENDING_DECISIONS, "router" => call.router.clone())
            .set(pending as f64);
        record_evictions(&call.router, evictions);
        tracing::debug!(decision_ids = ?decision_ids, "decisions recorded");

        let results = queries
            .into_iter()
            .zip(per_query_scores)
            .enumerate()
            .map(|(query, ((id, _, _), mut scores))| {
                let decision = query_decision[query];
                let (reward_model, arms, ensemble) = &chosen[decision];
                let scores = if *ensemble {
                    let normalized: Vec<Vec<f32>> = members[decision]
                        .iter()
                        .zip(&scores)
                        .map(|(name, scores)| match state.reward_models.get(name) {
                            Ok(model) => model.normalize(scores),
                            // Removed meanwhile: fall back to per-query standardization.
                            Err(_) => ensemble::standardize(scores),
                        })
                        .collect();
                    ensemble::mean(&normalized)
                } else {
                    scores.swap_remove(0)
                };
                pb::QueryResult {
                    id,
                    decision_id: decision_ids[decision].clone(),
                    reward_model: reward_model.clone(),
                    ranking: ranking(&scores),
                    scores,
                    arms: arms.clone(),
                }
            })
            .collect();
        Ok(pb::ScoreResponse { results })
    }

    async fn feedback(&self, call: FeedbackCall) -> Result<pb::FeedbackResponse, Status> {
        let serving = self.state.reward_models.names();
        let name = call.router.clone();
        let state = self.state.clone();
        let result = tokio::task::spawn_blocking(move || {
            state.routers.feedback(
                &call.router,
                call.decision_ids,
                call.signal,
                serving,
                unix_ms(),
            )
        })
        .await
        .map_err(join_error)?;
        let applied = match result {
            Ok(applied) => applied,
            Err(error) => {
                if let RouterError::UnknownDecisions { decision_ids, .. } = &error {
                    metrics::counter!(metric::FEEDBACK, "router" => name.clone(), "outcome" => "unknown")
                        .increment(decision_ids.len() as u64);
                }
                return Err(error.into());
            }
        };
        // Acknowledge only durable feedback.
        applied.durable.wait().await.map_err(store_status)?;
        let outcome = applied.outcome;
        metrics::gauge!(metric::PENDING_DECISIONS, "router" => name.clone())
            .set(applied.pending as f64);
        record_evictions(&name, applied.evictions);
        for (outcome_label, count) in [
            ("applied", outcome.applied.len()),
            ("duplicate", outcome.duplicate),
            ("arm_removed", outcome.not_applied.len()),
        ] {
            metrics::counter!(metric::FEEDBACK, "router" => name.clone(), "outcome" => outcome_label)
                .increment(count as u64);
        }
        if let Some(reward) = outcome.reward {
            for (_, label) in &outcome.applied {
                for reward_model in label.split('+') {
                    metrics::histogram!(metric::REWARD, "router" => name.clone(), "reward_model" => reward_model.to_string())
                        .record(reward);
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
        Ok(pb::FeedbackResponse {
            applied: outcome.applied.len() as u32,
            duplicate: outcome.duplicate as u32,
            not_applied: outcome.not_applied.len() as u32,
        })
    }
}

/// `QueryResult.reward_model` of an ensemble decision.
pub const ENSEMBLE_LABEL: &str = "ensemble";

/// The client's deadline from the `grpc-timeout` header (e.g. `500m`, `2S`).
fn request_deadline<T>(request: &Request<T>, received: Instant) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    received.checked_add(timeout)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn record_evictions(router: &str, evictions: Evictions) {
    for (reason, total) in [("capacity", evictions.capacity), ("ttl", evictions.ttl)] {
        metrics::counter!(metric::DECISIONS_EVICTED, "router" => router.to_string(), "reason" => reason)
            .absolute(total);
    }
}

#[tonic::async_trait]
impl pb::reward_router_server::RewardRouter for RewardRouterService {
    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        let started = Instant::now();
        let deadline = request_deadline(&request, started);
        let request = request.into_inner();
        let span =
            tracing::info_span!("score", router = %request.router, queries = request.queries.len());
        let result = async {
            let _slot = self.state.reward_router_slots.try_acquire()?;
            let call = ScoreCall::from_request(request, &self.state.limits)?;
            self.score(call, deadline).await
        }
        .instrument(span.clone())
        .await;
        if let Err(status) = &result {
            span.in_scope(|| tracing::info!(code = ?status.code(), message = status.message(), "score refused"));
        }
        super::observe("Score", started, &result);
        result.map(Response::new)
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let span = tracing::info_span!("feedback", router = %request.router, decisions = request.decision_ids.len());
        let result = async {
            let _slot = self.state.reward_router_slots.try_acquire()?;
            let call = FeedbackCall::from_request(request, &self.state.limits)?;
            self.feedback(call).await
        }
        .instrument(span.clone())
        .await;
        if let Err(status) = &result {
            span.in_scope(|| tracing::info!(code = ?status.code(), message = status.message(), "feedback refused"));
        }
        super::observe("Feedback", started, &result);
        result.map(Response::new)
    }
}
