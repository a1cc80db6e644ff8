//! Reading JSONL inputs: plain or gzip (detected by its magic bytes, so `-` may be
//! either too), cut into chunks of whole lines on a reader thread so decompression
//! overlaps conversion. Memory stays at a few chunks whatever the file's size.

use anyhow::{Context, Result};
use flate2::read::MultiGzDecoder;
use indicatif::ProgressBar;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use steerlm_core::pyvalue::PyValue;

/// Default chunk size: large enough to amortise a component call, small enough to
/// keep memory flat.
pub const DEFAULT_CHUNK_BYTES: usize = 4 << 20;

/// A run of whole lines and the 1-based number of its first line.
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub first_line: u64,
}

/// An input named as the user named it (`-` for stdin).
#[derive(Clone, Debug)]
pub struct InputPath(pub PathBuf);

impl InputPath {
    pub fn is_stdin(&self) -> bool {
        self.0.as_os_str() == "-"
    }

    /// How the input is named in messages.
    pub fn display(&self) -> String {
        if self.is_stdin() { "<stdin>".to_owned() } else { self.0.display().to_string() }
    }

    /// Opens the input, decompressing gzip, counting raw bytes into `progress`.
    pub fn open(&self, progress: &ProgressBar) -> Result<Box<dyn BufRead + Send>> {
        let raw: Box<dyn Read + Send> = if self.is_stdin() {
            Box::new(io::stdin())
        } else {
            let file = File::open(&self.0).with_context(|| format!("cannot open {}", self.display()))?;
            if let Ok(meta) = file.metadata() {
                progress.set_length(meta.len());
            }
            Box::new(file)
        };
        // The two bytes that tell gzip, read whole: a pipe may deliver its first byte alone.
        let mut raw = progress.wrap_read(raw);
        let mut head = [0u8; 2];
        let mut got = 0;
        while got < head.len() {
            match raw.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.display())),
            }
        }
        let gzip = head[..got] == [0x1f, 0x8b];
        let buffered = BufReader::with_capacity(1 << 20, io::Cursor::new(head[..got].to_vec()).chain(raw));
        Ok(if gzip {
            Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(buffered)))
        } else {
            Box::new(buffered)
        })
    }
}

/// Finds `name.jsonl` or `name.jsonl.gz` in `dir` (the plain file when both exist, with a
/// warning). One that exists but is not a regular file is an error saying so.
pub fn find_split_file(dir: &Path, name: &str) -> Result<InputPath> {
    let candidates = [dir.join(format!("{name}.jsonl")), dir.join(format!("{name}.jsonl.gz"))];
    let existing: Vec<&PathBuf> = candidates.iter().filter(|path| path.exists()).collect();
    match existing.as_slice() {
        [] => anyhow::bail!("{} has neither {name}.jsonl nor {name}.jsonl.gz", dir.display()),
        [first, rest @ ..] => {
            if !first.is_file() {
                anyhow::bail!("{} is not a regular file (a folder, FIFO or device)", first.display());
            }
            for ignored in rest {
                eprintln!("warning: reading {} and ignoring {}", first.display(), ignored.display());
            }
            Ok(InputPath(first.to_path_buf()))
        }
    }
}

/// Default longest line, in MiB: far above any real record, low enough that one
/// runaway line (a 3 GiB line gzips to 14 MB) cannot take all memory.
pub const DEFAULT_MAX_LINE_MB: u64 = 256;
pub const DEFAULT_MAX_LINE_BYTES: usize = (DEFAULT_MAX_LINE_MB as usize) << 20;

/// Why a chunk could not be read.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// Line `line` (1-based) has more bytes than the limit, not counting its `\n`.
    LineTooLong {
        line: u64,
    },
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads whole-line chunks of about `target` bytes (a longer line makes a longer
/// chunk). No line may be longer than `max_line` bytes: a longer one is an error, and
/// no more than one byte past the limit is ever read into memory.
pub fn read_chunk(
    reader: &mut dyn BufRead,
    target: usize,
    max_line: usize,
    first_line: u64,
) -> Result<Option<Chunk>, ReadError> {
    let mut bytes = Vec::with_capacity(target + (64 << 10));
    reader.take(target as u64).read_to_end(&mut bytes)?;
    if bytes.len() == target && bytes.last() != Some(&b'\n') {
        // Finish the last line, but read at most one byte more than it may hold.
        let line_start = memchr::memrchr(b'\n', &bytes).map_or(0, |i| i + 1);
        let room = max_line.saturating_sub(bytes.len() - line_start) as u64 + 1;
        reader.take(room).read_until(b'\n', &mut bytes)?;
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    if let Some(index) = first_long_line(&bytes, max_line) {
        return Err(ReadError::LineTooLong { line: first_line + index });
    }
    Ok(Some(Chunk { bytes, first_line }))
}

/// The 0-based index of the first line in `bytes` longer than `max_line`.
fn first_long_line(bytes: &[u8], max_line: usize) -> Option<u64> {
    if bytes.len() <= max_line {
        return None;
    }
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
    for (index, end) in ends.enumerate() {
        if end - start > max_line {
            return Some(index as u64);
        }
        start = end + 1;
    }
    None
}

/// Lines in a chunk, counting a final line without `\n`.
pub fn count_lines(bytes: &[u8]) -> u64 {
    let newlines = memchr::memchr_iter(b'\n', bytes).count() as u64;
    newlines + u64::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

/// Streams an input's chunks of about `chunk_bytes` from a background thread (at most
/// two ahead). A line longer than `max_line_bytes` ends the stream with an error that
/// names it and `--max-line-mb`.
pub fn spawn_chunks(
    input: &InputPath,
    chunk_bytes: usize,
    max_line_bytes: usize,
    progress: &ProgressBar,
) -> Result<Receiver<Result<Chunk>>> {
    let mut reader = input.open(progress)?;
    let name = input.display();
    let (sender, receiver) = sync_channel(2);
    std::thread::Builder::new().name("steerlm-reader".into()).spawn(move || {
        let mut next_line = 1;
        loop {
            let message = match read_chunk(&mut *reader, chunk_bytes, max_line_bytes, next_line) {
                Ok(Some(chunk)) => {
                    next_line += count_lines(&chunk.bytes);
                    Ok(chunk)
                }
                Ok(None) => break,
                Err(ReadError::Io(e)) => {
                    Err(anyhow::Error::from(e).context(format!("{name}: read error after line {}", next_line - 1)))
                }
                Err(ReadError::LineTooLong { line }) => Err(anyhow::anyhow!(
                    "{name}:{line}: line is longer than the limit of {} MiB (raise it with --max-line-mb)",
                    max_line_bytes >> 20
                )),
            };
            let failed = message.is_err();
            if sender.send(message).is_err() || failed {
                break;
            }
        }
    })?;
    Ok(receiver)
}

/// One non-blank line of a JSONL input, parsed with Python's rules (exact numbers, key
/// order kept, no duplicate keys).
pub struct JsonLine {
    /// 1-based, counting blank lines.
    pub number: u64,
    pub text: String,
    pub value: PyValue,
    input: Arc<str>,
}

impl JsonLine {
    /// An error about this line: `FILE:LINE: reason`.
    pub fn error(&self, reason: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}:{}: {reason}", self.input, self.number)
    }
}

/// The non-blank lines of `input`, read on a thread of its own and parsed here. Every
/// error, the reader's included, reads `FILE:LINE: reason`.
pub struct JsonLines {
    input: Arc<str>,
    chunks: Receiver<Result<Chunk>>,
    /// The current chunk's lines not yet handed out: number and text, or why the text
    /// is not UTF-8.
    lines: VecDeque<(u64, Result<String, String>)>,
}

/// Reads `input` as JSONL in chunks of about `chunk_bytes`; see [`JsonLines`].
pub fn json_lines(
    input: &InputPath,
    chunk_bytes: usize,
    max_line_bytes: usize,
    progress: &ProgressBar,
) -> Result<JsonLines> {
    let chunks = spawn_chunks(input, chunk_bytes, max_line_bytes, progress)?;
    Ok(JsonLines { input: input.display().into(), chunks, lines: VecDeque::new() })
}

impl JsonLines {
    /// The input as messages name it.
    pub fn input_name(&self) -> &str {
        &self.input
    }
}

impl Iterator for JsonLines {
    type Item = Result<JsonLine>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.lines.is_empty() {
            let chunk = match self.chunks.recv().ok()? {
                Ok(chunk) => chunk,
                Err(e) => return Some(Err(e)),
            };
            for (offset, raw) in steerlm_core::chunk::split_lines(&chunk.bytes).enumerate() {
                if !raw.iter().all(u8::is_ascii_whitespace) {
                    let text =
                        String::from_utf8(raw.to_vec()).map_err(|e| format!("invalid UTF-8 ({})", e.utf8_error()));
                    self.lines.push_back((chunk.first_line + offset as u64, text));
                }
            }
        }
        let (number, text) = self.lines.pop_front()?;
        let fail = |reason: String| anyhow::anyhow!("{}:{number}: {reason}", self.input);
        Some(text.map_err(fail).and_then(|text| match PyValue::parse(&text) {
            Ok(value) => Ok(JsonLine { number, text, value, input: Arc::clone(&self.input) }),
            Err(reason) => Err(fail(reason)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_end_on_line_boundaries() {
        let data = b"aaaa\nbb\ncccccccc\nd";
        let mut reader: &[u8] = data;
        let mut chunks = Vec::new();
        let mut line = 1;
        while let Some(chunk) = read_chunk(&mut reader, 6, 100, line).unwrap() {
            line += count_lines(&chunk.bytes);
            chunks.push((chunk.first_line, String::from_utf8(chunk.bytes).unwrap()));
        }
        assert_eq!(chunks, vec![(1, "aaaa\nbb\n".to_owned()), (3, "cccccccc\n".to_owned()), (4, "d".to_owned())]);
    }

    fn first_error(data: &[u8], target: usize, max_line: usize) -> Option<u64> {
        let mut reader: &[u8] = data;
        let mut line = 1;
        loop {
            match read_chunk(&mut reader, target, max_line, line) {
                Ok(Some(chunk)) => line += count_lines(&chunk.bytes),
                Ok(None) => return None,
                Err(ReadError::LineTooLong { line }) => return Some(line),
                Err(ReadError::Io(e)) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_named_wherever_it_falls() {
        let data = b"aaaa\nbbbbbbb\ncc\n";
        // Inside a chunk, as the chunk's last line, and as a line that starts a chunk.
        assert_eq!(first_error(data, 64, 6), Some(2));
        assert_eq!(first_error(data, 8, 6), Some(2));
        assert_eq!(first_error(data, 5, 6), Some(2));
        // A line of exactly the limit (its `\n` not counted) is fine, and so is a last
        // line without `\n`.
        assert_eq!(first_error(data, 5, 7), None);
        assert_eq!(first_error(b"aaaa\nbbbbbbb", 5, 7), None);
        assert_eq!(first_error(b"aaaa\nbbbbbbbb", 5, 7), Some(2));
    }

    #[test]
    fn json_lines_skip_blank_lines_and_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, b"{\"a\": 1}\n\n  \n{\"b\": 10000000000000000000000}\n{bad\n\xff\n").unwrap();
        let lines: Vec<Result<JsonLine>> =
            json_lines(&InputPath(path.clone()), 4, 1 << 20, &ProgressBar::hidden()).unwrap().collect();
        let ok: Vec<(u64, String)> =
            lines.iter().filter_map(|l| l.as_ref().ok()).map(|l| (l.number, l.text.clone())).collect();
        assert_eq!(ok, [(1, "{\"a\": 1}".to_owned()), (4, "{\"b\": 10000000000000000000000}".to_owned())]);
        let errors: Vec<String> = lines.iter().filter_map(|l| l.as_ref().err()).map(|e| e.to_string()).collect();
        let name = path.display();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with(&format!("{name}:5: ")), "{errors:?}");
        assert!(errors[1].starts_with(&format!("{name}:6: invalid UTF-8")), "{errors:?}");
        let first = lines[0].as_ref().unwrap();
        assert_eq!(first.error("no good").to_string(), format!("{name}:1: no good"));
    }

    #[test]
    fn a_long_line_is_not_read_past_the_limit() {
        let data = vec![b'x'; 1 << 20];
        let mut reader: &[u8] = &data;
        assert!(matches!(read_chunk(&mut reader, 4, 100, 1), Err(ReadError::LineTooLong { line: 1 })));
        // One byte past the limit was read, the rest is still there.
        assert_eq!(reader.len(), data.len() - 101);
    }
}
