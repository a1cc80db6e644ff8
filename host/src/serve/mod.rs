//! `steerlm serve`: the reward model over HTTP, speaking KServe v2 the way Triton does
//! (so NeMo-Aligner's PyTriton annotation client works unchanged), plus a plain JSON
//! API and Prometheus metrics. Requests are merged by the dynamic batcher.

pub mod auth;
pub mod batcher;
pub mod connections;
pub mod kserve;
pub mod limits;
pub mod metrics;

use crate::model::{Device, LoadOptions, Precision, RewardModel};
use anyhow::{Context, Result};
use auth::ApiKey;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use batcher::{BatchPolicy, Batcher};
use clap::Args;
use connections::ConnectionLimits;
use futures::FutureExt;
use limits::RequestLimits;
use metrics::Metrics;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Hugging Face checkpoint folder of the reward model.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, default_value_t = 5555)]
    pub port: u16,
    /// The model's name in /v2/models/{name}.
    #[arg(long, alias = "model_name", default_value = "reward_model")]
    pub model_name: String,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Arithmetic of the wgpu path: `auto` uses tensor cores (f16 inputs, f32
    /// accumulation) when the adapter has them, `f32` is the exact path.
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    pub precision: Precision,
    /// Prepend the BOS token (the reference server adds none).
    #[arg(long)]
    pub add_bos: bool,
    /// Most tokens in one batch. Requests are split into batches of at most this many
    /// tokens, taken in turn from every waiting request.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub max_batch_tokens: usize,
    /// How long a request waits for others to batch with, in milliseconds.
    #[arg(long, default_value_t = 2.0, value_name = "MS")]
    pub max_queue_delay_ms: f64,
    /// Run every request on its own (no dynamic batching).
    #[arg(long)]
    pub no_dynamic_batching: bool,
    /// Require `Authorization: Bearer KEY` on every request but health checks.
    #[arg(long, env = "STEERLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body, in MiB (413 past it).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub max_body_mb: usize,
    /// Most texts (or labeled turns of records) in one request (413 past it; KServe
    /// requests are also held to the max_batch_size of 1024 their config advertises).
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_request_texts: u64,
    /// Most connections served at once; more wait until one closes.
    #[arg(long, default_value_t = 512, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Seconds a client has to send a request's headers (and an idle keep-alive
    /// connection stays open) before the connection is closed.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout: u64,
    /// Seconds a client has, once its headers are in, to send the whole body (408 past
    /// it), so bodies that trickle cannot hold connections.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout: u64,
}

/// Sequences per request the Triton config advertises (at most).
const MAX_BATCH_SIZE: usize = 1024;

struct AppState {
    model_name: String,
    model: Arc<RewardModel>,
    batcher: Batcher,
    metrics: Arc<Metrics>,
    api_key: Option<ApiKey>,
    max_delay: Duration,
    limits: RequestLimits,
    /// Sequences per KServe request: `max_batch_size` in the model's config.
    max_batch_size: usize,
}

type Shared = Arc<AppState>;

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub fn run(args: &ServeArgs, quiet: bool) -> Result<()> {
    // Settings first: a bad key should not wait for a model to load.
    let api_key = args.api_key.as_deref().map(ApiKey::new).transpose()?;
    let model = RewardModel::load(
        &args.model,
        LoadOptions { device: args.device, add_bos: args.add_bos, precision: args.precision },
    )
    .with_context(|| format!("loading the model in {}", args.model.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args.clone(), Arc::new(model), api_key, quiet))
}

async fn serve(args: ServeArgs, model: Arc<RewardModel>, api_key: Option<ApiKey>, quiet: bool) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let policy = BatchPolicy {
        max_tokens: args.max_batch_tokens.max(1),
        max_delay: Duration::from_secs_f64(args.max_queue_delay_ms.max(0.0) / 1000.0),
        enabled: !args.no_dynamic_batching,
    };
    let max_texts = usize::try_from(args.max_request_texts).unwrap_or(usize::MAX);
    let limits = RequestLimits {
        max_texts,
        max_body_bytes: args.max_body_mb << 20,
        body_read_timeout: Duration::from_secs(args.body_read_timeout),
    };
    let state = Arc::new(AppState {
        model_name: args.model_name.clone(),
        batcher: Batcher::start(Arc::clone(&model), policy, Arc::clone(&metrics)),
        model,
        metrics,
        api_key,
        max_delay: policy.max_delay,
        limits,
        max_batch_size: MAX_BATCH_SIZE.min(max_texts),
    });
    let app = router(Arc::clone(&state), limits.max_body_bytes);
    let address: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("{}:{} is not an address to listen on", args.host, args.port))?;
    let listener =
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let bound = listener.local_addr()?;
    if !quiet {
        println!(
            "serving {} ({}) on http://{bound} as `{}`",
            state.model.config.labels.len(),
            state.model.device_name(),
            state.model_name
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let connection_limits = ConnectionLimits {
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
    };
    connections::serve(listener, app, connection_limits).await.context("the HTTP server stopped")
}

fn router(state: Shared, max_body: usize) -> Router {
    let model_routes = |base: &str| {
        Router::new()
            .route(&format!("{base}"), get(model_metadata))
            .route(&format!("{base}/ready"), get(model_ready))
            .route(&format!("{base}/config"), get(model_config))
            .route(&format!("{base}/infer"), post(infer))
    };
    let protected = Router::new()
        .route("/v2", get(server_metadata))
        .merge(model_routes("/v2/models/{name}"))
        .merge(model_routes("/v2/models/{name}/versions/{version}"))
        .route("/v1/score", post(score_json))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), require_key));
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .merge(protected)
        .fallback(|request: Request| async move {
            error(StatusCode::NOT_FOUND, format!("no route for {} {}", request.method(), request.uri().path()))
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), read_body_in_time))
        .with_state(state)
}

/// Reads the whole body within `--body-read-timeout` (408 otherwise) and the body limit
/// (413), before any handler sees the request.
async fn read_body_in_time(State(state): State<Shared>, request: Request, next: Next) -> Response {
    match state.limits.read_body(request).await {
        Ok(request) => next.run(request).await,
        Err(response) => response,
    }
}

async fn require_key(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key
        && !key.accepts(request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes))
    {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong `Authorization: Bearer` key");
    }
    next.run(request).await
}

fn check_model(state: &AppState, name: &str) -> Result<(), Response> {
    if name != state.model_name {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("unknown model `{name}`; this server has `{}`", state.model_name),
        ));
    }
    Ok(())
}

fn model_name_from(path: &std::collections::HashMap<String, String>) -> String {
    path.get("name").cloned().unwrap_or_default()
}

type PathMap = Path<std::collections::HashMap<String, String>>;

async fn server_metadata() -> Json<Value> {
    Json(
        json!({ "name": "steerlm", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data", "model_configuration"] }),
    )
}

async fn model_metadata(State(state): State<Shared>, Path(path): PathMap) -> Response {
    if let Err(e) = check_model(&state, &model_name_from(&path)) {
        return e;
    }
    let labels = state.model.config.labels.len();
    Json(json!({
        "name": state.model_name,
        "versions": ["1"],
        "platform": "steerlm",
        "inputs": [{ "name": "sentences", "datatype": "BYTES", "shape": [-1, 1] }],
        "outputs": [
            { "name": "rewards", "datatype": "FP32", "shape": [-1, labels] },
            { "name": "exceeded", "datatype": "INT32", "shape": [-1, 1] }
        ],
        "parameters": { "attributes": state.model.config.labels }
    }))
    .into_response()
}

async fn model_ready(State(state): State<Shared>, Path(path): PathMap) -> Response {
    match check_model(&state, &model_name_from(&path)) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e,
    }
}

/// Triton's model-configuration JSON, which PyTriton's client reads to learn the
/// inputs, outputs and batching.
async fn model_config(State(state): State<Shared>, Path(path): PathMap) -> Response {
    if let Err(e) = check_model(&state, &model_name_from(&path)) {
        return e;
    }
    let labels = state.model.config.labels.len();
    let kind = if state.model.runs_on_cpu() { "KIND_CPU" } else { "KIND_GPU" };
    Json(json!({
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
    }))
    .into_response()
}

/// Tokenizes texts, cutting each to the context.
fn tokenize_all(model: &RewardModel, texts: &[String]) -> Result<(Vec<Vec<u32>>, Vec<bool>), Response> {
    let mut sequences = Vec::with_capacity(texts.len());
    let mut exceeded = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let tokens = model.tokenize(text).map_err(|e| error(StatusCode::BAD_REQUEST, format!("text {i}: {e:#}")))?;
        if tokens.ids.is_empty() {
            return Err(error(StatusCode::BAD_REQUEST, format!("text {i} has no tokens")));
        }
        exceeded.push(tokens.exceeded);
        sequences.push(tokens.ids);
    }
    Ok((sequences, exceeded))
}

async fn run_model(state: &AppState, sequences: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, Response> {
    let scores =
        state.batcher.score(sequences).await.map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    if scores.iter().flatten().any(|s| !s.is_finite()) {
        return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the model returned a non-finite score"));
    }
    Ok(scores)
}

/// Answers an inference request, counted in the metrics however it ends: answered,
/// failed, cancelled by the client hanging up (the future is dropped), or panicked
/// (answered 500, the server goes on).
async fn counted(metrics: &Metrics, handler: impl Future<Output = Response>) -> Response {
    let request = metrics.start_request();
    let response = std::panic::AssertUnwindSafe(handler)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal error: the request handler panicked"));
    request.answered(response.status().is_success());
    response
}

async fn infer(
    State(state): State<Shared>,
    Path(path): PathMap,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    counted(&state.metrics, infer_inner(&state, &model_name_from(&path), &headers, body)).await
}

async fn infer_inner(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = check_model(state, name) {
        return e;
    }
    let body = match state.limits.body(body) {
        Ok(body) => body,
        Err(e) => return e,
    };
    let header_length =
        match headers.get(kserve::HEADER_LENGTH).map(|v| v.to_str().ok().and_then(|s| s.parse::<usize>().ok())) {
            None => None,
            Some(Some(n)) => Some(n),
            Some(None) => return error(StatusCode::BAD_REQUEST, "Inference-Header-Content-Length is not a number"),
        };
    let (request, inputs) = match kserve::parse_request(&body, header_length) {
        Ok(parsed) => parsed,
        Err(kserve::BadRequest(message)) => return error(StatusCode::BAD_REQUEST, message),
    };
    let rows = match &inputs {
        kserve::Inputs::Sentences(texts) => texts.len(),
        kserve::Inputs::Tokens(sequences) => sequences.len(),
    };
    if rows > state.max_batch_size {
        // Triton answers a batch over max_batch_size with 400.
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{rows} sequences in one request; at most {} (max_batch_size; --max-request-texts)",
                state.max_batch_size
            ),
        );
    }
    let (sequences, exceeded) = match inputs {
        kserve::Inputs::Sentences(texts) => match tokenize_all(&state.model, &texts) {
            Ok(tokenized) => tokenized,
            Err(e) => return e,
        },
        kserve::Inputs::Tokens(mut sequences) => {
            let context = state.model.config.max_positions;
            let vocab = state.model.config.vocab_size;
            if let Some(bad) = sequences.iter().flatten().find(|&&t| t as usize >= vocab) {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("token id {bad} is outside the vocabulary ({vocab} ids)"),
                );
            }
            let exceeded = sequences.iter().map(|s| s.len() > context).collect();
            sequences.iter_mut().for_each(|s| s.truncate(context));
            (sequences, exceeded)
        }
    };
    let scores = match run_model(state, sequences).await {
        Ok(scores) => scores,
        Err(e) => return e,
    };
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
    response
}

/// `POST /v1/score`: `{"texts": [...]}` or `{"records": [SFT records]}`.
async fn score_json(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    counted(&state.metrics, score_json_inner(&state, body)).await
}

async fn score_json_inner(state: &AppState, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match state.limits.body(body) {
        Ok(body) => body,
        Err(e) => return e,
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let labels = state.model.config.labels.clone();
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    if let Some(texts) = request.get("texts") {
        let Some(texts) =
            texts.as_array().and_then(|a| a.iter().map(|t| t.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>())
        else {
            return error(StatusCode::BAD_REQUEST, "`texts` must be an array of strings");
        };
        if let Err(e) = state.limits.check_texts(texts.len()) {
            return e;
        }
        let (sequences, exceeded) = match tokenize_all(&state.model, &texts) {
            Ok(t) => t,
            Err(e) => return e,
        };
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        let scores = match run_model(state, sequences).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let results: Vec<Value> = scores
            .iter()
            .zip(&lengths)
            .zip(&exceeded)
            .map(|((s, n), e)| json!({ "scores": s, "num_tokens": n, "exceeded": e, "label": steerlm_core::labels::encode_scores(&s.iter().map(|&v| v as f64).collect::<Vec<_>>(), Some(&names)).ok() }))
            .collect();
        return Json(json!({ "attributes": labels, "results": results })).into_response();
    }
    let Some(records) = request.get("records").and_then(Value::as_array) else {
        return error(StatusCode::BAD_REQUEST, "send {\"texts\": [...]} or {\"records\": [...]}");
    };
    // Each record's labeled prefixes, scored together.
    let mut texts = Vec::new();
    let mut owners = Vec::new();
    for (r, record) in records.iter().enumerate() {
        let line = record.to_string();
        let parsed = match steerlm_core::record::SftRecord::parse(&line) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("record {r}: {e}")),
        };
        let prefixes = match steerlm_core::template::labeled_prefixes(&parsed, Default::default()) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("record {r}: {e}")),
        };
        let turns: Vec<usize> =
            parsed.conversations.iter().enumerate().filter(|(_, t)| t.label.is_present()).map(|(i, _)| i).collect();
        for (prefix, turn) in prefixes.into_iter().zip(turns) {
            texts.push(prefix);
            owners.push((r, turn));
        }
        if let Err(e) = state.limits.check_texts(texts.len()) {
            return e;
        }
    }
    let (sequences, exceeded) = match tokenize_all(&state.model, &texts) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let scores = if sequences.is_empty() {
        Vec::new()
    } else {
        match run_model(state, sequences).await {
            Ok(s) => s,
            Err(e) => return e,
        }
    };
    let mut out: Vec<Vec<Value>> = vec![Vec::new(); records.len()];
    for (((r, turn), s), e) in owners.into_iter().zip(&scores).zip(&exceeded) {
        let label =
            steerlm_core::labels::encode_scores(&s.iter().map(|&v| v as f64).collect::<Vec<_>>(), Some(&names)).ok();
        out[r].push(json!({ "turn": turn, "scores": s, "label": label, "exceeded": e }));
    }
    let records: Vec<Value> = out.into_iter().map(|turns| json!({ "turns": turns })).collect();
    Json(json!({ "attributes": labels, "records": records })).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
