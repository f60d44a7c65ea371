//! Context categories: a query's category as one-hot slots after its transformed context,
//! so a linear arm learns a reward per category; the log keeps the arms' context, priors
//! enter at their pairs' slots, and the settings refuse what they cannot hold.

use super::{feedback, record, rms, settings};
use crate::routers::instance::router::QueriesIn;
use crate::routers::*;

/// LinUCB on 2-d contexts with arms for `serving`, centred at 0.5, categories `names`.
fn categorized(names: &[&str], serving: &[String]) -> Router {
    let settings = RouterSettings {
        reward_center: 0.5,
        max_pending_decisions: 1000,
        context_categories: names.iter().map(|name| name.to_string()).collect(),
        ..settings(2)
    };
    Router::new("r".into(), settings, serving)
}

/// The selection for one query of `category` at `context` (explained when asked).
fn select_in(
    router: &Router,
    context: &[f32],
    category: Option<&str>,
    serving: &[String],
    explain: bool,
    now: i64,
) -> Selection {
    let contexts = [context.to_vec()];
    let categories = [category.map(str::to_string)];
    let queries = QueriesIn {
        contexts: &contexts,
        groups: &[None],
        categories: &categories,
    };
    router
        .select_grouped(queries, None, explain, serving, now)
        .unwrap()
}

/// Select for one query of `category` at `context`, record; (decision id, chosen RM).
fn pick_in(
    router: &mut Router,
    context: &[f32],
    category: Option<&str>,
    serving: &[String],
    now: i64,
) -> (String, String) {
    let selection = select_in(router, context, category, serving, false, now);
    let chosen = selection.decisions[0].reward_models[0].clone();
    let ids = record(router, selection, now);
    (ids[0].clone(), chosen)
}

#[test]
fn the_arms_see_the_context_then_one_slot_per_named_category() {
    let serving = rms(&["a"]);
    let router = categorized(&["math", "code", "chat"], &serving);
    assert_eq!(router.settings().arm_dim(), 5);
    assert_eq!(
        router.arm_context(&[3.0, 4.0], Some("code")),
        vec![3.0, 4.0, 0.0, 1.0, 0.0]
    );
    assert_eq!(
        router.arm_context(&[3.0, 4.0], Some("poetry")),
        vec![3.0, 4.0, 0.0, 0.0, 0.0],
        "a category not named has no slot"
    );
    assert_eq!(
        router.arm_context(&[3.0, 4.0], None),
        vec![3.0, 4.0, 0.0, 0.0, 0.0]
    );
    let plain = Router::new("p".into(), settings(2), &serving);
    assert_eq!(plain.arm_context(&[3.0, 4.0], Some("code")), vec![3.0, 4.0]);
    // With L2-normalized contexts the whole arm context is a unit vector again.
    let unit_settings = RouterSettings {
        l2_normalize_context: true,
        ..categorized(&["math", "code"], &serving).settings().clone()
    };
    let unit = Router::new("u".into(), unit_settings, &serving);
    let half = std::f64::consts::FRAC_1_SQRT_2;
    let x = unit.arm_context(&[3.0, 4.0], Some("code"));
    let expected = [0.6 * half, 0.8 * half, 0.0, half];
    assert!(
        x.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-15),
        "{x:?}"
    );
    assert_eq!(
        unit.arm_context(&[3.0, 4.0], None),
        vec![0.6, 0.8, 0.0, 0.0]
    );
}

/// RM "a" is right (reward 1) on math and wrong (0) on code, "b" the reverse; every query
/// has the same context. The share of decisions in the second half that went to the
/// category's right RM.
fn right_share_late(names: &[&str]) -> f64 {
    let serving = rms(&["a", "b"]);
    let mut router = categorized(names, &serving);
    let mut right_late = Vec::new();
    for step in 0..200 {
        // Categories in an irregular order (golden-ratio steps), not in step with the arms.
        let category = if (step as f64 * 0.618_034).fract() < 0.5 {
            "math"
        } else {
            "code"
        };
        let (id, chosen) = pick_in(&mut router, &[1.0, 0.0], Some(category), &serving, step);
        let right = (category == "math") == (chosen == "a");
        feedback(&mut router, &id, f64::from(u8::from(right)), &serving);
        if step >= 100 {
            right_late.push(f64::from(u8::from(right)));
        }
    }
    right_late.iter().sum::<f64>() / right_late.len() as f64
}

#[test]
fn with_its_categories_in_the_context_a_router_learns_the_right_rm_per_category() {
    // The contexts cannot tell the categories apart: without slots each arm's estimate is
    // its mean over both, and the picks are right half the time.
    let blind = right_share_late(&[]);
    assert!((0.3..=0.7).contains(&blind), "{blind}");
    let seeing = right_share_late(&["math", "code"]);
    assert!(seeing >= 0.95, "{seeing}");
}

#[test]
fn the_log_keeps_the_arms_context_so_a_replay_equals_the_live_router() {
    let serving = rms(&["a", "b"]);
    let mut live = categorized(&["math", "code"], &serving);
    let mut replica = categorized(&["math", "code"], &serving);
    for step in 0..12 {
        let category = ["math", "code", "poetry"][step % 3];
        let context = [(step as f32).sin(), 1.0];
        let selection = select_in(
            &live,
            &context,
            Some(category),
            &serving,
            false,
            step as i64,
        );
        assert_eq!(selection.decisions[0].context.len(), 4);
        let id = format!("d{step}");
        let event = selection.recorded(vec![id.clone()], step as i64);
        // Through the log's encoding, as recovery reads it.
        let logged: RouterEvent = postcard::from_bytes(&postcard::to_stdvec(&event).unwrap())
            .expect("a recorded event decodes");
        live.apply(event).unwrap();
        replica.apply(logged).unwrap();
        let reward = FeedbackSignal::Reward(if step % 2 == 0 { 1.0 } else { 0.0 });
        let feedback = RouterEvent::Feedback {
            now_unix_ms: step as i64,
            serving: serving.clone(),
            decision_ids: vec![id],
            signal: reward,
        };
        live.apply(feedback.clone()).unwrap();
        replica.apply(feedback).unwrap();
    }
    assert_eq!(live.to_state(), replica.to_state());
    let state = live.to_state();
    let back = Router::from_state("r".into(), state.clone()).unwrap();
    assert_eq!(back.to_state(), state);
}

#[test]
fn a_prior_enters_each_pair_at_its_category_slot() {
    let serving = rms(&["a", "b"]);
    let mut router = categorized(&["math", "code"], &serving);
    // On math pairs "a" is always right and "b" always wrong.
    let prior = PriorObservations {
        contexts: vec![vec![0.0f32, 0.0]; 8],
        correctness: vec![
            ("a".to_string(), vec![1.0; 8]),
            ("b".to_string(), vec![0.0; 8]),
        ],
        weight: 1.0,
        key: None,
        categories: vec![Some("math".to_string()); 8],
    };
    router.apply_prior(&serving, prior).unwrap();
    let estimates = |category: &str| {
        let selection = select_in(&router, &[0.0, 0.0], Some(category), &serving, true, 0);
        selection.decisions[0]
            .estimates
            .iter()
            .map(|(rm, estimate)| (rm.clone(), estimate.mean))
            .collect::<Vec<_>>()
    };
    // Eight observations at the math slot, λ = 1: ±0.5·8/9 around the centre.
    let math = estimates("math");
    assert!(
        (math[0].1 - (0.5 + 0.5 * 8.0 / 9.0)).abs() < 1e-12,
        "{math:?}"
    );
    assert!(
        (math[1].1 - (0.5 - 0.5 * 8.0 / 9.0)).abs() < 1e-12,
        "{math:?}"
    );
    // Code has learned nothing.
    assert_eq!(
        estimates("code"),
        vec![("a".into(), 0.5), ("b".into(), 0.5)]
    );
}

#[test]
fn context_categories_are_checked_named_in_differences_and_round_trip_a_patch() {
    let with = |names: Vec<String>| RouterSettings {
        context_categories: names,
        ..settings(2)
    };
    let refused = |names: Vec<String>| with(names).validate(4096).unwrap_err().to_string();
    let too_many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
    let message = refused(too_many);
    assert!(
        message.contains("context_categories") && message.contains("at most 32"),
        "{message}"
    );
    let message = refused(vec!["math".into(), "math".into()]);
    assert!(message.contains("[1] \"math\" is named twice"), "{message}");
    let message = refused(vec![String::new()]);
    assert!(message.contains("[0] is 0 bytes"), "{message}");
    assert!(refused(vec!["x".repeat(65)]).contains("1 to 64 bytes"));
    assert!(refused(vec!["a\nb".into()]).contains("[0] holds a control character"));
    let ok = with((0..32).map(|i| format!("c{i}")).collect());
    assert_eq!(ok.arm_dim(), 34);
    let ok = ok.validate(4096).unwrap();
    assert_eq!(
        RouterSettingsPatch::from(&ok).apply(&RouterSettingsPatch::default()),
        ok
    );
    assert_eq!(ok.differences(&settings(2)), vec!["context_categories"]);
    assert_eq!(
        RouterSettingsPatch::default()
            .resolve()
            .context_categories
            .len(),
        0
    );
}
