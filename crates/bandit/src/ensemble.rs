//! The paper's "RM score ensemble" baseline: every RM scores the query's responses; each
//! RM's scores are normalized — by the RM's own `score_normalization` when its spec sets
//! one (affine, or its running mean/std), else standardized over the query's responses
//! (z-scores, so RMs on different scales weigh the same; an RM that scores all responses
//! equally contributes 0) — then averaged across RMs. Cost: O(K·n) per query.
//!
//! Every piece of the ensembles' arithmetic lives here: per-query z-scores, the affine map,
//! z-scores against an RM's running moments ([`RunningMoments`], Welford), the score mean
//! and the agreement vote. The server keeps each RM's running moments (`models`) and picks
//! the combination a decision asked for (`service`); neither computes.

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

/// `scale · s + shift` for each score: an RM whose scale is known.
pub fn affine(scores: &[f32], scale: f64, shift: f64) -> Vec<f32> {
    scores
        .iter()
        .map(|&s| (scale * s as f64 + shift) as f32)
        .collect()
}

/// Count, mean and sum of squared deviations of every finite score an RM returned
/// (Welford's update: one pass, numerically stable). O(1) memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunningMoments {
    count: u64,
    mean: f64,
    m2: f64,
}

impl RunningMoments {
    /// Fold `scores` in (non-finite scores are skipped).
    pub fn observe(&mut self, scores: &[f32]) {
        for &score in scores.iter().filter(|s| s.is_finite()) {
            self.count += 1;
            let delta = score as f64 - self.mean;
            self.mean += delta / self.count as f64;
            self.m2 += delta * (score as f64 - self.mean);
        }
    }

    /// The sample standard deviation (0 before two scores).
    pub fn std(&self) -> f64 {
        if self.count > 1 {
            (self.m2 / (self.count - 1) as f64).sqrt()
        } else {
            0.0
        }
    }

    /// `scores` as z-scores against the moments so far (all 0 before two distinct scores).
    pub fn z_scores(&self, scores: &[f32]) -> Vec<f32> {
        z_scores(scores, self.mean, self.std())
    }
}

/// The RM agreement ensemble: each RM votes on each pair of responses (its higher score
/// wins; equal scores give each half a vote) and a response's score is the share of the
/// votes it won, over every RM and every other response: in [0, 1], 1 when every RM ranks
/// it above every other response, 0.5 for a lone response. Only rankings count: an RM
/// with huge score gaps weighs no more than one with tiny gaps.
pub fn agreement(scores_per_reward_model: &[Vec<f32>]) -> Vec<f32> {
    let Some(first) = scores_per_reward_model.first() else {
        return Vec::new();
    };
    let n = first.len();
    if n < 2 {
        return vec![0.5; n];
    }
    let mut won = vec![0f64; n];
    for scores in scores_per_reward_model {
        assert_eq!(scores.len(), n, "every RM scores every response");
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    won[i] += match scores[i].partial_cmp(&scores[j]) {
                        Some(std::cmp::Ordering::Greater) => 1.0,
                        Some(std::cmp::Ordering::Equal) => 0.5,
                        _ => 0.0,
                    };
                }
            }
        }
    }
    let votes = (scores_per_reward_model.len() * (n - 1)) as f64;
    won.into_iter().map(|w| (w / votes) as f32).collect()
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
    fn agreement_is_a_majority_vote_that_ignores_scale() {
        // Two RMs prefer response 0 by a hair; one prefers response 1 by a mile.
        let combined = agreement(&[vec![0.51, 0.50], vec![2.0, 1.9], vec![-100.0, 100.0]]);
        assert_eq!(combined, vec![2.0 / 3.0, 1.0 / 3.0]);
        // Any order-preserving change of one RM's scores changes nothing.
        let per_rm = [vec![0.3, 0.2, 0.1, 0.4], vec![1.0, 3.0, 2.0, 0.0]];
        let stretched = [
            per_rm[0].iter().map(|s| (s * 50.0f32).exp()).collect(),
            per_rm[1].clone(),
        ];
        assert_eq!(agreement(&per_rm), agreement(&stretched));
    }

    #[test]
    fn agreement_shares_ties_and_is_one_when_unanimous() {
        assert_eq!(agreement(&[vec![1.0, 0.0], vec![5.0, 3.0]]), vec![1.0, 0.0]);
        assert_eq!(agreement(&[vec![1.0, 1.0, 0.0]]), vec![0.75, 0.75, 0.0]);
        assert_eq!(agreement(&[vec![7.0]]), vec![0.5]);
        assert!(agreement(&[]).is_empty());
        // The votes of all responses always sum to n/2 per RM and pair: a share.
        let votes = agreement(&[vec![0.1, 0.9, 0.5, 0.5], vec![3.0, 1.0, 2.0, 0.0]]);
        assert!((votes.iter().sum::<f32>() - 2.0).abs() < 1e-6, "{votes:?}");
    }

    #[test]
    fn mean_of_already_normalized_scores() {
        assert_eq!(mean(&[vec![1.0, 3.0], vec![3.0, 5.0]]), vec![2.0, 4.0]);
        assert!(mean(&[]).is_empty());
    }

    #[test]
    fn running_moments_match_the_two_pass_formulas() {
        let seen = [1.0f32, 4.0, f32::NAN, 2.0, 7.0];
        let mut moments = RunningMoments::default();
        moments.observe(&seen[..2]);
        moments.observe(&seen[2..]);
        let finite = [1.0f64, 4.0, 2.0, 7.0];
        let mean = finite.iter().sum::<f64>() / 4.0;
        let std = (finite.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
        assert!((moments.std() - std).abs() < 1e-12);
        let z = moments.z_scores(&[mean as f32 + std as f32]);
        assert!((z[0] - 1.0).abs() < 1e-6, "{z:?}");
        assert_eq!(RunningMoments::default().z_scores(&[3.0]), vec![0.0]);
        assert_eq!(affine(&[1.0, -2.0], 2.0, 0.5), vec![2.5, -3.5]);
    }

    #[test]
    fn constant_scores_contribute_nothing() {
        assert_eq!(combine(&[vec![3.0, 3.0], vec![1.0, 0.0]]), vec![0.5, -0.5]);
    }
}
