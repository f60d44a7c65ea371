//! Pure bandit math: no clocks, no I/O, no async; randomness is injected.
//!
//! - [`linucb`]: one LinUCB arm (a Cholesky factor of its ridge system) and batched UCB
//!   estimates.
//! - [`normalizer`]: LASeR's reward normalization against the reward history.
//! - [`exp3`]: the non-contextual Exp3 baseline.
//! - [`labels`]: label feedback's reward, the pairwise agreement of scores with labels.
//! - [`ensemble`]: the score combinations of the RM score and RM agreement ensembles.
//! - [`context`]: per-router context preprocessing (L2 normalization, random projection).
//! - [`select_arm`]: argmax over arm estimates with seeded tie-breaking.
//! - [`thompson_draw`]: one draw from an arm's linear-Gaussian posterior at a context.
//!
//! Everything here is deterministic given its inputs, so routers can be replayed from a
//! log of events and tested against naive oracles.

pub mod context;
pub mod ensemble;
pub mod exp3;
pub mod factor_update;
pub mod labels;
pub mod linucb;
pub mod normalizer;

pub use linucb::{ArmEstimate, LinUcbArm, LinUcbArmData};
pub use normalizer::{Normalization, RewardNormalizer};

use rand::Rng;

/// Relative tolerance under which two UCB values count as a tie.
const TIE_TOLERANCE: f64 = 1e-12;

/// Index of the candidate with the highest UCB; ties (within a relative 1e-12) are broken
/// uniformly at random with `rng`, so fresh arms (all equal) are not always arm 0.
///
/// Returns `None` when `candidates` is empty. Cost: O(K).
pub fn select_arm<R: Rng + ?Sized>(candidates: &[ArmEstimate], rng: &mut R) -> Option<usize> {
    let best = candidates
        .iter()
        .map(|estimate| estimate.ucb)
        .fold(f64::NEG_INFINITY, f64::max);
    let threshold = best - TIE_TOLERANCE * best.abs().max(1.0);
    let tied: Vec<usize> = candidates
        .iter()
        .enumerate()
        .filter(|(_, estimate)| estimate.ucb >= threshold)
        .map(|(index, _)| index)
        .collect();
    match tied.len() {
        0 => None,
        1 => Some(tied[0]),
        n => Some(tied[rng.random_range(0..n)]),
    }
}

/// One linear Thompson sampling draw at a context from an arm's `estimate` (mean x·θ,
/// bonus v·sqrt(xᵀA⁻¹x)): the draw `mean + bonus·z`, z ~ N(0, 1) from `rng` (Box–Muller), in
/// `ucb`. For one context this is exactly a draw of x·θ̃ with θ̃ ~ N(θ, v²A⁻¹), without
/// sampling the d-dimensional θ̃. Cost: O(1).
pub fn thompson_draw<R: Rng + ?Sized>(estimate: ArmEstimate, rng: &mut R) -> ArmEstimate {
    ArmEstimate {
        ucb: estimate.mean + estimate.bonus * standard_normal(rng),
        ..estimate
    }
}

/// A standard normal draw (Box–Muller; `1 - u` keeps the logarithm's argument in (0, 1]).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn estimate(ucb: f64) -> ArmEstimate {
        ArmEstimate {
            mean: ucb,
            bonus: 0.0,
            ucb,
        }
    }

    #[test]
    fn picks_the_highest_ucb() {
        let mut rng = StdRng::seed_from_u64(7);
        let candidates = [estimate(0.1), estimate(0.9), estimate(0.5)];
        for _ in 0..20 {
            assert_eq!(select_arm(&candidates, &mut rng), Some(1));
        }
    }

    #[test]
    fn thompson_draws_follow_the_posterior_and_repeat_with_the_seed() {
        let estimate = ArmEstimate {
            mean: 0.3,
            bonus: 0.5,
            ucb: 0.8,
        };
        let mut rng = StdRng::seed_from_u64(11);
        let draws: Vec<f64> = (0..20_000)
            .map(|_| thompson_draw(estimate, &mut rng).ucb)
            .collect();
        let n = draws.len() as f64;
        let mean = draws.iter().sum::<f64>() / n;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
        // Standard errors: mean 0.5/sqrt(n) ≈ 0.0035, variance ≈ 0.25·sqrt(2/n) ≈ 0.0025.
        assert!((mean - 0.3).abs() < 0.015, "mean {mean}");
        assert!((var - 0.25).abs() < 0.012, "variance {var}");
        let again: Vec<f64> = {
            let mut rng = StdRng::seed_from_u64(11);
            (0..5)
                .map(|_| thompson_draw(estimate, &mut rng).ucb)
                .collect()
        };
        assert_eq!(again, draws[..5]);
        // No spread, no randomness: the draw is the mean.
        let certain = ArmEstimate {
            bonus: 0.0,
            ..estimate
        };
        assert_eq!(thompson_draw(certain, &mut rng).ucb, 0.3);
    }

    #[test]
    fn empty_candidates_select_nothing() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(select_arm(&[], &mut rng), None);
    }

    #[test]
    fn ties_are_broken_by_the_seeded_rng_not_always_arm_zero() {
        let candidates = [estimate(0.5), estimate(0.5), estimate(0.5), estimate(0.1)];
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = [0usize; 4];
        for _ in 0..3000 {
            counts[select_arm(&candidates, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0);
        for count in &counts[..3] {
            assert!(
                (800..1200).contains(count),
                "uneven tie-breaking: {counts:?}"
            );
        }
        // Same seed, same choices.
        let picks = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| select_arm(&candidates, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(3), picks(3));
    }
}
