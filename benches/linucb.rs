//! LinUCB router benches: select (B = 1, 16, 64) and update at d ∈ {64, 768, 4096},
//! K ∈ {2, 4, 8}, with each time printed against the machine's floor, measured in the
//! same run:
//! - bandwidth floor: reading every arm's state (one d×d f64 factor) once at the measured
//!   memory read bandwidth;
//! - arithmetic floor: the minimal flops of the operation (select: d²·B per arm for
//!   L⁻¹X; update: the same for a rank-B factor update) at the measured f64 matrix-multiply
//!   rate (faer GEMM of the select's shape).
//!
//! The headline: the 64-query select at d = 4096, K = 4 against the floor (floor and select
//! measured in three alternating rounds, each keeping its best), and per
//! decision against the paper's reference algorithm (`benches/reference_linucb.py`,
//! NumPy `inv` per arm per selection) run side by side on the same stream.
//!
//! `cargo bench --bench linucb` (all), `cargo bench --bench linucb -- headline` (only the
//! headline). Set `LASER_BENCH_REFERENCE_DECISIONS=0` to skip the NumPy reference run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use faer::{Mat, Par};
use laser_router::bandit::{LinUcbArm, Normalization};
use laser_router::routers::{Router, RouterSettings};

const DIMS: [usize; 3] = [64, 768, 4096];
const ARMS: [usize; 3] = [2, 4, 8];
const BATCHES: [usize; 3] = [1, 16, 64];

#[derive(Clone, Copy)]
struct Machine {
    /// Bytes per second read from memory (all cores).
    read_bandwidth: f64,
    /// f64 flops per second of faer's GEMM (4096×4096 · 4096×64).
    gemm_flops: f64,
}

impl Machine {
    /// The faster of two measurements of each rate: floors measured in alternating rounds
    /// with the subject keep their best, so a neighbour's load in one round cannot make a
    /// ratio look better than the floor.
    fn best(&self, other: &Machine) -> Machine {
        Machine {
            read_bandwidth: self.read_bandwidth.max(other.read_bandwidth),
            gemm_flops: self.gemm_flops.max(other.gemm_flops),
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time_it(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    median(
        (0..runs)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed()
            })
            .collect(),
    )
}

fn measure_machine() -> Machine {
    // Read bandwidth: sum 1 GiB of f64 on every core.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let buffer: Vec<f64> = (0..(1usize << 27)).map(|i| i as f64).collect();
    let read = time_it(5, || {
        let chunk = buffer.len().div_ceil(threads);
        let total: f64 = std::thread::scope(|scope| {
            let handles: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut lanes = [0.0f64; 8];
                        for block in part.chunks_exact(8) {
                            for (lane, value) in lanes.iter_mut().zip(block) {
                                *lane += value;
                            }
                        }
                        lanes.iter().sum::<f64>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        black_box(total);
    });
    let read_bandwidth = (buffer.len() * 8) as f64 / read.as_secs_f64();
    drop(buffer);

    let (m, k, n) = (4096, 4096, 64);
    let lhs = Mat::<f64>::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 13) as f64 * 0.01);
    let rhs = Mat::<f64>::from_fn(k, n, |i, j| ((i + j) % 5) as f64 * 0.1);
    let mut dst = Mat::<f64>::zeros(m, n);
    let gemm = time_it(7, || {
        faer::linalg::matmul::matmul(
            dst.as_mut(),
            faer::Accum::Replace,
            lhs.as_ref(),
            rhs.as_ref(),
            1.0,
            Par::rayon(0),
        );
        black_box(&dst);
    });
    let gemm_flops = 2.0 * (m * k * n) as f64 / gemm.as_secs_f64();
    println!(
        "machine: {threads} threads, read bandwidth {:.1} GB/s, f64 GEMM {:.1} GFLOP/s (faer, 4096x4096x64)",
        read_bandwidth / 1e9,
        gemm_flops / 1e9
    );
    Machine {
        read_bandwidth,
        gemm_flops,
    }
}

/// The bench stream (same formula as benches/reference_linucb.py).
fn context(t: usize, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|i| (0.001 * (t * dim + i) as f64).sin() as f32)
        .collect()
}

fn router(dim: usize, arms: usize) -> (Router, Vec<String>) {
    let settings = RouterSettings {
        normalization: Normalization::None,
        max_pending_decisions: 1 << 20,
        pending_ttl: Duration::from_secs(3600),
        context_dim: dim,
        ..RouterSettings::default()
    };
    let serving: Vec<String> = (0..arms).map(|k| format!("rm{k}")).collect();
    (Router::new("bench".into(), settings, &serving), serving)
}

struct Floor {
    bandwidth: Duration,
    arithmetic: Duration,
}

impl Floor {
    fn of(machine: &Machine, dim: usize, arms: usize, batch: usize) -> Floor {
        let bytes = (arms * dim * dim * 8) as f64;
        let flops = (arms * dim * dim * batch) as f64;
        Floor {
            bandwidth: Duration::from_secs_f64(bytes / machine.read_bandwidth),
            arithmetic: Duration::from_secs_f64(flops / machine.gemm_flops),
        }
    }

    fn max(&self) -> Duration {
        self.bandwidth.max(self.arithmetic)
    }
}

fn report(label: &str, took: Duration, floor: &Floor) {
    println!(
        "{label}: {:.3} ms; floor {:.3} ms (bandwidth {:.3} ms, arithmetic {:.3} ms); ratio to floor {:.2}x",
        took.as_secs_f64() * 1e3,
        floor.max().as_secs_f64() * 1e3,
        floor.bandwidth.as_secs_f64() * 1e3,
        floor.arithmetic.as_secs_f64() * 1e3,
        took.as_secs_f64() / floor.max().as_secs_f64()
    );
}

fn runs_for(dim: usize) -> usize {
    if dim >= 4096 { 5 } else { 21 }
}

fn bench_select(c: &mut Criterion, machine: &Machine) {
    let mut group = c.benchmark_group("select");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for dim in DIMS {
        for arms in ARMS {
            let (router, serving) = router(dim, arms);
            for batch in BATCHES {
                let contexts: Vec<Vec<f32>> = (0..batch).map(|t| context(t, dim)).collect();
                let id = format!("d{dim}_K{arms}_B{batch}");
                group.bench_function(BenchmarkId::from_parameter(&id), |bencher| {
                    bencher.iter(|| {
                        black_box(router.select(&contexts, None, false, &serving).unwrap())
                    })
                });
                let took = time_it(runs_for(dim), || {
                    black_box(router.select(&contexts, None, false, &serving).unwrap());
                });
                report(
                    &format!("select {id}"),
                    took,
                    &Floor::of(machine, dim, arms, batch),
                );
            }
        }
    }
    group.finish();
}

fn bench_update(c: &mut Criterion, machine: &Machine) {
    let mut group = c.benchmark_group("update");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for dim in DIMS {
        let mut arm = LinUcbArm::new(dim, 1.0);
        for batch in BATCHES {
            let contexts = Mat::<f64>::from_fn(dim, batch, |i, j| context(j, dim)[i] as f64);
            let rewards = vec![0.5; batch];
            let id = format!("d{dim}_r{batch}");
            group.bench_function(BenchmarkId::from_parameter(&id), |bencher| {
                bencher.iter(|| arm.update_batch(contexts.as_ref(), &rewards))
            });
            let took = time_it(runs_for(dim), || {
                arm.update_batch(contexts.as_ref(), &rewards)
            });
            report(
                &format!("update {id} (one arm, {batch} decisions)"),
                took,
                &Floor::of(machine, dim, 1, batch),
            );
        }
    }
    group.finish();
}

fn headline(machine: &Machine) {
    let (dim, arms, batch) = (4096, 4, 64);
    let (router, serving) = router(dim, arms);
    let contexts: Vec<Vec<f32>> = (0..batch).map(|t| context(t, dim)).collect();
    // Floor and subject in alternating rounds, each keeping its best.
    let mut machine = *machine;
    let mut select = Duration::MAX;
    for _ in 0..3 {
        machine = machine.best(&measure_machine());
        select = select.min(time_it(7, || {
            black_box(router.select(&contexts, None, false, &serving).unwrap());
        }));
    }
    let machine = &machine;
    let floor = Floor::of(machine, dim, arms, batch);
    report("headline select d4096_K4_B64", select, &floor);

    // Per decision: the batched select, plus feedback for those 64 decisions (one rank-64
    // update on one arm, the worst case).
    let mut arm = LinUcbArm::new(dim, 1.0);
    let update_contexts = Mat::<f64>::from_fn(dim, batch, |i, j| contexts[j][i] as f64);
    let update = time_it(5, || {
        arm.update_batch(update_contexts.as_ref(), &vec![0.5; batch])
    });
    let per_decision = (select + update).as_secs_f64() / batch as f64;
    let state_ratio = arm.state_bytes() as f64 / (dim * dim * 8) as f64;
    println!(
        "headline per decision (select + update, d=4096 K=4 B=64): {:.3} ms; arm state {:.4}x of one d×d f64 matrix",
        per_decision * 1e3,
        state_ratio
    );

    let decisions: usize = std::env::var("LASER_BENCH_REFERENCE_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    if decisions == 0 {
        println!("headline reference: skipped (LASER_BENCH_REFERENCE_DECISIONS=0)");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/reference_linucb.py");
    let output = std::process::Command::new("python3")
        .args([script, "4096", "4", &decisions.to_string()])
        .output();
    match output {
        Ok(output) if output.status.success() => {
            let text = String::from_utf8_lossy(&output.stdout);
            print!("{text}");
            let reference: Option<f64> = text
                .lines()
                .filter_map(|l| l.strip_prefix("seconds_per_decision="))
                .next_back()
                .and_then(|v| v.parse().ok());
            if let Some(reference) = reference {
                println!(
                    "headline speedup per decision vs the reference algorithm (NumPy inv per arm per selection): {:.0}x",
                    reference / per_decision
                );
            }
        }
        Ok(output) => println!(
            "headline reference: failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(error) => println!("headline reference: python3 not runnable: {error}"),
    }
}

/// The rank-r factor update at d = 4096 against its floor and against the kernel it replaced
/// (faer's Givens-based `rank_r_update_clobber`), all three measured in alternating rounds,
/// each keeping its best; then the whole `update_batch` (factor, `b`, θ by two solves).
fn update_headline(machine: &Machine) {
    let dim = 4096;
    let par = Par::rayon(0);
    for rank in [64, 16, 8] {
        let contexts = Mat::<f64>::from_fn(dim, rank, |i, j| context(j, dim)[i] as f64);
        let mut machine_best = *machine;
        let (mut blocked, mut givens, mut whole) = (Duration::MAX, Duration::MAX, Duration::MAX);
        let start = warm_factor(dim);
        for _ in 0..3 {
            machine_best = machine_best.best(&measure_machine());
            let mut lower = start.clone();
            blocked = blocked.min(time_it(5, || {
                let mut rows = contexts.transpose().to_owned();
                laser_router::bandit::factor_update::rank_update(
                    lower.as_mut(),
                    rows.as_mut(),
                    par,
                );
            }));
            let mut lower = start.clone();
            givens = givens.min(time_it(5, || {
                let mut vectors = contexts.clone();
                let mut weights = faer::Col::<f64>::from_fn(rank, |_| 1.0);
                faer::linalg::cholesky::llt::update::rank_r_update_clobber(
                    lower.as_mut(),
                    vectors.as_mut(),
                    weights.as_diagonal_mut(),
                )
                .unwrap();
            }));
            let mut arm = LinUcbArm::new(dim, 1.0);
            whole = whole.min(time_it(5, || {
                arm.update_batch(contexts.as_ref(), &vec![0.5; rank])
            }));
        }
        let floor = Floor::of(&machine_best, dim, 1, rank);
        report(
            &format!("headline factor update d{dim}_r{rank} (blocked Householder)"),
            blocked,
            &floor,
        );
        report(
            &format!("headline factor update d{dim}_r{rank} (faer Givens, before)"),
            givens,
            &floor,
        );
        report(
            &format!("headline update_batch d{dim}_r{rank} (factor + b + θ)"),
            whole,
            &floor,
        );
        println!(
            "headline update d{dim}_r{rank}: blocked / Givens {:.2}x",
            blocked.as_secs_f64() / givens.as_secs_f64()
        );
    }
}

/// The factor of λI plus 32 bench contexts: a dense lower triangle, so the kernels run on
/// realistic data.
fn warm_factor(dim: usize) -> Mat<f64> {
    let mut arm = LinUcbArm::new(dim, 1.0);
    let warm = Mat::<f64>::from_fn(dim, 32, |i, j| context(1000 + j, dim)[i] as f64);
    arm.update_batch(warm.as_ref(), &[0.5; 32]);
    let data = arm.to_data();
    let mut lower = Mat::<f64>::zeros(dim, dim);
    let mut values = data.lower.iter();
    for j in 0..dim {
        for i in j..dim {
            lower[(i, j)] = *values.next().unwrap();
        }
    }
    lower
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| {
        filter.is_empty()
            || filter
                .iter()
                .any(|f| name.contains(f.as_str()) || f.contains(name))
    };
    let machine = measure_machine();
    let mut criterion = Criterion::default().configure_from_args();
    if wants("select") {
        bench_select(&mut criterion, &machine);
    }
    if wants("update") {
        bench_update(&mut criterion, &machine);
    }
    if wants("headline") {
        headline(&machine);
        update_headline(&machine);
    }
    criterion.final_summary();
}
