//! `steerlm annotate` against a KServe v2 test server that returns the reference run's
//! raw scores (tests/fixtures/conversions/annotate/scores.jsonl) for each exact text: the
//! output must equal the reference's bytes, fresh and resumed, and stay exact whatever
//! moment the process is killed at. The server answers like the two servers users run:
//! NeMo-Aligner's (PyTriton: `rewards` only, binary tensors) and `steerlm serve`
//! (`rewards` and `exceeded`, JSON), or takes one text per request. A real Triton server
//! is tested by tests/pytriton/run.sh.
//!
//! - a fresh run equals the reference against every kind of server;
//! - resumed from the reference's partial output, with or without a torn last line,
//!   by position and by key; records whose resume keys collide are kept;
//! - repeated SIGKILLs, then a rerun, give the uninterrupted output;
//! - a missing model, a model without `rewards`, a server that never answers
//!   (`--request-timeout`) or nothing listening fail before any output;
//! - resuming is by position: an output of another input, of an edited input, longer
//!   than the input, or not an annotation output at all is refused untouched, and the
//!   input itself (or a link to it) is never the output;
//! - FIFO and symlink outputs are written through;
//! - unlabeled records are written back as `json.dumps` would (big integers exact), and
//!   a non-finite score fails naming its line, keeping the records before it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{assert_failure, assert_same, assert_success, fixture, mkfifo, steerlm_command, tempdir};

/// Which server the mock imitates.
#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    /// NeMo-Aligner's PyTriton server: only `rewards`, binary outputs when asked.
    Nemo,
    /// `steerlm serve`'s declared outputs, answered in JSON even when binary is asked.
    SteerlmJson,
    /// A model with no `rewards` output.
    NoRewards,
    /// NeMo's, with a config of `max_batch_size` 1: more texts in one request are refused.
    OneAtATime,
}

struct Mock {
    scores: HashMap<String, Value>,
    delay: Duration,
    flavour: Flavour,
}

fn declared_outputs(flavour: Flavour) -> Vec<&'static str> {
    match flavour {
        Flavour::Nemo | Flavour::OneAtATime => vec!["rewards"],
        Flavour::SteerlmJson => vec!["rewards", "exceeded"],
        Flavour::NoRewards => vec!["logits"],
    }
}

async fn metadata(State(mock): State<Arc<Mock>>) -> Json<Value> {
    let outputs: Vec<Value> = declared_outputs(mock.flavour)
        .into_iter()
        .map(|name| json!({ "name": name, "datatype": if name == "exceeded" { "INT32" } else { "FP32" }, "shape": [-1, 1] }))
        .collect();
    Json(json!({ "name": "reward_model", "versions": ["1"], "platform": "python",
        "inputs": [{ "name": "sentences", "datatype": "BYTES", "shape": [-1, -1] }], "outputs": outputs }))
}

async fn config(State(mock): State<Arc<Mock>>) -> Json<Value> {
    let max_batch_size = if mock.flavour == Flavour::OneAtATime { 1 } else { 9999999 };
    Json(json!({ "name": "reward_model", "max_batch_size": max_batch_size }))
}

/// The texts of a request, from JSON `data` or the binary tensor extension.
fn request_texts(headers: &HeaderMap, body: &[u8]) -> (Value, Vec<String>) {
    let header_length = headers.get("inference-header-content-length").map(|v| v.to_str().unwrap().parse().unwrap());
    let (header, mut binary) = body.split_at(header_length.unwrap_or(body.len()));
    let request: Value = serde_json::from_slice(header).unwrap();
    let input = &request["inputs"][0];
    assert_eq!(input["name"], "sentences");
    let rows = input["shape"][0].as_u64().unwrap() as usize;
    let texts = match input["parameters"]["binary_data_size"].as_u64() {
        Some(size) => {
            assert_eq!(size as usize, binary.len());
            let mut texts = Vec::new();
            while !binary.is_empty() {
                let length = u32::from_le_bytes(binary[..4].try_into().unwrap()) as usize;
                texts.push(String::from_utf8(binary[4..4 + length].to_vec()).unwrap());
                binary = &binary[4 + length..];
            }
            texts
        }
        None => input["data"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect(),
    };
    assert_eq!(texts.len(), rows);
    (request, texts)
}

async fn infer(State(mock): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    tokio::time::sleep(mock.delay).await;
    let (request, texts) = request_texts(&headers, &body);
    if mock.flavour == Flavour::OneAtATime && texts.len() > 1 {
        let message = format!("inference request batch-size must be <= 1 for 'reward_model', got {}", texts.len());
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response();
    }
    let declared = declared_outputs(mock.flavour);
    let asked: Vec<&str> = request["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    if let Some(unknown) = asked.iter().find(|name| !declared.contains(name)) {
        // Triton's answer to an output the model does not declare.
        let message = format!("unexpected inference output '{unknown}' for model 'reward_model'");
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response();
    }
    let mut flat = Vec::new();
    for text in &texts {
        match mock.scores.get(text) {
            Some(scores) => flat.extend(scores.as_array().unwrap().iter().map(|v| v.as_f64().unwrap_or(f64::NAN))),
            // Texts the reference never scored get scores derived from their bytes.
            None => flat.extend((0..9).map(|i| ((text.len() * 7 + i * 3) % 9) as f64 * 0.5)),
        }
    }
    let binary =
        request["outputs"][0]["parameters"]["binary_data"] == json!(true) && mock.flavour != Flavour::SteerlmJson;
    if binary {
        let data: Vec<u8> = flat.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
        let header = serde_json::to_vec(&json!({ "model_name": "reward_model", "outputs": [
            { "name": "rewards", "datatype": "FP32", "shape": [texts.len(), 9], "parameters": { "binary_data_size": data.len() } }
        ]}))
        .unwrap();
        let header_length = header.len();
        let mut body = header;
        body.extend_from_slice(&data);
        return ([("inference-header-content-length", header_length.to_string())], body).into_response();
    }
    let data: Vec<Value> = flat.iter().map(|&v| if v.is_finite() { json!(v) } else { Value::Null }).collect();
    let mut outputs = vec![json!({ "name": "rewards", "datatype": "FP32", "shape": [texts.len(), 9], "data": data })];
    if asked.contains(&"exceeded") {
        outputs.push(
            json!({ "name": "exceeded", "datatype": "INT32", "shape": [texts.len(), 1], "data": vec![0; texts.len()] }),
        );
    }
    Json(json!({ "model_name": "reward_model", "outputs": outputs })).into_response()
}

/// Starts the test server on a free port in a background thread; returns its URL.
fn start_mock(flavour: Flavour, delay: Duration, extra: &[(&str, Value)]) -> String {
    let mut scores: HashMap<String, Value> = fs::read_to_string(fixture("annotate/scores.jsonl"))
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
    let mock = Arc::new(Mock { scores, delay, flavour });
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            let app = Router::new()
                .route("/v2/models/reward_model", get(metadata))
                .route("/v2/models/reward_model/config", get(config))
                .route("/v2/models/reward_model/infer", post(infer))
                .with_state(mock);
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", receiver.recv().unwrap())
}

fn nemo_server() -> String {
    start_mock(Flavour::Nemo, Duration::ZERO, &[])
}

fn annotate(server: &str, input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut command = steerlm_command(&["-q", "annotate", "--server", server, "--input-file"]);
    command.arg(input).arg("--output-file").arg(output).args(extra);
    command
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap()
}

#[test]
fn fresh_run_matches_the_reference_against_every_server() {
    // OneAtATime: records with several labeled turns must be sent in parts.
    for flavour in [Flavour::Nemo, Flavour::SteerlmJson, Flavour::OneAtATime] {
        let server = start_mock(flavour, Duration::ZERO, &[]);
        let dir = tempdir();
        let output = dir.path().join("out.jsonl");
        assert_success(&run(&mut annotate(&server, &fixture("annotate/input.jsonl"), &output, &[])));
        assert_same(&output, &fixture("annotate/expected/output_fresh.jsonl"));
    }
}

#[test]
fn a_missing_model_or_one_without_rewards_fails_before_any_output() {
    let dir = tempdir();
    let output = dir.path().join("out.jsonl");
    let server = nemo_server();
    let stderr = assert_failure(&run(&mut annotate(
        &server,
        &fixture("annotate/input.jsonl"),
        &output,
        &["--model_name", "other"],
    )));
    assert!(stderr.contains("has no model `other`") && stderr.contains("--model_name"), "{stderr}");
    assert!(!output.exists());

    let server = start_mock(Flavour::NoRewards, Duration::ZERO, &[]);
    let stderr = assert_failure(&run(&mut annotate(&server, &fixture("annotate/input.jsonl"), &output, &[])));
    assert!(stderr.contains("no `rewards` output (it has logits)"), "{stderr}");
    assert!(!output.exists());

    // A server that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || silent.accept().map(|(socket, _)| socket));
    let mut command =
        annotate(&format!("http://{address}"), &fixture("annotate/input.jsonl"), &output, &["--request-timeout", "1"]);
    let stderr = assert_failure(&run(&mut command));
    assert!(stderr.contains("did not answer within --request-timeout"), "{stderr}");
    drop(held);
    assert!(!output.exists());

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let stderr = assert_failure(&run(&mut annotate(
        &format!("http://{closed}"),
        &fixture("annotate/input.jsonl"),
        &output,
        &[],
    )));
    assert!(stderr.contains("cannot reach the reward server"), "{stderr}");
}

#[test]
fn resuming_a_reference_output_matches_the_reference_even_after_a_torn_line() {
    let server = nemo_server();
    for mode in [&[][..], &["--resume-by-key"][..]] {
        for torn in ["", "{\"conversations\": [{\"value\": \"hal"] {
            let dir = tempdir();
            let output = dir.path().join("out.jsonl");
            let mut existing = fs::read(fixture("annotate/existing_output.jsonl")).unwrap();
            existing.extend_from_slice(torn.as_bytes());
            fs::write(&output, existing).unwrap();
            assert_success(&run(&mut annotate(&server, &fixture("annotate/input.jsonl"), &output, mode)));
            assert_same(&output, &fixture("annotate/expected/output_after_resume.jsonl"));
        }
    }
}

/// Records whose resume keys collide: duplicates, and turns that concatenate alike.
fn colliding_input(dir: &Path) -> PathBuf {
    let record = |values: [&str; 2]| {
        format!(
            "{{\"mask\": \"User\", \"conversations\": [{{\"value\": \"{}\", \"from\": \"User\", \"label\": null}}, \
             {{\"value\": \"{}\", \"from\": \"Assistant\", \"label\": \"\"}}]}}\n",
            values[0], values[1]
        )
    };
    let mut text = fs::read_to_string(fixture("annotate/input.jsonl")).unwrap();
    for values in [["ab", "c"], ["a", "bc"], ["ab", "c"], ["same", "same"], ["same", "same"]] {
        text.push_str(&record(values));
    }
    let path = dir.join("colliding.jsonl");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn resume_by_position_keeps_records_whose_keys_collide() {
    let server = nemo_server();
    let dir = tempdir();
    let input = colliding_input(dir.path());
    let records = fs::read_to_string(&input).unwrap().lines().count();
    let full = dir.path().join("full.jsonl");
    assert_success(&run(&mut annotate(&server, &input, &full, &[])));
    let full_text = fs::read_to_string(&full).unwrap();
    assert_eq!(full_text.lines().count(), records);

    // Stopped after the first colliding record: the rest must still be written.
    let prefix: String = full_text.lines().take(records - 4).map(|l| format!("{l}\n")).collect();
    let resumed = dir.path().join("resumed.jsonl");
    fs::write(&resumed, &prefix).unwrap();
    assert_success(&run(&mut annotate(&server, &input, &resumed, &[])));
    assert_same(&resumed, &full);

    // The reference's rule, kept behind a flag, drops the two whose keys were in the
    // output already (its key set is not updated as it writes, so later duplicates stay).
    let by_key = dir.path().join("by-key.jsonl");
    fs::write(&by_key, &prefix).unwrap();
    assert_success(&run(&mut annotate(&server, &input, &by_key, &["--resume-by", "key"])));
    assert_eq!(fs::read_to_string(&by_key).unwrap().lines().count(), records - 2);
}

#[test]
fn an_output_of_another_or_changed_input_is_refused_untouched() {
    let server = nemo_server();
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    let original = fs::read_to_string(fixture("annotate/input.jsonl")).unwrap();
    fs::write(&input, &original).unwrap();
    let full: Vec<String> = fs::read_to_string(fixture("annotate/expected/output_fresh.jsonl"))
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect();

    // Another input's output (here: its records shifted by one).
    let output = dir.path().join("out.jsonl");
    // Its torn tail is not cut either: nothing is touched before the check passes.
    let shifted = full[1..4].concat() + "{\"conversations\": [{\"val";
    fs::write(&output, &shifted).unwrap();
    let stderr = assert_failure(&run(&mut annotate(&server, &input, &output, &[])));
    assert!(stderr.contains("out.jsonl:1 is not the annotation") && stderr.contains("--resume-by-key"), "{stderr}");
    assert_eq!(fs::read_to_string(&output).unwrap(), shifted);

    // The input's third record edited after the output was written.
    let output = dir.path().join("out2.jsonl");
    fs::write(&output, full[..5].concat()).unwrap();
    let edited = original.replacen("\"value\": \"first\"", "\"value\": \"First\"", 1);
    assert_ne!(edited, original);
    fs::write(&input, &edited).unwrap();
    let stderr = assert_failure(&run(&mut annotate(&server, &input, &output, &[])));
    assert!(stderr.contains("out2.jsonl:4 is not the annotation"), "{stderr}");
    assert_eq!(fs::read_to_string(&output).unwrap(), full[..5].concat());

    // A file that is not an annotation output at all (no newline at its end).
    let notes = dir.path().join("notes.txt");
    fs::write(&notes, "my notes").unwrap();
    let stderr = assert_failure(&run(&mut annotate(&server, &input, &notes, &[])));
    assert!(stderr.contains("not an annotation output"), "{stderr}");
    assert_eq!(fs::read_to_string(&notes).unwrap(), "my notes");

    // An output longer than the input.
    fs::write(&input, original.lines().take(2).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let output = dir.path().join("out3.jsonl");
    fs::write(&output, full[..3].concat()).unwrap();
    let stderr = assert_failure(&run(&mut annotate(&server, &input, &output, &[])));
    assert!(stderr.contains("out3.jsonl:3: the output has more records"), "{stderr}");
}

#[test]
fn the_input_is_never_the_output() {
    let server = nemo_server();
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    // Unlabeled records would pass the position check: only the same-file check saves them.
    let original = "{\"mask\": \"User\", \"conversations\": [{\"value\": \"q\", \"from\": \"User\"}]}\n".repeat(3);
    fs::write(&input, &original).unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    for output in [&input, &link] {
        let stderr = assert_failure(&run(&mut annotate(&server, &input, output, &[])));
        assert!(stderr.contains("is the same file as --input-file"), "{stderr}");
        assert_eq!(fs::read_to_string(&input).unwrap(), original);
    }
}

#[test]
fn outputs_that_are_fifos_or_symlinks_are_written_through() {
    let server = nemo_server();
    let dir = tempdir();

    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(&fifo).unwrap())
    };
    assert_success(&run(&mut annotate(&server, &fixture("annotate/input.jsonl"), &fifo, &[])));
    assert_eq!(reader.join().unwrap(), fs::read(fixture("annotate/expected/output_fresh.jsonl")).unwrap());
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    // A symlink: its target is resumed and appended to, and the link stays a link.
    let target = dir.path().join("target.jsonl");
    fs::copy(fixture("annotate/existing_output.jsonl"), &target).unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_success(&run(&mut annotate(&server, &fixture("annotate/input.jsonl"), &link, &[])));
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_same(&target, &fixture("annotate/expected/output_after_resume.jsonl"));
}

#[test]
fn kill_at_any_moment_then_rerun_gives_the_uninterrupted_output() {
    // A slow server, so kills land mid-run; every rerun resumes from what is on disk. The
    // input has records whose keys collide, which resuming by key would drop.
    let server = start_mock(Flavour::Nemo, Duration::from_millis(15), &[]);
    let dir = tempdir();
    let input = colliding_input(dir.path());
    let expected = dir.path().join("expected.jsonl");
    assert_success(&run(&mut annotate(&nemo_server(), &input, &expected, &[])));
    let output = dir.path().join("out.jsonl");
    for wait_ms in [40, 90, 10, 150, 60, 120, 30, 200] {
        let mut child = annotate(&server, &input, &output, &["--concurrency", "4", "--sync-every", "1"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(wait_ms));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
    }
    assert_success(&run(&mut annotate(&server, &input, &output, &[])));
    assert_same(&output, &expected);
}

#[test]
fn records_without_labels_are_written_back_and_bad_scores_are_errors() {
    let weird = "weird text";
    let nan_text =
        format!("<extra_id_0>System\n{}\n<extra_id_1>User\n{weird}\n<extra_id_2>", steerlm_core::SYSTEM_PROMPT);
    let server =
        start_mock(Flavour::SteerlmJson, Duration::ZERO, &[(nan_text.as_str(), json!([1, 2, 3, 4, null, 1, 1, 1, 1]))]);
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    fs::write(
        &input,
        "{\"id\": 123456789012345678901234567890, \"mask\": \"User\", \"extra\": 1.50, \"conversations\": [{\"value\": \"caf\u{e9}\", \"from\": \"User\"}]}\n",
    )
    .unwrap();
    assert_success(&run(&mut annotate(&server, &input, &output, &[])));
    // Written back as json.dumps would: ASCII-escaped, 1.50 as 1.5, the integer exact.
    assert_eq!(
        fs::read_to_string(&output).unwrap(),
        "{\"id\": 123456789012345678901234567890, \"mask\": \"User\", \"extra\": 1.5, \"conversations\": [{\"value\": \"caf\\u00e9\", \"from\": \"User\"}]}\n"
    );

    let input = dir.path().join("nan.jsonl");
    let output = dir.path().join("nan-out.jsonl");
    fs::write(&input, format!("{{\"mask\": \"User\", \"conversations\": [{{\"value\": \"{weird}\", \"from\": \"User\", \"label\": null}}]}}\n{{\"mask\": \"User\", \"conversations\": [{{\"value\": \"{weird}\", \"from\": \"User\", \"label\": \"\"}}]}}\n")).unwrap();
    let stderr = assert_failure(&run(&mut annotate(&server, &input, &output, &[])));
    assert!(stderr.contains("nan.jsonl:2") && stderr.contains("non-finite"), "{stderr}");
    // The good first record is kept; a rerun resumes after it.
    assert_eq!(fs::read_to_string(&output).unwrap().lines().count(), 1);
}

/// A record whose labeled turns would make gigabytes of prefixes (each repeats the
/// conversation before it) is an error naming its line, before any prefix is made.
#[test]
fn a_record_of_endless_labeled_turns_is_refused_naming_its_line() {
    let server = nemo_server();
    let dir = tempdir();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    let turn = json!({"value": "a short answer", "from": "Assistant", "label": "helpfulness:1"});
    let user = json!({"value": "a short question", "from": "User"});
    let turns: Vec<&Value> = std::iter::repeat_n([&user, &turn], 20_000).flatten().collect();
    let record = json!({"mask": "User", "conversations": turns});
    fs::write(&input, format!("{}\n{record}\n", json!({"mask": "User", "conversations": [user]}))).unwrap();
    let stderr = assert_failure(&run(&mut annotate(&server, &input, &output, &[])));
    assert!(stderr.contains("in.jsonl:2") && stderr.contains("20000 labeled turns make"), "{stderr}");
    assert!(stderr.contains("MiB of prefixes to score"), "{stderr}");
}

/// annotate appends (to resume), so a .gz output name, compressed everywhere else, is
/// refused before anything is written rather than written as plain text.
#[test]
fn a_gz_output_is_refused() {
    let server = nemo_server();
    let dir = tempdir();
    let output = dir.path().join("out.jsonl.gz");
    let stderr = assert_failure(&run(&mut annotate(&server, &fixture("annotate/input.jsonl"), &output, &[])));
    assert!(stderr.contains("annotate writes plain JSONL"), "{stderr}");
    assert!(!output.exists());
}
