//! What a router emits and what its log keeps: the outcome of a selection
//! ([`Selection`], one [`Decision`] per query, per group or per batch), the events that
//! change a router ([`RouterEvent`]: decisions recorded, feedback, priors, reset), and what applying
//! feedback did ([`FeedbackOutcome`]).
//!
//! The log format grows by appending: `Recorded` and `Feedback` are the first format's
//! events, `RecordedInGroups` the second's (still applied when replayed); the live path
//! writes `RecordedScored` (decisions with the scores they answered, for label feedback)
//! and `FeedbackKeyed`.
//!
//! Events carry their time and the serving RMs, so applying one is deterministic: the
//! live path and recovery apply the same bytes to the same result. Plain data, no cost
//! beyond the contexts they hold (O(d) per decision).

use serde::{Deserialize, Serialize};

use crate::bandit::ArmEstimate;

/// Where a selection's decision comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::routers) enum DecisionSource {
    /// Made by this selection: recorded when its Score succeeds.
    Fresh,
    /// Made for a group by a Score still in flight (or one that failed): recorded by
    /// whichever Score using it succeeds first.
    Reserved,
    /// A recorded decision of the query's group, awaiting feedback: nothing to record.
    Pending,
}

/// How a decision's RMs' scores become one score per response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combination {
    /// One RM: its own scores.
    Single,
    /// Every RM: the mean of their normalized scores (`ensemble`).
    ScoreMean,
    /// Every RM: the share of their pairwise votes each response won (`agreement_ensemble`).
    Agreement,
}

/// A choice for one query (or for a group, or for the whole request in per-batch mode).
#[derive(Clone, Debug)]
pub struct Decision {
    /// The decision's id (empty until [`Selection::assign_ids`] for a fresh decision).
    pub decision_id: String,
    /// The RMs to score with: one, or every member for the ensemble policy.
    pub reward_models: Vec<String>,
    /// Indices of the queries this decision covers.
    pub queries: Vec<usize>,
    /// Every available arm's estimate, when asked for (LinUCB; fresh decisions only).
    pub estimates: Vec<(String, ArmEstimate)>,
    pub(in crate::routers) source: DecisionSource,
    /// The groups that share this decision.
    pub(in crate::routers) groups: Vec<String>,
    pub(in crate::routers) combination: Combination,
    /// The context the arms saw (preprocessed, the arms' dimension).
    pub(in crate::routers) context: Vec<f64>,
    /// The client's context it was derived from, when the decision is one query's (or a
    /// group's first query's): what the log keeps, half the size of `context` in f64.
    pub(in crate::routers) received: Option<Vec<f32>>,
    pub(in crate::routers) probability: f64,
    pub(in crate::routers) arm_count: usize,
    /// The scores this decision answered with, its queries' responses in request order
    /// (set by the Score that records it; label feedback is judged against them).
    pub(in crate::routers) scores: Vec<f32>,
    /// Its first query's category (`Query.category`), when it has one.
    pub(in crate::routers) category: Option<String>,
}

impl Decision {
    /// Keep the scores this decision answers with (its queries' responses, in request
    /// order), so label feedback can be judged against them.
    pub fn set_scores(&mut self, scores: Vec<f32>) {
        self.scores = scores;
    }

    /// The category the decision counts under in the router's per-category statistics.
    pub fn set_category(&mut self, category: Option<String>) {
        self.category = category;
    }

    /// Whether this decision combines several RMs (an ensemble policy).
    pub fn is_ensemble(&self) -> bool {
        self.combination != Combination::Single
    }

    /// How this decision's RMs' scores become one score per response.
    pub fn combination(&self) -> Combination {
        self.combination
    }

    /// Whether this Score made the decision (a group's earlier decision is not counted
    /// again).
    pub fn is_new(&self) -> bool {
        self.source == DecisionSource::Fresh
    }

    /// The decision as the log keeps it: the received context when there is one (re-derived
    /// at apply), else the preprocessed one (a batch's mean).
    pub(in crate::routers) fn logged(&self) -> LoggedDecision {
        LoggedDecision {
            decision_id: self.decision_id.clone(),
            reward_models: self.reward_models.clone(),
            ensemble: self.is_ensemble(),
            context: match &self.received {
                Some(received) => LoggedContext::Received(received.clone()),
                None => LoggedContext::Preprocessed(self.context.clone()),
            },
            probability: self.probability,
            arm_count: self.arm_count,
        }
    }
}

/// The outcome of [`crate::routers::Router::select`]; [`Selection::recorded`] turns it into the
/// event that records it.
#[derive(Debug)]
pub struct Selection {
    pub decisions: Vec<Decision>,
    pub(in crate::routers) serving: Vec<String>,
}

impl Selection {
    /// Give each fresh decision an id from `new_id`, in decision order.
    pub fn assign_ids(&mut self, mut new_id: impl FnMut() -> String) {
        for decision in &mut self.decisions {
            if decision.source == DecisionSource::Fresh {
                decision.decision_id = new_id();
            }
        }
    }

    /// The event recording these decisions, fresh ones under `decision_ids` (one per fresh
    /// decision, in order), without looking at what the router recorded meanwhile (tests
    /// and benches; the live path uses `Router::recording`).
    pub fn recorded(mut self, decision_ids: Vec<String>, now_unix_ms: i64) -> RouterEvent {
        let fresh = self.decisions.iter().filter(|d| d.is_new()).count();
        assert_eq!(decision_ids.len(), fresh, "one id per fresh decision");
        let mut ids = decision_ids.into_iter();
        self.assign_ids(|| ids.next().expect("counted"));
        self.recording(|_| true, now_unix_ms)
            .expect("a selection has decisions")
    }

    /// The event recording the decisions that are not a group's pending one and that
    /// `record` picks; `None` when none is left.
    pub(in crate::routers) fn recording(
        &self,
        record: impl Fn(&Decision) -> bool,
        now_unix_ms: i64,
    ) -> Option<RouterEvent> {
        let decisions: Vec<&Decision> = self
            .decisions
            .iter()
            .filter(|d| d.source != DecisionSource::Pending && record(d))
            .collect();
        (!decisions.is_empty()).then(|| RouterEvent::RecordedScored {
            now_unix_ms,
            serving: self.serving.clone(),
            decisions: decisions.iter().map(|d| d.logged()).collect(),
            groups: decisions.iter().map(|d| d.groups.clone()).collect(),
            scores: decisions.iter().map(|d| d.scores.clone()).collect(),
            categories: decisions.iter().map(|d| d.category.clone()).collect(),
        })
    }
}

/// The signal a Feedback request carries, as the log keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum FeedbackSignal {
    /// Training loss; reward = −loss.
    Loss(f64),
    /// Reward, higher is better.
    Reward(f64),
    /// The decision's agreement with labels (pairwise accuracy of its scores, in [0, 1],
    /// computed from the request's labels before logging): already on the normalized scale,
    /// it enters the arm as is and stays out of the normalizer's history.
    Agreement(f64),
    /// Labels that cannot judge the decision (every response labelled alike): the decision
    /// is answered, no arm is updated.
    Uninformative,
}

/// What one decision of a per-decision Feedback carries: a signal, or labels for its
/// responses that the router turns into an [`FeedbackSignal::Agreement`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DecisionFeedback {
    Signal(FeedbackSignal),
    /// One label per response the decision scored (higher is better).
    Labels(Vec<f64>),
    /// The index of the preferred response (the others equal and worse).
    Preferred(u32),
    /// Labels for some of the decision's responses with the scores Score returned for them
    /// (same order, same length): judged over these pairs, not the decision's kept scores.
    ScoredLabels {
        labels: Vec<f64>,
        scores: Vec<f32>,
    },
}

/// A decision's context as the log keeps it (format 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LoggedContext {
    /// What the client sent (f32); applying the event runs the router's context transform
    /// on it, which gives bit for bit what selection used.
    Received(Vec<f32>),
    /// Already preprocessed (a per-batch decision's mean context).
    Preprocessed(Vec<f64>),
}

/// A decision as the log keeps it (format 2: `RecordedInGroups`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedDecision {
    pub decision_id: String,
    pub reward_models: Vec<String>,
    pub ensemble: bool,
    pub context: LoggedContext,
    pub probability: f64,
    pub arm_count: usize,
}

/// A decision as format 1's `Recorded` event keeps it, and as a router records it.
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
    /// Decisions recorded; `groups[i]` are the groups that share `decisions[i]`.
    RecordedInGroups {
        now_unix_ms: i64,
        serving: Vec<String>,
        decisions: Vec<LoggedDecision>,
        groups: Vec<Vec<String>>,
    },
    /// Feedback in any of its forms, with the request's idempotency key when it had one.
    FeedbackKeyed {
        now_unix_ms: i64,
        serving: Vec<String>,
        signals: FeedbackSignals,
        key: Option<IdempotencyKey>,
    },
    /// Decisions recorded with the scores they answered (`scores[i]` for `decisions[i]`);
    /// `groups[i]` are the groups that share `decisions[i]`. Format 3.
    RecordedScored {
        now_unix_ms: i64,
        serving: Vec<String>,
        decisions: Vec<LoggedDecision>,
        groups: Vec<Vec<String>>,
        scores: Vec<Vec<f32>>,
        /// `categories[i]`: the category `decisions[i]` counts under, if any.
        categories: Vec<Option<String>>,
    },
    /// A prior from labelled pairs entered into the arms (Admin.AddPrior), logged before
    /// pairs had categories (format 3).
    PriorObservedV1 {
        serving: Vec<String>,
        prior: PriorObservationsV1,
    },
    /// A prior from labelled pairs entered into the arms (Admin.AddPrior). Format 5.
    PriorObserved {
        serving: Vec<String>,
        prior: PriorObservations,
    },
}

impl RouterEvent {
    /// The ids of the decisions a recording event records (none for other events).
    pub fn recorded_ids(&self) -> Vec<String> {
        match self {
            RouterEvent::Recorded { decisions, .. } => {
                decisions.iter().map(|d| d.decision_id.clone()).collect()
            }
            RouterEvent::RecordedInGroups { decisions, .. }
            | RouterEvent::RecordedScored { decisions, .. } => {
                decisions.iter().map(|d| d.decision_id.clone()).collect()
            }
            RouterEvent::Feedback { .. }
            | RouterEvent::FeedbackKeyed { .. }
            | RouterEvent::Reset { .. }
            | RouterEvent::PriorObservedV1 { .. }
            | RouterEvent::PriorObserved { .. } => Vec::new(),
        }
    }
}

/// Which decisions a Feedback names, with which signals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FeedbackSignals {
    /// One signal for every listed decision (one reward enters the normalization).
    Shared {
        decision_ids: Vec<String>,
        signal: FeedbackSignal,
    },
    /// A signal per decision (each reward enters the normalization, in order).
    PerDecision(Vec<(String, FeedbackSignal)>),
}

impl FeedbackSignals {
    /// The decision ids named, in request order.
    pub fn decision_ids(&self) -> Vec<&str> {
        match self {
            FeedbackSignals::Shared { decision_ids, .. } => {
                decision_ids.iter().map(String::as_str).collect()
            }
            FeedbackSignals::PerDecision(signals) => {
                signals.iter().map(|(id, _)| id.as_str()).collect()
            }
        }
    }

    /// Every signal carried.
    pub fn signals(&self) -> Vec<FeedbackSignal> {
        match self {
            FeedbackSignals::Shared { signal, .. } => vec![*signal],
            FeedbackSignals::PerDecision(signals) => signals.iter().map(|(_, s)| *s).collect(),
        }
    }
}

/// What a Feedback request asks, before the router resolves it into [`FeedbackSignals`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FeedbackForm {
    /// One signal for the listed decisions.
    Decisions {
        decision_ids: Vec<String>,
        signal: FeedbackSignal,
    },
    /// A signal per decision.
    PerDecision(Vec<(String, FeedbackSignal)>),
    /// One signal for every decision awaiting feedback made before the request arrived.
    AllPending { signal: FeedbackSignal },
    /// A signal or labels per decision (sent when any decision carries labels).
    PerDecisionLabelled(Vec<(String, DecisionFeedback)>),
}

impl FeedbackForm {
    /// A stable 64-bit fingerprint of the request (FNV-1a over its encoding), so a retry
    /// under the same idempotency key is recognized across restarts.
    pub fn fingerprint(&self) -> u64 {
        let bytes = postcard::to_stdvec(self).expect("plain data encodes");
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
            (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

/// A Feedback's idempotency key and the fingerprint of the request it came with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: u64,
}

/// The counts a Feedback answered, kept per idempotency key to answer a retry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackCounts {
    pub applied: u32,
    pub duplicate: u32,
    pub not_applied: u32,
}

/// One answered decision, the RMs it chose (several for an ensemble decision) and the
/// normalized reward it got.
#[derive(Clone, Debug, PartialEq)]
pub struct AnsweredDecision {
    pub decision_id: String,
    pub reward_models: Vec<String>,
    pub reward: f64,
    /// The category the decision counts under, if it has one.
    pub category: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedbackOutcome {
    /// Decisions whose arms were updated.
    pub applied: Vec<AnsweredDecision>,
    /// Decision ids that already had feedback.
    pub duplicate: usize,
    /// Decisions acknowledged but not applied: their RM no longer serves.
    pub not_applied: Vec<AnsweredDecision>,
    /// The answer first given for this request's idempotency key: nothing was applied now.
    pub replayed: Option<FeedbackCounts>,
    /// Milliseconds from each applied decision's recording to this feedback.
    pub lags_ms: Vec<i64>,
    /// Mean normalized reward, after this feedback, of each arm it updated.
    pub arm_mean_rewards: Vec<(String, f64)>,
}

impl FeedbackOutcome {
    pub fn counts(&self) -> FeedbackCounts {
        self.replayed.unwrap_or(FeedbackCounts {
            applied: self.applied.len() as u32,
            duplicate: self.duplicate as u32,
            not_applied: self.not_applied.len() as u32,
        })
    }
}

/// Decisions evicted before their feedback arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evictions {
    pub capacity: u64,
    pub ttl: u64,
}

/// Largest weight of one observation: a prior should inform, not freeze, the arms.
pub const MAX_PRIOR_WEIGHT: f64 = 100.0;

/// What a prior brings to a router, as the log keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriorObservations {
    /// Each pair's context as received (the router's context transform applies when the
    /// event is applied, as for decisions).
    pub contexts: Vec<Vec<f32>>,
    /// Per RM: its correctness on each pair in pair order (1 chosen above rejected, 1/2 a
    /// tie, 0 otherwise).
    pub correctness: Vec<(String, Vec<f64>)>,
    /// Weight of every observation (> 0, at most [`MAX_PRIOR_WEIGHT`]).
    pub weight: f64,
    /// The request's idempotency key: a retry enters nothing again (kept with the
    /// router's Feedback keys).
    pub key: Option<IdempotencyKey>,
    /// Each pair's category (its `category`, when sent): the one-hot slots of a router
    /// with context categories. Format 5.
    pub categories: Vec<Option<String>>,
}

/// [`PriorObservations`] as format 3 logged them (pairs without categories).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriorObservationsV1 {
    pub contexts: Vec<Vec<f32>>,
    pub correctness: Vec<(String, Vec<f64>)>,
    pub weight: f64,
    pub key: Option<IdempotencyKey>,
}

impl From<PriorObservationsV1> for PriorObservations {
    fn from(old: PriorObservationsV1) -> Self {
        Self {
            categories: vec![None; old.contexts.len()],
            contexts: old.contexts,
            correctness: old.correctness,
            weight: old.weight,
            key: old.key,
        }
    }
}

/// What applying a prior did, per RM.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriorOutcome {
    /// (RM, pairs entered, mean correctness) for each RM that is an arm of the router.
    pub entered: Vec<(String, usize, f64)>,
    /// RMs scored that are not arms of the router (not accepted by its settings).
    pub skipped: Vec<String>,
    /// The request's idempotency key was answered before: nothing entered now.
    pub replayed: bool,
}
