//! One router: settings, one LinUCB arm per reward model, decisions awaiting feedback.
//!
//! Selection is two-phase so that a failed or abandoned Score records nothing:
//! [`Router::select`] picks arms (it only advances the tie-breaking RNG) and
//! [`Router::record`] stores the decisions once the scores are ready.
//! [`Router::apply_feedback`] is all-or-nothing: every decision id is checked before any arm
//! changes. Decisions that already had feedback are remembered (bounded, oldest forgotten
//! first) so a repeated id is acknowledged as a duplicate and applied once.
//!
//! Cost: select is O(K·d²) per query (K arms, d context dimension), feedback O(d²) per
//! decision; memory is one d×d matrix per arm plus O(d) per pending decision.

use std::collections::{HashMap, HashSet, VecDeque};

use nalgebra::DVector;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::RouterError;
use crate::bandit::{self, ArmEstimate, LinUcbArm, Normalization, RewardNormalizer};

/// Bandit policy of a router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    LinUcb,
}

/// One decision per query, or one for the whole request on the mean context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectionMode {
    PerQuery,
    PerBatch,
}

/// A router's settings; valid by construction through [`RouterSettings::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct RouterSettings {
    pub context_dim: usize,
    pub policy: Policy,
    pub alpha: f64,
    pub l2_lambda: f64,
    pub normalization: Normalization,
    pub default_mode: SelectionMode,
    pub seed: u64,
    /// Decisions kept awaiting feedback; the oldest is evicted beyond this.
    pub max_pending_decisions: usize,
}

impl RouterSettings {
    pub fn validate(self, max_context_dim: usize) -> Result<Self, RouterError> {
        let invalid = |field, reason: String| RouterError::InvalidSettings { field, reason };
        if self.context_dim == 0 || self.context_dim > max_context_dim {
            return Err(invalid(
                "context_dim",
                format!(
                    "{} is outside 1..={max_context_dim} (limits.max_context_dim)",
                    self.context_dim
                ),
            ));
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(invalid(
                "alpha",
                format!("{} must be finite and >= 0", self.alpha),
            ));
        }
        if !(self.l2_lambda.is_finite() && self.l2_lambda > 0.0) {
            return Err(invalid(
                "l2_lambda",
                format!("{} must be finite and > 0", self.l2_lambda),
            ));
        }
        if self.max_pending_decisions == 0 {
            return Err(invalid("max_pending_decisions", "must be > 0".to_string()));
        }
        Ok(self)
    }
}

/// Per-arm counters shown by GetRouter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmStatistics {
    pub reward_model: String,
    /// Decisions that chose this arm.
    pub selections: u64,
    /// Decisions of this arm whose feedback was applied.
    pub feedback_count: u64,
    /// Sum of applied normalized rewards.
    pub reward_sum: f64,
    pub last_selected_unix_ms: i64,
    pub theta_norm: f64,
}

impl ArmStatistics {
    pub fn mean_reward(&self) -> f64 {
        if self.feedback_count == 0 {
            0.0
        } else {
            self.reward_sum / self.feedback_count as f64
        }
    }
}

struct Arm {
    reward_model: String,
    model: LinUcbArm,
    statistics: ArmStatistics,
}

struct PendingDecision {
    arm: usize,
    context: DVector<f64>,
}

/// A picked arm for one query (or for the whole request in per-batch mode).
#[derive(Clone, Debug)]
pub struct Decision {
    pub reward_model: String,
    /// Indices of the queries this decision covers.
    pub queries: Vec<usize>,
    /// Every available arm's estimate, when asked for.
    pub estimates: Vec<(String, ArmEstimate)>,
    arm: usize,
    context: DVector<f64>,
}

/// The outcome of [`Router::select`], to be passed to [`Router::record`].
#[derive(Debug)]
pub struct Selection {
    pub decisions: Vec<Decision>,
}

/// The signal a Feedback request carries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FeedbackSignal {
    /// Training loss; reward = −loss.
    Loss(f64),
    /// Reward, higher is better.
    Reward(f64),
}

impl FeedbackSignal {
    pub fn raw_reward(self) -> f64 {
        match self {
            FeedbackSignal::Loss(loss) => -loss,
            FeedbackSignal::Reward(reward) => reward,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedbackOutcome {
    /// Decisions whose arm was updated.
    pub applied: Vec<(String, String)>,
    /// Decision ids that already had feedback.
    pub duplicate: usize,
}

pub struct Router {
    name: String,
    settings: RouterSettings,
    arms: Vec<Arm>,
    arm_index: HashMap<String, usize>,
    pending: HashMap<String, PendingDecision>,
    pending_order: VecDeque<String>,
    answered: HashSet<String>,
    answered_order: VecDeque<String>,
    normalizer: RewardNormalizer,
    rng: StdRng,
    evicted: u64,
}

impl Router {
    pub fn new(name: String, settings: RouterSettings) -> Self {
        Self {
            name,
            normalizer: RewardNormalizer::new(settings.normalization),
            rng: StdRng::seed_from_u64(settings.seed),
            settings,
            arms: Vec::new(),
            arm_index: HashMap::new(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            answered: HashSet::new(),
            answered_order: VecDeque::new(),
            evicted: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    pub fn pending_decisions(&self) -> usize {
        self.pending.len()
    }

    /// Decisions evicted (capacity) before their feedback arrived.
    pub fn evicted_decisions(&self) -> u64 {
        self.evicted
    }

    pub fn rewards_seen(&self) -> usize {
        self.normalizer.observed()
    }

    /// Statistics of every arm the router has had, in the order arms were added.
    pub fn arm_statistics(&self) -> Vec<ArmStatistics> {
        self.arms
            .iter()
            .map(|arm| ArmStatistics {
                theta_norm: arm.model.theta().norm(),
                ..arm.statistics.clone()
            })
            .collect()
    }

    /// Check every context against the router's dimension (and nothing else).
    pub fn check_contexts(&self, contexts: &[Vec<f32>]) -> Result<(), RouterError> {
        let expected = self.settings.context_dim;
        match contexts.iter().position(|c| c.len() != expected) {
            Some(query) => Err(RouterError::ContextDimension {
                router: self.name.clone(),
                query,
                expected,
                got: contexts[query].len(),
            }),
            None => Ok(()),
        }
    }

    /// Pick an arm among `reward_models` (the RMs serving now) for each context (or once
    /// for their mean in per-batch mode). Arms are created for reward models the router has
    /// not seen (`A = λI`, `b = 0`). Records nothing: pass the result to [`Router::record`].
    pub fn select(
        &mut self,
        contexts: &[Vec<f32>],
        mode: Option<SelectionMode>,
        explain: bool,
        reward_models: &[String],
    ) -> Result<Selection, RouterError> {
        self.check_contexts(contexts)?;
        for reward_model in reward_models {
            self.ensure_arm(reward_model);
        }
        let available: Vec<usize> = reward_models
            .iter()
            .map(|name| self.arm_index[name])
            .collect();
        if available.is_empty() {
            return Err(RouterError::NoRewardModels {
                router: self.name.clone(),
            });
        }
        let to_vector = |c: &Vec<f32>| DVector::from_iterator(c.len(), c.iter().map(|&v| v as f64));
        let groups: Vec<(Vec<usize>, DVector<f64>)> =
            match mode.unwrap_or(self.settings.default_mode) {
                SelectionMode::PerQuery => contexts
                    .iter()
                    .enumerate()
                    .map(|(index, c)| (vec![index], to_vector(c)))
                    .collect(),
                SelectionMode::PerBatch => {
                    let mut mean = DVector::zeros(self.settings.context_dim);
                    for c in contexts {
                        mean += to_vector(c);
                    }
                    mean /= contexts.len().max(1) as f64;
                    vec![((0..contexts.len()).collect(), mean)]
                }
            };
        let decisions = groups
            .into_iter()
            .map(|(queries, context)| {
                let estimates: Vec<ArmEstimate> = available
                    .iter()
                    .map(|&arm| self.arms[arm].model.estimate(&context, self.settings.alpha))
                    .collect();
                let chosen = bandit::select_arm(&estimates, &mut self.rng)
                    .expect("available arms are not empty");
                let arm = available[chosen];
                Decision {
                    reward_model: self.arms[arm].reward_model.clone(),
                    queries,
                    estimates: if explain {
                        available
                            .iter()
                            .zip(&estimates)
                            .map(|(&a, e)| (self.arms[a].reward_model.clone(), *e))
                            .collect()
                    } else {
                        Vec::new()
                    },
                    arm,
                    context,
                }
            })
            .collect();
        Ok(Selection { decisions })
    }

    /// Store the decisions of a completed Score: each awaits feedback under the returned
    /// decision id (same order as `selection.decisions`). The oldest pending decisions are
    /// evicted beyond `max_pending_decisions`.
    pub fn record(&mut self, selection: Selection, now_unix_ms: i64) -> Vec<String> {
        selection
            .decisions
            .into_iter()
            .map(|decision| {
                let decision_id = uuid::Uuid::new_v4().simple().to_string();
                let statistics = &mut self.arms[decision.arm].statistics;
                statistics.selections += 1;
                statistics.last_selected_unix_ms = now_unix_ms;
                self.pending.insert(
                    decision_id.clone(),
                    PendingDecision {
                        arm: decision.arm,
                        context: decision.context,
                    },
                );
                self.pending_order.push_back(decision_id.clone());
                self.evict_over_capacity();
                decision_id
            })
            .collect()
    }

    /// Apply `signal` to every decision in `decision_ids`, all or nothing: an id that is
    /// neither pending nor already answered rejects the request and changes nothing. The
    /// raw reward enters the normalization history once per request that applies anything.
    /// Returns (decision id, reward model) for each applied decision.
    pub fn apply_feedback(
        &mut self,
        decision_ids: &[String],
        signal: FeedbackSignal,
    ) -> Result<FeedbackOutcome, RouterError> {
        let unknown: Vec<String> = decision_ids
            .iter()
            .filter(|id| !self.pending.contains_key(*id) && !self.answered.contains(*id))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(RouterError::UnknownDecisions {
                router: self.name.clone(),
                decision_ids: unknown,
            });
        }
        let mut outcome = FeedbackOutcome::default();
        let mut reward = None;
        for decision_id in decision_ids {
            let Some(decision) = self.pending.remove(decision_id) else {
                outcome.duplicate += 1;
                continue;
            };
            let reward =
                *reward.get_or_insert_with(|| self.normalizer.observe(signal.raw_reward()));
            let arm = &mut self.arms[decision.arm];
            arm.model.update(&decision.context, reward);
            arm.statistics.feedback_count += 1;
            arm.statistics.reward_sum += reward;
            outcome
                .applied
                .push((decision_id.clone(), arm.reward_model.clone()));
            self.remember_answered(decision_id.clone());
        }
        Ok(outcome)
    }

    fn ensure_arm(&mut self, reward_model: &str) {
        if self.arm_index.contains_key(reward_model) {
            return;
        }
        self.arm_index
            .insert(reward_model.to_string(), self.arms.len());
        self.arms.push(Arm {
            reward_model: reward_model.to_string(),
            model: LinUcbArm::new(self.settings.context_dim, self.settings.l2_lambda),
            statistics: ArmStatistics {
                reward_model: reward_model.to_string(),
                ..ArmStatistics::default()
            },
        });
    }

    fn evict_over_capacity(&mut self) {
        while self.pending.len() > self.settings.max_pending_decisions {
            let Some(oldest) = self.pending_order.pop_front() else {
                break;
            };
            if self.pending.remove(&oldest).is_some() {
                self.evicted += 1;
            }
        }
        // pending_order may hold ids already answered; keep it from growing without bound.
        if self.pending_order.len() > 2 * self.settings.max_pending_decisions {
            let pending = &self.pending;
            self.pending_order.retain(|id| pending.contains_key(id));
        }
    }

    fn remember_answered(&mut self, decision_id: String) {
        self.answered.insert(decision_id.clone());
        self.answered_order.push_back(decision_id);
        while self.answered_order.len() > self.settings.max_pending_decisions {
            if let Some(oldest) = self.answered_order.pop_front() {
                self.answered.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(context_dim: usize) -> RouterSettings {
        RouterSettings {
            context_dim,
            policy: Policy::LinUcb,
            alpha: 0.1,
            l2_lambda: 1.0,
            normalization: Normalization::None,
            default_mode: SelectionMode::PerQuery,
            seed: 1,
            max_pending_decisions: 4,
        }
    }

    fn rms(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn wrong_context_dimension_names_the_query_and_changes_nothing() {
        let mut router = Router::new("r".into(), settings(3));
        let err = router
            .select(&[vec![0.0; 3], vec![0.0; 2]], None, false, &rms(&["a"]))
            .unwrap_err();
        assert_eq!(
            err,
            RouterError::ContextDimension {
                router: "r".into(),
                query: 1,
                expected: 3,
                got: 2
            }
        );
        assert!(router.arm_statistics().is_empty());
    }

    #[test]
    fn feedback_is_all_or_nothing_and_idempotent() {
        let mut router = Router::new("r".into(), settings(2));
        let selection = router
            .select(
                &[vec![1.0, 0.0], vec![0.0, 1.0]],
                None,
                false,
                &rms(&["a", "b"]),
            )
            .unwrap();
        let ids = router.record(selection, 5);
        assert_eq!(router.pending_decisions(), 2);

        let err = router
            .apply_feedback(&[ids[0].clone(), "nope".into()], FeedbackSignal::Loss(0.5))
            .unwrap_err();
        assert!(
            matches!(err, RouterError::UnknownDecisions { ref decision_ids, .. } if decision_ids == &["nope".to_string()])
        );
        assert_eq!(router.pending_decisions(), 2);
        assert_eq!(router.rewards_seen(), 0);

        let outcome = router
            .apply_feedback(&ids, FeedbackSignal::Loss(0.5))
            .unwrap();
        assert_eq!(outcome.applied.len(), 2);
        assert_eq!(router.pending_decisions(), 0);
        let again = router
            .apply_feedback(&ids, FeedbackSignal::Loss(0.5))
            .unwrap();
        assert_eq!(again.applied.len(), 0);
        assert_eq!(again.duplicate, 2);
        let applied: u64 = router
            .arm_statistics()
            .iter()
            .map(|s| s.feedback_count)
            .sum();
        assert_eq!(applied, 2);
        assert_eq!(router.rewards_seen(), 1);
    }

    #[test]
    fn per_batch_mode_makes_one_decision_on_the_mean_context() {
        let mut router = Router::new("r".into(), settings(2));
        let selection = router
            .select(
                &[vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]],
                Some(SelectionMode::PerBatch),
                true,
                &rms(&["a", "b"]),
            )
            .unwrap();
        assert_eq!(selection.decisions.len(), 1);
        assert_eq!(selection.decisions[0].queries, vec![0, 1, 2]);
        assert_eq!(selection.decisions[0].estimates.len(), 2);
        let mean = &selection.decisions[0].context;
        assert!((mean[0] - 2.0 / 3.0).abs() < 1e-12 && (mean[1] - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn oldest_pending_decisions_are_evicted_beyond_capacity() {
        let mut router = Router::new("r".into(), settings(1));
        let mut ids = Vec::new();
        for _ in 0..6 {
            let selection = router
                .select(&[vec![1.0]], None, false, &rms(&["a"]))
                .unwrap();
            ids.extend(router.record(selection, 0));
        }
        assert_eq!(router.pending_decisions(), 4);
        assert_eq!(router.evicted_decisions(), 2);
        assert!(matches!(
            router.apply_feedback(&ids[..1], FeedbackSignal::Reward(1.0)),
            Err(RouterError::UnknownDecisions { .. })
        ));
        assert!(
            router
                .apply_feedback(&ids[2..], FeedbackSignal::Reward(1.0))
                .is_ok()
        );
    }

    #[test]
    fn learns_which_arm_is_right_per_context() {
        let mut router = Router::new("r".into(), settings(2));
        let arms = rms(&["left", "right"]);
        let mut last_picks = Vec::new();
        for round in 0..300 {
            let context = if round % 2 == 0 {
                vec![1.0, 0.1]
            } else {
                vec![0.1, 1.0]
            };
            let right = if round % 2 == 0 { "left" } else { "right" };
            let selection = router.select(&[context], None, false, &arms).unwrap();
            let picked = selection.decisions[0].reward_model.clone();
            let ids = router.record(selection, round);
            let reward = if picked == right { 1.0 } else { 0.0 };
            router
                .apply_feedback(&ids, FeedbackSignal::Reward(reward))
                .unwrap();
            if round >= 200 {
                last_picks.push(picked == right);
            }
        }
        let accuracy = last_picks.iter().filter(|&&ok| ok).count() as f64 / last_picks.len() as f64;
        assert!(accuracy >= 0.95, "accuracy {accuracy}");
    }

    #[test]
    fn a_new_reward_model_becomes_a_fresh_arm() {
        let mut router = Router::new("r".into(), settings(1));
        router
            .select(&[vec![1.0]], None, false, &rms(&["a"]))
            .unwrap();
        router
            .select(&[vec![1.0]], None, false, &rms(&["a", "b"]))
            .unwrap();
        let names: Vec<String> = router
            .arm_statistics()
            .into_iter()
            .map(|s| s.reward_model)
            .collect();
        assert_eq!(names, rms(&["a", "b"]));
    }
}
