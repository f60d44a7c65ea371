//! A router's settings, valid by construction through [`RouterSettings::validate`].

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RouterError;
use crate::bandit::Normalization;

/// Bandit policy of a router: LASeR's LinUCB and the paper's baselines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Policy {
    /// LinUCB on the (preprocessed) context: LASeR.
    LinUcb,
    /// A uniformly random RM per decision.
    Random,
    /// The RMs in turn, one per decision (the paper's "sequential").
    RoundRobin,
    /// Always the named RM.
    Fixed { reward_model: String },
    /// Every RM scores every query; per-RM-standardized scores are averaged.
    Ensemble,
    /// Non-contextual Exp3 with exploration rate `gamma`.
    Exp3 { gamma: f64 },
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::LinUcb => "linucb",
            Policy::Random => "random",
            Policy::RoundRobin => "round_robin",
            Policy::Fixed { .. } => "fixed",
            Policy::Ensemble => "ensemble",
            Policy::Exp3 { .. } => "exp3",
        }
    }
}

/// One decision per query, or one for the whole request on the mean context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectionMode {
    PerQuery,
    PerBatch,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterSettings {
    /// Dimension of the contexts clients send.
    pub context_dim: usize,
    pub policy: Policy,
    /// LinUCB exploration weight α.
    pub alpha: f64,
    /// LinUCB ridge regularization λ (A starts at λI).
    pub l2_lambda: f64,
    pub normalization: Normalization,
    /// Feedback.reward is already in [0, 1]: use it as is, without normalization.
    pub reward_is_normalized: bool,
    pub default_mode: SelectionMode,
    /// Seed of the tie-breaking / sampling RNG and of the random projection.
    pub seed: u64,
    /// RMs the router may use; `None`: every RM the server serves.
    pub reward_models: Option<BTreeSet<String>>,
    /// RMs added to the server after the router was created become arms (only with
    /// `reward_models = None`; a named RM always joins when it appears).
    pub join_new_reward_models: bool,
    /// Divide every context by its L2 norm.
    pub l2_normalize_context: bool,
    /// Project contexts to this dimension (0: off); an extension beyond the paper.
    pub projection_dim: usize,
    /// Decisions kept awaiting feedback; the oldest is evicted beyond this.
    pub max_pending_decisions: usize,
    /// A decision not answered within this time is evicted.
    pub pending_ttl: Duration,
}

impl RouterSettings {
    /// Check every field's range; the error names the field.
    pub fn validate(self, max_context_dim: usize) -> Result<Self, RouterError> {
        let invalid = |field, reason: String| Err(RouterError::InvalidSettings { field, reason });
        if self.context_dim == 0 || self.context_dim > max_context_dim {
            return invalid(
                "context_dim",
                format!(
                    "{} is outside 1..={max_context_dim} (limits.max_context_dim)",
                    self.context_dim
                ),
            );
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return invalid("alpha", format!("{} must be finite and >= 0", self.alpha));
        }
        if !(self.l2_lambda.is_finite() && self.l2_lambda > 0.0) {
            return invalid(
                "l2_lambda",
                format!("{} must be finite and > 0", self.l2_lambda),
            );
        }
        if let Normalization::Quantile { low, high, window } = self.normalization {
            if !((0.0..100.0).contains(&low) && low < high && high <= 100.0) {
                return invalid(
                    "quantile_low",
                    format!("percentiles {low}/{high} must satisfy 0 <= low < high <= 100"),
                );
            }
            if window == Some(0) {
                return invalid("reward_window", "must be > 0 when set".to_string());
            }
        }
        match &self.policy {
            Policy::Fixed { reward_model } if reward_model.is_empty() => {
                return invalid(
                    "fixed_reward_model",
                    "policy fixed needs an RM name".to_string(),
                );
            }
            Policy::Exp3 { gamma } if !(*gamma > 0.0 && *gamma <= 1.0) => {
                return invalid("exp3_gamma", format!("{gamma} is outside (0, 1]"));
            }
            _ => {}
        }
        if let Some(set) = &self.reward_models
            && set.is_empty()
        {
            return invalid(
                "reward_models",
                "an explicit set needs at least one RM".to_string(),
            );
        }
        if self.projection_dim > self.context_dim {
            return invalid(
                "projection_dim",
                format!(
                    "{} exceeds context_dim {}",
                    self.projection_dim, self.context_dim
                ),
            );
        }
        if self.max_pending_decisions == 0 {
            return invalid("max_pending_decisions", "must be > 0".to_string());
        }
        if self.pending_ttl.is_zero() {
            return invalid("pending_ttl_seconds", "must be > 0".to_string());
        }
        Ok(self)
    }

    /// Whether the router may route to `reward_model`.
    pub fn accepts(&self, reward_model: &str) -> bool {
        self.reward_models
            .as_ref()
            .is_none_or(|set| set.contains(reward_model))
    }

    /// Dimension of the arms' state (after projection).
    pub fn arm_dim(&self) -> usize {
        if self.projection_dim > 0 {
            self.projection_dim
        } else {
            self.context_dim
        }
    }
}
