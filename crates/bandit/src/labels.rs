//! Label feedback: how well a decision's scores agree with labels for its responses
//! (a verifier's correctness, a reference score, a human's preferred response).
//!
//! The agreement is the pairwise accuracy of the scores' ranking against the labels: over
//! every pair of responses whose labels differ, 1 when the scores order them as the labels
//! do, 1/2 when the scores tie (or either is NaN: the ranking puts no order between
//! them), 0 otherwise; the mean over those pairs. Pairs labelled alike say nothing about the
//! ranking and are skipped; when every pair is alike there is no agreement to measure
//! (`None`). The value lies in [0, 1], the scale of normalized rewards, so it enters an arm
//! as is. Cost: O(n²) for n responses.

/// Pairwise accuracy of `scores` against `labels` (same length; higher is better for
/// both); `None` when no two labels differ.
pub fn pairwise_agreement(scores: &[f32], labels: &[f64]) -> Option<f64> {
    debug_assert_eq!(scores.len(), labels.len(), "one label per score");
    let mut credit = 0.0;
    let mut pairs = 0u64;
    for i in 0..labels.len() {
        for j in i + 1..labels.len() {
            if labels[i] == labels[j] {
                continue;
            }
            pairs += 1;
            let (si, sj) = (scores[i], scores[j]);
            credit += if si.is_nan() || sj.is_nan() || si == sj {
                0.5
            } else if (si > sj) == (labels[i] > labels[j]) {
                1.0
            } else {
                0.0
            };
        }
    }
    (pairs > 0).then(|| credit / pairs as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_correct_ranking_agrees_fully_and_a_reversed_one_not_at_all() {
        assert_eq!(pairwise_agreement(&[0.9, 0.1], &[1.0, 0.0]), Some(1.0));
        assert_eq!(pairwise_agreement(&[0.1, 0.9], &[1.0, 0.0]), Some(0.0));
        assert_eq!(
            pairwise_agreement(&[3.0, 2.0, 1.0], &[0.0, 1.0, 2.0]),
            Some(0.0)
        );
    }

    #[test]
    fn ties_in_scores_count_half_and_ties_in_labels_are_skipped() {
        // Pairs with different labels: (0,1), (0,2), (1,2) minus none; scores tie on (0,1).
        assert_eq!(
            pairwise_agreement(&[1.0, 1.0, 0.0], &[2.0, 1.0, 0.0]),
            Some((0.5 + 1.0 + 1.0) / 3.0)
        );
        // Verifier labels: two correct, one wrong; only the two pairs against the wrong one count.
        assert_eq!(
            pairwise_agreement(&[0.2, 0.8, 0.5], &[1.0, 1.0, 0.0]),
            Some(0.5)
        );
        assert_eq!(pairwise_agreement(&[f32::NAN, 0.0], &[1.0, 0.0]), Some(0.5));
    }

    #[test]
    fn labels_that_never_differ_measure_nothing() {
        assert_eq!(pairwise_agreement(&[0.3, 0.1, 0.7], &[1.0, 1.0, 1.0]), None);
        assert_eq!(pairwise_agreement(&[0.3], &[1.0]), None);
        assert_eq!(pairwise_agreement(&[], &[]), None);
    }

    proptest! {
        /// Against a naive oracle: the share of discordant-label pairs the scores order
        /// like the labels, ties half; always in [0, 1]; reversing the scores mirrors it.
        #[test]
        fn matches_a_naive_count(
            pairs in proptest::collection::vec((-3i8..3, 0u8..3), 0..12)
        ) {
            let scores: Vec<f32> = pairs.iter().map(|(s, _)| *s as f32).collect();
            let labels: Vec<f64> = pairs.iter().map(|(_, l)| *l as f64).collect();
            let mut won = 0.0;
            let mut total = 0.0;
            for i in 0..scores.len() {
                for j in 0..scores.len() {
                    if labels[i] > labels[j] {
                        total += 1.0;
                        won += match scores[i].partial_cmp(&scores[j]).unwrap() {
                            std::cmp::Ordering::Greater => 1.0,
                            std::cmp::Ordering::Equal => 0.5,
                            std::cmp::Ordering::Less => 0.0,
                        };
                    }
                }
            }
            let got = pairwise_agreement(&scores, &labels);
            if total == 0.0 {
                prop_assert_eq!(got, None);
            } else {
                let got = got.unwrap();
                prop_assert!((got - won / total).abs() < 1e-12);
                prop_assert!((0.0..=1.0).contains(&got));
                let reversed: Vec<f32> = scores.iter().map(|s| -s).collect();
                let mirrored = pairwise_agreement(&reversed, &labels).unwrap();
                prop_assert!((got + mirrored - 1.0).abs() < 1e-12);
            }
        }
    }
}
