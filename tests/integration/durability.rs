//! State survives restarts and SIGKILL: routers, pending decisions, applied feedback,
//! exactly once. The crash test kills the real server binary at random points.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use laser_router::api::pb;
use laser_router::api::pb::feedback_request::Signal;
use nalgebra::{DMatrix, DVector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

use crate::common::{Server, config, feedback, query, score_request};

const DIM: usize = 8;
const ROUTER: &str = "crash";

fn durable_config(snapshot_every: u64) -> String {
    durable_config_with(snapshot_every, &["length", "polite"])
}

fn durable_config_with(snapshot_every: u64, reward_models: &[&str]) -> String {
    format!(
        "[server]\nshutdown_grace_seconds = 0.5\n{}\n[store]\nsnapshot_every_records = {snapshot_every}\n",
        config(DIM, reward_models, "")
    )
}

/// Hot-add the fixture RM "polite" through Admin.
async fn add_polite(server: &Server) {
    let dir = crate::common::fixtures_dir();
    server
        .admin_client()
        .await
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(pb::RewardModelSpec {
                name: "polite".into(),
                model_path: dir.join("polite/model.onnx").display().to_string(),
                tokenizer_path: dir.join("tokenizer.json").display().to_string(),
                input_format: "pair".into(),
                output_name: "logits".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("add RM");
}

async fn reward_model_names(server: &Server) -> Vec<String> {
    server
        .admin_client()
        .await
        .list_reward_models(pb::ListRewardModelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .reward_models
        .into_iter()
        .map(|m| m.name)
        .collect()
}

async fn create_router(server: &Server) {
    server
        .admin_client()
        .await
        .create_router(pb::CreateRouterRequest {
            name: ROUTER.into(),
            settings: Some(pb::RouterSettings {
                context_dim: DIM as u32,
                normalization: pb::Normalization::None as i32,
                // The independent replay below works on the raw contexts and the rewards
                // less this centre.
                l2_normalize_context: Some(false),
                reward_center: Some(REWARD_CENTER),
                ..Default::default()
            }),
        })
        .await
        .expect("create router");
}

async fn get_router(server: &Server) -> pb::RouterInfo {
    server
        .admin_client()
        .await
        .get_router(pb::GetRouterRequest {
            name: ROUTER.into(),
        })
        .await
        .expect("router survives")
        .into_inner()
        .router
        .expect("router info")
}

fn pick_query(id: String, context: Vec<f32>) -> pb::Query {
    query(id, context, "Pick a number", ["seven", "Thank you, seven"])
}

fn reward_for(decision_id: &str) -> f64 {
    // Deterministic per decision, in [0, 1).
    let hash = decision_id
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    (hash % 1000) as f64 / 1000.0
}

fn feedback_request(decision_id: &str) -> pb::FeedbackRequest {
    feedback(
        ROUTER,
        [decision_id],
        Signal::Reward(reward_for(decision_id)),
    )
}

#[tokio::test]
async fn a_clean_restart_and_a_kill_keep_routers_decisions_and_feedback() {
    let data = tempfile::tempdir().unwrap();
    let config = durable_config(10_000);
    let server = Server::start_on(&config, data.path(), &[]).unwrap();
    create_router(&server).await;
    let mut client = server.router_client().await;
    let results = client
        .score(score_request(
            ROUTER,
            (0..3)
                .map(|i| pick_query(format!("q{i}"), vec![i as f32; DIM]))
                .collect(),
        ))
        .await
        .expect("score")
        .into_inner()
        .results;
    client
        .feedback(feedback_request(&results[0].decision_id))
        .await
        .expect("feedback");
    let before = get_router(&server).await;
    assert!(server.terminate(), "SIGTERM exits 0");

    // Clean restart (final snapshot): same router, decisions still pending.
    let server = Server::start_on(&config, data.path(), &[]).unwrap();
    assert_eq!(get_router(&server).await, before);
    let mut client = server.router_client().await;
    let again = client
        .feedback(feedback_request(&results[0].decision_id))
        .await
        .expect("repeat")
        .into_inner();
    assert_eq!(
        (again.applied, again.duplicate),
        (0, 1),
        "applied once, across a restart"
    );
    client
        .feedback(feedback_request(&results[1].decision_id))
        .await
        .expect("pending decision survives");
    let before_kill = get_router(&server).await;
    server.kill();

    // SIGKILL (no snapshot): the log alone brings everything back.
    let server = Server::start_on(&config, data.path(), &[]).unwrap();
    assert_eq!(get_router(&server).await, before_kill);
    let mut client = server.router_client().await;
    client
        .feedback(feedback_request(&results[2].decision_id))
        .await
        .expect("pending decision survives a kill");
    assert_eq!(get_router(&server).await.pending_decisions, 0);
}

#[derive(Default)]
struct Ledger {
    /// decision id -> (reward model, context)
    decisions: HashMap<String, (String, Vec<f32>)>,
    /// Feedback that got an OK reply.
    acked: HashSet<String>,
    /// Feedback sent without a reply (the server died): applied or not.
    uncertain: HashSet<String>,
    /// Decisions returned to the client that it has not answered yet.
    unanswered: Vec<String>,
}

async fn settle(server: &Server, ledger: &Mutex<Ledger>) {
    let mut client = server.router_client().await;
    let (uncertain, unanswered): (Vec<String>, Vec<String>) = {
        let mut ledger = ledger.lock().unwrap();
        (
            ledger.uncertain.drain().collect(),
            std::mem::take(&mut ledger.unanswered),
        )
    };
    // A retried feedback is applied at most once: OK either way, never NOT_FOUND.
    for id in uncertain.iter().chain(&unanswered) {
        let reply = client.feedback(feedback_request(id)).await;
        match reply {
            Ok(_) => {
                ledger.lock().unwrap().acked.insert(id.clone());
            }
            Err(status) => panic!("decision {id} lost across a crash: {status:?}"),
        }
    }
}

async fn trainer(addr: String, ledger: Arc<Mutex<Ledger>>, seed: u64) {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(addr)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
    else {
        return;
    };
    let mut client = pb::reward_router_client::RewardRouterClient::new(channel);
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let contexts: Vec<Vec<f32>> = (0..2)
            .map(|_| (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let request = score_request(
            ROUTER,
            contexts
                .iter()
                .enumerate()
                .map(|(i, c)| pick_query(format!("{seed}-{i}"), c.clone()))
                .collect(),
        );
        let Ok(reply) = client.score(request).await else {
            return;
        };
        let results = reply.into_inner().results;
        let mut to_answer = Vec::new();
        {
            let mut ledger = ledger.lock().unwrap();
            for (result, context) in results.iter().zip(contexts) {
                ledger.decisions.insert(
                    result.decision_id.clone(),
                    (result.reward_model.clone(), context),
                );
                if rng.random_bool(0.85) {
                    to_answer.push(result.decision_id.clone());
                } else {
                    ledger.unanswered.push(result.decision_id.clone());
                }
            }
        }
        for id in to_answer {
            ledger.lock().unwrap().uncertain.insert(id.clone());
            match client.feedback(feedback_request(&id)).await {
                Ok(_) => {
                    let mut ledger = ledger.lock().unwrap();
                    ledger.uncertain.remove(&id);
                    ledger.acked.insert(id);
                }
                Err(_) => return,
            }
        }
    }
}

/// The router's `reward_center` (the server's default, set explicitly).
const REWARD_CENTER: f64 = 0.5;

/// θ = (I + Σ x xᵀ)⁻¹ Σ (r − c) x over one arm's acknowledged feedback (λ = 1, no
/// normalization, c the reward centre).
fn expected_theta_norm(samples: &[(Vec<f32>, f64)]) -> f64 {
    let mut a = DMatrix::<f64>::identity(DIM, DIM);
    let mut b = DVector::<f64>::zeros(DIM);
    for (context, reward) in samples {
        let x = DVector::from_iterator(DIM, context.iter().map(|&v| v as f64));
        a += &x * x.transpose();
        b += &x * (*reward - REWARD_CENTER);
    }
    a.cholesky().expect("positive definite").solve(&b).norm()
}

#[tokio::test]
async fn sigkill_at_random_points_loses_no_acknowledged_feedback() {
    const KILLS: usize = 22;
    let data = tempfile::tempdir().unwrap();
    // Frequent snapshots, so kills also land during snapshot writes and log truncation.
    // "polite" is hot-added through Admin at the start and must come back every time.
    let config = durable_config_with(40, &["length"]);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = StdRng::seed_from_u64(2026);
    for kill in 0..KILLS {
        let server = Server::start_on(&config, data.path(), &[])
            .unwrap_or_else(|log| panic!("restart {kill} failed:\n{log}"));
        if kill == 0 {
            create_router(&server).await;
            add_polite(&server).await;
        } else {
            assert_eq!(
                reward_model_names(&server).await,
                ["length", "polite"],
                "restart {kill}"
            );
            let info = get_router(&server).await;
            let acked = ledger.lock().unwrap().acked.len() as u64;
            let applied: u64 = info.arms.iter().map(|a| a.feedback_count).sum();
            assert!(
                applied >= acked,
                "restart {kill}: {applied} applied < {acked} acknowledged"
            );
        }
        settle(&server, &ledger).await;
        let trainers: Vec<_> = (0..4)
            .map(|t| {
                tokio::spawn(trainer(
                    server.channel_uri(),
                    ledger.clone(),
                    (kill * 10 + t) as u64,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
        server.kill();
        for trainer in trainers {
            let _ = tokio::time::timeout(Duration::from_secs(15), trainer)
                .await
                .expect("trainer stops after the kill");
        }
    }

    let server = Server::start_on(&config, data.path(), &[]).unwrap();
    assert_eq!(reward_model_names(&server).await, ["length", "polite"]);
    settle(&server, &ledger).await;
    let info = get_router(&server).await;
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        ledger.acked.len() > 100,
        "the test drove too little traffic: {}",
        ledger.acked.len()
    );
    let mut per_arm: HashMap<&str, Vec<(Vec<f32>, f64)>> = HashMap::new();
    for id in &ledger.acked {
        let (reward_model, context) = &ledger.decisions[id];
        per_arm
            .entry(reward_model)
            .or_default()
            .push((context.clone(), reward_for(id)));
    }
    for arm in &info.arms {
        let samples = per_arm
            .remove(arm.reward_model.as_str())
            .unwrap_or_default();
        assert_eq!(
            arm.feedback_count,
            samples.len() as u64,
            "{}: applied exactly once",
            arm.reward_model
        );
        if samples.is_empty() {
            continue;
        }
        let mean = samples.iter().map(|(_, r)| r).sum::<f64>() / samples.len() as f64;
        assert!(
            (arm.mean_reward - mean).abs() < 1e-9,
            "{}: mean reward {} vs {mean}",
            arm.reward_model,
            arm.mean_reward
        );
        let theta = expected_theta_norm(&samples);
        assert!(
            (arm.theta_norm - theta).abs() <= 1e-6 * theta.max(1.0),
            "{}: |θ| {} vs replay of the acknowledged stream {theta}",
            arm.reward_model,
            arm.theta_norm
        );
    }
    assert!(
        per_arm.is_empty(),
        "feedback for arms the router lost: {:?}",
        per_arm.keys()
    );
    // Decisions recorded durably whose Score reply died with the server are pending (the
    // client never saw their ids): at most the queries in flight at each kill.
    assert!(
        info.pending_decisions <= (KILLS * 4 * 2) as u64,
        "{}",
        info.pending_decisions
    );

    // Acknowledged feedback is never applied twice.
    let mut client = server.router_client().await;
    for id in ledger.acked.iter().take(10) {
        let reply = client
            .feedback(feedback_request(id))
            .await
            .expect("repeat")
            .into_inner();
        assert_eq!((reply.applied, reply.duplicate), (0, 1));
    }
}

fn state_file(data: &Path, prefix: &str) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(data.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    files.sort();
    files.pop().expect("a non-empty state file")
}

#[tokio::test]
async fn a_torn_tail_is_reported_and_mid_log_damage_stops_startup() {
    let data = tempfile::tempdir().unwrap();
    let config = durable_config(0);
    let server = Server::start_on(&config, data.path(), &[]).unwrap();
    create_router(&server).await;
    let mut client = server.router_client().await;
    for i in 0..3 {
        let results = client
            .score(score_request(
                ROUTER,
                vec![pick_query(format!("q{i}"), vec![1.0; DIM])],
            ))
            .await
            .expect("score")
            .into_inner()
            .results;
        client
            .feedback(feedback_request(&results[0].decision_id))
            .await
            .expect("feedback");
    }
    let info = get_router(&server).await;
    server.kill();
    let log = state_file(data.path(), "wal-");
    let good = std::fs::read(&log).unwrap();

    // A torn tail: half a record appended, as a crash mid-write leaves it.
    let mut torn = good.clone();
    torn.extend_from_slice(&good[..good.len().min(40) / 2]);
    std::fs::write(&log, &torn).unwrap();
    let server = Server::start_on(&config, data.path(), &[])
        .expect("starts with everything before the tail");
    assert_eq!(get_router(&server).await, info);
    let stderr = server.stderr();
    assert!(
        stderr.contains(&format!("torn tail at byte {}", good.len())),
        "{stderr}"
    );
    server.kill();

    // Damage in the middle: refuse to start, naming the file.
    let mut damaged = std::fs::read(&log).unwrap();
    damaged[30] ^= 0xff;
    std::fs::write(&log, &damaged).unwrap();
    let refused = Server::start_on(&config, data.path(), &[])
        .err()
        .expect("refuses to start");
    assert!(
        refused.contains(&log.display().to_string()) && refused.contains("--recover-truncate"),
        "{refused}"
    );
    // With the explicit flag it starts, without the records from the damage on.
    let server = Server::start_on(&config, data.path(), &["--recover-truncate"])
        .expect("starts when told to truncate");
    let status = server
        .admin_client()
        .await
        .get_router(pb::GetRouterRequest {
            name: ROUTER.into(),
        })
        .await;
    assert_eq!(
        status
            .expect_err("the router's creation was after the damage")
            .code(),
        Code::NotFound
    );
}

fn state_command(args: &[&str], data: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_laser-router"))
        .arg("state")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run laser-router state")
}

#[tokio::test]
async fn a_router_moves_between_servers_by_export_and_import() {
    let first = tempfile::tempdir().unwrap();
    let config = durable_config(10_000);
    let server = Server::start_on(&config, first.path(), &[]).unwrap();
    create_router(&server).await;
    let mut client = server.router_client().await;
    let mut pending = None;
    for i in 0..6 {
        let results = client
            .score(score_request(
                ROUTER,
                vec![pick_query(format!("q{i}"), vec![i as f32 * 0.3; DIM])],
            ))
            .await
            .expect("score")
            .into_inner()
            .results;
        if i == 5 {
            pending = Some(results[0].decision_id.clone());
        } else {
            client
                .feedback(feedback_request(&results[0].decision_id))
                .await
                .expect("feedback");
        }
    }
    let original = get_router(&server).await;

    // The data directory is locked while its server runs.
    let busy = state_command(&["export", ROUTER, "/tmp/unused.lrs"], first.path());
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use"),
        "{busy:?}"
    );
    assert!(server.terminate());

    let file = first.path().join("crash.router");
    let export = state_command(&["export", ROUTER, file.to_str().unwrap()], first.path());
    assert!(export.status.success(), "{export:?}");
    let inspect = state_command(&["inspect"], first.path());
    assert!(
        String::from_utf8_lossy(&inspect.stdout).contains("2 arms, 1 pending decisions"),
        "{inspect:?}"
    );

    let second = tempfile::tempdir().unwrap();
    let import = state_command(&["import", "moved", file.to_str().unwrap()], second.path());
    assert!(import.status.success(), "{import:?}");
    let server = Server::start_on(&config, second.path(), &[]).unwrap();
    let moved = server
        .admin_client()
        .await
        .get_router(pb::GetRouterRequest {
            name: "moved".into(),
        })
        .await
        .expect("imported router")
        .into_inner()
        .router
        .expect("router");
    assert_eq!(moved.arms, original.arms);
    assert_eq!(moved.settings, original.settings);
    assert_eq!(moved.pending_decisions, 1);
    // The pending decision travelled too.
    let mut client = server.router_client().await;
    let mut request = feedback_request(&pending.unwrap());
    request.router = "moved".into();
    assert_eq!(
        client
            .feedback(request)
            .await
            .expect("feedback after the move")
            .into_inner()
            .applied,
        1
    );
}

/// Feedback of every form, each with an idempotency key, then SIGKILL: after the restart
/// every retry gets its first answer back and applies nothing again.
#[tokio::test]
async fn keyed_feedback_of_every_form_applies_once_across_a_kill() {
    let data = tempfile::tempdir().unwrap();
    let config = durable_config(10_000);
    let server = Server::start_on(&config, data.path(), &[]).unwrap();
    create_router(&server).await;
    let mut client = server.router_client().await;
    let grouped = |id: &str, value: f32| pb::Query {
        group: "prompt-7".into(),
        ..pick_query(id.into(), vec![value; DIM])
    };
    let results = client
        .score(score_request(
            ROUTER,
            vec![
                grouped("g0", 0.5),
                grouped("g1", 0.5),
                pick_query("q2".into(), vec![0.2; DIM]),
                pick_query("q3".into(), vec![0.3; DIM]),
                pick_query("q4".into(), vec![0.4; DIM]),
                pick_query("q5".into(), vec![0.6; DIM]),
            ],
        ))
        .await
        .expect("score")
        .into_inner()
        .results;
    let id = |i: usize| results[i].decision_id.clone();
    assert_eq!(id(0), id(1), "one decision per group");
    assert_eq!(get_router(&server).await.pending_decisions, 5);

    let by_ids = pb::FeedbackRequest {
        idempotency_key: "run/step-1/ids".into(),
        ..feedback(ROUTER, [id(2)], Signal::Loss(0.4))
    };
    let per_decision = pb::FeedbackRequest {
        router: ROUTER.into(),
        signals: [(3, 0.1), (4, 0.9)]
            .into_iter()
            .map(|(i, reward)| pb::DecisionSignal {
                decision_id: id(i),
                signal: Some(pb::decision_signal::Signal::Reward(reward)),
            })
            .collect(),
        idempotency_key: "run/step-1/signals".into(),
        ..Default::default()
    };
    let all_pending = pb::FeedbackRequest {
        router: ROUTER.into(),
        all_pending: true,
        signal: Some(Signal::Loss(0.25)),
        idempotency_key: "run/step-1/all".into(),
        ..Default::default()
    };
    let mut first = Vec::new();
    for request in [&by_ids, &per_decision, &all_pending] {
        let reply = client
            .feedback(request.clone())
            .await
            .expect("feedback")
            .into_inner();
        assert!(!reply.replayed);
        first.push(reply);
    }
    assert_eq!(
        first.iter().map(|r| r.applied).collect::<Vec<_>>(),
        vec![1, 2, 2],
        "the last one takes the group's decision and q5"
    );
    let before = get_router(&server).await;
    assert_eq!((before.pending_decisions, before.rewards_seen), (0, 4));
    server.kill();

    let server = Server::start_on(&config, data.path(), &[]).unwrap();
    assert_eq!(get_router(&server).await, before);
    let mut client = server.router_client().await;
    for (request, answer) in [&by_ids, &per_decision, &all_pending]
        .into_iter()
        .zip(&first)
    {
        let retry = client
            .feedback(request.clone())
            .await
            .expect("retry")
            .into_inner();
        assert!(retry.replayed, "{retry:?}");
        assert_eq!(
            (retry.applied, retry.duplicate, retry.not_applied),
            (answer.applied, answer.duplicate, answer.not_applied)
        );
    }
    assert_eq!(get_router(&server).await, before, "retries applied nothing");
    // The same key with another request is refused and changes nothing.
    let reused = client
        .feedback(pb::FeedbackRequest {
            signal: Some(Signal::Loss(0.9)),
            ..all_pending
        })
        .await
        .expect_err("key reused with another body");
    assert_eq!(reused.code(), tonic::Code::FailedPrecondition);
    assert!(
        reused.message().contains("run/step-1/all"),
        "{}",
        reused.message()
    );
    // The group's decision got its feedback: the group's next Score makes a new one.
    let next = client
        .score(score_request(ROUTER, vec![grouped("g2", 0.5)]))
        .await
        .expect("score")
        .into_inner()
        .results;
    assert_ne!(next[0].decision_id, id(0));
    assert_eq!(get_router(&server).await.pending_decisions, 1);
}
