//! `steerlm score` end to end: the binary on the fixture models' golden texts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(name)
}

fn steerlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_steerlm")).args(args).output().expect("run steerlm")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn goldens(name: &str) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(model_dir(name).join("goldens.json")).unwrap()).unwrap()
}

#[test]
fn score_writes_one_line_per_text_matching_transformers() {
    for (name, device) in [("qwen9", "cpu"), ("nemotron5", "wgpu")] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("texts.jsonl.gz");
        let goldens = goldens(name);
        let cases = goldens["cases"].as_array().unwrap();
        let mut encoder = flate2::write::GzEncoder::new(fs::File::create(&input).unwrap(), flate2::Compression::fast());
        for case in cases {
            let line = serde_json::json!({ "id": case["name"], "text": case["text"] });
            std::io::Write::write_all(&mut encoder, format!("{line}\n").as_bytes()).unwrap();
        }
        encoder.finish().unwrap();
        let output = dir.path().join("scores.jsonl");
        let result = steerlm(&[
            "score",
            "--model",
            model_dir(name).to_str().unwrap(),
            "--device",
            device,
            "--batch-tokens",
            "1000",
            "--input-file",
            input.to_str().unwrap(),
            "--output-file",
            output.to_str().unwrap(),
        ]);
        assert!(result.status.success(), "{name}: {}", stderr(&result));
        let lines: Vec<serde_json::Value> =
            fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), cases.len());
        for (line, case) in lines.iter().zip(cases) {
            assert_eq!(line["num_tokens"], case["num_tokens"], "{name}/{}", case["name"]);
            assert_eq!(line["exceeded"], false);
            for (ours, golden) in line["scores"].as_array().unwrap().iter().zip(case["scores"].as_array().unwrap()) {
                let (a, b) = (ours.as_f64().unwrap(), golden.as_f64().unwrap());
                assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{name}/{}: {a} vs {b}", case["name"]);
            }
        }
    }
}

#[test]
fn score_names_bad_lines_and_bad_models() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.jsonl");
    fs::write(&input, "{\"text\": \"hello\"}\n{\"prompt\": \"no text\"}\n").unwrap();
    let output = dir.path().join("scores.jsonl");
    let out = |model: &Path| {
        steerlm(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "--input-file",
            input.to_str().unwrap(),
            "--output-file",
            output.to_str().unwrap(),
        ])
    };
    let result = out(&model_dir("llama9"));
    assert_eq!(result.status.code(), Some(1));
    assert!(stderr(&result).contains("texts.jsonl:2: the line has no `text`"), "{}", stderr(&result));
    assert!(!output.exists());

    let result = out(dir.path());
    assert_eq!(result.status.code(), Some(1));
    assert!(stderr(&result).contains("config.json"), "{}", stderr(&result));
}
