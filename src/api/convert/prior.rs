//! AddPriorRequest -> [`PriorCall`] (router, pairs, weight and key checked, each refusal
//! naming the field and the limit) and the summary -> AddPriorResponse.

use super::feedback::idempotency_key;
use super::score::{check_category, finite_context, keep_readable};
use super::{RequestError, at_most, invalid};
use crate::api::pb;
use crate::routers::MAX_PRIOR_WEIGHT;
use crate::service::Limits;
use crate::service::{LabelledPair, PriorCall, PriorSummary};

/// Most labelled pairs in one AddPrior (each costs two sequences per RM).
pub const MAX_PRIOR_PAIRS: usize = 10_000;

pub fn prior_call(
    request: pb::AddPriorRequest,
    limits: &Limits,
) -> Result<PriorCall, RequestError> {
    if request.router.is_empty() {
        return Err(invalid("router", "is empty"));
    }
    if request.pairs.is_empty() {
        return Err(invalid(
            "pairs",
            "is empty; send at least one labelled pair",
        ));
    }
    at_most(
        "pairs",
        request.pairs.len(),
        "MAX_PRIOR_PAIRS",
        MAX_PRIOR_PAIRS,
    )?;
    let weight = request.weight.unwrap_or(1.0);
    if !(weight.is_finite() && weight > 0.0 && weight <= MAX_PRIOR_WEIGHT) {
        return Err(invalid(
            "weight",
            format!("is {weight}; must be in (0, {MAX_PRIOR_WEIGHT}]"),
        ));
    }
    let idempotency_key = idempotency_key(request.idempotency_key)?;
    let with_context = request
        .pairs
        .iter()
        .filter(|p| !p.context.is_empty())
        .count();
    if with_context != 0 && with_context != request.pairs.len() {
        return Err(invalid(
            "pairs.context",
            "is set on some pairs only: send a context with every pair, or with none (a router with an encoder)",
        ));
    }
    let pairs = request
        .pairs
        .into_iter()
        .enumerate()
        .map(|(index, pair)| labelled_pair(index, pair, limits))
        .collect::<Result<_, _>>()?;
    Ok(PriorCall {
        router: request.router,
        pairs,
        weight,
        idempotency_key,
    })
}

fn labelled_pair(
    index: usize,
    pair: pb::LabelledPair,
    limits: &Limits,
) -> Result<LabelledPair, RequestError> {
    let field = |name: &str| format!("pairs[{index}].{name}");
    finite_context(&field("context"), &pair.context, limits)?;
    let mut texts = [pair.prompt, pair.chosen, pair.rejected];
    for (name, text) in ["prompt", "chosen", "rejected"].into_iter().zip(&mut texts) {
        if name != "prompt" && text.is_empty() {
            return Err(invalid(field(name), "is empty"));
        }
        at_most(
            field(name),
            text.len(),
            "limits.max_text_bytes",
            limits.max_text_bytes,
        )?;
        keep_readable(
            text,
            if name == "prompt" {
                "prompt"
            } else {
                "response"
            },
            limits,
        );
    }
    check_category(&field("category"), &pair.category)?;
    let [prompt, chosen, rejected] = texts;
    Ok(LabelledPair {
        context: pair.context,
        prompt,
        chosen,
        rejected,
        category: (!pair.category.is_empty()).then_some(pair.category),
    })
}

/// The reply for a prior's summary.
pub fn prior_response(summary: PriorSummary) -> pb::AddPriorResponse {
    pb::AddPriorResponse {
        arms: summary
            .entered
            .into_iter()
            .map(|(reward_model, pairs, accuracy)| pb::PriorArm {
                reward_model,
                pairs: pairs as u32,
                accuracy,
            })
            .collect(),
        sequences_scored: summary.sequences_scored,
        replayed: summary.replayed,
    }
}
