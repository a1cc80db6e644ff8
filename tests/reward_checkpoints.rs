//! The reward checkpoints beyond SteerLM's regression heads, through the binary:
//!
//! - `score` with `{"messages": [...]}` lines renders them with the checkpoint's chat
//!   template (Qwen3 fixture): token counts and scores equal transformers'
//!   `apply_chat_template` goldens, and a checkpoint without a template names the line;
//! - a `*ForCausalLM` reward (Nemotron-70B-Reward's convention) served on 127.0.0.1:
//!   vLLM `/pooling` with `messages`, `/v1/score` with `conversations` and OpenRLHF
//!   `/get_reward` return the logit of id 0; `--reward-token-ids` picks other ids.

use serde_json::{Value, json};
use std::io::Write;

use crate::common::rest::{assert_scores_close, floats, post_json, serve_model};
use crate::common::{assert_failure, assert_success, goldens, model_dir, p, runtime, steerlm, tempdir};

/// The chat cases whose messages are plain `role`/`content` objects (key order cannot
/// matter to their template).
fn plain_chat_cases(model: &str) -> Vec<Value> {
    let goldens = goldens(model);
    let cases = goldens["chat_cases"].as_array().unwrap();
    cases.iter().filter(|c| c["extra_message_fields"] == false).cloned().collect()
}

#[test]
fn score_renders_messages_with_the_chat_template() {
    let cases = plain_chat_cases("qwen3-9");
    let text_case = goldens("qwen3-9")["cases"][0].clone();
    let dir = tempdir();
    let input = dir.path().join("chats.jsonl");
    let mut lines = std::fs::File::create(&input).unwrap();
    for case in &cases {
        writeln!(lines, "{}", json!({"messages": case["messages"], "id": case["name"]})).unwrap();
    }
    writeln!(lines, "{}", json!({"text": text_case["text"]})).unwrap();
    drop(lines);
    let output = dir.path().join("scores.jsonl");
    let model = model_dir("qwen3-9");
    let run = |model: &std::path::Path| {
        steerlm(&[
            "score",
            "--model",
            p(model),
            "--device",
            "cpu",
            "--input-file",
            p(&input),
            "--output-file",
            p(&output),
        ])
    };
    assert_success(&run(&model));
    let written = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<Value> = written.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), cases.len() + 1);
    for (case, line) in cases.iter().zip(&lines) {
        assert_eq!(line["num_tokens"], case["token_ids"].as_array().unwrap().len(), "{}", case["name"]);
        assert_scores_close(&floats(&line["scores"]), &floats(&case["scores"]));
    }
    assert_scores_close(&floats(&lines[cases.len()]["scores"]), &floats(&text_case["scores"]));

    // Mistral's fixture has no template: the error names the line and the reason, and
    // nothing is written.
    std::fs::remove_file(&output).unwrap();
    let error = assert_failure(&run(&model_dir("mistral5")));
    assert!(error.contains("chats.jsonl:1: this checkpoint has no chat template"), "{error}");
    assert!(!output.exists());
}

#[test]
fn a_causal_lm_reward_serves_the_logit_of_id_0() {
    let cases = plain_chat_cases("llama-causal");
    let (a, b) = (&cases[0], &cases[1]);
    let server = serve_model(&model_dir("llama-causal"), &[]);
    let base = server.url.clone();
    runtime().block_on(async {
        // vLLM's chat form of /pooling: one conversation in `messages`.
        let (status, body) = post_json(format!("{base}/pooling"), json!({"messages": a["messages"]})).await;
        assert_eq!(status, 200, "{body}");
        assert_scores_close(&floats(&body["data"][0]["data"]), &floats(&a["scores"]));
        assert_eq!(body["usage"]["prompt_tokens"], a["token_ids"].as_array().unwrap().len());

        let conversations = json!({"conversations": [a["messages"], b["messages"]]});
        let (status, body) = post_json(format!("{base}/v1/score"), conversations).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["attributes"], json!(["logit_0"]));
        assert_scores_close(&floats(&body["results"][1]["scores"]), &floats(&b["scores"]));

        // OpenRLHF sends text its own code formatted: the rendered template.
        let (status, body) = post_json(format!("{base}/get_reward"), json!({"query": [a["rendered"]]})).await;
        assert_eq!(status, 200, "{body}");
        assert_scores_close(&floats(&body["rewards"]), &floats(&a["scores"]));

        // The template's own refusals and malformed messages are 400s that say why.
        let (status, body) = post_json(
            format!("{base}/pooling"),
            json!({"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "then"}]}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains("Conversation roles must alternate"), "{body}");
        let (status, body) = post_json(format!("{base}/pooling"), json!({"messages": [{"content": "no role"}]})).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains("string `role`"), "{body}");
        let (status, body) =
            post_json(format!("{base}/pooling"), json!({"input": "x", "messages": a["messages"]})).await;
        assert_eq!(status, 400, "{body}");
    });
    drop(server);

    let goldens = goldens("llama-causal");
    let ids = goldens["multi_token_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect::<Vec<_>>();
    let server = serve_model(&model_dir("llama-causal"), &["--reward-token-ids", &ids.join(",")]);
    let case = &goldens["cases"][3];
    runtime().block_on(async {
        let (status, body) = post_json(format!("{}/classify", server.url), json!({"input": case["text"]})).await;
        assert_eq!(status, 200, "{body}");
        assert_scores_close(&floats(&body["data"][0]["probs"]), &floats(&case["multi_scores"]));
    });
}

#[test]
fn messages_to_a_checkpoint_without_a_template_are_a_400() {
    let server = serve_model(&model_dir("mistral5"), &[]);
    runtime().block_on(async {
        let (status, body) =
            post_json(format!("{}/pooling", server.url), json!({"messages": [{"role": "user", "content": "hi"}]}))
                .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains("no chat template"), "{body}");
    });
}

/// A checkpoint whose chat template builds a string without bound (a terabyte in 40
/// doublings): the request that renders it is refused within the render's memory budget,
/// later ones at once, and the server goes on scoring texts, its memory bounded.
#[test]
fn a_hostile_chat_template_cannot_exhaust_the_servers_memory() {
    let dir = tempdir();
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::os::unix::fs::symlink(model_dir("llama-causal").join(file), dir.path().join(file)).unwrap();
    }
    // chat_template.jinja takes precedence over tokenizer_config.json's template.
    let doubling =
        "{% set ns = namespace(t='x') %}{% for i in range(40) %}{% set ns.t = ns.t ~ ns.t %}{% endfor %}{{ ns.t }}";
    std::fs::write(dir.path().join("chat_template.jinja"), doubling).unwrap();
    let case = &goldens("llama-causal")["cases"][0];
    let server = serve_model(dir.path(), &[]);
    let base = server.url.clone();
    runtime().block_on(async {
        let messages = json!({"messages": [{"role": "user", "content": "hi"}]});
        let (status, body) = post_json(format!("{base}/pooling"), messages.clone()).await;
        assert_eq!(status, 400, "{body}");
        let error = body.to_string();
        assert!(error.contains("chat_template.jinja is disabled"), "{error}");
        assert!(error.contains("past its budget of 256 MiB"), "{error}");
        let (status, again) = post_json(format!("{base}/pooling"), messages).await;
        assert_eq!((status, &again), (400, &body));
        let (status, body) = post_json(format!("{base}/classify"), json!({"input": case["text"]})).await;
        assert_eq!(status, 200, "{body}");
        assert_scores_close(&floats(&body["data"][0]["probs"]), &floats(&case["scores"]));
    });
    let peak = server.peak_memory();
    assert!(peak < 1 << 30, "the server peaked at {} MiB", peak >> 20);
}

#[test]
fn reward_token_ids_on_a_regression_head_is_an_error() {
    let error = assert_failure(&steerlm(&[
        "score",
        "--model",
        p(&model_dir("qwen9")),
        "--device",
        "cpu",
        "--reward-token-ids",
        "0",
        "--input-file",
        "-",
        "--output-file",
        "/tmp/never-written.jsonl",
    ]));
    assert!(error.contains("--reward-token-ids is for *ForCausalLM checkpoints"), "{error}");
}
