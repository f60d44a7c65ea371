//! What a router emits and what its log keeps: the outcome of a selection
//! ([`Selection`], one [`Decision`] per query or per batch), the events that change a
//! router ([`RouterEvent`]: decisions recorded, feedback, reset), and what applying
//! feedback did ([`FeedbackOutcome`]).
//!
//! Events carry their time and the serving RMs, so applying one is deterministic: the
//! live path and recovery apply the same bytes to the same result. Plain data, no cost
//! beyond the contexts they hold (O(d) per decision).

use serde::{Deserialize, Serialize};

use crate::bandit::ArmEstimate;

/// A choice for one query (or for the whole request in per-batch mode).
#[derive(Clone, Debug)]
pub struct Decision {
    /// The RMs to score with: one, or every member for the ensemble policy.
    pub reward_models: Vec<String>,
    /// Indices of the queries this decision covers.
    pub queries: Vec<usize>,
    /// Every available arm's estimate, when asked for (LinUCB).
    pub estimates: Vec<(String, ArmEstimate)>,
    pub(super) ensemble: bool,
    pub(super) context: Vec<f64>,
    pub(super) probability: f64,
    pub(super) arm_count: usize,
}

impl Decision {
    /// Whether this decision combines several RMs (ensemble policy).
    pub fn is_ensemble(&self) -> bool {
        self.ensemble
    }
}

/// The outcome of [`super::Router::select`]; [`Selection::recorded`] turns it into the
/// event that records it.
#[derive(Debug)]
pub struct Selection {
    pub decisions: Vec<Decision>,
    pub(super) serving: Vec<String>,
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

/// One answered decision and the RMs it chose (several for an ensemble decision).
#[derive(Clone, Debug, PartialEq)]
pub struct AnsweredDecision {
    pub decision_id: String,
    pub reward_models: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedbackOutcome {
    /// Decisions whose arms were updated.
    pub applied: Vec<AnsweredDecision>,
    /// Decision ids that already had feedback.
    pub duplicate: usize,
    /// Decisions acknowledged but not applied: their RM no longer serves.
    pub not_applied: Vec<AnsweredDecision>,
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
