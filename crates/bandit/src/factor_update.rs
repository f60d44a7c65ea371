//! Rank-r update of a lower Cholesky factor by blocked Householder reflections.
//!
//! `L Lᵀ = A` becomes `L' L'ᵀ = A + X Xᵀ` (X: d×r). With `R = Lᵀ`, `L'ᵀ` is the triangle of
//! the QR factorization of `[R; Xᵀ]` (upper triangular on top of r dense rows), the
//! "triangular-pentagonal" QR of LAPACK's `tpqrt`. Reflector j has a unit in row j of `R`
//! and its tail in the r rows of `Xᵀ`, so it changes row j of `R` (column j of `L`) and
//! `Xᵀ` only. Columns are taken in panels of [`PANEL`]: the panel's reflectors are computed
//! one by one on the panel (O(r·PANEL²)), gathered into the compact WY form
//! `I − U T Uᵀ` (`T` PANEL×PANEL), and applied to everything right of the panel with two
//! matrix products (`Wᵀ = Pᵀ… + Xᵀ_trailᵀ V`, `X_trail −= V (W T)ᵀ`).
//!
//! Cost: 2·r·d² flops, almost all in matrix products (faer GEMM), reading and writing the
//! factor once; `Xᵀ` (r×d) stays hot. The rank-r update it replaces (faer's
//! `rank_r_update_clobber`) does ~r·d² flops but as four-column passes over the factor,
//! memory-bound: r/4 reads and writes of the whole factor.
//!
//! Numerics: Householder reflections are orthogonal, so the update is backward stable like
//! the Givens-based one (no subtraction of nearly equal matrices). The diagonal stays
//! positive: β = +‖(α, x)‖ with `α − β = −‖x‖²/(α + β)` computed without cancellation
//! (LAPACK's `dlarfgp`).

use faer::linalg::cholesky::llt::update::rank_r_update_clobber;
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::prelude::{IntoConst, Reborrow, ReborrowMut};
use faer::{Accum, Col, Mat, MatMut, MatRef, Par};

/// Columns per panel at most: wide enough that the trailing products run at GEMM speed,
/// narrow enough that applying `T` (m·w²/2 per panel, whatever r) stays small next to the
/// products with the r rows (4·m·r·w).
pub const PANEL: usize = 16;

/// The panel width for rank r: `T`'s share of the work is about w/(4r).
fn panel_width(rank: usize) -> usize {
    rank.next_power_of_two().clamp(8, PANEL)
}

/// Below this rank, or this dimension, the Givens-based update (faer's
/// `rank_r_update_clobber`) is used: with few vectors its passes over the factor are few,
/// and in small factors the products are too small to pay for their calls (measured with
/// `cargo bench --bench linucb`: at d = 768 the two are even at r = 64 and Givens is ahead
/// at r = 16; at d = 4096 Givens is ahead at r = 8, blocked from r = 16 on).
pub const BLOCKED_MIN_RANK: usize = 16;
pub const BLOCKED_MIN_DIM: usize = 1024;

/// `lower` (d×d, lower triangular, positive diagonal) becomes the factor of
/// `lower·lowerᵀ + X Xᵀ` for the columns of `contexts` (X, d×r): blocked Householder from
/// [`BLOCKED_MIN_RANK`] vectors and [`BLOCKED_MIN_DIM`] dimensions, Givens rotations below.
pub fn add_outer_products(mut lower: MatMut<'_, f64>, contexts: MatRef<'_, f64>, par: Par) {
    let rank = contexts.ncols();
    if rank >= BLOCKED_MIN_RANK && lower.nrows() >= BLOCKED_MIN_DIM {
        let mut rows = contexts.transpose().to_owned();
        rank_update(lower, rows.as_mut(), par);
    } else if rank > 0 {
        let mut vectors = contexts.to_owned();
        let mut weights = Col::<f64>::from_fn(rank, |_| 1.0);
        rank_r_update_clobber(lower.rb_mut(), vectors.as_mut(), weights.as_diagonal_mut())
            .expect("adding x xᵀ keeps A positive definite");
    }
}

/// `lower` (d×d, lower triangular, positive diagonal; the upper triangle is not read)
/// becomes the factor of `lower·lowerᵀ + X Xᵀ`, where `rows` holds `Xᵀ` (r×d). `rows` is
/// clobbered (it ends holding the reflectors' tails).
pub fn rank_update(mut lower: MatMut<'_, f64>, mut rows: MatMut<'_, f64>, par: Par) {
    let dim = lower.nrows();
    assert_eq!(lower.ncols(), dim, "square factor");
    assert_eq!(rows.ncols(), dim, "one column of Xᵀ per factor column");
    let rank = rows.nrows();
    if rank == 0 || dim == 0 {
        return;
    }
    let panel = panel_width(rank);
    let mut taus = vec![0.0f64; panel];
    let mut overlaps = Vec::with_capacity(panel);
    let mut t = Mat::<f64>::zeros(panel, panel);
    let mut w = Mat::<f64>::zeros(dim, panel);
    let mut wt = Mat::<f64>::zeros(dim, panel);
    let mut start = 0;
    while start < dim {
        let width = panel.min(dim - start);
        let end = start + width;
        // The panel's reflectors, each applied to the panel's later columns.
        for j in start..end {
            let alpha = lower[(j, j)];
            let norm_x_sq = rows.rb().col(j).squared_norm_l2();
            if norm_x_sq == 0.0 {
                taus[j - start] = 0.0; // nothing to annihilate: H = I
                continue;
            }
            let beta = alpha.hypot(norm_x_sq.sqrt());
            let delta = if alpha > 0.0 {
                -norm_x_sq / (alpha + beta)
            } else {
                alpha - beta
            };
            let tau = -delta / beta;
            lower[(j, j)] = beta;
            let scale = delta.recip();
            rows.rb_mut()
                .col_mut(j)
                .iter_mut()
                .for_each(|v| *v *= scale);
            taus[j - start] = tau;
            for k in j + 1..end {
                let (v, x_k) = split_cols(rows.rb_mut(), j, k);
                let dot: f64 = v.iter().zip(x_k.rb().iter()).map(|(a, b)| a * b).sum();
                let f = tau * (lower[(k, j)] + dot);
                lower[(k, j)] -= f;
                x_k.iter_mut().zip(v.iter()).for_each(|(x, v)| *x -= f * v);
            }
        }
        if end == dim {
            break;
        }
        // T of the compact WY form I − U T Uᵀ = H_start ⋯ H_end-1 (forward, columnwise):
        // T[i,i] = τ_i, T[..i, i] = −τ_i T[..i, ..i] (V[:, ..i]ᵀ v_i).
        let (v_panel, trailing) = rows.rb_mut().split_at_col_mut(end);
        let v_panel = v_panel.subcols(start, width);
        let mut t = t.as_mut().submatrix_mut(0, 0, width, width);
        t.fill(0.0);
        for i in 0..width {
            t[(i, i)] = taus[i];
            if i == 0 || taus[i] == 0.0 {
                continue;
            }
            overlaps.clear();
            overlaps.extend((0..i).map(|l| {
                v_panel
                    .col(l)
                    .iter()
                    .zip(v_panel.col(i).iter())
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
            }));
            for row in 0..i {
                let mut sum = 0.0;
                for (l, overlap) in overlaps.iter().enumerate().skip(row) {
                    sum += t[(row, l)] * overlap;
                }
                t[(row, i)] = -taus[i] * sum;
            }
        }
        // Apply (H_start ⋯ H_end-1)ᵀ to the columns right of the panel. In L's terms the
        // panel's rows of R right of it are P = L[end.., start..end] (m×width).
        let m = dim - end;
        apply_block_reflector(
            Trailing {
                p: lower.rb_mut().submatrix_mut(end, start, m, width),
                x: trailing,
                w: w.as_mut().submatrix_mut(0, 0, m, width),
                wt: wt.as_mut().submatrix_mut(0, 0, m, width),
            },
            v_panel,
            t.rb(),
            par,
        );
        start = end;
    }
}

/// Columns per piece of the trailing update: a piece's P (CHUNK×w) and Xᵀ columns (r×CHUNK)
/// stay in cache through its three products. Pieces have fixed bounds (multiples of CHUNK
/// from the panel's edge), whatever the threads, so results do not depend on parallelism.
const CHUNK: usize = 256;

/// The part of the trailing update one piece owns: rows of P and of the two workspaces,
/// the same columns of Xᵀ.
struct Trailing<'a> {
    p: MatMut<'a, f64>,
    x: MatMut<'a, f64>,
    w: MatMut<'a, f64>,
    wt: MatMut<'a, f64>,
}

impl<'a> Trailing<'a> {
    fn split(self, at: usize) -> (Trailing<'a>, Trailing<'a>) {
        let (p0, p1) = self.p.split_at_row_mut(at);
        let (x0, x1) = self.x.split_at_col_mut(at);
        let (w0, w1) = self.w.split_at_row_mut(at);
        let (wt0, wt1) = self.wt.split_at_row_mut(at);
        (
            Trailing {
                p: p0,
                x: x0,
                w: w0,
                wt: wt0,
            },
            Trailing {
                p: p1,
                x: x1,
                w: w1,
                wt: wt1,
            },
        )
    }
}

/// `P −= Wᵀ T` and `Xᵀ −= V (Wᵀ T)ᵀ` with `Wᵀ = P + Xᵀᵀ V`, piece by piece (in parallel
/// halves under rayon), each piece's products sequential.
fn apply_block_reflector(part: Trailing<'_>, v: MatRef<'_, f64>, t: MatRef<'_, f64>, par: Par) {
    let m = part.p.nrows();
    if m > CHUNK {
        let at = m.div_ceil(CHUNK) / 2 * CHUNK;
        let (left, right) = part.split(at);
        match par {
            Par::Rayon(_) => {
                rayon::join(
                    || apply_block_reflector(left, v, t, par),
                    || apply_block_reflector(right, v, t, par),
                );
            }
            Par::Seq => {
                apply_block_reflector(left, v, t, par);
                apply_block_reflector(right, v, t, par);
            }
        }
        return;
    }
    let Trailing {
        mut p,
        mut x,
        mut w,
        mut wt,
    } = part;
    w.copy_from(p.rb());
    matmul(w.rb_mut(), Accum::Add, x.rb().transpose(), v, 1.0, Par::Seq);
    triangular::matmul(
        wt.rb_mut(),
        BlockStructure::Rectangular,
        Accum::Replace,
        w.rb(),
        BlockStructure::Rectangular,
        t,
        BlockStructure::TriangularUpper,
        1.0,
        Par::Seq,
    );
    p.rb_mut()
        .col_iter_mut()
        .zip(wt.rb().col_iter())
        .for_each(|(p, w)| p.iter_mut().zip(w.iter()).for_each(|(p, w)| *p -= w));
    matmul(
        x.rb_mut(),
        Accum::Add,
        v,
        wt.rb().transpose(),
        -1.0,
        Par::Seq,
    );
}

/// Column `j` (read) and column `k > j` (written) of `rows`.
fn split_cols(
    rows: MatMut<'_, f64>,
    j: usize,
    k: usize,
) -> (faer::ColRef<'_, f64>, faer::ColMut<'_, f64>) {
    debug_assert!(j < k);
    let (left, right) = rows.split_at_col_mut(k);
    (left.into_const().col(j), right.col_mut(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random_factor(dim: usize, rng: &mut StdRng) -> Mat<f64> {
        // L of λI + Σ x xᵀ built by the existing Givens-based update.
        let mut lower = Mat::<f64>::identity(dim, dim);
        let mut x = Mat::<f64>::from_fn(dim, dim / 2 + 1, |_, _| rng.random_range(-1.0..1.0));
        let mut weights = faer::Col::<f64>::from_fn(x.ncols(), |_| 1.0);
        rank_r_update_clobber(lower.as_mut(), x.as_mut(), weights.as_diagonal_mut()).unwrap();
        lower
    }

    fn gram(lower: &Mat<f64>) -> Mat<f64> {
        let l = lower_only(lower);
        &l * l.transpose()
    }

    fn lower_only(m: &Mat<f64>) -> Mat<f64> {
        Mat::from_fn(
            m.nrows(),
            m.ncols(),
            |i, j| if i >= j { m[(i, j)] } else { 0.0 },
        )
    }

    fn max_abs_diff(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
        let mut worst = 0.0f64;
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                worst = worst.max((a[(i, j)] - b[(i, j)]).abs());
            }
        }
        worst
    }

    fn check(dim: usize, rank: usize, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let lower = random_factor(dim, &mut rng);
        let x = Mat::<f64>::from_fn(dim, rank, |_, _| rng.random_range(-1.0..1.0));
        let want_gram = &gram(&lower) + &x * x.transpose();

        let mut ours = lower.clone();
        let mut rows = x.transpose().to_owned();
        rank_update(ours.as_mut(), rows.as_mut(), Par::Seq);

        let mut givens = lower.clone();
        let mut vectors = x.clone();
        let mut weights = faer::Col::<f64>::from_fn(rank, |_| 1.0);
        rank_r_update_clobber(givens.as_mut(), vectors.as_mut(), weights.as_diagonal_mut())
            .unwrap();

        let scale = want_gram.norm_max();
        assert!(
            max_abs_diff(&gram(&ours), &want_gram) <= 1e-12 * scale,
            "LLᵀ = A + XXᵀ"
        );
        // The Cholesky factor with a positive diagonal is unique: both updates find it.
        assert!(
            max_abs_diff(&lower_only(&ours), &lower_only(&givens)) <= 1e-10 * givens.norm_max(),
            "d={dim} r={rank}"
        );
        assert!((0..dim).all(|j| ours[(j, j)] > 0.0));
    }

    #[test]
    fn equals_the_givens_update_across_panel_edges() {
        for (dim, rank) in [
            (1, 1),
            (5, 3),
            (31, 1),
            (32, 7),
            (33, 64),
            (70, 16),
            (100, 5),
            (600, 9),
        ] {
            check(dim, rank, dim as u64 * 31 + rank as u64);
        }
    }

    #[test]
    fn zero_vectors_change_nothing() {
        let mut rng = StdRng::seed_from_u64(3);
        let lower = random_factor(40, &mut rng);
        let mut ours = lower.clone();
        let mut rows = Mat::<f64>::zeros(4, 40);
        rank_update(ours.as_mut(), rows.as_mut(), Par::Seq);
        assert_eq!(lower_only(&ours), lower_only(&lower));
    }

    #[test]
    fn parallel_and_sequential_agree() {
        let mut rng = StdRng::seed_from_u64(9);
        let lower = random_factor(700, &mut rng);
        let x = Mat::<f64>::from_fn(700, 20, |_, _| rng.random_range(-1.0..1.0));
        let mut seq = lower.clone();
        rank_update(seq.as_mut(), x.transpose().to_owned().as_mut(), Par::Seq);
        let mut par = lower.clone();
        rank_update(
            par.as_mut(),
            x.transpose().to_owned().as_mut(),
            Par::rayon(2),
        );
        assert_eq!(
            lower_only(&seq),
            lower_only(&par),
            "pieces have fixed bounds"
        );
    }
}
