//! AddPrior: a router's prior from labelled preference pairs (BayesianRouter's offline
//! router, as a service). The contexts come with the pairs or from the router's encoder;
//! every serving RM the router accepts scores each pair once (one forward pass per pair and
//! session, [`PAIRS_IN_FLIGHT`] pairs at a time through the RMs' batchers, so a large prior
//! never fills an RM's queue); each RM's correctness on each pair
//! (1 when it scores the chosen response above the rejected one, 1/2 on a tie, 0
//! otherwise) enters its arm as an observation at the pair's context (routers' front,
//! blocking pool: O(d²·n) per arm), durable before the reply.
//! Cost: 2·n sequences per RM for n pairs (reported as `sequences_scored`).

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::{Service, ServiceError};
use crate::models::RewardModel;
use crate::routers::{FirstUse, IdempotencyKey, PriorObservations};

/// Pairs scored at once: well under an RM's default queue capacity (256 jobs), so the
/// prior shares the queues with live Scores instead of being refused as overload.
pub const PAIRS_IN_FLIGHT: usize = 64;

/// One labelled pair: `chosen` is the better response to `prompt`.
#[derive(Debug)]
pub struct LabelledPair {
    /// Empty when the router takes its contexts from an encoder (every pair of a call has
    /// one, or none has).
    pub context: Vec<f32>,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// The pair's category, when sent (a router with context categories enters the pair
    /// at its slot).
    pub category: Option<String>,
}

/// An AddPrior call, valid on its face.
#[derive(Debug)]
pub struct PriorCall {
    pub router: String,
    pub pairs: Vec<LabelledPair>,
    /// Weight of every observation.
    pub weight: f64,
    /// A retry with the same key enters nothing again.
    pub idempotency_key: Option<String>,
}

/// What AddPrior entered.
#[derive(Debug, PartialEq)]
pub struct PriorSummary {
    /// (RM, pairs entered, its accuracy on them), for each arm of the router.
    pub entered: Vec<(String, usize, f64)>,
    /// Sequences the RMs scored (two per pair per RM): the prior's cost.
    pub sequences_scored: u64,
    /// The key answered this request before: nothing entered now.
    pub replayed: bool,
}

impl Service {
    /// Run an AddPrior call; `deadline` is the client's.
    pub async fn add_prior(
        &self,
        call: PriorCall,
        deadline: Option<Instant>,
    ) -> Result<PriorSummary, ServiceError> {
        let serving = self.reward_models.available_names();
        let found = self
            .routers
            .find(call.router.clone(), FirstUse::Refuse, serving.clone())
            .await?;
        let (encoder, context_dim) = (found.encoder, found.context_dim);
        let info = self
            .routers
            .info(call.router.clone(), serving.clone())
            .await?;
        let reward_models: Vec<Arc<RewardModel>> = serving
            .iter()
            .filter(|name| info.settings.accepts(name))
            .map(|name| self.reward_models.get(name))
            .collect::<Result<_, _>>()?;
        let client_contexts = call.pairs.iter().all(|pair| !pair.context.is_empty());
        let contexts = match (client_contexts, encoder) {
            (true, _) => call.pairs.iter().map(|pair| pair.context.clone()).collect(),
            (false, Some(encoder)) => {
                let prompts = call.pairs.iter().map(|pair| pair.prompt.clone()).collect();
                self.encoders
                    .get(&encoder)?
                    .embed(prompts, deadline)
                    .await?
            }
            (false, None) => {
                return Err(ServiceError::ContextsMissing {
                    router: call.router,
                    context_dim,
                });
            }
        };

        // One job per pair and session: RMs that are heads of one session share a pass.
        // The first RM of each session runs the pass its heads share.
        let mut runners: Vec<&Arc<RewardModel>> = Vec::new();
        let mut session_of = Vec::with_capacity(reward_models.len());
        for model in &reward_models {
            let session = match runners
                .iter()
                .position(|r| r.session_id() == model.session_id())
            {
                Some(session) => session,
                None => {
                    runners.push(model);
                    runners.len() - 1
                }
            };
            session_of.push(session);
        }
        let mut rows = vec![vec![Vec::new(); runners.len()]; call.pairs.len()];
        for (chunk_index, chunk) in call.pairs.chunks(PAIRS_IN_FLIGHT).enumerate() {
            let mut jobs = JoinSet::new();
            for (offset, pair) in chunk.iter().enumerate() {
                let pair_index = chunk_index * PAIRS_IN_FLIGHT + offset;
                for (session, runner) in runners.iter().enumerate() {
                    let model = Arc::clone(runner);
                    let (prompt, responses) = (
                        pair.prompt.clone(),
                        vec![pair.chosen.clone(), pair.rejected.clone()],
                    );
                    jobs.spawn(
                        async move {
                            let rows = model.output_rows(prompt, responses, deadline).await;
                            (pair_index, session, rows)
                        }
                        .in_current_span(),
                    );
                }
            }
            while let Some(joined) = jobs.join_next().await {
                let (pair, session, result) = joined.map_err(ServiceError::TaskFailed)?;
                rows[pair][session] = result?;
            }
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(ServiceError::DeadlineExceeded);
        }
        let correctness: Vec<(String, Vec<f64>)> = reward_models
            .iter()
            .zip(&session_of)
            .map(|(model, &session)| {
                let values = rows
                    .iter()
                    .map(|pair_rows| correct(&model.scores_from(&pair_rows[session])))
                    .collect();
                (model.name().to_string(), values)
            })
            .collect();
        let key = call.idempotency_key.clone().map(|key| IdempotencyKey {
            key,
            fingerprint: fingerprint(&call),
        });
        let prior = PriorObservations {
            contexts,
            correctness,
            weight: call.weight,
            key,
            categories: call
                .pairs
                .iter()
                .map(|pair| pair.category.clone())
                .collect(),
        };
        let outcome = self
            .routers
            .prior(call.router.clone(), prior, serving)
            .await?;
        tracing::info!(router = %call.router, pairs = call.pairs.len(), entered = ?outcome.entered, "prior entered");
        Ok(PriorSummary {
            entered: outcome.entered,
            sequences_scored: 2 * (call.pairs.len() * reward_models.len()) as u64,
            replayed: outcome.replayed,
        })
    }
}

/// A stable 64-bit fingerprint of what a call asks (FNV-1a over its pairs, each field
/// length-prefixed, and its weight), so a retry under the same key is recognized across
/// restarts whatever the RMs answer meanwhile.
fn fingerprint(call: &PriorCall) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |bytes: &[u8]| {
        for &byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            hash = (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(call.router.as_bytes());
    feed(&call.weight.to_le_bytes());
    for pair in &call.pairs {
        let context: Vec<u8> = pair.context.iter().flat_map(|v| v.to_le_bytes()).collect();
        feed(&context);
        feed(pair.prompt.as_bytes());
        feed(pair.chosen.as_bytes());
        feed(pair.rejected.as_bytes());
        // Only when sent: keys of calls from before pairs had categories keep their
        // fingerprint.
        if let Some(category) = &pair.category {
            feed(category.as_bytes());
        }
    }
    hash
}

/// An RM's correctness on one pair from its scores [chosen, rejected].
fn correct(scores: &[f32]) -> f64 {
    match scores {
        [chosen, rejected] if chosen > rejected => 1.0,
        [chosen, rejected] if chosen < rejected => 0.0,
        // A tie, or NaN: no order between them.
        _ => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::correct;

    #[test]
    fn correctness_is_one_half_or_zero() {
        assert_eq!(correct(&[0.9, 0.1]), 1.0);
        assert_eq!(correct(&[0.1, 0.9]), 0.0);
        assert_eq!(correct(&[0.5, 0.5]), 0.5);
        assert_eq!(correct(&[f32::NAN, 0.5]), 0.5);
    }
}
