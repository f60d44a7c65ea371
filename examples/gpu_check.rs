//! The GPU check (issue 18): starts the release server with reward models on an execution
//! provider (`cuda` on a GPU machine, `cpu` for the dry run here), and measures, into a
//! markdown report:
//! 1. scores on the provider vs the CPU provider on the same texts (worst difference), an
//!    unavailable provider's refusal (ONNX Runtime's reason) and `fallback_to_cpu`;
//! 2. throughput (pairs/s) on the provider vs CPU, one query at a time vs concurrent clients
//!    (1 / 16 / 64), over a sweep of `max_batch_tokens`;
//! 3. two RMs on one device under concurrent LinUCB traffic (selections, errors);
//! 4. device memory (nvidia-smi; RSS on the CPU dry run) before and after 20 hot add/remove
//!    cycles of an RM on the provider.
//!
//! It needs only the server binary, the model folder and this binary (no Python on the GPU
//! machine): `gpu_check --server BIN --models DIR --provider cuda|cpu --out DIR [--quick]`.
//! `scripts/gpu-check.sh` runs it; `scripts/stage-gpu-check.sh` prepares what travels.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use laser_router::api::pb;
use laser_router::api::pb::admin_client::AdminClient;
use laser_router::api::pb::reward_router_client::RewardRouterClient;
use tonic::transport::Channel;

struct Args {
    server: PathBuf,
    models: PathBuf,
    provider: String,
    out: PathBuf,
    quick: bool,
}

fn args() -> Args {
    let mut args = std::env::args().skip(1);
    let (mut server, mut models, mut provider, mut out, mut quick) =
        (None, None, "cuda".to_string(), PathBuf::from("."), false);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--server" => server = args.next().map(PathBuf::from),
            "--models" => models = args.next().map(PathBuf::from),
            "--provider" => provider = args.next().expect("--provider NAME"),
            "--out" => out = PathBuf::from(args.next().expect("--out DIR")),
            "--quick" => quick = true,
            other => panic!("unknown argument {other}"),
        }
    }
    Args {
        server: server.expect("--server BIN"),
        models: std::fs::canonicalize(models.expect("--models DIR"))
            .expect("the models folder exists"),
        provider,
        out,
        quick,
    }
}

/// The demo RM's spec (`model.onnx` + `tokenizer.json` in `models`), reading head `index`.
fn spec(models: &Path, name: &str, provider: &str, index: u32, batch_tokens: u32) -> String {
    format!(
        "[[reward_models]]\nname = \"{name}\"\nmodel = \"{}\"\ntokenizer = \"{}\"\ninput_format = \"pair\"\nmax_length = 256\noutput = \"logits\"\noutput_index = {index}\nprovider = \"{provider}\"\nmax_batch_tokens = {batch_tokens}\nmax_batch_sequences = 256\n",
        models.join("model.onnx").display(),
        models.join("tokenizer.json").display()
    )
}

fn add_spec(models: &Path, name: &str, provider: &str, batch_tokens: u32) -> pb::RewardModelSpec {
    pb::RewardModelSpec {
        name: name.into(),
        model_path: models.join("model.onnx").display().to_string(),
        tokenizer_path: models.join("tokenizer.json").display().to_string(),
        input_format: "pair".into(),
        max_length: 256,
        output_name: "logits".into(),
        provider: provider.into(),
        max_batch_tokens: batch_tokens,
        max_batch_sequences: 256,
        ..Default::default()
    }
}

struct Server {
    child: Child,
    grpc: String,
    _dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &Path, config: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("gpu-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[store]\ndurable = false\n[routers]\ncontext_dim = 8\nnormalization = \"none\"\n{config}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let grpc = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("grpc="))
        .unwrap_or_else(|| panic!("no ready line: {line:?}"))
        .to_string();
    Server {
        child,
        grpc,
        _dir: dir,
    }
}

/// Review-like texts of varied length.
fn texts(count: usize) -> Vec<(String, Vec<String>)> {
    let words = "the medicine helped my pain but I had side effects like nausea and headaches so my doctor changed the dose after two weeks and now I sleep well".split(' ').collect::<Vec<_>>();
    (0..count)
        .map(|q| {
            let responses = (0..8)
                .map(|r| {
                    let length = 8 + (q * 7 + r * 13) % 90;
                    (0..length)
                        .map(|i| words[(q + r * 3 + i) % words.len()])
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            (format!("How did treatment {q} work for you?"), responses)
        })
        .collect()
}

fn score_request(
    router: &str,
    (prompt, responses): &(String, Vec<String>),
    q: usize,
) -> pb::ScoreRequest {
    pb::ScoreRequest {
        router: router.into(),
        queries: vec![pb::Query {
            id: q.to_string(),
            context: (0..8).map(|i| ((q * 8 + i) as f32 * 0.37).sin()).collect(),
            prompt: prompt.clone(),
            responses: responses.clone(),
            group: String::new(),
            category: String::new(),
        }],
        mode: 0,
        explain: false,
    }
}

async fn fixed_router(admin: &mut AdminClient<Channel>, name: &str, reward_model: &str) {
    admin
        .create_router(pb::CreateRouterRequest {
            name: name.into(),
            settings: Some(pb::RouterSettings {
                policy: pb::Policy::Fixed as i32,
                fixed_reward_model: reward_model.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("router");
}

/// Pairs per second scoring `work` through `router` from `clients` concurrent clients.
async fn throughput(
    channel: &Channel,
    router: &str,
    work: &Arc<Vec<(String, Vec<String>)>>,
    clients: usize,
) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (mut stub, work, router) = (
            RewardRouterClient::new(channel.clone()),
            work.clone(),
            router.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut pairs = 0usize;
            for q in (client..work.len()).step_by(clients) {
                let reply = stub
                    .score(score_request(&router, &work[q], q))
                    .await
                    .expect("score");
                pairs += reply.into_inner().results[0].scores.len();
            }
            pairs
        }));
    }
    let mut pairs = 0;
    for task in tasks {
        pairs += task.await.unwrap();
    }
    pairs as f64 / started.elapsed().as_secs_f64()
}

/// The server's device memory in MiB (nvidia-smi), or its RSS on CPU.
fn memory_mib(pid: u32, provider: &str) -> f64 {
    if provider == "cpu" {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        return status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0);
    }
    let output = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output();
    output
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (p, used) = line.split_once(',')?;
            (p.trim().parse::<u32>().ok()? == pid).then(|| used.trim().parse::<f64>().ok())?
        })
        .sum()
}

#[tokio::main]
async fn main() {
    let args = args();
    let p = args.provider.as_str();
    let mut report = vec![format!(
        "# GPU check: provider `{p}`{}\n",
        if args.quick { " (quick dry run)" } else { "" }
    )];
    if let Ok(smi) = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ])
        .output()
    {
        report.push(format!(
            "Device: {}\n",
            String::from_utf8_lossy(&smi.stdout).trim()
        ));
    }
    let config = [
        spec(&args.models, "satisfaction", p, 0, 1024),
        spec(&args.models, "caution", p, 1, 1024),
        spec(&args.models, "satisfaction-cpu", "cpu", 0, 1024),
    ]
    .concat();
    let server = start(&args.server, &config);
    let channel = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminClient::new(channel.clone());
    let mut router = RewardRouterClient::new(channel.clone());
    let listed = admin
        .list_reward_models(pb::ListRewardModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    report.push("## 1. Scores on the provider vs CPU\n".into());
    for model in &listed.reward_models {
        report.push(format!("- `{}` runs on `{}`", model.name, model.provider));
    }

    fixed_router(&mut admin, "on-provider", "satisfaction").await;
    fixed_router(&mut admin, "on-cpu", "satisfaction-cpu").await;
    let work = Arc::new(texts(if args.quick { 16 } else { 128 }));
    let mut worst = 0f32;
    for (q, item) in work.iter().enumerate().take(32) {
        let a = router
            .score(score_request("on-provider", item, q))
            .await
            .unwrap()
            .into_inner()
            .results
            .remove(0);
        let b = router
            .score(score_request("on-cpu", item, q))
            .await
            .unwrap()
            .into_inner()
            .results
            .remove(0);
        for (x, y) in a.scores.iter().zip(&b.scores) {
            worst = worst.max((x - y).abs());
        }
    }
    report.push(format!(
        "\nWorst |provider − CPU| over {} queries × 8 responses: {worst:.2e} (target ≤ 1e-3: {})\n",
        work.len().min(32),
        if worst <= 1e-3 { "met" } else { "NOT met" }
    ));

    // A provider that cannot load, then the same with fallback_to_cpu.
    let missing = if p == "cpu" { "cuda" } else { "tensorrt" };
    let refused = admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(add_spec(&args.models, "unavailable", missing, 1024)),
        })
        .await;
    report.push(match refused {
        Err(status) => format!(
            "- `{missing}` without fallback: refused, {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(reply) => format!(
            "- `{missing}` without fallback: loaded on `{}`",
            reply.into_inner().reward_model.unwrap().provider
        ),
    });
    let fallback = admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(pb::RewardModelSpec {
                fallback_to_cpu: true,
                ..add_spec(&args.models, "fallback", missing, 1024)
            }),
        })
        .await;
    report.push(match fallback {
        Ok(reply) => format!(
            "- `{missing}` with fallback_to_cpu: loaded on `{}`\n",
            reply.into_inner().reward_model.unwrap().provider
        ),
        Err(status) => format!(
            "- `{missing}` with fallback_to_cpu: refused, {}\n",
            status.message()
        ),
    });
    for name in ["unavailable", "fallback"] {
        let _ = admin
            .remove_reward_model(pb::RemoveRewardModelRequest { name: name.into() })
            .await;
    }

    report.push("## 2. Throughput (pairs/s), one query of 8 responses per Score\n".into());
    let concurrency: &[usize] = if args.quick { &[1, 4] } else { &[1, 16, 64] };
    let budgets: &[u32] = if args.quick {
        &[1024, 4096]
    } else {
        &[1024, 4096, 16384, 65536]
    };
    let cpu_work = Arc::new(
        work.iter()
            .take(if args.quick { 8 } else { 48 })
            .cloned()
            .collect::<Vec<_>>(),
    );
    let cpu_one = throughput(&channel, "on-cpu", &cpu_work, 1).await;
    let cpu_many = throughput(&channel, "on-cpu", &cpu_work, concurrency[1]).await;
    report.push(format!("CPU provider, max_batch_tokens 1024: {cpu_one:.1} pairs/s one at a time, {cpu_many:.1} with {} clients\n", concurrency[1]));
    report.push(format!(
        "| max_batch_tokens | {} |",
        concurrency
            .iter()
            .map(|c| format!("{c} clients"))
            .collect::<Vec<_>>()
            .join(" | ")
    ));
    report.push(format!("|---|{}", "---|".repeat(concurrency.len())));
    let mut best = (0f64, 0u32, 0usize);
    for &tokens in budgets {
        let name = format!("sweep-{tokens}");
        admin
            .add_reward_model(pb::AddRewardModelRequest {
                spec: Some(add_spec(&args.models, &name, p, tokens)),
            })
            .await
            .expect("sweep RM");
        fixed_router(&mut admin, &name, &name).await;
        let _ = throughput(
            &channel,
            &name,
            &Arc::new(work.iter().take(4).cloned().collect()),
            1,
        )
        .await; // warm up
        let mut row = Vec::new();
        for &clients in concurrency {
            let rate = throughput(&channel, &name, &work, clients).await;
            if rate > best.0 {
                best = (rate, tokens, clients);
            }
            row.push(format!("{rate:.1}"));
        }
        report.push(format!("| {tokens} | {} |", row.join(" | ")));
        admin
            .delete_router(pb::DeleteRouterRequest { name: name.clone() })
            .await
            .unwrap();
        admin
            .remove_reward_model(pb::RemoveRewardModelRequest { name })
            .await
            .unwrap();
    }
    report.push(format!("\nBest: {:.1} pairs/s at max_batch_tokens = {} with {} clients: {:.1}× the CPU provider's best ({:.1})\n", best.0, best.1, best.2, best.0 / cpu_one.max(cpu_many), cpu_one.max(cpu_many)));

    report.push("## 3. Two RMs on one device, LinUCB choosing, concurrent traffic\n".into());
    admin
        .create_router(pb::CreateRouterRequest {
            name: "two".into(),
            settings: Some(pb::RouterSettings {
                reward_models: vec!["satisfaction".into(), "caution".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let clients = concurrency[concurrency.len() - 1];
    for client in 0..clients {
        let (mut stub, work, errors) = (
            RewardRouterClient::new(channel.clone()),
            work.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Three passes over the texts, each client taking every `clients`-th query.
            for q in (client..3 * work.len())
                .step_by(clients)
                .map(|q| q % work.len())
            {
                match stub.score(score_request("two", &work[q], q)).await {
                    Ok(reply) => {
                        let result = reply.into_inner().results.remove(0);
                        let reward = if result.reward_model == "caution" {
                            0.8
                        } else {
                            0.2
                        };
                        let feedback = pb::FeedbackRequest {
                            router: "two".into(),
                            decision_ids: vec![result.decision_id],
                            signal: Some(pb::feedback_request::Signal::Reward(reward)),
                            ..Default::default()
                        };
                        if stub.feedback(feedback).await.is_err() {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let info = admin
        .get_router(pb::GetRouterRequest { name: "two".into() })
        .await
        .unwrap()
        .into_inner()
        .router
        .unwrap();
    for arm in &info.arms {
        report.push(format!(
            "- `{}`: {} selections, mean reward {:.2}",
            arm.reward_model, arm.selections, arm.mean_reward
        ));
    }
    report.push(format!(
        "- errors: {}\n",
        errors.load(std::sync::atomic::Ordering::Relaxed)
    ));

    report.push("## 4. Memory over 20 hot add/remove cycles of an RM on the provider\n".into());
    let pid = server.child.id();
    let cycle = |admin: &mut AdminClient<Channel>, i: usize| {
        let mut admin = admin.clone();
        let spec = add_spec(&args.models, &format!("cycle-{i}"), p, 1024);
        async move {
            admin
                .add_reward_model(pb::AddRewardModelRequest {
                    spec: Some(spec.clone()),
                })
                .await
                .expect("add");
            admin
                .remove_reward_model(pb::RemoveRewardModelRequest { name: spec.name })
                .await
                .expect("remove");
        }
    };
    cycle(&mut admin, 0).await; // allocator and provider arenas warm
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = memory_mib(pid, p);
    let mut halfway = 0.0;
    for i in 1..=20 {
        cycle(&mut admin, i).await;
        if i == 10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            halfway = memory_mib(pid, p);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = memory_mib(pid, p);
    let growth = if before > 0.0 {
        (after - before) / before * 100.0
    } else {
        f64::NAN
    };
    report.push(format!("{} before: {before:.0} MiB, after 10 cycles: {halfway:.0} MiB, after 20: {after:.0} MiB, growth {growth:.1}% (target ≤ 5%: {})\n", if p == "cpu" { "RSS" } else { "GPU memory (nvidia-smi)" }, if growth <= 5.0 { "met" } else { "NOT met" }));

    let text = report.join("\n") + "\n";
    std::fs::create_dir_all(&args.out).unwrap();
    std::fs::write(args.out.join("gpu-report.md"), &text).unwrap();
    println!("{text}");
}
