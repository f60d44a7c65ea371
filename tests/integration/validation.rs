//! Wrong requests get a clear status naming the field and change nothing.

use laser_router::api::pb;
use laser_router::api::pb::feedback_request::Signal;
use tonic::Code;

use crate::common::{Server, config, feedback, http_get, score_request, sum_query};

fn loss(router: &str, ids: &[&str], value: f64) -> pb::FeedbackRequest {
    feedback(router, ids, Signal::Loss(value))
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let server = Server::start(&config(4, &["length", "polite"], ""));
    let mut client = server.router_client().await;
    let mut admin = server.admin_client().await;
    admin
        .create_router(pb::CreateRouterRequest {
            name: "run".into(),
            settings: Some(pb::RouterSettings {
                context_dim: 4,
                alpha: Some(0.5),
                ..Default::default()
            }),
        })
        .await
        .expect("create router");
    let first = client
        .score(score_request(
            "run",
            vec![sum_query(vec![1.0, 0.0, 0.0, 0.0], ["4", "four"])],
        ))
        .await
        .expect("valid score")
        .into_inner();
    let pending_id = first.results[0].decision_id.clone();

    let snapshot = |admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_router(pb::GetRouterRequest { name: "run".into() })
                .await
                .expect("get router")
                .into_inner()
                .router
                .expect("router")
        }
    };
    let before = snapshot(&mut admin).await;
    assert_eq!(before.pending_decisions, 1);

    let refusals: Vec<(pb::ScoreRequest, Code, &[&str])> = vec![
        (
            score_request("run", vec![sum_query(vec![1.0, 0.0, 0.0], ["4"])]),
            Code::InvalidArgument,
            &["queries[0].context", "expects 4", "dimension 3"],
        ),
        (
            score_request("run", vec![sum_query(vec![1.0, f32::NAN, 0.0, 0.0], ["4"])]),
            Code::InvalidArgument,
            &["queries[0].context[1]", "NaN"],
        ),
        (
            score_request(
                "run",
                vec![sum_query(vec![1.0, 0.0, f32::INFINITY, 0.0], ["4"])],
            ),
            Code::InvalidArgument,
            &["queries[0].context[2]", "finite"],
        ),
        (
            score_request(
                "run",
                vec![
                    sum_query(vec![1.0, 0.0, 0.0, 0.0], ["4"]),
                    sum_query(vec![1.0, 0.0, 0.0, 0.0], [""; 0]),
                ],
            ),
            Code::InvalidArgument,
            &["queries[1].responses", "empty"],
        ),
        (
            score_request("run", vec![]),
            Code::InvalidArgument,
            &["queries", "empty"],
        ),
        (
            score_request("bad name!", vec![sum_query(vec![1.0; 4], ["4"])]),
            Code::InvalidArgument,
            &["router name"],
        ),
        (
            score_request(
                "run",
                vec![sum_query(vec![1.0; 4], ["x".repeat(1_100_000).as_str()])],
            ),
            Code::ResourceExhausted,
            &["queries[0].responses[0]", "limits.max_text_bytes = 1048576"],
        ),
    ];
    for (request, code, words) in refusals {
        let status = client.score(request).await.expect_err("must be refused");
        assert_eq!(status.code(), code, "{status:?}");
        for word in words {
            assert!(
                status.message().contains(word),
                "{word:?} not in {:?}",
                status.message()
            );
        }
    }

    // Unknown decision ids: NOT_FOUND naming them; all-or-nothing with a valid id.
    let status = client
        .feedback(loss("run", &[&pending_id, "no-such-decision"], 0.5))
        .await
        .expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("no-such-decision"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains(&pending_id),
        "{}",
        status.message()
    );
    let status = client
        .feedback(loss("no-such-router", &[&pending_id], 0.5))
        .await
        .expect_err("unknown router");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("no-such-router"));
    let status = client
        .feedback(feedback(
            "run",
            vec![pending_id.clone()],
            Signal::Loss(f64::NAN),
        ))
        .await
        .expect_err("NaN loss");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("loss"), "{}", status.message());
    let status = client
        .feedback(pb::FeedbackRequest {
            router: "run".into(),
            decision_ids: vec![pending_id.clone()],
            signal: None,
            ..Default::default()
        })
        .await
        .expect_err("no signal");
    assert_eq!(status.code(), Code::InvalidArgument);

    let after = snapshot(&mut admin).await;
    assert_eq!(before, after, "refused requests changed the router");

    // The pending decision still takes its feedback, once.
    let applied = client
        .feedback(loss("run", &[&pending_id], 0.5))
        .await
        .expect("feedback")
        .into_inner();
    assert_eq!((applied.applied, applied.duplicate), (1, 0));
    let repeated = client
        .feedback(loss("run", &[&pending_id], 0.5))
        .await
        .expect("repeated feedback is acknowledged")
        .into_inner();
    assert_eq!((repeated.applied, repeated.duplicate), (0, 1));
    let done = snapshot(&mut admin).await;
    assert_eq!(done.pending_decisions, 0);
    assert_eq!(done.arms.iter().map(|a| a.feedback_count).sum::<u64>(), 1);
    assert_eq!(done.rewards_seen, 1);
}

#[tokio::test]
async fn routers_are_created_once_and_can_be_deleted() {
    let server = Server::start(&config(4, &["length"], ""));
    let mut admin = server.admin_client().await;
    let request = pb::CreateRouterRequest {
        name: "a".into(),
        settings: Some(pb::RouterSettings {
            context_dim: 16,
            normalization: pb::Normalization::None as i32,
            ..Default::default()
        }),
    };
    let created = admin
        .create_router(request.clone())
        .await
        .expect("create")
        .into_inner()
        .router
        .expect("router");
    let settings = created.settings.expect("settings");
    assert_eq!(settings.context_dim, 16);
    assert_eq!(settings.alpha, Some(1.0));
    assert_eq!(settings.l2_normalize_context, Some(true));
    assert_eq!(settings.l2_lambda, Some(1.0));
    assert_eq!(settings.normalization, pb::Normalization::None as i32);

    // A resumed run creating its router again with the same settings gets it back...
    let again = admin
        .create_router(request)
        .await
        .expect("same settings: the existing router")
        .into_inner()
        .router
        .expect("router");
    assert_eq!(again.settings, Some(settings));
    // ...other settings are refused, naming the fields that differ.
    let differ = admin
        .create_router(pb::CreateRouterRequest {
            name: "a".into(),
            settings: None,
        })
        .await
        .expect_err("other settings");
    assert_eq!(differ.code(), Code::FailedPrecondition);
    for field in ["context_dim", "normalization"] {
        assert!(differ.message().contains(field), "{}", differ.message());
    }
    let bad = admin
        .create_router(pb::CreateRouterRequest {
            name: "b".into(),
            settings: Some(pb::RouterSettings {
                l2_lambda: Some(-1.0),
                ..Default::default()
            }),
        })
        .await
        .expect_err("bad lambda");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("l2_lambda"), "{}", bad.message());

    let listed = admin
        .list_routers(pb::ListRoutersRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed
            .routers
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    admin
        .delete_router(pb::DeleteRouterRequest { name: "a".into() })
        .await
        .expect("delete");
    let gone = admin
        .get_router(pb::GetRouterRequest { name: "a".into() })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn routers_are_not_created_on_first_use_when_the_server_forbids_it() {
    let server = Server::start(&config(4, &["length"], "create_on_first_use = false"));
    let mut client = server.router_client().await;
    let status = client
        .score(score_request(
            "typo-router",
            vec![sum_query(vec![1.0; 4], ["a"])],
        ))
        .await
        .expect_err("unknown router");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("typo-router"));
}

#[tokio::test]
async fn an_overlong_completion_is_cut_to_what_rms_read_not_refused() {
    let server = Server::start(&config(4, &["length"], ""));
    let mut client = server.router_client().await;
    // 200 KB: over limits.kept_text_bytes (64 KiB), under limits.max_text_bytes (1 MiB).
    let long = format!("{} the end", "word ".repeat(40_000));
    let results = client
        .score(score_request(
            "run",
            vec![sum_query(vec![1.0; 4], [long.as_str(), "4"])],
        ))
        .await
        .expect("a long completion is scored, not refused")
        .into_inner()
        .results;
    assert_eq!(results[0].scores.len(), 2);
    assert!(results[0].scores.iter().all(|s| s.is_finite()));
    let metrics = http_get(server.metrics, "/metrics");
    let truncated = metrics
        .lines()
        .find(|l| l.starts_with("laser_texts_truncated_total{field=\"response\"}"))
        .unwrap_or_else(|| panic!("no truncation counted:\n{metrics}"));
    assert!(truncated.ends_with(" 1"), "{truncated}");
}
