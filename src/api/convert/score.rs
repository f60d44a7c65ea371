//! ScoreRequest -> [`ScoreCall`] (every limit checked, NaN/Inf refused, fields named) and
//! the service's results -> ScoreResponse.

use super::{RequestError, at_most, invalid, selection_mode};
use crate::api::pb;
use crate::routers::instance::statistics::MAX_CATEGORY_BYTES;
use crate::service::Limits;
use crate::service::{QueryInput, ScoreCall, ScoredQuery};
use crate::telemetry::metric;

/// A Score request checked against `limits`.
pub fn score_call(request: pb::ScoreRequest, limits: &Limits) -> Result<ScoreCall, RequestError> {
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
    // Contexts come from the client for every query, or from the router's encoder for all.
    let with_context = !request.queries[0].context.is_empty();
    if let Some(index) = request
        .queries
        .iter()
        .position(|q| q.context.is_empty() == with_context)
    {
        let reason = if with_context {
            "is empty while queries[0].context is set; send a context with every query or with none (routers with an encoder)"
        } else {
            "is set while queries[0].context is empty; send a context with every query or with none (routers with an encoder)"
        };
        return Err(invalid(format!("queries[{index}].context"), reason));
    }
    let queries = request
        .queries
        .into_iter()
        .enumerate()
        .map(|(index, query)| query_input(index, query, limits))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScoreCall {
        router: request.router,
        queries,
        mode,
        explain: request.explain,
    })
}

fn query_input(
    index: usize,
    query: pb::Query,
    limits: &Limits,
) -> Result<QueryInput, RequestError> {
    let field = |name: &str| format!("queries[{index}].{name}");
    finite_context(&field("context"), &query.context, limits)?;
    at_most(
        field("prompt"),
        query.prompt.len(),
        "limits.max_text_bytes",
        limits.max_text_bytes,
    )?;
    let mut prompt = query.prompt;
    keep_readable(&mut prompt, "prompt", limits);
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
    check_category(&field("category"), &query.category)?;
    if query.group.len() > MAX_GROUP_BYTES {
        return Err(invalid(
            field("group"),
            format!("is {} bytes; at most {MAX_GROUP_BYTES}", query.group.len()),
        ));
    }
    let mut responses = query.responses;
    for response in &mut responses {
        keep_readable(response, "response", limits);
    }
    Ok(QueryInput {
        id: query.id,
        context: query.context,
        prompt,
        responses,
        group: (!query.group.is_empty()).then_some(query.group),
        category: (!query.category.is_empty()).then_some(query.category),
    })
}

/// A context (`field`) no longer than `limits.max_context_dim`, every value finite.
pub(super) fn finite_context(
    field: &str,
    context: &[f32],
    limits: &Limits,
) -> Result<(), RequestError> {
    at_most(
        field,
        context.len(),
        "limits.max_context_dim",
        limits.max_context_dim,
    )?;
    match context.iter().position(|v| !v.is_finite()) {
        Some(position) => Err(invalid(
            format!("{field}[{position}]"),
            format!("is {}; every value must be finite", context[position]),
        )),
        None => Ok(()),
    }
}

/// Longest `Query.group` accepted.
pub const MAX_GROUP_BYTES: usize = 256;

/// What joins the kept halves of a cut text.
const ELISION: &str = " … ";

/// Cut `text` to `limits.kept_text_bytes` when it is longer and truncation is on: its
/// first and last halves (at character boundaries) joined by [`ELISION`].
pub(super) fn keep_readable(text: &mut String, field: &'static str, limits: &Limits) {
    let kept = limits.kept_text_bytes;
    if !limits.truncate_long_texts || text.len() <= kept || kept <= ELISION.len() {
        return;
    }
    let room = kept - ELISION.len();
    let head = text.floor_char_boundary(room / 2);
    let tail = text.ceil_char_boundary(text.len() - (room - head));
    *text = format!("{}{ELISION}{}", &text[..head], &text[tail..]);
    metrics::counter!(metric::TEXTS_TRUNCATED, "field" => field).increment(1);
}

/// The reply for the service's results.
pub fn score_response(results: Vec<ScoredQuery>) -> pb::ScoreResponse {
    pb::ScoreResponse {
        results: results
            .into_iter()
            .map(|result| pb::QueryResult {
                id: result.id,
                decision_id: result.decision_id,
                reward_model: result.reward_model,
                scores: result.scores,
                ranking: result.ranking,
                arms: result
                    .arms
                    .into_iter()
                    .map(|arm| pb::ArmEstimate {
                        reward_model: arm.reward_model,
                        mean: arm.mean,
                        bonus: arm.bonus,
                        ucb: arm.ucb,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// A `category` (of a query or a labelled pair): at most [`MAX_CATEGORY_BYTES`], no
/// control characters; empty means none.
pub fn check_category(field: &str, category: &str) -> Result<(), RequestError> {
    if category.len() > MAX_CATEGORY_BYTES {
        return Err(invalid(
            field,
            format!("is {} bytes; at most {MAX_CATEGORY_BYTES}", category.len()),
        ));
    }
    if category.chars().any(char::is_control) {
        return Err(invalid(field, "holds a control character"));
    }
    Ok(())
}
