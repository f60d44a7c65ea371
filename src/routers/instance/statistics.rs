//! What GetRouter shows of a router's arms: per-arm counts, rewards and, at the mean of
//! the contexts the router selected for, each LinUCB arm's estimate and bonus (or each
//! Exp3 arm's probability), each RM's decisions and rewards per query category
//! (bounded: [`MAX_CATEGORIES_PER_ROUTER`]) and what priors from labelled pairs put into
//! each arm. Cost: O(K·d²) for a LinUCB router (one solve per arm).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::routers::instance::policy;
use crate::routers::instance::router::Router;

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

/// Most categories a router keeps; decisions of further ones count under
/// [`OTHER_CATEGORY`] (metric labels stay bounded).
pub const MAX_CATEGORIES_PER_ROUTER: usize = 32;
/// Longest `Query.category` (and context category name) accepted.
pub const MAX_CATEGORY_BYTES: usize = 64;
/// Where decisions of categories beyond [`MAX_CATEGORIES_PER_ROUTER`] count.
pub const OTHER_CATEGORY: &str = "_other";

/// One RM's decisions and rewards within one category. Part of the state format (3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryCounts {
    pub selections: u64,
    pub feedback_count: u64,
    pub reward_sum: f64,
}

/// Per (category, RM) counts, in name order.
pub type CategoryTable = BTreeMap<(String, String), CategoryCounts>;

/// What the priors entered into one RM's arm hold (Admin.AddPrior). Part of the state
/// format (4).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PriorCounts {
    /// Labelled pairs entered, over every prior.
    pub pairs: u64,
    /// Their total weight (each prior's weight times its pairs): the observations' worth
    /// against one feedback of weight 1.
    pub weight: f64,
    /// Pairs the RM got right (its correctness summed: 1, 0, or 1/2 on a tie).
    pub correct: f64,
}

/// Per RM, in name order.
pub type PriorTable = BTreeMap<String, PriorCounts>;

/// What GetRouter shows of one RM within one category.
#[derive(Clone, Debug, PartialEq)]
pub struct CategoryArm {
    pub category: String,
    pub reward_model: String,
    pub selections: u64,
    pub feedback_count: u64,
    pub mean_reward: f64,
}

impl PriorCounts {
    /// The share of its prior pairs the RM got right (0 when none).
    pub fn accuracy(&self) -> f64 {
        if self.pairs == 0 {
            0.0
        } else {
            self.correct / self.pairs as f64
        }
    }
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

impl Router {
    /// Each RM's decisions and mean reward per category, by category then RM.
    pub fn category_statistics(&self) -> Vec<CategoryArm> {
        self.categories
            .iter()
            .map(|((category, reward_model), counts)| CategoryArm {
                category: category.clone(),
                reward_model: reward_model.clone(),
                selections: counts.selections,
                feedback_count: counts.feedback_count,
                mean_reward: if counts.feedback_count == 0 {
                    0.0
                } else {
                    counts.reward_sum / counts.feedback_count as f64
                },
            })
            .collect()
    }

    /// What each RM's arm holds from priors, by RM name (RMs without a prior absent).
    pub fn prior_statistics(&self) -> &PriorTable {
        &self.priors
    }

    /// (decision id, category) of the pending decisions among `decision_ids` that count
    /// under a category.
    pub fn categories_of(&self, decision_ids: &[String]) -> Vec<(String, String)> {
        decision_ids
            .iter()
            .filter_map(|id| {
                let category = self.book.category_of(id)?;
                Some((id.clone(), category.to_string()))
            })
            .collect()
    }

    /// The category a decision of `category` counts under: itself while the router knows
    /// fewer than [`MAX_CATEGORIES_PER_ROUTER`] (or already knows it), else
    /// [`OTHER_CATEGORY`].
    pub(in crate::routers) fn bounded_category(&self, category: &str) -> String {
        let known = self.categories.keys().any(|(known, _)| known == category);
        let count = {
            let mut names: Vec<&str> = self.categories.keys().map(|(c, _)| c.as_str()).collect();
            names.dedup();
            names.len()
        };
        if known || count < MAX_CATEGORIES_PER_ROUTER {
            category.to_string()
        } else {
            OTHER_CATEGORY.to_string()
        }
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
        let available = self.available(serving);
        let probabilities = policy::probabilities(&self.settings, &self.arms, &available);
        self.arms
            .iter()
            .enumerate()
            .map(|(index, arm)| {
                let mut statistics = arm.statistics.clone();
                statistics.removed = !available.contains(&index);
                if let Some(linucb) = &arm.linucb {
                    statistics.theta_norm = linucb.theta_norm();
                    if let Some(x) = &mean_context {
                        let estimate = linucb
                            .estimate(x, self.settings.alpha)
                            .shifted(self.settings.reward_center);
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
}
