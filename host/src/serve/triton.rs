//! The KServe v2 / Triton endpoints: server and model metadata, readiness, Triton's
//! model configuration (what PyTriton's client reads) and inference.

use super::error::{ApiError, ApiResult};
use super::metrics::Api;
use super::{AppState, Shared, counted, kserve};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The path's parameters: `name`, and `version` where the route has one.
type PathMap = Path<HashMap<String, String>>;

fn model_name(path: &HashMap<String, String>) -> &str {
    path.get("name").map_or("", String::as_str)
}

/// The path's model and, where the route has one, its version: this server's model has
/// version 1 only (as its metadata says).
fn check_path(state: &AppState, path: &HashMap<String, String>) -> ApiResult<()> {
    state.check_model(model_name(path))?;
    match path.get("version") {
        Some(version) if version != "1" => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown version `{version}` of model `{}`; it has version 1", state.model_name),
        )),
        _ => Ok(()),
    }
}

pub async fn server_metadata() -> Json<Value> {
    Json(
        json!({ "name": "steerlm", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data", "model_configuration"] }),
    )
}

pub async fn model_metadata(State(state): State<Shared>, Path(path): PathMap) -> ApiResult<Json<Value>> {
    check_path(&state, &path)?;
    let labels = state.model.config.labels.len();
    Ok(Json(json!({
        "name": state.model_name,
        "versions": ["1"],
        "platform": "steerlm",
        "inputs": [{ "name": "sentences", "datatype": "BYTES", "shape": [-1, 1] }],
        "outputs": [
            { "name": "rewards", "datatype": "FP32", "shape": [-1, labels] },
            { "name": "exceeded", "datatype": "INT32", "shape": [-1, 1] }
        ],
        "parameters": { "attributes": state.model.config.labels }
    })))
}

pub async fn model_ready(State(state): State<Shared>, Path(path): PathMap) -> ApiResult<StatusCode> {
    check_path(&state, &path)?;
    Ok(StatusCode::OK)
}

/// Triton's model-configuration JSON, which PyTriton's client reads to learn the
/// inputs, outputs and batching.
pub async fn model_config(State(state): State<Shared>, Path(path): PathMap) -> ApiResult<Json<Value>> {
    check_path(&state, &path)?;
    let labels = state.model.config.labels.len();
    let kind = match state.model.backend_kind() {
        crate::model::BackendKind::Cpu => "KIND_CPU",
        crate::model::BackendKind::Gpu => "KIND_GPU",
    };
    Ok(Json(json!({
        "name": state.model_name,
        "platform": "",
        "backend": "steerlm",
        "version_policy": { "latest": { "num_versions": 1 } },
        "max_batch_size": state.max_batch_size,
        "input": [{ "name": "sentences", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [-1],
                     "is_shape_tensor": false, "allow_ragged_batch": false, "optional": false }],
        "output": [
            { "name": "rewards", "data_type": "TYPE_FP32", "dims": [labels], "label_filename": "", "is_shape_tensor": false },
            { "name": "exceeded", "data_type": "TYPE_INT32", "dims": [1], "label_filename": "", "is_shape_tensor": false }
        ],
        "dynamic_batching": { "preferred_batch_size": [], "max_queue_delay_microseconds": state.max_delay.as_micros() as u64 },
        "instance_group": [{ "name": state.model_name, "kind": kind, "count": 1 }],
        "parameters": {}
    })))
}

pub async fn infer(
    State(state): State<Shared>,
    Path(path): PathMap,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    counted(&state.metrics, Api::Kserve, infer_inner(&state, &path, &headers, body)).await
}

async fn infer_inner(
    state: &AppState,
    path: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    check_path(state, path)?;
    let body = state.limits.body(body)?;
    if headers.get_all(kserve::HEADER_LENGTH).iter().nth(1).is_some() {
        return Err(ApiError::bad_request("Inference-Header-Content-Length is given more than once"));
    }
    let header_length = match headers.get(kserve::HEADER_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| ApiError::bad_request("Inference-Header-Content-Length is not a number"))?,
        ),
    };
    let (request, inputs) = kserve::parse_request(&body, header_length)?;
    let rows = match &inputs {
        kserve::Inputs::Sentences(texts) => texts.len(),
        kserve::Inputs::Tokens(sequences) => sequences.len(),
    };
    if rows > state.max_batch_size {
        // Triton answers a batch over max_batch_size with 400.
        return Err(ApiError::bad_request(format!(
            "{rows} sequences in one request; at most {} (max_batch_size; --max-request-texts)",
            state.max_batch_size
        )));
    }
    let (sequences, exceeded) = match inputs {
        kserve::Inputs::Sentences(texts) => state.tokenize(&texts)?,
        kserve::Inputs::Tokens(sequences) => cut_to_context(state, sequences)?,
    };
    let scores = state.score(sequences).await?;
    let labels = state.model.config.labels.len();
    let (body, header_length) = kserve::response(&request, &state.model_name, labels, &scores, &exceeded);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    match header_length {
        Some(n) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(kserve::HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok(response)
}

/// Token sequences a client sent: inside the vocabulary, cut to the context (and
/// flagged `exceeded`), as tokenized texts are.
fn cut_to_context(state: &AppState, mut sequences: Vec<Vec<u32>>) -> ApiResult<(Vec<Vec<u32>>, Vec<bool>)> {
    let context = state.model.config.max_positions;
    state.check_vocab(&sequences)?;
    let exceeded = sequences.iter().map(|s| s.len() > context).collect();
    sequences.iter_mut().for_each(|s| s.truncate(context));
    Ok((sequences, exceeded))
}
