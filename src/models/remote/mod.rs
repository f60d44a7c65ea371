//! A reward model served by an engine, whatever its protocol: the queue of score jobs, the
//! batcher that coalesces them into requests, deadlines, and the model's health. What a
//! request is and how it travels is the [`Protocol`]'s: KServe v2 over gRPC
//! ([`super::kserve`]) or vLLM's HTTP API ([`super::vllm`]).
//!
//! Batching: the batcher takes a slot of `max_concurrency`, then the first queued job and
//! whatever else queued meanwhile (so jobs that arrive while every slot is busy share the
//! next request), and runs them as one request per `max_batch` sequences. Jobs whose
//! deadline passed, or whose client left, are dropped unscored; a request's timeout is the
//! spec's `timeout_ms` or the latest client deadline of its jobs, whichever comes first.
//!
//! Health: available = the layout is known (the protocol's checks passed, a probe inference
//! answered) and some endpoint is ready and the model is not failing. A call that cannot
//! reach an endpoint takes it out at once (the request goes to the next ready one: scoring
//! is idempotent); `failures_before_unavailable` failed inferences in a row (not counting
//! cuts by client deadlines) mark the model failing. The prober asks every endpoint each
//! `health_interval_ms`: ready endpoints come back, a failing model gets another chance, and
//! a model that was down at startup learns its layout.
//!
//! Cost per score job on the caller: one channel send. Building requests (rendering,
//! tokenizing) runs on a blocking thread per batch, never on the async runtime; the network
//! call is async.

pub(in crate::models) mod defaults;
mod endpoints;
pub(in crate::models) mod input;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::Instrument;

pub(in crate::models) use endpoints::{CallError, EndpointSet};

use crate::models::worker::{ScoreJob, live_jobs};
use crate::models::{ModelError, RewardModelSpec};
use crate::telemetry::metric;

/// A protocol's limits, from its spec table.
pub(in crate::models) struct Limits {
    /// Each request's (and probe's) limit.
    pub(in crate::models) timeout: Duration,
    pub(in crate::models) max_concurrency: usize,
    pub(in crate::models) health_interval: Duration,
    pub(in crate::models) failures_before_unavailable: u32,
}

/// The requests of a batch: per query, the error that kept it out (if any); per request, its
/// sequences as (query, response) and the request.
pub(in crate::models) struct Built<R> {
    pub(in crate::models) errors: Vec<Option<ModelError>>,
    pub(in crate::models) requests: Vec<(Vec<(usize, usize)>, R)>,
}

impl<R> Built<R> {
    /// Every query's inputs (one per response), built by `build`, cut into requests of at most
    /// `max_batch` by `request`; sorted by `order` first (similar lengths share a request).
    pub(in crate::models) fn new<T, K: Ord>(
        queries: &[(String, Vec<String>)],
        max_batch: usize,
        build: impl Fn(&str, &[String]) -> Result<Vec<T>, ModelError>,
        order: impl Fn(&T) -> K,
        request: impl Fn(Vec<&T>) -> R,
    ) -> Self {
        let mut errors: Vec<Option<ModelError>> = vec![None; queries.len()];
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
        sequences.sort_by_key(|(_, input)| order(input));
        let requests = sequences
            .chunks(max_batch.max(1))
            .map(|chunk| {
                (
                    chunk.iter().map(|(at, _)| *at).collect(),
                    request(chunk.iter().map(|(_, input)| input).collect()),
                )
            })
            .collect();
        Built { errors, requests }
    }
}

/// The answer to one request: `width` values per sequence, or why it could not be read
/// (not counted as a failed call).
pub(in crate::models) type Answer = Result<(Vec<f32>, usize), String>;

/// How requests reach one engine: its endpoints, what it checks at start, what a request is.
pub(in crate::models) trait Protocol: Send + Sync + 'static {
    /// The backend's name (`kserve_v2`, `vllm`).
    const KIND: &'static str;
    /// One request (cloned when it is sent again to another endpoint).
    type Request: Clone + Send + 'static;
    /// What the start checks learn of the served model.
    type Layout: Send + Sync + 'static;
    type Client: Send + Sync + 'static;

    fn limits(&self) -> Limits;
    fn endpoints(&self) -> &EndpointSet<Self::Client>;
    /// The served model's name (logs).
    fn model_name(&self) -> &str;
    /// Ask every endpoint (and whatever else the model needs) whether the model is ready;
    /// mark each endpoint. `Err`: why the model cannot serve now.
    fn probe(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// What `endpoint` serves, checked against the spec (`InvalidSpec` when the spec cannot
    /// use it, `EngineRefused` when the engine did not answer).
    fn learn_layout(
        &self,
        endpoint: usize,
    ) -> impl Future<Output = Result<Self::Layout, ModelError>> + Send;
    /// Sequences per request.
    fn max_batch(&self, layout: &Self::Layout) -> usize;
    /// The inputs sent and the output read, as GetRewardModel shows them.
    fn tensor_names(&self, layout: &Self::Layout) -> (Vec<String>, String);
    /// The requests for `queries` (prompt, responses). Blocking (rendering, tokenization).
    fn requests(
        &self,
        layout: &Self::Layout,
        queries: &[(String, Vec<String>)],
    ) -> Built<Self::Request>;
    /// One request on `endpoint` for `rows` sequences.
    fn infer(
        &self,
        endpoint: usize,
        layout: &Self::Layout,
        request: Self::Request,
        rows: usize,
        timeout: Duration,
    ) -> impl Future<Output = Result<Answer, CallError>> + Send;
}

/// What the layout and the probe found.
struct Probed<L> {
    layout: L,
    /// Output values per sequence.
    width: usize,
}

/// What GetRewardModel shows of the probed model.
struct Described {
    width: usize,
    inputs: Vec<String>,
    output: String,
}

/// The protocol-free state: health, queue depth, what the probe found.
struct Common {
    spec: RewardModelSpec,
    kind: &'static str,
    urls: Vec<String>,
    failures_before_unavailable: u32,
    /// Consecutive failed inferences.
    failures: AtomicU32,
    failing: AtomicBool,
    available: AtomicBool,
    /// Why the model is unavailable (the engine's reason), or empty.
    reason: Mutex<String>,
    queue_depth: AtomicUsize,
    described: RwLock<Option<Described>>,
}

struct Shared<P: Protocol> {
    common: Arc<Common>,
    protocol: P,
    probed: RwLock<Option<Arc<Probed<P::Layout>>>>,
}

/// A reward model on an engine. Dropping it stops its prober at once and its batcher once
/// queued jobs are answered.
pub struct RemoteModel {
    common: Arc<Common>,
    jobs: mpsc::Sender<ScoreJob>,
    prober: tokio::task::AbortHandle,
}

impl Drop for RemoteModel {
    fn drop(&mut self) {
        self.prober.abort();
    }
}

impl RemoteModel {
    /// Probe and start. `strict` (AddRewardModel): a model the engine does not serve, or
    /// serves with a layout the spec cannot use, is refused with the engine's reason. Not
    /// strict (startup): a model whose engine is down starts unavailable and is probed again
    /// every `health_interval_ms`; one whose layout does not fit still fails.
    pub(in crate::models) async fn start<P: Protocol>(
        spec: RewardModelSpec,
        protocol: P,
        strict: bool,
    ) -> Result<Self, ModelError> {
        let name = spec.name.clone();
        let limits = protocol.limits();
        let common = Arc::new(Common {
            kind: P::KIND,
            urls: protocol.endpoints().urls(),
            failures_before_unavailable: limits.failures_before_unavailable,
            failures: AtomicU32::new(0),
            failing: AtomicBool::new(false),
            available: AtomicBool::new(false),
            reason: Mutex::new("not probed yet".into()),
            queue_depth: AtomicUsize::new(0),
            described: RwLock::new(None),
            spec,
        });
        let shared = Arc::new(Shared {
            common: common.clone(),
            protocol,
            probed: RwLock::new(None),
        });
        match shared.probe().await {
            Ok(()) => {}
            Err(error @ ModelError::InvalidSpec { .. }) => return Err(error),
            Err(error) if strict => return Err(error),
            Err(error) => {
                tracing::warn!(reward_model = %name, %error, "remote reward model starts unavailable; probing again")
            }
        }
        let (jobs, queue) = mpsc::channel(common.spec.queue_capacity);
        tokio::spawn(batch_loop(shared.clone(), queue, limits.max_concurrency));
        let prober =
            tokio::spawn(probe_loop(shared.clone(), limits.health_interval)).abort_handle();
        tracing::info!(reward_model = %name, backend = P::KIND, endpoints = ?common.urls, model = %shared.protocol.model_name(), available = common.available.load(Ordering::Relaxed), "remote reward model started");
        Ok(Self {
            common,
            jobs,
            prober,
        })
    }

    pub fn is_available(&self) -> bool {
        self.common.available.load(Ordering::Relaxed)
    }

    /// Why the model is unavailable (empty while available).
    pub fn unavailable_reason(&self) -> String {
        if self.is_available() {
            String::new()
        } else {
            self.common.reason()
        }
    }

    /// The backend (`kserve_v2`, `vllm`).
    pub fn kind(&self) -> &'static str {
        self.common.kind
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.common.urls.clone()
    }

    /// Output values per sequence (0 until the first successful probe).
    pub fn width(&self) -> usize {
        self.common.described().as_ref().map_or(0, |d| d.width)
    }

    /// The inputs sent and the output read (empty until the first successful probe).
    pub fn tensor_names(&self) -> (Vec<String>, String) {
        match self.common.described().as_ref() {
            Some(described) => (described.inputs.clone(), described.output.clone()),
            None => (
                Vec::new(),
                self.common.spec.output.clone().unwrap_or_default(),
            ),
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.common.queue_depth.load(Ordering::Relaxed)
    }

    /// Score every (prompt, response): `width` output values per response, in order.
    pub async fn submit(
        &self,
        prompt: String,
        responses: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<f32>, ModelError> {
        let name = self.common.spec.name.clone();
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
        self.common.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.jobs.try_send(job) {
            self.common.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(match error {
                mpsc::error::TrySendError::Full(_) => ModelError::QueueFull {
                    name,
                    capacity: self.common.spec.queue_capacity,
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

impl Common {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn reason(&self) -> String {
        self.reason.lock().expect("reason lock poisoned").clone()
    }

    fn described(&self) -> std::sync::RwLockReadGuard<'_, Option<Described>> {
        self.described.read().expect("describe lock poisoned")
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
}

impl<P: Protocol> Shared<P> {
    fn name(&self) -> &str {
        self.common.name()
    }

    fn probed(&self) -> Option<Arc<Probed<P::Layout>>> {
        self.probed.read().expect("probe lock poisoned").clone()
    }

    /// Ask every endpoint whether the model is ready; learn the layout on the first ready
    /// one if it is not known yet. Ok when the model is available afterwards.
    async fn probe(&self) -> Result<(), ModelError> {
        let common = &self.common;
        if let Err(reason) = self.protocol.probe().await {
            common.set_available(false, &reason);
            return Err(ModelError::EngineRefused {
                name: self.name().to_string(),
                reason,
            });
        }
        if self.probed().is_none() {
            let probed = self.learn_layout().await.inspect_err(|error| {
                common.set_available(false, &error.to_string());
            })?;
            let (inputs, output) = self.protocol.tensor_names(&probed.layout);
            *common.described.write().expect("describe lock poisoned") = Some(Described {
                width: probed.width,
                inputs,
                output,
            });
            *self.probed.write().expect("probe lock poisoned") = Some(Arc::new(probed));
        }
        if common.failing.swap(false, Ordering::Relaxed) {
            common.failures.store(0, Ordering::Relaxed);
            tracing::info!(reward_model = %self.name(), "engine reports the model ready: trying it again");
        }
        common.set_available(true, "");
        Ok(())
    }

    /// The protocol's layout from a ready endpoint, then one probe inference.
    async fn learn_layout(&self) -> Result<Probed<P::Layout>, ModelError> {
        let name = self.name().to_string();
        let refused = |reason: String| ModelError::EngineRefused {
            name: name.clone(),
            reason,
        };
        // Ready a moment ago; a failed call may have taken it out since.
        let endpoint = self
            .protocol
            .endpoints()
            .pick()
            .ok_or_else(|| refused("no endpoint is ready".into()))?;
        let layout = self.protocol.learn_layout(endpoint).await?;
        let mut built = self
            .protocol
            .requests(&layout, &[("probe".into(), vec!["probe".into()])]);
        if let Some(error) = built.errors.pop().flatten() {
            return Err(error);
        }
        let (_, request) = built.requests.pop().expect("one request for the probe");
        let timeout = self.protocol.limits().timeout;
        let (_, width) = self
            .protocol
            .infer(endpoint, &layout, request, 1, timeout)
            .await
            .map_err(|error| refused(format!("probe inference failed: {error}")))?
            .map_err(|reason| refused(format!("probe inference: {reason}")))?;
        Ok(Probed { layout, width })
    }

    /// Book a failed call on `endpoint`; `client_cut`: the timer was a client's deadline.
    fn failed(&self, endpoint: usize, error: &CallError, client_cut: bool) {
        let (common, endpoints) = (&self.common, self.protocol.endpoints());
        if error.unreachable {
            endpoints.set_ready(endpoint, false);
            if !endpoints.any_ready() {
                common.set_available(false, &error.to_string());
            }
            return;
        }
        if client_cut {
            return;
        }
        let failures = common.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= common.failures_before_unavailable {
            common.failing.store(true, Ordering::Relaxed);
            common.set_available(
                false,
                &format!("{failures} inferences failed in a row; last: {error}"),
            );
        }
    }
}

/// Probe every `interval` until the model is dropped (the task is aborted then).
async fn probe_loop<P: Protocol>(shared: Arc<Shared<P>>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(error) = shared.probe().await {
            tracing::debug!(reward_model = %shared.name(), %error, "probe: not available");
        }
    }
}

/// Take a slot, then the queued jobs, and run them; ends when the model is dropped.
async fn batch_loop<P: Protocol>(
    shared: Arc<Shared<P>>,
    mut queue: mpsc::Receiver<ScoreJob>,
    max_concurrency: usize,
) {
    let slots = Arc::new(Semaphore::new(max_concurrency));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let Some(first) = queue.recv().await else {
            break;
        };
        let max_batch = shared
            .probed()
            .map_or(shared.common.spec.max_batch_sequences, |p| {
                shared.protocol.max_batch(&p.layout)
            });
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
            .common
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
async fn run_batch<P: Protocol>(
    shared: Arc<Shared<P>>,
    jobs: Vec<ScoreJob>,
    _slot: OwnedSemaphorePermit,
) {
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
async fn score_jobs<P: Protocol>(
    shared: &Arc<Shared<P>>,
    jobs: &[ScoreJob],
) -> Vec<Result<Vec<f32>, ModelError>> {
    let name = shared.name().to_string();
    let unavailable = |reason: String| ModelError::Unavailable {
        name: name.clone(),
        reason,
    };
    let Some(probed) = shared
        .probed()
        .filter(|_| shared.common.available.load(Ordering::Relaxed))
    else {
        let reason = shared.common.reason();
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
        tokio::task::spawn_blocking(move || shared.protocol.requests(&probed.layout, &queries))
            .await
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
        let mut timeout = shared.protocol.limits().timeout;
        let mut client_cut = false;
        if let Some(deadline) = latest_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < timeout {
                (timeout, client_cut) = (left.max(Duration::from_millis(1)), true);
            }
        }
        let rows = infer_on_any(
            shared,
            &probed,
            request,
            timeout,
            client_cut,
            sequences.len(),
        )
        .await
        .and_then(|(endpoint, values, got)| {
            if got == width {
                return Ok(values);
            }
            Err((
                format!(
                    "{}: the answer now has {got} values per sequence, not {width}",
                    shared.protocol.endpoints().url(endpoint),
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
async fn infer_on_any<P: Protocol>(
    shared: &Arc<Shared<P>>,
    probed: &Probed<P::Layout>,
    request: P::Request,
    timeout: Duration,
    client_cut: bool,
    rows: usize,
) -> Result<(usize, Vec<f32>, usize), (String, bool)> {
    let name = shared.name().to_string();
    let endpoints = shared.protocol.endpoints();
    let mut last_error = None;
    for _ in 0..endpoints.len() {
        let Some(endpoint) = endpoints.pick() else {
            break;
        };
        let started = Instant::now();
        let result = shared
            .protocol
            .infer(endpoint, &probed.layout, request.clone(), rows, timeout)
            .await;
        metrics::histogram!(metric::RM_INFERENCE_SECONDS, "reward_model" => name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::RM_BATCH_SIZE, "reward_model" => name.clone())
            .record(rows as f64);
        match result {
            Ok(answer) => {
                let (values, width) = answer
                    .map_err(|reason| (format!("{}: {reason}", endpoints.url(endpoint)), false))?;
                shared.common.failures.store(0, Ordering::Relaxed);
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
        None => format!("no endpoint is ready: {}", shared.common.reason()),
    };
    Err((reason, false))
}
