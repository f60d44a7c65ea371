//! Reward models added and removed through Admin while routers run; durable across
//! restarts; bad specs change nothing; no memory creep over add/remove cycles.

use laser_router::api::pb;
use laser_router::api::pb::feedback_request::Signal;
use tonic::Code;

use crate::common::{Server, config, feedback, fixtures_dir, query, score_request};

fn spec(name: &str, model: &str) -> pb::RewardModelSpec {
    let dir = fixtures_dir();
    pb::RewardModelSpec {
        name: name.into(),
        model_path: dir.join(model).join("model.onnx").display().to_string(),
        tokenizer_path: dir.join("tokenizer.json").display().to_string(),
        input_format: "pair".into(),
        output_name: "logits".into(),
        ..Default::default()
    }
}

fn hello_request(router: &str) -> pb::ScoreRequest {
    let responses = ["Hi, thanks!", "Hello there, how are you today?"];
    score_request(
        router,
        vec![query("q", vec![1.0, 0.0, 0.0, 0.5], "Hello?", responses)],
    )
}

async fn names(server: &Server) -> Vec<(String, String)> {
    server
        .admin_client()
        .await
        .list_reward_models(pb::ListRewardModelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .reward_models
        .into_iter()
        .map(|m| (m.name, m.source))
        .collect()
}

fn durable_config() -> String {
    format!(
        "[server]\nshutdown_grace_seconds = 0.5\n{}",
        config(4, &["length"], "")
    )
}

#[tokio::test]
async fn added_rms_become_arms_survive_restarts_and_removed_rms_stop_being_used() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_on(&durable_config(), data.path(), &[]).unwrap();
    let mut admin = server.admin_client().await;
    let mut client = server.router_client().await;
    admin
        .create_router(pb::CreateRouterRequest {
            name: "rr".into(),
            settings: Some(pb::RouterSettings {
                context_dim: 4,
                policy: pb::Policy::RoundRobin as i32,
                ..Default::default()
            }),
        })
        .await
        .expect("create");
    let first = client
        .score(hello_request("rr"))
        .await
        .expect("score")
        .into_inner()
        .results
        .remove(0);
    assert_eq!(first.reward_model, "length");

    // Bad specs are refused with the reason and change nothing.
    let mut wrong_output = spec("polite", "polite");
    wrong_output.output_name = "score".into();
    let status = admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(wrong_output),
        })
        .await
        .expect_err("wrong output");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("\"score\"") && status.message().contains("logits"),
        "{}",
        status.message()
    );
    let status = admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(spec("ghost", "no-such-model")),
        })
        .await
        .expect_err("missing file");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("no-such-model"),
        "{}",
        status.message()
    );
    let status = admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(spec("length", "length")),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(
        names(&server).await,
        [("length".to_string(), "config".to_string())]
    );

    // A good one is published; the running router starts using it.
    let added = admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(spec("polite", "polite")),
        })
        .await
        .expect("add")
        .into_inner()
        .reward_model
        .expect("info");
    assert_eq!(
        added.input_names,
        ["input_ids", "attention_mask", "token_type_ids"]
    );
    let picks: Vec<String> = futures_lite_collect(&mut client, "rr", 4).await;
    assert!(
        picks.contains(&"polite".to_string()) && picks.contains(&"length".to_string()),
        "{picks:?}"
    );

    // Survives SIGKILL.
    server.kill();
    let server = Server::start_on(&durable_config(), data.path(), &[]).unwrap();
    assert_eq!(
        names(&server).await,
        [
            ("length".to_string(), "config".to_string()),
            ("polite".to_string(), "admin".to_string())
        ]
    );

    // Removing an RM (a config one here): not selected any more; feedback for its pending
    // decision is acknowledged, not applied.
    let mut admin = server.admin_client().await;
    let mut client = server.router_client().await;
    let pending_length = loop {
        let result = client
            .score(hello_request("rr"))
            .await
            .expect("score")
            .into_inner()
            .results
            .remove(0);
        if result.reward_model == "length" {
            break result.decision_id;
        }
    };
    admin
        .remove_reward_model(pb::RemoveRewardModelRequest {
            name: "length".into(),
        })
        .await
        .expect("remove");
    let picks: Vec<String> = futures_lite_collect(&mut client, "rr", 4).await;
    assert!(picks.iter().all(|p| p == "polite"), "{picks:?}");
    let reply = client
        .feedback(feedback("rr", vec![pending_length], Signal::Reward(1.0)))
        .await
        .expect("acknowledged")
        .into_inner();
    assert_eq!((reply.applied, reply.not_applied), (0, 1));
    let info = admin
        .get_router(pb::GetRouterRequest { name: "rr".into() })
        .await
        .expect("get")
        .into_inner()
        .router
        .expect("router");
    let length = info
        .arms
        .iter()
        .find(|a| a.reward_model == "length")
        .expect("still visible");
    assert!(length.removed);
    let status = admin
        .remove_reward_model(pb::RemoveRewardModelRequest {
            name: "length".into(),
        })
        .await
        .expect_err("already removed");
    assert_eq!(status.code(), Code::NotFound);

    // The removal survives a restart too, although the config still names the RM.
    assert!(server.terminate());
    let server = Server::start_on(&durable_config(), data.path(), &[]).unwrap();
    assert_eq!(
        names(&server).await,
        [("polite".to_string(), "admin".to_string())]
    );
}

async fn futures_lite_collect(
    client: &mut pb::reward_router_client::RewardRouterClient<tonic::transport::Channel>,
    router: &str,
    count: usize,
) -> Vec<String> {
    let mut picks = Vec::new();
    for _ in 0..count {
        picks.push(
            client
                .score(hello_request(router))
                .await
                .expect("score")
                .into_inner()
                .results
                .remove(0)
                .reward_model,
        );
    }
    picks
}

#[tokio::test]
async fn a_hundred_add_remove_cycles_do_not_grow_memory() {
    let server = Server::start(&config(4, &["length"], ""));
    let mut admin = server.admin_client().await;
    let mut client = server.router_client().await;
    let cycle = |admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .add_reward_model(pb::AddRewardModelRequest {
                    spec: Some(spec("polite", "polite")),
                })
                .await
                .expect("add");
            admin
                .remove_reward_model(pb::RemoveRewardModelRequest {
                    name: "polite".into(),
                })
                .await
                .expect("remove");
        }
    };
    // Warm up allocator pools and ONNX Runtime's caches first.
    for _ in 0..10 {
        cycle(&mut admin).await;
        client.score(hello_request("mem")).await.expect("score");
    }
    let threads = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap()
    };
    // Measure once removed models' workers have exited (they free their session on exit).
    let baseline_threads = threads();
    let settled_rss = || async {
        for _ in 0..50 {
            if threads() <= baseline_threads {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        server.rss_kib()
    };
    let before = settled_rss().await;
    for i in 0..100 {
        cycle(&mut admin).await;
        client.score(hello_request("mem")).await.expect("score");
        if std::env::var("LASER_DEBUG_RSS").is_ok() && i % 20 == 0 {
            let threads =
                std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
            let threads = threads
                .lines()
                .find(|l| l.starts_with("Threads:"))
                .unwrap()
                .to_string();
            eprintln!("cycle {i}: rss {} KiB, {threads}", server.rss_kib());
        }
    }
    let after = settled_rss().await;
    let growth = after as f64 / before as f64 - 1.0;
    eprintln!(
        "RSS over 100 add/remove cycles: {before} KiB -> {after} KiB ({:+.1}%)",
        growth * 100.0
    );
    assert!(
        growth < 0.10,
        "RSS grew {:.1}%: {before} -> {after} KiB",
        growth * 100.0
    );
}
