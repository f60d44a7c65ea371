//! Process-level behaviour: health, reflection, metrics, per-batch mode, startup errors.

use laser_router::api::pb;
use laser_router::api::pb::feedback_request::Signal;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{Server, config, feedback, http_get, query, score_request};

#[tokio::test]
async fn health_reports_serving_for_both_services() {
    let server = Server::start(&config(4, &["length"], ""));
    let channel = tonic::transport::Channel::from_shared(server.channel_uri())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["laser.v1.RewardRouter", "laser.v1.Admin"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    // The container health check command agrees.
    let probe = std::process::Command::new(env!("CARGO_BIN_EXE_laser-router"))
        .args(["health", "--addr", &server.grpc.to_string()])
        .output()
        .unwrap();
    assert!(probe.status.success(), "{probe:?}");
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "SERVING");
    let nobody = std::process::Command::new(env!("CARGO_BIN_EXE_laser-router"))
        .args(["health", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!nobody.status.success());
}

#[tokio::test]
async fn per_batch_mode_shares_one_decision_and_metrics_show_it() {
    let server = Server::start(&config(4, &["length", "polite"], ""));
    let mut client = server.router_client().await;
    let queries = (0..3)
        .map(|i| {
            query(
                format!("q{i}"),
                vec![i as f32, 1.0, 0.0, 0.5],
                "Say hi",
                vec!["hi".to_string(), "hello there, thanks".into()],
            )
        })
        .collect();
    let results = client
        .score(pb::ScoreRequest {
            mode: pb::SelectionMode::PerBatch as i32,
            explain: true,
            ..score_request("batch", queries)
        })
        .await
        .expect("score")
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    assert!(
        results
            .iter()
            .all(|r| r.decision_id == results[0].decision_id)
    );
    assert!(
        results
            .iter()
            .all(|r| r.reward_model == results[0].reward_model)
    );
    assert_eq!(results[0].arms.len(), 2);
    for arm in &results[0].arms {
        assert!((arm.ucb - (arm.mean + arm.bonus)).abs() < 1e-12);
    }
    let feedback = client
        .feedback(feedback(
            "batch",
            vec![results[0].decision_id.clone()],
            Signal::Reward(1.0),
        ))
        .await
        .expect("feedback")
        .into_inner();
    assert_eq!(feedback.applied, 1);

    let metrics = http_get(server.metrics, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let selection_line = format!(
        "laser_selections_total{{router=\"batch\",reward_model=\"{}\"}} 1",
        results[0].reward_model
    );
    assert!(
        metrics.contains(&selection_line),
        "{selection_line} missing in\n{metrics}"
    );
    assert!(
        metrics.contains("laser_feedback_total{router=\"batch\",outcome=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("laser_rm_inference_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("laser_grpc_requests_total{method=\"Score\",code=\"Ok\"} 1"),
        "{metrics}"
    );
}

#[test]
fn missing_onnx_runtime_exits_with_one_line_naming_the_fetch_script() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_laser-router"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .expect("run laser-router");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("scripts/fetch-onnxruntime.sh"), "{stderr}");
    assert!(output.stdout.is_empty());
}
