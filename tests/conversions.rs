//! Every conversion through the binary and its embedded components, against the
//! reference outputs in tests/fixtures/conversions (made by NeMo-Aligner's own scripts)
//! byte for byte; bad input fails cleanly, naming FILE:LINE, leaving no output or
//! temporary file.
//!
//! - `to-regression` (the component and the native engine), gzip in and out with small
//!   chunks, stdin to stdout, `--use-record-system`;
//! - `preprocess` helpsteer, helpsteer2 (and `--only-helpfulness`), helpsteer2
//!   `--preference`, oasst; a bad row writes neither split;
//! - `format` yields exactly the prefixes the reference's reward model scored;
//! - `label parse`/`encode`, `export-components` (valid components), `demo`;
//! - the reference's error files fail on line 2 with nothing left; `--on-error skip`
//!   keeps the good records and reports the bad; malformed JSON, invalid UTF-8, a lone
//!   surrogate, non-finite labels, truncated gzip; an empty file gives empty output;
//! - a 20 MB line converts, and the component memory limit fails it with a clear error;
//! - 1 and 4 threads give the same bytes and report the same first bad line.
//!
//! `--manifest` and `verify-manifest` are in `manifest`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::common::{
    GOOD, assert_failure, assert_same, assert_success, fixture, listing, p, stderr, steerlm, steerlm_command, tempdir,
};

#[test]
fn to_regression_matches_reference() {
    let dir = tempdir();
    let out = dir.path().join("regression.jsonl");
    let result =
        steerlm(&["to-regression", "--input-file", p(&fixture("regression/input.jsonl")), "--output-file", p(&out)]);
    assert_success(&result);
    assert_same(&out, &fixture("regression/expected.jsonl"));
    assert_eq!(listing(dir.path()), ["regression.jsonl"]);
}

#[test]
fn native_engine_gives_the_same_bytes() {
    let dir = tempdir();
    let out = dir.path().join("native.jsonl");
    let input = fixture("regression/input.jsonl");
    assert_success(&steerlm(&[
        "to-regression",
        "--engine",
        "native",
        "--input-file",
        p(&input),
        "--output-file",
        p(&out),
    ]));
    assert_same(&out, &fixture("regression/expected.jsonl"));
}

#[test]
fn gzip_in_and_out_and_small_chunks() {
    let dir = tempdir();
    let gz = dir.path().join("input.jsonl.gz");
    let mut encoder = flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    encoder.write_all(&fs::read(fixture("regression/input.jsonl")).unwrap()).unwrap();
    encoder.finish().unwrap();
    let out = dir.path().join("out.jsonl.gz");
    // 1 MiB chunks over a 140 KB file still exercise the chunk path; the result is gzip.
    assert_success(&steerlm(&["to-regression", "--chunk-mb", "1", "--input-file", p(&gz), "--output-file", p(&out)]));
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(fs::File::open(&out).unwrap()), &mut text)
        .unwrap();
    assert_eq!(text, fs::read(fixture("regression/expected.jsonl")).unwrap());
}

/// `to-regression` from stdin to stdout, `write` feeding its stdin; asserts the output
/// is the reference's for `regression/input.jsonl`.
fn regression_through_pipes(write: impl FnOnce(std::process::ChildStdin) -> std::io::Result<()> + Send + 'static) {
    let mut child = steerlm_command(&["-q", "to-regression", "--input-file", "-", "--output-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || write(stdin));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert_success(&out);
    assert_eq!(out.stdout, fs::read(fixture("regression/expected.jsonl")).unwrap());
}

#[test]
fn stdin_to_stdout() {
    let input = fs::read(fixture("regression/input.jsonl")).unwrap();
    regression_through_pipes(move |mut stdin| stdin.write_all(&input));
}

/// Gzip through a pipe whose writer delivers the first byte alone (a slow producer: ssh,
/// `pv -L`): still told by its two magic bytes.
#[test]
fn gzip_on_stdin_is_told_when_its_first_byte_comes_alone() {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&fs::read(fixture("regression/input.jsonl")).unwrap()).unwrap();
    let input = gzip.finish().unwrap();
    regression_through_pipes(move |mut stdin| {
        stdin.write_all(&input[..1])?;
        stdin.flush()?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        stdin.write_all(&input[1..])
    });
}

#[test]
fn reference_error_files_fail_on_line_two_leaving_nothing() {
    for name in ["label_not_string", "no_colon", "not_a_number", "trailing_comma"] {
        let dir = tempdir();
        let input = fixture(&format!("regression/errors/{name}.jsonl"));
        let out = dir.path().join("out.jsonl");
        let result = steerlm(&["to-regression", "--input-file", p(&input), "--output-file", p(&out)]);
        assert_eq!(result.status.code(), Some(1), "{name}");
        let message = stderr(&result);
        assert!(message.contains(&format!("{}:2: ", input.display())), "{name}: {message}");
        assert!(listing(dir.path()).is_empty(), "{name} left {:?}", listing(dir.path()));
    }
}

#[test]
fn skip_mode_keeps_good_records_and_reports_bad_ones() {
    let dir = tempdir();
    let input = fixture("regression/errors/not_a_number.jsonl");
    let out = dir.path().join("out.jsonl");
    let report = dir.path().join("bad.jsonl");
    let result = steerlm(&[
        "to-regression",
        "--on-error",
        "skip",
        "--error-report",
        p(&report),
        "--input-file",
        p(&input),
        "--output-file",
        p(&out),
    ]);
    assert_success(&result);
    // Line 1 of every error file is the first record of the reference input.
    let expected_first =
        fs::read_to_string(fixture("regression/expected.jsonl")).unwrap().lines().next().unwrap().to_owned();
    assert_eq!(fs::read_to_string(&out).unwrap(), format!("{expected_first}\n"));
    let report: serde_json::Value = serde_json::from_str(fs::read_to_string(&report).unwrap().trim()).unwrap();
    assert_eq!(report["line"], 2);
    assert!(report["error"].as_str().unwrap().contains("not a number"));
    assert!(stderr(&result).contains("skipped 1 bad record"));
}

fn preprocess_case(args: &[&str], expected_dir: &str) {
    let dir = tempdir();
    let out = dir.path().join("out");
    let mut full = args.to_vec();
    full.extend(["--output-dir", p(&out)]);
    assert_success(&steerlm(&full));
    assert_same(&out.join("train.jsonl"), &fixture(&format!("{expected_dir}/train.jsonl")));
    assert_same(&out.join("val.jsonl"), &fixture(&format!("{expected_dir}/val.jsonl")));
    assert_eq!(listing(&out), ["train.jsonl", "val.jsonl"]);
}

#[test]
fn preprocess_helpsteer_matches_reference() {
    preprocess_case(&["preprocess", "helpsteer", "--input-dir", p(&fixture("helpsteer/raw"))], "helpsteer/expected");
}

#[test]
fn preprocess_helpsteer2_matches_reference() {
    let raw = fixture("helpsteer2/raw");
    preprocess_case(&["preprocess", "helpsteer2", "--input-dir", p(&raw)], "helpsteer2/expected");
    preprocess_case(
        &["preprocess", "helpsteer2", "--only-helpfulness", "--input-dir", p(&raw)],
        "helpsteer2/expected_only_helpfulness",
    );
}

#[test]
fn preprocess_helpsteer2_preference_matches_reference() {
    let raw = fixture("helpsteer2_preference/raw");
    preprocess_case(
        &["preprocess", "helpsteer2", "--preference", "--input-dir", p(&raw)],
        "helpsteer2_preference/expected",
    );
    preprocess_case(
        &["preprocess", "helpsteer2", "--preference", "--only-helpfulness", "--input-dir", p(&raw)],
        "helpsteer2_preference/expected_only_helpfulness",
    );
}

#[test]
fn preprocess_oasst_matches_reference() {
    let trees = fixture("oasst/2023-04-12_oasst_all.trees.jsonl.gz");
    preprocess_case(&["preprocess", "oasst", "--input", p(&trees)], "oasst/expected");
}

/// A split that exists but is not a file is named as such (not "missing"), and of a
/// plain and a gzip file both present the plain one is read, with a warning.
#[test]
fn preprocess_names_a_split_that_is_not_a_file_and_warns_of_two() {
    let dir = tempdir();
    let raw = dir.path().join("raw");
    fs::create_dir(&raw).unwrap();
    fs::copy(fixture("helpsteer/raw/train.jsonl"), raw.join("train.jsonl")).unwrap();
    fs::create_dir(raw.join("validation.jsonl")).unwrap();
    let out = dir.path().join("out");
    let result = steerlm(&["preprocess", "helpsteer", "--input-dir", p(&raw), "--output-dir", p(&out)]);
    let message = assert_failure(&result);
    assert!(message.contains("validation.jsonl is not a regular file"), "{message}");

    fs::remove_dir(raw.join("validation.jsonl")).unwrap();
    fs::copy(fixture("helpsteer/raw/validation.jsonl"), raw.join("validation.jsonl")).unwrap();
    fs::write(raw.join("validation.jsonl.gz"), b"not even gzip").unwrap();
    let result = steerlm(&["preprocess", "helpsteer", "--input-dir", p(&raw), "--output-dir", p(&out)]);
    assert_success(&result);
    assert!(stderr(&result).contains("ignoring"), "{}", stderr(&result));
}

#[test]
fn preprocess_with_a_bad_row_writes_neither_file() {
    let dir = tempdir();
    let raw = dir.path().join("raw");
    fs::create_dir(&raw).unwrap();
    fs::copy(fixture("helpsteer/raw/train.jsonl"), raw.join("train.jsonl")).unwrap();
    let mut validation = fs::read_to_string(fixture("helpsteer/raw/validation.jsonl")).unwrap();
    validation.push_str("{\"prompt\": \"p\", \"response\": \"r\"}\n");
    fs::write(raw.join("validation.jsonl"), &validation).unwrap();
    let out = dir.path().join("out");
    let result = steerlm(&["preprocess", "helpsteer", "--input-dir", p(&raw), "--output-dir", p(&out)]);
    assert_eq!(result.status.code(), Some(1));
    let line = validation.lines().count();
    assert!(
        stderr(&result).contains(&format!("validation.jsonl:{line}: row has no `helpfulness` field")),
        "{}",
        stderr(&result)
    );
    assert!(listing(&out).is_empty(), "left {:?}", listing(&out));
}

#[test]
fn format_gives_every_labeled_prefix_the_reward_model_scores() {
    // annotate/scores.jsonl holds the reference's scored texts: exactly what format yields.
    let dir = tempdir();
    let out = dir.path().join("prefixes.jsonl");
    assert_success(&steerlm(&[
        "format",
        "--input-file",
        p(&fixture("annotate/input.jsonl")),
        "--output-file",
        p(&out),
    ]));
    let ours: Vec<String> = fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    let scored: std::collections::BTreeSet<String> = fs::read_to_string(fixture("annotate/scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    let ours_set: std::collections::BTreeSet<String> = ours.iter().cloned().collect();
    assert_eq!(ours_set, scored);
    assert!(ours.iter().all(|t| t.ends_with("<extra_id_2>")));
}

#[test]
fn use_record_system_replaces_the_prompt() {
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    fs::write(&input, r#"{"system": "Be brief.", "mask": "User", "conversations": [{"value": "q", "from": "User"}, {"value": "a", "from": "Assistant", "label": "humor:1"}]}"#).unwrap();
    let out = dir.path().join("out.jsonl");
    assert_success(&steerlm(&[
        "to-regression",
        "--use-record-system",
        "--input-file",
        p(&input),
        "--output-file",
        p(&out),
    ]));
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "{\"text\": \"<extra_id_0>System\\nBe brief.\\n<extra_id_1>User\\nq\\n<extra_id_1>Assistant\\na\\n<extra_id_2>\", \"label\": [-100.0, -100.0, 1.0, -100.0, -100.0, -100.0, -100.0, -100.0, -100.0]}\n"
    );
}

/// Runs to-regression on `content` and asserts it fails naming `line` with `reason`.
#[track_caller]
fn assert_rejected(content: &[u8], line: usize, reason: &str) {
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    fs::write(&input, content).unwrap();
    let out = dir.path().join("out.jsonl");
    let result = steerlm(&["to-regression", "--input-file", p(&input), "--output-file", p(&out)]);
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    let message = stderr(&result);
    assert!(message.contains(&format!("in.jsonl:{line}: ")) && message.contains(reason), "{message}");
    assert_eq!(listing(dir.path()), ["in.jsonl"]);
}

#[test]
fn malformed_json_names_the_line() {
    assert_rejected(
        format!("{GOOD}\n{GOOD}\n{{\"mask\": \"User\", \"conversations\": [\n").as_bytes(),
        3,
        "invalid JSON",
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    let mut content = format!("{GOOD}\n").into_bytes();
    content.extend_from_slice(
        b"{\"mask\": \"User\", \"conversations\": [{\"value\": \"\xff\xfe\", \"from\": \"User\"}]}\n",
    );
    assert_rejected(&content, 2, "invalid UTF-8");
}

#[test]
fn lone_surrogate_escape_is_rejected() {
    let bad = r#"{"mask": "User", "conversations": [{"value": "\ud800", "from": "User"}]}"#;
    assert_rejected(format!("{GOOD}\n{bad}\n").as_bytes(), 2, "surrogate");
}

#[test]
fn non_finite_label_values_are_rejected() {
    for value in ["inf", "nan", "-Infinity", "1e999"] {
        let bad = GOOD.replace("humor:1", &format!("humor:{value}"));
        assert_rejected(format!("{GOOD}\n{bad}\n").as_bytes(), 2, "not finite");
    }
}

#[test]
fn truncated_gzip_fails_without_output() {
    let dir = tempdir();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for _ in 0..2000 {
        writeln!(encoder, "{GOOD}").unwrap();
    }
    let gz = encoder.finish().unwrap();
    let input = dir.path().join("in.jsonl.gz");
    fs::write(&input, &gz[..gz.len() / 2]).unwrap();
    let out = dir.path().join("out.jsonl");
    let result = steerlm(&["to-regression", "--input-file", p(&input), "--output-file", p(&out)]);
    assert_eq!(result.status.code(), Some(1));
    assert!(stderr(&result).contains("in.jsonl.gz"), "{}", stderr(&result));
    assert_eq!(listing(dir.path()), ["in.jsonl.gz"]);
}

#[test]
fn empty_file_gives_empty_output() {
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    fs::write(&input, b"").unwrap();
    let out = dir.path().join("out.jsonl");
    assert_success(&steerlm(&["to-regression", "--input-file", p(&input), "--output-file", p(&out)]));
    assert_eq!(fs::read(&out).unwrap(), b"");
}

fn twenty_megabyte_record() -> String {
    let value = "x".repeat(20 << 20);
    format!(
        r#"{{"mask": "User", "conversations": [{{"value": "{value}", "from": "User"}}, {{"value": "a", "from": "Assistant", "label": "humor:1"}}]}}"#
    )
}

#[test]
fn twenty_megabyte_line_converts() {
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    fs::write(&input, format!("{GOOD}\n{}\n{GOOD}\n", twenty_megabyte_record())).unwrap();
    let out = dir.path().join("out.jsonl");
    assert_success(&steerlm(&["to-regression", "--input-file", p(&input), "--output-file", p(&out)]));
    let text = fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], lines[2]);
    let big: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert!(big["text"].as_str().unwrap().contains(&"x".repeat(20 << 20)));
}

#[test]
fn memory_limit_is_enforced_with_a_clear_error() {
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    fs::write(&input, format!("{}\n", twenty_megabyte_record())).unwrap();
    let out = dir.path().join("out.jsonl");
    let result =
        steerlm(&["--component-memory-mb", "16", "to-regression", "--input-file", p(&input), "--output-file", p(&out)]);
    assert_eq!(result.status.code(), Some(1));
    assert!(
        stderr(&result).contains("in.jsonl:1: the regression component needed more than its memory limit of 16 MiB"),
        "{}",
        stderr(&result)
    );
    assert_eq!(listing(dir.path()), ["in.jsonl"]);

    // Between good records, in one chunk: the error names its line, and --on-error skip
    // skips only it (the whole run failed, naming nothing), the rest converted as alone.
    let good = fs::read_to_string(fixture("regression/input.jsonl")).unwrap();
    let (first, rest) = good.split_at(good.find('\n').unwrap() + 1);
    fs::write(&input, format!("{first}{}\n{rest}", twenty_megabyte_record())).unwrap();
    let report = dir.path().join("errors.jsonl");
    let result = steerlm(&[
        "--component-memory-mb",
        "16",
        "to-regression",
        "--input-file",
        p(&input),
        "--output-file",
        p(&out),
        "--on-error",
        "skip",
        "--error-report",
        p(&report),
    ]);
    assert_success(&result);
    let report: serde_json::Value = serde_json::from_str(fs::read_to_string(&report).unwrap().trim()).unwrap();
    assert_eq!(report["line"], 2);
    assert!(report["error"].as_str().unwrap().contains("memory limit of 16 MiB"), "{report}");
    let alone = dir.path().join("alone.jsonl");
    fs::write(&alone, good).unwrap();
    let expected = dir.path().join("expected.jsonl");
    assert_success(&steerlm(&["to-regression", "--input-file", p(&alone), "--output-file", p(&expected)]));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&expected).unwrap());
}

#[test]
fn export_components_writes_valid_components() {
    let dir = tempdir();
    assert_success(&steerlm(&["export-components", p(dir.path())]));
    let names = listing(dir.path());
    assert_eq!(
        names,
        [
            "steerlm-formatting.wasm",
            "steerlm-http.wasm",
            "steerlm-labels.wasm",
            "steerlm-preprocess.wasm",
            "steerlm-regression.wasm"
        ]
    );
    for name in names {
        let bytes = fs::read(dir.path().join(&name)).unwrap();
        // "\0asm", then the component-model layer (0x0d 0x00 0x01 0x00), not a core module.
        assert_eq!(&bytes[..8], b"\0asm\x0d\x00\x01\x00", "{name}");
    }

    // A link planted in the folder is refused, and what it points at kept.
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, b"keep me\n").unwrap();
    let planted = tempdir();
    std::os::unix::fs::symlink(&victim, planted.path().join("steerlm-labels.wasm")).unwrap();
    let result = steerlm(&["export-components", p(planted.path())]);
    let stderr = assert_failure(&result);
    assert!(stderr.contains("steerlm-labels.wasm is a symbolic link: refusing to write through it"), "{stderr}");
    assert_eq!(fs::read(&victim).unwrap(), b"keep me\n");

    // A FIFO where the last component goes is refused before anything is written (it
    // blocked the export, after four components were written and announced).
    let fifo_dir = tempdir();
    crate::common::mkfifo(&fifo_dir.path().join("steerlm-http.wasm"));
    let stderr = assert_failure(&steerlm(&["export-components", p(fifo_dir.path())]));
    assert!(stderr.contains("steerlm-http.wasm is not a regular file (a folder, FIFO or device)"), "{stderr}");
    assert_eq!(listing(fifo_dir.path()), ["steerlm-http.wasm"]);
}

#[test]
fn label_commands_parse_and_encode() {
    let out = steerlm(&["label", "parse", "helpfulness:3:9, correctness:4,verbosity: 2"]);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["vector"], serde_json::json!([-100.0, -100.0, -100.0, -100.0, 3.0, -100.0, -100.0, -100.0, 2.0]));
    assert_eq!(json["pairs"][1], serde_json::json!([" correctness", "4"]));
    let out = steerlm(&["label", "encode", "2.5", "3.5", "-1", "9", "0.49", "1.5", "0.5", "3.49", "4"]);
    assert_success(&out);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "quality:2,toxicity:4,humor:0,creativity:4,helpfulness:0,correctness:2,coherence:0,complexity:3,verbosity:4\n"
    );
    let out = steerlm(&["label", "parse", "helpfulness"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no ':'"));
}

#[test]
fn demo_runs_the_whole_path() {
    let dir = tempdir();
    let out = steerlm(&["demo", "--output-dir", p(dir.path())]);
    assert_success(&out);
    assert_same(&dir.path().join("sft/train.jsonl"), &fixture("helpsteer/expected/train.jsonl"));
    let regression = fs::read_to_string(dir.path().join("regression/val.jsonl")).unwrap();
    assert_eq!(regression.lines().count(), 60);
    assert!(String::from_utf8_lossy(&out.stdout).contains("regression lines:"));
}

#[test]
fn threads_keep_order_and_report_the_first_bad_line() {
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    // ~3.5 MB: several 1 MiB chunks. Bad lines in the second and the last chunk.
    let padding = "p".repeat(1000);
    let mut lines: Vec<String> = (0..3500).map(|i| GOOD.replace("\"q\"", &format!("\"q{i} {padding}\""))).collect();
    lines[1500] = lines[1500].replace("humor:1", "humor:x");
    lines[3400] = lines[3400].replace("humor:1", "humor:y");
    fs::write(&input, lines.join("\n") + "\n").unwrap();
    let run = |threads: &str, on_error: &str, out: &Path| {
        steerlm(&[
            "to-regression",
            "--chunk-mb",
            "1",
            "--threads",
            threads,
            "--on-error",
            on_error,
            "--input-file",
            p(&input),
            "--output-file",
            p(out),
        ])
    };
    for threads in ["1", "4"] {
        let result = run(threads, "fail", &dir.path().join("fail.jsonl"));
        assert_eq!(result.status.code(), Some(1));
        assert!(stderr(&result).contains("in.jsonl:1501: "), "threads={threads}: {}", stderr(&result));
    }
    let (one, four) = (dir.path().join("one.jsonl"), dir.path().join("four.jsonl"));
    assert_success(&run("1", "skip", &one));
    assert_success(&run("4", "skip", &four));
    let bytes = fs::read(&one).unwrap();
    assert_eq!(bytes, fs::read(&four).unwrap());
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 3498);
}

/// Commands that print to stdout fail with a message, not a panic, when stdout is a full
/// disk or a closed pipe.
#[test]
fn printing_to_a_full_disk_or_a_closed_pipe_is_an_error_not_a_panic() {
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let sft = fixture("regression/input.jsonl");
    let commands: [&[&str]; 3] = [
        &["label", "parse", "helpfulness:3"],
        &["label", "encode", "1", "2", "3", "4", "0", "1", "2", "3", "4"],
        &["stats", "--input-file", p(&sft)],
    ];
    for args in commands {
        let out = steerlm_command(args).stdout(full()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("cannot write <stdout>"), "{args:?}: {}", stderr(&out));
        // A reader that is gone: stdout is a pipe whose reading end is closed.
        let mut child = steerlm_command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{args:?}: {}", stderr(&out));
    }
}
