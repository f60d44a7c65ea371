//! What GetRouter shows of a router's arms: per-arm counts, rewards and, at the mean of
//! the contexts the router selected for, each LinUCB arm's estimate and bonus (or each
//! Exp3 arm's probability). Cost: O(K·d²) for a LinUCB router (one solve per arm).

use serde::{Deserialize, Serialize};

use super::policy;
use super::router::Router;

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

impl Router {
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
}
