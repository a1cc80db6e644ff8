//! HelpSteer and HelpSteer2 rows to attribute-conditioned SFT records
//! (`preprocess_helpsteer_data.py`, `preprocess_helpsteer2_data.py`).

use crate::attributes::{ALL_ATTRIBUTES, HELPSTEER_ATTRIBUTES, SYSTEM_PROMPT};
use crate::chunk::{Split, SplitChunkOutput, convert_split_chunk};
use crate::pyjson::{Ascii, write_str};
use crate::pyvalue::{PyObject, PyValue};

/// Which dataset the rows come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `nvidia/HelpSteer`: the five HelpSteer attributes, all required.
    HelpSteer,
    /// `nvidia/HelpSteer2`: whichever of the nine attributes the row has.
    HelpSteer2,
    /// HelpSteer2's preference subset: two records per row, `quality` =
    /// `preference_strength`, routed by the row's `split`.
    HelpSteer2Preference,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreprocessOptions {
    /// Keep only `helpfulness` in HelpSteer2 labels (`--only_helpfulness`).
    pub only_helpfulness: bool,
}

type Row = PyObject;

fn field<'a>(row: &'a Row, name: &str) -> Result<&'a PyValue, String> {
    row.get(name).ok_or_else(|| format!("row has no `{name}` field"))
}

/// `f"{attr}:{dp[attr]}"` joined by `,` over `attributes` the row has (or must have).
fn format_label(row: &Row, attributes: &[&str], required: bool, only_helpfulness: bool) -> Result<String, String> {
    let mut pieces = Vec::new();
    for attr in attributes {
        let value = match row.get(attr) {
            Some(value) => value,
            None if required => return Err(format!("row has no `{attr}` field")),
            None => continue,
        };
        if only_helpfulness && *attr != "helpfulness" {
            continue;
        }
        let text = value.python_str().map_err(|e| format!("`{attr}`: {e}"))?;
        pieces.push(format!("{attr}:{text}"));
    }
    Ok(pieces.join(","))
}

/// Writes one SFT record line as the reference's `json.dumps(obj, ensure_ascii=False)`.
pub fn write_sft_record(out: &mut Vec<u8>, prompt: &PyValue, response: &PyValue, label: &str) -> Result<(), String> {
    out.extend_from_slice(b"{\"conversations\": [{\"value\": ");
    prompt.write(out, Ascii::Raw)?;
    out.extend_from_slice(b", \"from\": \"User\", \"label\": null}, {\"value\": ");
    response.write(out, Ascii::Raw)?;
    out.extend_from_slice(b", \"from\": \"Assistant\", \"label\": ");
    write_str(out, label, Ascii::Raw);
    write_record_tail(out);
    Ok(())
}

/// `], "system": SYSTEM_PROMPT, "mask": "User", "type": "VALUE_TO_TEXT"}` and the newline.
pub(crate) fn write_record_tail(out: &mut Vec<u8>) {
    out.extend_from_slice(b"}], \"system\": ");
    write_str(out, SYSTEM_PROMPT, Ascii::Raw);
    out.extend_from_slice(b", \"mask\": \"User\", \"type\": \"VALUE_TO_TEXT\"}\n");
}

/// Converts one raw row. `split` is where HelpSteer/HelpSteer2 rows go (the file they
/// came from); preference rows carry their own. Returns (train, val) lines written.
pub fn convert_row(
    source: Source,
    split: Split,
    options: PreprocessOptions,
    line: &str,
    train: &mut Vec<u8>,
    val: &mut Vec<u8>,
) -> Result<(u64, u64), String> {
    let row = match PyValue::parse(line)? {
        PyValue::Object(row) => row,
        other => return Err(format!("a row must be a JSON object, got {}", other.describe())),
    };
    let (split, count) = match source {
        Source::HelpSteer => {
            let label = format_label(&row, &HELPSTEER_ATTRIBUTES, true, false)?;
            let out = if split == Split::Train { &mut *train } else { &mut *val };
            write_sft_record(out, field(&row, "prompt")?, field(&row, "response")?, &label)?;
            (split, 1)
        }
        Source::HelpSteer2 => {
            let label = format_label(&row, &ALL_ATTRIBUTES, false, options.only_helpfulness)?;
            let out = if split == Split::Train { &mut *train } else { &mut *val };
            write_sft_record(out, field(&row, "prompt")?, field(&row, "response")?, &label)?;
            (split, 1)
        }
        Source::HelpSteer2Preference => {
            let prompt = field(&row, "prompt")?;
            let strength = field(&row, "preference_strength")?;
            let split = if field(&row, "split")?.as_str() == Some("train") { Split::Train } else { Split::Val };
            // The reference builds {"prompt", "response", "quality"} rows, so the label
            // has `quality` only, and nothing at all with --only-helpfulness.
            let label = if options.only_helpfulness {
                String::new()
            } else {
                format!("quality:{}", strength.python_str().map_err(|e| format!("`preference_strength`: {e}"))?)
            };
            let out = if split == Split::Train { &mut *train } else { &mut *val };
            write_sft_record(out, prompt, field(&row, "response_1")?, &label)?;
            write_sft_record(out, prompt, field(&row, "response_2")?, &label)?;
            (split, 2)
        }
    };
    Ok(if split == Split::Train { (count, 0) } else { (0, count) })
}

/// Converts a chunk of raw rows.
pub fn convert(
    source: Source,
    split: Split,
    options: PreprocessOptions,
    chunk: &[u8],
    first_line: u64,
) -> SplitChunkOutput {
    convert_split_chunk(chunk, first_line, |line, train, val| convert_row(source, split, options, line, train, val))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpsteer_row() {
        let (mut train, mut val) = (Vec::new(), Vec::new());
        let line = r#"{"prompt": "p", "response": "r", "helpfulness": 3, "correctness": 3, "coherence": 4, "complexity": 2, "verbosity": 1}"#;
        convert_row(Source::HelpSteer, Split::Val, PreprocessOptions::default(), line, &mut train, &mut val).unwrap();
        assert!(train.is_empty());
        let text = String::from_utf8(val.clone()).unwrap();
        assert!(
            text.contains(r#""label": "helpfulness:3,correctness:3,coherence:4,complexity:2,verbosity:1"}"#),
            "{text}"
        );
        let err = convert_row(
            Source::HelpSteer,
            Split::Val,
            PreprocessOptions::default(),
            r#"{"prompt": "p", "response": "r"}"#,
            &mut train,
            &mut val,
        );
        assert!(err.unwrap_err().contains("helpfulness"));
    }

    /// Expected labels as CPython 3.11 formats `f"{attr}:{dp[attr]}"` after `json.loads`.
    #[test]
    fn scores_keep_python_number_semantics() {
        let (mut train, mut val) = (Vec::new(), Vec::new());
        let line = r#"{"prompt": 12345678901234567890123, "response": "r", "helpfulness": 123456789012345678901234567890, "correctness": -0, "coherence": 4.0, "complexity": 2.50, "verbosity": 1e2}"#;
        convert_row(Source::HelpSteer, Split::Train, PreprocessOptions::default(), line, &mut train, &mut val).unwrap();
        let text = String::from_utf8(train).unwrap();
        assert!(text.starts_with(r#"{"conversations": [{"value": 12345678901234567890123, "#), "{text}");
        assert!(
            text.contains(r#""label": "helpfulness:123456789012345678901234567890,correctness:0,coherence:4.0,complexity:2.5,verbosity:100.0"}"#),
            "{text}"
        );
        for (bad, reason) in [
            (
                line.replace(r#""correctness": -0"#, r#""correctness": -0, "correctness": 1"#),
                "duplicate key \"correctness\"",
            ),
            (line.replace("1e2", "1e400"), "beyond the float range"),
            ("[1, 2]".to_owned(), "a row must be a JSON object, got an array"),
        ] {
            let err = convert_row(
                Source::HelpSteer,
                Split::Train,
                PreprocessOptions::default(),
                &bad,
                &mut val,
                &mut Vec::new(),
            )
            .unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}
