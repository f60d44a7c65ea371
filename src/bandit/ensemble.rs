//! The paper's "RM score ensemble" baseline: every RM scores the query's responses; each
//! RM's scores are standardized over the query's responses (z-scores, so RMs on different
//! scales weigh the same; an RM that scores all responses equally contributes 0), then
//! averaged across RMs. Cost: O(K·n) per query.

/// Combine per-RM score vectors (each of the same length n) into one.
pub fn combine(scores_per_reward_model: &[Vec<f32>]) -> Vec<f32> {
    let Some(first) = scores_per_reward_model.first() else {
        return Vec::new();
    };
    let n = first.len();
    let mut combined = vec![0f64; n];
    for scores in scores_per_reward_model {
        assert_eq!(scores.len(), n, "every RM scores every response");
        let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n as f64;
        let variance = scores
            .iter()
            .map(|&s| (s as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        let std = variance.sqrt();
        for (total, &score) in combined.iter_mut().zip(scores) {
            if std > 0.0 {
                *total += (score as f64 - mean) / std;
            }
        }
    }
    let count = scores_per_reward_model.len() as f64;
    combined.into_iter().map(|v| (v / count) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_does_not_matter_only_ranking_strength() {
        // RM a prefers response 0 on a small scale; RM b prefers response 1 on a huge scale.
        let combined = combine(&[vec![0.2, 0.1, 0.0], vec![0.0, 1000.0, 500.0]]);
        // z(a) = [1.22, 0, -1.22], z(b) = [-1.22, 1.22, 0]
        assert!((combined[0] - 0.0).abs() < 1e-6);
        assert!(combined[1] > combined[2]);
        assert!((combined[1] - 0.6124).abs() < 1e-3, "{combined:?}");
    }

    #[test]
    fn constant_scores_contribute_nothing() {
        assert_eq!(combine(&[vec![3.0, 3.0], vec![1.0, 0.0]]), vec![0.5, -0.5]);
    }
}
