//! A prior from labelled preference pairs (BayesianRouter's offline router, as a service):
//! each RM's correctness on each pair enters that RM's arm as an observation at the pair's
//! context, with a weight, so a new router starts knowing which RM is right where.
//!
//! The service scores the pairs with every RM; this module checks the observations against
//! the router and applies them through the same ridge systems feedback updates (an
//! observation of weight w adds w·x xᵀ to A and w·r·x to b: the context and reward scaled
//! by √w; r is the correctness less the router's `reward_center`, as for feedback).
//! Observations are on the normalized reward scale ([0, 1]) and stay out of the
//! normalizer's history. Cost: O(d²·n) per arm for n pairs (one rank-n update per arm).

use faer::Mat;

use crate::routers::decisions::events::{FeedbackCounts, PriorObservations, PriorOutcome};
use crate::routers::error::RouterError;
use crate::routers::instance::router::Router;
use crate::routers::instance::settings::Policy;

impl Router {
    /// Check a prior before it is logged: the router's policy keeps a linear model per arm,
    /// every context has the router's dimension, every RM has one value per pair, a key
    /// names no other request. `Ok(true)`: the key answered this request already.
    pub fn check_prior(&self, prior: &PriorObservations) -> Result<bool, RouterError> {
        if let Some(key) = &prior.key
            && self.replayed_answer(key)?.is_some()
        {
            return Ok(true);
        }
        if !matches!(
            self.settings.policy,
            Policy::LinUcb | Policy::LinTs | Policy::Offline
        ) {
            return Err(RouterError::PriorNeedsLinearArms {
                router: self.name.clone(),
                policy: self.settings.policy.name(),
            });
        }
        if let Some((query, context)) = prior
            .contexts
            .iter()
            .enumerate()
            .find(|(_, c)| c.len() != self.settings.context_dim)
        {
            return Err(RouterError::ContextDimension {
                router: self.name.clone(),
                query,
                expected: self.settings.context_dim,
                got: context.len(),
            });
        }
        debug_assert!(
            prior
                .correctness
                .iter()
                .all(|(_, values)| values.len() == prior.contexts.len())
                && prior.categories.len() == prior.contexts.len(),
            "one value and one category slot per pair"
        );
        Ok(false)
    }

    /// Enter a checked prior: RMs that would join become arms first; each arm's
    /// observations are one weighted rank-n update.
    pub(in crate::routers) fn apply_prior(
        &mut self,
        serving: &[String],
        prior: PriorObservations,
    ) -> Result<PriorOutcome, RouterError> {
        if self.check_prior(&prior)? {
            return Ok(PriorOutcome {
                replayed: true,
                ..PriorOutcome::default()
            });
        }
        self.join_new_arms(serving);
        let scale = prior.weight.sqrt();
        let dim = self.settings.arm_dim();
        let contexts: Vec<Vec<f64>> = prior
            .contexts
            .iter()
            .zip(&prior.categories)
            .map(|(received, category)| self.arm_context(received, category.as_deref()))
            .collect();
        let batch = Mat::from_fn(dim, contexts.len(), |i, j| contexts[j][i] * scale);
        let mut outcome = PriorOutcome::default();
        for (reward_model, correctness) in prior.correctness {
            let Some(&arm) = self.arm_index.get(&reward_model) else {
                outcome.skipped.push(reward_model);
                continue;
            };
            let rewards: Vec<f64> = correctness
                .iter()
                .map(|r| (r - self.settings.reward_center) * scale)
                .collect();
            self.arms[arm]
                .linucb
                .as_mut()
                .expect("linear policies keep linear arms")
                .update_batch(batch.as_ref(), &rewards);
            let correct = correctness.iter().sum::<f64>();
            let counts = self.priors.entry(reward_model.clone()).or_default();
            counts.pairs += correctness.len() as u64;
            counts.weight += prior.weight * correctness.len() as f64;
            counts.correct += correct;
            let mean = correct / correctness.len().max(1) as f64;
            outcome
                .entered
                .push((reward_model, correctness.len(), mean));
        }
        if let Some(key) = prior.key {
            let answer = FeedbackCounts {
                applied: prior.contexts.len() as u32,
                ..FeedbackCounts::default()
            };
            let capacity = self.settings.max_pending_decisions;
            self.book
                .remember_key(key.key, key.fingerprint, answer, capacity);
        }
        Ok(outcome)
    }
}
