//! One LinUCB arm: ridge-regression state over contexts of dimension `d`.
//!
//! Model: `A = λI + Σ x xᵀ`, `b = Σ r x`, `θ = A⁻¹ b`; the arm's upper confidence bound
//! for a context `x` is `x·θ + α·sqrt(xᵀ A⁻¹ x)` (LASeR, following Li et al. 2010).
//!
//! State: `A⁻¹` (d×d) kept current by the Sherman–Morrison identity, `b` and `θ` (d each).
//! This first version never factorizes or inverts: `estimate` is one matrix-vector product
//! (O(d²)) and `update` is one matrix-vector product plus a symmetric rank-one update
//! (O(d²)). Memory: one d×d f64 matrix plus O(d) per arm. Rounding error of repeated
//! Sherman–Morrison updates grows on long, ill-conditioned streams; periodic
//! re-factorization and the batched (BLAS-3) select for d = 4096 are the next step of the
//! numerics work and will replace the internals behind this same interface.

use nalgebra::{DMatrix, DVector};

/// An arm's estimate for one context.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArmEstimate {
    /// `x·θ`: the predicted reward.
    pub mean: f64,
    /// `α·sqrt(xᵀA⁻¹x)`: the exploration bonus.
    pub bonus: f64,
    /// `mean + bonus`.
    pub ucb: f64,
}

/// Ridge-regression state of one arm. Invariant: `a_inverse = (λI + Σ x xᵀ)⁻¹` and
/// `theta = a_inverse · b`, up to rounding.
#[derive(Clone, Debug)]
pub struct LinUcbArm {
    a_inverse: DMatrix<f64>,
    b: DVector<f64>,
    theta: DVector<f64>,
    updates: u64,
}

impl LinUcbArm {
    /// A fresh arm: `A = λI`, `b = 0`. `l2_lambda` must be positive and finite.
    pub fn new(context_dim: usize, l2_lambda: f64) -> Self {
        assert!(
            l2_lambda > 0.0 && l2_lambda.is_finite(),
            "l2_lambda must be positive"
        );
        Self {
            a_inverse: DMatrix::identity(context_dim, context_dim) / l2_lambda,
            b: DVector::zeros(context_dim),
            theta: DVector::zeros(context_dim),
            updates: 0,
        }
    }

    pub fn context_dim(&self) -> usize {
        self.b.len()
    }

    /// `θ = A⁻¹ b`.
    pub fn theta(&self) -> &DVector<f64> {
        &self.theta
    }

    /// Number of updates applied.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// UCB estimate for `context` with exploration weight `alpha`. O(d²).
    pub fn estimate(&self, context: &DVector<f64>, alpha: f64) -> ArmEstimate {
        let mean = context.dot(&self.theta);
        let a_inverse_x = &self.a_inverse * context;
        // xᵀA⁻¹x > 0 in exact arithmetic; clamp rounding noise.
        let variance = context.dot(&a_inverse_x).max(0.0);
        let bonus = alpha * variance.sqrt();
        ArmEstimate {
            mean,
            bonus,
            ucb: mean + bonus,
        }
    }

    /// `A += x xᵀ`, `b += r x`. O(d²).
    pub fn update(&mut self, context: &DVector<f64>, reward: f64) {
        // Sherman–Morrison: (A + xxᵀ)⁻¹ = A⁻¹ − (A⁻¹x)(A⁻¹x)ᵀ / (1 + xᵀA⁻¹x), A⁻¹ symmetric.
        let a_inverse_x = &self.a_inverse * context;
        let denominator = 1.0 + context.dot(&a_inverse_x);
        self.a_inverse
            .ger(-1.0 / denominator, &a_inverse_x, &a_inverse_x, 1.0);
        self.b.axpy(reward, context, 1.0);
        self.theta = &self.a_inverse * &self.b;
        self.updates += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Naive oracle: build A and b from scratch and solve with a fresh Cholesky.
    fn oracle(
        dim: usize,
        l2_lambda: f64,
        stream: &[(Vec<f64>, f64)],
        context: &DVector<f64>,
        alpha: f64,
    ) -> (DVector<f64>, ArmEstimate) {
        let mut a = DMatrix::identity(dim, dim) * l2_lambda;
        let mut b = DVector::zeros(dim);
        for (x, r) in stream {
            let x = DVector::from_column_slice(x);
            a += &x * x.transpose();
            b += &x * *r;
        }
        let cholesky = a.cholesky().expect("A is positive definite");
        let theta = cholesky.solve(&b);
        let a_inverse_x = cholesky.solve(context);
        let mean = context.dot(&theta);
        let bonus = alpha * context.dot(&a_inverse_x).sqrt();
        (
            theta,
            ArmEstimate {
                mean,
                bonus,
                ucb: mean + bonus,
            },
        )
    }

    fn relative_error(got: f64, want: f64) -> f64 {
        (got - want).abs() / want.abs().max(1e-12)
    }

    #[test]
    fn fresh_arm_has_zero_mean_and_ridge_bonus() {
        let arm = LinUcbArm::new(3, 2.0);
        let x = DVector::from_vec(vec![1.0, 2.0, 2.0]);
        let estimate = arm.estimate(&x, 0.5);
        assert_eq!(estimate.mean, 0.0);
        // sqrt(|x|² / λ) = sqrt(9 / 2)
        assert!((estimate.bonus - 0.5 * (4.5f64).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn learns_a_linear_reward() {
        let mut arm = LinUcbArm::new(2, 1.0);
        for i in 0..200 {
            let x = DVector::from_vec(vec![1.0, (i % 7) as f64 / 7.0]);
            let reward = 0.3 + 0.5 * x[1];
            arm.update(&x, reward);
        }
        assert!((arm.theta()[0] - 0.3).abs() < 0.02, "{}", arm.theta());
        assert!((arm.theta()[1] - 0.5).abs() < 0.05, "{}", arm.theta());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// θ and the bonus agree with the from-scratch ridge solution (relative 1e-8).
        #[test]
        fn matches_the_naive_oracle(
            dim in 1usize..12,
            l2_lambda in 0.1f64..10.0,
            alpha in 0.01f64..2.0,
            seed_stream in proptest::collection::vec(
                (proptest::collection::vec(-3.0f64..3.0, 12), -2.0f64..2.0), 1..120),
            query in proptest::collection::vec(-3.0f64..3.0, 12),
        ) {
            let stream: Vec<(Vec<f64>, f64)> = seed_stream
                .into_iter()
                .map(|(x, r)| (x[..dim].to_vec(), r))
                .collect();
            let mut arm = LinUcbArm::new(dim, l2_lambda);
            for (x, r) in &stream {
                arm.update(&DVector::from_column_slice(x), *r);
            }
            let context = DVector::from_column_slice(&query[..dim]);
            let (theta, want) = oracle(dim, l2_lambda, &stream, &context, alpha);
            let got = arm.estimate(&context, alpha);
            let theta_error = (arm.theta() - &theta).norm() / theta.norm().max(1e-12);
            prop_assert!(theta_error < 1e-8, "theta relative error {theta_error}");
            prop_assert!(relative_error(got.bonus, want.bonus) < 1e-8,
                "bonus {} vs {}", got.bonus, want.bonus);
            prop_assert!((got.mean - want.mean).abs() < 1e-8 * want.mean.abs().max(1.0),
                "mean {} vs {}", got.mean, want.mean);
        }
    }
}
