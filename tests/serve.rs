//! `steerlm serve` as a real HTTP server on 127.0.0.1 with the llama9 fixture model,
//! scores checked against transformers' goldens:
//!
//! - KServe v2 / Triton: health, config, JSON and binary tensors, NeMo's tokens form;
//! - every 4xx case with its reason, overflowing tensor shapes, empty `sentences`, and
//!   the server serving on afterwards;
//! - the API key (empty keys refused, `bearer` in any case), `/v1/score` for texts and
//!   records, `/metrics`, dynamic batching merging concurrent requests;
//! - a big request split into batches without starving a small one; requests over
//!   `--max-request-texts` or `--max-body-mb` get 413 naming the flag;
//! - a client that hung up has its work skipped; silent connections are closed while
//!   health checks still answer; a trickling body gets 408 and frees its connection;
//! - a hostile config.json is refused by name, without a panic.

use serde_json::{Value, json};
use std::process::Command;

use crate::common::server::{self, Server};
use crate::common::{goldens, llama9_with_config, model_dir, runtime, steerlm_command};

/// `steerlm serve --model llama9 --device cpu --port 0`, not yet started.
fn serve_command() -> Command {
    steerlm_command(&["serve", "--model", model_dir("llama9").to_str().unwrap(), "--device", "cpu", "--port", "0"])
}

/// Starts `steerlm serve` with the llama9 fixture on a free port.
fn serve(extra: &[&str]) -> Server {
    let mut command = serve_command();
    command.args(extra).env_remove("STEERLM_API_KEY");
    server::spawn(command)
}

fn case(name: &str) -> Value {
    goldens("llama9")["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone()
}

#[track_caller]
fn assert_close(ours: &[f64], golden: &Value) {
    for (a, b) in ours.iter().zip(golden.as_array().unwrap()) {
        let b = b.as_f64().unwrap();
        assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{a} vs {b}");
    }
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
        let one = json!({"name": "sentences", "datatype": "BYTES", "shape": [1, 1], "data": ["hi"]});
        let twice = json!({"inputs": [one, one]}).to_string().into_bytes();
        let unknown_output = json!({"inputs": [one], "outputs": [{"name": "zzz"}]}).to_string().into_bytes();
        // URL, body, headers, expected status, a word of the expected error.
        type Case<'a> = (String, Vec<u8>, Vec<(&'a str, String)>, u16, &'a str);
        let cases: Vec<Case> = vec![
            (format!("{base}/v2/models/other/infer"), sentences("BYTES"), vec![], 404, "unknown model"),
            (infer.clone(), sentences("FP32"), vec![], 400, "must be BYTES"),
            (infer.clone(), truncated, vec![("inference-header-content-length", header.len().to_string())], 400, "truncated"),
            (infer.clone(), bad_utf8.clone(), vec![("inference-header-content-length", header.len().to_string())], 400, "UTF-8"),
            (
                infer.clone(),
                bad_utf8,
                vec![("inference-header-content-length", header.len().to_string()), ("inference-header-content-length", "2".to_owned())],
                400,
                "given more than once",
            ),
            (infer.clone(), b"{not json".to_vec(), vec![], 400, "invalid"),
            (infer.clone(), vec![b' '; 2 << 20], vec![], 413, ""),
            (format!("{base}/v2/nothing"), vec![], vec![], 404, "no route"),
            // /v1/score: what to score must be unambiguous.
            (format!("{base}/v1/score"), br#"{"texts": ["a"], "texts": ["b"]}"#.to_vec(), vec![], 400, "duplicate key"),
            (format!("{base}/v1/score"), br#"{"texts": ["a"], "records": []}"#.to_vec(), vec![], 400, "one of"),
            // Triton's answers to what it does not have.
            (format!("{base}/v2/models/reward_model/versions/2/infer"), sentences("BYTES"), vec![], 404, "unknown version `2`"),
            (infer.clone(), twice, vec![], 400, "input `sentences` is sent twice"),
            (infer.clone(), unknown_output, vec![], 400, "unknown output `zzz`"),
            (format!("{base}/v1/score"), br#"{"texts": ["a"]}"#.to_vec(), vec![("content-encoding", "gzip".to_owned())], 415, "send the body uncompressed"),
        ];
        for (url, body, headers, want, reason) in cases {
            let (status, body, _) = post(&url, body, &headers).await;
            let text = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, want, "{url}: {text}");
            let error: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not a JSON error: {text}"));
            assert!(error["error"].as_str().unwrap().contains(reason), "{text}");
        }
        // A wrong method is a JSON error too.
        let (status, text) = get(&format!("{base}/v1/score"), None).await;
        assert_eq!(status, 405, "{text}");
        assert!(text.contains("/v1/score does not take GET"), "{text}");
        // Still serving, at the version the metadata names.
        let (status, _, _) = post(&infer, sentences("BYTES"), &[]).await;
        assert_eq!(status, 200);
        let versioned = format!("{base}/v2/models/reward_model/versions/1/infer");
        assert_eq!(post(&versioned, sentences("BYTES"), &[]).await.0, 200);
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
        let value = |name: &str| metric(&metrics, name);
        assert_eq!(value("steerlm_requests_total"), 26.0, "{metrics}");
        assert!(value("steerlm_batches_total") < 26.0, "no batching happened: {metrics}");
        assert!(value("steerlm_tokens_total") > 0.0);
    });
}

/// The value of one metric in a /metrics text.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

async fn metrics(base: &str) -> String {
    get(&format!("{base}/metrics"), None).await.1
}

/// Waits (polling /metrics) until `ready` holds, failing after a minute rather than hanging.
async fn wait_for_metrics(base: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    for _ in 0..6000 {
        let text = metrics(base).await;
        if ready(&text) {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for {what}: {}", metrics(base).await);
}

/// Texts of a few tokens each: many batches under a small --max-batch-tokens.
fn many_texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("hello world number {i}")).collect()
}

/// SIGTERM while a request is being scored: the request still gets its whole answer,
/// new connections are refused, and the server exits 0 once it is answered.
#[test]
fn sigterm_drains_the_requests_in_flight_then_exits_0() {
    let mut command = serve_command();
    command.args(["--max-batch-tokens", "16", "--max-queue-delay-ms", "0"]).stderr(std::process::Stdio::piped());
    let server = server::spawn(command);
    let base = server.url.clone();
    let (status, body) = runtime().block_on(async {
        let body = json!({ "texts": many_texts(2000) }).to_string().into_bytes();
        let url = format!("{base}/v1/score");
        let request = tokio::spawn(async move { post(&url, body, &[]).await });
        wait_for_metrics(&base, "the request's first batch", |m| metric(m, "steerlm_batches_total") >= 1.0).await;
        let terminated = tokio::task::spawn_blocking(move || server.terminate());
        // The listener closes at once; the request in flight goes on.
        let address = base.trim_start_matches("http://").to_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_ok() {
            assert!(std::time::Instant::now() < deadline, "the server kept accepting connections");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (status, body, _) = request.await.unwrap();
        let (exit, stderr) = terminated.await.unwrap();
        assert!(exit.success(), "{exit:?}: {stderr}");
        assert!(stderr.contains("stopping: answering the requests in flight on"), "{stderr}");
        (status, body)
    });
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let response: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(response["results"].as_array().unwrap().len(), 2000);
}

#[test]
fn overflowing_tensor_shapes_get_400_and_the_server_stays_up() {
    let server = serve(&[]);
    let infer = format!("{}/v2/models/reward_model/infer", server.url);
    runtime().block_on(async {
        let json = json!({"inputs": [
            {"name": "tokens", "datatype": "INT64", "shape": [i64::MAX, 4], "data": [1, 2, 3, 4]},
            {"name": "sequence_lengths", "datatype": "INT64", "shape": [1, 1], "data": [4]}]});
        let header = json!({"inputs": [
            {"name": "tokens", "datatype": "INT64", "shape": [4, i64::MAX], "parameters": {"binary_data_size": 8}},
            {"name": "sequence_lengths", "datatype": "INT64", "shape": [1], "data": [1]}]})
        .to_string();
        let mut binary = header.clone().into_bytes();
        binary.extend_from_slice(&1i64.to_le_bytes());
        for (body, headers) in [
            (json.to_string().into_bytes(), vec![]),
            (binary, vec![("inference-header-content-length", header.len().to_string())]),
        ] {
            let (status, body, _) = post(&infer, body, &headers).await;
            let text = String::from_utf8_lossy(&body);
            assert_eq!(status, 400, "{text}");
            assert!(text.contains("input `tokens`") && text.contains("more elements"), "{text}");
        }
        let ok = json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [1, 1], "data": ["hi"]}]});
        assert_eq!(post(&infer, ok.to_string().into_bytes(), &[]).await.0, 200, "still serving");
    });
}

#[test]
fn empty_sentences_answer_with_the_label_dimension() {
    let server = serve(&[]);
    let infer = format!("{}/v2/models/reward_model/infer", server.url);
    runtime().block_on(async {
        let request = json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [0, 1], "data": []}]});
        let (status, body, _) = post(&infer, request.to_string().into_bytes(), &[]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let response: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(response["outputs"][0]["shape"], json!([0, 9]));
        assert_eq!(response["outputs"][0]["data"], json!([]));
    });
}

/// A request far bigger than --max-batch-tokens runs as many batches, and a small
/// request sent while it runs is answered first.
#[test]
fn big_requests_are_split_into_batches_and_do_not_starve_small_ones() {
    let server = serve(&["--max-batch-tokens", "16", "--max-queue-delay-ms", "0"]);
    let base = server.url.clone();
    let texts = many_texts(3000);
    runtime().block_on(async {
        let score = format!("{base}/v1/score");
        let big_body = json!({ "texts": texts }).to_string().into_bytes();
        let big = tokio::spawn({
            let score = score.clone();
            async move { post(&score, big_body, &[]).await }
        });
        wait_for_metrics(&base, "the big request's first batch", |m| metric(m, "steerlm_batches_total") >= 1.0).await;
        let (status, body, _) = post(&score, json!({"texts": ["a small one"]}).to_string().into_bytes(), &[]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        // Seen from the server: the big request still had sequences to run.
        let scored = metric(&metrics(&base).await, "steerlm_batch_sequences_total");
        assert!(scored < 3001.0, "the small request waited for the whole big one ({scored} sequences scored)");

        let (status, body, _) = big.await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let response: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(response["results"].as_array().unwrap().len(), 3000);
        let metrics = metrics(&base).await;
        // Every text has at least 4 tokens, so at most 4 fit in 16 tokens.
        assert!(metric(&metrics, "steerlm_batches_total") >= 3000.0 / 4.0, "{metrics}");
        assert_eq!(metric(&metrics, "steerlm_batch_sequences_total"), 3001.0);
        assert_eq!(metric(&metrics, "steerlm_requests_total"), 2.0);
    });
}

#[test]
fn requests_over_the_limits_get_413_naming_the_flag() {
    let server = serve(&["--max-request-texts", "3", "--max-body-mb", "1"]);
    let base = server.url.clone();
    runtime().block_on(async {
        let score = format!("{base}/v1/score");
        let four = json!({"texts": ["a", "b", "c", "d"]}).to_string().into_bytes();
        let turn = json!({"value": "hi", "from": "Assistant", "label": "helpfulness:1"});
        let user = json!({"value": "q", "from": "User", "label": null});
        let record = json!({"mask": "User", "conversations": [user, turn, user, turn]});
        let records = json!({"records": [record, record]}).to_string().into_bytes();
        for body in [four, records] {
            let (status, body, _) = post(&score, body, &[]).await;
            let text = String::from_utf8_lossy(&body);
            assert_eq!(status, 413, "{text}");
            assert!(text.contains("4 texts") && text.contains("limit is 3 (--max-request-texts)"), "{text}");
        }
        let (status, body, _) = post(&score, vec![b' '; 2 << 20], &[]).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 413, "{text}");
        assert!(text.contains("limit of 1048576 bytes (--max-body-mb)"), "{text}");
        let (status, _, _) = post(&score, json!({"texts": ["a", "b", "c"]}).to_string().into_bytes(), &[]).await;
        assert_eq!(status, 200);

        // KServe clients learn the limit from the config; over it is Triton's 400.
        let config: Value = serde_json::from_str(&get(&format!("{base}/v2/models/reward_model/config"), None).await.1).unwrap();
        assert_eq!(config["max_batch_size"], 3);
        let request = json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [4, 1], "data": ["a", "b", "c", "d"]}]});
        let (status, body, _) = post(&format!("{base}/v2/models/reward_model/infer"), request.to_string().into_bytes(), &[]).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    });

    // 3,000 short labeled turns: 300 KB of body, about 300 MB of prefixes (each repeats
    // the conversation before it), refused before any is made.
    let server = serve(&["--max-request-texts", "10000", "--max-body-mb", "1"]);
    runtime().block_on(async {
        let turn = json!({"value": "a short answer", "from": "Assistant", "label": "helpfulness:1"});
        let user = json!({"value": "a short question", "from": "User"});
        let turns: Vec<&Value> = std::iter::repeat_n([&user, &turn], 3000).flatten().collect();
        let record = json!({"mask": "User", "conversations": turns});
        let body = json!({"records": [record]}).to_string().into_bytes();
        assert!(body.len() < 1 << 20);
        let (status, body, _) = post(&format!("{}/v1/score", server.url), body, &[]).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 413, "{text}");
        assert!(
            text.contains("MiB of prefixes to score") && text.contains("limit is 4 MiB (4 x --max-body-mb)"),
            "{text}"
        );
    });
}

/// A client that hangs up mid-request: its unscored sequences are skipped, and the
/// request is counted as cancelled.
#[test]
fn work_of_a_client_that_hung_up_is_skipped() {
    use std::io::Write;
    let server = serve(&["--max-batch-tokens", "16", "--max-queue-delay-ms", "0"]);
    let base = server.url.clone();
    let body = json!({ "texts": many_texts(3000) }).to_string();
    let mut socket = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    write!(
        socket,
        "POST /v1/score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    runtime().block_on(async {
        wait_for_metrics(&base, "the request's first batch", |m| metric(m, "steerlm_batches_total") >= 1.0).await;
        drop(socket);
        let metrics = wait_for_metrics(&base, "the cancellation", |m| {
            metric(m, "steerlm_skipped_sequences_total") > 0.0 && metric(m, "steerlm_cancelled_requests_total") == 1.0
        })
        .await;
        let (run, skipped) =
            (metric(&metrics, "steerlm_batch_sequences_total"), metric(&metrics, "steerlm_skipped_sequences_total"));
        assert_eq!(run + skipped, 3000.0, "{metrics}");
        assert_eq!(metric(&metrics, "steerlm_requests_total"), 1.0, "{metrics}");
        assert_eq!(metric(&metrics, "steerlm_failed_requests_total"), 0.0, "{metrics}");
        // The server is free for the next request.
        let (status, _, _) =
            post(&format!("{base}/v1/score"), json!({"texts": ["next"]}).to_string().into_bytes(), &[]).await;
        assert_eq!(status, 200);
    });
}

/// Sockets that never send their headers are closed after --header-read-timeout, and
/// beyond --max-connections new ones wait instead of exhausting the server.
#[test]
fn silent_connections_are_closed_and_health_checks_still_answer() {
    use std::io::Read;
    let server = serve(&["--max-connections", "2", "--header-read-timeout", "1"]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let silent: Vec<std::net::TcpStream> = (0..6).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    runtime().block_on(async {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap();
        let response = client.get(format!("{}/v2/health/ready", server.url)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
    });
    for mut socket in silent {
        // Generous: a server that never closes them fails here instead of hanging.
        socket.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
        let mut rest = Vec::new();
        socket.read_to_end(&mut rest).expect("the server closes a connection that sends no headers");
    }
}

/// One client's connections past --max-connections-per-client are answered 503 (their
/// request read, so the close is not a reset) and closed; its slots come back as its
/// connections close.
#[test]
fn a_client_over_its_share_of_connections_gets_503_at_once() {
    use std::io::Read;
    let server = serve(&["--max-connections-per-client", "2"]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let held: Vec<std::net::TcpStream> = (0..2).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    // The server counts a connection once it accepts it: wait until the third is turned
    // away (a whole request sent, so the close is not a reset).
    let answer =
        crate::common::server::answer_past_share(&address, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("--max-connections-per-client"), "{answer}");
    // From then on every one is answered, none reset.
    for _ in 0..5 {
        use std::io::Write;
        let mut next = std::net::TcpStream::connect(&address).unwrap();
        next.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        next.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut bytes = Vec::new();
        next.read_to_end(&mut bytes).expect("a 503, not a reset");
        assert!(bytes.starts_with(b"HTTP/1.1 503"), "{:?}", String::from_utf8_lossy(&bytes));
    }
    drop(held);
    runtime().block_on(crate::common::server::wait_for_ok(&format!("{}/v2/health/ready", server.url)));
}

#[test]
fn a_body_that_trickles_gets_408_and_frees_its_connection() {
    use std::io::{Read, Write};
    let server = serve(&["--max-connections", "1", "--body-read-timeout", "1"]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    // Headers complete, then one byte of a 1,000-byte body, then nothing.
    write!(socket, "POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{{").unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = socket.read(&mut answer).expect("the server answers a body that does not arrive");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-read-timeout"), "{answer}");
    drop(socket);
    // The one connection slot is free again.
    runtime().block_on(async {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap();
        let response = client.get(format!("{}/v2/health/ready", server.url)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
    });
}

/// Waits for a server that should refuse to start, failing (not hanging) if it runs.
fn refused_start(mut command: Command) -> String {
    let mut child = command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return stderr;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("the server started");
}

#[test]
fn empty_api_keys_are_refused_and_bearer_is_case_insensitive() {
    let mut from_env = serve_command();
    from_env.env("STEERLM_API_KEY", "");
    let mut from_flag = serve_command();
    from_flag.args(["--api-key", ""]).env_remove("STEERLM_API_KEY");
    for command in [from_env, from_flag] {
        let stderr = refused_start(command);
        assert!(stderr.contains("API key (--api-key or STEERLM_API_KEY) is empty"), "{stderr}");
    }

    let server = serve(&["--api-key", "s3cret"]);
    runtime().block_on(async {
        let url = format!("{}/v2/models/reward_model", server.url);
        for (header, want) in
            [("bearer s3cret", 200), ("BEARER s3cret", 200), ("Bearer s3cre", 401), ("Basic s3cret", 401)]
        {
            let response = reqwest::Client::new().get(&url).header("authorization", header).send().await.unwrap();
            assert_eq!(response.status().as_u16(), want, "{header}");
        }
    });
}

#[test]
fn a_hostile_config_is_refused_by_name() {
    let dir = llama9_with_config("\"num_attention_heads\": 4", "\"num_attention_heads\": 0");
    let command =
        steerlm_command(&["serve", "--model", dir.path().to_str().unwrap(), "--device", "cpu", "--port", "0"]);
    let stderr = refused_start(command);
    assert!(stderr.contains("config.json") && stderr.contains("`num_attention_heads` must be at least 1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
