//! One router: settings, one arm per reward model, decisions awaiting feedback.
//!
//! The router is an event-sourced state machine: [`Router::select`] only reads (its
//! randomness is derived from the seed and the number of decisions recorded, so it needs no
//! mutable RNG), and every change goes through [`Router::apply`] with a [`RouterEvent`]:
//! `Recorded` (decisions returned to a client), `Feedback`, `Reset`. The live path checks,
//! logs, then applies the event; recovery applies the same logged events in the same
//! order, so a recovered router equals the one that acknowledged them.
//!
//! Selection is two-phase so that a failed or abandoned Score records nothing. Feedback is
//! all-or-nothing: [`Router::check_feedback`] validates every id before the event is logged.
//! Answered ids are remembered (bounded like the pending set) so a repeated id is
//! acknowledged as a duplicate and applied once.
//!
//! Arms come and go with the server's RMs: an RM the router accepts becomes an arm
//! (`A = λI`, `b = 0`) the first time a decision is recorded while it serves (selection
//! already treats it as a fresh arm); an RM that stops serving is skipped by selection, its
//! pending decisions are acknowledged but not applied, and its statistics stay visible
//! until the router is reset or deleted.
//!
//! Cost (LinUCB, K arms, B decisions, d arm dimension): select O(K·d²·B) reading each
//! arm's factor once; feedback O(d²·r) per arm for r decisions of that arm (one rank-r
//! update); memory one d×d matrix per arm plus O(d) per pending decision.

use std::collections::{HashMap, HashSet, VecDeque};

use faer::Mat;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::RouterError;
use super::settings::{Policy, RouterSettings, SelectionMode};
use crate::bandit::context::ContextTransform;
use crate::bandit::{self, ArmEstimate, LinUcbArm, LinUcbArmData, RewardNormalizer, exp3};

/// Per-arm statistics shown by GetRouter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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

/// What a recorded decision chose, by arm index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Choice {
    Arm(usize),
    /// Every listed arm scored (ensemble policy).
    Ensemble(Vec<usize>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    ensemble: bool,
    context: Vec<f64>,
    probability: f64,
    arm_count: usize,
}

impl Decision {
    /// Whether this decision combines several RMs (ensemble policy).
    pub fn is_ensemble(&self) -> bool {
        self.ensemble
    }
}

/// The outcome of [`Router::select`]; [`Selection::recorded`] turns it into the event
/// that records it.
#[derive(Debug)]
pub struct Selection {
    pub decisions: Vec<Decision>,
    serving: Vec<String>,
}

impl Selection {
    /// The `Recorded` event for these decisions under `decision_ids` (one per decision).
    pub fn recorded(self, decision_ids: Vec<String>, now_unix_ms: i64) -> RouterEvent {
        assert_eq!(
            decision_ids.len(),
            self.decisions.len(),
            "one id per decision"
        );
        RouterEvent::Recorded {
            now_unix_ms,
            serving: self.serving,
            decisions: self
                .decisions
                .into_iter()
                .zip(decision_ids)
                .map(|(decision, decision_id)| RecordedDecision {
                    decision_id,
                    reward_models: decision.reward_models,
                    ensemble: decision.ensemble,
                    context: decision.context,
                    probability: decision.probability,
                    arm_count: decision.arm_count,
                })
                .collect(),
        }
    }
}

/// The signal a Feedback request carries.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum FeedbackSignal {
    /// Training loss; reward = −loss.
    Loss(f64),
    /// Reward, higher is better.
    Reward(f64),
}

/// A decision as the log keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedDecision {
    pub decision_id: String,
    pub reward_models: Vec<String>,
    pub ensemble: bool,
    /// The preprocessed context (the arms' dimension).
    pub context: Vec<f64>,
    pub probability: f64,
    pub arm_count: usize,
}

/// Every change of a router. Times and the serving RMs are part of the event, so applying
/// it is deterministic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RouterEvent {
    Recorded {
        now_unix_ms: i64,
        serving: Vec<String>,
        decisions: Vec<RecordedDecision>,
    },
    Feedback {
        now_unix_ms: i64,
        serving: Vec<String>,
        decision_ids: Vec<String>,
        signal: FeedbackSignal,
    },
    Reset {
        serving: Vec<String>,
    },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedbackOutcome {
    /// (decision id, reward model) of each decision whose arm was updated.
    pub applied: Vec<(String, String)>,
    /// Decision ids that already had feedback.
    pub duplicate: usize,
    /// Decisions acknowledged but not applied: their RM no longer serves.
    pub not_applied: Vec<(String, String)>,
    /// The normalized reward applied (when anything was applied).
    pub reward: Option<f64>,
    /// Milliseconds from each applied decision's recording to this feedback.
    pub lags_ms: Vec<i64>,
    /// Mean normalized reward, after this feedback, of each arm it updated.
    pub arm_mean_rewards: Vec<(String, f64)>,
}

/// Decisions evicted before their feedback arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evictions {
    pub capacity: u64,
    pub ttl: u64,
}

/// A router's whole state as plain data (snapshots, exports).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterState {
    pub name: String,
    pub settings: RouterSettings,
    arms: Vec<ArmState>,
    pending: Vec<(String, PendingDecision)>,
    answered: Vec<String>,
    normalizer: RewardNormalizer,
    decisions_recorded: u64,
    context_sum: Vec<f64>,
    contexts_seen: u64,
    evictions: Evictions,
}

impl RouterState {
    pub fn arm_count(&self) -> usize {
        self.arms.len()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ArmState {
    reward_model: String,
    linucb: Option<LinUcbArmData>,
    log_weight: f64,
    statistics: ArmStatistics,
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
    decisions_recorded: u64,
    context_sum: Vec<f64>,
    contexts_seen: u64,
    evictions: Evictions,
}

/// A selectable arm: an existing one, or an accepted serving RM that will join as a fresh
/// arm when the decision is recorded.
struct Candidate {
    reward_model: String,
    arm: Option<usize>,
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
            context_sum: vec![0.0; settings.arm_dim()],
            settings,
            arms: Vec::new(),
            arm_index: HashMap::new(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            answered: HashSet::new(),
            answered_order: VecDeque::new(),
            decisions_recorded: 0,
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
        let available: Vec<usize> = self
            .candidates(serving)
            .iter()
            .filter_map(|c| c.arm)
            .collect();
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
    /// mean in per-batch mode. Reads only: record the result with [`Selection::recorded`]
    /// and [`Router::apply`].
    pub fn select(
        &self,
        contexts: &[Vec<f32>],
        mode: Option<SelectionMode>,
        explain: bool,
        serving: &[String],
    ) -> Result<Selection, RouterError> {
        self.check_contexts(contexts)?;
        let candidates = self.candidates(serving);
        if candidates.is_empty() {
            return Err(RouterError::NoRewardModels {
                router: self.name.clone(),
            });
        }
        let fixed = match &self.settings.policy {
            Policy::Fixed { reward_model } => Some(
                candidates
                    .iter()
                    .position(|c| &c.reward_model == reward_model)
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
                let mut mean = vec![0.0; self.settings.arm_dim()];
                for x in &processed {
                    mean.iter_mut().zip(x).for_each(|(m, v)| *m += v);
                }
                let count = processed.len().max(1) as f64;
                mean.iter_mut().for_each(|m| *m /= count);
                vec![((0..processed.len()).collect(), mean)]
            }
        };

        // LinUCB: one batched estimate per existing arm over all decisions of the request;
        // an arm about to join is fresh (θ = 0, A = λI): mean 0, bonus α·|x|/√λ.
        let estimates: Vec<Vec<ArmEstimate>> = match self.settings.policy {
            Policy::LinUcb => {
                let batch =
                    Mat::from_fn(self.settings.arm_dim(), groups.len(), |i, j| groups[j].1[i]);
                candidates
                    .iter()
                    .map(|candidate| match candidate.arm {
                        Some(arm) => self.arms[arm]
                            .linucb
                            .as_ref()
                            .expect("LinUCB routers keep LinUCB arms")
                            .estimate_batch(batch.as_ref(), self.settings.alpha),
                        None => groups
                            .iter()
                            .map(|(_, x)| {
                                let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
                                let bonus =
                                    self.settings.alpha * norm / self.settings.l2_lambda.sqrt();
                                ArmEstimate {
                                    mean: 0.0,
                                    bonus,
                                    ucb: bonus,
                                }
                            })
                            .collect(),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let exp3_probabilities = match self.settings.policy {
            Policy::Exp3 { gamma } => {
                let weights: Vec<f64> = candidates
                    .iter()
                    .map(|c| c.arm.map_or(0.0, |a| self.arms[a].log_weight))
                    .collect();
                exp3::probabilities(&weights, gamma)
            }
            _ => Vec::new(),
        };

        let mut decisions = Vec::with_capacity(groups.len());
        for (group, (queries, context)) in groups.into_iter().enumerate() {
            let mut rng = self.rng_for(group);
            let mut probability = 1.0;
            let mut explained = Vec::new();
            let chosen: Vec<usize> = match &self.settings.policy {
                Policy::LinUcb => {
                    let per_group: Vec<ArmEstimate> =
                        estimates.iter().map(|per_arm| per_arm[group]).collect();
                    if explain {
                        explained = candidates
                            .iter()
                            .zip(&per_group)
                            .map(|(c, e)| (c.reward_model.clone(), *e))
                            .collect();
                    }
                    vec![bandit::select_arm(&per_group, &mut rng).expect("candidates exist")]
                }
                Policy::Random => vec![rng.random_range(0..candidates.len())],
                Policy::RoundRobin => {
                    vec![
                        ((self.decisions_recorded as usize).wrapping_add(group)) % candidates.len(),
                    ]
                }
                Policy::Fixed { .. } => vec![fixed.expect("checked above")],
                Policy::Ensemble => (0..candidates.len()).collect(),
                Policy::Exp3 { .. } => {
                    let index = exp3::sample(&exp3_probabilities, &mut rng);
                    probability = exp3_probabilities[index];
                    vec![index]
                }
            };
            decisions.push(Decision {
                reward_models: chosen
                    .iter()
                    .map(|&c| candidates[c].reward_model.clone())
                    .collect(),
                queries,
                estimates: explained,
                ensemble: matches!(self.settings.policy, Policy::Ensemble),
                context,
                probability,
                arm_count: candidates.len(),
            });
        }
        Ok(Selection {
            decisions,
            serving: serving.to_vec(),
        })
    }

    /// Check a Feedback before it is logged: every id must be pending (and not expired at
    /// `now_unix_ms`) or already answered; a normalized reward must be in [0, 1].
    pub fn check_feedback(
        &self,
        decision_ids: &[String],
        signal: FeedbackSignal,
        now_unix_ms: i64,
    ) -> Result<(), RouterError> {
        let ttl_ms = self.settings.pending_ttl.as_millis() as i64;
        let unknown: Vec<String> = decision_ids
            .iter()
            .filter(|id| {
                let live = self
                    .pending
                    .get(*id)
                    .is_some_and(|d| now_unix_ms - d.created_unix_ms < ttl_ms);
                !live && !self.answered.contains(*id)
            })
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
        Ok(())
    }

    /// Apply one event. `Feedback` re-checks with [`Router::check_feedback`] and changes
    /// nothing but expired decisions when it fails; the live path checks before logging, so
    /// logged events always apply.
    pub fn apply(&mut self, event: RouterEvent) -> Result<FeedbackOutcome, RouterError> {
        match event {
            RouterEvent::Recorded {
                now_unix_ms,
                serving,
                decisions,
            } => {
                self.expire(now_unix_ms);
                self.join_new_arms(&serving);
                for decision in decisions {
                    self.record_one(decision, now_unix_ms);
                }
                Ok(FeedbackOutcome::default())
            }
            RouterEvent::Feedback {
                now_unix_ms,
                serving,
                decision_ids,
                signal,
            } => {
                self.expire(now_unix_ms);
                self.check_feedback(&decision_ids, signal, now_unix_ms)?;
                Ok(self.apply_feedback(&decision_ids, signal, &serving, now_unix_ms))
            }
            RouterEvent::Reset { serving } => {
                *self = Router::new(self.name.clone(), self.settings.clone(), &serving);
                Ok(FeedbackOutcome::default())
            }
        }
    }

    /// The router's state as plain data. Copies every arm's factor (O(K·d²)).
    pub fn to_state(&self) -> RouterState {
        RouterState {
            name: self.name.clone(),
            settings: self.settings.clone(),
            arms: self
                .arms
                .iter()
                .map(|arm| ArmState {
                    reward_model: arm.reward_model.clone(),
                    linucb: arm.linucb.as_ref().map(LinUcbArm::to_data),
                    log_weight: arm.log_weight,
                    statistics: arm.statistics.clone(),
                })
                .collect(),
            pending: self
                .pending_order
                .iter()
                .filter_map(|id| self.pending.get(id).map(|d| (id.clone(), d.clone())))
                .collect(),
            answered: self.answered_order.iter().cloned().collect(),
            normalizer: self.normalizer.clone(),
            decisions_recorded: self.decisions_recorded,
            context_sum: self.context_sum.clone(),
            contexts_seen: self.contexts_seen,
            evictions: self.evictions,
        }
    }

    /// Rebuild a router from [`Router::to_state`], under `name`.
    pub fn from_state(name: String, state: RouterState) -> Result<Self, RouterError> {
        let invalid = |reason: String| RouterError::InvalidState {
            router: name.clone(),
            reason,
        };
        let mut router = Router::new(name.clone(), state.settings, &[]);
        let arm_dim = router.settings.arm_dim();
        if state.context_sum.len() != arm_dim {
            return Err(invalid(format!(
                "context sum has dimension {}",
                state.context_sum.len()
            )));
        }
        for arm in state.arms {
            let linucb = match &arm.linucb {
                Some(data) if data.context_dim == arm_dim => Some(
                    LinUcbArm::from_data(data)
                        .ok_or_else(|| invalid("arm factor has the wrong size".into()))?,
                ),
                Some(data) => {
                    return Err(invalid(format!(
                        "arm dimension {} != {arm_dim}",
                        data.context_dim
                    )));
                }
                None if matches!(router.settings.policy, Policy::LinUcb) => {
                    return Err(invalid("a LinUCB router's arm has no LinUCB state".into()));
                }
                None => None,
            };
            router
                .arm_index
                .insert(arm.reward_model.clone(), router.arms.len());
            router.arms.push(Arm {
                reward_model: arm.reward_model,
                linucb,
                log_weight: arm.log_weight,
                statistics: arm.statistics,
            });
        }
        for (id, decision) in state.pending {
            let arms_exist = match &decision.choice {
                Choice::Arm(a) => *a < router.arms.len(),
                Choice::Ensemble(members) => members.iter().all(|a| *a < router.arms.len()),
            };
            if !arms_exist || decision.context.len() != arm_dim {
                return Err(invalid(format!(
                    "pending decision {id} does not fit the arms"
                )));
            }
            router.pending_order.push_back(id.clone());
            router.pending.insert(id, decision);
        }
        for id in state.answered {
            router.answered.insert(id.clone());
            router.answered_order.push_back(id);
        }
        router.normalizer = state.normalizer;
        router.decisions_recorded = state.decisions_recorded;
        router.context_sum = state.context_sum;
        router.contexts_seen = state.contexts_seen;
        router.evictions = state.evictions;
        Ok(router)
    }

    fn rng_for(&self, group: usize) -> StdRng {
        // SplitMix64 of (decisions recorded + group), mixed with the seed: a fresh,
        // reproducible stream per decision.
        let mut z = (self.decisions_recorded.wrapping_add(group as u64))
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        StdRng::seed_from_u64(self.settings.seed ^ z ^ (z >> 31))
    }

    fn record_one(&mut self, decision: RecordedDecision, now_unix_ms: i64) {
        let members: Vec<usize> = decision
            .reward_models
            .iter()
            .filter_map(|name| self.arm_index.get(name).copied())
            .collect();
        debug_assert_eq!(
            members.len(),
            decision.reward_models.len(),
            "chosen RMs are arms"
        );
        for &arm in &members {
            let statistics = &mut self.arms[arm].statistics;
            statistics.selections += 1;
            statistics.last_selected_unix_ms = now_unix_ms;
        }
        let choice = if decision.ensemble {
            Choice::Ensemble(members)
        } else {
            Choice::Arm(members[0])
        };
        self.context_sum
            .iter_mut()
            .zip(&decision.context)
            .for_each(|(s, v)| *s += v);
        self.contexts_seen += 1;
        self.decisions_recorded += 1;
        self.pending.insert(
            decision.decision_id.clone(),
            PendingDecision {
                choice,
                context: decision.context,
                probability: decision.probability,
                arm_count: decision.arm_count,
                created_unix_ms: now_unix_ms,
            },
        );
        self.pending_order.push_back(decision.decision_id);
        self.evict_over_capacity();
    }

    /// Apply checked feedback: one raw reward per request, decisions of one arm as one
    /// batched update.
    fn apply_feedback(
        &mut self,
        decision_ids: &[String],
        signal: FeedbackSignal,
        serving: &[String],
        now_unix_ms: i64,
    ) -> FeedbackOutcome {
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
            return outcome;
        }
        let reward = match signal {
            FeedbackSignal::Reward(reward) if self.settings.reward_is_normalized => reward,
            FeedbackSignal::Reward(reward) => self.normalizer.observe(reward),
            FeedbackSignal::Loss(loss) => self.normalizer.observe(-loss),
        };
        outcome.reward = Some(reward);
        let available: Vec<usize> = self
            .candidates(serving)
            .iter()
            .filter_map(|c| c.arm)
            .collect();

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
        outcome
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

    /// Whether a serving RM that is not an arm yet becomes one.
    fn would_join(&self, reward_model: &str) -> bool {
        self.settings.accepts(reward_model)
            && (self.settings.reward_models.is_some() || self.settings.join_new_reward_models)
    }

    fn join_new_arms(&mut self, serving: &[String]) {
        for reward_model in serving {
            if !self.arm_index.contains_key(reward_model) && self.would_join(reward_model) {
                self.add_arm(reward_model);
            }
        }
    }

    /// Arms that may be selected now: existing arms whose RM serves (arm order), then
    /// serving RMs that would join (serving order).
    fn candidates(&self, serving: &[String]) -> Vec<Candidate> {
        let mut existing: Vec<usize> = serving
            .iter()
            .filter_map(|name| self.arm_index.get(name).copied())
            .collect();
        existing.sort_unstable();
        existing.dedup();
        let mut candidates: Vec<Candidate> = existing
            .into_iter()
            .map(|arm| Candidate {
                reward_model: self.arms[arm].reward_model.clone(),
                arm: Some(arm),
            })
            .collect();
        for name in serving {
            if !self.arm_index.contains_key(name)
                && self.would_join(name)
                && !candidates.iter().any(|c| &c.reward_model == name)
            {
                candidates.push(Candidate {
                    reward_model: name.clone(),
                    arm: None,
                });
            }
        }
        candidates
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
