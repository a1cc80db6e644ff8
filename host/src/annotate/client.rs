//! Where annotation scores come from: KServe v2 / Triton servers over HTTP (round-robin
//! over several), or the model in this process.

use super::triton::{self, ModelInfo};
use crate::model::RewardModel;
use anyhow::{Context, Result, anyhow, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

pub enum Scorer {
    Remote {
        client: reqwest::Client,
        models: Vec<ModelInfo>,
        next: AtomicUsize,
        /// Texts the servers said were cut to the model's context.
        exceeded: AtomicU64,
    },
    Local(Arc<RewardModel>),
}

impl Scorer {
    /// Connects to every server in `servers` (base URLs such as `http://127.0.0.1:5555`)
    /// and checks that each serves `model_name` as a reward model, before any work.
    pub async fn remote(servers: &[String], model_name: &str, timeout: Duration) -> Result<Self> {
        // Idle connections are dropped before servers close them (steerlm serve's
        // --header-read-timeout is 30 s), so a request rarely meets a closing socket.
        // A server that stops answering fails the request instead of hanging the run.
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(30).min(timeout))
            .timeout(timeout)
            .build()
            .context("starting the HTTP client")?;
        let mut models = Vec::with_capacity(servers.len());
        for server in servers {
            let base = if server.contains("://") { server.clone() } else { format!("http://{server}") };
            models.push(triton::probe(&client, base.trim_end_matches('/'), model_name).await?);
        }
        Ok(Scorer::Remote { client, models, next: AtomicUsize::new(0), exceeded: AtomicU64::new(0) })
    }

    /// Attribute names for `count` scores: the model's own names in-process; over the
    /// network the reference's order (9 SteerLM attributes, or the 5 HelpSteer ones).
    pub fn names(&self, count: usize) -> Result<Vec<String>> {
        if let Scorer::Local(model) = self {
            return Ok(model.config.labels.clone());
        }
        match count {
            9 => Ok(steerlm_core::ALL_ATTRIBUTES.iter().map(|s| s.to_string()).collect()),
            5 => Ok(steerlm_core::attributes::HELPSTEER_ATTRIBUTES.iter().map(|s| s.to_string()).collect()),
            n => bail!("the server returned {n} scores per text; expected 9 (SteerLM) or 5 (HelpSteer)"),
        }
    }

    /// How many texts the servers reported as longer than the model's context.
    pub fn exceeded(&self) -> u64 {
        match self {
            Scorer::Remote { exceeded, .. } => exceeded.load(Ordering::Relaxed),
            Scorer::Local(_) => 0,
        }
    }

    /// Scores of each text.
    pub async fn score(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        match self {
            Scorer::Local(model) => {
                let model = Arc::clone(model);
                tokio::task::spawn_blocking(move || model.score_texts(&texts))
                    .await
                    .map_err(|e| anyhow!("the model panicked: {e}"))?
            }
            Scorer::Remote { client, models, next, exceeded } => {
                let model = &models[next.fetch_add(1, Ordering::Relaxed) % models.len()];
                // A record with more labeled turns than the model takes at once goes in parts.
                let mut rows = Vec::with_capacity(texts.len());
                for part in texts.chunks(model.max_texts.unwrap_or(usize::MAX)) {
                    let rewards = infer(client, model, part).await?;
                    if let Some(flags) = &rewards.exceeded {
                        exceeded.fetch_add(flags.iter().filter(|&&f| f).count() as u64, Ordering::Relaxed);
                    }
                    rows.extend(rewards.rows);
                }
                Ok(rows)
            }
        }
    }
}

/// The most a reward server's answer may hold: far more than the rewards of any request
/// annotate sends, so only a broken or hostile server reaches it.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Reads a response body, refusing one longer than `limit` before it is all in memory.
pub(super) async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        bail!("the response is {} bytes, over the limit of {limit}", response.content_length().unwrap_or(0));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            bail!("the response is longer than the limit of {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One inference request; transient failures (connection resets, 5xx) are retried a
/// few times with backoff, anything else is an error at once.
async fn infer(client: &reqwest::Client, model: &ModelInfo, texts: &[String]) -> Result<triton::Rewards> {
    let url = &model.infer_url;
    let (body, header_length) = triton::infer_request(model, texts);
    let body = bytes::Bytes::from(body);
    let mut last_error = None;
    for attempt in 0..4u32 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
        }
        let sent = client
            .post(url)
            .body(body.clone())
            .header("content-type", "application/octet-stream")
            .header(triton::HEADER_LENGTH, header_length)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                last_error = Some(anyhow!("{url}: {e}"));
                continue;
            }
        };
        let status = response.status();
        let response_header_length = response
            .headers()
            .get(triton::HEADER_LENGTH)
            .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()))
            .map(|n| n.ok_or_else(|| anyhow!("{url}: {} is not a number", triton::HEADER_LENGTH)))
            .transpose()?;
        let body =
            read_bounded(response, MAX_RESPONSE_BYTES).await.with_context(|| format!("{url}: reading the response"))?;
        if status.is_server_error() {
            last_error = Some(anyhow!("{url}: {status}: {}", triton::server_message(&body)));
            continue;
        }
        if !status.is_success() {
            bail!("{url}: {status}: {}", triton::server_message(&body));
        }
        return triton::parse_response(&body, response_header_length, texts.len())
            .with_context(|| format!("{url}: unexpected response"));
    }
    Err(last_error.unwrap_or_else(|| anyhow!("{url}: no answer")))
}
