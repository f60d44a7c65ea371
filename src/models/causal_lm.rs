//! What a causal LM's scores are made of, whoever computes the log-probs (an ONNX session
//! here, or vLLM): which tokens of an encoding are scored (the response's, sequence 1 of
//! the encoding `tokenize` builds), the row each response gets, and a judge's rows (one per
//! rating) folded into one. Pure arithmetic on a few floats per response.

use std::ops::Range;

use tokenizers::Encoding;

use super::spec::ScoreRead;
use super::tokenize::response_span;

/// Values per sequence a causal LM's scorer returns: Σ log π over the response's tokens,
/// the number of those tokens, Σ log π_ref over them (0 without a reference). Each RM
/// sharing the session reads its score from them (`RewardModel::scores_from`).
pub const CAUSAL_LM_ROW: usize = 3;

/// The response's tokens whose log-prob is summed: all of them, except a token at position
/// 0, which has no context.
pub(super) fn scored_tokens(encoding: &Encoding) -> Range<usize> {
    let span = response_span(encoding);
    span.start.max(1)..span.end
}

/// One job's rows as the RMs sharing a scorer read them: a judge's rows (one per response
/// and rating, in that order) folded into one per response, `[the probability-weighted mean
/// rating, ratings, 0]`, each rating's probability its continuation's likelihood normalized
/// over the ratings; other kinds' rows as they are.
pub(super) fn fold_rows(score: &ScoreRead, rows: Vec<f32>) -> Vec<f32> {
    let ScoreRead::Judge(rubric) = score else {
        return rows;
    };
    let values = rubric.values();
    rows.chunks(values.len() * CAUSAL_LM_ROW)
        .flat_map(|response| {
            let logprobs: Vec<f64> = response
                .chunks(CAUSAL_LM_ROW)
                .map(|row| row[0] as f64)
                .collect();
            let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = logprobs.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mean: f64 = weights.iter().zip(&values).map(|(w, v)| w * v).sum::<f64>() / total;
            [mean as f32, values.len() as f32, 0.0]
        })
        .collect()
}
