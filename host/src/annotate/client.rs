//! Where annotation scores come from: KServe v2 servers over HTTP (round-robin over
//! several), or the model in this process.

use crate::model::RewardModel;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub enum Scorer {
    Remote { client: reqwest::Client, urls: Vec<String>, next: AtomicUsize },
    Local(Arc<RewardModel>),
}

impl Scorer {
    /// `servers` are base URLs such as `http://127.0.0.1:5555`.
    pub fn remote(servers: &[String], model_name: &str) -> Result<Self> {
        let urls = servers
            .iter()
            .map(|s| {
                let base = if s.contains("://") { s.clone() } else { format!("http://{s}") };
                format!("{}/v2/models/{model_name}/infer", base.trim_end_matches('/'))
            })
            .collect();
        let client = reqwest::Client::builder().build().context("starting the HTTP client")?;
        Ok(Scorer::Remote { client, urls, next: AtomicUsize::new(0) })
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

    /// Scores of each text.
    pub async fn score(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        match self {
            Scorer::Local(model) => {
                let model = Arc::clone(model);
                tokio::task::spawn_blocking(move || {
                    let mut sequences = Vec::with_capacity(texts.len());
                    for text in &texts {
                        let tokens = model.tokenize(text)?;
                        if tokens.ids.is_empty() {
                            bail!("a labeled prefix has no tokens");
                        }
                        sequences.push(tokens.ids);
                    }
                    model.score(&sequences)
                })
                .await
                .map_err(|e| anyhow!("the model panicked: {e}"))?
            }
            Scorer::Remote { client, urls, next } => {
                let url = &urls[next.fetch_add(1, Ordering::Relaxed) % urls.len()];
                let request = json!({
                    "inputs": [{ "name": "sentences", "datatype": "BYTES", "shape": [texts.len(), 1], "data": texts }],
                    "outputs": [{ "name": "rewards" }, { "name": "exceeded" }]
                });
                let mut last_error = None;
                // Transient failures (connection resets, 5xx) are retried a few times.
                for attempt in 0..4u32 {
                    if attempt > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                    }
                    let response = match client
                        .post(url)
                        .body(request.to_string())
                        .header("content-type", "application/json")
                        .send()
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => {
                            last_error = Some(anyhow!("{url}: {e}"));
                            continue;
                        }
                    };
                    let status = response.status();
                    let body = response.bytes().await.with_context(|| format!("{url}: reading the response"))?;
                    if status.is_server_error() {
                        last_error = Some(anyhow!("{url}: {status}: {}", String::from_utf8_lossy(&body)));
                        continue;
                    }
                    if !status.is_success() {
                        bail!("{url}: {status}: {}", String::from_utf8_lossy(&body));
                    }
                    return parse_rewards(&body, texts.len()).with_context(|| format!("{url}: unexpected response"));
                }
                Err(last_error.unwrap_or_else(|| anyhow!("{url}: no answer")))
            }
        }
    }
}

/// `rewards` (FP32 [n, L]) from a JSON inference response.
fn parse_rewards(body: &[u8], rows: usize) -> Result<Vec<Vec<f32>>> {
    let response: Value = serde_json::from_slice(body).context("not JSON")?;
    let outputs = response.get("outputs").and_then(Value::as_array).ok_or_else(|| anyhow!("no `outputs`"))?;
    if !outputs.iter().any(|o| o.get("name").and_then(Value::as_str) == Some("exceeded")) {
        bail!("no `exceeded` output (the reference annotator needs it)");
    }
    let rewards = outputs
        .iter()
        .find(|o| o.get("name").and_then(Value::as_str) == Some("rewards"))
        .ok_or_else(|| anyhow!("no `rewards` output"))?;
    let data = rewards.get("data").and_then(Value::as_array).ok_or_else(|| anyhow!("`rewards` has no JSON data"))?;
    if rows == 0 || data.len() % rows != 0 {
        bail!("{} reward values for {rows} texts", data.len());
    }
    let per_row = data.len() / rows;
    // JSON cannot carry NaN or Infinity; a null stands for one.
    let values: Vec<f32> = data.iter().map(|v| v.as_f64().map_or(f32::NAN, |f| f as f32)).collect();
    Ok(values.chunks_exact(per_row).map(<[f32]>::to_vec).collect())
}
