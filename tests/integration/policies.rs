//! The paper's baselines through the same API: routers created with each policy.

use laser_router::api::pb;
use laser_router::api::pb::feedback_request::Signal;
use tonic::Code;

use crate::common::{Server, config, feedback, http_get, query, score_request};

const RESPONSES: [&str; 3] = [
    "It is 42, thanks for asking.",
    "Forty-two.",
    "Thank you, please note that six times seven is forty-two, glad to help.",
];

fn request(router: &str) -> pb::ScoreRequest {
    let context = vec![1.0, 0.0, 0.5, 0.0];
    score_request(
        router,
        vec![query("q", context, "What is 6 times 7?", RESPONSES)],
    )
}

/// Feedback `signal` for one decision of `router`, which must be accepted.
async fn send_feedback(
    client: &mut pb::reward_router_client::RewardRouterClient<tonic::transport::Channel>,
    router: &str,
    decision_id: String,
    signal: Signal,
) {
    client
        .feedback(feedback(router, vec![decision_id], signal))
        .await
        .expect("feedback");
}

async fn create(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    name: &str,
    settings: pb::RouterSettings,
) {
    admin
        .create_router(pb::CreateRouterRequest {
            name: name.into(),
            settings: Some(pb::RouterSettings {
                context_dim: 4,
                ..settings
            }),
        })
        .await
        .expect("create router");
}

fn rm_requests_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("laser_rm_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One query scored through `router`, and how many RM jobs it cost.
async fn score_counting_rm_jobs(
    server: &Server,
    client: &mut pb::reward_router_client::RewardRouterClient<tonic::transport::Channel>,
    router: &str,
) -> (pb::QueryResult, f64) {
    let before = rm_requests_total(&http_get(server.metrics, "/metrics"));
    let result = client
        .score(request(router))
        .await
        .expect("score")
        .into_inner()
        .results
        .remove(0);
    let after = rm_requests_total(&http_get(server.metrics, "/metrics"));
    (result, after - before)
}

async fn router_info(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    name: &str,
) -> pb::RouterInfo {
    admin
        .get_router(pb::GetRouterRequest { name: name.into() })
        .await
        .expect("get")
        .into_inner()
        .router
        .expect("router")
}

/// z-scores over the responses, averaged across RMs (written independently of the server).
fn expected_ensemble(per_rm: &[Vec<f32>]) -> Vec<f32> {
    let n = per_rm[0].len();
    (0..n)
        .map(|i| {
            per_rm
                .iter()
                .map(|scores| {
                    let mean = scores.iter().sum::<f32>() / n as f32;
                    let std = (scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f32>()
                        / n as f32)
                        .sqrt();
                    if std > 0.0 {
                        (scores[i] - mean) / std
                    } else {
                        0.0
                    }
                })
                .sum::<f32>()
                / per_rm.len() as f32
        })
        .collect()
}

/// Each response's share of the RMs' pairwise votes (written independently of the server:
/// count, for every RM and every other response, a win as 1 and a tie as 1/2).
fn expected_agreement(per_rm: &[Vec<f32>]) -> Vec<f32> {
    let n = per_rm[0].len();
    (0..n)
        .map(|i| {
            let mut won = 0.0f32;
            for scores in per_rm {
                for j in (0..n).filter(|&j| j != i) {
                    if scores[i] > scores[j] {
                        won += 1.0;
                    } else if scores[i] == scores[j] {
                        won += 0.5;
                    }
                }
            }
            won / (per_rm.len() * (n - 1)) as f32
        })
        .collect()
}

#[tokio::test]
async fn baselines_run_through_the_same_api() {
    let server = Server::start(&config(4, &["length", "numeric", "polite"], ""));
    let mut client = server.router_client().await;
    let mut admin = server.admin_client().await;

    // fixed: always its RM; one RM forward pass per query.
    let mut per_rm = Vec::new();
    for name in ["length", "numeric", "polite"] {
        let router = format!("fixed-{name}");
        create(
            &mut admin,
            &router,
            pb::RouterSettings {
                policy: pb::Policy::Fixed as i32,
                fixed_reward_model: name.into(),
                ..Default::default()
            },
        )
        .await;
        for _ in 0..3 {
            let result = client
                .score(request(&router))
                .await
                .expect("score")
                .into_inner()
                .results
                .remove(0);
            assert_eq!(result.reward_model, name);
            if per_rm.len() < 3 && !per_rm.iter().any(|(n, _)| n == &name) {
                per_rm.push((name, result.scores.clone()));
            }
        }
    }

    // ensemble: every RM scores; z-scored scores averaged; K forward passes per query.
    create(
        &mut admin,
        "ensemble",
        pb::RouterSettings {
            policy: pb::Policy::Ensemble as i32,
            ..Default::default()
        },
    )
    .await;
    let (result, rm_jobs) = score_counting_rm_jobs(&server, &mut client, "ensemble").await;
    assert_eq!(rm_jobs, 3.0, "the ensemble costs K = 3 RM jobs per query");
    assert_eq!(result.reward_model, "ensemble");
    let scores: Vec<Vec<f32>> = per_rm.iter().map(|(_, s)| s.clone()).collect();
    let expected = expected_ensemble(&scores);
    for (got, want) in result.scores.iter().zip(&expected) {
        assert!(
            (got - want).abs() < 1e-5,
            "{:?} vs {expected:?}",
            result.scores
        );
    }
    let feedback = client
        .feedback(feedback(
            "ensemble",
            vec![result.decision_id],
            Signal::Loss(0.3),
        ))
        .await
        .expect("feedback")
        .into_inner();
    assert_eq!(feedback.applied, 1);
    let info = router_info(&mut admin, "ensemble").await;
    assert!(
        info.arms
            .iter()
            .all(|arm| arm.selections == 1 && arm.feedback_count == 1)
    );
    assert_eq!(info.arm_state_bytes, 0);

    // agreement_ensemble: every RM scores; each response gets its share of the RMs'
    // pairwise votes; K forward passes per query; GetRouter names the policy.
    create(
        &mut admin,
        "agreement",
        pb::RouterSettings {
            policy: pb::Policy::AgreementEnsemble as i32,
            ..Default::default()
        },
    )
    .await;
    let (result, rm_jobs) = score_counting_rm_jobs(&server, &mut client, "agreement").await;
    assert_eq!(rm_jobs, 3.0, "the agreement ensemble costs K = 3 RM jobs");
    assert_eq!(result.reward_model, "agreement_ensemble");
    assert_eq!(result.scores, expected_agreement(&scores));
    let mut expected_ranking: Vec<u32> = (0..result.scores.len() as u32).collect();
    expected_ranking.sort_by(|&a, &b| {
        result.scores[b as usize]
            .partial_cmp(&result.scores[a as usize])
            .expect("finite")
    });
    assert_eq!(result.ranking, expected_ranking);
    let info = router_info(&mut admin, "agreement").await;
    assert_eq!(
        info.settings.expect("settings").policy,
        pb::Policy::AgreementEnsemble as i32
    );
    assert!(info.arms.iter().all(|arm| arm.selections == 1));

    // round_robin: the RMs in turn.
    create(
        &mut admin,
        "sequential",
        pb::RouterSettings {
            policy: pb::Policy::RoundRobin as i32,
            ..Default::default()
        },
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(
            client
                .score(request("sequential"))
                .await
                .expect("score")
                .into_inner()
                .results
                .remove(0)
                .reward_model,
        );
    }
    assert_eq!(
        order,
        ["length", "numeric", "polite", "length", "numeric", "polite"]
    );

    // The paper's sequential baseline: one RM per training iteration (a Score of the whole
    // batch), cycling: round_robin with per_batch selection.
    create(
        &mut admin,
        "per-iteration",
        pb::RouterSettings {
            policy: pb::Policy::RoundRobin as i32,
            default_mode: pb::SelectionMode::PerBatch as i32,
            ..Default::default()
        },
    )
    .await;
    let mut per_iteration = Vec::new();
    for step in 0..3 {
        let batch = (0..4)
            .map(|q| {
                query(
                    format!("{step}-{q}"),
                    vec![1.0, q as f32, 0.5, 0.0],
                    "p",
                    RESPONSES,
                )
            })
            .collect();
        let results = client
            .score(score_request("per-iteration", batch))
            .await
            .expect("score")
            .into_inner()
            .results;
        assert!(
            results
                .iter()
                .all(|r| r.reward_model == results[0].reward_model
                    && r.decision_id == results[0].decision_id),
            "one RM and one decision per iteration"
        );
        per_iteration.push(results[0].reward_model.clone());
    }
    assert_eq!(per_iteration, ["length", "numeric", "polite"]);

    // random and exp3 pick among the RMs; exp3 reports probabilities.
    for (name, policy) in [("random", pb::Policy::Random), ("exp3", pb::Policy::Exp3)] {
        create(
            &mut admin,
            name,
            pb::RouterSettings {
                policy: policy as i32,
                ..Default::default()
            },
        )
        .await;
        for _ in 0..5 {
            let result = client
                .score(request(name))
                .await
                .expect("score")
                .into_inner()
                .results
                .remove(0);
            assert!(["length", "numeric", "polite"].contains(&result.reward_model.as_str()));
        }
    }
    let exp3 = admin
        .get_router(pb::GetRouterRequest {
            name: "exp3".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .router
        .expect("router");
    let total: f64 = exp3.arms.iter().map(|arm| arm.probability).sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");

    // A fixed router whose RM does not serve: FAILED_PRECONDITION naming it.
    create(
        &mut admin,
        "fixed-missing",
        pb::RouterSettings {
            policy: pb::Policy::Fixed as i32,
            fixed_reward_model: "skywork".into(),
            ..Default::default()
        },
    )
    .await;
    let status = client
        .score(request("fixed-missing"))
        .await
        .expect_err("missing RM");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("skywork"), "{}", status.message());
}

#[tokio::test]
async fn the_first_reward_is_neutral_by_default_or_raw_as_the_reference() {
    let server = Server::start(&config(4, &["length"], ""));
    let mut client = server.router_client().await;
    let mut admin = server.admin_client().await;
    for (name, first_reward, expected) in [
        ("raw", pb::FirstReward::Raw, -0.8),
        ("neutral", pb::FirstReward::Unspecified, 0.5),
    ] {
        create(
            &mut admin,
            name,
            pb::RouterSettings {
                first_reward: first_reward as i32,
                ..Default::default()
            },
        )
        .await;
        let (result, _) = score_counting_rm_jobs(&server, &mut client, name).await;
        send_feedback(&mut client, name, result.decision_id, Signal::Loss(0.8)).await;
        let info = router_info(&mut admin, name).await;
        let arm = &info.arms[0];
        assert_eq!(arm.feedback_count, 1);
        assert!(
            (arm.mean_reward - expected).abs() < 1e-12,
            "{name}: the first reward normalized to {} (want {expected})",
            arm.mean_reward
        );
        let reported = info.settings.expect("settings").first_reward;
        let want = if name == "raw" {
            pb::FirstReward::Raw
        } else {
            pb::FirstReward::Neutral
        };
        assert_eq!(reported, want as i32);
    }
}

/// One query scored through `router` with every arm's estimate.
async fn score_explained(
    client: &mut pb::reward_router_client::RewardRouterClient<tonic::transport::Channel>,
    router: &str,
) -> pb::QueryResult {
    let request = pb::ScoreRequest {
        explain: true,
        ..request(router)
    };
    let response = client.score(request).await.expect("score");
    response.into_inner().results.remove(0)
}

#[tokio::test]
async fn linear_arms_start_at_the_reward_center_and_report_on_the_rewards_scale() {
    let server = Server::start(&config(4, &["length", "polite"], ""));
    let mut client = server.router_client().await;
    let mut admin = server.admin_client().await;
    let normalized = pb::RouterSettings {
        reward_is_normalized: true,
        ..Default::default()
    };
    create(&mut admin, "centred", normalized.clone()).await;
    create(
        &mut admin,
        "reference",
        pb::RouterSettings {
            preset: "laser_reference".into(),
            ..normalized.clone()
        },
    )
    .await;
    for (name, center) in [("centred", 0.5), ("reference", 0.0)] {
        let info = router_info(&mut admin, name).await;
        assert_eq!(info.settings.expect("settings").reward_center, Some(center));
        // A reward at the centre teaches the chosen arm nothing: every arm's estimate at
        // the query's context stays at the centre (reported on the rewards' scale).
        let result = score_explained(&mut client, name).await;
        assert!(
            result.arms.iter().all(|arm| arm.mean == center),
            "{result:?}"
        );
        send_feedback(&mut client, name, result.decision_id, Signal::Reward(0.5)).await;
        let after = score_explained(&mut client, name).await;
        let chosen = &result.reward_model;
        let arm = after
            .arms
            .iter()
            .find(|arm| &arm.reward_model == chosen)
            .expect("the chosen arm");
        if center == 0.5 {
            assert_eq!(arm.mean, 0.5, "{after:?}");
        } else {
            // θ from 0: one reward of 0.5 lifts the arm to 0.5·|x|²/(|x|²+1) (raw context).
            assert!(arm.mean > 0.1, "{after:?}");
        }
    }
    // A resumed run's CreateRouter that leaves the field unset confirms; naming another
    // centre is refused with the field named, and a non-finite one is refused outright.
    create(&mut admin, "centred", normalized.clone()).await;
    for (name, center, code) in [
        ("centred", 0.0, Code::FailedPrecondition),
        ("fresh", f64::NAN, Code::InvalidArgument),
        ("fresh", f64::INFINITY, Code::InvalidArgument),
    ] {
        let refused = admin
            .create_router(pb::CreateRouterRequest {
                name: name.into(),
                settings: Some(pb::RouterSettings {
                    context_dim: 4,
                    reward_center: Some(center),
                    ..normalized.clone()
                }),
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(refused.message().contains("reward_center"), "{refused:?}");
    }
    let unknown = admin
        .get_router(pb::GetRouterRequest {
            name: "fresh".into(),
        })
        .await
        .expect_err("nothing created");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn reset_forgets_learned_state_and_keeps_settings() {
    let server = Server::start(&config(4, &["length", "polite"], ""));
    let mut client = server.router_client().await;
    let mut admin = server.admin_client().await;
    create(
        &mut admin,
        "run",
        pb::RouterSettings {
            alpha: Some(0.7),
            ..Default::default()
        },
    )
    .await;
    let result = client
        .score(request("run"))
        .await
        .expect("score")
        .into_inner()
        .results
        .remove(0);
    send_feedback(
        &mut client,
        "run",
        result.decision_id.clone(),
        Signal::Reward(1.0),
    )
    .await;
    let reset = admin
        .reset_router(pb::ResetRouterRequest { name: "run".into() })
        .await
        .expect("reset")
        .into_inner()
        .router
        .expect("router");
    assert_eq!(reset.settings.expect("settings").alpha, Some(0.7));
    assert!(
        reset
            .arms
            .iter()
            .all(|arm| arm.selections == 0 && arm.feedback_count == 0)
    );
    assert_eq!((reset.pending_decisions, reset.rewards_seen), (0, 0));
    let status = client
        .feedback(feedback(
            "run",
            vec![result.decision_id],
            Signal::Reward(1.0),
        ))
        .await
        .expect_err("forgotten decision");
    assert_eq!(status.code(), Code::NotFound);
}

/// Heads of one model (same file, inputs and batching; another output index) share one
/// session: scoring a query with all of them costs one forward pass, each reads its head.
#[tokio::test]
async fn heads_of_one_model_share_one_forward_pass() {
    let numeric = crate::common::reward_model_toml("numeric");
    let mut text = config(4, &[], "");
    text.push_str(&numeric.replace("name = \"numeric\"", "name = \"more-digits\""));
    text.push_str(
        &numeric
            .replace("name = \"numeric\"", "name = \"fewer-digits\"")
            .replace("output_index = 1", "output_index = 0"),
    );
    let server = Server::start(&text);
    let mut admin = server.admin_client().await;
    let mut client = server.router_client().await;
    for (name, policy, fixed) in [
        ("both", pb::Policy::Ensemble, ""),
        ("more", pb::Policy::Fixed, "more-digits"),
        ("fewer", pb::Policy::Fixed, "fewer-digits"),
    ] {
        create(
            &mut admin,
            name,
            pb::RouterSettings {
                policy: policy as i32,
                fixed_reward_model: fixed.into(),
                ..Default::default()
            },
        )
        .await;
    }
    let responses = ["42", "about 7 or 8", "no idea"];
    let score = |router: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .score(score_request(
                    router,
                    vec![query("q", vec![1.0, 0.0, 0.5, 0.0], "How many?", responses)],
                ))
                .await
                .expect("score")
                .into_inner()
                .results
                .remove(0)
                .scores
        }
    };
    let more = score("more").await;
    let fewer = score("fewer").await;
    assert!(more.iter().any(|s| *s != 0.0), "{more:?}");
    assert_eq!(fewer, more.iter().map(|s| -s).collect::<Vec<_>>());
    let before = rm_requests_total(&http_get(server.metrics, "/metrics"));
    for _ in 0..3 {
        client
            .score(score_request(
                "both",
                vec![query("q", vec![1.0, 0.0, 0.5, 0.0], "How many?", responses)],
            ))
            .await
            .expect("ensemble score");
    }
    let after = rm_requests_total(&http_get(server.metrics, "/metrics"));
    assert_eq!(after - before, 3.0, "one job per query for both heads");
}

/// Score one query of `category` on `router`, explained; the result.
async fn score_in_category(
    client: &mut pb::reward_router_client::RewardRouterClient<tonic::transport::Channel>,
    router: &str,
    category: &str,
) -> pb::QueryResult {
    let mut request = pb::ScoreRequest {
        explain: true,
        ..request(router)
    };
    request.queries[0].category = category.into();
    let response = client.score(request).await.expect("score");
    response.into_inner().results.remove(0)
}

#[tokio::test]
async fn context_categories_give_each_category_its_own_estimates_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let config_toml = config(4, &["length", "polite"], "");
    let server = Server::start_on(&config_toml, &data_dir, &[]).expect("server starts");
    let mut client = server.router_client().await;
    let mut admin = server.admin_client().await;
    let settings = pb::RouterSettings {
        reward_is_normalized: true,
        context_categories: vec!["math".into(), "code".into()],
        ..Default::default()
    };
    create(&mut admin, "sliced", settings.clone()).await;
    let info = router_info(&mut admin, "sliced").await;
    assert_eq!(
        info.settings.expect("settings").context_categories,
        vec!["math".to_string(), "code".to_string()]
    );
    // A reward of 1 on a math decision lifts the chosen arm at math only.
    let math = score_in_category(&mut client, "sliced", "math").await;
    send_feedback(
        &mut client,
        "sliced",
        math.decision_id.clone(),
        Signal::Reward(1.0),
    )
    .await;
    let mean_of = |result: &pb::QueryResult, rm: &str| {
        result
            .arms
            .iter()
            .find(|arm| arm.reward_model == rm)
            .expect("arm")
            .mean
    };
    let chosen = math.reward_model.clone();
    let after_math = score_in_category(&mut client, "sliced", "math").await;
    let after_code = score_in_category(&mut client, "sliced", "code").await;
    assert!(mean_of(&after_math, &chosen) > 0.6, "{after_math:?}");
    // The context's own part moved too, less: the math slot carries the difference.
    assert!(
        mean_of(&after_math, &chosen) > mean_of(&after_code, &chosen) + 0.1,
        "{after_math:?} {after_code:?}"
    );
    // A prior of code pairs on which every RM agrees with the label enters at code.
    let pair = |category: &str| pb::LabelledPair {
        context: vec![1.0, 0.0, 0.5, 0.0],
        prompt: "What is 6 times 7?".into(),
        chosen: RESPONSES[2].into(),
        rejected: RESPONSES[1].into(),
        category: category.into(),
    };
    let refused = admin
        .add_prior(pb::AddPriorRequest {
            router: "sliced".into(),
            pairs: vec![pair("code"), pair(&"x".repeat(65))],
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("pairs[1].category"),
        "{refused:?}"
    );
    admin
        .add_prior(pb::AddPriorRequest {
            router: "sliced".into(),
            pairs: vec![pair("code"); 4],
            ..Default::default()
        })
        .await
        .expect("prior");
    let before_restart = score_in_category(&mut client, "sliced", "code").await;
    assert_ne!(
        before_restart.arms, after_code.arms,
        "the prior moved the code estimates"
    );
    let math_before_restart = score_in_category(&mut client, "sliced", "math").await;
    // Restarted on the same data: the same estimates per category.
    drop((client, admin));
    server.kill();
    let server = Server::start_on(&config_toml, &data_dir, &[]).expect("server restarts");
    let mut client = server.router_client().await;
    let recovered = score_in_category(&mut client, "sliced", "code").await;
    assert_eq!(recovered.arms, before_restart.arms);
    let recovered_math = score_in_category(&mut client, "sliced", "math").await;
    assert_eq!(recovered_math.arms, math_before_restart.arms);
    // Refusals name the field, and create nothing.
    let mut admin = server.admin_client().await;
    for (names, reason) in [
        (
            (0..33).map(|i| format!("c{i}")).collect::<Vec<_>>(),
            "at most 32",
        ),
        (vec!["math".into(), "math".into()], "named twice"),
        (vec![String::new()], "1 to 64 bytes"),
    ] {
        let refused = admin
            .create_router(pb::CreateRouterRequest {
                name: "fresh".into(),
                settings: Some(pb::RouterSettings {
                    context_dim: 4,
                    context_categories: names,
                    ..settings.clone()
                }),
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("context_categories") && refused.message().contains(reason),
            "{refused:?}"
        );
    }
    let unknown = admin
        .get_router(pb::GetRouterRequest {
            name: "fresh".into(),
        })
        .await
        .expect_err("nothing created");
    assert_eq!(unknown.code(), Code::NotFound);
}
