//! `steerlm annotate` against a small KServe v2 test server that returns the reference
//! run's raw scores (tests/fixtures/conversions/annotate/scores.jsonl) for each exact
//! text: the output must equal the reference's bytes, fresh and resumed, and stay
//! exact whatever moment the process is killed at.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/conversions/annotate").join(path)
}

struct Mock {
    scores: HashMap<String, Value>,
    delay: Duration,
}

async fn infer(State(mock): State<Arc<Mock>>, Json(request): Json<Value>) -> Json<Value> {
    tokio::time::sleep(mock.delay).await;
    let texts = request["inputs"][0]["data"].as_array().unwrap();
    let mut flat = Vec::new();
    for text in texts {
        let text = text.as_str().unwrap();
        let scores = mock.scores.get(text).unwrap_or_else(|| panic!("no score for {text:?}"));
        flat.extend(scores.as_array().unwrap().iter().cloned());
    }
    Json(json!({ "model_name": "reward_model", "outputs": [
        { "name": "rewards", "datatype": "FP32", "shape": [texts.len(), 9], "data": flat },
        { "name": "exceeded", "datatype": "INT32", "shape": [texts.len(), 1], "data": vec![0; texts.len()] }
    ]}))
}

/// Starts the test server on a free port in a background thread; returns its URL.
fn start_mock(delay: Duration, extra: &[(&str, Value)]) -> String {
    let mut scores: HashMap<String, Value> = fs::read_to_string(fixture("scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["text"].as_str().unwrap().to_owned(), v["scores"].clone())
        })
        .collect();
    for (text, value) in extra {
        scores.insert(text.to_string(), value.clone());
    }
    let mock = Arc::new(Mock { scores, delay });
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            let app = Router::new().route("/v2/models/reward_model/infer", post(infer)).with_state(mock);
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", receiver.recv().unwrap())
}

fn annotate(server: &str, input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_steerlm"));
    command
        .args(["-q", "annotate", "--server", server, "--input-file"])
        .arg(input)
        .arg("--output-file")
        .arg(output)
        .args(extra);
    command
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap()
}

#[track_caller]
fn assert_same(ours: &Path, golden: &Path) {
    let (a, b) = (fs::read(ours).unwrap(), fs::read(golden).unwrap());
    if a != b {
        let (a, b) = (String::from_utf8_lossy(&a).into_owned(), String::from_utf8_lossy(&b).into_owned());
        let line = a.lines().zip(b.lines()).position(|(x, y)| x != y);
        panic!(
            "{} differs from {} (first differing line {line:?}; {} vs {} lines)",
            ours.display(),
            golden.display(),
            a.lines().count(),
            b.lines().count()
        );
    }
}

#[test]
fn fresh_run_matches_the_reference() {
    let server = start_mock(Duration::ZERO, &[]);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let result = run(&mut annotate(&server, &fixture("input.jsonl"), &output, &[]));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert_same(&output, &fixture("expected/output_fresh.jsonl"));
}

#[test]
fn resumed_run_matches_the_reference_even_after_a_torn_line() {
    let server = start_mock(Duration::ZERO, &[]);
    for torn in ["", "{\"conversations\": [{\"value\": \"hal"] {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.jsonl");
        let mut existing = fs::read(fixture("existing_output.jsonl")).unwrap();
        existing.extend_from_slice(torn.as_bytes());
        fs::write(&output, existing).unwrap();
        let result = run(&mut annotate(&server, &fixture("input.jsonl"), &output, &[]));
        assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
        assert_same(&output, &fixture("expected/output_after_resume.jsonl"));
    }
}

#[test]
fn kill_at_any_moment_then_rerun_gives_the_uninterrupted_output() {
    // A slow server, so kills land mid-run; every rerun resumes from what is on disk.
    let server = start_mock(Duration::from_millis(15), &[]);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    for wait_ms in [40, 90, 10, 150, 60, 120, 30] {
        let mut child =
            annotate(&server, &fixture("input.jsonl"), &output, &["--concurrency", "4", "--sync-every", "1"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
        std::thread::sleep(Duration::from_millis(wait_ms));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
    }
    let result = run(&mut annotate(&server, &fixture("input.jsonl"), &output, &[]));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert_same(&output, &fixture("expected/output_fresh.jsonl"));
}

#[test]
fn records_without_labels_are_written_back_and_bad_scores_are_errors() {
    let weird = "weird text";
    let nan_text =
        format!("<extra_id_0>System\n{}\n<extra_id_1>User\n{weird}\n<extra_id_2>", steerlm_core::SYSTEM_PROMPT);
    let server = start_mock(Duration::ZERO, &[(nan_text.as_str(), json!([1, 2, 3, 4, null, 1, 1, 1, 1]))]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    fs::write(
        &input,
        "{\"mask\": \"User\", \"extra\": 1.50, \"conversations\": [{\"value\": \"caf\u{e9}\", \"from\": \"User\"}]}\n",
    )
    .unwrap();
    let result = run(&mut annotate(&server, &input, &output, &[]));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    // Written back as json.dumps would: ASCII-escaped, 1.50 as 1.5.
    assert_eq!(
        fs::read_to_string(&output).unwrap(),
        "{\"mask\": \"User\", \"extra\": 1.5, \"conversations\": [{\"value\": \"caf\\u00e9\", \"from\": \"User\"}]}\n"
    );

    let input = dir.path().join("nan.jsonl");
    let output = dir.path().join("nan-out.jsonl");
    fs::write(&input, format!("{{\"mask\": \"User\", \"conversations\": [{{\"value\": \"{weird}\", \"from\": \"User\", \"label\": null}}]}}\n{{\"mask\": \"User\", \"conversations\": [{{\"value\": \"{weird}\", \"from\": \"User\", \"label\": \"\"}}]}}\n")).unwrap();
    let result = run(&mut annotate(&server, &input, &output, &[]));
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("nan.jsonl:2") && stderr.contains("non-finite"), "{stderr}");
    // The good first record is kept; a rerun resumes after it.
    assert_eq!(fs::read_to_string(&output).unwrap().lines().count(), 1);
}
