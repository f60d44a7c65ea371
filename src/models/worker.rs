//! The worker threads of one reward model and their batcher. Each worker owns a
//! [`Scorer`] (session + tokenizer) and takes jobs from the model's bounded queue.
//!
//! Batching across requests: a worker takes the first queued job at once, with whatever
//! else queued while it was busy (continuous batching), up to `max_batch_sequences`; a
//! nonzero `max_batch_delay_ms` (default 0) makes it wait that long for more. Jobs whose
//! deadline passed (or whose client left) are dropped unscored; every (prompt, response)
//! pair is tokenized; sequences are sorted by length and cut into inferences of at most
//! `max_batch_sequences` sequences and `max_batch_tokens` padded tokens (so similar lengths
//! share a batch and padding stays low); scores go back to each job. Cost per batch:
//! tokenization O(text), sorting O(n log n) for n sequences, then the inferences.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokenizers::Encoding;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::session::{Head, Scorer};
use super::{ModelError, RewardModelSpec};
use crate::telemetry::metric;

/// One query's responses to score (either backend).
pub(super) struct ScoreJob {
    pub(super) prompt: String,
    pub(super) responses: Vec<String>,
    /// The client's deadline: a job still queued past it is dropped unscored.
    pub(super) deadline: Option<Instant>,
    pub(super) reply: oneshot::Sender<Result<Vec<f32>, ModelError>>,
    pub(super) span: tracing::Span,
    pub(super) enqueued: Instant,
}

/// Run `load` (file I/O, session creation, a probe) on a blocking thread, off the async
/// runtime; a panic or cancellation there is `LoaderFailed` for model `name`.
pub(super) async fn off_runtime<T: Send + 'static>(
    name: String,
    load: impl FnOnce() -> Result<T, ModelError> + Send + 'static,
) -> Result<T, ModelError> {
    tokio::task::spawn_blocking(load)
        .await
        .map_err(|e| ModelError::LoaderFailed {
            name,
            reason: e.to_string(),
        })?
}

/// The worker threads of one model and the queue that feeds them.
pub(super) struct Workers {
    name: String,
    queue_capacity: usize,
    jobs: SyncSender<ScoreJob>,
    queue_depth: Arc<AtomicUsize>,
    /// The execution provider the sessions run on (`cpu`, `cuda:0`, ...).
    pub(super) provider: String,
    /// Model inputs as ONNX Runtime reports them.
    pub(super) input_names: Vec<String>,
    /// The output read.
    pub(super) output_name: String,
    /// Values per text in a job's result (1 for scores; an encoder's dimension).
    pub(super) width: usize,
}

impl Workers {
    /// Load `spec.workers` sessions (each probed) and start a thread per session.
    /// Blocking: call it off the async runtime.
    pub(super) fn start(spec: &RewardModelSpec, head: Head) -> Result<Self, ModelError> {
        let mut scorers = vec![Scorer::new(spec.clone(), head)?];
        for _ in 1..spec.workers {
            scorers.push(Scorer::new(spec.clone(), head)?);
        }
        let first = &scorers[0];
        let provider = first.provider.clone();
        let input_names = first.inputs.iter().map(|i| i.name.clone()).collect();
        let (output_name, width) = (first.output_name.clone(), first.width);
        let (jobs, queue) = sync_channel(spec.queue_capacity);
        let queue = Arc::new(Mutex::new(queue));
        let queue_depth = Arc::new(AtomicUsize::new(0));
        for (index, scorer) in scorers.into_iter().enumerate() {
            let (queue, depth) = (queue.clone(), queue_depth.clone());
            std::thread::Builder::new()
                .name(format!("rm-{}-{index}", spec.name))
                .spawn(move || run_worker(scorer, queue, depth))
                .map_err(|e| ModelError::Load {
                    name: spec.name.clone(),
                    reason: format!("cannot start worker thread: {e}"),
                })?;
        }
        Ok(Self {
            name: spec.name.clone(),
            queue_capacity: spec.queue_capacity,
            jobs,
            queue_depth,
            provider,
            input_names,
            output_name,
            width,
        })
    }

    pub(super) fn queue_depth(&self) -> usize {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// Run `texts` (with `prompt`, as the input format says) through the model: `width`
    /// values per text, in order. A job still queued when `deadline` passes is dropped.
    pub(super) async fn submit(
        &self,
        prompt: String,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<f32>, ModelError> {
        let (reply, answer) = oneshot::channel();
        let job = ScoreJob {
            prompt,
            responses: texts,
            deadline,
            reply,
            span: tracing::Span::current(),
            enqueued: Instant::now(),
        };
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.jobs.try_send(job) {
            self.queue_depth.fetch_sub(1, Ordering::Relaxed);
            let name = self.name.clone();
            return Err(match error {
                TrySendError::Full(_) => ModelError::QueueFull {
                    name,
                    capacity: self.queue_capacity,
                },
                TrySendError::Disconnected(_) => ModelError::WorkerStopped { name },
            });
        }
        metrics::gauge!(metric::RM_QUEUE_DEPTH, "reward_model" => self.name.clone())
            .set(self.queue_depth() as f64);
        let name = self.name.clone();
        answer
            .instrument(tracing::debug_span!("await_model"))
            .await
            .unwrap_or(Err(ModelError::WorkerStopped { name }))
    }
}

pub(super) fn run_worker(
    mut scorer: Scorer,
    queue: Arc<Mutex<Receiver<ScoreJob>>>,
    depth: Arc<AtomicUsize>,
) {
    let name = scorer.spec.name.clone();
    loop {
        let jobs = {
            let receiver = queue.lock().expect("queue lock poisoned");
            gather(&receiver, &scorer.spec)
        };
        let Some(jobs) = jobs else { break };
        let remaining = depth
            .fetch_sub(jobs.len(), Ordering::Relaxed)
            .saturating_sub(jobs.len());
        metrics::gauge!(metric::RM_QUEUE_DEPTH, "reward_model" => name.clone())
            .set(remaining as f64);
        scorer.process(jobs);
    }
    drop(scorer);
    crate::memory::release_freed_memory();
    tracing::info!(reward_model = %name, "reward model worker stopped");
}

/// The first queued job, then what else is queued (waiting up to `max_batch_delay_ms` for
/// more, none by default), until `max_batch_sequences`. `None` once the model is removed and the queue is drained.
fn gather(receiver: &Receiver<ScoreJob>, spec: &RewardModelSpec) -> Option<Vec<ScoreJob>> {
    let first = receiver.recv().ok()?;
    let mut sequences = first.responses.len();
    let mut jobs = vec![first];
    let wait_until = Instant::now() + Duration::from_millis(spec.max_batch_delay_ms);
    while sequences < spec.max_batch_sequences {
        let remaining = wait_until.saturating_duration_since(Instant::now());
        let next = if remaining.is_zero() {
            receiver.try_recv().ok()
        } else {
            receiver.recv_timeout(remaining).ok()
        };
        match next {
            Some(job) => {
                sequences += job.responses.len();
                jobs.push(job);
            }
            None => break,
        }
    }
    Some(jobs)
}

/// The jobs someone still waits for, their queue time recorded; the others (deadline passed,
/// client gone) are answered `DeadlineExceeded` and dropped unscored. Both backends' batchers
/// start here.
pub(super) fn live_jobs(name: &str, jobs: Vec<ScoreJob>) -> Vec<ScoreJob> {
    let now = Instant::now();
    let mut live = Vec::with_capacity(jobs.len());
    for job in jobs {
        metrics::histogram!(metric::RM_QUEUE_SECONDS, "reward_model" => name.to_string())
            .record(job.enqueued.elapsed().as_secs_f64());
        if job.deadline.is_some_and(|deadline| now >= deadline) || job.reply.is_closed() {
            let _ = job.reply.send(Err(ModelError::DeadlineExceeded {
                name: name.to_string(),
            }));
            metrics::counter!(metric::RM_REQUESTS, "reward_model" => name.to_string(), "status" => "dropped").increment(1);
        } else {
            live.push(job);
        }
    }
    live
}

impl Scorer {
    /// Score a batch of jobs: tokenize, cut length-sorted sequences into inferences under
    /// the batch limits, reply to each job.
    fn process(&mut self, jobs: Vec<ScoreJob>) {
        let name = self.spec.name.clone();
        let live = live_jobs(&name, jobs);

        let started = Instant::now();
        let mut outcomes: Vec<Result<Vec<f32>, ModelError>> = Vec::with_capacity(live.len());
        let mut encodings: Vec<Vec<Encoding>> = Vec::with_capacity(live.len());
        for job in &live {
            match self.encoder.encode(&job.prompt, &job.responses) {
                Ok(encoded) => {
                    outcomes.push(Ok(vec![f32::NAN; encoded.len() * self.width]));
                    encodings.push(encoded);
                }
                Err(error) => {
                    outcomes.push(Err(error));
                    encodings.push(Vec::new());
                }
            }
        }
        metrics::histogram!(metric::RM_TOKENIZE_SECONDS, "reward_model" => name.clone())
            .record(started.elapsed().as_secs_f64());

        // (job, response, length), shortest first.
        let mut order: Vec<(usize, usize, usize)> = encodings
            .iter()
            .enumerate()
            .flat_map(|(job, encoded)| {
                encoded
                    .iter()
                    .enumerate()
                    .map(move |(r, e)| (job, r, e.len()))
            })
            .collect();
        order.sort_by_key(|&(_, _, len)| len);
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len()
                && end - start < self.spec.max_batch_sequences
                && (end - start + 1) * order[end].2.max(1) <= self.spec.max_batch_tokens
            {
                end += 1;
            }
            let chunk = &order[start..end];
            let refs: Vec<&Encoding> = chunk
                .iter()
                .map(|&(job, r, _)| &encodings[job][r])
                .collect();
            match self.infer(&refs) {
                Ok(values) => {
                    let width = self.width;
                    for (&(job, r, _), row) in chunk.iter().zip(values.chunks(width)) {
                        if let Ok(job_values) = &mut outcomes[job] {
                            job_values[r * width..(r + 1) * width].copy_from_slice(row);
                        }
                    }
                }
                Err(error) => {
                    for &(job, _, _) in chunk {
                        outcomes[job] = Err(error.clone());
                    }
                }
            }
            start = end;
        }

        for (job, outcome) in live.into_iter().zip(outcomes) {
            let outcome = outcome.map(|rows| self.fold(rows));
            let status = if outcome.is_ok() { "ok" } else { "error" };
            if let Err(error) = &outcome {
                job.span
                    .in_scope(|| tracing::warn!(%error, "scoring failed"));
            }
            metrics::counter!(metric::RM_REQUESTS, "reward_model" => name.clone(), "status" => status).increment(1);
            // The requester may have gone away; nothing to do then.
            let _ = job.reply.send(outcome);
        }
    }
}
