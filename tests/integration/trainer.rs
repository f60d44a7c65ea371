//! A simulated trainer over two clusters of contexts, where a different fixture RM is
//! "right" for each: LinUCB must learn to route each cluster to its RM.

use laser_router::api::pb;
use laser_router::api::pb::feedback_request::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{Server, config, feedback, query, score_request};

const CONTEXT_DIM: usize = 8;

fn cluster_context(cluster: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut context = vec![0f32; CONTEXT_DIM];
    context[cluster] = 1.0;
    for value in context.iter_mut() {
        *value += rng.random_range(-0.1..0.1);
    }
    context
}

#[tokio::test]
async fn linucb_learns_the_right_reward_model_for_each_cluster() {
    let server = Server::start(&config(CONTEXT_DIM, &["length", "polite", "numeric"], ""));
    let mut client = server.router_client().await;
    let mut rng = StdRng::seed_from_u64(11);
    let right = ["polite", "numeric"];
    let mut correct: [Vec<bool>; 2] = Default::default();
    for round in 0..300 {
        let queries = (0..2)
            .map(|cluster| {
                query(
                    format!("{round}-{cluster}"),
                    cluster_context(cluster, &mut rng),
                    "How many apples are left?",
                    vec![
                        "Three, thank you.".into(),
                        "3".to_string(),
                        "None.".to_string(),
                    ],
                )
            })
            .collect();
        let response = client
            .score(pb::ScoreRequest {
                mode: pb::SelectionMode::PerQuery as i32,
                ..score_request("trainer", queries)
            })
            .await
            .expect("score")
            .into_inner();
        assert_eq!(response.results.len(), 2);
        for (cluster, result) in response.results.iter().enumerate() {
            assert_eq!(result.id, format!("{round}-{cluster}"));
            assert_eq!(result.scores.len(), 3);
            assert_eq!(result.ranking.len(), 3);
            let was_right = result.reward_model == right[cluster];
            correct[cluster].push(was_right);
            // The trainer's loss is low when the right RM ranked its responses.
            let loss = if was_right { 0.2 } else { 1.0 } + rng.random_range(-0.05..0.05);
            let feedback = client
                .feedback(feedback(
                    "trainer",
                    vec![result.decision_id.clone()],
                    Signal::Loss(loss),
                ))
                .await
                .expect("feedback")
                .into_inner();
            assert_eq!(feedback.applied, 1);
        }
    }
    for (cluster, history) in correct.iter().enumerate() {
        let last = &history[history.len() - 100..];
        let accuracy = last.iter().filter(|&&ok| ok).count() as f64 / last.len() as f64;
        assert!(
            accuracy >= 0.9,
            "cluster {cluster}: right RM chosen in {:.0}% of the last 100 decisions",
            accuracy * 100.0
        );
    }

    // GetRouter shows where the decisions went.
    let mut admin = server.admin_client().await;
    let router = admin
        .get_router(pb::GetRouterRequest {
            name: "trainer".into(),
        })
        .await
        .expect("get router")
        .into_inner()
        .router
        .expect("router info");
    assert_eq!(router.pending_decisions, 0);
    assert_eq!(router.rewards_seen, 600);
    let selections: u64 = router.arms.iter().map(|arm| arm.selections).sum();
    let feedback: u64 = router.arms.iter().map(|arm| arm.feedback_count).sum();
    assert_eq!((selections, feedback), (600, 600));
    for arm in &router.arms {
        if arm.selections > 0 {
            assert!(arm.last_selected_unix_ms > 0);
        }
    }
}
