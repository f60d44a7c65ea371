//! Applying feedback to a router: turning labels into agreement rewards against each
//! decision's kept scores, the checks before it is logged (ids known, rewards in range),
//! answers per idempotency key, normalizing each signal, crediting each answered
//! decision's arms and batching the LinUCB updates (one rank-r update per arm).
//! Cost: O(d²·r) per arm for its r decisions; labels O(n²) per decision of n responses;
//! the rest O(decisions).

use std::collections::HashSet;

use crate::bandit::labels::pairwise_agreement;
use crate::routers::decisions::events::{
    AnsweredDecision, DecisionFeedback, FeedbackOutcome, FeedbackSignal, FeedbackSignals,
    IdempotencyKey,
};
use crate::routers::decisions::pending::Choice;
use crate::routers::error::RouterError;
use crate::routers::instance::policy::Updates;
use crate::routers::instance::router::Router;

impl Router {
    /// The answer already given under idempotency key `key` (`None`: not answered yet);
    /// `IdempotencyKeyReused` when it answered another request.
    pub fn replayed_answer(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<crate::routers::decisions::events::FeedbackCounts>, RouterError> {
        match self.book.key(&key.key) {
            Some((fingerprint, _)) if fingerprint != key.fingerprint => {
                Err(RouterError::IdempotencyKeyReused {
                    router: self.name.clone(),
                    key: key.key.clone(),
                })
            }
            answered => Ok(answered.map(|(_, counts)| counts)),
        }
    }

    /// Turn a per-decision Feedback's labels into signals: each labelled pending decision's
    /// agreement with its labels ([`FeedbackSignal::Agreement`], or `Uninformative` when no
    /// two labels differ). Ids that are not pending keep a placeholder: the checks refuse
    /// unknown ones and answered ones count as duplicates. Refuses labels whose count
    /// differs from the decision's responses, and decisions recorded without scores. Labels
    /// that bring their own scores are judged against those (any decision, any subset).
    pub fn resolve_labels(
        &self,
        items: Vec<(String, DecisionFeedback)>,
        now_unix_ms: i64,
    ) -> Result<Vec<(String, FeedbackSignal)>, RouterError> {
        items
            .into_iter()
            .map(|(decision_id, item)| {
                // Labels, or the preferred response's index.
                let labelled = match item {
                    DecisionFeedback::Signal(signal) => return Ok((decision_id, signal)),
                    DecisionFeedback::Labels(labels) => Ok(labels),
                    DecisionFeedback::Preferred(index) => Err(index),
                    DecisionFeedback::ScoredLabels { labels, scores } => {
                        return Ok((decision_id, agreement(&scores, &labels)));
                    }
                };
                let Some(decision) = self.book.live(&decision_id, now_unix_ms, self.ttl_ms())
                else {
                    return Ok((decision_id, FeedbackSignal::Uninformative));
                };
                if decision.scores.is_empty() {
                    return Err(RouterError::ScoresNotKept {
                        router: self.name.clone(),
                        decision_id,
                    });
                }
                let labels = match labelled {
                    Ok(labels) => labels,
                    Err(index) => {
                        let responses = decision.scores.len();
                        if index as usize >= responses {
                            return Err(RouterError::PreferredIndex {
                                router: self.name.clone(),
                                decision_id,
                                index,
                                responses,
                            });
                        }
                        (0..responses)
                            .map(|i| if i == index as usize { 1.0 } else { 0.0 })
                            .collect()
                    }
                };
                if decision.scores.len() != labels.len() {
                    return Err(RouterError::LabelCount {
                        router: self.name.clone(),
                        expected: decision.scores.len(),
                        got: labels.len(),
                        decision_id,
                    });
                }
                Ok((decision_id, agreement(&decision.scores, &labels)))
            })
            .collect()
    }

    /// Check a Feedback before it is logged: every id must be pending (and not expired at
    /// `now_unix_ms`) or already answered; a normalized reward must be in [0, 1].
    pub fn check_feedback(
        &self,
        signals: &FeedbackSignals,
        now_unix_ms: i64,
    ) -> Result<(), RouterError> {
        let unknown = self
            .book
            .unknown(&signals.decision_ids(), now_unix_ms, self.ttl_ms());
        if !unknown.is_empty() {
            return Err(RouterError::UnknownDecisions {
                router: self.name.clone(),
                decision_ids: unknown,
            });
        }
        if self.settings.reward_is_normalized {
            for signal in signals.signals() {
                if let FeedbackSignal::Reward(reward) = signal
                    && !(0.0..=1.0).contains(&reward)
                {
                    return Err(RouterError::RewardOutOfRange {
                        router: self.name.clone(),
                        reward,
                    });
                }
            }
        }
        Ok(())
    }

    pub(in crate::routers) fn apply_feedback_event(
        &mut self,
        now_unix_ms: i64,
        serving: &[String],
        signals: FeedbackSignals,
        key: Option<IdempotencyKey>,
    ) -> Result<FeedbackOutcome, RouterError> {
        self.book.expire(now_unix_ms, self.ttl_ms());
        if let Some(key) = &key
            && let Some(counts) = self.replayed_answer(key)?
        {
            return Ok(FeedbackOutcome {
                replayed: Some(counts),
                ..FeedbackOutcome::default()
            });
        }
        self.check_feedback(&signals, now_unix_ms)?;
        let outcome = self.apply_feedback(&signals, serving, now_unix_ms);
        if let Some(key) = key {
            let capacity = self.settings.max_pending_decisions;
            self.book
                .remember_key(key.key, key.fingerprint, outcome.counts(), capacity);
        }
        Ok(outcome)
    }

    /// Apply checked feedback: a shared signal enters the normalization once, per-decision
    /// signals each; decisions of one arm are one batched update.
    pub(in crate::routers) fn apply_feedback(
        &mut self,
        signals: &FeedbackSignals,
        serving: &[String],
        now_unix_ms: i64,
    ) -> FeedbackOutcome {
        let entries: Vec<(&str, FeedbackSignal)> = match signals {
            FeedbackSignals::Shared {
                decision_ids,
                signal,
            } => decision_ids
                .iter()
                .map(|id| (id.as_str(), *signal))
                .collect(),
            FeedbackSignals::PerDecision(signals) => {
                signals.iter().map(|(id, s)| (id.as_str(), *s)).collect()
            }
        };
        let mut outcome = FeedbackOutcome::default();
        let mut answered = Vec::new();
        let mut seen = HashSet::new();
        for (decision_id, signal) in entries {
            if !seen.insert(decision_id) {
                outcome.duplicate += 1;
                continue;
            }
            match self.book.take(decision_id) {
                Some(decision) => answered.push((decision_id.to_string(), decision, signal)),
                None => outcome.duplicate += 1,
            }
        }
        if answered.is_empty() {
            return outcome;
        }
        let shared = match signals {
            FeedbackSignals::Shared { signal, .. } => Some(self.normalize(*signal)),
            FeedbackSignals::PerDecision(_) => None,
        };
        let available = self.available(serving);
        let capacity = self.settings.max_pending_decisions;

        let mut updates = Updates::default();
        for (decision_id, decision, signal) in answered {
            let members = decision.choice.arms();
            if signal == FeedbackSignal::Uninformative {
                // Answered, judged by nothing: no arm learns from it.
                outcome.not_applied.push(AnsweredDecision {
                    decision_id: decision_id.clone(),
                    reward_models: members
                        .iter()
                        .map(|&a| self.arms[a].reward_model.clone())
                        .collect(),
                    reward: f64::NAN,
                    category: decision.category.clone(),
                });
                self.book.remember_answered(decision_id, capacity);
                continue;
            }
            let reward = shared.unwrap_or_else(|| self.normalize(signal));
            let answered = AnsweredDecision {
                decision_id: decision_id.clone(),
                reward_models: members
                    .iter()
                    .map(|&a| self.arms[a].reward_model.clone())
                    .collect(),
                reward,
                category: decision.category.clone(),
            };
            let serving_members: Vec<usize> = members
                .iter()
                .copied()
                .filter(|a| available.contains(a))
                .collect();
            if serving_members.is_empty() {
                outcome.not_applied.push(answered);
                self.book.remember_answered(decision_id, capacity);
                continue;
            }
            for &arm in &serving_members {
                let statistics = &mut self.arms[arm].statistics;
                statistics.feedback_count += 1;
                statistics.reward_sum += reward;
                if let Some(category) = &decision.category {
                    let key = (category.clone(), self.arms[arm].reward_model.clone());
                    let counts = self.categories.entry(key).or_default();
                    counts.feedback_count += 1;
                    counts.reward_sum += reward;
                }
            }
            if let Choice::Arm(arm) = decision.choice {
                updates.credit(
                    &self.settings,
                    &mut self.arms,
                    arm,
                    decision.context,
                    (decision.probability, decision.arm_count),
                    reward,
                );
            }
            outcome.lags_ms.push(now_unix_ms - decision.created_unix_ms);
            for &arm in &serving_members {
                let statistics = &self.arms[arm].statistics;
                let mean = (statistics.reward_model.clone(), statistics.mean_reward());
                match outcome
                    .arm_mean_rewards
                    .iter_mut()
                    .find(|(name, _)| *name == mean.0)
                {
                    Some(entry) => *entry = mean,
                    None => outcome.arm_mean_rewards.push(mean),
                }
            }
            outcome.applied.push(answered);
            self.book.remember_answered(decision_id, capacity);
        }
        updates.apply(&self.settings, &mut self.arms);
        outcome
    }

    /// The normalized reward of one signal (observed by the normalizer unless the router
    /// takes rewards as already normalized; an agreement is on that scale already and stays
    /// out of the loss history).
    pub(in crate::routers) fn normalize(&mut self, signal: FeedbackSignal) -> f64 {
        match signal {
            FeedbackSignal::Reward(reward) if self.settings.reward_is_normalized => reward,
            FeedbackSignal::Reward(reward) => self.normalizer.observe(reward),
            FeedbackSignal::Loss(loss) => self.normalizer.observe(-loss),
            FeedbackSignal::Agreement(agreement) => agreement,
            // Skipped before normalizing; neutral if it ever got here.
            FeedbackSignal::Uninformative => 0.5,
        }
    }
}

/// The reward of scores judged against labels: their pairwise agreement, or
/// `Uninformative` when no two labels differ.
fn agreement(scores: &[f32], labels: &[f64]) -> FeedbackSignal {
    match pairwise_agreement(scores, labels) {
        Some(agreement) => FeedbackSignal::Agreement(agreement),
        None => FeedbackSignal::Uninformative,
    }
}
