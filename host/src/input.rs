//! Reading JSONL inputs: plain or gzip (detected by its magic bytes, so `-` may be
//! either too), cut into chunks of whole lines on a reader thread so decompression
//! overlaps conversion. Memory stays at a few chunks whatever the file's size.

use anyhow::{Context, Result};
use flate2::read::MultiGzDecoder;
use indicatif::ProgressBar;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};

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
        let mut buffered = BufReader::with_capacity(1 << 20, progress.wrap_read(raw));
        let head = buffered.fill_buf().with_context(|| format!("cannot read {}", self.display()))?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(buffered)))
        } else {
            Box::new(buffered)
        })
    }
}

/// Finds `name.jsonl` or `name.jsonl.gz` in `dir`.
pub fn find_split_file(dir: &Path, name: &str) -> Result<InputPath> {
    for candidate in [format!("{name}.jsonl"), format!("{name}.jsonl.gz")] {
        let path = dir.join(&candidate);
        if path.is_file() {
            return Ok(InputPath(path));
        }
    }
    anyhow::bail!("{} has neither {name}.jsonl nor {name}.jsonl.gz", dir.display())
}

/// Reads whole-line chunks of about `target` bytes (a longer line makes a longer chunk).
pub fn read_chunk(reader: &mut dyn BufRead, target: usize, first_line: u64) -> io::Result<Option<Chunk>> {
    let mut bytes = Vec::with_capacity(target + (64 << 10));
    reader.take(target as u64).read_to_end(&mut bytes)?;
    if bytes.len() == target && bytes.last() != Some(&b'\n') {
        reader.read_until(b'\n', &mut bytes)?;
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    Ok(Some(Chunk { bytes, first_line }))
}

/// Lines in a chunk, counting a final line without `\n`.
pub fn count_lines(bytes: &[u8]) -> u64 {
    let newlines = memchr::memchr_iter(b'\n', bytes).count() as u64;
    newlines + u64::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

/// Streams an input's chunks from a background thread (at most two ahead).
pub fn spawn_chunks(input: &InputPath, chunk_bytes: usize, progress: &ProgressBar) -> Result<Receiver<Result<Chunk>>> {
    let mut reader = input.open(progress)?;
    let name = input.display();
    let (sender, receiver) = sync_channel(2);
    std::thread::Builder::new().name("steerlm-reader".into()).spawn(move || {
        let mut next_line = 1;
        loop {
            let result = read_chunk(&mut *reader, chunk_bytes, next_line)
                .with_context(|| format!("{name}: read error after line {}", next_line - 1));
            let done = !matches!(result, Ok(Some(_)));
            let message = match result {
                Ok(Some(chunk)) => {
                    next_line += count_lines(&chunk.bytes);
                    Ok(chunk)
                }
                Ok(None) => break,
                Err(e) => Err(e),
            };
            if sender.send(message).is_err() || done {
                break;
            }
        }
    })?;
    Ok(receiver)
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
        while let Some(chunk) = read_chunk(&mut reader, 6, line).unwrap() {
            line += count_lines(&chunk.bytes);
            chunks.push((chunk.first_line, String::from_utf8(chunk.bytes).unwrap()));
        }
        assert_eq!(chunks, vec![(1, "aaaa\nbb\n".to_owned()), (3, "cccccccc\n".to_owned()), (4, "d".to_owned())]);
    }
}
