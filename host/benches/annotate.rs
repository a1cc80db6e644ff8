//! `cargo bench -p steerlm --bench annotate`
//!
//! Annotates 2,000 HelpSteer-shaped SFT records against `steerlm serve` running the small
//! llama9 fixture model on the CPU, and compares, in one run:
//! - `steerlm annotate` (many records in flight, all prefixes of a record in one request),
//! - a sequential client that sends one request per labeled turn and waits for each
//!   (the reference script's pattern, minus Python),
//! - `steerlm annotate` against the same server with dynamic batching switched off.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::Server;

#[path = "../../tests/common/server.rs"]
mod support;
use std::time::Instant;

const RECORDS: usize = 2000;
const WORDS: &[&str] = &[
    "the", "model", "answer", "question", "helpful", "data", "because", "which", "code", "explain", "step", "first",
    "is", "a", "of", "to", "and",
];

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama9")
}

fn text(seed: &mut u64, words: usize) -> String {
    (0..words)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            WORDS[(*seed >> 33) as usize % WORDS.len()]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_records(path: &Path) {
    let mut seed = 7;
    let mut out = String::new();
    for i in 0..RECORDS {
        let record = json!({"conversations": [
            {"value": format!("{i}: {}", text(&mut seed, 30)), "from": "User", "label": null},
            {"value": text(&mut seed, 60), "from": "Assistant", "label": "helpfulness:3"}],
            "system": steerlm_core::SYSTEM_PROMPT, "mask": "User", "type": "VALUE_TO_TEXT"});
        out.push_str(&record.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn serve(extra: &[&str]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_steerlm"));
    command.args(["serve", "--device", "cpu", "--port", "0", "--model"]).arg(model_dir()).args(extra);
    support::spawn(command)
}

fn annotate(url: &str, input: &Path, output: &Path) -> f64 {
    let _ = std::fs::remove_file(output);
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_steerlm"))
        .args(["-q", "annotate", "--server", url, "--input-file"])
        .arg(input)
        .arg("--output-file")
        .arg(output)
        .status()
        .unwrap();
    assert!(status.success());
    started.elapsed().as_secs_f64()
}

/// One request per labeled turn, each awaited before the next.
fn sequential(url: &str, input: &Path) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let lines = std::fs::read_to_string(input).unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let infer = format!("{url}/v2/models/reward_model/infer");
        for line in lines.lines() {
            let record = steerlm_core::record::SftRecord::parse(line).unwrap();
            for prefix in steerlm_core::template::labeled_prefixes(&record, Default::default()).unwrap() {
                let body =
                    json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [1, 1], "data": [prefix]}]});
                let response = client.post(&infer).body(body.to_string()).send().await.unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
            }
        }
    });
    started.elapsed().as_secs_f64()
}

fn main() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-annotate");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("records.jsonl");
    write_records(&input);
    let rate = |seconds: f64| RECORDS as f64 / seconds;

    println!(
        "annotating {RECORDS} records (1 labeled turn each) against steerlm serve, llama9 fixture model on the CPU"
    );
    let batched = serve(&[]);
    let ours = annotate(&batched.url, &input, &dir.join("out-batched.jsonl"));
    let reference_pattern = sequential(&batched.url, &input);
    drop(batched);
    let unbatched = serve(&["--no-dynamic-batching"]);
    let without_batching = annotate(&unbatched.url, &input, &dir.join("out-unbatched.jsonl"));
    drop(unbatched);

    println!("{:<62} {:>9} {:>11}", "client / server", "seconds", "records/s");
    println!(
        "{:<62} {reference_pattern:>9.2} {:>11.0}",
        "sequential client, one request per turn (reference pattern)",
        rate(reference_pattern)
    );
    println!("{:<62} {ours:>9.2} {:>11.0}", "steerlm annotate, dynamic batching on", rate(ours));
    println!(
        "{:<62} {without_batching:>9.2} {:>11.0}",
        "steerlm annotate, dynamic batching off",
        rate(without_batching)
    );
    println!("steerlm annotate vs the sequential pattern: {:.1}x", reference_pattern / ours);
    println!("dynamic batching on vs off (server throughput): {:.1}x", without_batching / ours);
    let a = std::fs::read(dir.join("out-batched.jsonl")).unwrap();
    let b = std::fs::read(dir.join("out-unbatched.jsonl")).unwrap();
    assert!(a == b, "batched and unbatched runs wrote different bytes");
    println!("both runs wrote identical output ({} bytes)", a.len());
}
