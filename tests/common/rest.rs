//! A `steerlm serve` on the CPU for JSON-API tests, and the helpers to call it and to
//! compare the scores it returns with goldens.

use super::server::{self, Server};
use super::steerlm_command;
use serde_json::Value;
use std::path::Path;

/// `steerlm serve --model MODEL --device cpu --port 0 EXTRA...`, without an API key.
pub fn serve_model(model: &Path, extra: &[&str]) -> Server {
    let mut command = steerlm_command(&["serve", "--model", model.to_str().unwrap(), "--device", "cpu", "--port", "0"]);
    command.args(extra).env_remove("STEERLM_API_KEY");
    server::spawn(command)
}

/// POSTs `body` as JSON; the status and the answer (JSON, or its text as a string).
pub async fn post_json(url: String, body: Value) -> (u16, Value) {
    let request = reqwest::Client::new().post(url).header("content-type", "application/json");
    let response = request.body(body.to_string()).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap_or_else(|| panic!("not an array: {value}")).iter().map(|v| v.as_f64().unwrap()).collect()
}

/// Scores within the goldens' tolerance, `1e-4 + 1e-4 * |golden|`.
#[track_caller]
pub fn assert_scores_close(ours: &[f64], golden: &[f64]) {
    assert_eq!(ours.len(), golden.len(), "{ours:?} vs {golden:?}");
    for (a, b) in ours.iter().zip(golden) {
        assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{ours:?} vs {golden:?}");
    }
}
