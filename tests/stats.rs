//! `steerlm stats` on the goldens: the numbers, checked against an independent count
//! made here from the same files, and the pictures, checked as real SVG/PNG files of
//! the requested size:
//!
//! - SFT, annotated and regression files: records, turns, labeled turns, histograms,
//!   mean characters; labeled turns are what `to-regression` converts;
//! - tokens counted with a fixture model's tokenizer;
//! - the text table, and errors (a bad line, an unknown picture format);
//! - `--plot` SVG and PNG of the requested size.

use serde_json::Value;
use std::path::Path;

use crate::common::{fixture, model_dir, stderr, steerlm, tempdir};

/// The nine attributes in order, restated here rather than taken from steerlm-core so
/// that the count stays independent.
const ATTRIBUTES: [&str; 9] = [
    "quality",
    "toxicity",
    "humor",
    "creativity",
    "helpfulness",
    "correctness",
    "coherence",
    "complexity",
    "verbosity",
];

fn stats_json(file: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["stats", "--input-file", file.to_str().unwrap(), "--format", "json"];
    args.extend_from_slice(extra);
    let out = steerlm(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The expected histogram of one label string's attributes: integers 0..4 as they
/// appear in the goldens' labels, anything absent as missing.
fn add_label(histograms: &mut [[u64; 6]; 9], label: &str) {
    for (i, attribute) in ATTRIBUTES.iter().enumerate() {
        let value = label.split(',').filter_map(|p| p.split_once(':')).rfind(|(k, _)| k == attribute);
        let bucket = match value {
            Some((_, v)) => v.trim().parse::<f64>().unwrap().clamp(0.0, 4.0).round_ties_even() as usize,
            None => 5,
        };
        histograms[i][bucket] += 1;
    }
}

fn histograms_of(json: &Value) -> [[u64; 6]; 9] {
    let mut out = [[0; 6]; 9];
    for (i, (name, counts)) in json["histograms"].as_array().unwrap().iter().map(|h| (&h[0], &h[1])).enumerate() {
        assert_eq!(name, ATTRIBUTES[i]);
        for (j, c) in counts.as_array().unwrap().iter().enumerate() {
            out[i][j] = c.as_u64().unwrap();
        }
    }
    out
}

#[test]
fn sft_file_counts_match_an_independent_count() {
    let file = fixture("helpsteer2_preference/expected/train.jsonl");
    let json = stats_json(&file, &[]);
    let records = lines(&file);
    let (mut turns, mut labeled, mut chars, mut histograms) = (0, 0, 0, [[0u64; 6]; 9]);
    for record in &records {
        for turn in record["conversations"].as_array().unwrap() {
            turns += 1;
            chars += turn["value"].as_str().unwrap().chars().count();
            if let Some(label) = turn["label"].as_str() {
                labeled += 1;
                add_label(&mut histograms, label);
            }
        }
    }
    assert_eq!(json["kind"], "sft");
    assert_eq!(json["records"], records.len());
    assert_eq!(json["turns"], turns);
    assert_eq!(json["labeled_turns"], labeled);
    assert!(labeled > 0);
    assert_eq!(histograms_of(&json), histograms);
    assert!((json["mean_chars"].as_f64().unwrap() - chars as f64 / turns as f64).abs() < 1e-9);
    assert!(json["mean_tokens"].is_null());
}

#[test]
fn labeled_turns_are_the_ones_to_regression_converts() {
    // The reference's input has empty, null and missing labels; its output has one line
    // per truthy label.
    let json = stats_json(&fixture("regression/input.jsonl"), &[]);
    let expected = std::fs::read_to_string(fixture("regression/expected.jsonl")).unwrap();
    assert_eq!(json["labeled_turns"], expected.lines().count());
}

#[test]
fn annotated_and_regression_files() {
    // Annotated output: SFT records whose labels came from the reward model.
    let annotated = fixture("annotate/expected/output_fresh.jsonl");
    let json = stats_json(&annotated, &[]);
    let mut histograms = [[0u64; 6]; 9];
    let mut labeled = 0;
    for record in lines(&annotated) {
        for turn in record["conversations"].as_array().unwrap() {
            if let Some(label) = turn["label"].as_str() {
                labeled += 1;
                add_label(&mut histograms, label);
            }
        }
    }
    assert_eq!(json["labeled_turns"], labeled);
    assert_eq!(histograms_of(&json), histograms);

    // Regression lines: one labeled turn per line, -100 is missing.
    let regression = fixture("regression/expected.jsonl");
    let json = stats_json(&regression, &[]);
    let rows = lines(&regression);
    assert_eq!(json["kind"], "regression");
    assert_eq!(json["records"], rows.len());
    assert_eq!(json["labeled_turns"], rows.len());
    let mut histograms = [[0u64; 6]; 9];
    for row in &rows {
        for (i, v) in row["label"].as_array().unwrap().iter().enumerate() {
            let v = v.as_f64().unwrap();
            histograms[i][if v == -100.0 { 5 } else { v.clamp(0.0, 4.0).round_ties_even() as usize }] += 1;
        }
    }
    assert_eq!(histograms_of(&json), histograms);
    let turns: usize = rows.iter().map(|r| r["text"].as_str().unwrap().matches("<extra_id_1>").count()).sum();
    assert_eq!(json["turns"], turns);
}

#[test]
fn tokens_are_counted_with_the_model_tokenizer() {
    let file = fixture("regression/expected.jsonl");
    let json = stats_json(&file, &["--model", model_dir("qwen9").to_str().unwrap()]);
    let tokens = json["mean_tokens"].as_f64().unwrap();
    let chars = json["mean_chars"].as_f64().unwrap();
    // A byte-level BPE gives fewer tokens than characters, and more than a few per text.
    assert!(tokens > 10.0 && tokens < chars, "{tokens} tokens vs {chars} characters");
}

#[test]
fn table_and_errors() {
    let file = fixture("helpsteer/expected/val.jsonl");
    let out = steerlm(&["stats", "--input-file", file.to_str().unwrap()]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for word in ["records", "labeled turns", "missing"].iter().chain(ATTRIBUTES.iter()) {
        assert!(table.contains(word), "no {word} in\n{table}");
    }
    let bad = fixture("regression/errors/no_colon.jsonl");
    let out = steerlm(&["stats", "--input-file", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    // The one error format of every reader: FILE:LINE: reason.
    assert!(stderr(&out).contains("no_colon.jsonl:2: "), "{}", stderr(&out));
    let out = steerlm(&["stats", "--input-file", file.to_str().unwrap(), "--plot", "x.gif"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn plots_are_valid_svg_and_png_of_the_requested_size() {
    let dir = tempdir();
    let file = fixture("helpsteer2/expected/train.jsonl");
    let svg = dir.path().join("h.svg");
    let png = dir.path().join("h.png");
    for (path, size) in [(&svg, "1000x700"), (&png, "900x600")] {
        let out = steerlm(&[
            "stats",
            "-q",
            "--input-file",
            file.to_str().unwrap(),
            "--plot",
            path.to_str().unwrap(),
            "--plot-size",
            size,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.trim_end().ends_with("</svg>"));
    assert!(text.contains("width=\"1000\"") && text.contains("height=\"700\""));
    for attribute in ATTRIBUTES {
        assert!(text.contains(attribute), "no {attribute} in the SVG");
    }
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (900, 600));
    let first = &pixels[..info.line_size.min(3)];
    assert!(pixels.chunks(3).any(|p| p != first), "the picture is one flat colour");
}

/// Without a tokenizer nothing is kept: 300 texts of 1 MiB (a 300 KB .gz) are counted in
/// a few MiB of texts, where they were all held (347 MB peak). With one, batches stop at
/// 64 MiB.
#[test]
fn texts_are_not_held_in_memory_without_a_tokenizer() {
    use std::io::Write;
    let dir = tempdir();
    let input = dir.path().join("big.jsonl.gz");
    let mut gzip = flate2::write::GzEncoder::new(std::fs::File::create(&input).unwrap(), flate2::Compression::fast());
    let line = serde_json::json!({"text": "x".repeat(1 << 20), "label": vec![0; 9]}).to_string();
    for _ in 0..300 {
        writeln!(gzip, "{line}").unwrap();
    }
    gzip.finish().unwrap();
    let mut child = crate::common::steerlm_command(&["-q", "stats", "--input-file", input.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The peak of the process's own memory (VmHWM, which exec starts afresh), sampled until
    // it ends. Not the child's ru_maxrss: Linux carries the spawning test process's peak
    // (vfork shares its memory until exec) into it.
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let exit = loop {
        let hwm = std::fs::read_to_string(&status).ok().and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(exit.success(), "stats failed");
    assert!(peak_kib > 0, "no memory sample");
    assert!(peak_kib < 150 << 10, "stats peaked at {} MiB for 300 MiB of texts", peak_kib >> 10);
}
