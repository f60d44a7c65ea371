//! Scoring throughput, printed side by side with its baselines, on the real demo RM
//! (`python3 scripts/make_demo_models.py` builds it; the bench says so when it is missing):
//! 1. the server's scoring path (queue, batcher, tokenization, ONNX Runtime) for one client
//!    sending one query at a time (8 responses; and a small fast workload of 2 short ones),
//!    vs ONNX Runtime alone from Python on the same model and the same batches
//!    (`benches/ort_alone.py`), alternating over three rounds: target ≥ 0.97×;
//! 2. a concurrency sweep, 1 → 64 clients each sending small queries: throughput, p50/p99
//!    latency, achieved batch sizes and padding, against the one-at-a-time baseline;
//! 3. LASeR (one RM per query, the demo's three heads in turn) vs the RM score ensemble (all
//!    K = 3 per query) on the same queries: queries per second, expected ≈ K×.
//!
//! `cargo bench --bench scoring`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use laser_router::models::{InputFormat, ModelSource, RewardModel, RewardModelSpec};

const RESPONSES_PER_QUERY: usize = 8;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Deterministic review-like texts of varied length.
fn batches(count: usize, responses: usize, words: (usize, usize)) -> Vec<(String, Vec<String>)> {
    const WORDS: &[&str] = &[
        "the",
        "medicine",
        "helped",
        "my",
        "pain",
        "but",
        "I",
        "had",
        "side",
        "effects",
        "like",
        "nausea",
        "and",
        "headaches",
        "doctor",
        "said",
        "to",
        "keep",
        "taking",
        "it",
        "after",
        "two",
        "weeks",
        "felt",
        "much",
        "better",
        "sleep",
        "improved",
        "would",
        "recommend",
        "careful",
        "with",
        "dosage",
    ];
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..count)
        .map(|i| {
            let responses = (0..responses)
                .map(|_| {
                    let len = words.0 + next() % words.1;
                    (0..len)
                        .map(|_| WORDS[next() % WORDS.len()])
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            (format!("How did treatment {i} work for you?"), responses)
        })
        .collect()
}

/// The demo's satisfaction head; `max_batch_delay_ms` None keeps the spec's default.
fn spec(max_batch_delay_ms: Option<u64>) -> RewardModelSpec {
    head_spec("satisfaction", 0, max_batch_delay_ms)
}

fn head_spec(name: &str, output_index: usize, max_batch_delay_ms: Option<u64>) -> RewardModelSpec {
    let mut spec = RewardModelSpec::new(
        name.into(),
        repo("models/demo/model.onnx"),
        repo("models/demo/tokenizer.json"),
        InputFormat::Pair,
    );
    spec.max_length = 256;
    spec.output = Some("logits".into());
    spec.output_index = output_index;
    spec.queue_capacity = 4096;
    if let Some(delay) = max_batch_delay_ms {
        spec.max_batch_delay_ms = delay;
    }
    if let Some(tokens) = std::env::var("LASER_BENCH_MAX_BATCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        spec.max_batch_tokens = tokens;
    }
    spec
}

/// ONNX Runtime alone from Python (`benches/ort_alone.py`) on the same batches: pairs/s.
fn ort_alone(work: &[(String, Vec<String>)]) -> Option<f64> {
    let file = std::env::temp_dir().join("laser-router-scoring-batches.json");
    let json: Vec<String> = work
        .iter()
        .map(|(p, rs)| {
            format!(
                "[{:?}, [{}]]",
                p,
                rs.iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    std::fs::write(&file, format!("[{}]", json.join(", "))).ok()?;
    let output = std::process::Command::new("python3")
        .arg(repo("benches/ort_alone.py"))
        .arg(repo("models/demo/model.onnx"))
        .arg(repo("models/demo/tokenizer.json"))
        .arg(&file)
        .output();
    match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("pairs_per_second="))
            .next_back()
            .and_then(|v| v.parse::<f64>().ok()),
        Ok(output) => {
            println!(
                "ort_alone.py failed: {}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            None
        }
        Err(error) => {
            println!("python3 not runnable: {error}");
            None
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !repo("models/demo/model.onnx").is_file() {
        println!(
            "scoring bench: models/demo/model.onnx is missing; run python3 scripts/make_demo_models.py"
        );
        return;
    }
    let metrics = laser_router::telemetry::install_metrics().unwrap();
    // (sequences, inferences, padded tokens, real tokens) recorded so far.
    let totals = || {
        let text = metrics.render();
        let value = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        [
            value("laser_rm_batch_size_sum"),
            value("laser_rm_batch_size_count"),
            value("laser_rm_padded_tokens_sum"),
            value("laser_rm_tokens_sum"),
        ]
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // 1. One client, one query at a time, vs ONNX Runtime alone on the same batches, with
    // the spec's default batching (a job starts as soon as the worker is free): the demo
    // workload (8 responses of 8-97 words) and a small fast one (2 responses of 4-11 words,
    // a few ms per inference, where any waiting in the batcher would show). Server and ORT
    // alone alternate over three rounds, each keeping its best.
    let work = batches(120, RESPONSES_PER_QUERY, (8, 90));
    let pairs = (work.len() * RESPONSES_PER_QUERY) as f64;
    let mut one_at_a_time = 0.0;
    for (label, workload) in [
        (
            "demo workload, one query of 8 responses at a time",
            work.clone(),
        ),
        (
            "small fast workload, one query of 2 short responses at a time",
            batches(400, 2, (4, 8)),
        ),
    ] {
        let model = Arc::new(RewardModel::load(spec(None), ModelSource::Config).unwrap());
        let workload_pairs: usize = workload.iter().map(|(_, rs)| rs.len()).sum();
        let (mut server, mut alone) = (0.0f64, None::<f64>);
        for _ in 0..3 {
            let started = Instant::now();
            runtime.block_on(async {
                for (prompt, responses) in &workload {
                    model
                        .score(prompt.clone(), responses.clone(), None)
                        .await
                        .unwrap();
                }
            });
            server = server.max(workload_pairs as f64 / started.elapsed().as_secs_f64());
            if let Some(rate) = ort_alone(&workload) {
                alone = Some(alone.map_or(rate, |best: f64| best.max(rate)));
            }
        }
        if one_at_a_time == 0.0 {
            one_at_a_time = server;
        }
        println!("server scoring path, 1 client, {label}: {server:.1} pairs/s (best of 3)");
        match alone {
            Some(alone) => println!(
                "  ONNX Runtime alone: {alone:.1} pairs/s (best of 3); ratio server / alone {:.2}",
                server / alone
            ),
            None => println!("  ONNX Runtime alone: not measured (see above)"),
        }
    }

    // 2. Concurrency sweep, each client sending queries: the batcher waiting up to 2 ms for
    // more work (the old default), and not waiting at all (the default: batches form from
    // what queued meanwhile).
    // Two rounds, alternating the delays, each (delay, clients) keeping its best.
    let mut best = std::collections::BTreeMap::<(u64, usize), f64>::new();
    for (round, delay_ms) in [(1, 2), (1, 0), (2, 2), (2, 0)] {
        let model = Arc::new(RewardModel::load(spec(Some(delay_ms)), ModelSource::Config).unwrap());
        println!(
            "concurrency sweep round {round} (batching across requests, max_batch_delay_ms = {delay_ms}, max_batch_tokens = {}):",
            model.spec().max_batch_tokens
        );
        for clients in [1usize, 4, 16, 64] {
            let before = totals();
            let started = Instant::now();
            let latencies = runtime.block_on(async {
                let tasks: Vec<_> = (0..clients)
                    .map(|c| {
                        let model = model.clone();
                        let mine: Vec<(String, Vec<String>)> =
                            work.iter().skip(c).step_by(clients).cloned().collect();
                        tokio::spawn(async move {
                            let mut latencies = Vec::new();
                            for (prompt, responses) in mine {
                                let sent = Instant::now();
                                model.score(prompt, responses, None).await.unwrap();
                                latencies.push(sent.elapsed());
                            }
                            latencies
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for task in tasks {
                    all.extend(task.await.unwrap());
                }
                all
            });
            let throughput = pairs / started.elapsed().as_secs_f64();
            let kept = best.entry((delay_ms, clients)).or_insert(0.0);
            *kept = kept.max(throughput);
            let after = totals();
            let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            let mut sorted = latencies;
            sorted.sort();
            println!(
                "  {clients:>2} clients: {throughput:.1} pairs/s ({:.2}x one-at-a-time), p50 {:.0} ms, p99 {:.0} ms, mean batch {:.1} sequences, padding ratio {:.2}",
                throughput / one_at_a_time,
                percentile(&sorted, 0.5).as_secs_f64() * 1e3,
                percentile(&sorted, 0.99).as_secs_f64() * 1e3,
                delta[0] / delta[1].max(1.0),
                delta[2] / delta[3].max(1.0)
            );
        }
        drop(model);
    }

    for delay_ms in [2, 0] {
        let rates: Vec<String> = best
            .iter()
            .filter(|((delay, _), _)| *delay == delay_ms)
            .map(|((_, clients), rate)| format!("{clients}: {rate:.1}"))
            .collect();
        println!(
            "concurrency sweep, best of 2 rounds, max_batch_delay_ms = {delay_ms}: pairs/s by clients {}",
            rates.join(", ")
        );
    }

    // 3. LASeR vs ensemble at K = 3, 8 concurrent clients, same queries.
    let heads: Vec<Arc<RewardModel>> = ["satisfaction", "caution", "detail"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Arc::new(RewardModel::load(head_spec(name, i, None), ModelSource::Config).unwrap())
        })
        .collect();
    let queries_per_second = |ensemble: bool| {
        let started = Instant::now();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..8usize)
                .map(|c| {
                    let heads = heads.clone();
                    let mine: Vec<(usize, (String, Vec<String>))> = work
                        .iter()
                        .cloned()
                        .enumerate()
                        .skip(c)
                        .step_by(8)
                        .collect();
                    tokio::spawn(async move {
                        for (i, (prompt, responses)) in mine {
                            if ensemble {
                                let jobs: Vec<_> = heads
                                    .iter()
                                    .map(|head| {
                                        let (head, prompt, responses) =
                                            (head.clone(), prompt.clone(), responses.clone());
                                        tokio::spawn(async move {
                                            head.score(prompt, responses, None).await.unwrap()
                                        })
                                    })
                                    .collect();
                                for job in jobs {
                                    job.await.unwrap();
                                }
                            } else {
                                heads[i % heads.len()]
                                    .score(prompt, responses, None)
                                    .await
                                    .unwrap();
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        work.len() as f64 / started.elapsed().as_secs_f64()
    };
    let laser = queries_per_second(false);
    let ensemble = queries_per_second(true);
    println!(
        "LASeR (one RM per query): {laser:.2} queries/s; ensemble (all K = 3 RMs): {ensemble:.2} queries/s"
    );
    println!(
        "ratio LASeR / ensemble at K = 3 (expected ≈ 3): {:.2}",
        laser / ensemble
    );
}
