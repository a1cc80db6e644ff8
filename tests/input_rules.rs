//! The input rules every command applies, through the binary: records and turns must be
//! JSON objects, a byte order mark gets a clear hint, a key may appear once per object,
//! and integers keep every digit (Python's `json` keeps them exact).

use std::fs;

use crate::common::{GOOD, p, stderr, steerlm, tempdir};

/// Runs `command` on a file holding `content` (`--input-file`, `--output-file` unless
/// `stats`) and asserts it fails naming `line` and `reason`, writing no output.
#[track_caller]
fn assert_refused(command: &str, content: &str, line: usize, reason: &str) {
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    fs::write(&input, content).unwrap();
    let out = dir.path().join("out.jsonl");
    let mut args = vec![command, "--input-file", p(&input)];
    if command != "stats" {
        args.extend(["--output-file", p(&out)]);
    }
    let result = steerlm(&args);
    let message = stderr(&result);
    assert_eq!(result.status.code(), Some(1), "{command}: {message}");
    assert!(message.contains(&format!("in.jsonl:{line}: ")), "{command}: no line {line} in: {message}");
    assert!(message.contains(reason), "{command}: no {reason:?} in: {message}");
    assert!(!out.exists(), "{command} wrote output");
}

#[test]
fn records_and_turns_must_be_objects() {
    let record_as_array = r#"[[{"value": "q", "from": "User", "label": "humor:1"}], "User"]"#;
    let turn_as_array = r#"{"mask": "User", "conversations": [["q", "User", "humor:1"]]}"#;
    for command in ["to-regression", "format"] {
        assert_refused(command, &format!("{GOOD}\n{record_as_array}\n"), 2, "expected an SFT record (a JSON object)");
        assert_refused(command, &format!("{GOOD}\n{turn_as_array}\n"), 2, "expected a turn (a JSON object)");
    }
    assert_refused("stats", &format!("{GOOD}\n{turn_as_array}\n"), 2, "a turn must be a JSON object");
}

#[test]
fn a_byte_order_mark_gets_a_hint() {
    for command in ["to-regression", "stats"] {
        assert_refused(command, &format!("\u{feff}{GOOD}\n{GOOD}\n"), 1, "byte order mark (BOM); remove it");
    }
}

#[test]
fn a_key_may_appear_once_in_every_command() {
    let known = GOOD.replace(r#""mask": "User","#, r#""mask": "User", "mask": "Assistant","#);
    let unknown = GOOD.replace(r#""mask": "User","#, r#""id": 1, "mask": "User", "id": 2,"#);
    let in_turn = GOOD.replace(r#""label": "humor:1""#, r#""label": "humor:1", "label": "humor:4""#);
    for command in ["to-regression", "format", "stats"] {
        assert_refused(command, &format!("{GOOD}\n{known}\n"), 2, r#"duplicate key "mask""#);
        assert_refused(command, &format!("{GOOD}\n{unknown}\n"), 2, r#"duplicate key "id""#);
        assert_refused(command, &format!("{GOOD}\n{in_turn}\n"), 2, r#"duplicate key "label""#);
    }

    let dir = tempdir();
    let raw = dir.path().join("raw");
    fs::create_dir(&raw).unwrap();
    let row = r#"{"prompt": "p", "response": "r", "helpfulness": 3, "correctness": 3, "coherence": 4, "complexity": 2, "verbosity": 1}"#;
    let twice = row.replace(r#""helpfulness": 3,"#, r#""helpfulness": 3, "helpfulness": 0,"#);
    fs::write(raw.join("train.jsonl"), format!("{row}\n")).unwrap();
    fs::write(raw.join("validation.jsonl"), format!("{row}\n{twice}\n")).unwrap();
    let out = dir.path().join("out");
    let result = steerlm(&["preprocess", "helpsteer", "--input-dir", p(&raw), "--output-dir", p(&out)]);
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    assert!(
        stderr(&result).contains(r#"validation.jsonl:2: invalid JSON: duplicate key "helpfulness""#),
        "{}",
        stderr(&result)
    );
}

/// The expected labels are what the reference script writes: CPython 3.11 formats
/// `f"{attr}:{dp[attr]}"` with the exact integer `json.loads` read.
#[test]
fn preprocess_keeps_big_integer_scores_exact() {
    let dir = tempdir();
    let raw = dir.path().join("raw");
    fs::create_dir(&raw).unwrap();
    let row = r#"{"prompt": "p", "response": "r", "helpfulness": 123456789012345678901234567890, "correctness": -98765432109876543210, "coherence": 4, "complexity": 2.50, "verbosity": -0}"#;
    fs::write(raw.join("train.jsonl"), format!("{row}\n")).unwrap();
    fs::write(raw.join("validation.jsonl"), "").unwrap();
    let out = dir.path().join("out");
    let result = steerlm(&["preprocess", "helpsteer", "--input-dir", p(&raw), "--output-dir", p(&out)]);
    assert!(result.status.success(), "{}", stderr(&result));
    let train = fs::read_to_string(out.join("train.jsonl")).unwrap();
    assert!(
        train.contains(r#""label": "helpfulness:123456789012345678901234567890,correctness:-98765432109876543210,coherence:4,complexity:2.5,verbosity:0"}"#),
        "{train}"
    );
}

/// Numeric flags past what they can mean are refused by name before anything runs: a
/// timeout of 2^64 seconds made every served request panic on deadline arithmetic, a
/// component memory of 2^44 MiB wrapped to 0.
#[test]
fn flags_out_of_range_are_refused_by_name() {
    for (command, flag, value) in [
        (&["serve-component"][..], "--body-read-timeout", "18446744073709551615"),
        (&["serve", "--model", "."], "--header-read-timeout", "604801"),
        (&["serve", "--model", "."], "--max-queue-delay-ms", "1e300"),
        (&["demo"], "--component-timeout", "0"),
        (&["demo"], "--component-timeout", "4611686018427387904"),
        (&["demo"], "--component-memory-mb", "17592186044416"),
        (&["demo"], "--component-memory-mb", "0"),
        (&["annotate", "--input-file", "x", "--output-file", "y"], "--request-timeout", "99999999999"),
    ] {
        let args = [command, &[flag, value]].concat();
        let result = steerlm(&args);
        let message = stderr(&result);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {message}");
        assert!(message.contains(&format!("invalid value '{value}' for '{flag}")), "{args:?}: {message}");
    }
}
