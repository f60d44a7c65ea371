//! Router behaviour: each policy's defining behaviour, arms coming and going, pending
//! decisions (TTL, capacity, idempotence, all-or-nothing).
//! Groups, per-decision feedback and idempotency keys: [`groups`]; label feedback, priors and
//! categories: [`labels`]; the reward centre: [`centre`].
//!
//! Longer than the ~500-line guide on purpose: it is a flat list of independent cases
//! over a few shared helpers at the top, read by test name, not in one pass.

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::bandit::Normalization;
use crate::routers::instance::router::QueriesIn;

mod categories;
mod centre;
mod groups;
mod labels;

pub(crate) fn settings(context_dim: usize) -> RouterSettings {
    RouterSettings {
        context_dim,
        policy: Policy::LinUcb,
        alpha: 0.1,
        l2_lambda: 1.0,
        normalization: Normalization::None,
        reward_is_normalized: false,
        default_mode: SelectionMode::PerQuery,
        seed: 1,
        reward_models: None,
        join_new_reward_models: true,
        l2_normalize_context: false,
        projection_dim: 0,
        max_pending_decisions: 4,
        pending_ttl: Duration::from_secs(60),
        encoder: None,
        // The paper's arms (θ from 0); tests of the centre set it.
        reward_center: 0.0,
        context_categories: Vec::new(),
    }
}

/// Queries with their groups and no categories.
pub(super) fn uncategorized<'a>(
    contexts: &'a [Vec<f32>],
    groups: &'a [Option<String>],
    none: &'a [Option<String>],
) -> QueriesIn<'a> {
    QueriesIn {
        contexts,
        groups,
        categories: none,
    }
}

pub(super) fn record(router: &mut Router, selection: Selection, now: i64) -> Vec<String> {
    let ids: Vec<String> = (0..selection.decisions.len())
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    router.apply(selection.recorded(ids.clone(), now)).unwrap();
    ids
}

pub(super) fn apply_feedback(
    router: &mut Router,
    ids: &[String],
    signal: FeedbackSignal,
    serving: &[String],
    now: i64,
) -> Result<FeedbackOutcome, RouterError> {
    router.apply(RouterEvent::Feedback {
        now_unix_ms: now,
        serving: serving.to_vec(),
        decision_ids: ids.to_vec(),
        signal,
    })
}

pub(super) fn rms(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

pub(super) fn with_policy(policy: Policy, context_dim: usize) -> RouterSettings {
    RouterSettings {
        policy,
        max_pending_decisions: 1000,
        ..settings(context_dim)
    }
}

/// Select for one context, record, return (decision id, chosen RMs).
pub(super) fn pick(
    router: &mut Router,
    context: &[f32],
    serving: &[String],
    now: i64,
) -> (String, Vec<String>) {
    let selection = router
        .select(&[context.to_vec()], None, false, serving)
        .unwrap();
    let chosen = selection.decisions[0].reward_models.clone();
    let ids = record(router, selection, now);
    (ids[0].clone(), chosen)
}

pub(super) fn feedback(
    router: &mut Router,
    id: &str,
    reward: f64,
    serving: &[String],
) -> FeedbackOutcome {
    apply_feedback(
        router,
        &[id.to_string()],
        FeedbackSignal::Reward(reward),
        serving,
        0,
    )
    .unwrap()
}

#[test]
fn wrong_context_dimension_names_the_query_and_changes_nothing() {
    let serving = rms(&["a"]);
    let router = Router::new("r".into(), settings(3), &serving);
    let err = router
        .select(&[vec![0.0; 3], vec![0.0; 2]], None, false, &serving)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RouterError::ContextDimension {
                router,
                query: 1,
                expected: 3,
                got: 2
            } if router == "r"
        ),
        "{err:?}"
    );
    assert_eq!(router.pending_decisions(), 0);
}

#[test]
fn feedback_is_all_or_nothing_and_idempotent() {
    let serving = rms(&["a", "b"]);
    let mut router = Router::new("r".into(), settings(2), &serving);
    let selection = router
        .select(&[vec![1.0, 0.0], vec![0.0, 1.0]], None, false, &serving)
        .unwrap();
    let ids = record(&mut router, selection, 5);
    assert_eq!(router.pending_decisions(), 2);

    let err = apply_feedback(
        &mut router,
        &[ids[0].clone(), "nope".into()],
        FeedbackSignal::Loss(0.5),
        &serving,
        6,
    )
    .unwrap_err();
    assert!(
        matches!(err, RouterError::UnknownDecisions { ref decision_ids, .. } if decision_ids == &["nope".to_string()])
    );
    assert_eq!(router.pending_decisions(), 2);
    assert_eq!(router.rewards_seen(), 0);

    let outcome =
        apply_feedback(&mut router, &ids, FeedbackSignal::Loss(0.5), &serving, 7).unwrap();
    assert_eq!(outcome.applied.len(), 2);
    assert_eq!(router.pending_decisions(), 0);
    let again = apply_feedback(&mut router, &ids, FeedbackSignal::Loss(0.5), &serving, 8).unwrap();
    assert_eq!((again.applied.len(), again.duplicate), (0, 2));
    // The same id twice in one request is applied once.
    let (id, _) = pick(&mut router, &[1.0, 1.0], &serving, 9);
    let twice = apply_feedback(
        &mut router,
        &[id.clone(), id],
        FeedbackSignal::Loss(0.1),
        &serving,
        10,
    )
    .unwrap();
    assert_eq!((twice.applied.len(), twice.duplicate), (1, 1));
    let applied: u64 = router
        .arm_statistics(&serving)
        .iter()
        .map(|s| s.feedback_count)
        .sum();
    assert_eq!(applied, 3);
    assert_eq!(router.rewards_seen(), 2);
}

#[test]
fn per_batch_mode_makes_one_decision_on_the_mean_context() {
    let serving = rms(&["a", "b"]);
    let router = Router::new("r".into(), settings(2), &serving);
    let selection = router
        .select(
            &[vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]],
            Some(SelectionMode::PerBatch),
            true,
            &serving,
        )
        .unwrap();
    assert_eq!(selection.decisions.len(), 1);
    assert_eq!(selection.decisions[0].queries, vec![0, 1, 2]);
    assert_eq!(selection.decisions[0].estimates.len(), 2);
    // Fresh arms: bonus = α·|x̄|/sqrt(λ) with x̄ = (2/3, 2/3).
    let bonus = selection.decisions[0].estimates[0].1.bonus;
    assert!(
        (bonus - 0.1 * (8.0f64 / 9.0).sqrt()).abs() < 1e-12,
        "{bonus}"
    );
}

#[test]
fn decisions_expire_after_the_ttl_and_beyond_capacity() {
    let serving = rms(&["a"]);
    let mut router = Router::new("r".into(), settings(1), &serving);
    let mut ids = Vec::new();
    for step in 0..6 {
        ids.push(pick(&mut router, &[1.0], &serving, step).0);
    }
    assert_eq!(router.pending_decisions(), 4);
    assert_eq!(
        router.evictions(),
        Evictions {
            capacity: 2,
            ttl: 0
        }
    );
    let evicted = apply_feedback(
        &mut router,
        &ids[..1],
        FeedbackSignal::Reward(1.0),
        &serving,
        10,
    )
    .unwrap_err();
    assert!(matches!(evicted, RouterError::UnknownDecisions { .. }));
    // At t = 60 004 ms the decisions made at t <= 4 ms are 60 s old: expired.
    let late = apply_feedback(
        &mut router,
        &ids[3..4],
        FeedbackSignal::Reward(1.0),
        &serving,
        60_004,
    )
    .unwrap_err();
    assert!(matches!(late, RouterError::UnknownDecisions { .. }));
    assert_eq!(router.evictions().ttl, 3);
    assert_eq!(router.pending_decisions(), 1);
    assert!(
        apply_feedback(
            &mut router,
            &ids[5..],
            FeedbackSignal::Reward(1.0),
            &serving,
            60_004
        )
        .is_ok()
    );
}

#[test]
fn linucb_learns_which_arm_is_right_per_context() {
    let serving = rms(&["left", "right"]);
    let mut router = Router::new("r".into(), settings(2), &serving);
    let mut right_picks = 0;
    for round in 0..300 {
        let (context, right) = if round % 2 == 0 {
            ([1.0, 0.1], "left")
        } else {
            ([0.1, 1.0], "right")
        };
        let (id, chosen) = pick(&mut router, &context, &serving, round);
        let correct = chosen[0] == right;
        feedback(&mut router, &id, if correct { 1.0 } else { 0.0 }, &serving);
        if round >= 200 && correct {
            right_picks += 1;
        }
    }
    assert!(right_picks >= 95, "{right_picks}/100");
}

#[test]
fn fresh_arms_tie_and_the_seeded_rng_breaks_ties() {
    let serving = rms(&["a", "b", "c"]);
    let picks = |seed| {
        let mut router = Router::new(
            "r".into(),
            RouterSettings {
                seed,
                ..with_policy(Policy::LinUcb, 2)
            },
            &serving,
        );
        (0..30)
            .map(|step| pick(&mut router, &[1.0, 0.0], &serving, step).1[0].clone())
            .collect::<Vec<_>>()
    };
    let first = picks(4);
    assert_eq!(first, picks(4), "same seed, same choices");
    let distinct: BTreeSet<&String> = first.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "ties are not always broken towards arm 0: {first:?}"
    );
}

#[test]
fn random_policy_spreads_choices_and_ignores_feedback() {
    let serving = rms(&["a", "b", "c"]);
    let mut router = Router::new("r".into(), with_policy(Policy::Random, 2), &serving);
    let mut counts = std::collections::HashMap::new();
    for step in 0..600 {
        let (id, chosen) = pick(&mut router, &[1.0, 0.0], &serving, step);
        // Reward only "a": a learning policy would concentrate on it.
        feedback(
            &mut router,
            &id,
            if chosen[0] == "a" { 1.0 } else { 0.0 },
            &serving,
        );
        *counts.entry(chosen[0].clone()).or_insert(0) += 1;
    }
    for name in ["a", "b", "c"] {
        let count = counts[name];
        assert!((150..250).contains(&count), "{counts:?}");
    }
}

#[test]
fn round_robin_cycles_through_the_rms_in_order() {
    let serving = rms(&["a", "b", "c"]);
    let mut router = Router::new("r".into(), with_policy(Policy::RoundRobin, 2), &serving);
    let order: Vec<String> = (0..7)
        .map(|step| pick(&mut router, &[1.0, 0.0], &serving, step).1[0].clone())
        .collect();
    assert_eq!(order, rms(&["a", "b", "c", "a", "b", "c", "a"]));
}

#[test]
fn fixed_policy_always_picks_its_rm_and_fails_when_it_is_gone() {
    let serving = rms(&["a", "b", "c"]);
    let policy = Policy::Fixed {
        reward_model: "b".into(),
    };
    let mut router = Router::new("r".into(), with_policy(policy, 2), &serving);
    for step in 0..20 {
        assert_eq!(
            pick(&mut router, &[1.0, 0.0], &serving, step).1,
            rms(&["b"])
        );
    }
    let err = router
        .select(&[vec![1.0, 0.0]], None, false, &rms(&["a", "c"]))
        .unwrap_err();
    assert!(matches!(
        err,
        RouterError::FixedRewardModelUnavailable { .. }
    ));
}

#[test]
fn ensemble_policy_uses_every_rm_and_credits_each() {
    let serving = rms(&["a", "b", "c"]);
    let mut router = Router::new("r".into(), with_policy(Policy::Ensemble, 2), &serving);
    let selection = router
        .select(&[vec![1.0, 0.0]], None, false, &serving)
        .unwrap();
    assert!(selection.decisions[0].is_ensemble());
    assert_eq!(selection.decisions[0].reward_models, serving);
    let id = record(&mut router, selection, 1).remove(0);
    let outcome = feedback(&mut router, &id, 0.5, &serving);
    assert_eq!(
        outcome.applied,
        vec![AnsweredDecision {
            category: None,
            decision_id: id,
            reward_models: rms(&["a", "b", "c"]),
            reward: 0.5,
        }]
    );
    for statistics in router.arm_statistics(&serving) {
        assert_eq!((statistics.selections, statistics.feedback_count), (1, 1));
    }
}

#[test]
fn exp3_concentrates_on_the_best_rm_without_using_the_context() {
    let serving = rms(&["a", "b", "c"]);
    let mut router = Router::new(
        "r".into(),
        with_policy(Policy::Exp3 { gamma: 0.1 }, 2),
        &serving,
    );
    let mut late_c = 0;
    for step in 0..3000 {
        // Contexts vary but carry no signal; "c" is best everywhere.
        let context = [(step % 5) as f32, 1.0];
        let (id, chosen) = pick(&mut router, &context, &serving, step);
        feedback(
            &mut router,
            &id,
            if chosen[0] == "c" { 0.9 } else { 0.2 },
            &serving,
        );
        if step >= 2000 && chosen[0] == "c" {
            late_c += 1;
        }
    }
    assert!(late_c > 800, "{late_c}/1000");
    let statistics = router.arm_statistics(&serving);
    assert!(statistics[2].probability > 0.8, "{statistics:?}");
    assert_eq!(router.arm_state_bytes(), 0, "Exp3 keeps no matrices");
}

#[test]
fn a_new_rm_becomes_a_fresh_arm_and_gets_explored() {
    let explorer = RouterSettings {
        alpha: 1.0,
        ..with_policy(Policy::LinUcb, 2)
    };
    let mut router = Router::new("r".into(), explorer, &rms(&["a"]));
    for step in 0..50 {
        let (id, _) = pick(&mut router, &[1.0, 0.0], &rms(&["a"]), step);
        feedback(&mut router, &id, 0.3, &rms(&["a"]));
    }
    // "b" arrives: its bonus is the fresh-arm maximum, so it is tried at once.
    let serving = rms(&["a", "b"]);
    let (_, chosen) = pick(&mut router, &[1.0, 0.0], &serving, 50);
    assert_eq!(chosen, rms(&["b"]));
    let names: Vec<String> = router
        .arm_statistics(&serving)
        .into_iter()
        .map(|s| s.reward_model)
        .collect();
    assert_eq!(names, rms(&["a", "b"]));
}

#[test]
fn new_rms_join_only_when_the_router_says_so() {
    let closed = RouterSettings {
        join_new_reward_models: false,
        ..with_policy(Policy::RoundRobin, 2)
    };
    let mut router = Router::new("r".into(), closed, &rms(&["a"]));
    for step in 0..4 {
        assert_eq!(
            pick(&mut router, &[1.0, 0.0], &rms(&["a", "b"]), step).1,
            rms(&["a"])
        );
    }
    let subset = RouterSettings {
        reward_models: Some(["b".to_string(), "c".to_string()].into()),
        ..with_policy(Policy::RoundRobin, 2)
    };
    let mut router = Router::new("r".into(), subset, &rms(&["a", "b"]));
    for step in 0..4 {
        assert_eq!(
            pick(&mut router, &[1.0, 0.0], &rms(&["a", "b"]), step).1,
            rms(&["b"])
        );
    }
    // A named RM joins when it appears, even though new RMs do not join by default.
    let order: Vec<String> = (0..4)
        .map(|step| pick(&mut router, &[1.0, 0.0], &rms(&["a", "b", "c"]), step).1[0].clone())
        .collect();
    assert!(
        order.contains(&"c".to_string()) && !order.contains(&"a".to_string()),
        "{order:?}"
    );
}

#[test]
fn a_removed_rm_is_not_selected_and_its_feedback_is_acknowledged_not_applied() {
    let both = rms(&["a", "b"]);
    let mut router = Router::new("r".into(), with_policy(Policy::RoundRobin, 2), &both);
    let (id_a, chosen) = pick(&mut router, &[1.0, 0.0], &both, 0);
    assert_eq!(chosen, rms(&["a"]));
    let only_b = rms(&["b"]);
    for step in 1..5 {
        assert_eq!(pick(&mut router, &[1.0, 0.0], &only_b, step).1, only_b);
    }
    let outcome = feedback(&mut router, &id_a, 1.0, &only_b);
    assert!(outcome.applied.is_empty());
    assert_eq!(
        outcome.not_applied,
        vec![AnsweredDecision {
            category: None,
            decision_id: id_a.clone(),
            reward_models: rms(&["a"]),
            reward: 1.0,
        }]
    );
    // Acknowledged: a repeat is a duplicate, not unknown.
    assert_eq!(feedback(&mut router, &id_a, 1.0, &only_b).duplicate, 1);
    let statistics = router.arm_statistics(&only_b);
    assert!(statistics[0].removed && !statistics[1].removed);
    assert_eq!(
        statistics[0].selections, 1,
        "a removed arm's statistics stay visible"
    );
    router
        .apply(RouterEvent::Reset {
            serving: only_b.clone(),
        })
        .unwrap();
    assert_eq!(
        router.arm_statistics(&only_b).len(),
        1,
        "reset drops the removed arm"
    );
}

#[test]
fn normalized_rewards_must_be_in_range() {
    let serving = rms(&["a"]);
    let normalized = RouterSettings {
        reward_is_normalized: true,
        normalization: Normalization::LASER,
        ..with_policy(Policy::LinUcb, 1)
    };
    let mut router = Router::new("r".into(), normalized, &serving);
    let (id, _) = pick(&mut router, &[1.0], &serving, 0);
    let err = apply_feedback(
        &mut router,
        std::slice::from_ref(&id),
        FeedbackSignal::Reward(1.5),
        &serving,
        0,
    )
    .unwrap_err();
    assert!(matches!(err, RouterError::RewardOutOfRange { .. }));
    assert_eq!(router.pending_decisions(), 1);
    feedback(&mut router, &id, 0.25, &serving);
    let statistics = router.arm_statistics(&serving);
    assert_eq!(statistics[0].reward_sum, 0.25, "used as is");
    assert_eq!(router.rewards_seen(), 0, "normalization history untouched");
}

#[test]
fn projected_contexts_shrink_the_arms() {
    let serving = rms(&["a", "b"]);
    let projected = RouterSettings {
        projection_dim: 8,
        l2_normalize_context: true,
        ..with_policy(Policy::LinUcb, 64)
    };
    let mut router = Router::new("r".into(), projected, &serving);
    let (id, _) = pick(&mut router, &[0.5; 64], &serving, 0);
    feedback(&mut router, &id, 1.0, &serving);
    assert_eq!(router.arm_state_bytes(), 2 * (8 * 8 + 2 * 8) * 8);
}

#[test]
fn settings_are_validated_by_field() {
    let field = |settings: RouterSettings| match settings.validate(1024) {
        Err(RouterError::InvalidSettings { field, .. }) => field,
        other => panic!("expected invalid settings, got {other:?}"),
    };
    assert_eq!(
        field(RouterSettings {
            context_dim: 0,
            ..settings(4)
        }),
        "context_dim"
    );
    assert_eq!(
        field(RouterSettings {
            context_dim: 2048,
            ..settings(4)
        }),
        "context_dim"
    );
    assert_eq!(
        field(RouterSettings {
            alpha: f64::NAN,
            ..settings(4)
        }),
        "alpha"
    );
    assert_eq!(
        field(RouterSettings {
            l2_lambda: 0.0,
            ..settings(4)
        }),
        "l2_lambda"
    );
    assert_eq!(
        field(RouterSettings {
            projection_dim: 5,
            ..settings(4)
        }),
        "projection_dim"
    );
    // A window of one reward leaves every reward raw: refused; two or more are fine.
    for (window, refused) in [(0, true), (1, true), (2, false)] {
        let quantile = RouterSettings {
            normalization: Normalization::Quantile {
                low: 20.0,
                high: 80.0,
                window: Some(window),
            },
            ..settings(4)
        };
        if refused {
            assert_eq!(field(quantile), "reward_window");
        } else {
            assert!(quantile.validate(1024).is_ok());
        }
    }
    assert_eq!(
        field(with_policy(Policy::Exp3 { gamma: 0.0 }, 4)),
        "exp3_gamma"
    );
    assert_eq!(
        field(with_policy(
            Policy::Fixed {
                reward_model: String::new()
            },
            4
        )),
        "fixed_reward_model"
    );
    let inverted = Normalization::Quantile {
        low: 80.0,
        high: 20.0,
        window: None,
    };
    assert_eq!(
        field(RouterSettings {
            normalization: inverted,
            ..settings(4)
        }),
        "quantile_low"
    );
    assert!(settings(4).validate(1024).is_ok());
}

#[test]
fn select_only_reads_the_router() {
    let serving = rms(&["a", "b"]);
    let router = Router::new("r".into(), with_policy(Policy::Random, 2), &serving);
    let first = router
        .select(&[vec![1.0, 0.0]], None, false, &serving)
        .unwrap();
    let again = router
        .select(&[vec![1.0, 0.0]], None, false, &serving)
        .unwrap();
    assert_eq!(
        first.decisions[0].reward_models,
        again.decisions[0].reward_models
    );
    assert_eq!(router.pending_decisions(), 0);
}

/// A router rebuilt from its events, or from its state, equals the original.
#[test]
fn replaying_events_and_restoring_state_reproduce_the_router() {
    let serving = rms(&["a", "b", "c"]);
    for policy in [
        Policy::LinUcb,
        Policy::Exp3 { gamma: 0.2 },
        Policy::RoundRobin,
        Policy::Ensemble,
    ] {
        let settings = RouterSettings {
            normalization: Normalization::LASER,
            ..with_policy(policy.clone(), 3)
        };
        let mut live = Router::new("r".into(), settings.clone(), &serving);
        let mut events = Vec::new();
        for step in 0..40i64 {
            let context = vec![(step % 3) as f32, 1.0, (step % 5) as f32 * 0.1];
            let selection = live
                .select(&[context.clone(), context], None, false, &serving)
                .unwrap();
            let ids: Vec<String> = (0..selection.decisions.len())
                .map(|i| format!("{step}-{i}"))
                .collect();
            let event = selection.recorded(ids.clone(), step);
            events.push(event.clone());
            live.apply(event).unwrap();
            if step % 3 != 0 {
                let feedback = RouterEvent::Feedback {
                    now_unix_ms: step,
                    serving: serving.clone(),
                    decision_ids: ids,
                    signal: FeedbackSignal::Loss((step % 7) as f64 * 0.1),
                };
                events.push(feedback.clone());
                live.apply(feedback).unwrap();
            }
        }
        let mut replayed = Router::new("r".into(), settings, &serving);
        for event in events {
            replayed.apply(event).unwrap();
        }
        assert_eq!(replayed.to_state(), live.to_state(), "{policy:?}: replay");
        let restored = Router::from_state("r".into(), live.to_state()).unwrap();
        assert_eq!(
            restored.to_state(),
            live.to_state(),
            "{policy:?}: state round trip"
        );
        let next = [vec![0.5, 1.0, 0.2]];
        assert_eq!(
            restored
                .select(&next, None, true, &serving)
                .unwrap()
                .decisions[0]
                .reward_models,
            live.select(&next, None, true, &serving).unwrap().decisions[0].reward_models
        );
        let bytes = postcard::to_stdvec(&live.to_state()).unwrap();
        let decoded: RouterState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, live.to_state(), "{policy:?}: encoding round trip");
    }
}
