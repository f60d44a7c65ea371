//! An RM's scores on the ensemble's common scale, as its spec's `score_normalization`
//! says: z-scores over the query's responses, an affine map, or z-scores against the
//! running moments of every score the RM returned. This module owns the RM's running
//! moments and the dispatch on the spec; the arithmetic is [`crate::bandit::ensemble`]'s.
//! Cost: O(n) per query.

use std::sync::Mutex;

use super::spec::ScoreNormalization;
use crate::bandit::ensemble::{self, RunningMoments};

/// The running moments of an RM's finite scores.
#[derive(Default)]
pub struct RunningScores {
    moments: Mutex<RunningMoments>,
}

impl RunningScores {
    /// Fold `scores` into the running moments (non-finite scores are skipped).
    pub fn observe(&self, scores: &[f32]) {
        self.moments
            .lock()
            .expect("running stats lock poisoned")
            .observe(scores);
    }

    /// `scores` normalized by `normalization`.
    pub fn normalize(&self, normalization: ScoreNormalization, scores: &[f32]) -> Vec<f32> {
        match normalization {
            ScoreNormalization::PerQuery => ensemble::standardize(scores),
            ScoreNormalization::Affine { scale, shift } => ensemble::affine(scores, scale, shift),
            ScoreNormalization::Running => self
                .moments
                .lock()
                .expect("running stats lock poisoned")
                .z_scores(scores),
        }
    }
}
