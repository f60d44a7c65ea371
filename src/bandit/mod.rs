//! Pure bandit math: no clocks, no I/O, no async; randomness is injected.
//!
//! - [`linucb`]: one LinUCB arm (a Cholesky factor of its ridge system) and batched UCB
//!   estimates.
//! - [`normalizer`]: LASeR's reward normalization against the reward history.
//! - [`exp3`]: the non-contextual Exp3 baseline.
//! - [`ensemble`]: the score combinations of the RM score and RM agreement ensembles.
//! - [`context`]: per-router context preprocessing (L2 normalization, random projection).
//! - [`select_arm`]: argmax over arm estimates with seeded tie-breaking.
//!
//! Everything here is deterministic given its inputs, so routers can be replayed from a
//! log of events and tested against naive oracles.

pub mod context;
pub mod ensemble;
pub mod exp3;
pub mod factor_update;
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
