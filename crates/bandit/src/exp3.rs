//! Exp3 (Auer et al. 2002), the paper's non-contextual baseline ("LASeR (Exp3)").
//!
//! Each arm has a log-weight; the selection probabilities over the K available arms are
//! `p_k = (1 − γ)·w_k / Σw + γ/K`. After a reward `r ∈ [0, 1]` for the arm chosen with
//! probability `p`, its log-weight grows by `γ·(r / p) / K` (importance-weighted). Log
//! weights are re-centred so they never overflow. Cost: O(K) per selection and update.

use rand::Rng;

/// Probabilities over the arms with `log_weights` (same order). `gamma` in (0, 1].
pub fn probabilities(log_weights: &[f64], gamma: f64) -> Vec<f64> {
    let count = log_weights.len() as f64;
    let max = log_weights
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = log_weights.iter().map(|w| (w - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|w| (1.0 - gamma) * w / total + gamma / count)
        .collect()
}

/// Sample an index from `probabilities` (which sum to 1).
pub fn sample<R: Rng + ?Sized>(probabilities: &[f64], rng: &mut R) -> usize {
    let mut remaining = rng.random_range(0.0..1.0);
    for (index, p) in probabilities.iter().enumerate() {
        if remaining < *p {
            return index;
        }
        remaining -= p;
    }
    probabilities.len() - 1
}

/// The log-weight increment for reward `reward` (clamped to [0, 1]) of an arm chosen with
/// probability `probability` among `arm_count` arms.
pub fn log_weight_increment(reward: f64, probability: f64, arm_count: usize, gamma: f64) -> f64 {
    gamma * (reward.clamp(0.0, 1.0) / probability) / arm_count as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn uniform_weights_give_uniform_probabilities() {
        let p = probabilities(&[0.0, 0.0, 0.0, 0.0], 0.1);
        assert!(p.iter().all(|&v| (v - 0.25).abs() < 1e-12));
    }

    #[test]
    fn probabilities_sum_to_one_and_keep_gamma_exploration() {
        let p = probabilities(&[50.0, 0.0, -3.0], 0.3);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p.iter().all(|&v| v >= 0.1 - 1e-12));
    }

    #[test]
    fn converges_to_the_best_arm_without_context() {
        let gamma = 0.1;
        let mut log_weights = vec![0.0; 3];
        let mut rng = StdRng::seed_from_u64(5);
        let mut picks = [0usize; 3];
        for round in 0..3000 {
            let p = probabilities(&log_weights, gamma);
            let arm = sample(&p, &mut rng);
            let reward = if arm == 2 { 0.9 } else { 0.2 };
            log_weights[arm] += log_weight_increment(reward, p[arm], 3, gamma);
            if round >= 2000 {
                picks[arm] += 1;
            }
        }
        assert!(picks[2] > 800, "{picks:?}");
    }
}
