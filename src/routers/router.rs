//! One router: settings, one arm per reward model, decisions awaiting feedback.
//!
//! The router is an event-sourced state machine: [`Router::select`] only reads (its
//! randomness is derived from the seed and the number of decisions recorded, so it needs no
//! mutable RNG), and every change goes through [`Router::apply`] with a
//! [`RouterEvent`](super::RouterEvent): `Recorded` (decisions returned to a client),
//! `Feedback`, `Reset`. The live path checks, logs, then applies the event; recovery
//! applies the same logged events in the same order, so a recovered router equals the one
//! that acknowledged them.
//!
//! Selection is two-phase so that a failed or abandoned Score records nothing. Feedback is
//! all-or-nothing: [`Router::check_feedback`] validates every id before the event is logged.
//! The pending decisions and answered ids live in [`super::pending`]; what the policy does
//! in [`super::policy`]; the plain-data form in [`super::state`].
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

use std::collections::{HashMap, HashSet};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::RouterError;
use super::events::{
    AnsweredDecision, Decision, Evictions, FeedbackOutcome, FeedbackSignal, RecordedDecision,
    RouterEvent, Selection,
};
use super::pending::{Choice, PendingBook, PendingDecision};
use super::policy::{self, Plan, Updates};
use super::settings::{RouterSettings, SelectionMode};
use super::statistics::ArmStatistics;
use crate::bandit::context::ContextTransform;
use crate::bandit::{LinUcbArm, RewardNormalizer};

pub(super) struct Arm {
    pub(super) reward_model: String,
    /// LinUCB state (LinUCB routers only).
    pub(super) linucb: Option<LinUcbArm>,
    /// Exp3 log-weight (Exp3 routers only).
    pub(super) log_weight: f64,
    pub(super) statistics: ArmStatistics,
}

/// A selectable arm: an existing one, or an accepted serving RM that will join as a fresh
/// arm when the decision is recorded.
pub(super) struct Candidate {
    pub(super) reward_model: String,
    pub(super) arm: Option<usize>,
}

pub struct Router {
    pub(super) name: String,
    pub(super) settings: RouterSettings,
    pub(super) transform: ContextTransform,
    pub(super) arms: Vec<Arm>,
    pub(super) arm_index: HashMap<String, usize>,
    pub(super) book: PendingBook,
    pub(super) normalizer: RewardNormalizer,
    pub(super) decisions_recorded: u64,
    pub(super) context_sum: Vec<f64>,
    pub(super) contexts_seen: u64,
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
            book: PendingBook::default(),
            decisions_recorded: 0,
            contexts_seen: 0,
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
        self.book.len()
    }

    pub fn evictions(&self) -> Evictions {
        self.book.evictions()
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
        let group_contexts: Vec<Vec<f64>> = groups.iter().map(|(_, x)| x.clone()).collect();
        let plan = Plan::new(
            &self.name,
            &self.settings,
            &self.arms,
            &candidates,
            &group_contexts,
            self.decisions_recorded,
        )?;
        let ensemble = policy::is_ensemble(&self.settings.policy);
        let decisions = groups
            .into_iter()
            .enumerate()
            .map(|(group, (queries, context))| {
                let chosen = plan.choose(group, &candidates, &mut self.rng_for(group), explain);
                Decision {
                    reward_models: chosen
                        .candidates
                        .iter()
                        .map(|&c| candidates[c].reward_model.clone())
                        .collect(),
                    queries,
                    estimates: chosen.explained,
                    ensemble,
                    context,
                    probability: chosen.probability,
                    arm_count: candidates.len(),
                }
            })
            .collect();
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
        let unknown = self.book.unknown(decision_ids, now_unix_ms, self.ttl_ms());
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
                self.book.expire(now_unix_ms, self.ttl_ms());
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
                self.book.expire(now_unix_ms, self.ttl_ms());
                self.check_feedback(&decision_ids, signal, now_unix_ms)?;
                Ok(self.apply_feedback(&decision_ids, signal, &serving, now_unix_ms))
            }
            RouterEvent::Reset { serving } => {
                *self = Router::new(self.name.clone(), self.settings.clone(), &serving);
                Ok(FeedbackOutcome::default())
            }
        }
    }

    fn ttl_ms(&self) -> i64 {
        self.settings.pending_ttl.as_millis() as i64
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
        self.book.insert(
            decision.decision_id,
            PendingDecision {
                choice,
                context: decision.context,
                probability: decision.probability,
                arm_count: decision.arm_count,
                created_unix_ms: now_unix_ms,
            },
            self.settings.max_pending_decisions,
        );
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
            match self.book.take(decision_id) {
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
        let available = self.available(serving);
        let capacity = self.settings.max_pending_decisions;

        let mut updates = Updates::default();
        for (decision_id, decision) in answered {
            let members = decision.choice.arms();
            let answered = AnsweredDecision {
                decision_id: decision_id.clone(),
                reward_models: members
                    .iter()
                    .map(|&a| self.arms[a].reward_model.clone())
                    .collect(),
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
        updates.apply(&self.settings, &mut self.arms, reward);
        outcome
    }

    pub(super) fn add_arm(&mut self, reward_model: &str) {
        self.arm_index
            .insert(reward_model.to_string(), self.arms.len());
        self.arms.push(Arm {
            reward_model: reward_model.to_string(),
            linucb: policy::new_arm_model(&self.settings),
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

    /// Indices of the existing arms whose RM serves.
    pub(super) fn available(&self, serving: &[String]) -> Vec<usize> {
        self.candidates(serving)
            .iter()
            .filter_map(|c| c.arm)
            .collect()
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
}
