//! `steerlm serve`: the reward model over HTTP, speaking KServe v2 the way Triton does
//! (so NeMo-Aligner's PyTriton annotation client works unchanged), plus a plain JSON
//! API and Prometheus metrics. Requests are merged by the dynamic batcher.
//!
//! `routes.rs` maps paths to handlers and applies auth and the body limits;
//! `triton.rs` answers the KServe / Triton endpoints (their wire format is
//! `kserve.rs`); `json_api.rs` answers `/v1/score`; `vllm.rs`, `tei.rs` and
//! `openrlhf.rs` answer the endpoints RLHF tools call. All score through [`AppState`].

pub mod auth;
pub mod batcher;
pub mod connections;
pub mod error;
pub mod json_api;
pub mod kserve;
pub mod limits;
pub mod metrics;
pub mod openrlhf;
pub mod routes;
pub mod tei;
pub mod triton;
pub mod vllm;

use crate::model::attribute_weights::{AttributeWeights, scalar_reward};
use crate::model::chat_template::Messages;
use crate::model::{End, Prompt, RewardModel};
use anyhow::{Context, Result};
use auth::ApiKey;
use batcher::{BatchPolicy, Batcher};
use connections::ConnectionLimits;
use error::{ApiError, ApiResult};
use futures::FutureExt;
use limits::RequestLimits;
use metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use steerlm_core::pyvalue::PyValue;

/// How one `serve` listens, batches and limits requests.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address and port to listen on (port 0 picks a free one and prints it).
    pub host: String,
    pub port: u16,
    /// The model's name in `/v2/models/{name}`.
    pub model_name: String,
    /// Require `Authorization: Bearer KEY` on every request but health checks.
    pub api_key: Option<String>,
    pub batching: BatchPolicy,
    pub limits: RequestLimits,
    pub connections: ConnectionLimits,
    /// Combine the attribute scores into one reward (`--attribute-weights`).
    pub attribute_weights: Option<AttributeWeights>,
    /// Print nothing but errors.
    pub quiet: bool,
}

/// Sequences per request the Triton config advertises (at most).
const MAX_BATCH_SIZE: usize = 1024;

/// What every handler shares.
pub struct AppState {
    model_name: String,
    model: Arc<RewardModel>,
    batcher: Batcher,
    metrics: Arc<Metrics>,
    api_key: Option<ApiKey>,
    max_delay: Duration,
    limits: RequestLimits,
    /// Sequences per KServe request: `max_batch_size` in the model's config.
    max_batch_size: usize,
    attribute_weights: Option<AttributeWeights>,
}

type Shared = Arc<AppState>;

/// Checks the settings that need no model (a bad key should not wait for a load).
pub fn check_options(options: &ServeOptions) -> Result<()> {
    options.api_key.as_deref().map(ApiKey::new).transpose()?;
    Ok(())
}

/// Serves `model` until the process is stopped.
pub async fn serve(options: ServeOptions, model: RewardModel) -> Result<()> {
    let api_key = options.api_key.as_deref().map(ApiKey::new).transpose()?;
    if let Some(weights) = &options.attribute_weights {
        weights.check(model.labels())?;
    }
    let model = Arc::new(model);
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        model_name: options.model_name.clone(),
        batcher: Batcher::start(Arc::clone(&model), options.batching, Arc::clone(&metrics)),
        model,
        metrics,
        api_key,
        max_delay: options.batching.max_delay,
        limits: options.limits,
        max_batch_size: MAX_BATCH_SIZE.min(options.limits.max_texts),
        attribute_weights: options.attribute_weights.clone(),
    });
    let app = routes::router(Arc::clone(&state), options.limits.max_body_bytes);
    let address: std::net::SocketAddr = format!("{}:{}", options.host, options.port)
        .parse()
        .with_context(|| format!("{}:{} is not an address to listen on", options.host, options.port))?;
    let listener =
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let bound = listener.local_addr()?;
    if !options.quiet {
        crate::output::print_banner(&format!(
            "serving `{}` ({} {}, on {}) on http://{bound}\n",
            state.model_name,
            state.model.config.labels.len(),
            if state.model.config.labels.len() == 1 { "attribute" } else { "attributes" },
            state.model.device_name()
        ));
    }
    connections::serve(listener, app, options.connections).await.context("the HTTP server stopped")
}

impl AppState {
    /// A request for another model than this server's is a 404.
    fn check_model(&self, name: &str) -> ApiResult<()> {
        if name != self.model_name {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!("unknown model `{name}`; this server has `{}`", self.model_name),
            ));
        }
        Ok(())
    }

    /// Tokenizes texts for scoring, cutting each to the context; a bad text is a 400
    /// naming it.
    fn tokenize(&self, texts: &[String]) -> ApiResult<(Vec<Vec<u32>>, Vec<bool>)> {
        let prompts: Vec<Prompt> = texts.iter().map(|t| Prompt::Text(t)).collect();
        self.tokenize_prompts(&prompts)
    }

    /// [`AppState::tokenize`] for texts or conversations.
    fn tokenize_prompts(&self, prompts: &[Prompt]) -> ApiResult<(Vec<Vec<u32>>, Vec<bool>)> {
        let mut out = (Vec::with_capacity(prompts.len()), Vec::with_capacity(prompts.len()));
        for (i, prompt) in prompts.iter().enumerate() {
            let tokens =
                self.model.tokenize_prompt(*prompt).map_err(|e| ApiError::bad_request(format!("text {i}: {e:#}")))?;
            out.0.push(tokens.ids);
            out.1.push(tokens.exceeded);
        }
        Ok(out)
    }

    /// Tokenizes texts and fits each to the context as `cut` says; a text that does
    /// not fit and may not be cut is a 400 naming it and the limit.
    fn tokenize_cut(&self, texts: &[String], cut: Cut) -> ApiResult<Vec<Vec<u32>>> {
        let prompts: Vec<Prompt> = texts.iter().map(|t| Prompt::Text(t)).collect();
        self.tokenize_prompts_cut(&prompts, cut)
    }

    /// [`AppState::tokenize_cut`] for texts or conversations.
    fn tokenize_prompts_cut(&self, prompts: &[Prompt], cut: Cut) -> ApiResult<Vec<Vec<u32>>> {
        let context = self.model.config.max_positions;
        let mut sequences = Vec::with_capacity(prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            let (keep, end) = match cut {
                Cut::Refuse { .. } => (context, End::First),
                Cut::KeepFirst(n) => (n.min(context), End::First),
                Cut::KeepLast(n) => (n.min(context), End::Last),
            };
            let tokens = self
                .model
                .tokenize_prompt_end(*prompt, keep, end)
                .map_err(|e| ApiError::bad_request(format!("text {i}: {e:#}")))?;
            if let Cut::Refuse { status, hint } = cut
                && tokens.exceeded
            {
                return Err(ApiError::new(
                    status,
                    format!(
                        "text {i} has more than {context} tokens; this model's context is {context} tokens ({hint})"
                    ),
                ));
            }
            sequences.push(tokens.ids);
        }
        Ok(sequences)
    }

    /// Token ids a client sent must name tokens of this model's vocabulary.
    fn check_vocab(&self, sequences: &[Vec<u32>]) -> ApiResult<()> {
        let vocab = self.model.config.vocab_size;
        match sequences.iter().flatten().find(|&&t| t as usize >= vocab) {
            Some(bad) => Err(ApiError::bad_request(format!("token id {bad} is outside the vocabulary ({vocab} ids)"))),
            None => Ok(()),
        }
    }

    /// The one reward of a row of scores (see [`scalar_reward`]); a 400 when the model
    /// has several heads and the server no `--attribute-weights`.
    /// A reward past f32's range (the server's weights times these scores) is a 500.
    fn reward(&self, scores: &[f32]) -> ApiResult<f32> {
        let reward = scalar_reward(self.attribute_weights.as_ref(), scores).ok_or_else(|| {
            ApiError::bad_request(format!(
                "this model scores {} attributes ({}): start `steerlm serve` with --attribute-weights to combine them into one reward",
                scores.len(),
                self.model.labels().join(", ")
            ))
        })?;
        reward.map_err(|e| ApiError::internal(format!("{e:#}")))
    }

    /// Scores token sequences through the batcher; a non-finite score is a 500.
    async fn score(&self, sequences: Vec<Vec<u32>>) -> ApiResult<Vec<Vec<f32>>> {
        let scores = self.batcher.score(sequences).await.map_err(|e| ApiError::internal(format!("{e:#}")))?;
        for row in &scores {
            crate::model::check_finite(row).map_err(|e| ApiError::internal(e.to_string()))?;
        }
        Ok(scores)
    }
}

/// The conversations in field `field` of a JSON body: one (`[{"role", ...}, ...]`) when
/// `one`, else a list of them. The body is read again with keys in their sent order,
/// which a template's `tojson` shows.
fn conversations(body: &[u8], field: &str, one: bool) -> ApiResult<Vec<Messages>> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    let value = PyValue::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Some(field_value) = value.get(field) else {
        return Err(ApiError::bad_request(format!("the request has no `{field}`")));
    };
    let lists: Vec<&PyValue> = if one {
        vec![field_value]
    } else {
        field_value
            .as_array()
            .ok_or_else(|| ApiError::bad_request(format!("`{field}` must be a list of conversations")))?
            .iter()
            .collect()
    };
    lists
        .into_iter()
        .enumerate()
        .map(|(i, messages)| {
            Messages::from_py(messages).map_err(|e| {
                let which = if one { String::new() } else { format!(" {i}") };
                ApiError::bad_request(format!("`{field}`{which}: {e:#}"))
            })
        })
        .collect()
}

/// How a text longer than asked is made to fit.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Not at all: a text over the context is an error with this status, naming the
    /// request field that would have cut it.
    Refuse { status: axum::http::StatusCode, hint: &'static str },
    /// Keep the first N tokens (at most the context).
    KeepFirst(usize),
    /// Keep the last N tokens (at most the context).
    KeepLast(usize),
}

/// Seconds since the Unix epoch, for OpenAI-style `created` fields.
fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Answers an inference request, counted in the metrics however it ends: answered,
/// failed, cancelled by the client hanging up (the future is dropped), or panicked
/// (answered 500, the server goes on).
async fn counted(
    metrics: &Metrics,
    api: metrics::Api,
    handler: impl Future<Output = ApiResult>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let request = metrics.start_request(api);
    let response = std::panic::AssertUnwindSafe(handler)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(ApiError::internal("internal error: the request handler panicked")))
        .unwrap_or_else(IntoResponse::into_response);
    request.answered(response.status().is_success());
    response
}
