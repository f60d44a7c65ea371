//! Validation and conversion of `pb` requests into domain calls. Everything a request can
//! get wrong without looking at server state is caught here, before any state is touched;
//! checks that need state (context dimension, unknown ids) live with that state.

use std::collections::BTreeSet;
use std::time::Duration;

use super::pb;
use crate::bandit::Normalization;
use crate::config::{Limits, NormalizationSetting, PolicySetting, RouterDefaults};
use crate::models::spec::Provider;
use crate::models::{InputFormat, RewardModelSpec};
use crate::routers::{FeedbackSignal, Policy, RouterSettings, SelectionMode};

/// A request the server refuses on its face. Messages name the field and the limit.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: {value} exceeds {limit} = {max}")]
    OverLimit {
        field: String,
        limit: &'static str,
        value: usize,
        max: usize,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn at_most(
    field: impl Into<String>,
    value: usize,
    limit: &'static str,
    max: usize,
) -> Result<(), RequestError> {
    if value > max {
        return Err(RequestError::OverLimit {
            field: field.into(),
            limit,
            value,
            max,
        });
    }
    Ok(())
}

/// One query of a Score call.
#[derive(Debug)]
pub struct QueryInput {
    pub id: String,
    pub context: Vec<f32>,
    pub prompt: String,
    pub responses: Vec<String>,
}

/// A validated Score request.
#[derive(Debug)]
pub struct ScoreCall {
    pub router: String,
    pub queries: Vec<QueryInput>,
    pub mode: Option<SelectionMode>,
    pub explain: bool,
}

impl ScoreCall {
    pub fn from_request(request: pb::ScoreRequest, limits: &Limits) -> Result<Self, RequestError> {
        if request.router.is_empty() {
            return Err(invalid("router", "is empty"));
        }
        if request.queries.is_empty() {
            return Err(invalid("queries", "is empty; send at least one query"));
        }
        at_most(
            "queries",
            request.queries.len(),
            "limits.max_queries_per_score",
            limits.max_queries_per_score,
        )?;
        let mode = selection_mode(request.mode, "mode")?;
        let queries = request
            .queries
            .into_iter()
            .enumerate()
            .map(|(index, query)| query_input(index, query, limits))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            router: request.router,
            queries,
            mode,
            explain: request.explain,
        })
    }
}

fn query_input(
    index: usize,
    query: pb::Query,
    limits: &Limits,
) -> Result<QueryInput, RequestError> {
    let field = |name: &str| format!("queries[{index}].{name}");
    if query.context.is_empty() {
        return Err(invalid(field("context"), "is empty"));
    }
    at_most(
        field("context"),
        query.context.len(),
        "limits.max_context_dim",
        limits.max_context_dim,
    )?;
    if let Some(position) = query.context.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            format!("queries[{index}].context[{position}]"),
            format!("is {}; every value must be finite", query.context[position]),
        ));
    }
    at_most(
        field("prompt"),
        query.prompt.len(),
        "limits.max_text_bytes",
        limits.max_text_bytes,
    )?;
    if query.responses.is_empty() {
        return Err(invalid(
            field("responses"),
            "is empty; send at least one response",
        ));
    }
    at_most(
        field("responses"),
        query.responses.len(),
        "limits.max_responses_per_query",
        limits.max_responses_per_query,
    )?;
    for (position, response) in query.responses.iter().enumerate() {
        at_most(
            format!("queries[{index}].responses[{position}]"),
            response.len(),
            "limits.max_text_bytes",
            limits.max_text_bytes,
        )?;
    }
    Ok(QueryInput {
        id: query.id,
        context: query.context,
        prompt: query.prompt,
        responses: query.responses,
    })
}

fn selection_mode(value: i32, field: &str) -> Result<Option<SelectionMode>, RequestError> {
    match pb::SelectionMode::try_from(value) {
        Ok(pb::SelectionMode::Unspecified) => Ok(None),
        Ok(pb::SelectionMode::PerQuery) => Ok(Some(SelectionMode::PerQuery)),
        Ok(pb::SelectionMode::PerBatch) => Ok(Some(SelectionMode::PerBatch)),
        Err(_) => Err(invalid(
            field,
            format!("unknown SelectionMode value {value}"),
        )),
    }
}

/// A validated Feedback request.
#[derive(Debug)]
pub struct FeedbackCall {
    pub router: String,
    pub decision_ids: Vec<String>,
    pub signal: FeedbackSignal,
}

impl FeedbackCall {
    pub fn from_request(
        request: pb::FeedbackRequest,
        limits: &Limits,
    ) -> Result<Self, RequestError> {
        if request.router.is_empty() {
            return Err(invalid("router", "is empty"));
        }
        if request.decision_ids.is_empty() {
            return Err(invalid("decision_ids", "is empty"));
        }
        at_most(
            "decision_ids",
            request.decision_ids.len(),
            "limits.max_decision_ids_per_feedback",
            limits.max_decision_ids_per_feedback,
        )?;
        if let Some(position) = request.decision_ids.iter().position(|id| id.is_empty()) {
            return Err(invalid(format!("decision_ids[{position}]"), "is empty"));
        }
        let signal = match request.signal {
            None => return Err(invalid("signal", "set loss or reward")),
            Some(pb::feedback_request::Signal::Loss(loss)) => {
                finite("loss", loss)?;
                FeedbackSignal::Loss(loss)
            }
            Some(pb::feedback_request::Signal::Reward(reward)) => {
                finite("reward", reward)?;
                FeedbackSignal::Reward(reward)
            }
        };
        Ok(Self {
            router: request.router,
            decision_ids: request.decision_ids,
            signal,
        })
    }
}

fn finite(field: &str, value: f64) -> Result<(), RequestError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(invalid(field, format!("is {value}; must be finite")))
    }
}

/// Router settings from CreateRouter, unset fields taken from `defaults`. Range checks
/// happen in `RouterSettings::validate`.
pub fn router_settings(
    settings: Option<pb::RouterSettings>,
    defaults: &RouterDefaults,
) -> Result<RouterSettings, RequestError> {
    let base = defaults.settings();
    let Some(settings) = settings else {
        return Ok(base);
    };
    let fixed =
        (!settings.fixed_reward_model.is_empty()).then(|| settings.fixed_reward_model.clone());
    let policy = match pb::Policy::try_from(settings.policy) {
        Ok(pb::Policy::Unspecified) => defaults.policy(defaults.policy, fixed, settings.exp3_gamma),
        Ok(pb::Policy::Linucb) => Policy::LinUcb,
        Ok(pb::Policy::Random) => Policy::Random,
        Ok(pb::Policy::RoundRobin) => Policy::RoundRobin,
        Ok(pb::Policy::Fixed) => defaults.policy(PolicySetting::Fixed, fixed, None),
        Ok(pb::Policy::Ensemble) => Policy::Ensemble,
        Ok(pb::Policy::Exp3) => defaults.policy(PolicySetting::Exp3, None, settings.exp3_gamma),
        Err(_) => {
            return Err(invalid(
                "settings.policy",
                format!("unknown Policy value {}", settings.policy),
            ));
        }
    };
    let normalization_kind = match pb::Normalization::try_from(settings.normalization) {
        Ok(pb::Normalization::Unspecified) => defaults.normalization,
        Ok(pb::Normalization::None) => NormalizationSetting::None,
        Ok(pb::Normalization::Quantile) => NormalizationSetting::Quantile,
        Err(_) => {
            return Err(invalid(
                "settings.normalization",
                format!("unknown Normalization value {}", settings.normalization),
            ));
        }
    };
    let window = (settings.reward_window > 0).then_some(settings.reward_window as usize);
    let normalization = defaults.normalization(
        normalization_kind,
        settings.quantile_low,
        settings.quantile_high,
        window,
    );
    let default_mode = selection_mode(settings.default_mode, "settings.default_mode")?
        .unwrap_or(base.default_mode);
    if let Some(position) = settings
        .reward_models
        .iter()
        .position(|name| name.is_empty())
    {
        return Err(invalid(
            format!("settings.reward_models[{position}]"),
            "is empty",
        ));
    }
    let reward_models = (!settings.reward_models.is_empty()).then(|| {
        settings
            .reward_models
            .iter()
            .cloned()
            .collect::<BTreeSet<String>>()
    });
    let nonzero = |value: u32, default: usize| if value == 0 { default } else { value as usize };
    Ok(RouterSettings {
        context_dim: nonzero(settings.context_dim, base.context_dim),
        policy,
        alpha: settings.alpha.unwrap_or(base.alpha),
        l2_lambda: settings.l2_lambda.unwrap_or(base.l2_lambda),
        normalization,
        reward_is_normalized: settings.reward_is_normalized,
        default_mode,
        seed: settings.seed.unwrap_or(base.seed),
        reward_models,
        join_new_reward_models: settings
            .join_new_reward_models
            .unwrap_or(base.join_new_reward_models),
        l2_normalize_context: settings.l2_normalize_context,
        projection_dim: settings.projection_dim as usize,
        max_pending_decisions: nonzero(settings.max_pending_decisions, base.max_pending_decisions),
        pending_ttl: match settings.pending_ttl_seconds {
            0 => base.pending_ttl,
            seconds => Duration::from_secs(seconds as u64),
        },
    })
}

/// The pb form of a router's effective settings.
pub fn router_settings_to_pb(settings: &RouterSettings) -> pb::RouterSettings {
    let (policy, fixed_reward_model, exp3_gamma) = match &settings.policy {
        Policy::LinUcb => (pb::Policy::Linucb, String::new(), None),
        Policy::Random => (pb::Policy::Random, String::new(), None),
        Policy::RoundRobin => (pb::Policy::RoundRobin, String::new(), None),
        Policy::Fixed { reward_model } => (pb::Policy::Fixed, reward_model.clone(), None),
        Policy::Ensemble => (pb::Policy::Ensemble, String::new(), None),
        Policy::Exp3 { gamma } => (pb::Policy::Exp3, String::new(), Some(*gamma)),
    };
    let (normalization, quantile_low, quantile_high, reward_window) = match settings.normalization {
        Normalization::None => (pb::Normalization::None, None, None, 0),
        Normalization::Quantile { low, high, window } => (
            pb::Normalization::Quantile,
            Some(low),
            Some(high),
            window.unwrap_or(0) as u32,
        ),
    };
    pb::RouterSettings {
        context_dim: settings.context_dim as u32,
        policy: policy as i32,
        alpha: Some(settings.alpha),
        l2_lambda: Some(settings.l2_lambda),
        normalization: normalization as i32,
        default_mode: match settings.default_mode {
            SelectionMode::PerQuery => pb::SelectionMode::PerQuery,
            SelectionMode::PerBatch => pb::SelectionMode::PerBatch,
        } as i32,
        seed: Some(settings.seed),
        fixed_reward_model,
        exp3_gamma,
        reward_models: settings
            .reward_models
            .as_ref()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default(),
        join_new_reward_models: Some(settings.join_new_reward_models),
        quantile_low,
        quantile_high,
        reward_window,
        reward_is_normalized: settings.reward_is_normalized,
        l2_normalize_context: settings.l2_normalize_context,
        projection_dim: settings.projection_dim as u32,
        max_pending_decisions: settings.max_pending_decisions as u32,
        pending_ttl_seconds: settings.pending_ttl.as_secs() as u32,
    }
}

/// An RM spec from AddRewardModel, defaults filled in, checked by `RewardModelSpec::validate`.
pub fn reward_model_spec(
    spec: Option<pb::RewardModelSpec>,
) -> Result<RewardModelSpec, RequestError> {
    let Some(spec) = spec else {
        return Err(invalid("spec", "is missing"));
    };
    let input_format = match spec.input_format.as_str() {
        "pair" => InputFormat::Pair,
        "template" => InputFormat::Template,
        "chat" => InputFormat::Chat,
        other => {
            return Err(invalid(
                "spec.input_format",
                format!("{other:?} is not one of \"pair\", \"template\", \"chat\""),
            ));
        }
    };
    if spec.model_path.is_empty() {
        return Err(invalid("spec.model_path", "is empty"));
    }
    if spec.tokenizer_path.is_empty() {
        return Err(invalid("spec.tokenizer_path", "is empty"));
    }
    let mut converted = RewardModelSpec::new(
        spec.name,
        spec.model_path.into(),
        spec.tokenizer_path.into(),
        input_format,
    );
    converted.template = (!spec.template.is_empty()).then_some(spec.template);
    if spec.max_length > 0 {
        converted.max_length = spec.max_length as usize;
    }
    converted.output = (!spec.output_name.is_empty()).then_some(spec.output_name);
    converted.output_index = spec.output_index as usize;
    if spec.queue_capacity > 0 {
        converted.queue_capacity = spec.queue_capacity as usize;
    }
    converted.provider = match spec.provider.as_str() {
        "" | "cpu" => Provider::Cpu,
        "cuda" => Provider::Cuda,
        "tensorrt" => Provider::Tensorrt,
        other => {
            return Err(invalid(
                "spec.provider",
                format!("{other:?} is not one of \"cpu\", \"cuda\", \"tensorrt\""),
            ));
        }
    };
    converted.device_id = spec.device_id;
    converted.fallback_to_cpu = spec.fallback_to_cpu;
    converted.intra_threads = spec.intra_threads as usize;
    if spec.workers > 0 {
        converted.workers = spec.workers as usize;
    }
    let spec = converted;
    spec.validate()
        .map_err(|e| invalid("spec", e.to_string()))?;
    Ok(spec)
}

/// Response indices ordered best (highest score) first; NaN scores last; ties keep
/// request order.
pub fn ranking(scores: &[f32]) -> Vec<u32> {
    let key = |i: u32| {
        let score = scores[i as usize];
        if score.is_nan() {
            f32::NEG_INFINITY
        } else {
            score
        }
    };
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(context: Vec<f32>, responses: &[&str]) -> pb::Query {
        pb::Query {
            id: "q".into(),
            context,
            prompt: "p".into(),
            responses: responses.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn score(queries: Vec<pb::Query>) -> Result<ScoreCall, RequestError> {
        ScoreCall::from_request(
            pb::ScoreRequest {
                router: "r".into(),
                queries,
                mode: 0,
                explain: false,
            },
            &Limits::default(),
        )
    }

    #[test]
    fn bad_queries_name_the_field() {
        let nan = score(vec![query(vec![0.0, f32::NAN], &["a"])]).unwrap_err();
        assert!(
            nan.to_string().starts_with("queries[0].context[1]: is NaN"),
            "{nan}"
        );
        let empty = score(vec![query(vec![1.0], &["a"]), query(vec![1.0], &[])]).unwrap_err();
        assert!(
            empty.to_string().starts_with("queries[1].responses"),
            "{empty}"
        );
        let none = score(vec![]).unwrap_err();
        assert!(none.to_string().starts_with("queries"), "{none}");
        let long = "x".repeat(Limits::default().max_text_bytes + 1);
        let over = score(vec![query(vec![1.0], &[long.as_str()])]).unwrap_err();
        assert!(matches!(
            over,
            RequestError::OverLimit {
                limit: "limits.max_text_bytes",
                ..
            }
        ));
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let err = ScoreCall::from_request(
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
        };
        let limits = Limits::default();
        assert!(FeedbackCall::from_request(request(None), &limits).is_err());
        let nan = Some(pb::feedback_request::Signal::Loss(f64::NAN));
        assert!(
            FeedbackCall::from_request(request(nan), &limits)
                .unwrap_err()
                .to_string()
                .starts_with("loss")
        );
        let ok = Some(pb::feedback_request::Signal::Loss(0.5));
        assert_eq!(
            FeedbackCall::from_request(request(ok), &limits)
                .unwrap()
                .signal,
            FeedbackSignal::Loss(0.5)
        );
    }

    #[test]
    fn create_router_settings_fill_defaults_and_round_trip() {
        let defaults = RouterDefaults::default();
        let settings = router_settings(
            Some(pb::RouterSettings {
                context_dim: 32,
                policy: pb::Policy::Exp3 as i32,
                quantile_high: Some(90.0),
                reward_window: 500,
                reward_models: vec!["a".into(), "b".into()],
                ..Default::default()
            }),
            &defaults,
        )
        .unwrap();
        assert_eq!(settings.context_dim, 32);
        assert_eq!(settings.policy, Policy::Exp3 { gamma: 0.1 });
        assert_eq!(
            settings.normalization,
            Normalization::Quantile {
                low: 20.0,
                high: 90.0,
                window: Some(500)
            }
        );
        assert_eq!(settings.alpha, 0.1);
        assert_eq!(settings.pending_ttl, Duration::from_secs(3600));
        let again = router_settings(Some(router_settings_to_pb(&settings)), &defaults).unwrap();
        assert_eq!(again, settings);
        let bad = router_settings(
            Some(pb::RouterSettings {
                policy: 99,
                ..Default::default()
            }),
            &defaults,
        );
        assert!(bad.unwrap_err().to_string().starts_with("settings.policy"));
    }

    mod fuzz {
        use super::*;
        use proptest::collection::vec;
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
                        .map(|(context, prompt, responses)| pb::Query { id: String::new(), context, prompt, responses })
                        .collect(),
                    mode,
                    explain: false,
                };
                if let Ok(call) = ScoreCall::from_request(request, &limits) {
                    prop_assert!(!call.router.is_empty());
                    prop_assert!((1..=limits.max_queries_per_score).contains(&call.queries.len()));
                    for query in &call.queries {
                        prop_assert!(!query.context.is_empty() && query.context.len() <= limits.max_context_dim);
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
            ) {
                let limits = small_limits();
                let request = pb::FeedbackRequest { router, decision_ids: ids, signal };
                if let Ok(call) = FeedbackCall::from_request(request, &limits) {
                    prop_assert!((1..=limits.max_decision_ids_per_feedback).contains(&call.decision_ids.len()));
                    prop_assert!(call.decision_ids.iter().all(|id| !id.is_empty()));
                    let value = match call.signal { FeedbackSignal::Loss(v) | FeedbackSignal::Reward(v) => v };
                    prop_assert!(value.is_finite());
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
                let defaults = RouterDefaults::default();
                let settings = pb::RouterSettings {
                    context_dim, policy, alpha, l2_lambda, normalization, quantile_low, reward_window,
                    projection_dim, exp3_gamma, ..Default::default()
                };
                match router_settings(Some(settings), &defaults) {
                    Ok(settings) => {
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

    #[test]
    fn ranking_is_best_first_with_nan_last() {
        assert_eq!(ranking(&[0.1, f32::NAN, 0.9, 0.5]), vec![2, 3, 0, 1]);
        assert_eq!(ranking(&[1.0, 1.0]), vec![0, 1]);
    }
}
