//! The `<extra_id_*>` chat template and the labeled prefixes it produces.
//!
//! ```text
//! <extra_id_0>System\n{system}\n<extra_id_1>User\n{value}\n<extra_id_1>Assistant\n{value}\n<extra_id_2>
//! ```

use crate::attributes::SYSTEM_PROMPT;
use crate::chunk::{ChunkOutput, check_budget, convert_chunk_bounded};
use crate::pyjson::{Ascii, transcode_str_body, write_str_body};
use crate::record::{Label, SftRecord};
use serde_json::value::RawValue;
use std::borrow::Cow;

pub const SYSTEM_HEADER: &str = "<extra_id_0>System\n";
pub const USER_HEADER: &str = "<extra_id_1>User\n";
pub const ASSISTANT_HEADER: &str = "<extra_id_1>Assistant\n";
/// Appended to a prefix to ask the model for (or to train) the turn's attributes.
pub const LABEL_MARK: &str = "<extra_id_2>";

/// How a conversation is rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TemplateOptions {
    /// Use the record's own `system` field instead of the fixed SteerLM prompt (the
    /// reference always uses the fixed one).
    pub use_record_system: bool,
}

/// Where rendered text goes: a plain string, or straight into JSON-escaped bytes so a
/// long conversation is escaped once, not once per labeled prefix.
pub trait TextSink {
    /// Appends literal text.
    fn push(&mut self, piece: &str);
    /// Appends the string a JSON string literal stands for.
    fn push_json_str(&mut self, literal: &RawValue) -> Result<(), String>;
}

impl TextSink for String {
    fn push(&mut self, piece: &str) {
        self.push_str(piece);
    }
    fn push_json_str(&mut self, literal: &RawValue) -> Result<(), String> {
        let text: Cow<str> = serde_json::from_str(literal.get())
            .map_err(|_| format!("`value` must be a string, got {}", literal.get()))?;
        self.push_str(&text);
        Ok(())
    }
}

/// Text kept JSON-escaped (`ensure_ascii=False` style), without the quotes.
#[derive(Default)]
pub struct EscapedText(pub Vec<u8>);

impl TextSink for EscapedText {
    fn push(&mut self, piece: &str) {
        write_str_body(&mut self.0, piece, Ascii::Raw);
    }
    fn push_json_str(&mut self, literal: &RawValue) -> Result<(), String> {
        transcode_str_body(&mut self.0, literal.get()).map_err(|e| format!("`value`: {e}"))
    }
}

/// Which turns make a labeled prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelRule {
    /// Annotation: the `label` key is present and not null (an empty string counts).
    Present,
    /// Regression: the label is truthy (`""`, `0`, `[]`... are skipped).
    Truthy,
}

/// Renders `record` turn by turn into `text`, calling `on_labeled(turn_index, label,
/// text)` after each turn selected by `rule`; `text` then holds the prefix without the
/// [`LABEL_MARK`].
pub fn walk_prefixes<S, F>(
    record: &SftRecord,
    options: TemplateOptions,
    rule: LabelRule,
    text: &mut S,
    mut on_labeled: F,
) -> Result<(), String>
where
    S: TextSink,
    F: FnMut(usize, &Label, &S) -> Result<(), String>,
{
    text.push(SYSTEM_HEADER);
    let own = if options.use_record_system { record.own_system()? } else { None };
    text.push(own.as_deref().unwrap_or(SYSTEM_PROMPT));
    text.push("\n");
    for (index, turn) in record.conversations.iter().enumerate() {
        text.push(if turn.from == record.mask { USER_HEADER } else { ASSISTANT_HEADER });
        text.push_json_str(turn.value)?;
        text.push("\n");
        let selected = match rule {
            LabelRule::Present => turn.label.is_present(),
            LabelRule::Truthy => {
                matches!(&turn.label, Label::Text(s) if !s.is_empty()) || matches!(turn.label, Label::Other(_))
            }
        };
        if selected {
            on_labeled(index, &turn.label, text)?;
        }
    }
    Ok(())
}

/// Every labeled prefix of a record (annotation's rule), each ending in [`LABEL_MARK`].
pub fn labeled_prefixes(record: &SftRecord, options: TemplateOptions) -> Result<Vec<String>, String> {
    let mut prefixes = Vec::new();
    let mut text = String::new();
    walk_prefixes(record, options, LabelRule::Present, &mut text, |_, _, text| {
        prefixes.push(format!("{text}{LABEL_MARK}"));
        Ok(())
    })?;
    Ok(prefixes)
}

/// About how many bytes [`labeled_prefixes`] would make for `record` (each value counted
/// as its JSON literal, the fixed system prompt assumed), without making them. Every
/// labeled turn repeats the conversation before it, so a few hundred KiB of short turns,
/// each labeled, make gigabytes: callers refuse that before building anything.
pub fn labeled_prefix_bytes(record: &SftRecord) -> usize {
    let mut running = SYSTEM_HEADER.len() + SYSTEM_PROMPT.len() + 1;
    let mut total = 0usize;
    for turn in &record.conversations {
        let header = if turn.from == record.mask { USER_HEADER } else { ASSISTANT_HEADER };
        running = running.saturating_add(header.len() + turn.value.get().len() + 1);
        if turn.label.is_present() {
            total = total.saturating_add(running + LABEL_MARK.len());
        }
    }
    total
}

/// Indices of the turns [`labeled_prefixes`] makes a prefix for, in the same order.
pub fn labeled_turns(record: &SftRecord) -> Vec<usize> {
    record.conversations.iter().enumerate().filter(|(_, turn)| turn.label.is_present()).map(|(i, _)| i).collect()
}

/// The `format` conversion of one JSONL line: a `{"text": prefix}` line per labeled
/// prefix (annotation's rule: what a reward model is asked to score).
pub fn format_line(line: &str, options: TemplateOptions, out: &mut Vec<u8>) -> Result<u64, String> {
    format_line_bounded(line, options, out, usize::MAX)
}

/// The `format` conversion of a chunk, its output bounded like
/// `regression::convert_bounded`.
pub fn format_chunk_bounded(chunk: &[u8], first_line: u64, options: TemplateOptions, max_output: usize) -> ChunkOutput {
    convert_chunk_bounded(chunk, first_line, |line, out| format_line_bounded(line, options, out, max_output))
}

/// [`format_line`] that fails with [`OUTPUT_LIMIT`](crate::chunk::OUTPUT_LIMIT) before
/// `out` passes `max_output` bytes.
fn format_line_bounded(
    line: &str,
    options: TemplateOptions,
    out: &mut Vec<u8>,
    max_output: usize,
) -> Result<u64, String> {
    let record = SftRecord::parse(line)?;
    let mut text = EscapedText::default();
    let mut written = 0;
    walk_prefixes(&record, options, LabelRule::Present, &mut text, |_, _, text| {
        check_budget(out.len() + text.0.len(), max_output)?;
        out.extend_from_slice(b"{\"text\": \"");
        out.extend_from_slice(&text.0);
        out.extend_from_slice(LABEL_MARK.as_bytes());
        out.extend_from_slice(b"\"}\n");
        written += 1;
        Ok(())
    })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_swaps_roles_and_prefixes_accumulate() {
        let line = r#"{"mask": "Assistant", "system": "own", "conversations": [
            {"value": "u", "from": "User", "label": "quality:2"},
            {"value": "a", "from": "Assistant", "label": null}]}"#;
        let record = SftRecord::parse(line).unwrap();
        let prefixes = labeled_prefixes(&record, TemplateOptions::default()).unwrap();
        assert_eq!(
            prefixes,
            vec![format!("<extra_id_0>System\n{SYSTEM_PROMPT}\n<extra_id_1>Assistant\nu\n<extra_id_2>")]
        );
        let own = labeled_prefixes(&record, TemplateOptions { use_record_system: true }).unwrap();
        assert!(own[0].starts_with("<extra_id_0>System\nown\n"));
    }

    /// The count is exact for plain values (a JSON literal is the text plus its quotes),
    /// and grows with the square of the labeled turns.
    #[test]
    fn labeled_prefix_bytes_counts_without_building() {
        for turns in [1, 2, 7, 40] {
            let turn =
                r#"{"value": "hello", "from": "User"}, {"value": "yes", "from": "Assistant", "label": "quality:4"}"#;
            let line = format!(r#"{{"mask": "User", "conversations": [{}]}}"#, vec![turn; turns].join(","));
            let record = SftRecord::parse(&line).unwrap();
            let built: usize =
                labeled_prefixes(&record, TemplateOptions::default()).unwrap().iter().map(String::len).sum();
            // Two quote characters per value, counted but not rendered.
            let quotes: usize = (1..=turns).map(|t| 4 * t).sum();
            assert_eq!(labeled_prefix_bytes(&record), built + quotes, "{turns} turns");
        }
    }
}
