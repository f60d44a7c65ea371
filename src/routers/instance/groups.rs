//! Decisions shared by a group of queries (`Query.group`): a group's pending decision is
//! reused until it gets feedback or expires; a new group's decision is reserved in memory
//! (not logged) while its Score runs, so concurrent Scores of the group share it, and is
//! recorded by whichever of them succeeds first. Also the cut for "everything pending".
//! Cost: O(1) per grouped query (hash lookups), O(pending) for the cut.

use crate::routers::decisions::events::{
    Combination, Decision, DecisionSource, RouterEvent, Selection,
};
use crate::routers::decisions::pending::Choice;
use crate::routers::instance::policy;
use crate::routers::instance::router::Router;

impl Router {
    /// The decision `group` already has, if any is live and its RMs serve.
    pub(in crate::routers) fn existing_decision(
        &self,
        group: &str,
        serving: &[String],
        now_unix_ms: i64,
    ) -> Option<Decision> {
        let ttl = self.ttl_ms();
        if let Some((decision_id, pending)) = self.book.group_decision(group, now_unix_ms, ttl) {
            let available = self.available(serving);
            let members = pending.choice.arms();
            if !members.iter().all(|arm| available.contains(arm)) {
                return None;
            }
            return Some(Decision {
                decision_id: decision_id.to_string(),
                reward_models: members
                    .iter()
                    .map(|&arm| self.arms[arm].reward_model.clone())
                    .collect(),
                queries: Vec::new(),
                estimates: Vec::new(),
                source: DecisionSource::Pending,
                groups: vec![group.to_string()],
                combination: match pending.choice {
                    Choice::Ensemble(_) => policy::combination(&self.settings.policy),
                    Choice::Arm(_) => Combination::Single,
                },
                context: Vec::new(),
                received: None,
                probability: pending.probability,
                arm_count: pending.arm_count,
                scores: Vec::new(),
                category: None,
            });
        }
        let (decision, made_unix_ms) = self.reserved.get(group)?;
        let live = now_unix_ms - made_unix_ms < ttl
            && !self.book.knows(&decision.decision_id)
            && decision.reward_models.iter().all(|rm| serving.contains(rm));
        live.then(|| Decision {
            source: DecisionSource::Reserved,
            estimates: Vec::new(),
            ..decision.clone()
        })
    }

    /// Give the selection's fresh decisions their ids (from `new_id`) and reserve each new
    /// group's decision, so that Scores of the same group arriving before this one is
    /// recorded share it. In memory only; the recorded decisions are what the log keeps.
    pub fn reserve(
        &mut self,
        selection: &mut Selection,
        new_id: impl FnMut() -> String,
        now_unix_ms: i64,
    ) {
        selection.assign_ids(new_id);
        for decision in selection.decisions.iter().filter(|d| d.is_new()) {
            for group in &decision.groups {
                let kept = Decision {
                    queries: Vec::new(),
                    estimates: Vec::new(),
                    ..decision.clone()
                };
                self.reserved.insert(group.clone(), (kept, now_unix_ms));
            }
        }
        if self.reserved.len() > 2 * self.settings.max_pending_decisions {
            let ttl = self.ttl_ms();
            self.reserved
                .retain(|_, (_, made_unix_ms)| now_unix_ms - *made_unix_ms < ttl);
        }
    }

    /// The event that records a completed Score's decisions: its fresh ones, and reserved
    /// ones no other Score recorded meanwhile. `None` when there is nothing to record.
    pub fn recording(&self, selection: &Selection, now_unix_ms: i64) -> Option<RouterEvent> {
        selection.recording(|d| !self.book.knows(&d.decision_id), now_unix_ms)
    }

    /// The pending decisions made at or before `before_unix_ms` and still live at
    /// `now_unix_ms` (Feedback for "everything awaiting feedback").
    pub fn pending_made_before(&self, before_unix_ms: i64, now_unix_ms: i64) -> Vec<String> {
        self.book
            .made_before(before_unix_ms, now_unix_ms, self.ttl_ms())
    }
}
