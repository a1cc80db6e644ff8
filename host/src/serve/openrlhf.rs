//! OpenRLHF's remote reward model, `POST /get_reward`: `{"query": [texts]}` (each a
//! prompt and its response, already formatted) in, `{"rewards": [...]}` out, with the
//! `scores` and `extra_logs` fields its `serve_rm` also returns. Texts longer than the
//! context keep their first tokens, as `serve_rm`'s tokenizer does. The reward is the
//! model's one score, or the attribute scores combined by `--attribute-weights`.

use super::error::{ApiError, ApiResult};
use super::metrics::Api;
use super::{AppState, Cut, Shared, counted};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct RewardRequest {
    query: Vec<String>,
}

pub async fn get_reward(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    counted(&state.metrics, Api::OpenRlhf, answer(&state, body)).await
}

async fn answer(state: &AppState, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = state.limits.body(body)?;
    let request: RewardRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid request ({e}); send {{\"query\": [texts]}}")))?;
    state.limits.check_texts(request.query.len())?;
    let sequences = state.tokenize_cut(&request.query, Cut::KeepFirst(state.model.config.max_positions))?;
    let scores = state.score(sequences).await?;
    let rewards = scores.iter().map(|row| state.reward(row)).collect::<ApiResult<Vec<f32>>>()?;
    Ok(Json(json!({ "rewards": rewards, "scores": rewards, "extra_logs": { "dummy_scores": rewards } }))
        .into_response())
}
