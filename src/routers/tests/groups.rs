//! Router behaviour added with trainer-facing feedback: decisions shared by groups (across
//! Scores and concurrent ones), feedback per decision and for everything pending,
//! idempotency keys through a snapshot, and reading a format 1 state.

use super::{feedback, pick, rms, uncategorized, with_policy};
use crate::routers::*;

/// Select for `queries` (context, group) at `now`, reserve and record; returns the decision
/// id of each query.
fn score_grouped(
    router: &mut Router,
    queries: &[(&[f32], Option<&str>)],
    serving: &[String],
    now: i64,
) -> Vec<String> {
    let contexts: Vec<Vec<f32>> = queries.iter().map(|(c, _)| c.to_vec()).collect();
    let groups: Vec<Option<String>> = queries.iter().map(|(_, g)| g.map(str::to_string)).collect();
    let none = vec![None; contexts.len()];
    let mut selection = router
        .select_grouped(
            uncategorized(&contexts, &groups, &none),
            None,
            false,
            serving,
            now,
        )
        .unwrap();
    router.reserve(
        &mut selection,
        || uuid::Uuid::new_v4().simple().to_string(),
        now,
    );
    let mut ids = vec![String::new(); queries.len()];
    for decision in &selection.decisions {
        for &query in &decision.queries {
            ids[query] = decision.decision_id.clone();
        }
    }
    if let Some(event) = router.recording(&selection, now) {
        router.apply(event).unwrap();
    }
    ids
}

#[test]
fn a_group_shares_one_decision_across_scores_until_feedback_or_ttl() {
    let serving = rms(&["a", "b"]);
    let mut router = Router::new("r".into(), with_policy(Policy::Random, 2), &serving);
    let x = [1.0, 0.0];
    let first = score_grouped(
        &mut router,
        &[
            (&x, Some("p1")),
            (&x, Some("p1")),
            (&x, Some("p2")),
            (&x, None),
        ],
        &serving,
        0,
    );
    assert_eq!(first[0], first[1]);
    assert_ne!(first[0], first[2]);
    assert_ne!(first[2], first[3]);
    assert_eq!(router.pending_decisions(), 3);
    // A later Score (another rank, the next completions of the prompt) reuses it.
    let again = score_grouped(
        &mut router,
        &[(&x, Some("p1")), (&x, Some("p2"))],
        &serving,
        10,
    );
    assert_eq!(
        (again[0].as_str(), again[1].as_str()),
        (first[0].as_str(), first[2].as_str())
    );
    assert_eq!(
        router.pending_decisions(),
        3,
        "no new decision for known groups"
    );
    let selections: u64 = router
        .arm_statistics(&serving)
        .iter()
        .map(|a| a.selections)
        .sum();
    assert_eq!(selections, 3);
    // Feedback ends the group's decision: the next Score makes a new one.
    feedback(&mut router, &first[0], 0.5, &serving);
    let after = score_grouped(&mut router, &[(&x, Some("p1"))], &serving, 20);
    assert_ne!(after[0], first[0]);
    // So does the TTL (60 s in these settings).
    let late = score_grouped(&mut router, &[(&x, Some("p2"))], &serving, 61_000);
    assert_ne!(late[0], first[2]);
}

#[test]
fn concurrent_scores_of_a_group_share_the_reserved_decision_and_record_it_once() {
    let serving = rms(&["a", "b"]);
    let mut router = Router::new("r".into(), with_policy(Policy::Random, 2), &serving);
    let x = vec![vec![1.0f32, 0.0]];
    let group = vec![Some("g".to_string())];
    let none = vec![None];
    let mut first = router
        .select_grouped(uncategorized(&x, &group, &none), None, false, &serving, 0)
        .unwrap();
    router.reserve(&mut first, || "d1".to_string(), 0);
    // A second Score of the group arrives before the first is recorded.
    let mut second = router
        .select_grouped(uncategorized(&x, &group, &none), None, false, &serving, 1)
        .unwrap();
    router.reserve(&mut second, || "d2".to_string(), 1);
    assert_eq!(second.decisions[0].decision_id, "d1");
    assert_eq!(
        second.decisions[0].reward_models,
        first.decisions[0].reward_models
    );
    assert!(!second.decisions[0].is_new());
    // The second finishes first and records the shared decision; the first records nothing.
    let event = router
        .recording(&second, 2)
        .expect("records the reserved decision");
    router.apply(event).unwrap();
    assert!(router.recording(&first, 3).is_none());
    assert_eq!(router.pending_decisions(), 1);
}

#[test]
fn per_decision_signals_each_enter_the_normalization() {
    let serving = rms(&["a"]);
    let mut router = Router::new("r".into(), with_policy(Policy::LinUcb, 2), &serving);
    let ids: Vec<String> = (0..3)
        .map(|i| pick(&mut router, &[1.0, i as f32], &serving, 0).0)
        .collect();
    let signals: Vec<(String, FeedbackSignal)> = ids
        .iter()
        .zip([0.1, 0.7, 0.4])
        .map(|(id, r)| (id.clone(), FeedbackSignal::Reward(r)))
        .collect();
    let outcome = router
        .apply(RouterEvent::FeedbackKeyed {
            now_unix_ms: 1,
            serving: serving.clone(),
            signals: FeedbackSignals::PerDecision(signals),
            key: None,
        })
        .unwrap();
    let rewards: Vec<f64> = outcome.applied.iter().map(|a| a.reward).collect();
    assert_eq!(rewards, vec![0.1, 0.7, 0.4]);
    assert_eq!(router.rewards_seen(), 3);
    let statistics = &router.arm_statistics(&serving)[0];
    assert!((statistics.reward_sum - 1.2).abs() < 1e-12);
}

#[test]
fn everything_pending_before_a_time_and_idempotency_keys_survive_a_snapshot() {
    let serving = rms(&["a"]);
    let mut router = Router::new("r".into(), with_policy(Policy::LinUcb, 2), &serving);
    let early: Vec<String> = (0..2)
        .map(|i| pick(&mut router, &[1.0, i as f32], &serving, 100).0)
        .collect();
    let late = pick(&mut router, &[1.0, 5.0], &serving, 300).0;
    let mut cut = router.pending_made_before(200, 300);
    cut.sort();
    let mut expected = early.clone();
    expected.sort();
    assert_eq!(cut, expected, "made before the request arrived");
    let form = FeedbackForm::AllPending {
        signal: FeedbackSignal::Loss(0.3),
    };
    let key = IdempotencyKey {
        key: "run-1/step-3".into(),
        fingerprint: form.fingerprint(),
    };
    let event = RouterEvent::FeedbackKeyed {
        now_unix_ms: 300,
        serving: serving.clone(),
        signals: FeedbackSignals::Shared {
            decision_ids: cut,
            signal: FeedbackSignal::Loss(0.3),
        },
        key: Some(key.clone()),
    };
    let outcome = router.apply(event.clone()).unwrap();
    assert_eq!(outcome.applied.len(), 2);
    assert_eq!(router.pending_decisions(), 1, "{late} stays pending");
    // Through a snapshot, the key still answers and the same event applies nothing again.
    let mut restored = Router::from_state("r".into(), router.to_state()).unwrap();
    let again = restored.apply(event).unwrap();
    assert_eq!(again.replayed, Some(outcome.counts()));
    assert_eq!(restored.rewards_seen(), 1);
    let other = RouterEvent::FeedbackKeyed {
        now_unix_ms: 301,
        serving: serving.clone(),
        signals: FeedbackSignals::Shared {
            decision_ids: vec![late.clone()],
            signal: FeedbackSignal::Loss(0.9),
        },
        key: Some(IdempotencyKey {
            fingerprint: key.fingerprint ^ 1,
            ..key
        }),
    };
    assert!(matches!(
        restored.apply(other),
        Err(RouterError::IdempotencyKeyReused { .. })
    ));
    assert_eq!(restored.pending_decisions(), 1);
}

#[test]
fn a_format_1_state_is_read_as_format_2_with_no_groups_or_keys() {
    let serving = rms(&["a", "b"]);
    let mut router = Router::new("r".into(), with_policy(Policy::LinUcb, 2), &serving);
    let id = pick(&mut router, &[1.0, 0.5], &serving, 0).0;
    pick(&mut router, &[0.5, 1.0], &serving, 0);
    feedback(&mut router, &id, 0.7, &serving);
    let state = router.to_state();
    let v1_bytes = postcard::to_stdvec(&crate::routers::instance::state::RouterStateV1::from(
        &state,
    ))
    .unwrap();
    assert_ne!(
        v1_bytes,
        postcard::to_stdvec(&state).unwrap(),
        "the formats differ"
    );
    let v1: crate::routers::instance::state::RouterStateV1 =
        postcard::from_bytes(&v1_bytes).unwrap();
    assert_eq!(RouterState::from(v1), state);
}

#[test]
fn the_log_keeps_received_contexts_and_replays_them_bit_for_bit() {
    let serving = rms(&["a", "b"]);
    let settings = RouterSettings {
        l2_normalize_context: true,
        projection_dim: 3,
        ..with_policy(Policy::LinUcb, 5)
    };
    let mut live = Router::new("r".into(), settings.clone(), &serving);
    let mut replayed = Router::new("r".into(), settings, &serving);
    let mut next = 0;
    for round in 0..20 {
        let contexts: Vec<Vec<f32>> = (0..3)
            .map(|q| {
                (0..5)
                    .map(|i| ((round * 15 + q * 5 + i) as f32 * 0.37).sin())
                    .collect()
            })
            .collect();
        let groups = vec![None, Some(format!("g{}", round % 4)), None];
        let none = vec![None; 3];
        let mut selection = live
            .select_grouped(
                uncategorized(&contexts, &groups, &none),
                None,
                false,
                &serving,
                round,
            )
            .unwrap();
        live.reserve(
            &mut selection,
            || {
                next += 1;
                format!("d{next}")
            },
            round,
        );
        let Some(event) = live.recording(&selection, round) else {
            continue;
        };
        // Through the log's bytes, as recovery reads them.
        let bytes = postcard::to_stdvec(&event).unwrap();
        let logged: RouterEvent = postcard::from_bytes(&bytes).unwrap();
        live.apply(event).unwrap();
        replayed.apply(logged).unwrap();
    }
    assert_eq!(live.to_state(), replayed.to_state());
    // The arms saw the transformed contexts: the log kept the received ones.
    assert!(live.pending_decisions() > 0);
}

#[test]
fn a_score_of_64_queries_at_d_4096_logs_at_most_1_1_mb() {
    let serving = rms(&["a", "b", "c", "d"]);
    let router = Router::new("r".into(), with_policy(Policy::Random, 4096), &serving);
    let contexts: Vec<Vec<f32>> = (0..64)
        .map(|q| (0..4096).map(|i| ((q * 4096 + i) as f32).cos()).collect())
        .collect();
    let selection = router.select(&contexts, None, false, &serving).unwrap();
    let ids = (0..64).map(|i| format!("{i:032}")).collect();
    let event = selection.recorded(ids, 0);
    let bytes = postcard::to_stdvec(&event).unwrap().len();
    assert!(bytes <= 1_100_000, "{bytes} bytes");
}
