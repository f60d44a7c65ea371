//! The reward centre: linear arms fit `reward − reward_center`, so uninformative rewards
//! (the middle of the scale) leave an arm where it started; priors are centred the same way;
//! estimates are reported on the rewards' scale.

use super::{feedback, pick, rms, settings};
use crate::routers::*;

/// A LinUCB router on 2-d contexts with arms for `serving`, centred at `reward_center`.
fn router_centred_at(reward_center: f64, serving: &[String]) -> Router {
    let settings = RouterSettings {
        reward_center,
        ..settings(2)
    };
    Router::new("r".into(), settings, serving)
}

/// Twenty decisions at one context, each rewarded 0.5 (no information); the choices.
fn picks_under_uninformative_rewards(reward_center: f64) -> Vec<String> {
    let serving = rms(&["a", "b"]);
    let mut router = router_centred_at(reward_center, &serving);
    (0..20)
        .map(|step| {
            let (id, chosen) = pick(&mut router, &[1.0, 0.0], &serving, step);
            feedback(&mut router, &id, 0.5, &serving);
            chosen[0].clone()
        })
        .collect()
}

#[test]
fn uninformative_rewards_raise_the_most_picked_arm_only_when_arms_start_at_zero() {
    // θ from 0: the first arm's estimate climbs towards 0.5 with every reward of 0.5,
    // faster than its bonus falls, and the other arm is never tried again.
    let uncentred = picks_under_uninformative_rewards(0.0);
    let first = uncentred[0].clone();
    assert!(
        uncentred.iter().all(|rm| *rm == first),
        "the first pick takes every decision: {uncentred:?}"
    );
    // Centred at 0.5: the rewards say nothing, the bonuses alternate the arms.
    let centred = picks_under_uninformative_rewards(0.5);
    let a = centred.iter().filter(|rm| *rm == "a").count();
    assert_eq!(a, 10, "{centred:?}");
}

#[test]
fn estimates_and_statistics_are_on_the_rewards_scale() {
    let serving = rms(&["a", "b"]);
    let mut router = router_centred_at(0.5, &serving);
    let mut rewarded_a = 0.0;
    for step in 0..6 {
        let (id, chosen) = pick(&mut router, &[1.0, 0.0], &serving, step);
        let right = chosen[0] == "a";
        rewarded_a += f64::from(u8::from(right));
        feedback(&mut router, &id, if right { 1.0 } else { 0.5 }, &serving);
    }
    // n rewards of 1 at x = e0 with λ = 1: θ = n·0.5/(n+1) above the centre.
    let a_mean = 0.5 + rewarded_a * 0.5 / (rewarded_a + 1.0);
    assert!(rewarded_a > 0.0);
    let selection = router
        .select(&[vec![1.0, 0.0]], None, true, &serving)
        .unwrap();
    let estimates = &selection.decisions[0].estimates;
    let mean_of = |rm: &str| {
        estimates
            .iter()
            .find(|(name, _)| name == rm)
            .unwrap()
            .1
            .mean
    };
    assert!((mean_of("a") - a_mean).abs() < 1e-12, "{estimates:?}");
    // Rewards of 0.5 leave b at the centre exactly.
    assert_eq!(mean_of("b"), 0.5);
    let statistics = router.arm_statistics(&serving);
    assert!((statistics[0].mean_at_context_mean - a_mean).abs() < 1e-12);
    assert_eq!(statistics[1].mean_at_context_mean, 0.5);
    assert_eq!(statistics[1].theta_norm, 0.0);
}

#[test]
fn a_prior_enters_its_correctness_less_the_centre() {
    let serving = rms(&["a", "b"]);
    let prior = PriorObservations {
        contexts: vec![vec![1.0f32, 0.0]; 4],
        correctness: vec![
            ("a".to_string(), vec![1.0; 4]),
            ("b".to_string(), vec![0.5; 4]),
        ],
        weight: 1.0,
        key: None,
        categories: vec![None; 4],
    };
    let mean_at_e0 = |reward_center: f64| {
        let mut router = router_centred_at(reward_center, &serving);
        router.apply_prior(&serving, prior.clone()).unwrap();
        let selection = router
            .select(&[vec![1.0, 0.0]], None, true, &serving)
            .unwrap();
        selection.decisions[0]
            .estimates
            .iter()
            .map(|(_, estimate)| estimate.mean)
            .collect::<Vec<_>>()
    };
    // Four observations at e0, λ = 1: θ = 4·r/5.
    let uncentred = mean_at_e0(0.0);
    assert!((uncentred[0] - 0.8).abs() < 1e-12 && (uncentred[1] - 0.4).abs() < 1e-12);
    // Centred: a ties at 0.5 + 4·0.5/5, b (always half right) stays at the centre.
    let centred = mean_at_e0(0.5);
    assert!((centred[0] - 0.9).abs() < 1e-12, "{centred:?}");
    assert_eq!(centred[1], 0.5);
}
