//! Label feedback (a decision's agreement with labels for its responses, against the
//! scores it kept), reading a format 2 state, and linear Thompson sampling.

use super::{rms, with_policy};
use crate::bandit::Normalization;
use crate::routers::*;

/// Select for one context, keep `scores` on the decision, record; the decision id.
fn pick_scored(
    router: &mut Router,
    context: &[f32],
    scores: &[f32],
    serving: &[String],
    now: i64,
) -> String {
    let mut selection = router
        .select(&[context.to_vec()], None, false, serving)
        .unwrap();
    selection.decisions[0].set_scores(scores.to_vec());
    let id = uuid::Uuid::new_v4().simple().to_string();
    router
        .apply(selection.recorded(vec![id.clone()], now))
        .unwrap();
    id
}

/// Select for one context and record the decision as format 2 did (no scores kept).
fn record_unscored(router: &mut Router, context: &[f32], id: &str, serving: &[String]) -> String {
    let selection = router
        .select(&[context.to_vec()], None, false, serving)
        .unwrap();
    let RouterEvent::RecordedScored {
        now_unix_ms,
        serving: logged_serving,
        decisions,
        groups,
        ..
    } = selection.recorded(vec![id.to_string()], 0)
    else {
        panic!("the live path records with scores");
    };
    router
        .apply(RouterEvent::RecordedInGroups {
            now_unix_ms,
            serving: logged_serving,
            decisions,
            groups,
        })
        .unwrap();
    id.to_string()
}

/// Resolve `items` as the registry does, then apply them as one logged event.
fn labelled_feedback(
    router: &mut Router,
    items: Vec<(String, DecisionFeedback)>,
    serving: &[String],
    now: i64,
) -> Result<FeedbackOutcome, RouterError> {
    let signals = FeedbackSignals::PerDecision(router.resolve_labels(items, now)?);
    router.check_feedback(&signals, now)?;
    router.apply(RouterEvent::FeedbackKeyed {
        now_unix_ms: now,
        serving: serving.to_vec(),
        signals,
        key: None,
    })
}

fn quantile_router(serving: &[String]) -> Router {
    let settings = RouterSettings {
        normalization: Normalization::Quantile {
            low: 20.0,
            high: 80.0,
            window: None,
        },
        ..with_policy(Policy::LinUcb, 2)
    };
    Router::new("r".into(), settings, serving)
}

#[test]
fn labels_reward_the_decision_with_its_agreement_outside_the_loss_history() {
    let serving = rms(&["a"]);
    let mut router = quantile_router(&serving);
    let judged = pick_scored(&mut router, &[1.0, 0.0], &[0.9, 0.1, 0.5], &serving, 0);
    let by_loss = pick_scored(&mut router, &[0.0, 1.0], &[0.2, 0.4], &serving, 0);
    let outcome = labelled_feedback(
        &mut router,
        vec![
            // Correct on (0,1) and (2,1), wrong on (0,2): agreement 2/3.
            (judged, DecisionFeedback::Labels(vec![1.0, 0.0, 2.0])),
            (by_loss, DecisionFeedback::Signal(FeedbackSignal::Loss(0.3))),
        ],
        &serving,
        1,
    )
    .unwrap();
    assert_eq!(outcome.applied.len(), 2);
    assert!((outcome.applied[0].reward - 2.0 / 3.0).abs() < 1e-12);
    // Only the loss entered the normalizer's history (raw first reward: -0.3).
    assert_eq!(router.rewards_seen(), 1);
    assert!((outcome.applied[1].reward + 0.3).abs() < 1e-12);
    let statistics = &router.arm_statistics(&serving)[0];
    assert_eq!(statistics.feedback_count, 2);
    assert!((statistics.reward_sum - (2.0 / 3.0 - 0.3)).abs() < 1e-12);
}

#[test]
fn a_preferred_index_is_labels_with_one_winner() {
    let serving = rms(&["a"]);
    let mut router = quantile_router(&serving);
    let id = pick_scored(&mut router, &[1.0, 0.0], &[0.1, 0.9, 0.5], &serving, 0);
    let outcome = labelled_feedback(
        &mut router,
        vec![(id, DecisionFeedback::Preferred(2))],
        &serving,
        1,
    )
    .unwrap();
    // Response 2 beats 0 (right) and loses to 1 (wrong): 1/2.
    assert_eq!(outcome.applied[0].reward, 0.5);
}

#[test]
fn labels_that_never_differ_answer_the_decision_without_learning() {
    let serving = rms(&["a"]);
    let mut router = quantile_router(&serving);
    let id = pick_scored(&mut router, &[1.0, 0.0], &[0.1, 0.9], &serving, 0);
    let before = router.to_state();
    let outcome = labelled_feedback(
        &mut router,
        vec![(id.clone(), DecisionFeedback::Labels(vec![1.0, 1.0]))],
        &serving,
        1,
    )
    .unwrap();
    assert!(outcome.applied.is_empty());
    assert_eq!(outcome.not_applied.len(), 1);
    assert_eq!(router.pending_decisions(), 0);
    assert_eq!(router.arm_statistics(&serving)[0].feedback_count, 0);
    assert_ne!(router.to_state(), before, "the decision was answered");
    // Sending it again is a duplicate, not an unknown id.
    let again = labelled_feedback(
        &mut router,
        vec![(id, DecisionFeedback::Labels(vec![1.0, 0.0]))],
        &serving,
        2,
    )
    .unwrap();
    assert_eq!(again.duplicate, 1);
}

#[test]
fn labels_with_their_scores_judge_those_pairs_on_any_decision() {
    let serving = rms(&["a"]);
    let mut router = quantile_router(&serving);
    // A group's decision keeps the first Score's two scores; a later Score of the group
    // returned 0.7 and 0.2 for two more responses.
    let grouped = pick_scored(&mut router, &[1.0, 0.0], &[0.9, 0.1], &serving, 0);
    let unscored = record_unscored(&mut router, &[0.0, 1.0], "old", &serving);
    let outcome = labelled_feedback(
        &mut router,
        vec![
            // Three pairs: (0.9 vs 0.7) right, (0.9 vs 0.2) right, (0.7 vs 0.2) wrong: 2/3.
            (
                grouped,
                DecisionFeedback::ScoredLabels {
                    labels: vec![1.0, 0.0, 0.5],
                    scores: vec![0.9, 0.7, 0.2],
                },
            ),
            // A decision recorded without scores takes them this way.
            (
                unscored.clone(),
                DecisionFeedback::ScoredLabels {
                    labels: vec![0.0, 1.0],
                    scores: vec![0.3, 0.3],
                },
            ),
        ],
        &serving,
        1,
    )
    .unwrap();
    assert_eq!(outcome.applied.len(), 2);
    assert!((outcome.applied[0].reward - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(
        outcome.applied[1].reward, 0.5,
        "a score tie counts one half"
    );
    assert_eq!(
        router.rewards_seen(),
        0,
        "labels stay out of the loss history"
    );
    let again = labelled_feedback(
        &mut router,
        vec![(
            unscored,
            DecisionFeedback::ScoredLabels {
                labels: vec![0.0, 1.0],
                scores: vec![0.1, 0.3],
            },
        )],
        &serving,
        2,
    )
    .unwrap();
    assert_eq!(again.duplicate, 1);
    let unknown = labelled_feedback(
        &mut router,
        vec![(
            "nope".into(),
            DecisionFeedback::ScoredLabels {
                labels: vec![0.0, 1.0],
                scores: vec![0.1, 0.3],
            },
        )],
        &serving,
        2,
    );
    assert!(matches!(unknown, Err(RouterError::UnknownDecisions { .. })));
}

#[test]
fn bad_labels_are_refused_and_change_nothing() {
    let serving = rms(&["a"]);
    let mut router = quantile_router(&serving);
    let id = pick_scored(&mut router, &[1.0, 0.0], &[0.1, 0.9], &serving, 0);
    let other = pick_scored(&mut router, &[0.0, 1.0], &[0.3, 0.2], &serving, 0);
    let before = router.to_state();
    let refused = |router: &mut Router, items| labelled_feedback(router, items, &serving, 1);
    let count = refused(
        &mut router,
        vec![
            (
                other.clone(),
                DecisionFeedback::Signal(FeedbackSignal::Loss(0.1)),
            ),
            (id.clone(), DecisionFeedback::Labels(vec![1.0, 0.0, 0.5])),
        ],
    );
    assert!(
        matches!(&count, Err(RouterError::LabelCount { expected: 2, got: 3, decision_id, .. }) if *decision_id == id),
        "{count:?}"
    );
    let preferred = refused(
        &mut router,
        vec![(id.clone(), DecisionFeedback::Preferred(2))],
    );
    assert!(matches!(
        preferred,
        Err(RouterError::PreferredIndex {
            index: 2,
            responses: 2,
            ..
        })
    ));
    let unknown = refused(
        &mut router,
        vec![
            (id.clone(), DecisionFeedback::Labels(vec![1.0, 0.0])),
            ("nope".into(), DecisionFeedback::Labels(vec![1.0, 0.0])),
        ],
    );
    assert!(matches!(unknown, Err(RouterError::UnknownDecisions { .. })));
    assert_eq!(router.to_state(), before, "nothing applied");
}

#[test]
fn decisions_recorded_without_scores_refuse_labels_but_take_a_loss() {
    let serving = rms(&["a"]);
    let mut router = quantile_router(&serving);
    let id = record_unscored(&mut router, &[1.0, 0.0], "old", &serving);
    let refused = labelled_feedback(
        &mut router,
        vec![(id.clone(), DecisionFeedback::Labels(vec![1.0]))],
        &serving,
        1,
    );
    assert!(matches!(refused, Err(RouterError::ScoresNotKept { .. })));
    let outcome = labelled_feedback(
        &mut router,
        vec![(id, DecisionFeedback::Signal(FeedbackSignal::Loss(0.2)))],
        &serving,
        1,
    )
    .unwrap();
    assert_eq!(outcome.applied.len(), 1);
}

#[test]
fn scores_survive_the_log_and_a_snapshot_and_a_format_2_state_reads_without_them() {
    let serving = rms(&["a", "b"]);
    let mut live = quantile_router(&serving);
    let mut replayed = quantile_router(&serving);
    let mut selection = live
        .select(&[vec![1.0, 0.5], vec![0.5, 1.0]], None, false, &serving)
        .unwrap();
    selection.decisions[0].set_scores(vec![0.25, -1.0]);
    selection.decisions[1].set_scores(vec![3.0]);
    let event = selection.recorded(vec!["d0".into(), "d1".into()], 0);
    let logged: RouterEvent = postcard::from_bytes(&postcard::to_stdvec(&event).unwrap()).unwrap();
    live.apply(event).unwrap();
    replayed.apply(logged).unwrap();
    assert_eq!(live.to_state(), replayed.to_state());
    let state = live.to_state();
    let mut restored = Router::from_state("r".into(), state.clone()).unwrap();
    let outcome = labelled_feedback(
        &mut restored,
        vec![("d0".into(), DecisionFeedback::Preferred(0))],
        &serving,
        1,
    )
    .unwrap();
    assert_eq!(outcome.applied[0].reward, 1.0);
    // Format 2 (no scores) reads back as format 3 with empty scores.
    let v2 = crate::routers::instance::state::RouterStateV2::from(&state);
    let v2: crate::routers::instance::state::RouterStateV2 =
        postcard::from_bytes(&postcard::to_stdvec(&v2).unwrap()).unwrap();
    let upgraded = RouterState::from(v2);
    assert_ne!(upgraded, state, "the scores are gone");
    let mut old = Router::from_state("r".into(), upgraded).unwrap();
    assert!(matches!(
        labelled_feedback(
            &mut old,
            vec![("d0".into(), DecisionFeedback::Preferred(0))],
            &serving,
            1
        ),
        Err(RouterError::ScoresNotKept { .. })
    ));
}

#[test]
fn thompson_sampling_learns_the_better_arm_and_replays_its_draws() {
    let serving = rms(&["good", "bad"]);
    let settings = RouterSettings {
        alpha: 0.5,
        ..with_policy(Policy::LinTs, 2)
    };
    let mut live = Router::new("r".into(), settings.clone(), &serving);
    let mut replayed = Router::new("r".into(), settings, &serving);
    let mut late_good = 0;
    for step in 0..300 {
        let context = [1.0, ((step * 7) % 5) as f32 * 0.1];
        let selection = live
            .select(&[context.to_vec()], None, false, &serving)
            .unwrap();
        let chosen = selection.decisions[0].reward_models[0].clone();
        let id = format!("d{step}");
        let recorded = selection.recorded(vec![id.clone()], step);
        replayed.apply(recorded.clone()).unwrap();
        live.apply(recorded).unwrap();
        let reward = if chosen == "good" { 0.8 } else { 0.2 };
        let feedback = RouterEvent::Feedback {
            now_unix_ms: step,
            serving: serving.clone(),
            decision_ids: vec![id],
            signal: FeedbackSignal::Reward(reward),
        };
        replayed.apply(feedback.clone()).unwrap();
        live.apply(feedback).unwrap();
        if step >= 200 && chosen == "good" {
            late_good += 1;
        }
    }
    assert!(
        late_good >= 90,
        "picked the better arm {late_good} of 100 times late"
    );
    assert_eq!(live.to_state(), replayed.to_state());
    // Same state, same seed: the same draw.
    let again = Router::from_state("r".into(), live.to_state()).unwrap();
    let pick = |router: &Router| {
        router
            .select(&[vec![1.0, 0.3]], None, true, &serving)
            .unwrap()
            .decisions[0]
            .estimates
            .clone()
    };
    assert_eq!(pick(&live), pick(&again));
}

#[test]
fn a_weighted_prior_equals_its_observations_repeated_and_replays_once_per_key() {
    let serving = rms(&["a", "b"]);
    let settings = with_policy(Policy::Offline, 2);
    let contexts = vec![vec![1.0f32, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]];
    let correctness = vec![
        ("a".to_string(), vec![1.0, 0.0, 0.5]),
        ("b".to_string(), vec![0.0, 1.0, 1.0]),
        ("not-an-arm".to_string(), vec![1.0, 1.0, 1.0]),
    ];
    let prior = |weight: f64, key: Option<&str>| PriorObservations {
        contexts: contexts.clone(),
        correctness: correctness.clone(),
        weight,
        key: key.map(|key| IdempotencyKey {
            key: key.into(),
            fingerprint: 7,
        }),
        categories: vec![None; contexts.len()],
    };
    let mut weighted = Router::new("r".into(), settings.clone(), &serving);
    let outcome = weighted
        .apply(RouterEvent::PriorObserved {
            serving: serving.clone(),
            prior: prior(3.0, Some("k")),
        })
        .unwrap();
    assert_eq!(outcome, FeedbackOutcome::default());
    let mut repeated = Router::new("r".into(), settings, &serving);
    for _ in 0..3 {
        let entered = repeated.apply_prior(&serving, prior(1.0, None)).unwrap();
        assert_eq!(entered.skipped, vec!["not-an-arm".to_string()]);
        assert_eq!(entered.entered[1], ("b".to_string(), 3, 2.0 / 3.0));
    }
    let explain = |router: &Router, x: &[f32]| {
        router
            .select(&[x.to_vec()], None, true, &serving)
            .unwrap()
            .decisions[0]
            .estimates
            .clone()
    };
    for x in [[1.0f32, 0.0], [0.0, 1.0], [0.3, -0.2]] {
        let (w, r) = (explain(&weighted, &x), explain(&repeated, &x));
        for ((name_w, w), (name_r, r)) in w.iter().zip(&r) {
            assert_eq!(name_w, name_r);
            assert!((w.mean - r.mean).abs() < 1e-12, "{w:?} vs {r:?}");
            assert_eq!(w.bonus, 0.0, "offline explores nothing");
        }
    }
    // Offline: the arm that was right on e0 is chosen there, e1's on e1.
    let chosen = |x: [f32; 2]| {
        weighted
            .select(&[x.to_vec()], None, false, &serving)
            .unwrap()
            .decisions[0]
            .reward_models[0]
            .clone()
    };
    assert_eq!(
        (chosen([1.0, 0.0]), chosen([0.0, 1.0])),
        ("a".into(), "b".into())
    );
    // What each arm holds from priors: pairs, weight, accuracy; unknown RMs hold nothing.
    let held = weighted.prior_statistics().clone();
    assert_eq!(held.len(), 2);
    assert_eq!((held["a"].pairs, held["a"].weight), (3, 9.0));
    assert!((held["a"].accuracy() - 0.5).abs() < 1e-12);
    assert!((held["b"].accuracy() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(
        (
            repeated.prior_statistics()["b"].pairs,
            repeated.prior_statistics()["b"].weight
        ),
        (9, 9.0)
    );
    // They survive a snapshot; a format 3 state reads back without them (arms unchanged).
    let state = weighted.to_state();
    let restored = Router::from_state("r".into(), state.clone()).unwrap();
    assert_eq!(restored.prior_statistics(), &held);
    let v3 = crate::routers::instance::state::RouterStateV3::from(&state);
    let v3: crate::routers::instance::state::RouterStateV3 =
        postcard::from_bytes(&postcard::to_stdvec(&v3).unwrap()).unwrap();
    let old = Router::from_state("r".into(), RouterState::from(v3)).unwrap();
    assert!(old.prior_statistics().is_empty());
    assert_eq!(explain(&old, &[1.0, 0.0]), explain(&weighted, &[1.0, 0.0]));
    // The same key enters nothing again; a policy without arms' models refuses a prior.
    let before = weighted.to_state();
    let again = weighted
        .apply_prior(&serving, prior(3.0, Some("k")))
        .unwrap();
    assert!(again.replayed);
    assert_eq!(weighted.to_state(), before);
    let random = Router::new("r".into(), with_policy(Policy::Random, 2), &serving);
    assert!(matches!(
        random.check_prior(&prior(1.0, None)),
        Err(RouterError::PriorNeedsLinearArms { .. })
    ));
    // Offline feedback counts but moves no arm.
    let id = super::pick(&mut weighted, &[1.0, 0.0], &serving, 0).0;
    let before = explain(&weighted, &[1.0, 0.0]);
    super::feedback(&mut weighted, &id, -5.0, &serving);
    assert_eq!(explain(&weighted, &[1.0, 0.0]), before);
}

#[test]
fn categories_count_decisions_and_rewards_per_rm_bounded_and_durable() {
    use crate::routers::instance::statistics::{MAX_CATEGORIES_PER_ROUTER, OTHER_CATEGORY};
    let serving = rms(&["a"]);
    let mut router = Router::new("r".into(), with_policy(Policy::Random, 2), &serving);
    let mut ids = Vec::new();
    for k in 0..MAX_CATEGORIES_PER_ROUTER + 3 {
        let mut selection = router
            .select(&[vec![1.0, 0.0]], None, false, &serving)
            .unwrap();
        selection.decisions[0].set_category(Some(format!("c{k:02}")));
        let id = format!("d{k}");
        let event = selection.recorded(vec![id.clone()], 0);
        router.apply(event).unwrap();
        ids.push(id);
    }
    super::feedback(&mut router, &ids[0], 0.25, &serving);
    let recorded = router.categories_of(&ids[MAX_CATEGORIES_PER_ROUTER..]);
    assert!(
        recorded.iter().all(|(_, c)| c == OTHER_CATEGORY),
        "{recorded:?}"
    );
    let table = router.category_statistics();
    assert_eq!(table.len(), MAX_CATEGORIES_PER_ROUTER + 1);
    let first = table.iter().find(|c| c.category == "c00").unwrap();
    assert_eq!(
        (
            first.category.as_str(),
            first.selections,
            first.feedback_count
        ),
        ("c00", 1, 1)
    );
    assert_eq!(first.mean_reward, 0.25);
    let other = table.iter().find(|c| c.category == OTHER_CATEGORY).unwrap();
    assert_eq!(other.selections, 3);
    // Through a snapshot, the table and each pending decision's category stay.
    let restored = Router::from_state("r".into(), router.to_state()).unwrap();
    assert_eq!(restored.category_statistics(), table);
    assert_eq!(
        restored.categories_of(&ids[1..2]),
        vec![("d1".into(), "c01".into())]
    );
}
