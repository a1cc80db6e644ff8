//! SFT records to regression training lines (`process_to_regression_format.py`):
//! one `{"text": <labeled prefix>, "label": [9 floats]}` line per truthy label.

use crate::chunk::{ChunkOutput, check_budget, convert_chunk, convert_chunk_bounded};
use crate::labels::label_vector;
use crate::pyjson::write_float;
use crate::record::{Label, SftRecord};
use crate::template::{EscapedText, LABEL_MARK, LabelRule, TemplateOptions, walk_prefixes};

/// Converts one JSONL line, appending its regression lines to `out`.
pub fn convert_line(line: &str, options: TemplateOptions, out: &mut Vec<u8>) -> Result<u64, String> {
    convert_line_with(line, options, out, &mut EscapedText::default(), usize::MAX)
}

/// [`convert_line`] with a scratch buffer for the escaped conversation, reused across
/// lines so a chunk allocates it once.
fn convert_line_with(
    line: &str,
    options: TemplateOptions,
    out: &mut Vec<u8>,
    text: &mut EscapedText,
    max_output: usize,
) -> Result<u64, String> {
    let record = SftRecord::parse(line)?;
    text.0.clear();
    let mut written = 0;
    walk_prefixes(&record, options, LabelRule::Truthy, text, |index, label, text| {
        check_budget(out.len() + text.0.len(), max_output)?;
        let vector = match label {
            Label::Text(s) => label_vector(s),
            Label::Other(kind) => Err(format!("label must be a string, got {kind}")),
            _ => unreachable!("LabelRule::Truthy selects only strings and truthy others"),
        }
        .map_err(|e| format!("turn {}: {e}", index + 1))?;
        out.extend_from_slice(b"{\"text\": \"");
        out.extend_from_slice(&text.0);
        out.extend_from_slice(LABEL_MARK.as_bytes());
        out.extend_from_slice(b"\", \"label\": [");
        for (i, x) in vector.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            write_float(out, *x)?;
        }
        out.extend_from_slice(b"]}\n");
        written += 1;
        Ok(())
    })?;
    Ok(written)
}

/// Converts a chunk of JSONL lines (the first being line `first_line`).
pub fn convert(chunk: &[u8], first_line: u64, options: TemplateOptions) -> ChunkOutput {
    let mut text = EscapedText::default();
    convert_chunk(chunk, first_line, |line, out| convert_line_with(line, options, out, &mut text, usize::MAX))
}

/// [`convert`] for a caller that must bound memory (an HTTP service): the output stops
/// growing at about `max_output` bytes, and every line from the one that would pass it
/// fails with [`OUTPUT_LIMIT`](crate::chunk::OUTPUT_LIMIT). One record's output grows
/// with the square of its turns, so the bound is checked per prefix, not per line.
pub fn convert_bounded(chunk: &[u8], first_line: u64, options: TemplateOptions, max_output: usize) -> ChunkOutput {
    let mut text = EscapedText::default();
    convert_chunk_bounded(chunk, first_line, |line, out| convert_line_with(line, options, out, &mut text, max_output))
}
