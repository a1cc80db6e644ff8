//! The client side of the KServe v2 / Triton HTTP protocol, for a reward model.
//!
//! Before the first request it asks the server what the model is (`/v2/models/{name}`
//! and `/config`), so it requests only outputs the model declares: NeMo-Aligner's own
//! reward server (PyTriton, `reward_server.py`) has `rewards` and no `exceeded`, and
//! Triton refuses a request that names an output the model lacks.
//!
//! Requests carry `sentences` as binary BYTES (the binary tensor extension) and ask for
//! binary outputs; responses are parsed by their `Inference-Header-Content-Length` when
//! present, as JSON otherwise, so any conforming server works.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

/// The HTTP header that splits a body into its JSON header and binary tensors.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// What the client learned about the model from its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// `…/v2/models/{name}/infer`.
    pub infer_url: String,
    /// The shape of `sentences` for one text, without the leading text count: `[1]` for
    /// a batching model (metadata shape `[-1, -1]`), `[]` for `[-1]`.
    pub sentence_dims: Vec<usize>,
    /// Whether the model declares an `exceeded` output (steerlm serve does; NeMo's does not).
    pub has_exceeded: bool,
    /// Most texts one request may carry (the config's `max_batch_size`; `None`: no limit
    /// known). A record with more labeled turns is sent in several requests.
    pub max_texts: Option<usize>,
}

/// Rewards for each text, and which texts were cut to the model's context (when the
/// model says so).
#[derive(Debug, PartialEq)]
pub struct Rewards {
    pub rows: Vec<Vec<f32>>,
    pub exceeded: Option<Vec<bool>>,
}

/// Asks the server at `base` (e.g. `http://10.0.0.5:5555`) what `model` is, and checks
/// that it can score texts: a `sentences` input and a `rewards` output.
pub async fn probe(client: &reqwest::Client, base: &str, model: &str) -> Result<ModelInfo> {
    let model_url = format!("{base}/v2/models/{model}");
    let response = client.get(&model_url).send().await.map_err(|e| {
        if e.is_timeout() {
            anyhow!("the reward server at {base} did not answer within --request-timeout")
        } else {
            anyhow!(e)
                .context(format!("cannot reach the reward server at {base} (is it running, and is the address right?)"))
        }
    })?;
    let status = response.status();
    let body = super::client::read_bounded(response, 1 << 20)
        .await
        .with_context(|| format!("{model_url}: reading the model metadata"))?;
    if !status.is_success() {
        bail!(
            "the reward server at {base} has no model `{model}` ({status}: {}); name the served model with --model_name",
            server_message(&body)
        );
    }
    let metadata: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{model_url}: the model metadata is not JSON ({})", server_message(&body)))?;
    let tensors = |key: &str| metadata.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    let named =
        |list: &[Value], name: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(name)).cloned();
    let (inputs, outputs) = (tensors("inputs"), tensors("outputs"));
    let Some(sentences) = named(&inputs, "sentences") else {
        bail!("model `{model}` at {base} has no `sentences` input (it has {}): it cannot score texts", names(&inputs));
    };
    let Some(rewards) = named(&outputs, "rewards") else {
        bail!("model `{model}` at {base} has no `rewards` output (it has {}): is it a reward model?", names(&outputs));
    };
    if let Some(datatype) = rewards.get("datatype").and_then(Value::as_str)
        && !matches!(datatype, "FP32" | "FP64" | "FP16" | "BF16")
    {
        bail!("model `{model}` at {base}: `rewards` is {datatype}; expected floating-point rewards");
    }
    let rank = sentences.get("shape").and_then(Value::as_array).map_or(2, Vec::len);
    if rank == 0 {
        bail!("model `{model}` at {base}: `sentences` is a scalar; expected a tensor of texts");
    }
    Ok(ModelInfo {
        infer_url: format!("{model_url}/infer"),
        sentence_dims: vec![1; rank - 1],
        has_exceeded: named(&outputs, "exceeded").is_some(),
        max_texts: max_batch_size(client, &model_url).await,
    })
}

/// The `max_batch_size` of the model's Triton config, when the server has one (the
/// configuration extension is optional) and it limits the batch (0 means it does not).
async fn max_batch_size(client: &reqwest::Client, model_url: &str) -> Option<usize> {
    let response = client.get(format!("{model_url}/config")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = super::client::read_bounded(response, 1 << 20).await.ok()?;
    let config: Value = serde_json::from_slice(&body).ok()?;
    let size = config.get("max_batch_size").and_then(Value::as_u64)?;
    usize::try_from(size).ok().filter(|&n| n > 0)
}

/// The body of an inference request for `texts`, and the length of its JSON header.
pub fn infer_request(model: &ModelInfo, texts: &[String]) -> (Vec<u8>, usize) {
    let mut binary = Vec::with_capacity(texts.iter().map(|t| t.len() + 4).sum());
    for text in texts {
        // Triton's BYTES encoding: each element is a little-endian u32 length, then its bytes.
        binary.extend_from_slice(&(text.len() as u32).to_le_bytes());
        binary.extend_from_slice(text.as_bytes());
    }
    let mut shape = vec![texts.len()];
    shape.extend_from_slice(&model.sentence_dims);
    let mut outputs = vec![json!({ "name": "rewards", "parameters": { "binary_data": true } })];
    if model.has_exceeded {
        outputs.push(json!({ "name": "exceeded", "parameters": { "binary_data": true } }));
    }
    let header = json!({
        "inputs": [{ "name": "sentences", "datatype": "BYTES", "shape": shape,
                     "parameters": { "binary_data_size": binary.len() } }],
        "outputs": outputs,
    });
    let mut body = serde_json::to_vec(&header).expect("JSON values serialize");
    let header_length = body.len();
    body.extend_from_slice(&binary);
    (body, header_length)
}

/// Reads `rewards` (and `exceeded`, when present) for `texts` texts from an inference
/// response, binary or JSON.
pub fn parse_response(body: &[u8], header_length: Option<usize>, texts: usize) -> Result<Rewards> {
    let (header, mut binary) = match header_length {
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => bail!("{HEADER_LENGTH} is {n}, but the body has only {} bytes", body.len()),
        None => (body, &[][..]),
    };
    let header: Value = serde_json::from_slice(header).map_err(|e| {
        anyhow!("the response is not KServe v2 JSON ({e}): {}", server_message(&body[..header.len().min(200)]))
    })?;
    let outputs =
        header.get("outputs").and_then(Value::as_array).ok_or_else(|| anyhow!("the response has no `outputs`"))?;
    let (mut rewards, mut exceeded) = (None, None);
    // Binary tensors follow the header in the order of `outputs`.
    for output in outputs {
        let name = output.get("name").and_then(Value::as_str).unwrap_or("");
        let datatype = output.get("datatype").and_then(Value::as_str).unwrap_or("");
        let binary_size = output.get("parameters").and_then(|p| p.get("binary_data_size")).and_then(Value::as_u64);
        let wanted = matches!(name, "rewards" | "exceeded");
        let values = match binary_size {
            Some(size) => {
                let size = usize::try_from(size).ok().filter(|&s| s <= binary.len()).ok_or_else(|| {
                    anyhow!("output `{name}` announces {size} bytes of binary data; {} are left", binary.len())
                })?;
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                // Other outputs are stepped over, whatever their type.
                if !wanted {
                    continue;
                }
                decode_binary(mine, datatype).with_context(|| format!("output `{name}`"))?
            }
            None if !wanted => continue,
            None => decode_json(output).with_context(|| format!("output `{name}`"))?,
        };
        match name {
            "rewards" => rewards = Some(values),
            "exceeded" => exceeded = Some(values),
            _ => {}
        }
    }
    let rewards = rewards.ok_or_else(|| anyhow!("the response has no `rewards` output"))?;
    if texts == 0 || rewards.is_empty() || rewards.len() % texts != 0 {
        bail!("{} reward values for {texts} texts", rewards.len());
    }
    let per_text = rewards.len() / texts;
    let rows = rewards.chunks_exact(per_text).map(|row| row.iter().map(|&v| v as f32).collect()).collect();
    let exceeded = exceeded.map(|flags| flags.iter().map(|&f| f != 0.0).collect());
    Ok(Rewards { rows, exceeded })
}

/// Numbers of a binary output tensor (little-endian, as the extension specifies).
fn decode_binary(bytes: &[u8], datatype: &str) -> Result<Vec<f64>> {
    fn each<const N: usize>(bytes: &[u8], datatype: &str, f: impl Fn([u8; N]) -> f64) -> Result<Vec<f64>> {
        if !bytes.len().is_multiple_of(N) {
            bail!("{} bytes is not a whole number of {datatype} values", bytes.len());
        }
        Ok(bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks of N bytes"))).collect())
    }
    match datatype {
        "FP32" => each(bytes, datatype, |b| f32::from_le_bytes(b) as f64),
        "FP64" => each(bytes, datatype, f64::from_le_bytes),
        "FP16" => each(bytes, datatype, |b| half::f16::from_le_bytes(b).to_f64()),
        "BF16" => each(bytes, datatype, |b| half::bf16::from_le_bytes(b).to_f64()),
        "INT32" => each(bytes, datatype, |b| i32::from_le_bytes(b) as f64),
        "INT64" => each(bytes, datatype, |b| i64::from_le_bytes(b) as f64),
        "BOOL" | "INT8" | "UINT8" => each(bytes, datatype, |b: [u8; 1]| b[0] as f64),
        other => bail!("cannot read {other} data"),
    }
}

/// Numbers of a JSON output tensor, nested or flat. JSON cannot carry NaN or Infinity,
/// so a null (or anything not a number) stands for one: it fails the finite check later.
fn decode_json(output: &Value) -> Result<Vec<f64>> {
    fn flatten(value: &Value, out: &mut Vec<f64>) {
        match value {
            Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
            Value::Bool(b) => out.push(f64::from(u8::from(*b))),
            other => out.push(other.as_f64().unwrap_or(f64::NAN)),
        }
    }
    let data = output.get("data").ok_or_else(|| anyhow!("no `data` and no binary data"))?;
    let mut values = Vec::new();
    flatten(data, &mut values);
    Ok(values)
}

fn names(tensors: &[Value]) -> String {
    let names: Vec<&str> = tensors.iter().filter_map(|t| t.get("name").and_then(Value::as_str)).collect();
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

/// A server's error body, short: Triton's `{"error": "..."}` message, or the text.
pub fn server_message(body: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body)
        && let Some(Value::String(message)) = map.get("error")
    {
        return message.clone();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > 300 {
        format!("{}…", text.chars().take(300).collect::<String>())
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(has_exceeded: bool) -> ModelInfo {
        ModelInfo { infer_url: String::new(), sentence_dims: vec![1], has_exceeded, max_texts: None }
    }

    #[test]
    fn requests_send_binary_bytes_and_ask_only_for_declared_outputs() {
        let texts = vec!["héllo".to_owned(), String::new()];
        let (body, n) = infer_request(&model(false), &texts);
        let header: Value = serde_json::from_slice(&body[..n]).unwrap();
        assert_eq!(header["inputs"][0]["shape"], json!([2, 1]));
        assert_eq!(header["outputs"], json!([{ "name": "rewards", "parameters": { "binary_data": true } }]));
        assert_eq!(&body[n..], b"\x06\0\0\0h\xc3\xa9llo\0\0\0\0");
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], json!(14));
        let (body, n) = infer_request(&model(true), &texts);
        let header: Value = serde_json::from_slice(&body[..n]).unwrap();
        assert_eq!(header["outputs"][1]["name"], "exceeded");
    }

    #[test]
    fn binary_and_json_responses_give_the_same_rewards() {
        let values = [1.5f32, -0.25, 3.0, 4.5];
        let binary: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = json!({ "outputs": [
            { "name": "exceeded", "datatype": "BOOL", "shape": [2, 1], "parameters": { "binary_data_size": 2 } },
            { "name": "extra", "datatype": "BYTES", "shape": [1], "parameters": { "binary_data_size": 5 } },
            { "name": "rewards", "datatype": "FP32", "shape": [2, 2], "parameters": { "binary_data_size": 16 } }
        ]});
        let mut body = serde_json::to_vec(&header).unwrap();
        let n = body.len();
        body.extend_from_slice(&[0, 1]);
        body.extend_from_slice(b"\x01\0\0\0x");
        body.extend_from_slice(&binary);
        let from_binary = parse_response(&body, Some(n), 2).unwrap();
        let json_body = json!({ "outputs": [
            { "name": "rewards", "datatype": "FP32", "shape": [2, 2], "data": [[1.5, -0.25], [3.0, 4.5]] }
        ]});
        let from_json = parse_response(&serde_json::to_vec(&json_body).unwrap(), None, 2).unwrap();
        assert_eq!(from_binary.rows, vec![vec![1.5, -0.25], vec![3.0, 4.5]]);
        assert_eq!(from_binary.exceeded, Some(vec![false, true]));
        assert_eq!(from_json.rows, from_binary.rows);
        assert_eq!(from_json.exceeded, None);
    }

    #[test]
    fn malformed_responses_are_errors_not_panics() {
        let header = br#"{"outputs":[{"name":"rewards","datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[0; 4]);
        let e = parse_response(&body, Some(header.len()), 1).unwrap_err();
        assert!(format!("{e:#}").contains("announces 8 bytes"), "{e:#}");
        assert!(parse_response(b"{}", Some(99), 1).is_err());
        assert!(parse_response(b"<html>", None, 1).unwrap_err().to_string().contains("not KServe v2 JSON"));
        let three = br#"{"outputs":[{"name":"rewards","data":[1,2,3]}]}"#;
        assert!(parse_response(three, None, 2).unwrap_err().to_string().contains("3 reward values for 2 texts"));
        assert!(parse_response(br#"{"outputs":[]}"#, None, 1).unwrap_err().to_string().contains("no `rewards`"));
    }

    #[test]
    fn server_messages_are_short() {
        assert_eq!(
            server_message(br#"{"error":"Request for unknown model: 'x' is not found"}"#),
            "Request for unknown model: 'x' is not found"
        );
        assert_eq!(server_message(&[b'a'; 400]).chars().count(), 301);
    }
}
