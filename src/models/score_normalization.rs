//! An RM's scores on the ensemble's common scale, as its spec's `score_normalization`
//! says: z-scores over the query's responses, an affine map, or z-scores against the
//! running mean and standard deviation of every score the RM returned (Welford).
//! Both z-score forms use [`crate::bandit::ensemble::z_scores`]. Cost: O(n) per query.

use std::sync::Mutex;

use super::spec::ScoreNormalization;
use crate::bandit::ensemble;

/// Running (count, mean, M2) of an RM's finite scores.
#[derive(Default)]
pub struct RunningScores {
    state: Mutex<(u64, f64, f64)>,
}

impl RunningScores {
    /// Fold `scores` into the running statistics (non-finite scores are skipped).
    pub fn observe(&self, scores: &[f32]) {
        let mut running = self.state.lock().expect("running stats lock poisoned");
        for &score in scores.iter().filter(|s| s.is_finite()) {
            let (count, mean, m2) = &mut *running;
            *count += 1;
            let delta = score as f64 - *mean;
            *mean += delta / *count as f64;
            *m2 += delta * (score as f64 - *mean);
        }
    }

    /// `scores` normalized by `normalization`.
    pub fn normalize(&self, normalization: ScoreNormalization, scores: &[f32]) -> Vec<f32> {
        match normalization {
            ScoreNormalization::PerQuery => ensemble::standardize(scores),
            ScoreNormalization::Affine { scale, shift } => scores
                .iter()
                .map(|&s| (scale * s as f64 + shift) as f32)
                .collect(),
            ScoreNormalization::Running => {
                let (count, mean, m2) = *self.state.lock().expect("running stats lock poisoned");
                let std = if count > 1 {
                    (m2 / (count - 1) as f64).sqrt()
                } else {
                    0.0
                };
                ensemble::z_scores(scores, mean, std)
            }
        }
    }
}
