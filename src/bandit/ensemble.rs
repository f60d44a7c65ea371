//! The paper's "RM score ensemble" baseline: every RM scores the query's responses; each
//! RM's scores are normalized — by the RM's own `score_normalization` when its spec sets
//! one (affine, or its running mean/std), else standardized over the query's responses
//! (z-scores, so RMs on different scales weigh the same; an RM that scores all responses
//! equally contributes 0) — then averaged across RMs. Cost: O(K·n) per query.

/// Combine per-RM score vectors (each of the same length n) into one: z-scores over the
/// query's responses, averaged.
pub fn combine(scores_per_reward_model: &[Vec<f32>]) -> Vec<f32> {
    let standardized: Vec<Vec<f32>> = scores_per_reward_model
        .iter()
        .map(|s| standardize(s))
        .collect();
    mean(&standardized)
}

/// z-scores of one RM's scores over the query's responses (all 0 when they are equal).
pub fn standardize(scores: &[f32]) -> Vec<f32> {
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n;
    let std = (scores
        .iter()
        .map(|&s| (s as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    z_scores(scores, mean, std)
}

/// `(s - mean) / std` for each score; all 0 when `std` is 0 (nothing to tell apart).
pub fn z_scores(scores: &[f32], mean: f64, std: f64) -> Vec<f32> {
    scores
        .iter()
        .map(|&s| {
            if std > 0.0 {
                ((s as f64 - mean) / std) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// Element-wise mean of already normalized score vectors (each of the same length).
pub fn mean(normalized: &[Vec<f32>]) -> Vec<f32> {
    let Some(first) = normalized.first() else {
        return Vec::new();
    };
    let mut total = vec![0f64; first.len()];
    for scores in normalized {
        assert_eq!(scores.len(), total.len(), "every RM scores every response");
        total
            .iter_mut()
            .zip(scores)
            .for_each(|(t, &s)| *t += s as f64);
    }
    total
        .into_iter()
        .map(|t| (t / normalized.len() as f64) as f32)
        .collect()
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
    fn mean_of_already_normalized_scores() {
        assert_eq!(mean(&[vec![1.0, 3.0], vec![3.0, 5.0]]), vec![2.0, 4.0]);
        assert!(mean(&[]).is_empty());
    }

    #[test]
    fn constant_scores_contribute_nothing() {
        assert_eq!(combine(&[vec![3.0, 3.0], vec![1.0, 0.0]]), vec![0.5, -0.5]);
    }
}
