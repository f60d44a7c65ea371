//! Tracing setup and every metric name in one place.
//!
//! Logs go to stderr, as text or JSON (`server.log_format`); the level comes from
//! `LASER_LOG` (e.g. `info`, `laser_router=debug`), default `info`. Metrics are rendered in
//! Prometheus text format by the metrics endpoint (`/metrics` on `--metrics-listen`).
//! Labels come only from bounded sets: router and reward model names (bounded by the
//! server's routers and RMs), outcome and status words.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// `text` (default) or `json` logs on stderr (the config file's `server.log_format`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Metric names (prefix `laser_`).
pub mod metric {
    /// Counter {rpc}: requests forwarded to the replica owning their router.
    pub const REQUESTS_FORWARDED: &str = "laser_requests_forwarded_total";
    /// Counter {router, reward_model}: decisions that chose the arm.
    pub const SELECTIONS: &str = "laser_selections_total";
    /// Counter {router, category, reward_model}: decisions of a query category (at most
    /// 32 per router, then `_other`) that chose the arm.
    pub const CATEGORY_SELECTIONS: &str = "laser_category_selections_total";
    /// Counter {router, category, reward_model}: applied feedback of those decisions.
    pub const CATEGORY_FEEDBACK: &str = "laser_category_feedback_total";
    /// Gauge {router, category, reward_model}: sum of their normalized rewards (a gauge:
    /// a raw first reward may be negative); mean = delta(sum) / increase(feedback).
    pub const CATEGORY_REWARD_SUM: &str = "laser_category_reward_sum";
    /// Counter {router, outcome = applied | duplicate | unknown | arm_removed}: feedback
    /// per decision.
    pub const FEEDBACK: &str = "laser_feedback_total";
    /// Counter {router, reason = capacity | ttl}: decisions evicted before feedback.
    pub const DECISIONS_EVICTED: &str = "laser_decisions_evicted_total";
    /// Histogram {router, reward_model}: normalized reward applied to the arm.
    pub const REWARD: &str = "laser_reward_normalized";
    /// Gauge {router, reward_model}: the arm's running mean normalized reward.
    pub const ARM_MEAN_REWARD: &str = "laser_arm_mean_reward";
    /// Histogram {router}: seconds from a decision to its feedback.
    pub const FEEDBACK_LAG_SECONDS: &str = "laser_feedback_lag_seconds";
    /// Gauge {router}: decisions awaiting feedback.
    pub const PENDING_DECISIONS: &str = "laser_pending_decisions";
    /// Counter {reward_model, status = ok | error}: score jobs (one per query).
    pub const RM_REQUESTS: &str = "laser_rm_requests_total";
    /// Histogram {reward_model}: time a job waited in the RM's queue.
    pub const RM_QUEUE_SECONDS: &str = "laser_rm_queue_seconds";
    /// Histogram {reward_model}: tokenization time per job.
    pub const RM_TOKENIZE_SECONDS: &str = "laser_rm_tokenize_seconds";
    /// Histogram {reward_model}: ONNX Runtime time per job.
    pub const RM_INFERENCE_SECONDS: &str = "laser_rm_inference_seconds";
    /// Histogram {reward_model}: sequences per inference.
    pub const RM_BATCH_SIZE: &str = "laser_rm_batch_size";
    /// Histogram {reward_model}: tokens per inference including padding (batch × longest).
    pub const RM_PADDED_TOKENS: &str = "laser_rm_padded_tokens";
    /// Histogram {reward_model}: real tokens per inference (padding ratio = padded / real).
    pub const RM_TOKENS: &str = "laser_rm_tokens";
    /// Gauge {reward_model}: jobs waiting for the RM's worker.
    pub const RM_QUEUE_DEPTH: &str = "laser_rm_queue_depth";
    /// Gauge {reward_model}: most jobs that may wait (a full queue refuses work).
    pub const RM_QUEUE_CAPACITY: &str = "laser_rm_queue_capacity";
    /// Gauge {reward_model, provider}: 1 while the RM is loaded.
    pub const RM_LOADED: &str = "laser_rm_loaded";
    /// Gauge {reward_model}: 1 while routers may select the RM, 0 while a remote RM is down.
    pub const RM_AVAILABLE: &str = "laser_rm_available";
    /// Counter {method, code}: gRPC requests answered by the API handlers.
    pub const GRPC_REQUESTS: &str = "laser_grpc_requests_total";
    /// Counter {field}: prompts and responses cut to `limits.kept_text_bytes`.
    pub const TEXTS_TRUNCATED: &str = "laser_texts_truncated_total";
    /// Counter {reward_model, part}: causal-LM inputs over `max_length` tokens: the prompt cut
    /// from the left (`prompt`), or, when the response alone does not fit, the response cut
    /// at its end (`response`).
    pub const CAUSAL_LM_TRUNCATED: &str = "laser_causal_lm_truncated_total";
    /// Counter: requests refused at once because the concurrency limit was reached.
    pub const REQUESTS_SHED: &str = "laser_requests_shed_total";
    /// Histogram {method}: handler latency.
    pub const GRPC_SECONDS: &str = "laser_grpc_request_seconds";
    /// Histogram {stage}: where a Score's time goes: prepare (the router's context source),
    /// embed (encoder routers), select, score (the RMs), record (logging + durability).
    pub const SCORE_STAGE_SECONDS: &str = "laser_score_stage_seconds";
}

/// Install the global tracing subscriber (stderr).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("LASER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Install the global Prometheus recorder and describe every metric.
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    const LATENCY_BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
    const TOKEN_BUCKETS: &[f64] = &[
        16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
    ];
    const REWARD_BUCKETS: &[f64] = &[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
    const LAG_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(metric::FEEDBACK_LAG_SECONDS.into()),
            LAG_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(metric::RM_BATCH_SIZE.into()), BATCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_tokens".into()), TOKEN_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(metric::REWARD.into()), REWARD_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        metric::SELECTIONS,
        "Decisions that chose the reward model (arm)."
    );
    describe_counter!(metric::FEEDBACK, "Feedback per decision, by outcome.");
    describe_counter!(
        metric::CATEGORY_SELECTIONS,
        "Decisions of a query category that chose the reward model."
    );
    describe_counter!(
        metric::CATEGORY_FEEDBACK,
        "Applied feedback of a query category's decisions, per reward model."
    );
    describe_gauge!(
        metric::CATEGORY_REWARD_SUM,
        "Sum of the normalized rewards of a query category's decisions, per reward model."
    );
    describe_gauge!(metric::PENDING_DECISIONS, "Decisions awaiting feedback.");
    describe_counter!(
        metric::DECISIONS_EVICTED,
        "Decisions evicted before their feedback arrived."
    );
    describe_counter!(
        metric::RM_REQUESTS,
        "Score jobs per reward model, by status."
    );
    describe_histogram!(
        metric::RM_QUEUE_SECONDS,
        Unit::Seconds,
        "Time a score job waited in the queue."
    );
    describe_histogram!(
        metric::RM_TOKENIZE_SECONDS,
        Unit::Seconds,
        "Tokenization time per score job."
    );
    describe_histogram!(
        metric::RM_INFERENCE_SECONDS,
        Unit::Seconds,
        "ONNX Runtime time per score job."
    );
    describe_histogram!(
        metric::RM_BATCH_SIZE,
        Unit::Count,
        "Sequences per inference."
    );
    describe_gauge!(
        metric::RM_QUEUE_DEPTH,
        "Score jobs waiting for the reward model."
    );
    describe_gauge!(metric::RM_LOADED, "1 while the reward model is loaded.");
    describe_gauge!(
        metric::RM_AVAILABLE,
        "1 while routers may select the reward model; 0 while a remote one is down."
    );
    describe_counter!(
        metric::GRPC_REQUESTS,
        "gRPC requests by method and status code."
    );
    describe_histogram!(metric::GRPC_SECONDS, Unit::Seconds, "gRPC handler latency.");
    describe_histogram!(
        metric::SCORE_STAGE_SECONDS,
        Unit::Seconds,
        "Score time by stage: prepare, embed, select, score, record."
    );
    describe_counter!(
        metric::TEXTS_TRUNCATED,
        "Prompts and responses cut to limits.kept_text_bytes, by field (prompt, response)."
    );
    describe_counter!(
        metric::CAUSAL_LM_TRUNCATED,
        "Causal-LM RM inputs over max_length tokens, by reward model and part cut (prompt from the left; response at its end when it alone does not fit)."
    );
    describe_counter!(
        metric::REQUESTS_SHED,
        "Requests refused at the concurrency limit."
    );
}

/// Standard process metrics (`process_*`, as Prometheus client libraries export them),
/// read from /proc on Linux at each scrape.
pub fn record_process_metrics() {
    #[cfg(target_os = "linux")]
    {
        let page_size = 4096.0;
        let ticks_per_second = 100.0;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which is in parentheses and may hold spaces).
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let field = |n: usize| fields.get(n).and_then(|v| v.parse::<f64>().ok());
            if let (Some(utime), Some(stime)) = (field(11), field(12)) {
                metrics::counter!("process_cpu_seconds_total")
                    .absolute(((utime + stime) / ticks_per_second) as u64);
            }
            if let Some(threads) = field(17) {
                metrics::gauge!("process_threads").set(threads);
            }
            if let Some(vsize) = field(20) {
                metrics::gauge!("process_virtual_memory_bytes").set(vsize);
            }
            if let Some(rss_pages) = field(21) {
                metrics::gauge!("process_resident_memory_bytes").set(rss_pages * page_size);
            }
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            metrics::gauge!("process_open_fds").set(entries.count() as f64);
        }
    }
}

/// Seconds since the Unix epoch at which the process started (set once at startup).
pub fn record_start_time() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!("process_start_time_seconds").set(now);
}

/// What the gauges of a freshly published RM show (telemetry knows metric names and labels,
/// not models: the caller reads these off its RM).
pub struct LoadedRewardModel<'a> {
    pub name: &'a str,
    pub provider: &'a str,
    pub queue_capacity: usize,
    pub available: bool,
}

/// Gauges of a freshly published RM.
pub fn record_reward_model_loaded(model: LoadedRewardModel<'_>) {
    let name = model.name.to_string();
    metrics::gauge!(metric::RM_LOADED, "reward_model" => name.clone(), "provider" => model.provider.to_string())
        .set(1.0);
    metrics::gauge!(metric::RM_QUEUE_CAPACITY, "reward_model" => name.clone())
        .set(model.queue_capacity as f64);
    metrics::gauge!(metric::RM_QUEUE_DEPTH, "reward_model" => name.clone()).set(0.0);
    metrics::gauge!(metric::RM_AVAILABLE, "reward_model" => name).set(if model.available {
        1.0
    } else {
        0.0
    });
}
