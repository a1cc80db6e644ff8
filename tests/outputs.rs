//! What steerlm may and may not do to the files it is given, through the binary:
//! outputs never replace an input, a FIFO, a device or a symbolic link; no temporary
//! file survives SIGTERM or a failed rename; lines longer than `--max-line-mb` are
//! refused with their FILE:LINE; a result past wasmtime's default 128 MiB converts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    assert_failure, assert_success, fixture, listing, mkfifo, model_dir, p, steerlm, steerlm_command, tempdir,
};

/// Asserts a refusal: exit status 1 and a message containing every one of `parts`.
#[track_caller]
fn assert_refused(out: &Output, parts: &[&str]) {
    let message = assert_failure(out);
    for part in parts {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
}

fn regression_input() -> PathBuf {
    fixture("regression/input.jsonl")
}

fn regression_expected() -> Vec<u8> {
    fs::read(fixture("regression/expected.jsonl")).unwrap()
}

/// A copy of the regression fixture in `dir`, to be protected.
fn input_copy(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("data.jsonl");
    let bytes = fs::read(regression_input()).unwrap();
    fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

// ---- outputs that are inputs, or each other ----

#[test]
fn an_error_report_or_manifest_naming_the_input_is_refused_and_the_input_kept() {
    for command in ["to-regression", "format"] {
        for flag in ["--error-report", "--manifest"] {
            let dir = tempdir();
            let (input, bytes) = input_copy(dir.path());
            let out = dir.path().join("out.jsonl");
            let result = steerlm(&[
                command,
                "--on-error",
                "skip",
                flag,
                p(&input),
                "--input-file",
                p(&input),
                "--output-file",
                p(&out),
            ]);
            assert_refused(&result, &[flag, "--input-file", "refusing to overwrite an input"]);
            assert_eq!(fs::read(&input).unwrap(), bytes, "{command} {flag}");
            assert_eq!(listing(dir.path()), ["data.jsonl"], "{command} {flag}");
        }
    }
}

/// `score` and `annotate --model` read a whole folder: no output may replace its weights,
/// config or tokenizer, by any name, nor a shard its index names outside the folder.
#[test]
fn an_output_that_is_a_model_file_is_refused_and_the_model_kept() {
    let dir = tempdir();
    let model = dir.path().join("model");
    fs::create_dir(&model).unwrap();
    for entry in fs::read_dir(model_dir("llama9")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let texts = dir.path().join("texts.jsonl");
    fs::write(&texts, "{\"text\": \"hello\"}\n").unwrap();
    let sft = dir.path().join("sft.jsonl");
    fs::copy(fixture("regression/input.jsonl"), &sft).unwrap();
    let link = dir.path().join("weights-link");
    std::os::unix::fs::symlink(model.join("model.safetensors"), &link).unwrap();
    let before = |name: &str| fs::read(model.join(name)).unwrap();
    let kept: Vec<(&str, Vec<u8>)> =
        ["model.safetensors", "config.json", "tokenizer.json"].into_iter().map(|n| (n, before(n))).collect();
    // `command --device cpu --model MODEL --input-file INPUT --output-file OUTPUT`
    let run = |command: &str, model: &Path, input: &Path, output: &Path| {
        steerlm(&[
            command,
            "--device",
            "cpu",
            "--model",
            p(model),
            "--input-file",
            p(input),
            "--output-file",
            p(output),
        ])
    };
    for output in [model.join("model.safetensors"), model.join("config.json"), model.join("tokenizer.json"), link] {
        for (command, input) in [("score", &texts), ("annotate", &sft)] {
            let result = run(command, &model, input, &output);
            assert_refused(&result, &["--output-file", "--model", "refusing to overwrite an input"]);
        }
    }
    for (name, bytes) in &kept {
        assert_eq!(&fs::read(model.join(name)).unwrap(), bytes, "{name} changed");
    }
    // A new file in the folder is fine.
    assert_success(&run("score", &model, &texts, &model.join("scores.jsonl")));
    // A shard the index names outside the folder is an input too.
    let sharded = dir.path().join("sharded");
    fs::create_dir(&sharded).unwrap();
    for name in ["config.json", "tokenizer.json"] {
        fs::copy(model.join(name), sharded.join(name)).unwrap();
    }
    let outside = dir.path().join("outside.safetensors");
    fs::copy(model.join("model.safetensors"), &outside).unwrap();
    fs::write(
        sharded.join("model.safetensors.index.json"),
        r#"{"weight_map": {"score.weight": "../outside.safetensors"}}"#,
    )
    .unwrap();
    let result = run("score", &sharded, &texts, &outside);
    assert_refused(&result, &["--output-file", "outside.safetensors", "refusing to overwrite an input"]);
    assert_eq!(fs::read(&outside).unwrap(), kept[0].1);
}

#[test]
fn an_output_file_that_is_the_input_through_a_link_is_refused() {
    let dir = tempdir();
    let (input, bytes) = input_copy(dir.path());
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink("data.jsonl", &link).unwrap();
    let result = steerlm(&["to-regression", "--input-file", p(&input), "--output-file", p(&link)]);
    assert_refused(&result, &["--output-file", "is the same file as --input-file"]);
    assert_eq!(fs::read(&input).unwrap(), bytes);
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}

#[test]
fn standard_streams_that_are_the_input_are_refused() {
    let dir = tempdir();
    let (input, bytes) = input_copy(dir.path());
    let run = |args: &[&str], stdout: fs::File| {
        let mut command = steerlm_command(args);
        command.stdin(fs::File::open(&input).unwrap()).stdout(stdout).stderr(Stdio::piped());
        command.output().unwrap()
    };
    // `steerlm ... --input-file - --output-file data.jsonl < data.jsonl`
    let result = run(
        &["to-regression", "--input-file", "-", "--output-file", p(&input)],
        fs::File::create(dir.path().join("log")).unwrap(),
    );
    assert_refused(&result, &["--output-file", "--input-file - (a standard stream)", "refusing to overwrite an input"]);
    // `steerlm ... --input-file data.jsonl --output-file - >> data.jsonl`
    let append = fs::OpenOptions::new().append(true).open(&input).unwrap();
    let result = run(&["to-regression", "--input-file", p(&input), "--output-file", "-"], append);
    assert_refused(&result, &["--output-file - (a standard stream)", "refusing to overwrite an input"]);
    assert_eq!(fs::read(&input).unwrap(), bytes);
}

#[test]
fn two_outputs_naming_one_file_are_refused() {
    let dir = tempdir();
    let out = dir.path().join("out.jsonl");
    let same = dir.path().join(".").join("out.jsonl");
    let result = steerlm(&[
        "to-regression",
        "--on-error",
        "skip",
        "--error-report",
        p(&same),
        "--input-file",
        p(&regression_input()),
        "--output-file",
        p(&out),
    ]);
    assert_refused(&result, &["--output-file", "--error-report", "are the same file"]);
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn preprocess_into_its_own_input_dir_is_refused_and_the_raw_data_kept() {
    let dir = tempdir();
    let raw = dir.path().join("raw");
    fs::create_dir(&raw).unwrap();
    for name in ["train.jsonl", "validation.jsonl"] {
        fs::copy(fixture("helpsteer/raw").join(name), raw.join(name)).unwrap();
    }
    let before = fs::read(raw.join("train.jsonl")).unwrap();
    let result = steerlm(&["preprocess", "helpsteer", "--input-dir", p(&raw), "--output-dir", p(&raw)]);
    assert_refused(&result, &["--output-dir", "train.jsonl", "--input-dir", "refusing to overwrite an input"]);
    assert_eq!(fs::read(raw.join("train.jsonl")).unwrap(), before);
    assert_eq!(listing(&raw), ["train.jsonl", "validation.jsonl"]);
}

#[test]
fn stats_plot_and_score_output_naming_the_input_are_refused() {
    let dir = tempdir();
    // A JSONL file with a picture's name, so that --plot accepts the name.
    let input = dir.path().join("data.svg");
    let bytes = fs::read(regression_input()).unwrap();
    fs::write(&input, &bytes).unwrap();
    let result = steerlm(&["stats", "--input-file", p(&input), "--plot", p(&input)]);
    assert_refused(&result, &["--plot", "--input-file"]);
    // Refused before the model is even looked for.
    let result = steerlm(&["score", "--model", "no-such-model", "--input-file", p(&input), "--output-file", p(&input)]);
    assert_refused(&result, &["--output-file", "--input-file"]);
    assert_eq!(fs::read(&input).unwrap(), bytes);
}

// ---- special outputs ----

#[test]
fn a_fifo_output_is_written_through_and_stays_a_fifo() {
    let dir = tempdir();
    let fifo = dir.path().join("pipe");
    mkfifo(&fifo);
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || fs::read(reader_path).unwrap());
    let result = steerlm(&["to-regression", "--input-file", p(&regression_input()), "--output-file", p(&fifo)]);
    assert_success(&result);
    assert_eq!(reader.join().unwrap(), regression_expected());
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(listing(dir.path()), ["pipe"]);
}

#[test]
fn a_symlinked_output_keeps_the_link_and_its_target_gets_the_bytes() {
    let dir = tempdir();
    let target = dir.path().join("real.jsonl");
    fs::write(&target, b"old\n").unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink("real.jsonl", &link).unwrap();
    let result = steerlm(&["to-regression", "--input-file", p(&regression_input()), "--output-file", p(&link)]);
    assert_success(&result);
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(&target).unwrap(), regression_expected());
    assert_eq!(listing(dir.path()), ["link.jsonl", "real.jsonl"]);
}

#[test]
fn dev_null_as_every_output_stays_a_char_device() {
    // Writes /dev/null only through the write-through path the FIFO tests prove, and
    // only after Output's unit test has shown it chooses that path for /dev/null.
    let result = steerlm(&[
        "to-regression",
        "--on-error",
        "skip",
        "--error-report",
        "/dev/null",
        "--input-file",
        p(&regression_input()),
        "--output-file",
        "/dev/null",
    ]);
    assert_success(&result);
    assert!(fs::symlink_metadata("/dev/null").unwrap().file_type().is_char_device());
}

// ---- all outputs or none ----

/// The old bytes of every output survive a failure that comes late: while writing
/// preprocess's second output, the error report, or the manifest. Outputs are placed
/// together, only once the last of them is written (`/dev/full` fails every write).
#[test]
fn a_late_write_failure_keeps_every_old_output() {
    let dir = tempdir();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("train.jsonl"), b"old train\n").unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("val.jsonl")).unwrap();
    let raw = fixture("helpsteer/raw");
    let result = steerlm(&["preprocess", "helpsteer", "--input-dir", p(&raw), "--output-dir", p(&out)]);
    assert_refused(&result, &["val.jsonl", "No space left on device"]);
    assert_eq!(fs::read(out.join("train.jsonl")).unwrap(), b"old train\n");
    assert_eq!(listing(&out), ["train.jsonl", "val.jsonl"]);

    let output = dir.path().join("regression.jsonl");
    fs::write(&output, b"old regression\n").unwrap();
    let full = dir.path().join("full.jsonl");
    std::os::unix::fs::symlink("/dev/full", &full).unwrap();
    let convert = |extra: &[&str], input: &Path| {
        let mut args = vec!["to-regression", "--input-file", p(input), "--output-file", p(&output)];
        args.extend(extra);
        steerlm(&args)
    };
    let result = convert(&["--manifest", p(&full)], &regression_input());
    assert_refused(&result, &["writing the manifest", "No space left on device"]);
    let bad = fixture("regression/errors/no_colon.jsonl");
    let result = convert(&["--on-error", "skip", "--error-report", p(&full)], &bad);
    assert_refused(&result, &["full.jsonl", "No space left on device"]);
    assert_eq!(fs::read(&output).unwrap(), b"old regression\n");
    assert_eq!(listing(dir.path()), ["full.jsonl", "out", "regression.jsonl"]);

    // The same commands with writable files place everything.
    let (manifest, report) = (dir.path().join("m.json"), dir.path().join("bad.jsonl"));
    assert_success(&convert(&["--on-error", "skip", "--error-report", p(&report), "--manifest", p(&manifest)], &bad));
    assert_success(&steerlm(&["verify-manifest", p(&manifest)]));
    assert!(fs::read_to_string(&report).unwrap().contains("no_colon.jsonl"));
}

// ---- temporary files ----

/// `to-regression` reading from a pipe this test holds open, so it never finishes on
/// its own; returns once its temporary output exists.
fn start_endless_conversion(dir: &Path, out: &Path) -> (Child, std::process::ChildStdin) {
    let mut child = steerlm_command(&["-q", "to-regression", "--input-file", "-", "--output-file", p(out)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&fs::read(regression_input()).unwrap()).unwrap();
    // A generous deadline only so that a broken build fails instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !listing(dir).iter().any(|name| name.ends_with(".tmp")) {
        assert!(Instant::now() < deadline, "no temporary output appeared");
        assert!(child.try_wait().unwrap().is_none(), "steerlm exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, stdin)
}

#[test]
fn sigterm_removes_the_temporary_output() {
    let dir = tempdir();
    let out = dir.path().join("out.jsonl");
    let (child, stdin) = start_endless_conversion(dir.path(), &out);
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let result = child.wait_with_output().unwrap();
    drop(stdin);
    assert!(!result.status.success());
    assert!(!out.exists());
    assert!(listing(dir.path()).is_empty(), "left {:?}", listing(dir.path()));
}

/// SIGKILL cannot be caught: the temporary output stays, with steerlm's name in it, and the
/// next run writing that output names it in a warning (and leaves it: another run may be
/// writing it).
#[test]
fn a_temporary_output_left_by_sigkill_is_named_by_the_next_run() {
    let dir = tempdir();
    let out = dir.path().join("out.jsonl");
    let (mut child, stdin) = start_endless_conversion(dir.path(), &out);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let left = listing(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(".out.jsonl.steerlm-") && left[0].ends_with(".tmp"), "{left:?}");
    let run = steerlm(&["to-regression", "--input-file", p(&regression_input()), "--output-file", p(&out)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stale = dir.path().join(&left[0]);
    let warning = format!("warning: {} is left from an unfinished run writing {}", stale.display(), out.display());
    assert!(String::from_utf8_lossy(&run.stderr).contains(&warning), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(fs::read(&out).unwrap(), regression_expected());
    assert!(stale.is_file(), "the leftover is named, not deleted");
}

#[test]
fn a_failed_final_rename_removes_the_temporary_output() {
    let dir = tempdir();
    let out = dir.path().join("out.jsonl");
    let (child, stdin) = start_endless_conversion(dir.path(), &out);
    // The destination becomes a non-empty directory before the output is renamed.
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep"), b"").unwrap();
    drop(stdin);
    let result = child.wait_with_output().unwrap();
    assert_refused(&result, &["cannot move the output into place"]);
    assert_eq!(listing(dir.path()), ["out.jsonl"]);
    assert_eq!(listing(&out), ["keep"]);
}

// ---- limits ----

/// An SFT record whose assistant turn is `size` bytes of text: one line of about `size`.
fn record_of(size: usize) -> String {
    let value = "a".repeat(size);
    format!(
        "{{\"mask\": \"User\", \"conversations\": [{{\"value\": \"Hi\", \"from\": \"User\", \"label\": null}}, \
         {{\"value\": \"{value}\", \"from\": \"Assistant\", \"label\": \"helpfulness:3\"}}]}}\n"
    )
}

#[test]
fn a_line_over_max_line_mb_is_refused_naming_it_in_every_reader() {
    let dir = tempdir();
    let input = dir.path().join("long.jsonl");
    let mut content = fs::read_to_string(regression_input()).unwrap().lines().next().unwrap().to_owned();
    content.push('\n');
    content.push_str(&record_of(3 << 19));
    fs::write(&input, &content).unwrap();
    let out = dir.path().join("out.jsonl");
    let expected =
        format!("{}:2: line is longer than the limit of 1 MiB (raise it with --max-line-mb)", input.display());
    for engine in ["component", "native"] {
        let result = steerlm(&[
            "--max-line-mb",
            "1",
            "to-regression",
            "--engine",
            engine,
            "--input-file",
            p(&input),
            "--output-file",
            p(&out),
        ]);
        assert_refused(&result, &[&expected]);
        assert_eq!(listing(dir.path()), ["long.jsonl"]);
    }
    let result = steerlm(&["stats", "--max-line-mb", "1", "--input-file", p(&input)]);
    assert_refused(&result, &[&expected]);
    let model = model_dir("qwen9");
    let texts = dir.path().join("texts.jsonl");
    fs::write(&texts, format!("{{\"text\": \"hi\"}}\n{{\"text\": \"{}\"}}\n", "a".repeat(3 << 19))).unwrap();
    let result = steerlm(&[
        "score",
        "--max-line-mb",
        "1",
        "--model",
        p(&model),
        "--device",
        "cpu",
        "--input-file",
        p(&texts),
        "--output-file",
        p(&out),
    ]);
    assert_refused(&result, &[&format!("{}:2: line is longer than the limit of 1 MiB", texts.display())]);
    // Raising the limit lets the same line through.
    let result = steerlm(&["--max-line-mb", "2", "to-regression", "--input-file", p(&input), "--output-file", p(&out)]);
    assert_success(&result);
    assert_eq!(fs::read_to_string(&out).unwrap().lines().count(), 2);
}

#[test]
fn a_gzip_of_one_long_line_is_refused_without_inflating_it() {
    let dir = tempdir();
    let input = dir.path().join("bomb.jsonl.gz");
    let mut encoder = flate2::write::GzEncoder::new(fs::File::create(&input).unwrap(), flate2::Compression::best());
    // 64 MiB of one line, a few hundred KB compressed; only 1 MiB of it may be read.
    let block = vec![b'a'; 1 << 20];
    for _ in 0..64 {
        encoder.write_all(&block).unwrap();
    }
    encoder.finish().unwrap();
    let out = dir.path().join("out.jsonl");
    let result = steerlm(&["to-regression", "--max-line-mb", "1", "--input-file", p(&input), "--output-file", p(&out)]);
    assert_refused(&result, &[&format!("{}:1: line is longer than the limit of 1 MiB", input.display())]);
    assert_eq!(listing(dir.path()), ["bomb.jsonl.gz"]);
}

#[test]
fn a_line_past_wasmtimes_default_128_mib_converts_in_the_component() {
    let dir = tempdir();
    let input = dir.path().join("big.jsonl");
    fs::write(&input, record_of(130 << 20)).unwrap();
    let out = dir.path().join("out.jsonl");
    let result = steerlm(&["to-regression", "--threads", "1", "--input-file", p(&input), "--output-file", p(&out)]);
    assert_success(&result);
    let output = fs::read(&out).unwrap();
    assert!(output.len() > 130 << 20, "{} bytes", output.len());
    assert!(output.starts_with(b"{\"text\": \"<extra_id_0>System\\n"), "{:?}", String::from_utf8_lossy(&output[..80]));
    assert_eq!(output.iter().filter(|&&b| b == b'\n').count(), 1);
}
