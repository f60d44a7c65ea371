//! Score: select arms (routers' front, blocking pool: O(K·d²) per query; queries of a group
//! that has a decision reuse it) -> score every query with its RM, or every RM for the
//! ensemble policy (reward-model workers, concurrently) -> check the deadline -> combine
//! ensemble scores -> record the new decisions with the scores they answer with (label
//! feedback is judged against them) and wait until they are durable -> rank, reply.
//! Nothing is recorded when scoring fails or the deadline passes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::{Service, ServiceError, record_evictions, unix_ms};
use crate::bandit::ensemble;
use crate::models::{ModelError, RewardModel};
use crate::routers::{
    Combination, FirstUse, FoundRouter, RouterError, RouterRef, RouterSettingsPatch,
    SelectionInput, SelectionMode,
};
use crate::telemetry::metric;

/// `ScoredQuery.reward_model` of a score ensemble decision.
pub const ENSEMBLE_LABEL: &str = "ensemble";
/// `ScoredQuery.reward_model` of an agreement ensemble decision.
pub const AGREEMENT_ENSEMBLE_LABEL: &str = "agreement_ensemble";

/// One query of a Score call.
#[derive(Debug)]
pub struct QueryInput {
    pub id: String,
    /// Empty when the router takes contexts from its encoder (every query of a call has
    /// one, or none does).
    pub context: Vec<f32>,
    pub prompt: String,
    pub responses: Vec<String>,
    /// Queries of one group share one decision across Score requests.
    pub group: Option<String>,
    /// The query's category (a decision counts under its first query's).
    pub category: Option<String>,
}

/// A Score call, valid on its face (the api layer checked every limit).
#[derive(Debug)]
pub struct ScoreCall {
    pub router: String,
    pub queries: Vec<QueryInput>,
    pub mode: Option<SelectionMode>,
    pub explain: bool,
}

/// One arm's LinUCB estimate for a query (`explain`).
#[derive(Clone, Debug)]
pub struct ArmScore {
    pub reward_model: String,
    pub mean: f64,
    pub bonus: f64,
    pub ucb: f64,
}

/// The result for one query.
#[derive(Debug)]
pub struct ScoredQuery {
    pub id: String,
    pub decision_id: String,
    /// The RM that scored, or [`ENSEMBLE_LABEL`] / [`AGREEMENT_ENSEMBLE_LABEL`].
    pub reward_model: String,
    pub scores: Vec<f32>,
    /// Response indices, best first.
    pub ranking: Vec<u32>,
    pub arms: Vec<ArmScore>,
}

impl Service {
    /// Run a Score call; `deadline` is the client's.
    pub async fn score(
        &self,
        call: ScoreCall,
        deadline: Option<Instant>,
    ) -> Result<Vec<ScoredQuery>, ServiceError> {
        let mut stages = Stages::start();
        // Routers choose among the RMs that are up (a remote RM's engine may be down).
        let serving = self.reward_models.available_names();
        let client_contexts = call.queries.iter().all(|q| !q.context.is_empty());
        // A request with contexts finds its router in the selection's own trip to the
        // blocking pool; one without first finds the router's encoder. Either way the
        // router is looked up by name once.
        let (target, encoder) = match client_contexts {
            true => (RouterRef::Name(call.router.clone()), None),
            false => {
                let found = self.router_with_encoder(&call.router, &serving).await?;
                let encoder = found.encoder.clone();
                (RouterRef::Found(found), encoder)
            }
        };
        stages.done("prepare");
        let mut contexts = Vec::with_capacity(call.queries.len());
        let mut groups = Vec::with_capacity(call.queries.len());
        let mut queries = Vec::with_capacity(call.queries.len());
        let mut categories = Vec::with_capacity(call.queries.len());
        for query in call.queries {
            contexts.push(query.context);
            groups.push(query.group);
            categories.push(query.category);
            queries.push((query.id, query.prompt, query.responses));
        }
        if let Some(encoder) = encoder {
            if let Some(query) = queries.iter().position(|(_, prompt, _)| prompt.is_empty()) {
                return Err(ServiceError::EmptyPrompt {
                    router: call.router,
                    encoder,
                    query,
                });
            }
            let prompts = queries
                .iter()
                .map(|(_, prompt, _)| prompt.clone())
                .collect();
            contexts = self
                .encoders
                .get(&encoder)?
                .embed(prompts, deadline)
                .await?;
            stages.done("embed");
        }
        let input = SelectionInput {
            contexts,
            groups,
            categories: categories.clone(),
            mode: call.mode,
            explain: call.explain,
            client_contexts,
        };
        let mut selected = self
            .routers
            .select(target, input, serving, unix_ms())
            .await
            .map_err(|error| self.explain_unavailable(error))?;
        stages.done("select");
        let decisions = &selected.selection.decisions;

        // Score every query with its decision's RM(s), all at once.
        let mut query_decision = vec![0usize; queries.len()];
        for (decision_index, decision) in decisions.iter().enumerate() {
            for &query in &decision.queries {
                query_decision[query] = decision_index;
            }
        }
        // One job per query and session: RMs that are heads of one session (the demo's,
        // a multi-objective RM's) share one forward pass, each reading its head.
        let mut jobs = JoinSet::new();
        let mut members: Vec<Vec<(Arc<RewardModel>, usize)>> = Vec::with_capacity(queries.len());
        for (query, (_, prompt, responses)) in queries.iter().enumerate() {
            let decision = &decisions[query_decision[query]];
            let mut sessions: Vec<usize> = Vec::new();
            let mut query_members = Vec::with_capacity(decision.reward_models.len());
            for name in &decision.reward_models {
                let reward_model = self.reward_models.get(name)?;
                let session = match sessions
                    .iter()
                    .position(|&s| s == reward_model.session_id())
                {
                    Some(session) => session,
                    None => {
                        sessions.push(reward_model.session_id());
                        let (model, prompt, responses) =
                            (reward_model.clone(), prompt.clone(), responses.clone());
                        let session = sessions.len() - 1;
                        jobs.spawn(
                            async move {
                                let rows = model.output_rows(prompt, responses, deadline).await;
                                (query, session, rows)
                            }
                            .in_current_span(),
                        );
                        session
                    }
                };
                query_members.push((reward_model, session));
            }
            members.push(query_members);
        }
        let mut rows: Vec<Vec<Vec<f32>>> =
            members.iter().map(|m| vec![Vec::new(); m.len()]).collect();
        while let Some(joined) = jobs.join_next().await {
            let (query, session, result) = joined.map_err(ServiceError::TaskFailed)?;
            rows[query][session] = result?;
        }
        let per_query_scores: Vec<Vec<Vec<f32>>> = members
            .iter()
            .zip(&rows)
            .map(|(query_members, query_rows)| {
                query_members
                    .iter()
                    .map(|(model, session)| model.scores_from(&query_rows[*session]))
                    .collect()
            })
            .collect();
        stages.done("score");
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(ServiceError::DeadlineExceeded);
        }

        let chosen: Vec<Chosen> = decisions
            .iter()
            .map(|decision| Chosen {
                decision_id: decision.decision_id.clone(),
                new: decision.is_new(),
                label: match decision.combination() {
                    Combination::Single => decision.reward_models[0].clone(),
                    Combination::ScoreMean => ENSEMBLE_LABEL.to_string(),
                    Combination::Agreement => AGREEMENT_ENSEMBLE_LABEL.to_string(),
                },
                members: decision.reward_models.clone(),
                combination: decision.combination(),
                arms: decision
                    .estimates
                    .iter()
                    .map(|(reward_model, estimate)| ArmScore {
                        reward_model: reward_model.clone(),
                        mean: estimate.mean,
                        bonus: estimate.bonus,
                        ucb: estimate.ucb,
                    })
                    .collect(),
            })
            .collect();
        // Each decision keeps the scores it answers with (its queries' responses in request
        // order), so label feedback can be judged against them.
        let scores: Vec<Vec<f32>> = per_query_scores
            .into_iter()
            .enumerate()
            .map(|(query, scores)| self.combine(&chosen[query_decision[query]], scores))
            .collect();
        // (A group's pending decision is not recorded again and keeps the scores of the
        // Score that recorded it.)
        for decision in &mut selected.selection.decisions {
            let answered = decision
                .queries
                .iter()
                .flat_map(|&query| scores[query].iter().copied())
                .collect();
            let category = decision
                .queries
                .first()
                .and_then(|&query| categories[query].clone());
            decision.set_scores(answered);
            decision.set_category(category);
        }
        // Reply only once the decisions would survive a crash.
        let recorded = self.routers.record(selected, unix_ms()).await?;
        stages.done("record");
        for decision in chosen.iter().filter(|decision| decision.new) {
            for reward_model in &decision.members {
                metrics::counter!(metric::SELECTIONS, "router" => call.router.clone(), "reward_model" => reward_model.clone())
                    .increment(1);
            }
        }
        if !recorded.categories.is_empty() {
            let members: HashMap<&str, &[String]> = chosen
                .iter()
                .map(|c| (c.decision_id.as_str(), c.members.as_slice()))
                .collect();
            for (decision_id, category) in &recorded.categories {
                if let Some(members) = members.get(decision_id.as_str()) {
                    for reward_model in members.iter() {
                        metrics::counter!(metric::CATEGORY_SELECTIONS, "router" => call.router.clone(), "category" => category.clone(), "reward_model" => reward_model.clone())
                            .increment(1);
                    }
                }
            }
        }
        metrics::gauge!(metric::PENDING_DECISIONS, "router" => call.router.clone())
            .set(recorded.pending as f64);
        record_evictions(&call.router, recorded.evictions);
        tracing::debug!(decision_ids = ?chosen.iter().map(|c| &c.decision_id).collect::<Vec<_>>(), "decisions recorded");

        Ok(queries
            .into_iter()
            .zip(scores)
            .enumerate()
            .map(|(query, ((id, _, _), scores))| {
                let decision = query_decision[query];
                let chosen = &chosen[decision];
                ScoredQuery {
                    id,
                    decision_id: chosen.decision_id.clone(),
                    reward_model: chosen.label.clone(),
                    ranking: ranking(&scores),
                    scores,
                    arms: chosen.arms.clone(),
                }
            })
            .collect())
    }

    /// The router of a request that sent no contexts, with the encoder that makes them,
    /// creating the router on first use with the server's default encoder. (A request that
    /// sent contexts goes straight to selection, which refuses them for a router with an
    /// encoder.)
    async fn router_with_encoder(
        &self,
        router: &str,
        serving: &[String],
    ) -> Result<FoundRouter, ServiceError> {
        // The default encoder may have been removed: then only existing routers serve.
        let first_use = match &self.default_encoder {
            Some(encoder) => match self.encoders.get(encoder) {
                Ok(loaded) => FirstUse::With(Box::new(RouterSettingsPatch {
                    encoder: Some(encoder.clone()),
                    context_dim: Some(loaded.dim()),
                    ..RouterSettingsPatch::default()
                })),
                Err(_) => FirstUse::Refuse,
            },
            None => FirstUse::Refuse,
        };
        let found = self
            .routers
            .find(router.to_string(), first_use, serving.to_vec())
            .await;
        match found {
            Err(RouterError::UnknownRouter { .. }) if self.routers.creates_on_first_use() => {
                Err(ServiceError::NoEncoderForNewRouter {
                    router: router.to_string(),
                })
            }
            Err(error) => Err(error.into()),
            Ok(found) if found.encoder.is_some() => Ok(found),
            Ok(found) => Err(ServiceError::ContextsMissing {
                router: router.to_string(),
                context_dim: found.context_dim,
            }),
        }
    }

    /// A selection that found no RM to use because remote RMs are down says so: UNAVAILABLE,
    /// naming them and their engines' reasons, rather than a precondition on the router.
    fn explain_unavailable(&self, error: RouterError) -> ServiceError {
        let down: Vec<Arc<RewardModel>> = match &error {
            RouterError::FixedRewardModelUnavailable { reward_model, .. } => self
                .reward_models
                .get(reward_model)
                .ok()
                .into_iter()
                .collect(),
            RouterError::NoRewardModels { .. } => self.reward_models.list(),
            _ => Vec::new(),
        };
        let down: Vec<Arc<RewardModel>> = down
            .into_iter()
            .filter(|model| !model.is_available())
            .collect();
        if down.is_empty() {
            return error.into();
        }
        ModelError::Unavailable {
            name: down
                .iter()
                .map(|model| model.name())
                .collect::<Vec<_>>()
                .join(", "),
            reason: down
                .iter()
                .map(|model| format!("{}: {}", model.name(), model.unavailable_reason()))
                .collect::<Vec<_>>()
                .join("; "),
        }
        .into()
    }

    /// One score per response: the RM's own; for a score ensemble decision the mean of
    /// each member's normalized scores; for an agreement ensemble decision the share of
    /// the members' pairwise votes each response won (rankings only, so no normalization).
    fn combine(&self, chosen: &Chosen, mut scores: Vec<Vec<f32>>) -> Vec<f32> {
        match chosen.combination {
            Combination::Single => return scores.swap_remove(0),
            Combination::Agreement => return ensemble::agreement(&scores),
            Combination::ScoreMean => {}
        }
        let normalized: Vec<Vec<f32>> = chosen
            .members
            .iter()
            .zip(&scores)
            .map(|(name, scores)| match self.reward_models.get(name) {
                Ok(model) => model.normalize(scores),
                // Removed meanwhile: fall back to per-query standardization.
                Err(_) => ensemble::standardize(scores),
            })
            .collect();
        ensemble::mean(&normalized)
    }
}

/// Times the stages of one Score into `laser_score_stage_seconds{stage}`.
struct Stages {
    last: Instant,
}

impl Stages {
    fn start() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    /// The stage that ends now took the time since the previous one ended.
    fn done(&mut self, stage: &'static str) {
        let now = Instant::now();
        metrics::histogram!(metric::SCORE_STAGE_SECONDS, "stage" => stage)
            .record((now - self.last).as_secs_f64());
        self.last = now;
    }
}

/// What one decision chose, as the reply shows it.
struct Chosen {
    decision_id: String,
    /// Made by this Score (a group's earlier decision is not counted again).
    new: bool,
    label: String,
    members: Vec<String>,
    combination: Combination,
    arms: Vec<ArmScore>,
}

/// Response indices ordered best (highest score) first; NaN scores last; ties keep
/// request order.
pub fn ranking(scores: &[f32]) -> Vec<u32> {
    let key = |i: u32| {
        let score = scores[i as usize];
        if score.is_nan() {
            f32::NEG_INFINITY
        } else {
            score
        }
    };
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_best_first_with_nan_last() {
        assert_eq!(ranking(&[0.1, f32::NAN, 0.9, 0.5]), vec![2, 3, 0, 1]);
        assert_eq!(ranking(&[1.0, 1.0]), vec![0, 1]);
    }
}
