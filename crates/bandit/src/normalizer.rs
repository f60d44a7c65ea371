//! Reward normalization (LASeR): map a raw reward into [0, 1] against the history of raw
//! rewards the router has seen.
//!
//! With fewer than two rewards in the history the raw value is used (as the reference
//! code does), or 0.5 with [`Normalization::QuantileNeutralStart`] (a raw loss is on
//! another scale than the [0, 1] rewards that follow it, and can sink the first arm); with
//! [`Normalization::QuantileWait`] every reward is 0.5 until `wait` have been observed. Otherwise, with `lo`/`hi` the history's low/high percentiles (20th/80th by
//! default, linear interpolation as NumPy's `percentile`): `r <= lo → 0`, `r >= hi → 1`,
//! linear between. When `lo == hi` (a history of equal values, which the reference code
//! does not guard) the result is 0 below, 1 above and 0.5 at that value.
//!
//! With a `window`, only the last `window` raw rewards form the history (the policy LLM
//! changes during training, so old losses go stale; LASeR keeps the whole history, which a
//! later paper blames for LinUCB collapsing onto one arm).
//!
//! Cost: the history is kept sorted; `observe` is O(n) for the insertion (and removal of
//! the oldest value with a window) and O(1) for the percentiles.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How raw rewards are normalized.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Normalization {
    /// Use the raw reward.
    None,
    /// LASeR's percentile normalization; `low`/`high` are percentiles in [0, 100] with
    /// `low < high`; `window` keeps only the most recent raw rewards.
    Quantile {
        low: f64,
        high: f64,
        window: Option<usize>,
    },
    /// `Quantile`, except that while the history holds fewer than two rewards the
    /// normalized reward is 0.5 (neutral) instead of the raw value. Appended after the
    /// others: the enum's order is part of the log format.
    QuantileNeutralStart {
        low: f64,
        high: f64,
        window: Option<usize>,
    },
    /// `Quantile`, except that while the history holds fewer than `wait` rewards the
    /// normalized reward is 0.5: no arm moves until the percentiles rest on `wait` rewards
    /// (BayesianRouter waits for a batch of rewards before its online router learns).
    /// Appended: the enum's order is part of the log format.
    QuantileWait {
        low: f64,
        high: f64,
        window: Option<usize>,
        wait: usize,
    },
}

impl Normalization {
    /// The percentiles and window of either quantile form (`None` for `None`).
    pub fn quantile(&self) -> Option<(f64, f64, Option<usize>)> {
        match *self {
            Normalization::None => None,
            Normalization::Quantile { low, high, window }
            | Normalization::QuantileNeutralStart { low, high, window }
            | Normalization::QuantileWait {
                low, high, window, ..
            } => Some((low, high, window)),
        }
    }

    /// LASeR's default: the 20th and 80th percentiles.
    pub const LASER: Normalization = Normalization::Quantile {
        low: 20.0,
        high: 80.0,
        window: None,
    };
}

/// Raw reward history and the normalization applied against it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardNormalizer {
    normalization: Normalization,
    sorted_history: Vec<f64>,
    arrival_order: VecDeque<f64>,
    observed: u64,
}

impl RewardNormalizer {
    pub fn new(normalization: Normalization) -> Self {
        Self {
            normalization,
            sorted_history: Vec::new(),
            arrival_order: VecDeque::new(),
            observed: 0,
        }
    }

    pub fn normalization(&self) -> Normalization {
        self.normalization
    }

    /// Number of raw rewards observed (including those that left the window).
    pub fn observed(&self) -> u64 {
        self.observed
    }

    /// Raw rewards currently in the history.
    pub fn history_len(&self) -> usize {
        self.sorted_history.len()
    }

    /// Record `raw` (finite) in the history, then return its normalized value.
    pub fn observe(&mut self, raw: f64) -> f64 {
        debug_assert!(raw.is_finite());
        self.observed += 1;
        match self.normalization {
            Normalization::None => raw,
            Normalization::Quantile { low, high, window }
            | Normalization::QuantileNeutralStart { low, high, window }
            | Normalization::QuantileWait {
                low, high, window, ..
            } => {
                let position = self.sorted_history.partition_point(|&seen| seen < raw);
                self.sorted_history.insert(position, raw);
                self.arrival_order.push_back(raw);
                if let Some(window) = window
                    && self.arrival_order.len() > window
                    && let Some(oldest) = self.arrival_order.pop_front()
                {
                    let position = self.sorted_history.partition_point(|&seen| seen < oldest);
                    self.sorted_history.remove(position);
                }
                match self.normalization {
                    Normalization::QuantileWait { wait, .. } if self.observed < wait as u64 => {
                        return 0.5;
                    }
                    _ if self.sorted_history.len() >= 2 => {}
                    Normalization::QuantileNeutralStart { .. }
                    | Normalization::QuantileWait { .. } => return 0.5,
                    _ => return raw,
                }
                let lo = percentile(&self.sorted_history, low);
                let hi = percentile(&self.sorted_history, high);
                if hi > lo {
                    ((raw - lo) / (hi - lo)).clamp(0.0, 1.0)
                } else if raw < lo {
                    0.0
                } else if raw > hi {
                    1.0
                } else {
                    0.5
                }
            }
        }
    }
}

/// NumPy's default (linear) percentile of a sorted, non-empty slice; `q` in [0, 100].
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q / 100.0 * (sorted.len() - 1) as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    sorted[below] + (sorted[above] - sorted[below]) * (rank - below as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy() {
        // np.percentile([1, 2, 3, 4, 10], [20, 80]) == [1.8, 5.2]
        let sorted = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert!((percentile(&sorted, 20.0) - 1.8).abs() < 1e-12);
        assert!((percentile(&sorted, 80.0) - 5.2).abs() < 1e-12);
    }

    #[test]
    fn a_neutral_start_gives_half_until_the_percentiles_exist_then_the_same_as_quantile() {
        let neutral = Normalization::QuantileNeutralStart {
            low: 20.0,
            high: 80.0,
            window: None,
        };
        let mut normalizer = RewardNormalizer::new(neutral);
        let mut reference = RewardNormalizer::new(Normalization::LASER);
        assert_eq!(normalizer.observe(-3.0), 0.5);
        assert_eq!(reference.observe(-3.0), -3.0);
        for raw in [-1.0, -2.0, -0.5, -4.0] {
            assert_eq!(normalizer.observe(raw), reference.observe(raw));
        }
        assert_eq!(
            normalizer.normalization().quantile(),
            Some((20.0, 80.0, None))
        );
    }

    #[test]
    fn waiting_gives_half_until_wait_rewards_then_the_same_as_quantile() {
        let wait = Normalization::QuantileWait {
            low: 20.0,
            high: 80.0,
            window: None,
            wait: 4,
        };
        let mut waiting = RewardNormalizer::new(wait);
        let mut plain = RewardNormalizer::new(Normalization::LASER);
        for (i, raw) in [3.0, -1.0, 7.0, 0.5, 2.0, 9.0].into_iter().enumerate() {
            let (got, laser) = (waiting.observe(raw), plain.observe(raw));
            if i < 3 {
                assert_eq!(got, 0.5, "reward {i}");
            } else {
                assert_eq!(got, laser, "reward {i}");
            }
        }
        // wait = 2 is the neutral start.
        let two = Normalization::QuantileWait {
            low: 20.0,
            high: 80.0,
            window: None,
            wait: 2,
        };
        let neutral = Normalization::QuantileNeutralStart {
            low: 20.0,
            high: 80.0,
            window: None,
        };
        let (mut a, mut b) = (RewardNormalizer::new(two), RewardNormalizer::new(neutral));
        for raw in [1.0, 4.0, -2.0, 3.0] {
            assert_eq!(a.observe(raw), b.observe(raw));
        }
    }

    #[test]
    fn first_reward_is_raw_then_percentile_mapped() {
        let mut normalizer = RewardNormalizer::new(Normalization::LASER);
        assert_eq!(normalizer.observe(-3.0), -3.0);
        for raw in [-1.0, -2.0, -0.5, -4.0] {
            normalizer.observe(raw);
        }
        // history now [-4, -3, -2, -1, -0.5]; p20 = -3.2, p80 = -0.9
        let value = normalizer.observe(-2.0);
        // history [-4, -3, -2, -2, -1, -0.5]: p20 = -3, p80 = -1
        assert!((value - 0.5).abs() < 1e-12, "{value}");
        assert_eq!(normalizer.observe(-10.0), 0.0);
        assert_eq!(normalizer.observe(10.0), 1.0);
        assert_eq!(normalizer.observed(), 8);
    }

    #[test]
    fn a_window_forgets_old_rewards() {
        let window = Normalization::Quantile {
            low: 20.0,
            high: 80.0,
            window: Some(3),
        };
        let mut normalizer = RewardNormalizer::new(window);
        for raw in [10.0, 20.0, 0.0, 1.0, 2.0] {
            normalizer.observe(raw);
        }
        assert_eq!(normalizer.history_len(), 3);
        assert_eq!(normalizer.observed(), 5);
        // Window [1, 2, 1.5]: p20 = 1.2, p80 = 1.8, so 1.5 maps to 0.5 (the whole history
        // [0, 1, 1.5, 2, 10, 20] would give p20 = 1, p80 = 10 and 0.056).
        let value = normalizer.observe(1.5);
        assert!((value - 0.5).abs() < 1e-12, "{value}");
    }

    #[test]
    fn custom_percentiles() {
        let mut normalizer = RewardNormalizer::new(Normalization::Quantile {
            low: 0.0,
            high: 100.0,
            window: None,
        });
        for raw in [0.0, 10.0] {
            normalizer.observe(raw);
        }
        assert!((normalizer.observe(2.5) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn equal_percentiles_are_guarded() {
        let mut normalizer = RewardNormalizer::new(Normalization::LASER);
        for _ in 0..10 {
            normalizer.observe(1.0);
        }
        assert_eq!(normalizer.observe(1.0), 0.5);
        assert_eq!(normalizer.observe(0.0), 0.0);
        assert_eq!(normalizer.observe(2.0), 1.0);
    }

    #[test]
    fn none_passes_raw_rewards_through() {
        let mut normalizer = RewardNormalizer::new(Normalization::None);
        for raw in [-5.0, 3.0, 0.25] {
            assert_eq!(normalizer.observe(raw), raw);
        }
    }
}
