//! `steerlm serve` as a real HTTP server on 127.0.0.1: the KServe v2 / Triton endpoints
//! (JSON and binary tensors, the tokens form), the JSON API, metrics, auth, errors and
//! dynamic batching, with scores checked against transformers' goldens.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::Server;

#[path = "support/server.rs"]
mod support;

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(name)
}

/// Starts `steerlm serve` with the llama9 fixture on a free port.
fn serve(extra: &[&str]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_steerlm"));
    command
        .args(["serve", "--model", model_dir("llama9").to_str().unwrap(), "--device", "cpu", "--port", "0"])
        .args(extra)
        .env_remove("STEERLM_API_KEY");
    support::spawn(command)
}

fn goldens() -> Value {
    serde_json::from_str(&std::fs::read_to_string(model_dir("llama9").join("goldens.json")).unwrap()).unwrap()
}

fn case(name: &str) -> Value {
    goldens()["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone()
}

#[track_caller]
fn assert_close(ours: &[f64], golden: &Value) {
    for (a, b) in ours.iter().zip(golden.as_array().unwrap()) {
        let b = b.as_f64().unwrap();
        assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{a} vs {b}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

async fn post(url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new().post(url).body(body);
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.bytes().await.unwrap().to_vec(), headers)
}

async fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[test]
fn kserve_json_binary_and_tokens_match_transformers() {
    let server = serve(&[]);
    let infer = format!("{}/v2/models/reward_model/infer", server.url);
    let (hello, single) = (case("hello_world_no_template"), case("single_token"));
    runtime().block_on(async {
        for path in ["/v2/health/live", "/v2/health/ready", "/v2/models/reward_model/ready", "/v2/models/reward_model/versions/1/ready"] {
            assert_eq!(get(&format!("{}{path}", server.url), None).await.0, 200, "{path}");
        }
        let (status, config) = get(&format!("{}/v2/models/reward_model/config", server.url), None).await;
        assert_eq!(status, 200);
        let config: Value = serde_json::from_str(&config).unwrap();
        assert!(config["max_batch_size"].as_u64().unwrap() > 0);
        assert_eq!(config["input"][0], json!({"name": "sentences", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [-1], "is_shape_tensor": false, "allow_ragged_batch": false, "optional": false}));
        assert_eq!(config["output"][0]["data_type"], "TYPE_FP32");
        assert_eq!(config["output"][0]["dims"], json!([9]));
        assert_eq!(config["output"][1]["name"], "exceeded");
        assert_eq!(config["output"][1]["data_type"], "TYPE_INT32");

        // JSON tensors.
        let request = json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [2, 1], "data": [hello["text"], single["text"]]}]});
        let (status, body, _) = post(&infer, request.to_string().into_bytes(), &[]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let response: Value = serde_json::from_slice(&body).unwrap();
        let rewards: Vec<f64> = response["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(response["outputs"][0]["shape"], json!([2, 9]));
        assert_close(&rewards[..9], &hello["scores"]);
        assert_close(&rewards[9..], &single["scores"]);
        assert_eq!(response["outputs"][1]["data"], json!([0, 0]));

        // Binary tensors in and out, as tritonclient sends them.
        let text = hello["text"].as_str().unwrap().as_bytes();
        let mut data = (text.len() as u32).to_le_bytes().to_vec();
        data.extend_from_slice(text);
        let header = json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": data.len()}}],
                            "outputs": [{"name": "rewards", "parameters": {"binary_data": true}}, {"name": "exceeded", "parameters": {"binary_data": true}}]}).to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&data);
        let (status, body, headers) = post(&infer, body.clone(), &[("inference-header-content-length", header.len().to_string())]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let split: usize = headers["inference-header-content-length"].to_str().unwrap().parse().unwrap();
        let rewards: Vec<f64> = body[split..split + 36].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
        assert_close(&rewards, &hello["scores"]);
        assert_eq!(&body[split + 36..], &[0, 0, 0, 0]);

        // NeMo's tokens + sequence_lengths form, right-padded.
        let ids: Vec<i64> = hello["token_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let single_id = single["token_ids"][0].as_i64().unwrap();
        let mut tokens = ids.clone();
        tokens.extend([single_id, 0, 0, 0]);
        let request = json!({"inputs": [
            {"name": "tokens", "datatype": "INT64", "shape": [2, 4], "data": tokens},
            {"name": "sequence_lengths", "datatype": "INT64", "shape": [2, 1], "data": [4, 1]}]});
        let (status, body, _) = post(&infer, request.to_string().into_bytes(), &[]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let response: Value = serde_json::from_slice(&body).unwrap();
        let rewards: Vec<f64> = response["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_close(&rewards[..9], &hello["scores"]);
        assert_close(&rewards[9..], &single["scores"]);
    });
}

#[test]
fn bad_requests_get_4xx_with_a_reason_and_the_server_keeps_serving() {
    let server = serve(&["--max-body-mb", "1"]);
    let base = server.url.clone();
    runtime().block_on(async {
        let infer = format!("{base}/v2/models/reward_model/infer");
        let sentences = |datatype: &str| json!({"inputs": [{"name": "sentences", "datatype": datatype, "shape": [1, 1], "data": ["hi"]}]}).to_string().into_bytes();
        let header = json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": 9}}]}).to_string();
        let truncated = [header.as_bytes(), &[5, 0, 0, 0, b'a']].concat();
        let mut bad_utf8 = header.clone().into_bytes();
        bad_utf8.extend_from_slice(&[5, 0, 0, 0, 0xff, 0xfe, b'a', b'b', b'c']);
        let cases: Vec<(String, Vec<u8>, Vec<(&str, String)>, u16, &str)> = vec![
            (format!("{base}/v2/models/other/infer"), sentences("BYTES"), vec![], 404, "unknown model"),
            (infer.clone(), sentences("FP32"), vec![], 400, "must be BYTES"),
            (infer.clone(), truncated, vec![("inference-header-content-length", header.len().to_string())], 400, "truncated"),
            (infer.clone(), bad_utf8, vec![("inference-header-content-length", header.len().to_string())], 400, "UTF-8"),
            (infer.clone(), b"{not json".to_vec(), vec![], 400, "invalid"),
            (infer.clone(), vec![b' '; 2 << 20], vec![], 413, ""),
            (format!("{base}/v2/nothing"), vec![], vec![], 404, "no route"),
        ];
        for (url, body, headers, want, reason) in cases {
            let (status, body, _) = post(&url, body, &headers).await;
            let text = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, want, "{url}: {text}");
            let error: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not a JSON error: {text}"));
            assert!(error["error"].as_str().unwrap().contains(reason), "{text}");
        }
        // Still serving.
        let (status, _, _) = post(&infer, sentences("BYTES"), &[]).await;
        assert_eq!(status, 200);
    });
}

#[test]
fn api_key_json_api_metrics_and_dynamic_batching() {
    let server = serve(&["--api-key", "s3cret", "--max-queue-delay-ms", "50"]);
    let base = server.url.clone();
    let hello = case("hello_world_no_template");
    runtime().block_on(async {
        assert_eq!(get(&format!("{base}/v2/health/ready"), None).await.0, 200, "health checks need no key");
        assert_eq!(get(&format!("{base}/v2/models/reward_model"), None).await.0, 401);
        assert_eq!(get(&format!("{base}/v2/models/reward_model"), Some("wrong")).await.0, 401);
        assert_eq!(get(&format!("{base}/v2/models/reward_model"), Some("s3cret")).await.0, 200);
        let auth = [("authorization", "Bearer s3cret".to_owned())];

        let (status, body, _) = post(&format!("{base}/v1/score"), json!({"texts": [hello["text"]]}).to_string().into_bytes(), &auth).await;
        assert_eq!(status, 200);
        let response: Value = serde_json::from_slice(&body).unwrap();
        let scores: Vec<f64> = response["results"][0]["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_close(&scores, &hello["scores"]);
        assert_eq!(response["attributes"][4], "helpfulness");

        let record = json!({"mask": "User", "conversations": [{"value": "hi", "from": "User", "label": null}, {"value": "hello", "from": "Assistant", "label": "x:1"}]});
        let (status, body, _) = post(&format!("{base}/v1/score"), json!({"records": [record]}).to_string().into_bytes(), &auth).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let response: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(response["records"][0]["turns"][0]["turn"], 1);
        assert!(response["records"][0]["turns"][0]["label"].as_str().unwrap().starts_with("quality:"));

        // 24 concurrent requests: the batcher merges them into fewer batches.
        let infer = format!("{base}/v2/models/reward_model/infer");
        let request = json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [1, 1], "data": [hello["text"]]}]}).to_string();
        let calls = (0..24).map(|_| post(&infer, request.clone().into_bytes(), &auth));
        for (status, body, _) in futures::future::join_all(calls).await {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        }
        let (status, metrics) = get(&format!("{base}/metrics"), Some("s3cret")).await;
        assert_eq!(status, 200);
        let value = |name: &str| -> f64 {
            metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap().split(' ').nth(1).unwrap().parse().unwrap()
        };
        assert_eq!(value("steerlm_requests_total"), 26.0, "{metrics}");
        assert!(value("steerlm_batches_total") < 26.0, "no batching happened: {metrics}");
        assert!(value("steerlm_tokens_total") > 0.0);
    });
}
