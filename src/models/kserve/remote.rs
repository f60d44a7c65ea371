//! One remote reward model: its queue of score jobs, the batcher that coalesces them into
//! ModelInfer requests, and its health.
//!
//! Batching: the batcher takes a slot of `max_concurrency`, then the first queued job and
//! whatever else queued meanwhile (so jobs that arrive while every slot is busy share the
//! next request), and runs them as one request per `max_batch` sequences. Jobs whose
//! deadline passed, or whose client left, are dropped unscored; a request's timeout is the
//! spec's `timeout_ms` or the latest client deadline of its jobs, whichever comes first.
//!
//! Health: available = the layout is known (metadata read, a probe inference answered) and
//! some endpoint is ready and the model is not failing. A call that cannot reach an endpoint
//! takes it out at once; `failures_before_unavailable` failed inferences in a row (not
//! counting cuts by client deadlines) mark the model failing. The prober asks `ModelReady`
//! of every endpoint each `health_interval_ms`: ready endpoints come back, a failing model
//! gets another chance, and a model that was down at startup learns its layout.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::Instrument;

use super::engine::{CallError, Engine};
use super::tensors::{Layout, layout, read_output, texts_request, tokens_request};
use crate::models::chat::ChatTemplate;
use crate::models::kserve::spec::{KserveV2Spec, RemoteInput};
use crate::models::tokenize::{TextEncoder, load_tokenizer, model_text};
use crate::models::worker::{ScoreJob, live_jobs};
use crate::models::{InputFormat, ModelError, RewardModelSpec};
use crate::telemetry::metric;

/// How texts become the request's inputs.
enum Input {
    /// Rendered texts (template, chat template or the response alone).
    Texts { chat: Option<Box<ChatTemplate>> },
    /// Tokenized here.
    Tokens { encoder: Box<TextEncoder> },
}

/// Every query's inputs (one per response) as ((query, response), input); a query whose inputs
/// cannot be built gets its error in `errors` instead.
fn sequences<T>(
    queries: &[(String, Vec<String>)],
    errors: &mut [Option<ModelError>],
    build: impl Fn(&str, &[String]) -> Result<Vec<T>, ModelError>,
) -> Vec<((usize, usize), T)> {
    let mut sequences = Vec::new();
    for (query, (prompt, responses)) in queries.iter().enumerate() {
        match build(prompt, responses) {
            Ok(inputs) => sequences.extend(
                inputs
                    .into_iter()
                    .enumerate()
                    .map(|(response, input)| ((query, response), input)),
            ),
            Err(error) => errors[query] = Some(error),
        }
    }
    sequences
}

/// `sequences` in requests of at most `max_batch`, each with its (query, response) pairs.
fn cut<T>(
    sequences: &[((usize, usize), T)],
    max_batch: usize,
    request: impl Fn(Vec<&T>) -> super::proto::ModelInferRequest,
) -> Vec<(Vec<(usize, usize)>, super::proto::ModelInferRequest)> {
    sequences
        .chunks(max_batch)
        .map(|chunk| {
            (
                chunk.iter().map(|(at, _)| *at).collect(),
                request(chunk.iter().map(|(_, input)| input).collect()),
            )
        })
        .collect()
}

/// The requests of a batch: per query, the error that kept it out (if any); per request, its
/// sequences as (query, response) and the request.
struct Built {
    errors: Vec<Option<ModelError>>,
    requests: Vec<(Vec<(usize, usize)>, super::proto::ModelInferRequest)>,
}

/// What the layout and the probe found.
struct Probed {
    layout: Layout,
    /// Output values per sequence.
    width: usize,
}

struct Shared {
    spec: RewardModelSpec,
    remote: KserveV2Spec,
    engine: Engine,
    input: Input,
    probed: RwLock<Option<Arc<Probed>>>,
    /// Consecutive failed inferences.
    failures: AtomicU32,
    failing: AtomicBool,
    available: AtomicBool,
    /// Why the model is unavailable (the engine's reason), or empty.
    reason: Mutex<String>,
    queue_depth: AtomicUsize,
}

/// A reward model on an inference engine. Dropping it stops its prober at once and its
/// batcher once queued jobs are answered.
pub struct RemoteModel {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<ScoreJob>,
    prober: tokio::task::AbortHandle,
}

impl Drop for RemoteModel {
    fn drop(&mut self) {
        self.prober.abort();
    }
}

impl RemoteModel {
    /// Connect and probe. `strict` (AddRewardModel): a model the engine does not serve, or
    /// serves with a layout the spec cannot use, is refused with the engine's reason. Not
    /// strict (startup): a model whose engine is down starts unavailable and is probed again
    /// every `health_interval_ms`; one whose layout does not fit still fails.
    pub async fn start(spec: RewardModelSpec, strict: bool) -> Result<Self, ModelError> {
        let name = spec.name.clone();
        let remote = spec
            .remote()
            .cloned()
            .ok_or_else(|| ModelError::InvalidSpec {
                name: name.clone(),
                reason: "not a kserve_v2 model".into(),
            })?;
        let input = {
            let (spec, send) = (spec.clone(), remote.send);
            crate::models::worker::off_runtime(name.clone(), move || load_input(&spec, send))
                .await?
        };
        let engine = Engine::connect(&remote).map_err(|reason| ModelError::InvalidSpec {
            name: name.clone(),
            reason,
        })?;
        let shared = Arc::new(Shared {
            spec,
            remote,
            engine,
            input,
            probed: RwLock::new(None),
            failures: AtomicU32::new(0),
            failing: AtomicBool::new(false),
            available: AtomicBool::new(false),
            reason: Mutex::new("not probed yet".into()),
            queue_depth: AtomicUsize::new(0),
        });
        match shared.probe().await {
            Ok(()) => {}
            Err(error @ ModelError::InvalidSpec { .. }) => return Err(error),
            Err(error) if strict => return Err(error),
            Err(error) => {
                tracing::warn!(reward_model = %name, %error, "remote reward model starts unavailable; probing again")
            }
        }
        let (jobs, queue) = mpsc::channel(shared.spec.queue_capacity);
        tokio::spawn(batch_loop(shared.clone(), queue));
        let prober = tokio::spawn(probe_loop(shared.clone())).abort_handle();
        tracing::info!(reward_model = %name, endpoints = ?shared.engine.urls(), model = %shared.remote.model_name, send = shared.remote.send.as_str(), available = shared.available.load(Ordering::Relaxed), "remote reward model started");
        Ok(Self {
            shared,
            jobs,
            prober,
        })
    }

    pub fn is_available(&self) -> bool {
        self.shared.available.load(Ordering::Relaxed)
    }

    /// Why the model is unavailable (empty while available).
    pub fn unavailable_reason(&self) -> String {
        if self.is_available() {
            String::new()
        } else {
            self.shared
                .reason
                .lock()
                .expect("reason lock poisoned")
                .clone()
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.shared.engine.urls()
    }

    /// Output values per sequence (0 until the first successful probe).
    pub fn width(&self) -> usize {
        self.shared.probed().map_or(0, |p| p.width)
    }

    /// The inputs sent and the output read (empty until the first successful probe).
    pub fn tensor_names(&self) -> (Vec<String>, String) {
        match self.shared.probed() {
            Some(probed) => (
                probed
                    .layout
                    .inputs
                    .iter()
                    .map(|i| i.name().to_string())
                    .collect(),
                probed.layout.output.clone(),
            ),
            None => (
                Vec::new(),
                self.shared.spec.output.clone().unwrap_or_default(),
            ),
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.shared.queue_depth.load(Ordering::Relaxed)
    }

    /// Score every (prompt, response): `width` output values per response, in order.
    pub async fn submit(
        &self,
        prompt: String,
        responses: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<f32>, ModelError> {
        let name = self.shared.spec.name.clone();
        if !self.is_available() {
            return Err(ModelError::Unavailable {
                name,
                reason: self.unavailable_reason(),
            });
        }
        let (reply, answer) = oneshot::channel();
        let job = ScoreJob {
            prompt,
            responses,
            deadline,
            reply,
            span: tracing::Span::current(),
            enqueued: Instant::now(),
        };
        self.shared.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.jobs.try_send(job) {
            self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(match error {
                mpsc::error::TrySendError::Full(_) => ModelError::QueueFull {
                    name,
                    capacity: self.shared.spec.queue_capacity,
                },
                mpsc::error::TrySendError::Closed(_) => ModelError::WorkerStopped { name },
            });
        }
        metrics::gauge!(metric::RM_QUEUE_DEPTH, "reward_model" => name.clone())
            .set(self.queue_depth() as f64);
        answer
            .instrument(tracing::debug_span!("await_engine"))
            .await
            .unwrap_or(Err(ModelError::WorkerStopped { name }))
    }
}

/// The tokenizer (send = "tokens") or the chat template (send = "texts", chat input). Blocking.
fn load_input(spec: &RewardModelSpec, send: RemoteInput) -> Result<Input, ModelError> {
    let chat = match spec.input_format {
        InputFormat::Chat => Some(ChatTemplate::load(
            &spec.tokenizer_config_path(),
            &spec.name,
        )?),
        _ => None,
    };
    Ok(match send {
        RemoteInput::Texts => Input::Texts {
            chat: chat.map(Box::new),
        },
        RemoteInput::Tokens => {
            if let Err(e) = std::fs::metadata(&spec.tokenizer) {
                return Err(ModelError::MissingFile {
                    name: spec.name.clone(),
                    path: spec.tokenizer.display().to_string(),
                    reason: e.to_string(),
                });
            }
            Input::Tokens {
                encoder: Box::new(TextEncoder::new(spec.clone(), load_tokenizer(spec)?, chat)),
            }
        }
    })
}

impl Shared {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn probed(&self) -> Option<Arc<Probed>> {
        self.probed.read().expect("probe lock poisoned").clone()
    }

    /// Ask every endpoint whether the model is ready; learn the layout on the first ready
    /// one if it is not known yet. Ok when the model is available afterwards.
    async fn probe(&self) -> Result<(), ModelError> {
        let mut reasons = Vec::new();
        for endpoint in 0..self.engine.len() {
            match self.engine.ready(endpoint).await {
                Ok(true) => self.engine.set_ready(endpoint, true),
                Ok(false) => {
                    self.engine.set_ready(endpoint, false);
                    reasons.push(format!(
                        "{}: model {:?} is not ready",
                        self.engine.url(endpoint),
                        self.remote.model_name
                    ));
                }
                Err(error) => {
                    self.engine.set_ready(endpoint, false);
                    reasons.push(error.to_string());
                }
            }
        }
        if !self.engine.any_ready() {
            let reason = reasons.join("; ");
            self.set_available(false, &reason);
            return Err(ModelError::EngineRefused {
                name: self.name().to_string(),
                reason,
            });
        }
        if self.probed().is_none() {
            let probed = self.learn_layout().await.inspect_err(|error| {
                self.set_available(false, &error.to_string());
            })?;
            *self.probed.write().expect("probe lock poisoned") = Some(Arc::new(probed));
        }
        if self.failing.swap(false, Ordering::Relaxed) {
            self.failures.store(0, Ordering::Relaxed);
            tracing::info!(reward_model = %self.name(), "engine reports the model ready: trying it again");
        }
        self.set_available(true, "");
        Ok(())
    }

    /// Metadata from a ready endpoint, checked against the spec, then one probe inference.
    async fn learn_layout(&self) -> Result<Probed, ModelError> {
        let name = self.name().to_string();
        // Ready a moment ago; a failed call may have taken it out since.
        let endpoint = self
            .engine
            .pick()
            .ok_or_else(|| ModelError::EngineRefused {
                name: name.clone(),
                reason: "no endpoint is ready".into(),
            })?;
        let refused = |error: CallError| ModelError::EngineRefused {
            name: name.clone(),
            reason: error.to_string(),
        };
        let metadata = self.engine.metadata(endpoint).await.map_err(refused)?;
        let layout = layout(&self.spec, &self.remote, &metadata).map_err(|reason| {
            ModelError::InvalidSpec {
                name: name.clone(),
                reason: format!("{}: {reason}", self.engine.url(endpoint)),
            }
        })?;
        let mut built = self.requests(&layout, &[("probe".into(), vec!["probe".into()])]);
        if let Some(error) = built.errors.pop().flatten() {
            return Err(error);
        }
        let (_, request) = built.requests.pop().expect("one request for the probe");
        let response = self
            .engine
            .infer(endpoint, request, self.engine.timeout)
            .await
            .map_err(|error| ModelError::EngineRefused {
                name: name.clone(),
                reason: format!("probe inference failed: {error}"),
            })?;
        let (_, width) = read_output(&response, &layout.output, 1).map_err(|reason| {
            ModelError::EngineRefused {
                name: name.clone(),
                reason: format!("probe inference: {reason}"),
            }
        })?;
        Ok(Probed { layout, width })
    }

    /// The requests for `queries` (prompt, responses): each request's sequences as (query,
    /// response), at most `max_batch` per request; tokenized sequences sorted by length
    /// first, so similar lengths share a request and padding stays low. A query whose text
    /// cannot be built gets its error instead. Blocking (rendering, tokenization).
    fn requests(&self, layout: &Layout, queries: &[(String, Vec<String>)]) -> Built {
        let mut errors: Vec<Option<ModelError>> = vec![None; queries.len()];
        let max_batch = layout.max_batch.max(1);
        let requests = match &self.input {
            Input::Texts { chat } => {
                let sequences = sequences(queries, &mut errors, |prompt, responses| {
                    responses
                        .iter()
                        .map(|response| model_text(&self.spec, chat.as_deref(), prompt, response))
                        .collect()
                });
                cut(&sequences, max_batch, |texts| {
                    texts_request(layout, texts.into_iter().cloned().collect())
                })
            }
            Input::Tokens { encoder } => {
                let mut sequences = sequences(queries, &mut errors, |prompt, responses| {
                    encoder.encode(prompt, responses)
                });
                sequences.sort_by_key(|(_, encoding)| encoding.len());
                cut(&sequences, max_batch, |encodings| {
                    tokens_request(layout, &encodings, encoder.pad_id())
                })
            }
        };
        Built { errors, requests }
    }

    fn set_available(&self, available: bool, reason: &str) {
        *self.reason.lock().expect("reason lock poisoned") = reason.to_string();
        let was = self.available.swap(available, Ordering::Relaxed);
        if was != available {
            if available {
                tracing::info!(reward_model = %self.name(), "remote reward model available");
            } else {
                tracing::warn!(reward_model = %self.name(), %reason, "remote reward model unavailable: routers skip it");
            }
        }
        metrics::gauge!(metric::RM_AVAILABLE, "reward_model" => self.name().to_string())
            .set(if available { 1.0 } else { 0.0 });
    }

    /// Book a failed call on `endpoint`; `client_cut`: the local timer was a client's deadline.
    fn failed(&self, endpoint: usize, error: &CallError, client_cut: bool) {
        if error.unreachable {
            self.engine.set_ready(endpoint, false);
            if !self.engine.any_ready() {
                self.set_available(false, &error.to_string());
            }
            return;
        }
        if client_cut {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.remote.failures_before_unavailable {
            self.failing.store(true, Ordering::Relaxed);
            self.set_available(
                false,
                &format!("{failures} inferences failed in a row; last: {error}"),
            );
        }
    }
}

/// Probe every `health_interval_ms` until the model is dropped (the task is aborted then).
async fn probe_loop(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.remote.health_interval_ms);
    loop {
        tokio::time::sleep(interval).await;
        if let Err(error) = shared.probe().await {
            tracing::debug!(reward_model = %shared.name(), %error, "probe: not available");
        }
    }
}

/// Take a slot, then the queued jobs, and run them; ends when the model is dropped.
async fn batch_loop(shared: Arc<Shared>, mut queue: mpsc::Receiver<ScoreJob>) {
    let slots = Arc::new(Semaphore::new(shared.remote.max_concurrency));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let Some(first) = queue.recv().await else {
            break;
        };
        let max_batch = shared
            .probed()
            .map_or(shared.spec.max_batch_sequences, |p| p.layout.max_batch);
        let mut sequences = first.responses.len();
        let mut jobs = vec![first];
        while sequences < max_batch {
            match queue.try_recv() {
                Ok(job) => {
                    sequences += job.responses.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let remaining = shared
            .queue_depth
            .fetch_sub(jobs.len(), Ordering::Relaxed)
            .saturating_sub(jobs.len());
        metrics::gauge!(metric::RM_QUEUE_DEPTH, "reward_model" => shared.name().to_string())
            .set(remaining as f64);
        tokio::spawn(run_batch(shared.clone(), jobs, slot));
    }
    tracing::info!(reward_model = %shared.name(), "remote reward model stopped");
}

/// Score `jobs` in requests of at most `max_batch` sequences and answer each job.
async fn run_batch(shared: Arc<Shared>, jobs: Vec<ScoreJob>, _slot: OwnedSemaphorePermit) {
    let name = shared.name().to_string();
    let live = live_jobs(&name, jobs);
    if live.is_empty() {
        return;
    }
    let outcomes = score_jobs(&shared, &live).await;
    for (job, outcome) in live.into_iter().zip(outcomes) {
        let status = if outcome.is_ok() { "ok" } else { "error" };
        if let Err(error) = &outcome {
            job.span
                .in_scope(|| tracing::warn!(%error, "remote scoring failed"));
        }
        metrics::counter!(metric::RM_REQUESTS, "reward_model" => name.clone(), "status" => status)
            .increment(1);
        let _ = job.reply.send(outcome);
    }
}

/// Every job's output rows, or its error.
async fn score_jobs(shared: &Arc<Shared>, jobs: &[ScoreJob]) -> Vec<Result<Vec<f32>, ModelError>> {
    let name = shared.name().to_string();
    let unavailable = |reason: String| ModelError::Unavailable {
        name: name.clone(),
        reason,
    };
    let Some(probed) = shared
        .probed()
        .filter(|_| shared.available.load(Ordering::Relaxed))
    else {
        let reason = shared.reason.lock().expect("reason lock poisoned").clone();
        return jobs
            .iter()
            .map(|_| Err(unavailable(reason.clone())))
            .collect();
    };
    // Rendering and tokenizing off the async runtime.
    let queries: Vec<(String, Vec<String>)> = jobs
        .iter()
        .map(|job| (job.prompt.clone(), job.responses.clone()))
        .collect();
    let started = Instant::now();
    let built = {
        let (shared, probed) = (shared.clone(), probed.clone());
        tokio::task::spawn_blocking(move || shared.requests(&probed.layout, &queries)).await
    };
    metrics::histogram!(metric::RM_TOKENIZE_SECONDS, "reward_model" => name.clone())
        .record(started.elapsed().as_secs_f64());
    let built = match built {
        Ok(built) => built,
        Err(error) => {
            let reason = format!("preparing the request failed: {error}");
            return jobs
                .iter()
                .map(|_| Err(unavailable(reason.clone())))
                .collect();
        }
    };
    let width = probed.width;
    let mut outcomes: Vec<Result<Vec<f32>, ModelError>> = jobs
        .iter()
        .zip(built.errors)
        .map(|(job, error)| match error {
            Some(error) => Err(error),
            None => Ok(vec![f32::NAN; job.responses.len() * width]),
        })
        .collect();
    // The request's timeout: the spec's, or the latest client deadline if sooner.
    // (A job without a deadline keeps the spec's.)
    let latest_deadline = jobs
        .iter()
        .map(|j| j.deadline)
        .collect::<Option<Vec<Instant>>>()
        .and_then(|deadlines| deadlines.into_iter().max());
    for (sequences, request) in built.requests {
        let mut timeout = shared.engine.timeout;
        let mut client_cut = false;
        if let Some(deadline) = latest_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < timeout {
                (timeout, client_cut) = (left.max(Duration::from_millis(1)), true);
            }
        }
        let rows = infer_on_any(shared, request, timeout, client_cut, sequences.len())
            .await
            .and_then(|(endpoint, values, got)| {
                if got == width {
                    return Ok(values);
                }
                Err((
                    format!(
                        "{}: output {:?} now has {got} values per sequence, not {width}",
                        shared.engine.url(endpoint),
                        probed.layout.output
                    ),
                    false,
                ))
            })
            .map_err(|(reason, deadline)| match deadline {
                true => ModelError::DeadlineExceeded { name: name.clone() },
                false => unavailable(reason),
            });
        match rows {
            Ok(values) => {
                for (&(job, r), row) in sequences.iter().zip(values.chunks(width)) {
                    if let Ok(job_values) = &mut outcomes[job] {
                        job_values[r * width..(r + 1) * width].copy_from_slice(row);
                    }
                }
            }
            Err(error) => {
                for &(job, _) in &sequences {
                    if outcomes[job].is_ok() {
                        outcomes[job] = Err(error.clone());
                    }
                }
            }
        }
    }
    outcomes
}

/// One request on a ready endpoint; an endpoint that cannot be reached is taken out and the
/// request goes to the next ready one (scoring is idempotent). Ok: (endpoint, values, width).
/// Err: (reason, whether a client's deadline cut it).
async fn infer_on_any(
    shared: &Arc<Shared>,
    request: super::proto::ModelInferRequest,
    timeout: Duration,
    client_cut: bool,
    rows: usize,
) -> Result<(usize, Vec<f32>, usize), (String, bool)> {
    let name = shared.name().to_string();
    let mut last_error = None;
    for _ in 0..shared.engine.len() {
        let Some(endpoint) = shared.engine.pick() else {
            break;
        };
        let started = Instant::now();
        let result = shared
            .engine
            .infer(endpoint, request.clone(), timeout)
            .await;
        metrics::histogram!(metric::RM_INFERENCE_SECONDS, "reward_model" => name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::RM_BATCH_SIZE, "reward_model" => name.clone())
            .record(rows as f64);
        match result {
            Ok(response) => {
                let probed = shared.probed().expect("probed before serving");
                let (values, width) =
                    read_output(&response, &probed.layout.output, rows).map_err(|reason| {
                        (format!("{}: {reason}", shared.engine.url(endpoint)), false)
                    })?;
                shared.failures.store(0, Ordering::Relaxed);
                return Ok((endpoint, values, width));
            }
            Err(error) => {
                let cut = client_cut && error.timed_out;
                shared.failed(endpoint, &error, cut);
                if cut {
                    return Err((error.to_string(), true));
                }
                if !error.unreachable {
                    return Err((format!("engine error at {error}"), false));
                }
                last_error = Some(error);
            }
        }
    }
    let reason = match last_error {
        Some(error) => format!("engine unreachable: {error}"),
        None => format!(
            "no endpoint is ready: {}",
            shared.reason.lock().expect("reason lock poisoned")
        ),
    };
    Err((reason, false))
}
