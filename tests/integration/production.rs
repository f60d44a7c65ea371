//! Production behaviour: admin authentication, every limit, load shedding, deadlines, and
//! clients that send garbage.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use laser_router::api::pb;
use laser_router::api::pb::feedback_request::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_types::StatusExt;

use crate::common::{Server, config, feedback, fixtures_dir, score_request, sum_query};

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    request
}

#[tokio::test]
async fn admin_needs_the_token_when_one_is_configured() {
    let server = Server::start_on(
        &config(4, &["length"], ""),
        tempfile::tempdir().unwrap().path(),
        &["--admin-token", "s3cret-token"],
    )
    .unwrap();
    let mut admin = server.admin_client().await;
    let missing = admin
        .list_routers(pb::ListRoutersRequest {})
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("Bearer"),
        "{}",
        missing.message()
    );
    let wrong = admin
        .list_routers(with_token(pb::ListRoutersRequest {}, "guess"))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    admin
        .list_routers(with_token(pb::ListRoutersRequest {}, "s3cret-token"))
        .await
        .expect("right token");
    // Trainers do not need it.
    server
        .router_client()
        .await
        .score(score_request("run", vec![sum_query(vec![1.0; 4], ["4"])]))
        .await
        .expect("score without a token");
}

#[tokio::test]
async fn without_a_token_admin_is_refused_beyond_loopback() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_on(
        &config(4, &["length"], ""),
        data.path(),
        &["--listen", "0.0.0.0:0"],
    )
    .unwrap();
    let status = server
        .admin_client()
        .await
        .list_routers(pb::ListRoutersRequest {})
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("LASER_ADMIN_TOKEN"),
        "{}",
        status.message()
    );
    assert!(
        server.stderr().contains("admin RPCs are refused"),
        "startup warning"
    );
}

fn limited_config() -> String {
    let mut text = config(4, &["length"], "");
    text.push_str(
        "[limits]\nmax_message_bytes = 65536\nmax_queries_per_score = 3\nmax_responses_per_query = 2\nmax_text_bytes = 100\nmax_decision_ids_per_feedback = 2\nmax_context_dim = 8\nmax_routers = 2\nmax_reward_models = 2\n",
    );
    text
}

fn violation_field(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn every_limit_is_enforced_with_its_name_and_value() {
    let server = Server::start(&limited_config());
    let mut client = server.router_client().await;
    let mut admin = server.admin_client().await;
    let ok_query = || sum_query(vec![1.0; 4], ["4"]);

    let cases: Vec<(pb::ScoreRequest, Code, &str, &str)> = vec![
        (
            score_request("a", vec![ok_query(); 4]),
            Code::ResourceExhausted,
            "queries",
            "limits.max_queries_per_score = 3",
        ),
        (
            score_request("a", vec![sum_query(vec![1.0; 4], ["a", "b", "c"])]),
            Code::ResourceExhausted,
            "queries[0].responses",
            "limits.max_responses_per_query = 2",
        ),
        (
            score_request("a", vec![sum_query(vec![1.0; 4], vec!["x".repeat(101)])]),
            Code::ResourceExhausted,
            "queries[0].responses[0]",
            "limits.max_text_bytes = 100",
        ),
        (
            score_request("a", vec![sum_query(vec![1.0; 9], ["4"])]),
            Code::ResourceExhausted,
            "queries[0].context",
            "limits.max_context_dim = 8",
        ),
        (
            score_request("a", vec![sum_query(vec![1.0; 5], ["4"])]),
            Code::InvalidArgument,
            "queries[0].context",
            "expects 4",
        ),
    ];
    for (request, code, field, words) in cases {
        let status = client.score(request).await.expect_err("over a limit");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(words),
            "{words:?} not in {:?}",
            status.message()
        );
        assert_eq!(
            violation_field(&status),
            field,
            "BadRequest field violation"
        );
    }
    // The message size limit (tonic refuses the frame before decoding).
    let status = client
        .score(score_request(
            "a",
            vec![sum_query(vec![1.0; 4], vec!["y".repeat(70_000)])],
        ))
        .await
        .expect_err("message too large");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    assert!(status.message().contains("65536"), "{}", status.message());

    let results = client
        .score(score_request("a", vec![ok_query()]))
        .await
        .expect("valid")
        .into_inner()
        .results;
    let status = client
        .feedback(feedback(
            "a",
            vec![results[0].decision_id.clone(); 3],
            Signal::Loss(0.1),
        ))
        .await
        .expect_err("too many ids");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("limits.max_decision_ids_per_feedback = 2"),
        "{}",
        status.message()
    );

    // Routers per server: "a" exists; "b" fits; "c" does not.
    client
        .score(score_request("b", vec![ok_query()]))
        .await
        .expect("second router");
    let status = client
        .score(score_request("c", vec![ok_query()]))
        .await
        .expect_err("third router");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.max_routers = 2"),
        "{}",
        status.message()
    );
    let status = admin
        .create_router(pb::CreateRouterRequest {
            name: "d".into(),
            settings: Some(pb::RouterSettings {
                context_dim: 16,
                ..Default::default()
            }),
        })
        .await
        .expect_err("context_dim over the limit");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("limits.max_context_dim"),
        "{}",
        status.message()
    );

    // Reward models per server: one from the config, one added, a third refused.
    let spec = |name: &str| pb::RewardModelSpec {
        name: name.into(),
        model_path: fixtures_dir()
            .join("polite/model.onnx")
            .display()
            .to_string(),
        tokenizer_path: fixtures_dir().join("tokenizer.json").display().to_string(),
        input_format: "pair".into(),
        ..Default::default()
    };
    admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(spec("p1")),
        })
        .await
        .expect("second RM");
    let status = admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(spec("p2")),
        })
        .await
        .expect_err("third RM");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.max_reward_models = 2"),
        "{}",
        status.message()
    );
}

fn heavy_score(router: &str) -> pb::ScoreRequest {
    let responses: Vec<String> = (0..200)
        .map(|i| format!("response number {i} ").repeat(20))
        .collect();
    score_request(
        router,
        vec![sum_query(vec![1.0, 0.5, 0.25, 0.0], responses)],
    )
}

#[tokio::test]
async fn overload_sheds_quickly_and_deadlines_are_respected() {
    let mut text = config(4, &["length"], "");
    text.push_str("[limits]\nmax_concurrent_requests = 2\n");
    let server = Server::start(&text);
    let channel = tonic::transport::Endpoint::from_shared(server.channel_uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let mut client = pb::reward_router_client::RewardRouterClient::new(channel.clone());
            tokio::spawn(async move {
                let mut request = tonic::Request::new(heavy_score("load"));
                request.set_timeout(Duration::from_secs(20));
                let started = std::time::Instant::now();
                let result = client.score(request).await;
                (result.map(|r| r.into_inner()), started.elapsed())
            })
        })
        .collect();
    let (mut accepted, mut shed) = (0, 0);
    for task in tasks {
        let (result, took) = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("no client hangs")
            .unwrap();
        match result {
            Ok(response) => {
                assert_eq!(
                    response.results[0].scores.len(),
                    200,
                    "accepted work completes"
                );
                accepted += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("limits.max_concurrent_requests"),
                    "{}",
                    status.message()
                );
                assert!(
                    took < Duration::from_secs(5),
                    "refusals are quick: {took:?}"
                );
                shed += 1;
            }
        }
    }
    assert!(
        accepted >= 1 && shed >= 1,
        "accepted {accepted}, shed {shed}"
    );

    // A deadline that passes during the work: DEADLINE_EXCEEDED, and no decision recorded.
    let mut client = server.router_client().await;
    let before = pending(&server, "load").await;
    let mut request = tonic::Request::new(heavy_score("load"));
    request.set_timeout(Duration::from_millis(2));
    let status = client.score(request).await.expect_err("deadline");
    // The client gives up at its deadline too; the server must not record the decision.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pending(&server, "load").await,
        before,
        "no decision recorded past the deadline"
    );
}

async fn pending(server: &Server, router: &str) -> u64 {
    server
        .admin_client()
        .await
        .get_router(pb::GetRouterRequest {
            name: router.into(),
        })
        .await
        .expect("router")
        .into_inner()
        .router
        .expect("info")
        .pending_decisions
}

/// The valid traffic both servers see: the same requests in the same order.
async fn valid_round(
    client: &mut pb::reward_router_client::RewardRouterClient<tonic::transport::Channel>,
    round: usize,
) {
    let context = vec![(round % 3) as f32, 1.0, (round % 5) as f32 * 0.2, 0.5];
    let results = client
        .score(score_request(
            "steady",
            vec![sum_query(context, ["Four.", "It is 4, thanks!"])],
        ))
        .await
        .expect("valid traffic is served")
        .into_inner()
        .results;
    client
        .feedback(feedback(
            "steady",
            vec![results[0].decision_id.clone()],
            Signal::Loss((round % 7) as f64 * 0.1),
        ))
        .await
        .expect("valid feedback");
}

async fn router_arms(server: &Server) -> Vec<pb::ArmStatistics> {
    let mut info = server
        .admin_client()
        .await
        .get_router(pb::GetRouterRequest {
            name: "steady".into(),
        })
        .await
        .expect("router")
        .into_inner()
        .router
        .expect("info");
    for arm in &mut info.arms {
        arm.last_selected_unix_ms = 0;
    }
    info.arms
}

#[tokio::test]
async fn garbage_from_misbehaving_clients_changes_nothing_valid_traffic_would_not() {
    let reference = Server::start(&config(4, &["length", "polite"], ""));
    let attacked = Server::start(&config(4, &["length", "polite"], ""));
    let mut rng = StdRng::seed_from_u64(99);
    let mut reference_client = reference.router_client().await;
    let mut client = attacked.router_client().await;
    let rss_before = attacked.rss_kib();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for round in 0..60 {
        valid_round(&mut reference_client, round).await;
        valid_round(&mut client, round).await;
        // Raw garbage on the gRPC port: random bytes, a preface then garbage, truncated frames.
        for kind in 0..3 {
            if let Ok(mut stream) = TcpStream::connect(attacked.grpc) {
                let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                let noise: Vec<u8> = (0..rng.random_range(1..4096))
                    .map(|_| rng.random())
                    .collect();
                let bytes = match kind {
                    0 => noise,
                    1 => [preface.as_slice(), &noise].concat(),
                    _ => [preface.as_slice(), &[0, 0, 64, 0, 0, 0, 0, 0, 1]].concat(),
                };
                let _ = stream.write_all(&bytes);
            }
        }
        // Malformed requests through a real client.
        let bad = match round % 6 {
            0 => score_request(
                "steady",
                vec![sum_query(vec![f32::NAN, 1.0, 0.0, 0.0], ["a"])],
            ),
            1 => score_request(
                "steady",
                vec![sum_query(vec![1.0; 4], vec!["z".repeat(1_100_000)])],
            ),
            2 => pb::ScoreRequest {
                mode: 77,
                ..score_request("steady", vec![sum_query(vec![1.0; 4], ["a"])])
            },
            3 => score_request("steady", vec![sum_query(vec![1.0; 3], ["a"])]),
            4 => score_request("st eady", vec![sum_query(vec![1.0; 4], ["a"])]),
            _ => score_request("steady", vec![sum_query(vec![1.0; 4], [""; 0])]),
        };
        assert!(client.score(bad).await.is_err());
        let bad_feedback = feedback(
            "steady",
            vec![format!("forged-{round}")],
            Signal::Reward(f64::INFINITY),
        );
        assert!(client.feedback(bad_feedback).await.is_err());
        let oversized = score_request(
            "steady",
            vec![sum_query(vec![1.0; 4], vec!["w".repeat(17 << 20)])],
        );
        if round % 20 == 0 {
            assert!(client.score(oversized).await.is_err());
        }
    }
    assert_eq!(
        router_arms(&attacked).await,
        router_arms(&reference).await,
        "state equals valid traffic alone"
    );
    let rss_after = attacked.rss_kib();
    assert!(
        rss_after < rss_before * 2,
        "memory bounded: {rss_before} -> {rss_after} KiB"
    );
}
