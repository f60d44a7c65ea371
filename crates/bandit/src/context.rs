//! Context preprocessing, per router (both off by default; LASeR uses raw embeddings):
//! - L2 normalization: `x / |x|` (a zero vector stays zero).
//! - Random projection (an extension beyond the paper): `y = P x` with `P` a k×d matrix of
//!   independent ±1/√k entries (Achlioptas' database-friendly Johnson–Lindenstrauss
//!   projection) drawn from a seeded RNG, so the same seed always gives the same `P`.
//!   It shrinks the arms' state from d² to k² (e.g. 4096 → 512: 64× less memory and
//!   work) at the cost of some resolution. Cost: O(k·d) per context, k·d memory.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Preprocessing applied to every context of a router before the bandit sees it.
#[derive(Clone, Debug)]
pub struct ContextTransform {
    l2_normalize: bool,
    input_dim: usize,
    /// Row-major k×d projection, when enabled.
    projection: Option<(usize, Vec<f64>)>,
}

impl ContextTransform {
    /// `projection_dim` 0 disables the projection.
    pub fn new(input_dim: usize, l2_normalize: bool, projection_dim: usize, seed: u64) -> Self {
        let projection = (projection_dim > 0).then(|| {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x6c61_7365_7270_726a);
            let scale = 1.0 / (projection_dim as f64).sqrt();
            let matrix = (0..projection_dim * input_dim)
                .map(|_| if rng.random_bool(0.5) { scale } else { -scale })
                .collect();
            (projection_dim, matrix)
        });
        Self {
            l2_normalize,
            input_dim,
            projection,
        }
    }

    /// Dimension of the transformed contexts (the arms' dimension).
    pub fn output_dim(&self) -> usize {
        self.projection.as_ref().map_or(self.input_dim, |(k, _)| *k)
    }

    pub fn apply(&self, context: &[f32]) -> Vec<f64> {
        debug_assert_eq!(context.len(), self.input_dim);
        let mut x: Vec<f64> = context.iter().map(|&v| v as f64).collect();
        if self.l2_normalize {
            l2_normalize(&mut x);
        }
        match &self.projection {
            None => x,
            Some((k, matrix)) => (0..*k)
                .map(|row| {
                    matrix[row * self.input_dim..(row + 1) * self.input_dim]
                        .iter()
                        .zip(&x)
                        .map(|(p, v)| p * v)
                        .sum()
                })
                .collect(),
        }
    }
}

/// Divide `x` by its L2 norm (a zero vector stays zero).
pub fn l2_normalize(x: &mut [f64]) {
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > 0.0 {
        x.iter_mut().for_each(|v| *v /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_by_default() {
        let transform = ContextTransform::new(3, false, 0, 1);
        assert_eq!(transform.apply(&[1.0, -2.0, 0.5]), vec![1.0, -2.0, 0.5]);
        assert_eq!(transform.output_dim(), 3);
    }

    #[test]
    fn l2_normalization() {
        let transform = ContextTransform::new(2, true, 0, 1);
        assert_eq!(transform.apply(&[3.0, 4.0]), vec![0.6, 0.8]);
        assert_eq!(transform.apply(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn projection_is_seeded_and_roughly_preserves_norms() {
        let a = ContextTransform::new(256, false, 64, 9);
        let b = ContextTransform::new(256, false, 64, 9);
        let x: Vec<f32> = (0..256).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        assert_eq!(a.apply(&x), b.apply(&x));
        assert_ne!(
            a.apply(&x),
            ContextTransform::new(256, false, 64, 10).apply(&x)
        );
        let y = a.apply(&x);
        assert_eq!(y.len(), 64);
        let norm_x = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let norm_y = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm_y / norm_x - 1.0).abs() < 0.35, "{norm_y} vs {norm_x}");
    }
}
