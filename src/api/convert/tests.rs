//! Conversion and validation of requests: fields named, limits enforced, enums checked,
//! settings round-tripped; arbitrary requests never panic (proptest).

use std::time::Duration;

use super::RequestError;
use super::admin::{router_settings_patch, router_settings_to_pb};
use super::feedback::feedback_call;
use super::score::score_call;
use crate::api::pb;
use crate::routers::{
    DecisionFeedback, FeedbackForm, FeedbackSignal, Normalization, Policy, SelectionMode,
};
use crate::service::Limits;

fn query(context: Vec<f32>, responses: &[&str]) -> pb::Query {
    pb::Query {
        id: "q".into(),
        context,
        prompt: "p".into(),
        responses: responses.iter().map(|r| r.to_string()).collect(),
        group: String::new(),
        category: String::new(),
    }
}

/// A Score call for router "r" with `queries` under `limits`, which must be valid.
fn score(queries: Vec<pb::Query>, limits: &Limits) -> crate::service::ScoreCall {
    score_under(queries, limits).unwrap()
}

fn score_under(
    queries: Vec<pb::Query>,
    limits: &Limits,
) -> Result<crate::service::ScoreCall, RequestError> {
    score_call(
        pb::ScoreRequest {
            router: "r".into(),
            queries,
            mode: 0,
            explain: false,
        },
        limits,
    )
}

fn score_default(queries: Vec<pb::Query>) -> Result<crate::service::ScoreCall, RequestError> {
    score_under(queries, &Limits::default())
}

#[test]
fn bad_queries_name_the_field() {
    let nan = score_default(vec![query(vec![0.0, f32::NAN], &["a"])]).unwrap_err();
    assert!(
        nan.to_string().starts_with("queries[0].context[1]: is NaN"),
        "{nan}"
    );
    let empty = score_default(vec![query(vec![1.0], &["a"]), query(vec![1.0], &[])]).unwrap_err();
    assert!(
        empty.to_string().starts_with("queries[1].responses"),
        "{empty}"
    );
    let none = score_default(vec![]).unwrap_err();
    assert!(none.to_string().starts_with("queries"), "{none}");
    let long = "x".repeat(Limits::default().max_text_bytes + 1);
    let over = score_default(vec![query(vec![1.0], &[long.as_str()])]).unwrap_err();
    assert!(matches!(
        over,
        RequestError::OverLimit {
            limit: "limits.max_text_bytes",
            ..
        }
    ));
}

#[test]
fn long_texts_keep_both_ends_within_the_kept_bytes() {
    let limits = Limits {
        kept_text_bytes: 20,
        ..Limits::default()
    };
    let long = format!("héllo{}wörld", "x".repeat(100));
    let call = score_call(
        pb::ScoreRequest {
            router: "r".into(),
            queries: vec![pb::Query {
                prompt: long.clone(),
                ..query(vec![1.0], &[long.as_str(), "short"])
            }],
            mode: 0,
            explain: false,
        },
        &limits,
    )
    .unwrap();
    let query = &call.queries[0];
    for text in [&query.prompt, &query.responses[0]] {
        assert!(text.len() <= 20, "{text:?}");
        assert!(
            text.starts_with("héllo") && text.ends_with("wörld"),
            "{text:?}"
        );
        assert!(text.contains(" … "), "{text:?}");
    }
    assert_eq!(query.responses[1], "short");
    // Off: kept whole up to the hard limit.
    let whole = Limits {
        truncate_long_texts: false,
        ..limits
    };
    let call = score(vec![query_with(&long)], &whole);
    assert_eq!(call.queries[0].responses[0], long);
}

fn query_with(response: &str) -> pb::Query {
    query(vec![1.0], &[response])
}

#[test]
fn contexts_are_given_for_every_query_or_for_none() {
    let limits = Limits::default();
    let none = score(vec![query(vec![], &["a"]), query(vec![], &["b"])], &limits);
    assert!(none.queries.iter().all(|q| q.context.is_empty()));
    let mixed = score_default(vec![query(vec![1.0], &["a"]), query(vec![], &["b"])]).unwrap_err();
    assert!(
        mixed
            .to_string()
            .starts_with("queries[1].context: is empty"),
        "{mixed}"
    );
    let mixed = score_default(vec![query(vec![], &["a"]), query(vec![1.0], &["b"])]).unwrap_err();
    assert!(
        mixed.to_string().starts_with("queries[1].context: is set"),
        "{mixed}"
    );
}

#[test]
fn a_group_is_at_most_256_bytes() {
    let grouped = |group: String| pb::Query {
        group,
        ..query(vec![1.0], &["a"])
    };
    let ok = score(vec![grouped("g".repeat(256))], &Limits::default());
    assert_eq!(
        ok.queries[0].group.as_deref(),
        Some("g".repeat(256).as_str())
    );
    let none = score(vec![grouped(String::new())], &Limits::default());
    assert_eq!(none.queries[0].group, None);
    let long = score_default(vec![grouped("g".repeat(257))]).unwrap_err();
    assert!(long.to_string().starts_with("queries[0].group"), "{long}");
}

#[test]
fn unknown_enum_values_are_refused() {
    let err = score_call(
        pb::ScoreRequest {
            router: "r".into(),
            queries: vec![query(vec![1.0], &["a"])],
            mode: 42,
            explain: false,
        },
        &Limits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("mode"));
}

#[test]
fn feedback_needs_a_finite_signal() {
    let request = |signal| pb::FeedbackRequest {
        router: "r".into(),
        decision_ids: vec!["d".into()],
        signal,
        ..Default::default()
    };
    let limits = Limits::default();
    assert!(feedback_call(request(None), &limits).is_err());
    let nan = Some(pb::feedback_request::Signal::Loss(f64::NAN));
    assert!(
        feedback_call(request(nan), &limits)
            .unwrap_err()
            .to_string()
            .starts_with("loss")
    );
    let ok = Some(pb::feedback_request::Signal::Loss(0.5));
    assert_eq!(
        feedback_call(request(ok), &limits).unwrap().form,
        FeedbackForm::Decisions {
            decision_ids: vec!["d".into()],
            signal: FeedbackSignal::Loss(0.5)
        }
    );
}

#[test]
fn feedback_forms_are_exclusive_and_name_their_fields() {
    let limits = Limits::default();
    let loss = Some(pb::feedback_request::Signal::Loss(0.5));
    let per_decision = |id: &str, loss: f64| pb::DecisionSignal {
        decision_id: id.into(),
        signal: Some(pb::decision_signal::Signal::Loss(loss)),
    };
    let refused =
        |request: pb::FeedbackRequest| feedback_call(request, &limits).unwrap_err().to_string();
    let base = pb::FeedbackRequest {
        router: "r".into(),
        ..Default::default()
    };
    // Per-decision signals, with a key.
    let call = feedback_call(
        pb::FeedbackRequest {
            signals: vec![per_decision("a", 0.1), per_decision("b", 0.2)],
            idempotency_key: "step-7".into(),
            ..base.clone()
        },
        &limits,
    )
    .unwrap();
    assert_eq!(
        call.form,
        FeedbackForm::PerDecision(vec![
            ("a".into(), FeedbackSignal::Loss(0.1)),
            ("b".into(), FeedbackSignal::Loss(0.2))
        ])
    );
    assert_eq!(call.idempotency_key.as_deref(), Some("step-7"));
    // Everything pending.
    let call = feedback_call(
        pb::FeedbackRequest {
            all_pending: true,
            signal: loss,
            ..base.clone()
        },
        &limits,
    )
    .unwrap();
    assert_eq!(
        call.form,
        FeedbackForm::AllPending {
            signal: FeedbackSignal::Loss(0.5)
        }
    );
    // Mixed forms and bad parts are refused by field.
    assert!(
        refused(pb::FeedbackRequest {
            signals: vec![per_decision("a", 0.1)],
            decision_ids: vec!["b".into()],
            ..base.clone()
        })
        .starts_with("signals")
    );
    assert!(
        refused(pb::FeedbackRequest {
            all_pending: true,
            decision_ids: vec!["b".into()],
            signal: loss,
            ..base.clone()
        })
        .starts_with("decision_ids")
    );
    assert!(
        refused(pb::FeedbackRequest {
            all_pending: true,
            ..base.clone()
        })
        .starts_with("signal")
    );
    assert!(
        refused(pb::FeedbackRequest {
            signals: vec![per_decision("a", f64::NAN)],
            ..base.clone()
        })
        .starts_with("signals[0].loss")
    );
    assert!(
        refused(pb::FeedbackRequest {
            signals: vec![per_decision("", 0.1)],
            ..base.clone()
        })
        .starts_with("signals[0].decision_id")
    );
    assert!(
        refused(pb::FeedbackRequest {
            all_pending: true,
            signal: loss,
            idempotency_key: "k".repeat(300),
            ..base
        })
        .starts_with("idempotency_key")
    );
}

#[test]
fn labels_per_decision_convert_beside_losses_and_bad_ones_name_their_field() {
    let limits = Limits::default();
    let labelled = |id: &str, values: Vec<f64>, preferred: Option<u32>| pb::DecisionSignal {
        decision_id: id.into(),
        signal: Some(pb::decision_signal::Signal::Labels(pb::ResponseLabels {
            values,
            preferred,
            scores: Vec::new(),
        })),
    };
    let scored = |values: Vec<f64>, scores: Vec<f32>, preferred: Option<u32>| pb::DecisionSignal {
        decision_id: "s".into(),
        signal: Some(pb::decision_signal::Signal::Labels(pb::ResponseLabels {
            values,
            preferred,
            scores,
        })),
    };
    let with = |signals: Vec<pb::DecisionSignal>| pb::FeedbackRequest {
        router: "r".into(),
        signals,
        ..Default::default()
    };
    let call = feedback_call(
        with(vec![
            labelled("a", vec![1.0, 0.0], None),
            pb::DecisionSignal {
                decision_id: "b".into(),
                signal: Some(pb::decision_signal::Signal::Loss(0.4)),
            },
            labelled("c", Vec::new(), Some(3)),
        ]),
        &limits,
    )
    .unwrap();
    assert_eq!(
        call.form,
        FeedbackForm::PerDecisionLabelled(vec![
            ("a".into(), DecisionFeedback::Labels(vec![1.0, 0.0])),
            (
                "b".into(),
                DecisionFeedback::Signal(FeedbackSignal::Loss(0.4))
            ),
            ("c".into(), DecisionFeedback::Preferred(3)),
        ])
    );
    let refused = |signals| {
        feedback_call(with(signals), &limits)
            .unwrap_err()
            .to_string()
    };
    let message = refused(vec![labelled("a", vec![1.0, f64::NAN], None)]);
    assert!(
        message.starts_with("signals[0].labels.values[1]"),
        "{message}"
    );
    let message = refused(vec![labelled("a", vec![1.0], Some(0))]);
    assert!(message.starts_with("signals[0].labels"), "{message}");
    let message = refused(vec![labelled("a", Vec::new(), None)]);
    assert!(message.starts_with("signals[0].labels"), "{message}");
    let message = refused(vec![labelled("a", vec![0.5; 1025], None)]);
    assert!(message.contains("signals[0].labels.values"), "{message}");
    assert!(message.contains("1024"), "{message}");

    // Labels with the scores they label.
    let call = feedback_call(
        with(vec![scored(vec![1.0, 0.0], vec![0.5, 0.25], None)]),
        &limits,
    )
    .unwrap();
    assert_eq!(
        call.form,
        FeedbackForm::PerDecisionLabelled(vec![(
            "s".into(),
            DecisionFeedback::ScoredLabels {
                labels: vec![1.0, 0.0],
                scores: vec![0.5, 0.25]
            }
        )])
    );
    let message = refused(vec![scored(vec![1.0, 0.0], vec![0.5], None)]);
    assert!(message.starts_with("signals[0].labels.scores"), "{message}");
    assert!(message.contains("1 scores for 2 values"), "{message}");
    let message = refused(vec![scored(vec![1.0, 0.0], vec![0.5, f32::INFINITY], None)]);
    assert!(
        message.starts_with("signals[0].labels.scores[1]"),
        "{message}"
    );
    let message = refused(vec![scored(Vec::new(), vec![0.5], Some(0))]);
    assert!(message.starts_with("signals[0].labels.scores"), "{message}");
}

#[test]
fn create_router_settings_fill_defaults_and_round_trip() {
    let settings = router_settings_patch(Some(pb::RouterSettings {
        context_dim: 32,
        policy: pb::Policy::Exp3 as i32,
        quantile_high: Some(90.0),
        reward_window: 500,
        reward_models: vec!["a".into(), "b".into()],
        ..Default::default()
    }))
    .unwrap()
    .resolve();
    assert_eq!(settings.context_dim, 32);
    assert_eq!(settings.policy, Policy::Exp3 { gamma: 0.1 });
    assert_eq!(
        settings.normalization,
        Normalization::QuantileNeutralStart {
            low: 20.0,
            high: 90.0,
            window: Some(500)
        }
    );
    assert_eq!(settings.alpha, 1.0);
    assert!(
        settings.l2_normalize_context,
        "unset in the request: the default"
    );
    assert_eq!(settings.pending_ttl, Duration::from_secs(3600));
    let raw = router_settings_patch(Some(pb::RouterSettings {
        l2_normalize_context: Some(false),
        ..Default::default()
    }))
    .unwrap()
    .resolve();
    assert!(!raw.l2_normalize_context, "a request can turn it off");
    let again = router_settings_patch(Some(router_settings_to_pb(&settings)))
        .unwrap()
        .resolve();
    assert_eq!(again, settings);
    let bad = router_settings_patch(Some(pb::RouterSettings {
        policy: 99,
        ..Default::default()
    }));
    assert!(bad.unwrap_err().to_string().starts_with("settings.policy"));
}

#[test]
fn create_router_takes_a_preset_by_name() {
    let settings = router_settings_patch(Some(pb::RouterSettings {
        context_dim: 8,
        preset: "laser_reference".into(),
        ..Default::default()
    }))
    .unwrap()
    .resolve();
    assert_eq!(settings.default_mode, SelectionMode::PerBatch);
    assert_eq!(settings.alpha, 0.1);
    let unknown = router_settings_patch(Some(pb::RouterSettings {
        preset: "laser".into(),
        ..Default::default()
    }))
    .unwrap_err()
    .to_string();
    assert!(
        unknown.starts_with("settings.preset") && unknown.contains("laser_reference"),
        "{unknown}"
    );
}

mod fuzz {
    use super::*;
    use proptest::collection::vec;

    /// The value of a signal the API makes (a loss or a reward; agreements are the
    /// router's).
    fn api_value(signal: FeedbackSignal) -> f64 {
        match signal {
            FeedbackSignal::Loss(v) | FeedbackSignal::Reward(v) => v,
            FeedbackSignal::Agreement(_) | FeedbackSignal::Uninformative => {
                panic!("the API never makes {signal:?}")
            }
        }
    }
    use proptest::prelude::*;

    fn small_limits() -> Limits {
        Limits {
            max_queries_per_score: 3,
            max_responses_per_query: 2,
            max_text_bytes: 12,
            max_decision_ids_per_feedback: 3,
            max_context_dim: 4,
            ..Limits::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary Score requests (NaN/Inf floats, unknown enums, long strings) never
        /// panic, and what is accepted satisfies every limit.
        #[test]
        fn score_requests(
            router in ".{0,6}",
            mode in any::<i32>(),
            queries in vec((vec(any::<f32>(), 0..6), ".{0,16}", vec(".{0,16}", 0..4)), 0..5),
        ) {
            let limits = small_limits();
            let request = pb::ScoreRequest {
                router,
                queries: queries
                    .into_iter()
                    .map(|(context, prompt, responses)| pb::Query { id: String::new(), context, prompt, responses, group: String::new(), category: String::new() })
                    .collect(),
                mode,
                explain: false,
            };
            if let Ok(call) = score_call(request, &limits) {
                prop_assert!(!call.router.is_empty());
                prop_assert!((1..=limits.max_queries_per_score).contains(&call.queries.len()));
                for query in &call.queries {
                    prop_assert!(query.context.len() <= limits.max_context_dim);
                        prop_assert_eq!(query.context.is_empty(), call.queries[0].context.is_empty());
                    prop_assert!(query.context.iter().all(|v| v.is_finite()));
                    prop_assert!((1..=limits.max_responses_per_query).contains(&query.responses.len()));
                    prop_assert!(query.prompt.len() <= limits.max_text_bytes);
                    prop_assert!(query.responses.iter().all(|r| r.len() <= limits.max_text_bytes));
                }
            }
        }

        #[test]
        fn feedback_requests(
            router in ".{0,6}",
            ids in vec(".{0,8}", 0..5),
            signal in proptest::option::of(prop_oneof![
                any::<f64>().prop_map(pb::feedback_request::Signal::Loss),
                any::<f64>().prop_map(pb::feedback_request::Signal::Reward),
            ]),
            per_decision in vec((".{0,8}", proptest::option::of(any::<f64>())), 0..5),
            all_pending in any::<bool>(),
            key in ".{0,300}",
        ) {
            let limits = small_limits();
            let per_decision: Vec<pb::DecisionSignal> = per_decision
                .into_iter()
                .map(|(decision_id, loss)| pb::DecisionSignal {
                    decision_id,
                    signal: loss.map(pb::decision_signal::Signal::Loss),
                })
                .collect();
            let request = pb::FeedbackRequest {
                router, decision_ids: ids, signal, signals: per_decision, all_pending, idempotency_key: key,
            };
            if let Ok(call) = feedback_call(request, &limits) {
                prop_assert!(call.idempotency_key.as_ref().is_none_or(|k| !k.is_empty() && k.len() <= 256));
                let (ids, values): (Vec<String>, Vec<f64>) = match call.form {
                    FeedbackForm::Decisions { decision_ids, signal } => {
                        (decision_ids, vec![api_value(signal)])
                    }
                    FeedbackForm::PerDecision(signals) => signals
                        .into_iter()
                        .map(|(id, s)| (id, api_value(s)))
                        .unzip(),
                    FeedbackForm::AllPending { signal } => {
                        (vec!["*".into()], vec![api_value(signal)])
                    }
                    FeedbackForm::PerDecisionLabelled(_) => panic!("no labels were sent"),
                };
                prop_assert!((1..=limits.max_decision_ids_per_feedback).contains(&ids.len()));
                prop_assert!(ids.iter().all(|id| !id.is_empty()));
                prop_assert!(values.iter().all(|v| v.is_finite()));
            }
        }

        /// Arbitrary CreateRouter settings convert or fail with a field name; what
        /// converts and validates is usable.
        #[test]
        fn router_settings_requests(
            context_dim in any::<u32>(),
            policy in any::<i32>(),
            alpha in proptest::option::of(any::<f64>()),
            l2_lambda in proptest::option::of(any::<f64>()),
            normalization in any::<i32>(),
            quantile_low in proptest::option::of(any::<f64>()),
            reward_window in any::<u32>(),
            projection_dim in 0u32..64,
            exp3_gamma in proptest::option::of(any::<f64>()),
        ) {
            let settings = pb::RouterSettings {
                context_dim, policy, alpha, l2_lambda, normalization, quantile_low, reward_window,
                projection_dim, exp3_gamma, ..Default::default()
            };
            match router_settings_patch(Some(settings)) {
                Ok(patch) => {
                    let settings = patch.resolve();
                    if let Ok(valid) = settings.validate(64) {
                        prop_assert!(valid.context_dim >= 1 && valid.context_dim <= 64);
                        prop_assert!(valid.alpha.is_finite() && valid.l2_lambda > 0.0);
                    }
                }
                Err(error) => prop_assert!(error.to_string().starts_with("settings.")),
            }
        }
    }
}
