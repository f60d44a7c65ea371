//! The one place a router dispatches on its [`Policy`]: what a policy precomputes for a
//! request ([`Plan`]), how it chooses arms for one decision, what state a new arm gets,
//! how feedback updates the arms, and the selection probabilities GetRouter shows.
//!
//! Cost per request (K candidate arms, G decisions, d arm dimension): LinUCB and linear
//! Thompson sampling O(K·d²·G),
//! reading each arm's factor once (one blocked triangular solve per arm); Exp3 O(K);
//! the others O(1) per decision. Feedback: LinUCB one rank-r update per arm, O(d²·r);
//! Exp3 O(1) per decision.

use std::collections::BTreeMap;

use faer::Mat;
use rand::Rng;
use rand::rngs::StdRng;

use crate::bandit::{self, ArmEstimate, LinUcbArm, exp3};
use crate::routers::decisions::events::Combination;
use crate::routers::error::RouterError;
use crate::routers::instance::arm::{Arm, Candidate};
use crate::routers::instance::settings::{Policy, RouterSettings};

/// What a policy computed once for all decisions of a request.
pub(in crate::routers) enum Plan {
    /// Every candidate's estimate for every decision: `[candidate][decision]`.
    LinUcb {
        estimates: Vec<Vec<ArmEstimate>>,
    },
    /// Linear Thompson sampling: the same per-candidate estimates (mean x·θ, spread
    /// v·sqrt(xᵀA⁻¹x) with v = α); each decision draws one score per candidate from its
    /// posterior, `mean + spread·z` with z ~ N(0, 1).
    LinTs {
        estimates: Vec<Vec<ArmEstimate>>,
    },
    Random,
    /// Decisions recorded before this request (the turn of its first decision).
    RoundRobin {
        turn: u64,
    },
    /// The candidate index of the fixed RM.
    Fixed {
        candidate: usize,
    },
    Ensemble,
    /// Selection probability per candidate.
    Exp3 {
        probabilities: Vec<f64>,
    },
}

/// One decision's choice, by candidate index.
pub(in crate::routers) struct Chosen {
    pub(in crate::routers) candidates: Vec<usize>,
    /// The probability the choice was drawn with (Exp3; 1 otherwise).
    pub(in crate::routers) probability: f64,
    /// Every candidate's estimate of `reward − reward_center` (x·θ), when asked for (LinUCB,
    /// Thompson: its draw, offline); the router reports them on the rewards' scale.
    pub(in crate::routers) explained: Vec<(String, ArmEstimate)>,
}

impl Plan {
    /// Precompute for `contexts` (one per decision, the arms' dimension).
    pub(in crate::routers) fn new(
        router: &str,
        settings: &RouterSettings,
        arms: &[Arm],
        candidates: &[Candidate],
        contexts: &[Vec<f64>],
        decisions_recorded: u64,
    ) -> Result<Self, RouterError> {
        Ok(match &settings.policy {
            Policy::LinUcb | Policy::LinTs | Policy::Offline => {
                // Offline routes on the prior's means alone: no exploration bonus.
                let alpha = match settings.policy {
                    Policy::Offline => 0.0,
                    _ => settings.alpha,
                };
                let batch = Mat::from_fn(settings.arm_dim(), contexts.len(), |i, j| contexts[j][i]);
                let estimates = candidates
                    .iter()
                    .map(|candidate| match candidate.arm {
                        Some(arm) => linucb(&arms[arm]).estimate_batch(batch.as_ref(), alpha),
                        // An arm about to join is fresh (θ = 0, A = λI): mean 0, bonus α·|x|/√λ.
                        None => contexts
                            .iter()
                            .map(|x| {
                                let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
                                let bonus = alpha * norm / settings.l2_lambda.sqrt();
                                ArmEstimate {
                                    mean: 0.0,
                                    bonus,
                                    ucb: bonus,
                                }
                            })
                            .collect(),
                    })
                    .collect();
                match settings.policy {
                    Policy::LinTs => Plan::LinTs { estimates },
                    _ => Plan::LinUcb { estimates },
                }
            }
            Policy::Random => Plan::Random,
            Policy::RoundRobin => Plan::RoundRobin {
                turn: decisions_recorded,
            },
            Policy::Fixed { reward_model } => Plan::Fixed {
                candidate: candidates
                    .iter()
                    .position(|c| &c.reward_model == reward_model)
                    .ok_or_else(|| RouterError::FixedRewardModelUnavailable {
                        router: router.to_string(),
                        reward_model: reward_model.clone(),
                    })?,
            },
            Policy::Ensemble | Policy::AgreementEnsemble => Plan::Ensemble,
            Policy::Exp3 { gamma } => {
                let weights: Vec<f64> = candidates
                    .iter()
                    .map(|c| c.arm.map_or(0.0, |a| arms[a].log_weight))
                    .collect();
                Plan::Exp3 {
                    probabilities: exp3::probabilities(&weights, *gamma),
                }
            }
        })
    }

    /// The choice for decision `decision` of the request.
    pub(in crate::routers) fn choose(
        &self,
        decision: usize,
        candidates: &[Candidate],
        rng: &mut StdRng,
        explain: bool,
    ) -> Chosen {
        let single = |candidate| Chosen {
            candidates: vec![candidate],
            probability: 1.0,
            explained: Vec::new(),
        };
        match self {
            Plan::LinUcb { estimates } => {
                let per_candidate: Vec<ArmEstimate> =
                    estimates.iter().map(|per_arm| per_arm[decision]).collect();
                highest(candidates, per_candidate, rng, explain)
            }
            Plan::LinTs { estimates } => {
                let sampled: Vec<ArmEstimate> = estimates
                    .iter()
                    .map(|per_arm| bandit::thompson_draw(per_arm[decision], rng))
                    .collect();
                highest(candidates, sampled, rng, explain)
            }
            Plan::Random => single(rng.random_range(0..candidates.len())),
            Plan::RoundRobin { turn } => {
                single(((*turn as usize).wrapping_add(decision)) % candidates.len())
            }
            Plan::Fixed { candidate } => single(*candidate),
            Plan::Ensemble => Chosen {
                candidates: (0..candidates.len()).collect(),
                probability: 1.0,
                explained: Vec::new(),
            },
            Plan::Exp3 { probabilities } => {
                let index = exp3::sample(probabilities, rng);
                Chosen {
                    probability: probabilities[index],
                    ..single(index)
                }
            }
        }
    }
}

/// The candidate with the highest `ucb` (a UCB or a posterior draw), every candidate's
/// estimate kept when `explain`.
fn highest(
    candidates: &[Candidate],
    estimates: Vec<ArmEstimate>,
    rng: &mut StdRng,
    explain: bool,
) -> Chosen {
    let chosen = bandit::select_arm(&estimates, rng).expect("candidates exist");
    Chosen {
        candidates: vec![chosen],
        probability: 1.0,
        explained: if explain {
            candidates
                .iter()
                .zip(estimates)
                .map(|(c, e)| (c.reward_model.clone(), e))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// How decisions of `policy` turn their RMs' scores into one score per response.
pub(in crate::routers) fn combination(policy: &Policy) -> Combination {
    match policy {
        Policy::Ensemble => Combination::ScoreMean,
        Policy::AgreementEnsemble => Combination::Agreement,
        Policy::LinUcb
        | Policy::LinTs
        | Policy::Offline
        | Policy::Random
        | Policy::RoundRobin
        | Policy::Fixed { .. }
        | Policy::Exp3 { .. } => Combination::Single,
    }
}

/// The LinUCB state a new arm starts with (`A = λI`, `b = 0`), for LinUCB routers.
pub(in crate::routers) fn new_arm_model(settings: &RouterSettings) -> Option<LinUcbArm> {
    uses_linear_arms(&settings.policy)
        .then(|| LinUcbArm::new(settings.arm_dim(), settings.l2_lambda))
}

/// Whether an arm restored from a snapshot has the state its policy needs.
pub(in crate::routers) fn arm_model_fits(
    settings: &RouterSettings,
    linucb: Option<&LinUcbArm>,
) -> bool {
    !uses_linear_arms(&settings.policy) || linucb.is_some()
}

/// Whether `policy` keeps a ridge system per arm (LinUCB, linear Thompson sampling and
/// offline share the statistics; only the choice and the updates differ).
fn uses_linear_arms(policy: &Policy) -> bool {
    matches!(policy, Policy::LinUcb | Policy::LinTs | Policy::Offline)
}

/// Feedback gathered over one request's decisions, applied by [`Updates::apply`].
#[derive(Default)]
pub(in crate::routers) struct Updates {
    /// LinUCB: the (context, reward) pairs credited to each arm, applied as one rank-r
    /// update per arm.
    contexts: BTreeMap<usize, Vec<(Vec<f64>, f64)>>,
}

impl Updates {
    /// Credit `reward` to the single arm `arm` for a decision made at `context` with
    /// `probability` out of `arm_count` arms.
    pub(in crate::routers) fn credit(
        &mut self,
        settings: &RouterSettings,
        arms: &mut [Arm],
        arm: usize,
        context: Vec<f64>,
        (probability, arm_count): (f64, usize),
        reward: f64,
    ) {
        match settings.policy {
            Policy::LinUcb | Policy::LinTs => self
                .contexts
                .entry(arm)
                .or_default()
                .push((context, reward)),
            Policy::Exp3 { gamma } => {
                arms[arm].log_weight +=
                    exp3::log_weight_increment(reward, probability, arm_count, gamma);
            }
            // Offline: the prior alone decides; feedback only counts.
            Policy::Offline
            | Policy::Random
            | Policy::RoundRobin
            | Policy::Fixed { .. }
            | Policy::Ensemble
            | Policy::AgreementEnsemble => {}
        }
    }

    /// Apply the gathered LinUCB updates, arm by arm in index order; each arm learns
    /// `reward − reward_center`.
    pub(in crate::routers) fn apply(self, settings: &RouterSettings, arms: &mut [Arm]) {
        let dim = settings.arm_dim();
        for (arm, credited) in self.contexts {
            let batch = Mat::from_fn(dim, credited.len(), |i, j| credited[j].0[i]);
            let rewards: Vec<f64> = credited
                .iter()
                .map(|(_, reward)| *reward - settings.reward_center)
                .collect();
            arms[arm]
                .linucb
                .as_mut()
                .expect("LinUCB routers keep LinUCB arms")
                .update_batch(batch.as_ref(), &rewards);
        }
    }
}

/// Selection probability of each available arm now (Exp3; empty otherwise).
pub(in crate::routers) fn probabilities(
    settings: &RouterSettings,
    arms: &[Arm],
    available: &[usize],
) -> Vec<f64> {
    match settings.policy {
        Policy::Exp3 { gamma } if !available.is_empty() => {
            let weights: Vec<f64> = available.iter().map(|&a| arms[a].log_weight).collect();
            exp3::probabilities(&weights, gamma)
        }
        _ => Vec::new(),
    }
}

fn linucb(arm: &Arm) -> &LinUcbArm {
    arm.linucb
        .as_ref()
        .expect("LinUCB routers keep LinUCB arms")
}
