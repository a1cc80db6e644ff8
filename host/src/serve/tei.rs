//! Hugging Face text-embeddings-inference's `POST /predict`: `inputs` is a text or a list
//! of texts (each optionally in a one-element list); the answer is, per text, a list of
//! `{"score", "label"}` sorted by score. Scores are raw whatever `raw_scores` says (a
//! reward is not a probability); with `--attribute-weights` the list is the one combined
//! reward, labelled `reward`. `truncate` (default false) with `truncation_direction`
//! (`Right`, the default, keeps the start) fits long texts; without it they are a 413.

use super::error::{ApiError, ApiResult};
use super::metrics::Api;
use super::{AppState, Cut, Shared, counted};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct PredictRequest {
    inputs: Value,
    /// Accepted for compatibility: steerlm always returns raw scores.
    #[serde(default)]
    #[allow(dead_code)]
    raw_scores: bool,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    truncation_direction: Direction,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum Direction {
    #[default]
    Right,
    Left,
}

pub async fn predict(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    counted(&state.metrics, Api::TeiPredict, answer(&state, body)).await
}

async fn answer(state: &AppState, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = state.limits.body(body)?;
    let request: PredictRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid request: {e}")))?;
    let (texts, batched) = parse_inputs(&request.inputs)?;
    state.limits.check_texts(texts.len())?;
    let context = state.model.config.max_positions;
    let cut = match (request.truncate, request.truncation_direction) {
        // TEI answers an input over the limit with 413.
        (false, _) => Cut::Refuse { status: StatusCode::PAYLOAD_TOO_LARGE, hint: "or set \"truncate\": true" },
        (true, Direction::Right) => Cut::KeepFirst(context),
        (true, Direction::Left) => Cut::KeepLast(context),
    };
    let sequences = state.tokenize_cut(&texts, cut)?;
    let scores = state.score(sequences).await?;
    let labels = state.model.labels();
    let mut predictions = Vec::with_capacity(scores.len());
    for row in &scores {
        let list: Vec<Value> = if state.attribute_weights.is_some() {
            vec![json!({ "score": state.reward(row)?, "label": "reward" })]
        } else {
            let mut pairs: Vec<(f32, &String)> = row.iter().copied().zip(labels).collect();
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
            pairs.into_iter().map(|(score, label)| json!({ "score": score, "label": label })).collect()
        };
        predictions.push(Value::Array(list));
    }
    let body = if batched { Value::Array(predictions) } else { predictions.swap_remove(0) };
    Ok(Json(body).into_response())
}

/// The texts, and whether they came as a batch (answered with a list of lists).
fn parse_inputs(inputs: &Value) -> ApiResult<(Vec<String>, bool)> {
    let text = |item: &Value| -> ApiResult<String> {
        match item {
            Value::String(text) => Ok(text.clone()),
            Value::Array(one) if one.len() == 1 && one[0].is_string() => {
                Ok(one[0].as_str().unwrap_or_default().to_owned())
            }
            Value::Array(pair) if pair.len() == 2 => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "text pairs are for cross-encoders; a reward model scores one text (a whole conversation) per input",
            )),
            _ => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "`inputs` must be a text or a list of texts")),
        }
    };
    match inputs {
        Value::String(single) => Ok((vec![single.clone()], false)),
        Value::Array(items) if items.is_empty() => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "`inputs` is empty"))
        }
        Value::Array(items) => Ok((items.iter().map(text).collect::<ApiResult<_>>()?, true)),
        _ => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "`inputs` must be a text or a list of texts")),
    }
}
