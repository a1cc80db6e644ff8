//! `POST /v1/score`: plain JSON for programs that do not speak KServe. One of
//! `{"texts": [...]}`, scored as given; `{"conversations": [[{"role", "content"}, ...],
//! ...]}`, rendered with the checkpoint's chat template; or `{"records": [SFT records]}`,
//! whose labeled turns are rendered with the SteerLM template and scored together.

use super::error::{ApiError, ApiResult};
use super::metrics::Api;
use super::{AppState, Shared, conversations, counted};
use crate::model::Prompt;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use steerlm_core::record::SftRecord;
use steerlm_core::template::{labeled_prefix_bytes, labeled_prefixes, labeled_turns};

pub async fn score(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    counted(&state.metrics, Api::Score, score_inner(&state, body)).await
}

async fn score_inner(state: &AppState, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = state.limits.body(body)?;
    let request: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    // What to score must be unambiguous: one field, sent once (JSON parsers keep the last
    // of duplicate keys without a word; the command line refuses them too).
    let sent: Vec<&str> =
        ["texts", "conversations", "records"].into_iter().filter(|f| request.get(f).is_some()).collect();
    if sent.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "send one of `texts`, `conversations` and `records`, not {}",
            sent.join(" and ")
        )));
    }
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    steerlm_core::pyvalue::PyValue::parse(text).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    if let Some(texts) = request.get("texts") {
        let texts = texts
            .as_array()
            .and_then(|a| a.iter().map(|t| t.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| ApiError::bad_request("`texts` must be an array of strings"))?;
        state.limits.check_texts(texts.len())?;
        let prompts: Vec<Prompt> = texts.iter().map(|t| Prompt::Text(t)).collect();
        return score_prompts(state, &prompts).await;
    }
    if request.get("conversations").is_some() {
        let conversations = conversations(&body, "conversations", false)?;
        state.limits.check_texts(conversations.len())?;
        let prompts: Vec<Prompt> = conversations.iter().map(Prompt::Chat).collect();
        return score_prompts(state, &prompts).await;
    }
    let Some(records) = request.get("records").and_then(Value::as_array) else {
        return Err(ApiError::bad_request(
            "send {\"texts\": [...]}, {\"conversations\": [[{\"role\", \"content\"}, ...], ...]} or {\"records\": [...]}",
        ));
    };
    score_records(state, records).await
}

/// The label string of a row of scores, named by the model's attributes.
fn label(state: &AppState, scores: &[f32]) -> Option<String> {
    let names: Vec<&str> = state.model.config.labels.iter().map(String::as_str).collect();
    let values: Vec<f64> = scores.iter().map(|&v| v as f64).collect();
    steerlm_core::labels::encode_scores(&values, Some(&names)).ok()
}

/// With `--attribute-weights`, each result also carries the combined `reward`.
fn add_reward(state: &AppState, result: &mut Value, scores: &[f32]) -> ApiResult<()> {
    if state.attribute_weights.is_some() {
        result["reward"] = json!(state.reward(scores)?);
    }
    Ok(())
}

/// Texts or conversations (rendered with the chat template), one result each.
async fn score_prompts(state: &AppState, prompts: &[Prompt<'_>]) -> ApiResult {
    let (sequences, exceeded) = state.tokenize_prompts(prompts)?;
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let scores = state.score(sequences).await?;
    let mut results = Vec::with_capacity(scores.len());
    for ((s, n), e) in scores.iter().zip(&lengths).zip(&exceeded) {
        let mut result = json!({ "scores": s, "num_tokens": n, "exceeded": e, "label": label(state, s) });
        add_reward(state, &mut result, s)?;
        results.push(result);
    }
    Ok(Json(json!({ "attributes": state.model.config.labels, "results": results })).into_response())
}

async fn score_records(state: &AppState, records: &[Value]) -> ApiResult {
    // Each record's labeled prefixes, scored together.
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    let parsed = lines
        .iter()
        .enumerate()
        .map(|(r, line)| SftRecord::parse(line).map_err(|e| ApiError::bad_request(format!("record {r}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    // Counted before any prefix is made: each labeled turn repeats the conversation
    // before it, so a small body can ask for gigabytes of text.
    let turns: Vec<Vec<usize>> = parsed.iter().map(labeled_turns).collect();
    state.limits.check_texts(turns.iter().map(Vec::len).sum())?;
    state.limits.check_prefix_bytes(parsed.iter().map(labeled_prefix_bytes).fold(0, usize::saturating_add))?;
    let mut texts = Vec::new();
    let mut owners = Vec::new();
    for (r, (parsed, turns)) in parsed.iter().zip(turns).enumerate() {
        let prefixes = labeled_prefixes(parsed, Default::default())
            .map_err(|e| ApiError::bad_request(format!("record {r}: {e}")))?;
        for (prefix, turn) in prefixes.into_iter().zip(turns) {
            texts.push(prefix);
            owners.push((r, turn));
        }
    }
    let (sequences, exceeded) = state.tokenize(&texts)?;
    let scores = if sequences.is_empty() { Vec::new() } else { state.score(sequences).await? };
    let mut out: Vec<Vec<Value>> = vec![Vec::new(); records.len()];
    for (((r, turn), s), e) in owners.into_iter().zip(&scores).zip(&exceeded) {
        let mut result = json!({ "turn": turn, "scores": s, "label": label(state, s), "exceeded": e });
        add_reward(state, &mut result, s)?;
        out[r].push(result);
    }
    let records: Vec<Value> = out.into_iter().map(|turns| json!({ "turns": turns })).collect();
    Ok(Json(json!({ "attributes": state.model.config.labels, "records": records })).into_response())
}
