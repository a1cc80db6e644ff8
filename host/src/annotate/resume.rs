//! Resuming into an output file that already holds records.
//!
//! `annotate` writes records in input order, so a run that stopped early left a prefix
//! of the full output. By default the run resumes by position: each existing output line
//! must be its input record with only the labeled turns' labels filled in, byte for byte
//! as `annotate` (or the reference, whose `json.dumps` output is the same) writes it.
//! A mismatch is refused with the first line that differs, so an output of another input,
//! or an input changed since, is never silently extended.
//!
//! `--resume-by-key` keeps the reference's rule for outputs its annotator wrote (in any
//! order): skip every input record whose key, the concatenation of all its turns'
//! values, is already in the output. Keys can collide (`["ab","c"]` and `["a","bc"]`, or
//! duplicate records), which is why it is not the default.

use anyhow::{Result, anyhow, bail};
use std::collections::HashSet;
use std::path::Path;
use steerlm_core::pyjson::Ascii;
use steerlm_core::pyvalue::PyValue;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ResumeMode {
    /// The output is a prefix of this input's full output (checked line by line).
    Position,
    /// The reference's rule: skip input records whose turn values are already there.
    Key,
}

/// The reference's resume key: the concatenation of every turn's `value`.
pub fn record_key(record: &PyValue) -> Result<String, String> {
    let turns = record.get("conversations").and_then(PyValue::as_array).ok_or("record has no `conversations` array")?;
    let mut key = String::new();
    for turn in turns {
        key.push_str(turn.get("value").and_then(PyValue::as_str).ok_or("every turn needs a string `value`")?);
    }
    Ok(key)
}

/// The keys of every record in an existing output (for [`ResumeMode::Key`]).
pub fn existing_keys(path: &Path, max_line_bytes: usize) -> Result<HashSet<String>> {
    let mut keys = HashSet::new();
    for line in super::journal::existing_lines(path, max_line_bytes)? {
        let (number, line) = line?;
        let record = parse_output_line(path, number, &line)?;
        keys.insert(record_key(&record).map_err(|e| anyhow!("{}:{number}: {e}", path.display()))?);
    }
    Ok(keys)
}

/// Checks that `line` (line `number` of the output at `path`) is what annotating `record`
/// gives, whatever scores its labeled turns (`labeled`) got.
pub fn check_position(path: &Path, number: u64, line: &[u8], record: &PyValue, labeled: &[usize]) -> Result<()> {
    let written = parse_output_line(path, number, line)?;
    let mut expected = record.clone();
    let turns = expected.get_mut("conversations").and_then(PyValue::as_array_mut);
    let written_turns = written.get("conversations").and_then(PyValue::as_array);
    let labels_carried = match (turns, written_turns) {
        (Some(turns), Some(written_turns)) => labeled.iter().all(|&t| {
            let label = written_turns.get(t).and_then(|w| w.get("label")).and_then(PyValue::as_str);
            match (turns.get_mut(t).and_then(PyValue::as_object_mut), label) {
                (Some(turn), Some(label)) => {
                    turn.insert("label", PyValue::Str(label.to_owned()));
                    true
                }
                _ => false,
            }
        }),
        _ => false,
    };
    let mut rendered = Vec::with_capacity(line.len());
    expected.write(&mut rendered, Ascii::Escaped).map_err(|e| anyhow!(e))?;
    if !labels_carried || rendered != line {
        bail!(
            "{}:{number} is not the annotation of the input's record at the same position: the output was \
             written from another input, or the input changed since. Write to a new --output-file, or pass \
             --resume-by-key if NeMo-Aligner's annotator wrote it",
            path.display()
        );
    }
    Ok(())
}

fn parse_output_line(path: &Path, number: u64, line: &[u8]) -> Result<PyValue> {
    let text = std::str::from_utf8(line)
        .map_err(|e| anyhow!("{}:{number}: invalid UTF-8 ({e}); is this an annotation output?", path.display()))?;
    PyValue::parse(text)
        .map_err(|e| anyhow!("{}:{number}: not a JSON record ({e}); is this an annotation output?", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> PyValue {
        PyValue::parse(json).unwrap()
    }

    fn render(value: &PyValue) -> Vec<u8> {
        let mut out = Vec::new();
        value.write(&mut out, Ascii::Escaped).unwrap();
        out
    }

    fn set(value: &mut PyValue, turn: usize, key: &str, to: &str) {
        let turns = value.get_mut("conversations").and_then(PyValue::as_array_mut).unwrap();
        turns[turn].as_object_mut().unwrap().insert(key, PyValue::Str(to.to_owned()));
    }

    #[test]
    fn keys_collide_where_positions_do_not() {
        let a = parse(r#"{"conversations": [{"value": "ab"}, {"value": "c"}]}"#);
        let b = parse(r#"{"conversations": [{"value": "a"}, {"value": "bc"}]}"#);
        assert_eq!(record_key(&a), record_key(&b));
        let path = Path::new("out.jsonl");
        let annotated_a = render(&a);
        assert!(check_position(path, 1, &annotated_a, &a, &[]).is_ok());
        let e = check_position(path, 1, &annotated_a, &b, &[]).unwrap_err().to_string();
        assert!(e.contains("out.jsonl:1 is not the annotation"), "{e}");
    }

    #[test]
    fn only_labeled_turns_may_differ() {
        let input = parse(
            r#"{"id": 123456789012345678901234567890, "mask": "User", "conversations": [
                {"value": "q", "from": "User", "label": null}, {"value": "a", "from": "Assistant", "label": ""}]}"#,
        );
        let mut annotated = input.clone();
        set(&mut annotated, 1, "label", "quality:4");
        assert!(String::from_utf8(render(&annotated)).unwrap().starts_with("{\"id\": 123456789012345678901234567890,"));
        let path = Path::new("o");
        assert!(check_position(path, 1, &render(&annotated), &input, &[1]).is_ok());
        // A label on a turn that is not scored, or a changed value, is another record.
        let mut wrong = annotated.clone();
        set(&mut wrong, 0, "label", "quality:1");
        assert!(check_position(path, 1, &render(&wrong), &input, &[1]).is_err());
        let mut wrong = annotated.clone();
        set(&mut wrong, 1, "value", "b");
        assert!(check_position(path, 1, &render(&wrong), &input, &[1]).is_err());
        // A labeled turn the output left without a label string is not annotated.
        let mut unlabeled = annotated.clone();
        let turns = unlabeled.get_mut("conversations").and_then(PyValue::as_array_mut).unwrap();
        turns[1].as_object_mut().unwrap().insert("label", PyValue::Null);
        assert!(check_position(path, 1, &render(&unlabeled), &input, &[1]).is_err());
        assert!(
            check_position(path, 2, b"{not json", &input, &[1]).unwrap_err().to_string().contains("o:2: not a JSON")
        );
    }
}
