//! A router's whole state as plain data ([`RouterState`]) for snapshots and exports, and
//! the way back, checked against the router's settings.
//!
//! The field order of these structs is the snapshot and export format (postcard, not
//! self-describing): a new format appends fields and keeps a reader for the old one
//! ([`RouterStateV1`], written before decision groups and idempotency keys;
//! [`RouterStateV2`], before pending decisions kept their scores; [`RouterStateV3`], before
//! the prior counts per RM and the settings' reward centre, [`RouterSettingsV2`];
//! [`RouterStateV4`], before the settings' context categories, [`RouterSettingsV3`]).
//! Cost: copies every arm's factor, O(K·d²).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bandit::{LinUcbArm, LinUcbArmData, RewardNormalizer};
use crate::routers::decisions::events::{Evictions, FeedbackCounts};
use crate::routers::decisions::pending::{
    Choice, PendingBook, PendingDecision, PendingDecisionV2, PendingParts,
};
use crate::routers::error::RouterError;
use crate::routers::instance::arm::Arm;
use crate::routers::instance::policy;
use crate::routers::instance::router::Router;
use crate::routers::instance::settings::{Normalization, Policy, RouterSettings, SelectionMode};
use crate::routers::instance::statistics::{ArmStatistics, CategoryCounts, PriorCounts};

/// A router's whole state as plain data (snapshots, exports).
pub type RouterState = RouterStateOf<RouterSettings>;

/// [`RouterState`] as format 4 wrote it: the same fields, settings without context
/// categories.
pub type RouterStateV4 = RouterStateOf<RouterSettingsV3>;

/// The layout of formats 4 and later, over the settings' layout `S`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterStateOf<S> {
    pub name: String,
    pub settings: S,
    arms: Vec<ArmState>,
    pending: Vec<(String, PendingDecision)>,
    answered: Vec<String>,
    normalizer: RewardNormalizer,
    decisions_recorded: u64,
    context_sum: Vec<f64>,
    contexts_seen: u64,
    evictions: Evictions,
    /// Added in format 2.
    groups_and_keys: GroupsAndKeys,
    /// Added in format 3: per (category, RM) decisions and rewards.
    categories: Vec<(String, String, CategoryCounts)>,
    /// Added in format 4 (with `settings.reward_center`): per RM, the labelled pairs its arm
    /// took from priors.
    priors: Vec<(String, PriorCounts)>,
}

impl From<RouterStateV4> for RouterState {
    fn from(old: RouterStateV4) -> Self {
        old.with_settings(RouterSettings::from)
    }
}

#[cfg(test)]
impl From<&RouterState> for RouterStateV4 {
    /// What format 4 wrote for `state` (which has no context categories).
    fn from(state: &RouterState) -> Self {
        state.clone().with_settings(|settings| (&settings).into())
    }
}

impl<S> RouterStateOf<S> {
    /// The same state with its settings converted.
    fn with_settings<T>(self, convert: impl FnOnce(S) -> T) -> RouterStateOf<T> {
        RouterStateOf {
            name: self.name,
            settings: convert(self.settings),
            arms: self.arms,
            pending: self.pending,
            answered: self.answered,
            normalizer: self.normalizer,
            decisions_recorded: self.decisions_recorded,
            context_sum: self.context_sum,
            contexts_seen: self.contexts_seen,
            evictions: self.evictions,
            groups_and_keys: self.groups_and_keys,
            categories: self.categories,
            priors: self.priors,
        }
    }
}

/// [`RouterState`] as format 3 wrote it (no prior counts, the priors' observations are in
/// the arms all the same; settings without a reward centre).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterStateV3 {
    name: String,
    settings: RouterSettingsV2,
    arms: Vec<ArmState>,
    pending: Vec<(String, PendingDecision)>,
    answered: Vec<String>,
    normalizer: RewardNormalizer,
    decisions_recorded: u64,
    context_sum: Vec<f64>,
    contexts_seen: u64,
    evictions: Evictions,
    groups_and_keys: GroupsAndKeys,
    categories: Vec<(String, String, CategoryCounts)>,
}

impl From<RouterStateV3> for RouterState {
    fn from(old: RouterStateV3) -> Self {
        Self {
            name: old.name,
            settings: old.settings.into(),
            arms: old.arms,
            pending: old.pending,
            answered: old.answered,
            normalizer: old.normalizer,
            decisions_recorded: old.decisions_recorded,
            context_sum: old.context_sum,
            contexts_seen: old.contexts_seen,
            evictions: old.evictions,
            groups_and_keys: old.groups_and_keys,
            categories: old.categories,
            priors: Vec::new(),
        }
    }
}

#[cfg(test)]
impl From<&RouterState> for RouterStateV3 {
    /// What format 3 wrote for `state` (its prior counts dropped).
    fn from(state: &RouterState) -> Self {
        Self {
            name: state.name.clone(),
            settings: (&state.settings).into(),
            arms: state.arms.clone(),
            pending: state.pending.clone(),
            answered: state.answered.clone(),
            normalizer: state.normalizer.clone(),
            decisions_recorded: state.decisions_recorded,
            context_sum: state.context_sum.clone(),
            contexts_seen: state.contexts_seen,
            evictions: state.evictions,
            groups_and_keys: state.groups_and_keys.clone(),
            categories: state.categories.clone(),
        }
    }
}

/// Format 2's addition: each group's pending decision and the answers per idempotency key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct GroupsAndKeys {
    groups: Vec<(String, String)>,
    keys: Vec<(String, u64, FeedbackCounts)>,
}

/// [`RouterState`] as format 1 wrote it (read from older snapshots, exports and logs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterStateV1 {
    name: String,
    settings: RouterSettingsV1,
    arms: Vec<ArmState>,
    pending: Vec<(String, PendingDecisionV2)>,
    answered: Vec<String>,
    normalizer: RewardNormalizer,
    decisions_recorded: u64,
    context_sum: Vec<f64>,
    contexts_seen: u64,
    evictions: Evictions,
}

impl From<RouterStateV1> for RouterState {
    fn from(old: RouterStateV1) -> Self {
        Self {
            name: old.name,
            settings: old.settings.into(),
            arms: old.arms,
            pending: upgrade(old.pending),
            answered: old.answered,
            normalizer: old.normalizer,
            decisions_recorded: old.decisions_recorded,
            context_sum: old.context_sum,
            contexts_seen: old.contexts_seen,
            evictions: old.evictions,
            groups_and_keys: GroupsAndKeys::default(),
            categories: Vec::new(),
            priors: Vec::new(),
        }
    }
}

/// [`RouterState`] as format 2 wrote it (pending decisions without their scores).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterStateV2 {
    name: String,
    settings: RouterSettingsV2,
    arms: Vec<ArmState>,
    pending: Vec<(String, PendingDecisionV2)>,
    answered: Vec<String>,
    normalizer: RewardNormalizer,
    decisions_recorded: u64,
    context_sum: Vec<f64>,
    contexts_seen: u64,
    evictions: Evictions,
    groups_and_keys: GroupsAndKeys,
}

impl From<RouterStateV2> for RouterState {
    fn from(old: RouterStateV2) -> Self {
        Self {
            name: old.name,
            settings: old.settings.into(),
            arms: old.arms,
            pending: upgrade(old.pending),
            answered: old.answered,
            normalizer: old.normalizer,
            decisions_recorded: old.decisions_recorded,
            context_sum: old.context_sum,
            contexts_seen: old.contexts_seen,
            evictions: old.evictions,
            groups_and_keys: old.groups_and_keys,
            categories: Vec::new(),
            priors: Vec::new(),
        }
    }
}

#[cfg(test)]
impl From<&RouterState> for RouterStateV2 {
    /// What format 2 wrote for `state` (its pending decisions' scores dropped).
    fn from(state: &RouterState) -> Self {
        Self {
            name: state.name.clone(),
            settings: (&state.settings).into(),
            arms: state.arms.clone(),
            pending: downgrade(&state.pending),
            answered: state.answered.clone(),
            normalizer: state.normalizer.clone(),
            decisions_recorded: state.decisions_recorded,
            context_sum: state.context_sum.clone(),
            contexts_seen: state.contexts_seen,
            evictions: state.evictions,
            groups_and_keys: state.groups_and_keys.clone(),
        }
    }
}

fn upgrade(pending: Vec<(String, PendingDecisionV2)>) -> Vec<(String, PendingDecision)> {
    pending
        .into_iter()
        .map(|(id, decision)| (id, decision.into()))
        .collect()
}

#[cfg(test)]
fn downgrade(pending: &[(String, PendingDecision)]) -> Vec<(String, PendingDecisionV2)> {
    pending
        .iter()
        .map(|(id, decision)| (id.clone(), decision.into()))
        .collect()
}

#[cfg(test)]
impl From<&RouterState> for RouterStateV1 {
    /// What format 1 wrote for `state` (which has no groups, keys or encoder).
    fn from(state: &RouterState) -> Self {
        Self {
            name: state.name.clone(),
            settings: (&state.settings).into(),
            arms: state.arms.clone(),
            pending: downgrade(&state.pending),
            answered: state.answered.clone(),
            normalizer: state.normalizer.clone(),
            decisions_recorded: state.decisions_recorded,
            context_sum: state.context_sum.clone(),
            contexts_seen: state.contexts_seen,
            evictions: state.evictions,
        }
    }
}

impl<S> RouterStateOf<S> {
    pub fn arm_count(&self) -> usize {
        self.arms.len()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ArmState {
    reward_model: String,
    linucb: Option<LinUcbArmData>,
    log_weight: f64,
    statistics: ArmStatistics,
}

impl Router {
    /// The router's state as plain data. Copies every arm's factor (O(K·d²)).
    pub fn to_state(&self) -> RouterState {
        let book = self.book.to_parts();
        RouterState {
            name: self.name.clone(),
            settings: self.settings.clone(),
            arms: self
                .arms
                .iter()
                .map(|arm| ArmState {
                    reward_model: arm.reward_model.clone(),
                    linucb: arm.linucb.as_ref().map(LinUcbArm::to_data),
                    log_weight: arm.log_weight,
                    statistics: arm.statistics.clone(),
                })
                .collect(),
            pending: book.pending,
            answered: book.answered,
            normalizer: self.normalizer.clone(),
            decisions_recorded: self.decisions_recorded,
            context_sum: self.context_sum.clone(),
            contexts_seen: self.contexts_seen,
            evictions: book.evictions,
            groups_and_keys: GroupsAndKeys {
                groups: book.groups,
                keys: book.keys,
            },
            categories: self
                .categories
                .iter()
                .map(|((category, reward_model), counts)| {
                    (category.clone(), reward_model.clone(), counts.clone())
                })
                .collect(),
            priors: self
                .priors
                .iter()
                .map(|(reward_model, counts)| (reward_model.clone(), counts.clone()))
                .collect(),
        }
    }

    /// Rebuild a router from [`Router::to_state`], under `name`.
    pub fn from_state(name: String, state: RouterState) -> Result<Self, RouterError> {
        let invalid = |reason: String| RouterError::InvalidState {
            router: name.clone(),
            reason,
        };
        let mut router = Router::new(name.clone(), state.settings, &[]);
        let arm_dim = router.settings.arm_dim();
        if state.context_sum.len() != arm_dim {
            return Err(invalid(format!(
                "context sum has dimension {}",
                state.context_sum.len()
            )));
        }
        for arm in state.arms {
            let linucb = match &arm.linucb {
                Some(data) if data.context_dim == arm_dim => Some(
                    LinUcbArm::from_data(data)
                        .ok_or_else(|| invalid("arm factor has the wrong size".into()))?,
                ),
                Some(data) => {
                    return Err(invalid(format!(
                        "arm dimension {} != {arm_dim}",
                        data.context_dim
                    )));
                }
                None => None,
            };
            if !policy::arm_model_fits(&router.settings, linucb.as_ref()) {
                return Err(invalid("a LinUCB router's arm has no LinUCB state".into()));
            }
            router
                .arm_index
                .insert(arm.reward_model.clone(), router.arms.len());
            router.arms.push(Arm {
                reward_model: arm.reward_model,
                linucb,
                log_weight: arm.log_weight,
                statistics: arm.statistics,
            });
        }
        for (id, decision) in &state.pending {
            let arms_exist = match &decision.choice {
                Choice::Arm(a) => *a < router.arms.len(),
                Choice::Ensemble(members) => members.iter().all(|a| *a < router.arms.len()),
            };
            if !arms_exist || decision.context.len() != arm_dim {
                return Err(invalid(format!(
                    "pending decision {id} does not fit the arms"
                )));
            }
        }
        router.book = PendingBook::from_parts(PendingParts {
            pending: state.pending,
            answered: state.answered,
            evictions: state.evictions,
            groups: state.groups_and_keys.groups,
            keys: state.groups_and_keys.keys,
        });
        router.normalizer = state.normalizer;
        router.decisions_recorded = state.decisions_recorded;
        router.context_sum = state.context_sum;
        router.contexts_seen = state.contexts_seen;
        router.categories = state
            .categories
            .into_iter()
            .map(|(category, reward_model, counts)| ((category, reward_model), counts))
            .collect();
        router.priors = state.priors.into_iter().collect();
        Ok(router)
    }
}

/// [`RouterSettings`] as format 1 wrote them (no encoder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterSettingsV1 {
    context_dim: usize,
    policy: Policy,
    alpha: f64,
    l2_lambda: f64,
    normalization: Normalization,
    reward_is_normalized: bool,
    default_mode: SelectionMode,
    seed: u64,
    reward_models: Option<BTreeSet<String>>,
    join_new_reward_models: bool,
    l2_normalize_context: bool,
    projection_dim: usize,
    max_pending_decisions: usize,
    pending_ttl: Duration,
}

impl From<RouterSettingsV1> for RouterSettings {
    fn from(old: RouterSettingsV1) -> Self {
        RouterSettingsV2 {
            format1: old,
            encoder: None,
        }
        .into()
    }
}

#[cfg(test)]
impl From<&RouterSettings> for RouterSettingsV1 {
    fn from(settings: &RouterSettings) -> Self {
        assert!(settings.encoder.is_none(), "format 1 has no encoders");
        RouterSettingsV2::from(settings).format1
    }
}

/// [`RouterSettings`] as formats 2 and 3 wrote them: format 1's fields, then the encoder
/// (postcard writes a nested struct's fields in line, so this is the flat layout those
/// formats wrote); no reward centre — their arms learned the rewards as they came, so they
/// read as `reward_center = 0`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterSettingsV2 {
    format1: RouterSettingsV1,
    encoder: Option<String>,
}

impl From<RouterSettingsV2> for RouterSettings {
    fn from(old: RouterSettingsV2) -> Self {
        RouterSettingsV3 {
            format2: old,
            reward_center: 0.0,
        }
        .into()
    }
}

/// [`RouterSettings`] as format 4 wrote them: formats 2–3's fields, then the reward centre;
/// no context categories (the arms saw the transformed context alone).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterSettingsV3 {
    format2: RouterSettingsV2,
    reward_center: f64,
}

impl From<RouterSettingsV3> for RouterSettings {
    fn from(old: RouterSettingsV3) -> Self {
        let RouterSettingsV3 {
            format2:
                RouterSettingsV2 {
                    format1: v1,
                    encoder,
                },
            reward_center,
        } = old;
        Self {
            context_dim: v1.context_dim,
            policy: v1.policy,
            alpha: v1.alpha,
            l2_lambda: v1.l2_lambda,
            normalization: v1.normalization,
            reward_is_normalized: v1.reward_is_normalized,
            default_mode: v1.default_mode,
            seed: v1.seed,
            reward_models: v1.reward_models,
            join_new_reward_models: v1.join_new_reward_models,
            l2_normalize_context: v1.l2_normalize_context,
            projection_dim: v1.projection_dim,
            max_pending_decisions: v1.max_pending_decisions,
            pending_ttl: v1.pending_ttl,
            encoder,
            reward_center,
            context_categories: Vec::new(),
        }
    }
}

#[cfg(test)]
impl From<&RouterSettings> for RouterSettingsV2 {
    fn from(settings: &RouterSettings) -> Self {
        assert_eq!(
            settings.reward_center, 0.0,
            "formats 1 to 3 have no reward centre"
        );
        RouterSettingsV3::from(settings).format2
    }
}

#[cfg(test)]
impl From<&RouterSettings> for RouterSettingsV3 {
    fn from(settings: &RouterSettings) -> Self {
        assert!(
            settings.context_categories.is_empty(),
            "formats 1 to 4 have no context categories"
        );
        let format2 = RouterSettingsV2 {
            format1: RouterSettingsV1 {
                context_dim: settings.context_dim,
                policy: settings.policy.clone(),
                alpha: settings.alpha,
                l2_lambda: settings.l2_lambda,
                normalization: settings.normalization,
                reward_is_normalized: settings.reward_is_normalized,
                default_mode: settings.default_mode,
                seed: settings.seed,
                reward_models: settings.reward_models.clone(),
                join_new_reward_models: settings.join_new_reward_models,
                l2_normalize_context: settings.l2_normalize_context,
                projection_dim: settings.projection_dim,
                max_pending_decisions: settings.max_pending_decisions,
                pending_ttl: settings.pending_ttl,
            },
            encoder: settings.encoder.clone(),
        };
        Self {
            format2,
            reward_center: settings.reward_center,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routers::tests::settings;

    #[test]
    fn the_old_settings_layouts_are_the_current_one_less_its_appended_fields() {
        let old = RouterSettings {
            encoder: Some("minilm".into()),
            ..settings(3)
        };
        let current = postcard::to_stdvec(&old).unwrap();
        let format4 = postcard::to_stdvec(&RouterSettingsV3::from(&old)).unwrap();
        let no_categories = postcard::to_stdvec(&Vec::<String>::new()).unwrap();
        assert_eq!(current, [format4.clone(), no_categories].concat());
        let format2 = postcard::to_stdvec(&RouterSettingsV2::from(&old)).unwrap();
        let centre = postcard::to_stdvec(&0.0f64).unwrap();
        assert_eq!(format4, [format2.clone(), centre].concat());
        let without_encoder = RouterSettings {
            encoder: None,
            ..old
        };
        let format1 = postcard::to_stdvec(&RouterSettingsV1::from(&without_encoder)).unwrap();
        let none = postcard::to_stdvec(&Option::<String>::None).unwrap();
        let format2 = postcard::to_stdvec(&RouterSettingsV2::from(&without_encoder)).unwrap();
        assert_eq!(format2, [format1, none].concat());
    }
}
