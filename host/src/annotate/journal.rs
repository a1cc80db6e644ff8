//! The annotation output file as a journal: whole lines appended and synced in small
//! groups, so a crash loses at most the records since the last sync and never leaves a
//! half-written record behind. A torn last line (a crash mid-write) is cut off, but only
//! once the run has checked the whole lines before it and is about to write (so are zeros
//! after the last whole line, which a power loss leaves where unsynced lines were): a file that
//! is not this input's output is refused untouched.
//!
//! Outputs that are not regular files (a FIFO, `/dev/null`, a terminal) are written
//! through: nothing is read back from them, cut, or synced.

use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct Journal {
    path: PathBuf,
    file: File,
    unsynced: usize,
    sync_every: usize,
    /// fsync only means something for a regular file.
    regular: bool,
    /// The length to cut the file to before the first append (a torn last line).
    pending_cut: Option<u64>,
}

/// What was found in the output file before this run.
pub struct Previous {
    /// The file already holds records to resume after (regular files only).
    pub resumable: bool,
    /// Bytes of a torn last line, cut before the first append.
    pub cut_bytes: u64,
}

impl Journal {
    /// Opens (or creates) `path` for appending. A torn tail must start like a record
    /// (`{`): anything else means the file is not an annotation output, and is refused.
    pub fn open(path: &Path, sync_every: usize) -> Result<(Journal, Previous)> {
        let regular = match std::fs::metadata(path) {
            Ok(meta) => meta.is_file(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        let mut previous = Previous { resumable: false, cut_bytes: 0 };
        let mut pending_cut = None;
        let file = if regular {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("cannot open {} for appending", path.display()))?;
            let length = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
            let whole =
                whole_lines_length(&mut file, length).with_context(|| format!("cannot read {}", path.display()))?;
            if whole < length {
                let tail =
                    torn_tail(&mut file, whole, length).with_context(|| format!("cannot read {}", path.display()))?;
                if tail == Tail::Foreign {
                    bail!(
                        "{} ends with {} bytes that are neither a whole line nor the start of a record: \
                         it is not an annotation output. Write to a new --output-file",
                        path.display(),
                        length - whole
                    );
                }
                previous.cut_bytes = length - whole;
                pending_cut = Some(whole);
            }
            previous.resumable = whole > 0;
            file
        } else {
            OpenOptions::new()
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {} for writing", path.display()))?
        };
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            unsynced: 0,
            sync_every: sync_every.max(1),
            regular,
            pending_cut,
        };
        Ok((journal, previous))
    }

    /// Appends one whole line (one `write` call) and syncs every `sync_every` lines.
    pub fn append(&mut self, line: &[u8]) -> Result<()> {
        debug_assert!(line.ends_with(b"\n"));
        self.cut_torn_tail()?;
        self.file.write_all(line).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.unsynced += 1;
        if self.unsynced >= self.sync_every {
            self.sync()?;
        }
        Ok(())
    }

    /// Cuts a torn last line off, once the lines before it were found to be this run's.
    pub fn cut_torn_tail(&mut self) -> Result<()> {
        if let Some(whole) = self.pending_cut.take() {
            let name = self.path.display();
            self.file.set_len(whole).with_context(|| format!("cannot cut the torn last line of {name}"))?;
            self.file.sync_all().with_context(|| format!("cannot sync {name}"))?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced > 0 && self.regular {
            self.file.sync_data().with_context(|| format!("cannot sync {}", self.path.display()))?;
        }
        self.unsynced = 0;
        Ok(())
    }
}

#[derive(PartialEq, Eq)]
enum Tail {
    /// The start of a record a crash cut short.
    Record,
    /// Zeros only: what a power loss leaves where the file's new length reached the disk
    /// and the unsynced lines did not.
    Zeros,
    /// Anything else: not this command's output.
    Foreign,
}

/// What the bytes from `whole` to `length` (past the last whole line) are.
fn torn_tail(file: &mut File, whole: u64, length: u64) -> std::io::Result<Tail> {
    file.seek(SeekFrom::Start(whole))?;
    let mut first = [0u8];
    file.read_exact(&mut first)?;
    if first[0] == b'{' {
        return Ok(Tail::Record);
    }
    let mut rest = (&mut *file).take(length - whole - 1);
    let mut block = vec![0u8; 64 << 10];
    let mut zeros = first[0] == 0;
    while zeros {
        let n = rest.read(&mut block)?;
        if n == 0 {
            break;
        }
        zeros = block[..n].iter().all(|&b| b == 0);
    }
    Ok(if zeros { Tail::Zeros } else { Tail::Foreign })
}

/// The length of the file up to and including its last `\n`, read from the end.
fn whole_lines_length(file: &mut File, length: u64) -> std::io::Result<u64> {
    let mut end = length;
    let mut block = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let block = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(block)?;
        if let Some(i) = memchr::memrchr(b'\n', block) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The whole non-blank lines already in an output file (a torn tail is not one), with
/// their 1-based line numbers; a line over `max_line_bytes` is an error.
pub fn existing_lines(path: &Path, max_line_bytes: usize) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>)>>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let name = path.display().to_string();
    let mut number = 0u64;
    Ok(std::iter::from_fn(move || {
        loop {
            let mut line = Vec::new();
            number += 1;
            match (&mut reader).take(max_line_bytes as u64 + 1).read_until(b'\n', &mut line) {
                Ok(_) if line.last() != Some(&b'\n') && line.len() > max_line_bytes => {
                    return Some(Err(anyhow::anyhow!(
                        "{name}:{number}: line is longer than the limit of {} MiB (raise it with --max-line-mb)",
                        max_line_bytes >> 20
                    )));
                }
                // End of file, or a torn tail (cut before the first append).
                Ok(_) if line.last() != Some(&b'\n') => return None,
                Ok(_) => {
                    line.pop();
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        return Some(Ok((number, line)));
                    }
                }
                Err(e) => {
                    return Some(Err(anyhow::Error::new(e).context(format!("{name}: cannot read line {number}"))));
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_cut_and_whole_lines_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let long = "x".repeat(100_000);
        std::fs::write(&path, format!("a\n\n{long}\n{{hal")).unwrap();
        let (mut journal, previous) = Journal::open(&path, 1).unwrap();
        assert_eq!(previous.cut_bytes, 4);
        assert!(previous.resumable);
        // Nothing is cut until the run writes.
        let lines: Vec<(u64, Vec<u8>)> = existing_lines(&path, 1 << 20).unwrap().map(Result::unwrap).collect();
        assert_eq!(lines, vec![(1, b"a".to_vec()), (3, long.clone().into_bytes())]);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("{hal"));
        journal.append(b"b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("a\n\n{long}\nb\n"));
        let lines = existing_lines(&path, 1 << 10).unwrap().map(|l| l.map_err(|e| e.to_string())).collect::<Vec<_>>();
        assert!(lines[1].as_ref().unwrap_err().contains(":3: line is longer than the limit"), "{lines:?}");
    }

    #[test]
    fn a_tail_that_is_not_a_record_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        for text in ["my notes, no newline", "{\"a\": 1}\nmore notes"] {
            std::fs::write(&path, text).unwrap();
            let e = Journal::open(&path, 1).err().unwrap().to_string();
            assert!(e.contains("not an annotation output"), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
        // Zeros after the last whole line (a power loss before the tail was synced) are a
        // torn tail too; zeros followed by anything else are not.
        std::fs::write(&path, b"{}\n\0\0\0\0").unwrap();
        let (mut journal, previous) = Journal::open(&path, 1).unwrap();
        assert_eq!((previous.resumable, previous.cut_bytes), (true, 4));
        journal.append(b"{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n{}\n");
        std::fs::write(&path, b"{}\n\0\0x").unwrap();
        assert!(Journal::open(&path, 1).err().unwrap().to_string().contains("not an annotation output"));
        // A first record torn mid-write is cut once the run writes.
        std::fs::write(&path, "{\"conv").unwrap();
        let (mut journal, previous) = Journal::open(&path, 1).unwrap();
        assert_eq!((previous.resumable, previous.cut_bytes), (false, 6));
        journal.append(b"{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    }
}
