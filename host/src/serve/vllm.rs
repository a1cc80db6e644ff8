//! vLLM's pooling APIs, as RLHF tools that serve reward models with vLLM call them:
//! `POST /classify` and `POST /pooling`, with `input` a text, a list of texts, or token
//! ids, or with `messages`, one conversation for the checkpoint's chat template. Scores are the model's raw outputs (a reward is not a probability, so no softmax
//! is applied); with `--attribute-weights` each item also carries the combined `reward`.

use super::error::{ApiError, ApiResult};
use super::metrics::Api;
use super::{AppState, Cut, Shared, conversations, counted, unix_time};
use crate::model::Prompt;
use crate::model::chat_template::Messages;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Deserialize)]
struct PoolingRequest {
    #[serde(default)]
    model: Option<String>,
    /// Texts or token ids; absent when `messages` is sent.
    #[serde(default)]
    input: Option<Value>,
    /// One conversation, rendered with the checkpoint's chat template (vLLM's chat
    /// form of these endpoints).
    #[serde(default)]
    messages: Option<Value>,
    /// Keep only the last N tokens of each input; -1 means the model's context.
    #[serde(default)]
    truncate_prompt_tokens: Option<i64>,
}

/// Which of the two endpoints answers.
#[derive(Clone, Copy)]
enum Kind {
    Classify,
    Pooling,
}

pub async fn classify(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    counted(&state.metrics, Api::VllmClassify, answer(&state, body, Kind::Classify)).await
}

pub async fn pooling(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    counted(&state.metrics, Api::VllmPooling, answer(&state, body, Kind::Pooling)).await
}

/// Request ids, as vLLM numbers its responses.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

async fn answer(state: &AppState, body: Result<Bytes, BytesRejection>, kind: Kind) -> ApiResult {
    let body = state.limits.body(body)?;
    let request: PoolingRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    if let Some(model) = &request.model
        && *model != state.model_name
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("The model `{model}` does not exist.")));
    }
    let context = state.model.config.max_positions;
    let cut = match request.truncate_prompt_tokens {
        None => Cut::Refuse { status: StatusCode::BAD_REQUEST, hint: "set truncate_prompt_tokens" },
        Some(-1) => Cut::KeepLast(context),
        Some(n) if n >= 1 && n as usize <= context => Cut::KeepLast(n as usize),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "truncate_prompt_tokens value ({n}) must be -1 or from 1 to max_model_len ({context})"
            )));
        }
    };
    let input = match (&request.input, &request.messages) {
        (Some(input), None) => parse_input(input)?,
        (None, Some(_)) => Input::Chat(conversations(&body, "messages", true)?),
        (Some(_), Some(_)) => return Err(ApiError::bad_request("send either `input` or `messages`, not both")),
        (None, None) => return Err(ApiError::bad_request("the request has neither `input` nor `messages`")),
    };
    let sequences = match input {
        Input::Chat(conversations) => {
            let prompts: Vec<Prompt> = conversations.iter().map(Prompt::Chat).collect();
            state.tokenize_prompts_cut(&prompts, cut)?
        }
        Input::Texts(texts) => {
            state.limits.check_texts(texts.len())?;
            state.tokenize_cut(&texts, cut)?
        }
        Input::Tokens(sequences) => {
            state.limits.check_texts(sequences.len())?;
            cut_tokens(state, sequences, cut)?
        }
    };
    let prompt_tokens: usize = sequences.iter().map(Vec::len).sum();
    let scores = state.score(sequences).await?;
    let labels = state.model.labels();
    let mut data = Vec::with_capacity(scores.len());
    for (index, row) in scores.iter().enumerate() {
        let mut item = match kind {
            Kind::Classify => {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
                json!({ "index": index, "label": labels[best], "probs": row, "num_classes": row.len() })
            }
            Kind::Pooling => json!({ "index": index, "object": "pooling", "data": row }),
        };
        if state.attribute_weights.is_some() {
            item["reward"] = json!(state.reward(row)?);
        }
        data.push(item);
    }
    let prefix = match kind {
        Kind::Classify => "classify",
        Kind::Pooling => "pool",
    };
    Ok(Json(json!({
        "id": format!("{prefix}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        "object": "list",
        "created": unix_time(),
        "model": state.model_name,
        "data": data,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0, "prompt_tokens_details": null }
    }))
    .into_response())
}

enum Input {
    Chat(Vec<Messages>),
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

/// `"text"`, `["text", ...]`, `[id, ...]` or `[[id, ...], ...]`.
fn parse_input(input: &Value) -> ApiResult<Input> {
    let bad = || {
        ApiError::bad_request(
            "`input` must be a string, a list of strings, or token ids ([id, ...] or [[id, ...], ...])",
        )
    };
    // Numbers that are not token ids are named; anything else is `bad`.
    let token_ids = |values: &[Value]| -> ApiResult<Vec<u32>> {
        values
            .iter()
            .map(|v| match v {
                Value::Number(n) => n.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
                    ApiError::bad_request(format!("`input` holds {n}, which is not a token id (0 to 4294967295)"))
                }),
                _ => Err(bad()),
            })
            .collect()
    };
    match input {
        Value::String(text) => Ok(Input::Texts(vec![text.clone()])),
        Value::Array(items) if items.is_empty() => Err(ApiError::bad_request("`input` is empty")),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            Ok(Input::Texts(items.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect()))
        }
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(Input::Tokens(vec![token_ids(items)?])),
        Value::Array(items) => {
            let rows = items.iter().map(|row| row.as_array().map_or_else(|| Err(bad()), |row| token_ids(row)));
            Ok(Input::Tokens(rows.collect::<ApiResult<Vec<_>>>()?))
        }
        _ => Err(bad()),
    }
}

/// Token ids a client sent: non-empty, inside the vocabulary, fitted as `cut` says.
fn cut_tokens(state: &AppState, mut sequences: Vec<Vec<u32>>, cut: Cut) -> ApiResult<Vec<Vec<u32>>> {
    let context = state.model.config.max_positions;
    state.check_vocab(&sequences)?;
    for (i, ids) in sequences.iter_mut().enumerate() {
        if ids.is_empty() {
            return Err(ApiError::bad_request(format!("input {i} has no tokens")));
        }
        match cut {
            Cut::Refuse { .. } if ids.len() > context => {
                return Err(ApiError::bad_request(format!(
                    "input {i} has {} tokens; this model's context is {context} tokens (set truncate_prompt_tokens)",
                    ids.len()
                )));
            }
            Cut::KeepLast(n) => {
                ids.drain(..ids.len().saturating_sub(n));
            }
            _ => {}
        }
    }
    Ok(sequences)
}
