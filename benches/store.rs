//! Durable state benches, printed side by side with their baselines:
//! 1. feedback throughput with durability on (log + group-committed fsync) vs off (memory),
//!    from 8 concurrent clients: the ratio shows what durability costs;
//! 2. recovery time of a router with 1M applied feedbacks at d = 64 (log replay only, and
//!    from a snapshot);
//! 3. snapshot cost per arm at d = 4096 (time and bytes) and recovery of 4 such arms.
//!
//! `cargo bench --bench store`. Files go under `target/bench-store` (a real disk, so fsync
//! costs what it costs). `LASER_BENCH_FEEDBACKS` scales part 2 (default 1000000).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use laser_router::bandit::Normalization;
use laser_router::routers::{
    FeedbackForm, FeedbackSignal, RouterSettings, Routers, RoutersOptions,
};
use laser_router::store::{Store, StoreOptions};

const ROUTER: &str = "bench";

fn settings(dim: usize) -> RouterSettings {
    RouterSettings {
        normalization: Normalization::LASER,
        max_pending_decisions: 1 << 22,
        pending_ttl: Duration::from_secs(1 << 30),
        context_dim: dim,
        ..RouterSettings::default()
    }
}

fn routers_options(dim: usize) -> RoutersOptions {
    RoutersOptions {
        defaults: (&settings(dim)).into(),
        max_context_dim: 1 << 16,
        ..RoutersOptions::default()
    }
}

fn serving(arms: usize) -> Vec<String> {
    (0..arms).map(|k| format!("rm{k}")).collect()
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-store")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn open(dir: Option<&Path>, dim: usize, fsync: bool) -> Routers {
    let store = match dir {
        Some(dir) => {
            let options = StoreOptions {
                durable: true,
                fsync,
                segment_bytes: 64 << 20,
                recover_truncate: false,
                postgres_url: None,
                postgres_stream: String::new(),
                lease: std::time::Duration::from_secs(10),
                advertise: None,
            };
            let (store, recovered) = Store::open(dir, &options).unwrap();
            let routers = Routers::with_store(routers_options(dim), store);
            routers.recover(recovered).unwrap();
            return routers;
        }
        None => Store::in_memory(),
    };
    Routers::with_store(routers_options(dim), store)
}

fn context(t: usize, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|i| ((t * dim + i) as f32 * 0.001).sin())
        .collect()
}

/// Record `count` decisions (batches of `batch`); returns their ids.
fn record(
    routers: &Routers,
    dim: usize,
    arms: usize,
    start: usize,
    count: usize,
    batch: usize,
) -> Vec<String> {
    let serving = serving(arms);
    let (router, created) = routers.get_or_create(ROUTER, &serving).unwrap();
    if let Some(created) = created {
        created.wait_blocking().unwrap();
    }
    let mut ids = Vec::with_capacity(count);
    for first in (start..start + count).step_by(batch) {
        let contexts: Vec<Vec<f32>> = (first..first + batch).map(|t| context(t, dim)).collect();
        let mut selection = router
            .lock()
            .unwrap()
            .select(&contexts, None, false, &serving)
            .unwrap();
        let batch_ids: Vec<String> = (0..selection.decisions.len())
            .map(|i| format!("d{}", first + i))
            .collect();
        let mut next = batch_ids.iter().cloned();
        selection.assign_ids(|| next.next().expect("one id per decision"));
        let durable = routers.record(&router, &selection, 0).unwrap().durable;
        durable.wait_blocking().unwrap();
        ids.extend(batch_ids);
    }
    ids
}

fn feedback(routers: &Routers, ids: Vec<String>, arms: usize, reward: f64) {
    let applied = routers
        .feedback(
            ROUTER,
            FeedbackForm::Decisions {
                decision_ids: ids,
                signal: FeedbackSignal::Reward(reward),
            },
            None,
            serving(arms),
            0,
            0,
        )
        .unwrap();
    applied.durable.wait_blocking().unwrap();
}

/// Feedback per second from `clients` threads, one decision per Feedback request.
fn feedback_throughput(routers: Arc<Routers>, clients: usize, per_client: usize) -> f64 {
    let ids = record(&routers, 64, 4, 0, clients * per_client, 64);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for chunk in ids.chunks(per_client) {
            let routers = routers.clone();
            scope.spawn(move || {
                for (i, id) in chunk.iter().enumerate() {
                    feedback(&routers, vec![id.clone()], 4, (i % 10) as f64 / 10.0);
                }
            });
        }
    });
    (clients * per_client) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // 1. Durability on vs off.
    for clients in [1, 8, 64] {
        let per_client = 12_000 / clients;
        let memory = feedback_throughput(Arc::new(open(None, 64, true)), clients, per_client);
        let durable = feedback_throughput(
            Arc::new(open(Some(&fresh_dir("throughput")), 64, true)),
            clients,
            per_client,
        );
        println!(
            "feedback throughput, {clients} concurrent clients, d=64 K=4, one decision per request:"
        );
        println!("  durability off (memory): {memory:.0} feedback/s");
        println!("  durability on (log + fsync, group commit): {durable:.0} feedback/s");
        println!("  ratio on/off: {:.2}", durable / memory);
    }

    // 2. Recovery of 1M applied feedbacks at d = 64.
    let total: usize = std::env::var("LASER_BENCH_FEEDBACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = fresh_dir("recovery-d64");
    let started = Instant::now();
    {
        let routers = open(Some(&dir), 64, false);
        let batch = 64;
        for first in (0..total).step_by(batch) {
            let ids = record(&routers, 64, 4, first, batch, batch);
            feedback(&routers, ids, 4, (first % 7) as f64 / 7.0);
        }
    }
    let log_bytes: u64 = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "recovery, d=64 K=4, {total} applied feedbacks (64 per request), log {:.0} MB written in {:.1} s:",
        log_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let routers = open(Some(&dir), 64, false);
    let replay = started.elapsed();
    println!("  from the log alone: {:.2} s", replay.as_secs_f64());
    let started = Instant::now();
    let (_, bytes) = routers.snapshot().unwrap().unwrap();
    println!(
        "  snapshot: {:.3} s, {} bytes",
        started.elapsed().as_secs_f64(),
        bytes
    );
    drop(routers);
    let started = Instant::now();
    let routers = open(Some(&dir), 64, false);
    let from_snapshot = started.elapsed();
    println!(
        "  from the snapshot: {:.3} s (ratio to log replay {:.4})",
        from_snapshot.as_secs_f64(),
        from_snapshot.as_secs_f64() / replay.as_secs_f64()
    );
    drop(routers);

    // 3. Snapshot cost per arm at d = 4096.
    let dim = 4096;
    let arms = 4;
    let dir = fresh_dir("snapshot-d4096");
    let routers = open(Some(&dir), dim, true);
    let ids = record(&routers, dim, arms, 0, 64, 64);
    feedback(&routers, ids, arms, 0.5);
    let started = Instant::now();
    let (_, bytes) = routers.snapshot().unwrap().unwrap();
    let took = started.elapsed();
    println!(
        "snapshot, d=4096 K=4 (one arm's factor is {:.0} MB in memory):",
        (dim * dim * 8) as f64 / 1e6
    );
    println!(
        "  {:.3} s, {:.1} MB in all; per arm {:.3} s and {:.1} MB (lower triangle only: {:.2}x the factor)",
        took.as_secs_f64(),
        bytes as f64 / 1e6,
        took.as_secs_f64() / arms as f64,
        bytes as f64 / 1e6 / arms as f64,
        bytes as f64 / arms as f64 / (dim * dim * 8) as f64
    );
    drop(routers);
    let started = Instant::now();
    let routers = open(Some(&dir), dim, true);
    println!(
        "  recovery of the 4 arms from it: {:.3} s",
        started.elapsed().as_secs_f64()
    );
    drop(routers);
    let _ =
        std::fs::remove_dir_all(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-store"));
}
