//! The Admin family: CreateRouter's settings (a [`RouterSettingsPatch`]: unset fields are
//! filled by the routers from the config's defaults), the effective settings back to `pb`,
//! AddRewardModel's spec, and the info messages of routers and reward models.

use std::collections::BTreeSet;

use super::{RequestError, invalid, known_enum, selection_mode};
use crate::api::pb;
use crate::models::spec::{ImplicitReward, JudgeRubric, Provider, ScoreRead};
use crate::models::{
    Backend, Encoder, EncoderSpec, InputFormat, KserveV2Spec, Pooling, RemoteInput, RewardModel,
    RewardModelSpec, VllmSpec,
};
use crate::routers::{
    FirstReward, NormalizationKind, Policy, PolicyKind, Preset, RouterInfo, RouterSettings,
    RouterSettingsPatch, SelectionMode,
};

/// CreateRouter's settings as a patch: a field left at its proto default is unset.
/// `reward_is_normalized` and `projection_dim` have no unset value in the proto and are
/// always set. Ranges are checked by `RouterSettings::validate`.
pub fn router_settings_patch(
    settings: Option<pb::RouterSettings>,
) -> Result<RouterSettingsPatch, RequestError> {
    let Some(settings) = settings else {
        return Ok(RouterSettingsPatch::default());
    };
    let policy = match known_enum(settings.policy, "settings.policy", "Policy")? {
        pb::Policy::Unspecified => None,
        pb::Policy::Linucb => Some(PolicyKind::Linucb),
        pb::Policy::Random => Some(PolicyKind::Random),
        pb::Policy::RoundRobin => Some(PolicyKind::RoundRobin),
        pb::Policy::Fixed => Some(PolicyKind::Fixed),
        pb::Policy::Ensemble => Some(PolicyKind::Ensemble),
        pb::Policy::Exp3 => Some(PolicyKind::Exp3),
        pb::Policy::AgreementEnsemble => Some(PolicyKind::AgreementEnsemble),
        pb::Policy::Thompson => Some(PolicyKind::Thompson),
        pb::Policy::Offline => Some(PolicyKind::Offline),
    };
    let normalization = match known_enum(
        settings.normalization,
        "settings.normalization",
        "Normalization",
    )? {
        pb::Normalization::Unspecified => None,
        pb::Normalization::None => Some(NormalizationKind::None),
        pb::Normalization::Quantile => Some(NormalizationKind::Quantile),
    };
    let default_mode = selection_mode(settings.default_mode, "settings.default_mode")?;
    let first_reward = match known_enum(
        settings.first_reward,
        "settings.first_reward",
        "FirstReward",
    )? {
        pb::FirstReward::Unspecified => None,
        pb::FirstReward::Raw => Some(FirstReward::Raw),
        pb::FirstReward::Neutral => Some(FirstReward::Neutral),
        pb::FirstReward::Wait => Some(FirstReward::Wait),
    };
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
    let preset = match settings.preset.as_str() {
        "" => None,
        name => Some(Preset::parse(name).ok_or_else(|| {
            invalid(
                "settings.preset",
                format!(
                    "unknown preset {name:?}; known: {}",
                    Preset::NAMES.join(", ")
                ),
            )
        })?),
    };
    let set = |value: u32| (value > 0).then_some(value as usize);
    Ok(RouterSettingsPatch {
        context_dim: set(settings.context_dim),
        policy,
        fixed_reward_model: (!settings.fixed_reward_model.is_empty())
            .then_some(settings.fixed_reward_model),
        exp3_gamma: settings.exp3_gamma,
        alpha: settings.alpha,
        l2_lambda: settings.l2_lambda,
        normalization,
        quantile_low: settings.quantile_low,
        quantile_high: settings.quantile_high,
        reward_window: set(settings.reward_window),
        first_reward,
        first_reward_wait: set(settings.first_reward_wait),
        reward_is_normalized: Some(settings.reward_is_normalized),
        default_mode,
        seed: settings.seed,
        reward_models: (!settings.reward_models.is_empty()).then(|| {
            settings
                .reward_models
                .into_iter()
                .collect::<BTreeSet<String>>()
        }),
        join_new_reward_models: settings.join_new_reward_models,
        l2_normalize_context: settings.l2_normalize_context,
        projection_dim: Some(settings.projection_dim as usize),
        max_pending_decisions: set(settings.max_pending_decisions),
        pending_ttl_seconds: (settings.pending_ttl_seconds > 0)
            .then_some(settings.pending_ttl_seconds as u64),
        encoder: (!settings.encoder.is_empty()).then_some(settings.encoder),
        reward_center: settings.reward_center,
        context_categories: (!settings.context_categories.is_empty())
            .then_some(settings.context_categories),
        preset,
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
        Policy::AgreementEnsemble => (pb::Policy::AgreementEnsemble, String::new(), None),
        Policy::LinTs => (pb::Policy::Thompson, String::new(), None),
        Policy::Offline => (pb::Policy::Offline, String::new(), None),
    };
    let (normalization, quantile_low, quantile_high, reward_window) =
        match settings.normalization.quantile() {
            None => (pb::Normalization::None, None, None, 0),
            Some((low, high, window)) => (
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
        l2_normalize_context: Some(settings.l2_normalize_context),
        projection_dim: settings.projection_dim as u32,
        max_pending_decisions: settings.max_pending_decisions as u32,
        pending_ttl_seconds: settings.pending_ttl.as_secs() as u32,
        encoder: settings.encoder.clone().unwrap_or_default(),
        preset: String::new(),
        first_reward: match settings.first_reward() {
            FirstReward::Raw => pb::FirstReward::Raw,
            FirstReward::Neutral => pb::FirstReward::Neutral,
            FirstReward::Wait => pb::FirstReward::Wait,
        } as i32,
        first_reward_wait: settings.first_reward_wait().unwrap_or(0) as u32,
        reward_center: Some(settings.reward_center),
        context_categories: settings.context_categories.clone(),
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
        "text" => InputFormat::Text,
        other => {
            return Err(invalid(
                "spec.input_format",
                format!("{other:?} is not one of \"pair\", \"template\", \"chat\", \"text\""),
            ));
        }
    };
    let backend = match (spec.kserve_v2, spec.vllm) {
        (None, None) => Backend::Onnx,
        (Some(remote), None) => Backend::KserveV2(Box::new(kserve_v2_spec(remote)?)),
        (None, Some(vllm)) => Backend::Vllm(Box::new(vllm_spec(vllm)?)),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "spec.vllm",
                "is set with spec.kserve_v2: a model has one backend",
            ));
        }
    };
    if backend == Backend::Onnx && spec.model_path.is_empty() {
        return Err(invalid("spec.model_path", "is empty"));
    }
    if backend == Backend::Onnx && spec.tokenizer_path.is_empty() {
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
    converted.provider = provider(&spec.provider)?;
    converted.device_id = spec.device_id;
    converted.fallback_to_cpu = spec.fallback_to_cpu;
    converted.intra_threads = spec.intra_threads as usize;
    if spec.workers > 0 {
        converted.workers = spec.workers as usize;
    }
    if spec.max_batch_sequences > 0 {
        converted.max_batch_sequences = spec.max_batch_sequences as usize;
    }
    if spec.max_batch_tokens > 0 {
        converted.max_batch_tokens = spec.max_batch_tokens as usize;
    }
    if spec.max_batch_delay_ms > 0 {
        converted.max_batch_delay_ms = spec.max_batch_delay_ms as u64;
    }
    converted.score = score_read(&spec.score, spec.implicit, spec.judge, &backend)?;
    converted.output_other_index = spec.output_other_index as usize;
    converted.backend = backend;
    let spec = converted;
    spec.validate()
        .map_err(|e| invalid("spec", e.to_string()))?;
    Ok(spec)
}

/// How an AddRewardModel spec's score is read (`implicit` only with score "implicit").
fn score_read(
    score: &str,
    implicit: Option<pb::ImplicitRewardSpec>,
    judge: Option<pb::JudgeRubricSpec>,
    backend: &Backend,
) -> Result<ScoreRead, RequestError> {
    if implicit.is_some() && score != "implicit" {
        return Err(invalid(
            "spec.implicit",
            format!("is set but score is {score:?}; it goes with score \"implicit\""),
        ));
    }
    if judge.is_some() && score != "judge" {
        return Err(invalid(
            "spec.judge",
            format!("is set but score is {score:?}; it goes with score \"judge\""),
        ));
    }
    let read = match score {
        "" | "index" => ScoreRead::Index,
        "difference" => ScoreRead::Difference,
        "softmax" => ScoreRead::Softmax,
        "log_likelihood" => ScoreRead::LogLikelihood,
        "mean_log_likelihood" => ScoreRead::MeanLogLikelihood,
        "implicit" => {
            let Some(implicit) = implicit else {
                return Err(invalid(
                    "spec.implicit",
                    "is missing: score \"implicit\" needs the reference model and beta",
                ));
            };
            if implicit.reference_model_path.is_empty() && *backend == Backend::Onnx {
                return Err(invalid("spec.implicit.reference_model_path", "is empty"));
            }
            ScoreRead::Implicit(ImplicitReward {
                reference_model: implicit.reference_model_path.into(),
                reference_tokenizer: (!implicit.reference_tokenizer_path.is_empty())
                    .then(|| implicit.reference_tokenizer_path.into()),
                beta: implicit.beta,
            })
        }
        "judge" => {
            let Some(judge) = judge else {
                return Err(invalid(
                    "spec.judge",
                    "is missing: score \"judge\" needs the template and the ratings",
                ));
            };
            ScoreRead::Judge(JudgeRubric {
                template: judge.template,
                ratings: judge.ratings,
            })
        }
        other => {
            return Err(invalid(
                "spec.score",
                format!(
                    "{other:?} is not one of \"index\", \"difference\", \"softmax\", \"log_likelihood\", \"mean_log_likelihood\", \"implicit\", \"judge\""
                ),
            ));
        }
    };
    Ok(read)
}

/// The kserve_v2 part of an AddRewardModel spec, defaults filled in (checked with the rest).
fn kserve_v2_spec(spec: pb::KserveV2Spec) -> Result<KserveV2Spec, RequestError> {
    let mut converted = KserveV2Spec::new(spec.endpoints, spec.model_name);
    converted.model_version = spec.model_version;
    converted.send = remote_input(&spec.send, "spec.kserve_v2.send")?;
    let set = |value: String| (!value.is_empty()).then_some(value);
    converted.text_input = set(spec.text_input);
    if spec.timeout_ms > 0 {
        converted.timeout_ms = spec.timeout_ms as u64;
    }
    if spec.max_concurrency > 0 {
        converted.max_concurrency = spec.max_concurrency as usize;
    }
    converted.tls_ca = set(spec.tls_ca_path).map(Into::into);
    converted.tls_domain = set(spec.tls_domain);
    converted.auth_header = set(spec.auth_header);
    converted.auth_value_env = set(spec.auth_value_env);
    if spec.health_interval_ms > 0 {
        converted.health_interval_ms = spec.health_interval_ms as u64;
    }
    if spec.failures_before_unavailable > 0 {
        converted.failures_before_unavailable = spec.failures_before_unavailable;
    }
    Ok(converted)
}

/// `send` of a remote backend's table (`field` names it in the error).
fn remote_input(send: &str, field: &str) -> Result<RemoteInput, RequestError> {
    match send {
        "" | "texts" => Ok(RemoteInput::Texts),
        "tokens" => Ok(RemoteInput::Tokens),
        other => Err(invalid(
            field,
            format!("{other:?} is not one of \"texts\", \"tokens\""),
        )),
    }
}

/// The vllm part of an AddRewardModel spec, defaults filled in (checked with the rest).
fn vllm_spec(spec: pb::VllmSpec) -> Result<VllmSpec, RequestError> {
    let mut converted = VllmSpec::new(spec.endpoints, spec.model_name);
    converted.reference_endpoints = spec.reference_endpoints;
    converted.reference_model_name = spec.reference_model_name;
    converted.send = remote_input(&spec.send, "spec.vllm.send")?;
    if spec.timeout_ms > 0 {
        converted.timeout_ms = spec.timeout_ms as u64;
    }
    if spec.max_concurrency > 0 {
        converted.max_concurrency = spec.max_concurrency as usize;
    }
    converted.tls_ca = (!spec.tls_ca_path.is_empty()).then(|| spec.tls_ca_path.into());
    converted.api_key_env = (!spec.api_key_env.is_empty()).then_some(spec.api_key_env);
    if spec.health_interval_ms > 0 {
        converted.health_interval_ms = spec.health_interval_ms as u64;
    }
    if spec.failures_before_unavailable > 0 {
        converted.failures_before_unavailable = spec.failures_before_unavailable;
    }
    Ok(converted)
}

/// A loaded reward model as ListRewardModels shows it.
pub fn reward_model_info(model: &RewardModel) -> pb::RewardModelInfo {
    let spec = model.spec();
    pb::RewardModelInfo {
        name: spec.name.clone(),
        model_path: spec.model.display().to_string(),
        tokenizer_path: spec.tokenizer.display().to_string(),
        input_format: spec.input_format.as_str().to_string(),
        max_length: spec.max_length as u32,
        output_name: model.output_name(),
        output_index: spec.output_index as u32,
        input_names: model.input_names(),
        provider: model.provider().to_string(),
        source: model.source().as_str().to_string(),
        queue_depth: model.queue_depth() as u32,
        queue_capacity: spec.queue_capacity as u32,
        template: spec.template.clone().unwrap_or_default(),
        backend: spec.backend.kind().to_string(),
        available: model.is_available(),
        unavailable_reason: model.unavailable_reason(),
        endpoints: model.endpoints(),
        remote_model_name: match &spec.backend {
            Backend::KserveV2(remote) => remote.model_name.clone(),
            Backend::Vllm(vllm) => vllm.model_name.clone(),
            Backend::Onnx => String::new(),
        },
    }
}

/// A router's settings and per-arm statistics as GetRouter shows them.
pub fn router_info(router: RouterInfo) -> pb::RouterInfo {
    pb::RouterInfo {
        name: router.name,
        settings: Some(router_settings_to_pb(&router.settings)),
        arms: router
            .arms
            .into_iter()
            .map(|arm| {
                let prior = router
                    .priors
                    .get(&arm.reward_model)
                    .cloned()
                    .unwrap_or_default();
                pb::ArmStatistics {
                    mean_reward: arm.mean_reward(),
                    prior_pairs: prior.pairs,
                    prior_weight: prior.weight,
                    prior_accuracy: prior.accuracy(),
                    reward_model: arm.reward_model,
                    selections: arm.selections,
                    feedback_count: arm.feedback_count,
                    last_selected_unix_ms: arm.last_selected_unix_ms,
                    theta_norm: arm.theta_norm,
                    mean_at_context_mean: arm.mean_at_context_mean,
                    bonus_at_context_mean: arm.bonus_at_context_mean,
                    probability: arm.probability,
                    removed: arm.removed,
                }
            })
            .collect(),
        pending_decisions: router.pending_decisions as u64,
        rewards_seen: router.rewards_seen,
        evicted_by_capacity: router.evictions.capacity,
        evicted_by_ttl: router.evictions.ttl,
        arm_state_bytes: router.arm_state_bytes as u64,
        categories: router
            .categories
            .into_iter()
            .map(|arm| pb::CategoryArm {
                category: arm.category,
                reward_model: arm.reward_model,
                selections: arm.selections,
                feedback_count: arm.feedback_count,
                mean_reward: arm.mean_reward,
            })
            .collect(),
    }
}

/// An encoder spec from AddEncoder, defaults filled in, checked by `EncoderSpec::validate`.
pub fn encoder_spec(spec: Option<pb::EncoderSpec>) -> Result<EncoderSpec, RequestError> {
    let Some(spec) = spec else {
        return Err(invalid("spec", "is missing"));
    };
    if spec.model_path.is_empty() {
        return Err(invalid("spec.model_path", "is empty"));
    }
    if spec.tokenizer_path.is_empty() {
        return Err(invalid("spec.tokenizer_path", "is empty"));
    }
    let mut converted = EncoderSpec::new(
        spec.name,
        spec.model_path.into(),
        spec.tokenizer_path.into(),
    );
    converted.output = (!spec.output_name.is_empty()).then_some(spec.output_name);
    converted.pooling = match spec.pooling.as_str() {
        "" | "mean" => Pooling::Mean,
        "none" => Pooling::None,
        other => {
            return Err(invalid(
                "spec.pooling",
                format!("{other:?} is not one of \"mean\", \"none\""),
            ));
        }
    };
    converted.normalize = spec.normalize.unwrap_or(true);
    if spec.max_length > 0 {
        converted.max_length = spec.max_length as usize;
    }
    converted.provider = provider(&spec.provider)?;
    converted.device_id = spec.device_id;
    converted.fallback_to_cpu = spec.fallback_to_cpu;
    converted
        .validate()
        .map_err(|e| invalid("spec", e.to_string()))?;
    Ok(converted)
}

/// An execution provider by name.
fn provider(name: &str) -> Result<Provider, RequestError> {
    match name {
        "" | "cpu" => Ok(Provider::Cpu),
        "cuda" => Ok(Provider::Cuda),
        "tensorrt" => Ok(Provider::Tensorrt),
        other => Err(invalid(
            "spec.provider",
            format!("{other:?} is not one of \"cpu\", \"cuda\", \"tensorrt\""),
        )),
    }
}

/// A loaded encoder as ListEncoders shows it.
pub fn encoder_info(encoder: &Encoder) -> pb::EncoderInfo {
    let spec = encoder.spec();
    pb::EncoderInfo {
        name: spec.name.clone(),
        model_path: spec.model.display().to_string(),
        tokenizer_path: spec.tokenizer.display().to_string(),
        output_name: encoder.output_name().to_string(),
        pooling: match spec.pooling {
            Pooling::Mean => "mean",
            Pooling::None => "none",
        }
        .to_string(),
        normalize: spec.normalize,
        dim: encoder.dim() as u32,
        max_length: spec.max_length as u32,
        provider: encoder.provider().to_string(),
        source: encoder.source().as_str().to_string(),
        queue_depth: encoder.queue_depth() as u32,
    }
}
