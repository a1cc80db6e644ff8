//! The endpoints RLHF tools call, on a real `steerlm serve` on 127.0.0.1 with the llama9
//! fixture, requests shaped as in each tool's documentation:
//!
//! - vLLM `/classify` and `/pooling` (texts and token ids), TEI `/predict` and OpenRLHF
//!   `/get_reward`: raw scores equal transformers' goldens, `--attribute-weights`
//!   combines them, and the answers have the originals' shapes;
//! - truncation as asked (`truncate_prompt_tokens`, `truncate` + `truncation_direction`)
//!   equals scoring the kept tokens, and a text over the context is a 4xx naming it;
//! - a multi-attribute model without weights cannot answer `/get_reward`, and says why;
//! - `/metrics` counts each API with latency histograms, p50/p99 and the queue wait.

use serde_json::{Value, json};

use crate::common::rest::{assert_scores_close, floats, post_json, serve_model as serve};
use crate::common::{goldens, llama9_with_config, model_dir, runtime, steerlm_command};

/// Nemotron-4-340B-Reward's card: helpfulness, correctness, coherence, complexity, verbosity.
const WEIGHTS: [f64; 9] = [0.0, 0.0, 0.0, 0.0, 0.3, 0.74, 0.46, 0.47, -0.33];

fn weighted(scores: &[f64]) -> f64 {
    WEIGHTS.iter().zip(scores).map(|(w, s)| w * s).sum()
}

#[test]
fn rlhf_endpoints_answer_with_raw_and_weighted_scores() {
    let goldens = goldens("llama9");
    let cases = goldens["cases"].as_array().unwrap();
    let (a, b) = (&cases[7], &cases[0]);
    let (golden_a, golden_b) = (floats(&a["scores"]), floats(&b["scores"]));
    let weights = WEIGHTS.map(|w| w.to_string()).join(",");
    let server = serve(&model_dir("llama9"), &["--attribute-weights", &weights]);
    let base = server.url.clone();
    runtime().block_on(async {
        // vLLM's example client: {"model": model, "input": prompts}.
        let (status, body) =
            post_json(format!("{base}/classify"), json!({"model": "reward_model", "input": [a["text"], b["text"]]}))
                .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "list");
        assert!(body["id"].as_str().unwrap().starts_with("classify-"));
        let data = body["data"].as_array().unwrap();
        assert_scores_close(&floats(&data[0]["probs"]), &golden_a);
        assert_scores_close(&floats(&data[1]["probs"]), &golden_b);
        assert_eq!(data[1]["num_classes"], 9);
        assert_eq!(data[1]["index"], 1);
        let best = golden_b.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        assert_eq!(data[1]["label"], goldens["labels"][best]);
        assert_scores_close(&[data[0]["reward"].as_f64().unwrap()], &[weighted(&golden_a)]);
        let tokens = a["token_ids"].as_array().unwrap().len() + b["token_ids"].as_array().unwrap().len();
        assert_eq!(body["usage"]["prompt_tokens"], tokens);

        let (status, body) = post_json(format!("{base}/classify"), json!({"model": "other", "input": "hi"})).await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = post_json(format!("{base}/classify"), json!({"input": [[1, 999999]]})).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("outside the vocabulary"), "{body}");
        for (input, says) in [(json!([[1, -1]]), "holds -1, which is not a token id"), (json!([2.5]), "holds 2.5")] {
            let (status, body) = post_json(format!("{base}/classify"), json!({ "input": input })).await;
            assert_eq!(status, 400, "{body}");
            assert!(body["error"].as_str().unwrap().contains(says), "{body}");
        }

        // /pooling with a text, and with the same text's token ids.
        let (status, body) = post_json(format!("{base}/pooling"), json!({"input": a["text"]})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"][0]["object"], "pooling");
        let pooled = floats(&body["data"][0]["data"]);
        assert_scores_close(&pooled, &golden_a);
        let (_, by_ids) = post_json(format!("{base}/pooling"), json!({"input": [a["token_ids"]]})).await;
        assert_eq!(floats(&by_ids["data"][0]["data"]), pooled, "token ids score as their text");

        // TEI: {"inputs": "..."} answers one list; with weights, the combined reward.
        let (status, body) =
            post_json(format!("{base}/predict"), json!({"inputs": a["text"], "raw_scores": true})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body[0]["label"], "reward");
        assert_scores_close(&[body[0]["score"].as_f64().unwrap()], &[weighted(&golden_a)]);
        let (_, body) = post_json(format!("{base}/predict"), json!({"inputs": [[a["text"]], [b["text"]]]})).await;
        assert_scores_close(&[body[1][0]["score"].as_f64().unwrap()], &[weighted(&golden_b)]);
        let (status, body) = post_json(format!("{base}/predict"), json!({"inputs": [["a", "b"]]})).await;
        assert_eq!(status, 422, "{body}");

        // OpenRLHF's serve_rm request: {"query": [...], "prompts": [...]}.
        let (status, body) =
            post_json(format!("{base}/get_reward"), json!({"query": [a["text"], b["text"]], "prompts": ["x", "y"]}))
                .await;
        assert_eq!(status, 200, "{body}");
        assert_scores_close(&floats(&body["rewards"]), &[weighted(&golden_a), weighted(&golden_b)]);
        assert_eq!(body["scores"], body["rewards"]);

        let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        for line in [
            "steerlm_api_requests_total{api=\"vllm_classify\"} 5",
            "steerlm_api_requests_total{api=\"vllm_pooling\"} 2",
            "steerlm_api_requests_total{api=\"tei_predict\"} 3",
            "steerlm_api_requests_total{api=\"openrlhf\"} 1",
            "steerlm_request_duration_seconds_count{api=\"openrlhf\"} 1",
            "steerlm_request_duration_seconds_bucket{api=\"tei_predict\",le=\"+Inf\"} 3",
            "steerlm_request_duration_quantile_seconds{api=\"openrlhf\",quantile=\"0.99\"}",
            "steerlm_queue_wait_seconds_count",
        ] {
            assert!(metrics.contains(line), "no {line} in\n{metrics}");
        }
    });
}

#[test]
fn truncation_is_as_asked_and_long_texts_are_named_otherwise() {
    // llama9 with a context of 16 tokens.
    let dir = llama9_with_config("\"max_position_embeddings\": 4096", "\"max_position_embeddings\": 16");
    let goldens = goldens("llama9");
    let long = goldens["cases"].as_array().unwrap().iter().find(|c| c["name"] == "long_600").unwrap().clone();
    let ids = long["token_ids"].as_array().unwrap().clone();
    assert!(ids.len() > 16);
    let server = serve(dir.path(), &[]);
    let base = server.url.clone();
    runtime().block_on(async {
        let pooled = |ids: &[Value]| {
            let base = base.clone();
            let ids = ids.to_vec();
            async move { floats(&post_json(format!("{base}/pooling"), json!({"input": [ids]})).await.1["data"][0]["data"]) }
        };
        let first_16 = pooled(&ids[..16]).await;
        let last_16 = pooled(&ids[ids.len() - 16..]).await;
        let last_8 = pooled(&ids[ids.len() - 8..]).await;

        let (status, body) = post_json(format!("{base}/classify"), json!({"input": long["text"]})).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("context is 16 tokens"), "{body}");
        let (status, body) =
            post_json(format!("{base}/classify"), json!({"input": long["text"], "truncate_prompt_tokens": 8})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(floats(&body["data"][0]["probs"]), last_8);
        assert_eq!(body["usage"]["prompt_tokens"], 8);
        let (_, body) =
            post_json(format!("{base}/pooling"), json!({"input": long["text"], "truncate_prompt_tokens": -1})).await;
        assert_eq!(floats(&body["data"][0]["data"]), last_16);
        let (status, body) =
            post_json(format!("{base}/classify"), json!({"input": "hi", "truncate_prompt_tokens": 17})).await;
        assert_eq!(status, 400, "{body}");

        let (status, body) = post_json(format!("{base}/predict"), json!({"inputs": long["text"]})).await;
        assert_eq!(status, 413, "{body}");
        assert!(body["error"].as_str().unwrap().contains("truncate"), "{body}");
        let (status, body) = post_json(format!("{base}/predict"), json!({"inputs": long["text"], "truncate": true})).await;
        assert_eq!(status, 200, "{body}");
        // Raw scores, one per attribute, highest first.
        let scores: Vec<f64> = body.as_array().unwrap().iter().map(|p| p["score"].as_f64().unwrap()).collect();
        let mut expected = first_16.clone();
        expected.sort_by(|x, y| y.total_cmp(x));
        assert_eq!(scores, expected);
        let (_, body) = post_json(
            format!("{base}/predict"),
            json!({"inputs": long["text"], "truncate": true, "truncation_direction": "Left"}),
        )
        .await;
        let mut expected = last_16.clone();
        expected.sort_by(|x, y| y.total_cmp(x));
        assert_eq!(body.as_array().unwrap().iter().map(|p| p["score"].as_f64().unwrap()).collect::<Vec<_>>(), expected);

        // Nine heads and no --attribute-weights: no one reward to give.
        let (status, body) = post_json(format!("{base}/get_reward"), json!({"query": ["hi"]})).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("--attribute-weights"), "{body}");
    });
}

#[test]
fn attribute_weights_must_match_the_model() {
    let mut command = steerlm_command(&[
        "serve",
        "--model",
        model_dir("llama9").to_str().unwrap(),
        "--device",
        "cpu",
        "--port",
        "0",
        "--attribute-weights",
        "0.3,0.7",
    ]);
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 weights; the model scores 9 attributes"), "{stderr}");
}
