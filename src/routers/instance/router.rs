//! One router: settings, one arm per reward model, decisions awaiting feedback.
//!
//! The router is an event-sourced state machine: [`Router::select`] only reads (its
//! randomness is derived from the seed and the number of decisions recorded, so it needs no
//! mutable RNG), and every change goes through [`Router::apply`] with a
//! [`RouterEvent`]: `Recorded` (decisions returned to a client),
//! `Feedback`, `Reset`. The live path checks, logs, then applies the event; recovery
//! applies the same logged events in the same order, so a recovered router equals the one
//! that acknowledged them.
//!
//! Selection is two-phase so that a failed or abandoned Score records nothing. Feedback is
//! all-or-nothing: [`Router::check_feedback`] validates every id before the event is logged.
//! The pending decisions and answered ids live in `decisions::pending`; what the policy does
//! in `policy`; the plain-data form in [`super::state`].
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

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::bandit::context::{ContextTransform, l2_normalize};
use crate::bandit::{LinUcbArm, RewardNormalizer};
use crate::routers::decisions::events::{
    Decision, DecisionSource, Evictions, FeedbackOutcome, FeedbackSignals, LoggedContext,
    LoggedDecision, RecordedDecision, RouterEvent, Selection,
};
use crate::routers::decisions::pending::{Choice, PendingBook, PendingDecision};
use crate::routers::error::RouterError;
use crate::routers::instance::arm::{Arm, Candidate};
use crate::routers::instance::policy::{self, Plan};
use crate::routers::instance::settings::{RouterSettings, SelectionMode};
use crate::routers::instance::statistics::{ArmStatistics, CategoryTable, PriorTable};

/// The queries of one selection, index-aligned: each one's context (as the client or the
/// encoder gave it), group and category.
#[derive(Clone, Copy)]
pub struct QueriesIn<'a> {
    pub contexts: &'a [Vec<f32>],
    pub groups: &'a [Option<String>],
    pub categories: &'a [Option<String>],
}

/// The queries one fresh decision covers: one query, a new group's queries, or a batch.
struct Unit {
    queries: Vec<usize>,
    groups: Vec<String>,
    /// The preprocessed context the arms score.
    context: Vec<f64>,
    /// The client's context, when the unit is one query's (or a group's first query's)
    /// and the arms' context is derived from it alone (no context categories): the log
    /// keeps it and replays the transform; otherwise the log keeps `context`.
    received: Option<Vec<f32>>,
}

pub struct Router {
    pub(in crate::routers) name: String,
    pub(in crate::routers) settings: RouterSettings,
    pub(in crate::routers) transform: ContextTransform,
    pub(in crate::routers) arms: Vec<Arm>,
    pub(in crate::routers) arm_index: HashMap<String, usize>,
    pub(in crate::routers) book: PendingBook,
    pub(in crate::routers) normalizer: RewardNormalizer,
    pub(in crate::routers) decisions_recorded: u64,
    pub(in crate::routers) context_sum: Vec<f64>,
    pub(in crate::routers) contexts_seen: u64,
    /// Group -> (a decision made for it by a Score not recorded yet, when it was made).
    /// In memory only: it lets concurrent Scores of one group share one decision.
    pub(in crate::routers) reserved: HashMap<String, (Decision, i64)>,
    /// Per (category, RM): decisions and rewards of decisions that carried a category.
    pub(in crate::routers) categories: CategoryTable,
    /// Per RM: the labelled pairs its arm took from priors.
    pub(in crate::routers) priors: PriorTable,
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
            reserved: HashMap::new(),
            categories: CategoryTable::new(),
            priors: PriorTable::new(),
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
        let groups = vec![None; contexts.len()];
        let categories = vec![None; contexts.len()];
        let queries = QueriesIn {
            contexts,
            groups: &groups,
            categories: &categories,
        };
        self.select_grouped(queries, mode, explain, serving, 0)
    }

    /// [`Router::select`] where `groups[i]` is query i's group: a query whose group has a
    /// decision awaiting feedback (recorded, or reserved by a Score in flight, younger than
    /// the TTL at `now_unix_ms`, its RMs still serving) reuses it; new groups get one
    /// decision each (on the context of their first query; in per-batch mode, the batch's).
    pub fn select_grouped(
        &self,
        queries: QueriesIn<'_>,
        mode: Option<SelectionMode>,
        explain: bool,
        serving: &[String],
        now_unix_ms: i64,
    ) -> Result<Selection, RouterError> {
        let QueriesIn {
            contexts,
            groups,
            categories,
        } = queries;
        assert_eq!(groups.len(), contexts.len(), "one group slot per query");
        assert_eq!(
            categories.len(),
            contexts.len(),
            "one category slot per query"
        );
        self.check_contexts(contexts)?;
        let candidates = self.candidates(serving);
        if candidates.is_empty() {
            return Err(RouterError::NoRewardModels {
                router: self.name.clone(),
            });
        }

        // Queries of a group that already has a decision reuse it.
        let mut decisions: Vec<Decision> = Vec::new();
        let mut reused: HashMap<&str, usize> = HashMap::new();
        let mut fresh: Vec<usize> = Vec::new();
        for (query, group) in groups.iter().enumerate() {
            let Some(group) = group else {
                fresh.push(query);
                continue;
            };
            if let Some(&index) = reused.get(group.as_str()) {
                decisions[index].queries.push(query);
                continue;
            }
            match self.existing_decision(group, serving, now_unix_ms) {
                Some(mut decision) => {
                    decision.queries = vec![query];
                    reused.insert(group, decisions.len());
                    decisions.push(decision);
                }
                None => fresh.push(query),
            }
        }
        if fresh.is_empty() {
            return Ok(Selection {
                decisions,
                serving: serving.to_vec(),
            });
        }

        // The rest: one decision per query, per new group, or for the batch.
        let mut units: Vec<Unit> = Vec::new();
        match mode.unwrap_or(self.settings.default_mode) {
            SelectionMode::PerQuery => {
                let mut unit_of_group: HashMap<&str, usize> = HashMap::new();
                for &query in &fresh {
                    match &groups[query] {
                        Some(group) if unit_of_group.contains_key(group.as_str()) => {
                            units[unit_of_group[group.as_str()]].queries.push(query);
                        }
                        group => {
                            if let Some(group) = group {
                                unit_of_group.insert(group, units.len());
                            }
                            units.push(Unit {
                                queries: vec![query],
                                groups: group.iter().cloned().collect(),
                                context: self
                                    .arm_context(&contexts[query], categories[query].as_deref()),
                                received: self
                                    .settings
                                    .context_categories
                                    .is_empty()
                                    .then(|| contexts[query].clone()),
                            });
                        }
                    }
                }
            }
            SelectionMode::PerBatch => {
                let mut mean = vec![0.0; self.settings.arm_dim()];
                for &query in &fresh {
                    let x = self.arm_context(&contexts[query], categories[query].as_deref());
                    mean.iter_mut().zip(&x).for_each(|(m, v)| *m += v);
                }
                let count = fresh.len() as f64;
                mean.iter_mut().for_each(|m| *m /= count);
                let mut unit_groups: Vec<String> = Vec::new();
                for group in fresh.iter().filter_map(|&q| groups[q].as_ref()) {
                    if !unit_groups.contains(group) {
                        unit_groups.push(group.clone());
                    }
                }
                units.push(Unit {
                    queries: fresh.clone(),
                    groups: unit_groups,
                    context: mean,
                    received: None,
                });
            }
        }
        let unit_contexts: Vec<Vec<f64>> = units.iter().map(|unit| unit.context.clone()).collect();
        let plan = Plan::new(
            &self.name,
            &self.settings,
            &self.arms,
            &candidates,
            &unit_contexts,
            self.decisions_recorded,
        )?;
        let combination = policy::combination(&self.settings.policy);
        for (index, unit) in units.into_iter().enumerate() {
            let Unit {
                queries,
                groups: unit_groups,
                context,
                received,
            } = unit;
            let chosen = plan.choose(index, &candidates, &mut self.rng_for(index), explain);
            decisions.push(Decision {
                decision_id: String::new(),
                reward_models: chosen
                    .candidates
                    .iter()
                    .map(|&c| candidates[c].reward_model.clone())
                    .collect(),
                queries,
                // The arms fit rewards less the centre; reported on the rewards' scale.
                estimates: chosen
                    .explained
                    .into_iter()
                    .map(|(rm, estimate)| (rm, estimate.shifted(self.settings.reward_center)))
                    .collect(),
                source: DecisionSource::Fresh,
                groups: unit_groups,
                combination,
                context,
                received,
                probability: chosen.probability,
                arm_count: candidates.len(),
                scores: Vec::new(),
                category: None,
            });
        }
        Ok(Selection {
            decisions,
            serving: serving.to_vec(),
        })
    }

    /// What the arms see of a query: its context through the router's transform, then
    /// the one-hot slots of the settings' context categories (none set for a category
    /// not among them, or none). With `l2_normalize_context` the whole vector is scaled to
    /// unit norm again, so α means the same with or without a category (a unit context
    /// and a set slot would otherwise have norm √2: a bonus √2 larger, more exploration).
    pub(in crate::routers) fn arm_context(
        &self,
        context: &[f32],
        category: Option<&str>,
    ) -> Vec<f64> {
        let mut x = self.transform.apply(context);
        let slots = self.settings.context_categories.len();
        if slots > 0 {
            let first = x.len();
            x.resize(first + slots, 0.0);
            if let Some(slot) = self.settings.category_slot(category) {
                x[first + slot] = 1.0;
            }
            if self.settings.l2_normalize_context {
                l2_normalize(&mut x);
            }
        }
        x
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
                let groups = vec![Vec::new(); decisions.len()];
                let scores = vec![Vec::new(); decisions.len()];
                let categories = vec![None; decisions.len()];
                self.apply_recorded(now_unix_ms, &serving, decisions, groups, scores, categories);
                Ok(FeedbackOutcome::default())
            }
            RouterEvent::RecordedInGroups {
                now_unix_ms,
                serving,
                decisions,
                groups,
            } => {
                let scores = vec![Vec::new(); decisions.len()];
                let categories = vec![None; decisions.len()];
                let decisions = self.unlogged(decisions);
                self.apply_recorded(now_unix_ms, &serving, decisions, groups, scores, categories);
                Ok(FeedbackOutcome::default())
            }
            RouterEvent::RecordedScored {
                now_unix_ms,
                serving,
                decisions,
                groups,
                scores,
                categories,
            } => {
                let decisions = self.unlogged(decisions);
                self.apply_recorded(now_unix_ms, &serving, decisions, groups, scores, categories);
                Ok(FeedbackOutcome::default())
            }
            RouterEvent::Feedback {
                now_unix_ms,
                serving,
                decision_ids,
                signal,
            } => {
                let signals = FeedbackSignals::Shared {
                    decision_ids,
                    signal,
                };
                self.apply_feedback_event(now_unix_ms, &serving, signals, None)
            }
            RouterEvent::FeedbackKeyed {
                now_unix_ms,
                serving,
                signals,
                key,
            } => self.apply_feedback_event(now_unix_ms, &serving, signals, key),
            RouterEvent::PriorObservedV1 { serving, prior } => {
                self.apply_prior(&serving, prior.into())?;
                Ok(FeedbackOutcome::default())
            }
            RouterEvent::PriorObserved { serving, prior } => {
                self.apply_prior(&serving, prior)?;
                Ok(FeedbackOutcome::default())
            }
            RouterEvent::Reset { serving } => {
                *self = Router::new(self.name.clone(), self.settings.clone(), &serving);
                Ok(FeedbackOutcome::default())
            }
        }
    }

    /// Logged decisions as recorded ones: a received context goes through the router's
    /// context transform again, which gives bit for bit what selection used.
    fn unlogged(&self, decisions: Vec<LoggedDecision>) -> Vec<RecordedDecision> {
        decisions
            .into_iter()
            .map(|logged| RecordedDecision {
                decision_id: logged.decision_id,
                reward_models: logged.reward_models,
                ensemble: logged.ensemble,
                context: match logged.context {
                    LoggedContext::Received(received) => self.arm_context(&received, None),
                    LoggedContext::Preprocessed(context) => context,
                },
                probability: logged.probability,
                arm_count: logged.arm_count,
            })
            .collect()
    }

    fn apply_recorded(
        &mut self,
        now_unix_ms: i64,
        serving: &[String],
        decisions: Vec<RecordedDecision>,
        groups: Vec<Vec<String>>,
        scores: Vec<Vec<f32>>,
        categories: Vec<Option<String>>,
    ) {
        self.book.expire(now_unix_ms, self.ttl_ms());
        self.join_new_arms(serving);
        let capacity = self.settings.max_pending_decisions;
        for (((decision, decision_groups), scores), category) in decisions
            .into_iter()
            .zip(groups)
            .zip(scores)
            .zip(categories)
        {
            let decision_id = decision.decision_id.clone();
            if !self.record_one(decision, scores, category, now_unix_ms) {
                continue;
            }
            for group in decision_groups {
                if self
                    .reserved
                    .get(&group)
                    .is_some_and(|(reserved, _)| reserved.decision_id == decision_id)
                {
                    self.reserved.remove(&group);
                }
                self.book.bind_group(group, decision_id.clone(), capacity);
            }
        }
    }

    pub(in crate::routers) fn ttl_ms(&self) -> i64 {
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

    /// Record one decision; `false` (nothing changes) when its id is already known.
    fn record_one(
        &mut self,
        decision: RecordedDecision,
        scores: Vec<f32>,
        category: Option<String>,
        now_unix_ms: i64,
    ) -> bool {
        if self.book.knows(&decision.decision_id) {
            return false;
        }
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
        let category = category.map(|category| self.bounded_category(&category));
        if let Some(category) = &category {
            for &arm in &members {
                let key = (category.clone(), self.arms[arm].reward_model.clone());
                self.categories.entry(key).or_default().selections += 1;
            }
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
                scores,
                category,
            },
            self.settings.max_pending_decisions,
        );
        true
    }

    pub(in crate::routers) fn add_arm(&mut self, reward_model: &str) {
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

    pub(in crate::routers) fn join_new_arms(&mut self, serving: &[String]) {
        for reward_model in serving {
            if !self.arm_index.contains_key(reward_model) && self.would_join(reward_model) {
                self.add_arm(reward_model);
            }
        }
    }

    /// Indices of the existing arms whose RM serves.
    pub(in crate::routers) fn available(&self, serving: &[String]) -> Vec<usize> {
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
