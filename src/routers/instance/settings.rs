//! A router's settings, valid by construction through [`RouterSettings::validate`], and
//! the one way unset fields are filled: a [`RouterSettingsPatch`] (the config file's
//! `[routers]` table and a CreateRouter request are both patches) applied over the
//! config's patch, then over LASeR's reference defaults ([`RouterSettings::default`]).
//!
//! `RouterSettings` is part of the log and snapshot format (postcard, field order):
//! add fields only at the end.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::bandit::Normalization;
use crate::routers::error::RouterError;
use crate::routers::instance::statistics::{MAX_CATEGORIES_PER_ROUTER, MAX_CATEGORY_BYTES};

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
    /// Every RM scores every query; the responses are ranked by the RMs' majority vote
    /// (the paper's "RM agreement ensemble", [`crate::bandit::ensemble::agreement`]).
    AgreementEnsemble,
    /// Linear Thompson sampling on LinUCB's statistics: per decision, each arm's score is
    /// drawn from its posterior N(x·θ, α²·xᵀA⁻¹x) and the highest draw wins (seeded by
    /// `seed`, so a replay draws the same).
    LinTs,
    /// The prior alone: the arm with the highest x·θ, θ fitted on the prior from labelled
    /// pairs (Admin.AddPrior); feedback is counted but does not move the arms (the
    /// baseline an online router has to beat).
    Offline,
}

/// Which policy, without its parameters: how the config file and the API name a policy
/// (`policy = "exp3"`, with `exp3_gamma` beside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    Linucb,
    Random,
    RoundRobin,
    Fixed,
    Ensemble,
    Exp3,
    AgreementEnsemble,
    Thompson,
    Offline,
}

impl Policy {
    pub fn kind(&self) -> PolicyKind {
        match self {
            Policy::LinUcb => PolicyKind::Linucb,
            Policy::Random => PolicyKind::Random,
            Policy::RoundRobin => PolicyKind::RoundRobin,
            Policy::Fixed { .. } => PolicyKind::Fixed,
            Policy::Ensemble => PolicyKind::Ensemble,
            Policy::Exp3 { .. } => PolicyKind::Exp3,
            Policy::AgreementEnsemble => PolicyKind::AgreementEnsemble,
            Policy::LinTs => PolicyKind::Thompson,
            Policy::Offline => PolicyKind::Offline,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.kind() {
            PolicyKind::Linucb => "linucb",
            PolicyKind::Random => "random",
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::Fixed => "fixed",
            PolicyKind::Ensemble => "ensemble",
            PolicyKind::Exp3 => "exp3",
            PolicyKind::AgreementEnsemble => "agreement_ensemble",
            PolicyKind::Thompson => "thompson",
            PolicyKind::Offline => "offline",
        }
    }
}

/// Which reward normalization, without its parameters (`normalization = "quantile"`, with
/// `quantile_low`, `quantile_high`, `reward_window` beside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizationKind {
    None,
    Quantile,
}

/// What the quantile normalization gives before its percentiles exist (fewer than two
/// rewards in the history).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstReward {
    /// The raw reward (LASeR's reference code).
    Raw,
    /// 0.5, the middle of the normalized range.
    Neutral,
    /// 0.5 for every reward until `first_reward_wait` rewards have come (appended).
    Wait,
}

/// Rewards a router waits for with `first_reward = "wait"` when the setting leaves it out.
pub const DEFAULT_FIRST_REWARD_WAIT: usize = 8;

/// One decision per query, or one for the whole request on the mean context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// The encoder (served by this server) that turns each query's prompt into its context;
    /// `None`: clients send contexts. Format 2.
    pub encoder: Option<String>,
    /// The reward an arm without observations is taken to have: the linear arms (LinUCB,
    /// Thompson, offline) learn `reward − reward_center`, so a ridge estimate starts at this
    /// reward instead of 0, the bottom of the normalized scale (where every first reward
    /// pulls the most-picked arm up). 0.5 by default, 0 in `laser_reference` and for
    /// routers created before format 4.
    pub reward_center: f64,
    /// Query categories (`Query.category`) the arms see as a one-hot block appended to the
    /// transformed context: slot i is 1 for a query of `context_categories[i]`, every slot 0
    /// for a query of another category or none. Empty (the default): contexts alone.
    /// At most [`MAX_CONTEXT_CATEGORIES`] distinct non-empty names. Format 5.
    pub context_categories: Vec<String>,
}

/// Most categories a router's context may carry as one-hot slots (each adds a dimension to
/// every arm).
pub const MAX_CONTEXT_CATEGORIES: usize = MAX_CATEGORIES_PER_ROUTER;

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
        if let Some((low, high, window)) = self.normalization.quantile() {
            if !((0.0..100.0).contains(&low) && low < high && high <= 100.0) {
                return invalid(
                    "quantile_low",
                    format!("percentiles {low}/{high} must satisfy 0 <= low < high <= 100"),
                );
            }
            if let Some(wait) = self.first_reward_wait()
                && !(2..=10_000).contains(&wait)
            {
                return invalid(
                    "first_reward_wait",
                    format!("{wait} is outside 2..=10000 (rewards to wait for)"),
                );
            }
            if let (Some(wait), Some(window)) = (self.first_reward_wait(), window)
                && wait > window
            {
                return invalid(
                    "first_reward_wait",
                    format!("{wait} exceeds reward_window {window}"),
                );
            }
            if let Some(window) = window
                && window < 2
            {
                return invalid(
                    "reward_window",
                    format!(
                        "{window} would leave every reward raw (the percentiles need two); use 0 (the whole history) or at least 2"
                    ),
                );
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
        if !self.reward_center.is_finite() {
            return invalid(
                "reward_center",
                format!("{} must be finite", self.reward_center),
            );
        }
        if self.context_categories.len() > MAX_CONTEXT_CATEGORIES {
            return invalid(
                "context_categories",
                format!(
                    "{} names; at most {MAX_CONTEXT_CATEGORIES}",
                    self.context_categories.len()
                ),
            );
        }
        for (index, name) in self.context_categories.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_CATEGORY_BYTES {
                return invalid(
                    "context_categories",
                    format!(
                        "[{index}] is {} bytes; names are 1 to {MAX_CATEGORY_BYTES} bytes",
                        name.len()
                    ),
                );
            }
            if name.chars().any(char::is_control) {
                return invalid(
                    "context_categories",
                    format!("[{index}] holds a control character (as Query.category may not)"),
                );
            }
            if self.context_categories[..index].contains(name) {
                return invalid(
                    "context_categories",
                    format!("[{index}] {name:?} is named twice"),
                );
            }
        }
        if self.max_pending_decisions == 0 {
            return invalid("max_pending_decisions", "must be > 0".to_string());
        }
        if self.pending_ttl.is_zero() {
            return invalid("pending_ttl_seconds", "must be > 0".to_string());
        }
        Ok(self)
    }

    /// What the reward normalization gives before its percentiles exist.
    pub fn first_reward(&self) -> FirstReward {
        match self.normalization {
            Normalization::QuantileNeutralStart { .. } => FirstReward::Neutral,
            Normalization::QuantileWait { .. } => FirstReward::Wait,
            Normalization::None | Normalization::Quantile { .. } => FirstReward::Raw,
        }
    }

    /// The rewards `first_reward = "wait"` waits for (`None` otherwise).
    pub fn first_reward_wait(&self) -> Option<usize> {
        match self.normalization {
            Normalization::QuantileWait { wait, .. } => Some(wait),
            _ => None,
        }
    }

    /// Whether the router may route to `reward_model`.
    pub fn accepts(&self, reward_model: &str) -> bool {
        self.reward_models
            .as_ref()
            .is_none_or(|set| set.contains(reward_model))
    }

    /// Dimension of the arms' state: the transformed context (after projection) and one
    /// slot per context category.
    pub fn arm_dim(&self) -> usize {
        let transformed = if self.projection_dim > 0 {
            self.projection_dim
        } else {
            self.context_dim
        };
        transformed + self.context_categories.len()
    }

    /// The one-hot slot of `category` among the context categories, if it has one.
    pub fn category_slot(&self, category: Option<&str>) -> Option<usize> {
        let category = category?;
        self.context_categories
            .iter()
            .position(|name| name == category)
    }
}

impl Default for RouterSettings {
    /// LinUCB per query (the paper's text), λ = 1, 20th/80th percentile normalization over
    /// the whole reward history (LASeR) with a neutral first reward, d = 4096; α = 1 on L2-normalized contexts, chosen
    /// on the closed-loop benchmark (docs/learning.md: α = 0.1 per query learned no routing
    /// there and trailed α = 1 by 0.018 ± 0.012 held-out accuracy; unit contexts keep α's
    /// meaning at any context scale). The reference code's settings are the
    /// `laser_reference` preset.
    fn default() -> Self {
        Self {
            context_dim: 4096,
            policy: Policy::LinUcb,
            alpha: 1.0,
            l2_lambda: 1.0,
            normalization: Normalization::QuantileNeutralStart {
                low: 20.0,
                high: 80.0,
                window: None,
            },
            reward_is_normalized: false,
            default_mode: SelectionMode::PerQuery,
            seed: 0,
            reward_models: None,
            join_new_reward_models: true,
            l2_normalize_context: true,
            projection_dim: 0,
            max_pending_decisions: 100_000,
            pending_ttl: Duration::from_secs(3600),
            encoder: None,
            reward_center: DEFAULT_REWARD_CENTER,
            context_categories: Vec::new(),
        }
    }
}

/// A named set of settings. `laser_reference` is the paper's public reference code
/// (`duykhuongnguyen/LASeR-MAB`, `scripts/train_and_infer.py`): LinUCB selecting once per
/// batch on the batch's mean raw context, α = 0.1, λ = 1, the batch loss as the reward,
/// normalized by the 20th/80th percentiles of every reward so far, the first one raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    LaserReference,
}

impl Preset {
    /// Every preset's wire and config name.
    pub const NAMES: &[&str] = &["laser_reference"];

    pub fn parse(name: &str) -> Option<Preset> {
        match name {
            "laser_reference" => Some(Preset::LaserReference),
            _ => None,
        }
    }

    /// The fields the preset sets; others come from the layer below.
    pub fn patch(self) -> RouterSettingsPatch {
        match self {
            Preset::LaserReference => RouterSettingsPatch {
                policy: Some(PolicyKind::Linucb),
                alpha: Some(0.1),
                l2_lambda: Some(1.0),
                normalization: Some(NormalizationKind::Quantile),
                quantile_low: Some(20.0),
                quantile_high: Some(80.0),
                reward_window: Some(0),
                first_reward: Some(FirstReward::Raw),
                reward_is_normalized: Some(false),
                default_mode: Some(SelectionMode::PerBatch),
                l2_normalize_context: Some(false),
                projection_dim: Some(0),
                reward_center: Some(0.0),
                ..RouterSettingsPatch::default()
            },
        }
    }
}

/// Router settings with every field optional: the config file's `[routers]` table (these
/// names are its keys) and a CreateRouter request. [`RouterSettingsPatch::apply`] fills
/// what is unset.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettingsPatch {
    /// Context dimension (LASeR: the policy LLM's hidden size; default 4096).
    pub context_dim: Option<usize>,
    /// `linucb` (default), `random`, `round_robin`, `fixed`, `ensemble`, `exp3` or
    /// `agreement_ensemble`.
    pub policy: Option<PolicyKind>,
    /// The RM of the `fixed` policy.
    pub fixed_reward_model: Option<String>,
    /// Exploration rate of the `exp3` policy (default 0.1).
    pub exp3_gamma: Option<f64>,
    /// LinUCB exploration weight α (default 1; the reference code's 0.1 in `laser_reference`).
    pub alpha: Option<f64>,
    /// LinUCB ridge λ (default 1).
    pub l2_lambda: Option<f64>,
    /// `quantile` (default) or `none`.
    pub normalization: Option<NormalizationKind>,
    /// Percentiles of the quantile normalization (default 20 and 80).
    pub quantile_low: Option<f64>,
    pub quantile_high: Option<f64>,
    /// Last raw rewards kept as the normalization history (0: all, as LASeR; the default).
    pub reward_window: Option<usize>,
    /// The quantile normalization's reward while the history holds fewer than two: `raw`
    /// (LASeR's reference code; the default) or `neutral` (0.5).
    pub first_reward: Option<FirstReward>,
    /// With `first_reward = "wait"`: how many rewards come in as 0.5 before the percentiles
    /// apply (2 to 10000; default 8).
    pub first_reward_wait: Option<usize>,
    /// Feedback.reward is already in [0, 1] and used as is (default false).
    pub reward_is_normalized: Option<bool>,
    /// `per_query` (default) or `per_batch`.
    pub default_mode: Option<SelectionMode>,
    /// Seed of each router's RNG (tie-breaking, sampling, projection; default 0).
    pub seed: Option<u64>,
    /// RMs the router may use (default: every RM the server serves).
    pub reward_models: Option<BTreeSet<String>>,
    /// RMs added to the server later become arms of existing routers (default true).
    pub join_new_reward_models: Option<bool>,
    /// Divide contexts by their L2 norm (default false).
    pub l2_normalize_context: Option<bool>,
    /// Random projection dimension (0, the default: off).
    pub projection_dim: Option<usize>,
    /// Decisions kept awaiting feedback per router (oldest evicted beyond; default 100000).
    pub max_pending_decisions: Option<usize>,
    /// Seconds a decision waits for feedback before it is evicted (default 3600).
    pub pending_ttl_seconds: Option<u64>,
    /// An encoder the server serves: contexts come from each query's prompt (`context_dim`
    /// is the encoder's dimension). Default: none, clients send contexts.
    pub encoder: Option<String>,
    /// The reward the linear arms start at: they learn `reward − reward_center` (default
    /// 0.5, the middle of the normalized scale; `laser_reference`: 0, the paper's).
    pub reward_center: Option<f64>,
    /// Query categories appended to each context as one-hot slots (default: none; at most
    /// 32 names of 1 to 64 bytes).
    pub context_categories: Option<Vec<String>>,
    /// A named set of settings under this patch's own fields ([`Preset`]).
    pub preset: Option<Preset>,
}

impl RouterSettingsPatch {
    /// The settings this patch names: each field from this patch, else from its preset,
    /// else from `defaults`, else from their preset, else LASeR's default. Policy and
    /// normalization parameters are filled the same way whichever patch names the policy.
    /// Ranges are checked by [`RouterSettings::validate`].
    pub fn apply(&self, defaults: &RouterSettingsPatch) -> RouterSettings {
        let laser = RouterSettings::default();
        let own_preset = self.preset.map(Preset::patch).unwrap_or_default();
        let defaults_preset = defaults.preset.map(Preset::patch).unwrap_or_default();
        macro_rules! pick {
            ($field:ident) => {
                self.$field
                    .clone()
                    .or_else(|| own_preset.$field.clone())
                    .or_else(|| defaults.$field.clone())
                    .or_else(|| defaults_preset.$field.clone())
            };
        }
        let policy = match pick!(policy).unwrap_or(laser.policy.kind()) {
            PolicyKind::Linucb => Policy::LinUcb,
            PolicyKind::Random => Policy::Random,
            PolicyKind::RoundRobin => Policy::RoundRobin,
            PolicyKind::Fixed => Policy::Fixed {
                reward_model: pick!(fixed_reward_model).unwrap_or_default(),
            },
            PolicyKind::Ensemble => Policy::Ensemble,
            PolicyKind::Thompson => Policy::LinTs,
            PolicyKind::Offline => Policy::Offline,
            PolicyKind::Exp3 => Policy::Exp3 {
                gamma: pick!(exp3_gamma).unwrap_or(DEFAULT_EXP3_GAMMA),
            },
            PolicyKind::AgreementEnsemble => Policy::AgreementEnsemble,
        };
        let normalization = match pick!(normalization).unwrap_or(NormalizationKind::Quantile) {
            NormalizationKind::None => Normalization::None,
            NormalizationKind::Quantile => {
                let Normalization::Quantile { low, high, .. } = Normalization::LASER else {
                    unreachable!("LASeR normalizes by quantiles")
                };
                let (low, high) = (
                    pick!(quantile_low).unwrap_or(low),
                    pick!(quantile_high).unwrap_or(high),
                );
                let window = match pick!(reward_window).unwrap_or(0) {
                    0 => None,
                    window => Some(window),
                };
                match pick!(first_reward).unwrap_or(DEFAULT_FIRST_REWARD) {
                    FirstReward::Raw => Normalization::Quantile { low, high, window },
                    FirstReward::Neutral => {
                        Normalization::QuantileNeutralStart { low, high, window }
                    }
                    FirstReward::Wait => Normalization::QuantileWait {
                        low,
                        high,
                        window,
                        wait: pick!(first_reward_wait).unwrap_or(DEFAULT_FIRST_REWARD_WAIT),
                    },
                }
            }
        };
        RouterSettings {
            context_dim: pick!(context_dim).unwrap_or(laser.context_dim),
            policy,
            alpha: pick!(alpha).unwrap_or(laser.alpha),
            l2_lambda: pick!(l2_lambda).unwrap_or(laser.l2_lambda),
            normalization,
            reward_is_normalized: pick!(reward_is_normalized).unwrap_or(laser.reward_is_normalized),
            default_mode: pick!(default_mode).unwrap_or(laser.default_mode),
            seed: pick!(seed).unwrap_or(laser.seed),
            reward_models: pick!(reward_models),
            join_new_reward_models: pick!(join_new_reward_models)
                .unwrap_or(laser.join_new_reward_models),
            l2_normalize_context: pick!(l2_normalize_context).unwrap_or(laser.l2_normalize_context),
            projection_dim: pick!(projection_dim).unwrap_or(laser.projection_dim),
            max_pending_decisions: pick!(max_pending_decisions)
                .unwrap_or(laser.max_pending_decisions),
            pending_ttl: pick!(pending_ttl_seconds)
                .map(Duration::from_secs)
                .unwrap_or(laser.pending_ttl),
            encoder: pick!(encoder),
            reward_center: pick!(reward_center).unwrap_or(laser.reward_center),
            context_categories: pick!(context_categories).unwrap_or(laser.context_categories),
        }
    }

    /// The settings with nothing but `defaults` and LASeR's defaults.
    pub fn resolve(&self) -> RouterSettings {
        self.apply(&RouterSettingsPatch::default())
    }
}

/// Exploration rate of the `exp3` policy when none is given.
pub const DEFAULT_EXP3_GAMMA: f64 = 0.1;
/// The quantile normalization's first reward when nothing sets it: neutral, so every reward
/// an arm gets is on the normalized scale from the first feedback on (a raw first loss, as the
/// reference code feeds it, sits on another scale than every later reward; the
/// `laser_reference` preset keeps it). Measured on the closed loop (docs/learning.md): no
/// accuracy difference either way (−0.015 ± 0.019 over 150 steps, −0.007 ± 0.010 over 32
/// decisions, paired), so the scale argument decides.
pub const DEFAULT_FIRST_REWARD: FirstReward = FirstReward::Neutral;
/// Where the linear arms start when nothing sets `reward_center`: 0.5, the neutral reward.
/// LinUCB's ridge prior at 0 made every uninformative reward (0.5) raise the most-picked
/// arm, starving another in 30 of 50 32-decision runs of the closed loop; centred, 1 of 50,
/// accuracy within noise on both loops (docs/learning.md, "Why short runs starve an arm").
pub const DEFAULT_REWARD_CENTER: f64 = 0.5;

impl RouterSettings {
    /// The settings keys whose values differ between `self` and `other`, in key order.
    pub fn differences(&self, other: &RouterSettings) -> Vec<&'static str> {
        let (a, b) = (
            RouterSettingsPatch::from(self),
            RouterSettingsPatch::from(other),
        );
        let mut differ = Vec::new();
        macro_rules! compare {
            ($($field:ident),*) => {
                $(if a.$field != b.$field {
                    differ.push(stringify!($field));
                })*
            };
        }
        compare!(
            context_dim,
            policy,
            fixed_reward_model,
            exp3_gamma,
            alpha,
            l2_lambda,
            normalization,
            quantile_low,
            quantile_high,
            reward_window,
            first_reward,
            first_reward_wait,
            reward_is_normalized,
            default_mode,
            seed,
            reward_models,
            join_new_reward_models,
            l2_normalize_context,
            projection_dim,
            max_pending_decisions,
            pending_ttl_seconds,
            encoder,
            reward_center,
            context_categories
        );
        differ
    }
}

impl From<&RouterSettings> for RouterSettingsPatch {
    /// A patch that sets every field to `settings` (`apply` gives `settings` back).
    fn from(settings: &RouterSettings) -> Self {
        let (fixed_reward_model, exp3_gamma) = match &settings.policy {
            Policy::Fixed { reward_model } => (Some(reward_model.clone()), None),
            Policy::Exp3 { gamma } => (None, Some(*gamma)),
            _ => (None, None),
        };
        let (normalization, quantile_low, quantile_high, reward_window) =
            match settings.normalization.quantile() {
                None => (NormalizationKind::None, None, None, None),
                Some((low, high, window)) => (
                    NormalizationKind::Quantile,
                    Some(low),
                    Some(high),
                    Some(window.unwrap_or(0)),
                ),
            };
        Self {
            context_dim: Some(settings.context_dim),
            policy: Some(settings.policy.kind()),
            fixed_reward_model,
            exp3_gamma,
            alpha: Some(settings.alpha),
            l2_lambda: Some(settings.l2_lambda),
            normalization: Some(normalization),
            quantile_low,
            quantile_high,
            reward_window,
            first_reward: Some(settings.first_reward()),
            first_reward_wait: settings.first_reward_wait(),
            reward_is_normalized: Some(settings.reward_is_normalized),
            default_mode: Some(settings.default_mode),
            seed: Some(settings.seed),
            reward_models: settings.reward_models.clone(),
            join_new_reward_models: Some(settings.join_new_reward_models),
            l2_normalize_context: Some(settings.l2_normalize_context),
            projection_dim: Some(settings.projection_dim),
            max_pending_decisions: Some(settings.max_pending_decisions),
            pending_ttl_seconds: Some(settings.pending_ttl.as_secs()),
            encoder: settings.encoder.clone(),
            reward_center: Some(settings.reward_center),
            context_categories: Some(settings.context_categories.clone()),
            preset: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laser_reference_is_the_reference_code() {
        let settings = RouterSettingsPatch {
            preset: Some(Preset::LaserReference),
            ..RouterSettingsPatch::default()
        }
        .resolve();
        assert_eq!(settings.policy, Policy::LinUcb);
        assert_eq!((settings.alpha, settings.l2_lambda), (0.1, 1.0));
        assert_eq!(settings.default_mode, SelectionMode::PerBatch);
        assert_eq!(
            settings.normalization,
            Normalization::Quantile {
                low: 20.0,
                high: 80.0,
                window: None
            }
        );
        assert!(!settings.l2_normalize_context && settings.projection_dim == 0);
        assert!(!settings.reward_is_normalized);
        assert_eq!(settings.first_reward(), FirstReward::Raw);
        let neutral = RouterSettingsPatch {
            preset: Some(Preset::LaserReference),
            first_reward: Some(FirstReward::Neutral),
            reward_window: Some(50),
            ..RouterSettingsPatch::default()
        }
        .resolve();
        assert_eq!(
            neutral.normalization,
            Normalization::QuantileNeutralStart {
                low: 20.0,
                high: 80.0,
                window: Some(50)
            }
        );
        assert_eq!(
            RouterSettingsPatch::from(&neutral).apply(&RouterSettingsPatch::default()),
            neutral,
            "the neutral start round-trips through a patch"
        );
    }

    #[test]
    fn waiting_for_n_rewards_is_a_first_reward_with_its_count() {
        let wait = |count: Option<usize>, window: Option<usize>| {
            RouterSettingsPatch {
                first_reward: Some(FirstReward::Wait),
                first_reward_wait: count,
                reward_window: window,
                ..RouterSettingsPatch::default()
            }
            .resolve()
        };
        let default = wait(None, None);
        assert_eq!(default.first_reward(), FirstReward::Wait);
        assert_eq!(default.first_reward_wait(), Some(DEFAULT_FIRST_REWARD_WAIT));
        let four = wait(Some(4), None);
        assert_eq!(
            four.normalization,
            Normalization::QuantileWait {
                low: 20.0,
                high: 80.0,
                window: None,
                wait: 4
            }
        );
        assert_eq!(
            RouterSettingsPatch::from(&four).apply(&RouterSettingsPatch::default()),
            four
        );
        assert_eq!(four.differences(&default), vec!["first_reward_wait"]);
        let refused = |settings: RouterSettings| settings.validate(4096).unwrap_err().to_string();
        assert!(refused(wait(Some(1), None)).contains("first_reward_wait"));
        assert!(refused(wait(Some(64), Some(32))).contains("reward_window 32"));
        assert!(wait(Some(32), Some(32)).validate(4096).is_ok());
    }

    #[test]
    fn arms_start_at_the_neutral_reward_except_in_the_reference_preset() {
        let default = RouterSettingsPatch::default().resolve();
        assert_eq!(default.reward_center, DEFAULT_REWARD_CENTER);
        let reference = RouterSettingsPatch {
            preset: Some(Preset::LaserReference),
            ..RouterSettingsPatch::default()
        }
        .resolve();
        assert_eq!(reference.reward_center, 0.0);
        assert_eq!(
            reference.differences(&RouterSettings {
                reward_center: 0.5,
                ..reference.clone()
            }),
            vec!["reward_center"]
        );
        assert_eq!(
            RouterSettingsPatch::from(&reference).apply(&RouterSettingsPatch::default()),
            reference
        );
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let refused = RouterSettings {
                reward_center: bad,
                ..default.clone()
            }
            .validate(4096)
            .unwrap_err()
            .to_string();
            assert!(
                refused.contains("reward_center") && refused.contains("finite"),
                "{refused}"
            );
        }
        assert!(
            RouterSettings {
                reward_center: -3.0,
                ..default
            }
            .validate(4096)
            .is_ok()
        );
    }

    #[test]
    fn each_layer_fields_beat_its_preset_and_the_layer_below() {
        // The config names the preset and an α; a request names a seed: the config's α wins
        // over its own preset, the preset's mode over LASeR's default.
        let config = RouterSettingsPatch {
            preset: Some(Preset::LaserReference),
            alpha: Some(0.7),
            default_mode: None,
            ..RouterSettingsPatch::default()
        };
        let request = RouterSettingsPatch {
            seed: Some(9),
            ..RouterSettingsPatch::default()
        };
        let settings = request.apply(&config);
        assert_eq!(settings.alpha, 0.7);
        assert_eq!(settings.default_mode, SelectionMode::PerBatch);
        assert_eq!(settings.seed, 9);
        // A request naming the preset beats the config's own fields.
        let request = RouterSettingsPatch {
            preset: Some(Preset::LaserReference),
            ..RouterSettingsPatch::default()
        };
        let config = RouterSettingsPatch {
            alpha: Some(2.0),
            default_mode: Some(SelectionMode::PerQuery),
            ..RouterSettingsPatch::default()
        };
        let settings = request.apply(&config);
        assert_eq!(settings.alpha, 0.1);
        assert_eq!(settings.default_mode, SelectionMode::PerBatch);
        // Names round-trip.
        for name in Preset::NAMES {
            assert!(Preset::parse(name).is_some());
        }
        assert_eq!(Preset::parse("laser"), None);
    }
}
