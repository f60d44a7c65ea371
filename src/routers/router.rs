//! One router: settings, one arm per reward model, decisions awaiting feedback.
//!
//! Selection is two-phase so that a failed or abandoned Score records nothing:
//! [`Router::select`] picks arms (it only advances the RNG and the round-robin cursor) and
//! [`Router::record`] stores the decisions once the scores are ready.
//! [`Router::apply_feedback`] is all-or-nothing: every decision id is checked before any
//! arm changes. Answered ids are remembered (bounded like the pending set) so a repeated id
//! is acknowledged as a duplicate and applied once.
//!
//! Arms come and go with the server's RMs: an RM the router accepts becomes an arm
//! (`A = λI`, `b = 0`) the first time it is serving; an RM that stops serving is skipped by
//! selection, its pending decisions are acknowledged but not applied, and its statistics
//! stay visible until the router is reset or deleted.
//!
//! Cost (LinUCB, K arms, B decisions, d arm dimension): select O(K·d²·B) reading each
//! arm's factor once; feedback O(d²·r) per arm for r decisions of that arm (one rank-r
//! update); memory one d×d matrix per arm plus O(d) per pending decision.

use std::collections::{HashMap, HashSet, VecDeque};

use faer::Mat;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::RouterError;
use super::settings::{Policy, RouterSettings, SelectionMode};
use crate::bandit::context::ContextTransform;
use crate::bandit::{self, ArmEstimate, LinUcbArm, RewardNormalizer, exp3};

/// Per-arm statistics shown by GetRouter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmStatistics {
    pub reward_model: String,
    /// Decisions that chose this arm (an ensemble decision counts for every member).
    pub selections: u64,
    /// Decisions of this arm whose feedback was applied.
    pub feedback_count: u64,
    /// Sum of applied normalized rewards.
    pub reward_sum: f64,
    pub last_selected_unix_ms: i64,
    /// |θ| (LinUCB).
    pub theta_norm: f64,
    /// θ·x̄ and α·sqrt(x̄ᵀA⁻¹x̄) at the mean of the router's selected contexts (LinUCB).
    pub mean_at_context_mean: f64,
    pub bonus_at_context_mean: f64,
    /// Exp3 selection probability now (Exp3).
    pub probability: f64,
    /// The RM no longer serves (or the router no longer accepts it).
    pub removed: bool,
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
    /// LinUCB state (LinUCB routers only).
    linucb: Option<LinUcbArm>,
    /// Exp3 log-weight (Exp3 routers only).
    log_weight: f64,
    statistics: ArmStatistics,
}

/// What a decision chose.
#[derive(Clone, Debug, PartialEq)]
enum Choice {
    Arm(usize),
    /// Every listed arm scored (ensemble policy).
    Ensemble(Vec<usize>),
}

struct PendingDecision {
    choice: Choice,
    context: Vec<f64>,
    /// Exp3: probability the arm was chosen with, and how many arms were available.
    probability: f64,
    arm_count: usize,
    created_unix_ms: i64,
}

/// A choice for one query (or for the whole request in per-batch mode).
#[derive(Clone, Debug)]
pub struct Decision {
    /// The RMs to score with: one, or every member for the ensemble policy.
    pub reward_models: Vec<String>,
    /// Indices of the queries this decision covers.
    pub queries: Vec<usize>,
    /// Every available arm's estimate, when asked for (LinUCB).
    pub estimates: Vec<(String, ArmEstimate)>,
    choice: Choice,
    context: Vec<f64>,
    probability: f64,
    arm_count: usize,
}

impl Decision {
    /// Whether this decision combines several RMs (ensemble policy).
    pub fn is_ensemble(&self) -> bool {
        matches!(self.choice, Choice::Ensemble(_))
    }
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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedbackOutcome {
    /// (decision id, reward model) of each decision whose arm was updated.
    pub applied: Vec<(String, String)>,
    /// Decision ids that already had feedback.
    pub duplicate: usize,
    /// Decisions acknowledged but not applied: their RM no longer serves.
    pub not_applied: Vec<(String, String)>,
}

/// Decisions evicted before their feedback arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    pub capacity: u64,
    pub ttl: u64,
}

pub struct Router {
    name: String,
    settings: RouterSettings,
    transform: ContextTransform,
    arms: Vec<Arm>,
    arm_index: HashMap<String, usize>,
    pending: HashMap<String, PendingDecision>,
    pending_order: VecDeque<String>,
    answered: HashSet<String>,
    answered_order: VecDeque<String>,
    normalizer: RewardNormalizer,
    rng: StdRng,
    round_robin_next: usize,
    context_sum: Vec<f64>,
    contexts_seen: u64,
    evictions: Evictions,
}

impl Router {
    /// A fresh router with an arm for every RM in `serving` it accepts.
    pub fn new(name: String, settings: RouterSettings, serving: &[String]) -> Self {
        let mut router = Self {
            name,
            transform: ContextTransform::new(
                settings.context_dim,
                settings.l2_normalize_context,
                settings.projection_dim,
                settings.seed,
            ),
            normalizer: RewardNormalizer::new(settings.normalization),
            rng: StdRng::seed_from_u64(settings.seed),
            context_sum: vec![0.0; settings.arm_dim()],
            settings,
            arms: Vec::new(),
            arm_index: HashMap::new(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            answered: HashSet::new(),
            answered_order: VecDeque::new(),
            round_robin_next: 0,
            contexts_seen: 0,
            evictions: Evictions::default(),
        };
        for reward_model in serving {
            if router.settings.accepts(reward_model) {
                router.add_arm(reward_model);
            }
        }
        router
    }

    /// Forget everything learned (arms, pending decisions, reward history, RNG) and start
    /// over with the same settings, with an arm for every accepted RM in `serving`.
    pub fn reset(&mut self, serving: &[String]) {
        *self = Router::new(self.name.clone(), self.settings.clone(), serving);
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

    pub fn evictions(&self) -> Evictions {
        self.evictions
    }

    /// Raw rewards observed by the normalizer.
    pub fn rewards_seen(&self) -> u64 {
        self.normalizer.observed()
    }

    /// Bytes of bandit state held by the arms.
    pub fn arm_state_bytes(&self) -> usize {
        self.arms
            .iter()
            .filter_map(|arm| arm.linucb.as_ref().map(LinUcbArm::state_bytes))
            .sum()
    }

    /// Statistics of every arm the router has had, in the order arms were added; arms
    /// whose RM is not in `serving` are marked removed.
    pub fn arm_statistics(&self, serving: &[String]) -> Vec<ArmStatistics> {
        let mean_context: Option<Vec<f64>> = (self.contexts_seen > 0).then(|| {
            self.context_sum
                .iter()
                .map(|v| v / self.contexts_seen as f64)
                .collect()
        });
        let available = self.available_arms(serving);
        let probabilities = match self.settings.policy {
            Policy::Exp3 { gamma } if !available.is_empty() => {
                let weights: Vec<f64> =
                    available.iter().map(|&a| self.arms[a].log_weight).collect();
                exp3::probabilities(&weights, gamma)
            }
            _ => Vec::new(),
        };
        self.arms
            .iter()
            .enumerate()
            .map(|(index, arm)| {
                let mut statistics = arm.statistics.clone();
                statistics.removed = !available.contains(&index);
                if let Some(linucb) = &arm.linucb {
                    statistics.theta_norm = linucb.theta_norm();
                    if let Some(x) = &mean_context {
                        let estimate = linucb.estimate(x, self.settings.alpha);
                        statistics.mean_at_context_mean = estimate.mean;
                        statistics.bonus_at_context_mean = estimate.bonus;
                    }
                }
                if let Some(position) = available.iter().position(|&a| a == index) {
                    statistics.probability = probabilities.get(position).copied().unwrap_or(0.0);
                }
                statistics
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

    /// Pick RMs among `serving` (the RMs loaded now) for each context, or once for their
    /// mean in per-batch mode. Records nothing: pass the result to [`Router::record`].
    pub fn select(
        &mut self,
        contexts: &[Vec<f32>],
        mode: Option<SelectionMode>,
        explain: bool,
        serving: &[String],
    ) -> Result<Selection, RouterError> {
        self.check_contexts(contexts)?;
        self.join_new_arms(serving);
        let available = self.available_arms(serving);
        if available.is_empty() {
            return Err(RouterError::NoRewardModels {
                router: self.name.clone(),
            });
        }
        let fixed_arm = match &self.settings.policy {
            Policy::Fixed { reward_model } => Some(
                available
                    .iter()
                    .copied()
                    .find(|&a| &self.arms[a].reward_model == reward_model)
                    .ok_or_else(|| RouterError::FixedRewardModelUnavailable {
                        router: self.name.clone(),
                        reward_model: reward_model.clone(),
                    })?,
            ),
            _ => None,
        };

        let processed: Vec<Vec<f64>> = contexts.iter().map(|c| self.transform.apply(c)).collect();
        let groups: Vec<(Vec<usize>, Vec<f64>)> = match mode.unwrap_or(self.settings.default_mode) {
            SelectionMode::PerQuery => processed
                .into_iter()
                .enumerate()
                .map(|(i, x)| (vec![i], x))
                .collect(),
            SelectionMode::PerBatch => {
                let dim = self.settings.arm_dim();
                let mut mean = vec![0.0; dim];
                for x in &processed {
                    mean.iter_mut().zip(x).for_each(|(m, v)| *m += v);
                }
                let count = processed.len().max(1) as f64;
                mean.iter_mut().for_each(|m| *m /= count);
                vec![((0..processed.len()).collect(), mean)]
            }
        };

        // LinUCB: one batched estimate per arm over all decisions of the request.
        let estimates: Vec<Vec<ArmEstimate>> = match self.settings.policy {
            Policy::LinUcb => {
                let dim = self.settings.arm_dim();
                let batch = Mat::from_fn(dim, groups.len(), |i, j| groups[j].1[i]);
                available
                    .iter()
                    .map(|&a| {
                        self.arms[a]
                            .linucb
                            .as_ref()
                            .expect("LinUCB routers keep LinUCB arms")
                            .estimate_batch(batch.as_ref(), self.settings.alpha)
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let exp3_probabilities = match self.settings.policy {
            Policy::Exp3 { gamma } => {
                let weights: Vec<f64> =
                    available.iter().map(|&a| self.arms[a].log_weight).collect();
                exp3::probabilities(&weights, gamma)
            }
            _ => Vec::new(),
        };

        let mut decisions = Vec::with_capacity(groups.len());
        for (group, (queries, context)) in groups.into_iter().enumerate() {
            let mut probability = 1.0;
            let mut explained = Vec::new();
            let choice = match &self.settings.policy {
                Policy::LinUcb => {
                    let candidates: Vec<ArmEstimate> =
                        estimates.iter().map(|per_arm| per_arm[group]).collect();
                    if explain {
                        explained = available
                            .iter()
                            .zip(&candidates)
                            .map(|(&a, e)| (self.arms[a].reward_model.clone(), *e))
                            .collect();
                    }
                    let best =
                        bandit::select_arm(&candidates, &mut self.rng).expect("arms available");
                    Choice::Arm(available[best])
                }
                Policy::Random => Choice::Arm(available[self.rng.random_range(0..available.len())]),
                Policy::RoundRobin => {
                    let arm = available[self.round_robin_next % available.len()];
                    self.round_robin_next = self.round_robin_next.wrapping_add(1);
                    Choice::Arm(arm)
                }
                Policy::Fixed { .. } => Choice::Arm(fixed_arm.expect("checked above")),
                Policy::Ensemble => Choice::Ensemble(available.clone()),
                Policy::Exp3 { .. } => {
                    let index = exp3::sample(&exp3_probabilities, &mut self.rng);
                    probability = exp3_probabilities[index];
                    Choice::Arm(available[index])
                }
            };
            let reward_models = match &choice {
                Choice::Arm(a) => vec![self.arms[*a].reward_model.clone()],
                Choice::Ensemble(members) => members
                    .iter()
                    .map(|&a| self.arms[a].reward_model.clone())
                    .collect(),
            };
            decisions.push(Decision {
                reward_models,
                queries,
                estimates: explained,
                choice,
                context,
                probability,
                arm_count: available.len(),
            });
        }
        Ok(Selection { decisions })
    }

    /// Store the decisions of a completed Score: each awaits feedback under the returned
    /// decision id (same order as `selection.decisions`). Expired decisions, then the oldest
    /// beyond `max_pending_decisions`, are evicted.
    pub fn record(&mut self, selection: Selection, now_unix_ms: i64) -> Vec<String> {
        self.expire(now_unix_ms);
        selection
            .decisions
            .into_iter()
            .map(|decision| {
                let decision_id = uuid::Uuid::new_v4().simple().to_string();
                let members = match &decision.choice {
                    Choice::Arm(a) => vec![*a],
                    Choice::Ensemble(members) => members.clone(),
                };
                for arm in members {
                    let statistics = &mut self.arms[arm].statistics;
                    statistics.selections += 1;
                    statistics.last_selected_unix_ms = now_unix_ms;
                }
                self.context_sum
                    .iter_mut()
                    .zip(&decision.context)
                    .for_each(|(s, v)| *s += v);
                self.contexts_seen += 1;
                self.pending.insert(
                    decision_id.clone(),
                    PendingDecision {
                        choice: decision.choice,
                        context: decision.context,
                        probability: decision.probability,
                        arm_count: decision.arm_count,
                        created_unix_ms: now_unix_ms,
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
    /// raw reward enters the normalization history once per request that answers a pending
    /// decision; decisions of one arm are applied as one batched update.
    pub fn apply_feedback(
        &mut self,
        decision_ids: &[String],
        signal: FeedbackSignal,
        serving: &[String],
        now_unix_ms: i64,
    ) -> Result<FeedbackOutcome, RouterError> {
        self.expire(now_unix_ms);
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
        if let (FeedbackSignal::Reward(reward), true) = (signal, self.settings.reward_is_normalized)
            && !(0.0..=1.0).contains(&reward)
        {
            return Err(RouterError::RewardOutOfRange {
                router: self.name.clone(),
                reward,
            });
        }

        let mut outcome = FeedbackOutcome::default();
        let mut answered = Vec::new();
        let mut seen = HashSet::new();
        for decision_id in decision_ids {
            if !seen.insert(decision_id) {
                outcome.duplicate += 1;
                continue;
            }
            match self.pending.remove(decision_id) {
                Some(decision) => answered.push((decision_id.clone(), decision)),
                None => outcome.duplicate += 1,
            }
        }
        if answered.is_empty() {
            return Ok(outcome);
        }
        let reward = match signal {
            FeedbackSignal::Reward(reward) if self.settings.reward_is_normalized => reward,
            FeedbackSignal::Reward(reward) => self.normalizer.observe(reward),
            FeedbackSignal::Loss(loss) => self.normalizer.observe(-loss),
        };
        let available = self.available_arms(serving);

        // Group LinUCB updates per arm: one rank-r update each.
        let mut updates: HashMap<usize, Vec<Vec<f64>>> = HashMap::new();
        for (decision_id, decision) in answered {
            let members = match &decision.choice {
                Choice::Arm(a) => vec![*a],
                Choice::Ensemble(members) => members.clone(),
            };
            let label = members
                .iter()
                .map(|&a| self.arms[a].reward_model.as_str())
                .collect::<Vec<_>>()
                .join("+");
            let serving_members: Vec<usize> = members
                .iter()
                .copied()
                .filter(|a| available.contains(a))
                .collect();
            if serving_members.is_empty() {
                outcome.not_applied.push((decision_id.clone(), label));
                self.remember_answered(decision_id);
                continue;
            }
            for &arm in &serving_members {
                let statistics = &mut self.arms[arm].statistics;
                statistics.feedback_count += 1;
                statistics.reward_sum += reward;
            }
            if let Choice::Arm(arm) = decision.choice {
                match self.settings.policy {
                    Policy::LinUcb => updates.entry(arm).or_default().push(decision.context),
                    Policy::Exp3 { gamma } => {
                        self.arms[arm].log_weight += exp3::log_weight_increment(
                            reward,
                            decision.probability,
                            decision.arm_count,
                            gamma,
                        );
                    }
                    _ => {}
                }
            }
            outcome.applied.push((decision_id.clone(), label));
            self.remember_answered(decision_id);
        }
        let dim = self.settings.arm_dim();
        let mut arms: Vec<usize> = updates.keys().copied().collect();
        arms.sort_unstable();
        for arm in arms {
            let contexts = &updates[&arm];
            let batch = Mat::from_fn(dim, contexts.len(), |i, j| contexts[j][i]);
            let rewards = vec![reward; contexts.len()];
            self.arms[arm]
                .linucb
                .as_mut()
                .expect("LinUCB routers keep LinUCB arms")
                .update_batch(batch.as_ref(), &rewards);
        }
        Ok(outcome)
    }

    fn add_arm(&mut self, reward_model: &str) {
        self.arm_index
            .insert(reward_model.to_string(), self.arms.len());
        self.arms.push(Arm {
            reward_model: reward_model.to_string(),
            linucb: matches!(self.settings.policy, Policy::LinUcb)
                .then(|| LinUcbArm::new(self.settings.arm_dim(), self.settings.l2_lambda)),
            log_weight: 0.0,
            statistics: ArmStatistics {
                reward_model: reward_model.to_string(),
                ..ArmStatistics::default()
            },
        });
    }

    /// RMs that appeared since the router was created become arms when it accepts them.
    fn join_new_arms(&mut self, serving: &[String]) {
        for reward_model in serving {
            if self.arm_index.contains_key(reward_model) || !self.settings.accepts(reward_model) {
                continue;
            }
            if self.settings.reward_models.is_some() || self.settings.join_new_reward_models {
                self.add_arm(reward_model);
            }
        }
    }

    /// Indices of the arms that may be selected now, in arm order.
    fn available_arms(&self, serving: &[String]) -> Vec<usize> {
        let mut available: Vec<usize> = serving
            .iter()
            .filter_map(|name| self.arm_index.get(name).copied())
            .collect();
        available.sort_unstable();
        available
    }

    fn expire(&mut self, now_unix_ms: i64) {
        let ttl_ms = self.settings.pending_ttl.as_millis() as i64;
        while let Some(oldest) = self.pending_order.front() {
            match self.pending.get(oldest) {
                None => {
                    self.pending_order.pop_front();
                }
                Some(decision) if now_unix_ms - decision.created_unix_ms >= ttl_ms => {
                    let id = self.pending_order.pop_front().expect("front exists");
                    self.pending.remove(&id);
                    self.evictions.ttl += 1;
                }
                Some(_) => break,
            }
        }
    }

    fn evict_over_capacity(&mut self) {
        while self.pending.len() > self.settings.max_pending_decisions {
            let Some(oldest) = self.pending_order.pop_front() else {
                break;
            };
            if self.pending.remove(&oldest).is_some() {
                self.evictions.capacity += 1;
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
