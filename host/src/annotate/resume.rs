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
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use steerlm_core::pyjson::{Ascii, write_value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ResumeMode {
    /// The output is a prefix of this input's full output (checked line by line).
    Position,
    /// The reference's rule: skip input records whose turn values are already there.
    Key,
}

/// The reference's resume key: the concatenation of every turn's `value`.
pub fn record_key(record: &Value) -> Result<String, String> {
    let turns = record.get("conversations").and_then(Value::as_array).ok_or("record has no `conversations` array")?;
    let mut key = String::new();
    for turn in turns {
        match turn.get("value") {
            Some(Value::String(v)) => key.push_str(v),
            _ => return Err("every turn needs a string `value`".to_owned()),
        }
    }
    Ok(key)
}

/// The keys of every record in an existing output (for [`ResumeMode::Key`]).
pub fn existing_keys(path: &Path) -> Result<HashSet<String>> {
    let mut keys = HashSet::new();
    for line in super::journal::existing_lines(path)? {
        let (number, line) = line?;
        let record = parse_output_line(path, number, &line)?;
        keys.insert(record_key(&record).map_err(|e| anyhow!("{}:{number}: {e}", path.display()))?);
    }
    Ok(keys)
}

/// Checks that `line` (line `number` of the output at `path`) is what annotating `record`
/// gives, whatever scores its labeled turns (`labeled`) got.
pub fn check_position(path: &Path, number: u64, line: &[u8], record: &Value, labeled: &[usize]) -> Result<()> {
    let written = parse_output_line(path, number, line)?;
    let mut expected = record.clone();
    let turns = expected.get_mut("conversations").and_then(Value::as_array_mut);
    let written_turns = written.get("conversations").and_then(Value::as_array);
    let labels_carried = match (turns, written_turns) {
        (Some(turns), Some(written_turns)) => {
            labeled.iter().all(|&t| match (turns.get_mut(t), written_turns.get(t).and_then(|w| w.get("label"))) {
                (Some(turn), Some(label @ Value::String(text))) if !text.is_empty() => {
                    turn["label"] = label.clone();
                    true
                }
                _ => false,
            })
        }
        _ => false,
    };
    let mut rendered = Vec::with_capacity(line.len());
    write_value(&mut rendered, &expected, Ascii::Escaped).map_err(|e| anyhow!(e))?;
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

fn parse_output_line(path: &Path, number: u64, line: &[u8]) -> Result<Value> {
    serde_json::from_slice(line)
        .map_err(|e| anyhow!("{}:{number}: not a JSON record ({e}); is this an annotation output?", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&mut out, value, Ascii::Escaped).unwrap();
        out
    }

    #[test]
    fn keys_collide_where_positions_do_not() {
        let a = json!({ "conversations": [{ "value": "ab" }, { "value": "c" }] });
        let b = json!({ "conversations": [{ "value": "a" }, { "value": "bc" }] });
        assert_eq!(record_key(&a), record_key(&b));
        let path = Path::new("out.jsonl");
        let annotated_a = render(&a);
        assert!(check_position(path, 1, &annotated_a, &a, &[]).is_ok());
        let e = check_position(path, 1, &annotated_a, &b, &[]).unwrap_err().to_string();
        assert!(e.contains("out.jsonl:1 is not the annotation"), "{e}");
    }

    #[test]
    fn only_labeled_turns_may_differ() {
        let input = json!({ "mask": "User", "conversations": [
            { "value": "q", "from": "User", "label": null },
            { "value": "a", "from": "Assistant", "label": "" } ] });
        let mut annotated = input.clone();
        annotated["conversations"][1]["label"] = json!("quality:4");
        let path = Path::new("o");
        assert!(check_position(path, 1, &render(&annotated), &input, &[1]).is_ok());
        // A label on a turn that is not scored, or a changed value, is another record.
        let mut wrong = annotated.clone();
        wrong["conversations"][0]["label"] = json!("quality:1");
        assert!(check_position(path, 1, &render(&wrong), &input, &[1]).is_err());
        let mut wrong = annotated.clone();
        wrong["conversations"][1]["value"] = json!("b");
        assert!(check_position(path, 1, &render(&wrong), &input, &[1]).is_err());
        // A labeled turn the output left without a label string is not annotated.
        assert!(check_position(path, 1, &render(&input), &input, &[1]).is_err());
        assert!(
            check_position(path, 2, b"{not json", &input, &[1]).unwrap_err().to_string().contains("o:2: not a JSON")
        );
    }
}
