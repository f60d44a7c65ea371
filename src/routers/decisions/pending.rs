//! The pending-decision book of one router: decisions awaiting feedback (bounded by count
//! and by age), the ids already answered (bounded the same way, so a repeated id is a
//! duplicate, not an unknown), how many decisions were evicted unanswered, which group's
//! decision each pending decision is, and the answers given per Feedback idempotency key
//! (bounded the same way).
//!
//! Every method is driven by the router's events (times come from the event, never from a
//! clock), so a replayed book equals the live one. Cost: O(1) per insert and take,
//! amortized O(1) per expiry; memory O(d) per pending decision plus one id per answered one.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::routers::decisions::events::{Evictions, FeedbackCounts};

/// What a recorded decision chose, by arm index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(in crate::routers) enum Choice {
    Arm(usize),
    /// Every listed arm scored (ensemble policy).
    Ensemble(Vec<usize>),
}

impl Choice {
    /// Every arm this choice scored with.
    pub(in crate::routers) fn arms(&self) -> Vec<usize> {
        match self {
            Choice::Arm(arm) => vec![*arm],
            Choice::Ensemble(members) => members.clone(),
        }
    }
}

/// A decision awaiting feedback. The field order is the snapshot format: append only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(in crate::routers) struct PendingDecision {
    pub(in crate::routers) choice: Choice,
    pub(in crate::routers) context: Vec<f64>,
    /// Exp3: probability the arm was chosen with, and how many arms were available.
    pub(in crate::routers) probability: f64,
    pub(in crate::routers) arm_count: usize,
    pub(in crate::routers) created_unix_ms: i64,
    /// The scores the decision answered with (its queries' responses in request order),
    /// against which label feedback is judged. Format 3; empty for decisions recorded
    /// before it.
    pub(in crate::routers) scores: Vec<f32>,
    /// The category the decision counts under (bounded per router). Format 3.
    pub(in crate::routers) category: Option<String>,
}

/// [`PendingDecision`] as formats 1 and 2 wrote it (no scores).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(in crate::routers) struct PendingDecisionV2 {
    choice: Choice,
    context: Vec<f64>,
    probability: f64,
    arm_count: usize,
    created_unix_ms: i64,
}

impl From<PendingDecisionV2> for PendingDecision {
    fn from(old: PendingDecisionV2) -> Self {
        Self {
            choice: old.choice,
            context: old.context,
            probability: old.probability,
            arm_count: old.arm_count,
            created_unix_ms: old.created_unix_ms,
            scores: Vec::new(),
            category: None,
        }
    }
}

#[cfg(test)]
impl From<&PendingDecision> for PendingDecisionV2 {
    fn from(decision: &PendingDecision) -> Self {
        Self {
            choice: decision.choice.clone(),
            context: decision.context.clone(),
            probability: decision.probability,
            arm_count: decision.arm_count,
            created_unix_ms: decision.created_unix_ms,
        }
    }
}

#[derive(Default)]
pub(in crate::routers) struct PendingBook {
    pending: HashMap<String, PendingDecision>,
    /// Insertion order of pending ids; may hold ids answered since (skipped, compacted).
    order: VecDeque<String>,
    answered: HashSet<String>,
    answered_order: VecDeque<String>,
    evictions: Evictions,
    /// Group -> its decision (entries whose decision is no longer pending are stale and
    /// ignored; compacted as the map grows).
    groups: HashMap<String, String>,
    /// Idempotency key -> (request fingerprint, the answer given).
    keys: HashMap<String, (u64, FeedbackCounts)>,
    key_order: VecDeque<String>,
}

impl PendingBook {
    /// The pending decision `decision_id`, if it is younger than `ttl_ms` at `now_unix_ms`.
    pub(in crate::routers) fn live(
        &self,
        decision_id: &str,
        now_unix_ms: i64,
        ttl_ms: i64,
    ) -> Option<&PendingDecision> {
        self.pending
            .get(decision_id)
            .filter(|d| now_unix_ms - d.created_unix_ms < ttl_ms)
    }

    /// The category the pending decision `decision_id` counts under, if any.
    pub(in crate::routers) fn category_of(&self, decision_id: &str) -> Option<&str> {
        self.pending.get(decision_id)?.category.as_deref()
    }

    /// Whether `decision_id` is pending or was answered.
    pub(in crate::routers) fn knows(&self, decision_id: &str) -> bool {
        self.pending.contains_key(decision_id) || self.answered.contains(decision_id)
    }

    /// The live decision of `group`: (its id, the decision).
    pub(in crate::routers) fn group_decision(
        &self,
        group: &str,
        now_unix_ms: i64,
        ttl_ms: i64,
    ) -> Option<(&str, &PendingDecision)> {
        let id = self.groups.get(group)?;
        self.live(id, now_unix_ms, ttl_ms).map(|d| (id.as_str(), d))
    }

    /// Make `decision_id` the decision of `group`.
    pub(in crate::routers) fn bind_group(
        &mut self,
        group: String,
        decision_id: String,
        capacity: usize,
    ) {
        self.groups.insert(group, decision_id);
        if self.groups.len() > 2 * capacity {
            let pending = &self.pending;
            self.groups.retain(|_, id| pending.contains_key(id));
        }
    }

    /// Decisions pending at `now_unix_ms` that were made at or before `before_unix_ms`, in
    /// the order they were made.
    pub(in crate::routers) fn made_before(
        &self,
        before_unix_ms: i64,
        now_unix_ms: i64,
        ttl_ms: i64,
    ) -> Vec<String> {
        self.order
            .iter()
            .filter(|id| {
                self.live(id, now_unix_ms, ttl_ms)
                    .is_some_and(|d| d.created_unix_ms <= before_unix_ms)
            })
            .cloned()
            .collect()
    }

    /// The answer given for idempotency key `key`: (request fingerprint, counts).
    pub(in crate::routers) fn key(&self, key: &str) -> Option<(u64, FeedbackCounts)> {
        self.keys.get(key).copied()
    }

    /// Remember the answer for `key`, keeping at most `capacity` keys.
    pub(in crate::routers) fn remember_key(
        &mut self,
        key: String,
        fingerprint: u64,
        counts: FeedbackCounts,
        capacity: usize,
    ) {
        if self
            .keys
            .insert(key.clone(), (fingerprint, counts))
            .is_none()
        {
            self.key_order.push_back(key);
        }
        while self.key_order.len() > capacity {
            if let Some(oldest) = self.key_order.pop_front() {
                self.keys.remove(&oldest);
            }
        }
    }

    pub(in crate::routers) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(in crate::routers) fn evictions(&self) -> Evictions {
        self.evictions
    }

    /// Keep `decision` under `decision_id`; beyond `capacity` the oldest is evicted.
    pub(in crate::routers) fn insert(
        &mut self,
        decision_id: String,
        decision: PendingDecision,
        capacity: usize,
    ) {
        self.pending.insert(decision_id.clone(), decision);
        self.order.push_back(decision_id);
        while self.pending.len() > capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.pending.remove(&oldest).is_some() {
                self.evictions.capacity += 1;
            }
        }
        // `order` may hold ids already answered; keep it from growing without bound.
        if self.order.len() > 2 * capacity {
            let pending = &self.pending;
            self.order.retain(|id| pending.contains_key(id));
        }
    }

    /// Evict every decision at least `ttl_ms` old at `now_unix_ms`.
    pub(in crate::routers) fn expire(&mut self, now_unix_ms: i64, ttl_ms: i64) {
        while let Some(oldest) = self.order.front() {
            match self.pending.get(oldest) {
                None => {
                    self.order.pop_front();
                }
                Some(decision) if now_unix_ms - decision.created_unix_ms >= ttl_ms => {
                    let id = self.order.pop_front().expect("front exists");
                    self.pending.remove(&id);
                    self.evictions.ttl += 1;
                }
                Some(_) => break,
            }
        }
    }

    /// The ids that are neither pending (and younger than `ttl_ms` at `now_unix_ms`) nor
    /// already answered, in request order.
    pub(in crate::routers) fn unknown(
        &self,
        decision_ids: &[&str],
        now_unix_ms: i64,
        ttl_ms: i64,
    ) -> Vec<String> {
        decision_ids
            .iter()
            .filter(|&&id| {
                let live = self
                    .pending
                    .get(id)
                    .is_some_and(|d| now_unix_ms - d.created_unix_ms < ttl_ms);
                !live && !self.answered.contains(id)
            })
            .map(|id| id.to_string())
            .collect()
    }

    /// Remove a pending decision to answer it.
    pub(in crate::routers) fn take(&mut self, decision_id: &str) -> Option<PendingDecision> {
        self.pending.remove(decision_id)
    }

    /// Remember an answered id, keeping at most `capacity` of them.
    pub(in crate::routers) fn remember_answered(&mut self, decision_id: String, capacity: usize) {
        self.answered.insert(decision_id.clone());
        self.answered_order.push_back(decision_id);
        while self.answered_order.len() > capacity {
            if let Some(oldest) = self.answered_order.pop_front() {
                self.answered.remove(&oldest);
            }
        }
    }

    /// Pending decisions in insertion order, answered ids in answer order, evictions.
    pub(in crate::routers) fn to_parts(&self) -> PendingParts {
        PendingParts {
            pending: self
                .order
                .iter()
                .filter_map(|id| self.pending.get(id).map(|d| (id.clone(), d.clone())))
                .collect(),
            answered: self.answered_order.iter().cloned().collect(),
            evictions: self.evictions,
            groups: {
                let mut groups: Vec<(String, String)> = self
                    .groups
                    .iter()
                    .filter(|(_, id)| self.pending.contains_key(*id))
                    .map(|(group, id)| (group.clone(), id.clone()))
                    .collect();
                groups.sort();
                groups
            },
            keys: self
                .key_order
                .iter()
                .filter_map(|key| {
                    self.keys
                        .get(key)
                        .map(|&(fingerprint, counts)| (key.clone(), fingerprint, counts))
                })
                .collect(),
        }
    }

    /// The book [`PendingBook::to_parts`] describes (the caller checked the decisions).
    pub(in crate::routers) fn from_parts(parts: PendingParts) -> Self {
        let mut book = Self {
            evictions: parts.evictions,
            ..Self::default()
        };
        for (id, decision) in parts.pending {
            book.order.push_back(id.clone());
            book.pending.insert(id, decision);
        }
        for id in parts.answered {
            book.answered.insert(id.clone());
            book.answered_order.push_back(id);
        }
        book.groups = parts.groups.into_iter().collect();
        for (key, fingerprint, counts) in parts.keys {
            book.keys.insert(key.clone(), (fingerprint, counts));
            book.key_order.push_back(key);
        }
        book
    }
}

/// A book as plain data.
pub(in crate::routers) struct PendingParts {
    pub(in crate::routers) pending: Vec<(String, PendingDecision)>,
    pub(in crate::routers) answered: Vec<String>,
    pub(in crate::routers) evictions: Evictions,
    /// (group, its pending decision), sorted by group.
    pub(in crate::routers) groups: Vec<(String, String)>,
    /// (key, request fingerprint, answer), oldest first.
    pub(in crate::routers) keys: Vec<(String, u64, FeedbackCounts)>,
}
