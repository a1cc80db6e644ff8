//! Chunked JSONL processing: the unit of work that crosses the component boundary.
//!
//! A chunk is a run of whole lines (the last one may lack its `\n`). Each line is
//! checked for UTF-8, handed to a per-line conversion, and its output kept only if the
//! whole line converted: a record that fails halfway leaves no partial output behind.
//! Whitespace-only lines carry no record and are passed over.

/// A line that could not be converted, with its 1-based line number in the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: u64,
    pub message: String,
}

/// What converting a chunk produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkOutput {
    /// The converted lines, each ending in `\n`.
    pub output: Vec<u8>,
    /// One entry per bad input line, in line order.
    pub errors: Vec<LineError>,
    /// Input records seen (non-blank lines).
    pub records_in: u64,
    /// Output lines written.
    pub lines_out: u64,
}

/// What converting a chunk into a train and a validation file produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SplitChunkOutput {
    pub train: Vec<u8>,
    pub val: Vec<u8>,
    pub errors: Vec<LineError>,
    pub records_in: u64,
    pub train_lines: u64,
    pub val_lines: u64,
}

/// Calls `convert(line_number, line)` for every non-blank line of `chunk`, the first
/// of which is line `first_line`; `line` is the text, or why it is not text. Errors
/// `convert` returns are collected in `errors`. Returns the number of lines seen.
pub fn for_each_line<F>(chunk: &[u8], first_line: u64, errors: &mut Vec<LineError>, mut convert: F) -> u64
where
    F: FnMut(u64, Result<&str, String>) -> Result<(), String>,
{
    let mut records = 0;
    for (index, raw) in split_lines(chunk).enumerate() {
        let line = first_line + index as u64;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        records += 1;
        let text = match simdutf8::basic::from_utf8(raw) {
            Ok(text) => Ok(text),
            // The fast validator does not say where; std's does (bad lines are rare).
            Err(_) => Err(match std::str::from_utf8(raw) {
                Err(e) => format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
                Ok(_) => "invalid UTF-8".to_owned(),
            }),
        };
        if let Err(message) = convert(line, text) {
            errors.push(LineError { line, message });
        }
    }
    records
}

/// Splits on `\n`; a final line without `\n` is still a line, an empty tail is not.
pub fn split_lines(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', chunk);
    std::iter::from_fn(move || {
        let end = match ends.next() {
            Some(end) => end,
            None if start < chunk.len() => chunk.len(),
            None => return None,
        };
        let line = &chunk[start..end];
        start = end + 1;
        Some(line)
    })
}

/// Converts every line of a chunk into one output buffer. `convert` appends to the
/// buffer and returns the number of lines it appended; a failing line's bytes are
/// removed again.
pub fn convert_chunk<F>(chunk: &[u8], first_line: u64, mut convert: F) -> ChunkOutput
where
    F: FnMut(&str, &mut Vec<u8>) -> Result<u64, String>,
{
    let mut out = ChunkOutput { output: Vec::with_capacity(chunk.len() * 2), ..Default::default() };
    let mut lines_out = 0;
    let output = &mut out.output;
    out.records_in = for_each_line(chunk, first_line, &mut out.errors, |_, text| {
        let mark = output.len();
        match text.and_then(|text| convert(text, output)) {
            Ok(n) => {
                lines_out += n;
                Ok(())
            }
            Err(e) => {
                output.truncate(mark);
                Err(e)
            }
        }
    });
    out.lines_out = lines_out;
    out
}

/// The error of a line whose output would pass a bounded conversion's limit.
pub const OUTPUT_LIMIT: &str = "the output limit was reached";

/// Fails with [`OUTPUT_LIMIT`] once `bytes` would pass `max_output`.
pub(crate) fn check_budget(bytes: usize, max_output: usize) -> Result<(), String> {
    if bytes > max_output { Err(OUTPUT_LIMIT.to_owned()) } else { Ok(()) }
}

/// [`convert_chunk`] for conversions that check a budget (`check_budget`): once a line
/// fails with [`OUTPUT_LIMIT`], every later line fails the same way without being
/// converted, so a chunk past the limit costs no more work.
pub fn convert_chunk_bounded<F>(chunk: &[u8], first_line: u64, mut convert: F) -> ChunkOutput
where
    F: FnMut(&str, &mut Vec<u8>) -> Result<u64, String>,
{
    let mut exceeded = false;
    convert_chunk(chunk, first_line, |line, out| {
        if exceeded {
            return Err(OUTPUT_LIMIT.to_owned());
        }
        let result = convert(line, out);
        exceeded = result.as_ref().is_err_and(|e| e == OUTPUT_LIMIT);
        result
    })
}

/// Where a converted record goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// Like [`convert_chunk`], for conversions that route records to train or val.
/// `convert` appends to the buffer of the split it returns.
pub fn convert_split_chunk<F>(chunk: &[u8], first_line: u64, mut convert: F) -> SplitChunkOutput
where
    F: FnMut(&str, &mut Vec<u8>, &mut Vec<u8>) -> Result<(u64, u64), String>,
{
    let mut out = SplitChunkOutput::default();
    let (mut train_lines, mut val_lines) = (0, 0);
    let (train, val) = (&mut out.train, &mut out.val);
    out.records_in = for_each_line(chunk, first_line, &mut out.errors, |_, text| {
        let marks = (train.len(), val.len());
        match text.and_then(|text| convert(text, train, val)) {
            Ok((t, v)) => {
                train_lines += t;
                val_lines += v;
                Ok(())
            }
            Err(e) => {
                train.truncate(marks.0);
                val.truncate(marks.1);
                Err(e)
            }
        }
    });
    out.train_lines = train_lines;
    out.val_lines = val_lines;
    out
}

/// Refuses a line that starts with a UTF-8 byte order mark. Python's `json.loads`
/// refuses it too; without this check the error would be a bare "expected value".
pub fn refuse_bom(line: &str) -> Result<(), String> {
    if line.starts_with('\u{feff}') {
        return Err(
            "the line starts with a UTF-8 byte order mark (BOM); remove it (e.g. save the file as UTF-8 without BOM)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Turns a serde_json error into a message without its "line 1" (every chunk line is
/// parsed on its own, so the line number is the caller's and only the column helps).
pub fn json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let head = message.rsplit_once(" at line ").map_or(message.as_str(), |(head, _)| head);
    // serde_json reports an unpaired `\ud800`-style escape as a bad hex escape; say
    // what it is (Python would accept it, then fail to write it as UTF-8).
    let hint = if head.contains("hex escape") {
        " (a \\uXXXX escape that is a lone UTF-16 surrogate or malformed)"
    } else {
        ""
    };
    format!("invalid JSON: {head}{hint} (column {})", e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_and_failures_leave_nothing() {
        let chunk = b"a\n\nbad\n  \nc";
        let out = convert_chunk(chunk, 10, |text, buf| {
            buf.extend_from_slice(b"partial");
            if text == "bad" {
                return Err("no".into());
            }
            buf.extend_from_slice(b"\n");
            Ok(1)
        });
        assert_eq!(out.output, b"partial\npartial\n");
        assert_eq!(out.errors, vec![LineError { line: 12, message: "no".into() }]);
        assert_eq!(out.records_in, 3);
        assert_eq!(out.lines_out, 2);
    }

    #[test]
    fn invalid_utf8_is_a_line_error() {
        let out = convert_chunk(b"ok\n\xff\xfe\n", 1, |_, _| Ok(0));
        assert_eq!(out.errors[0].line, 2);
        assert!(out.errors[0].message.contains("UTF-8"));
    }

    #[test]
    fn empty_chunk_has_no_lines() {
        assert_eq!(split_lines(b"").count(), 0);
        assert_eq!(split_lines(b"\n").count(), 1);
        assert_eq!(split_lines(b"a\nb").count(), 2);
    }
}
