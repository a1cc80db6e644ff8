//! The annotation output file as a journal: whole lines appended and synced in small
//! groups. On start, a torn last line (a crash mid-write) is cut off, and the keys of
//! the records already there are collected so they are not annotated twice.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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

pub struct Journal {
    path: PathBuf,
    file: File,
    unsynced: usize,
    sync_every: usize,
}

/// What was found in an existing output file.
pub struct Existing {
    pub keys: HashSet<String>,
    pub records: u64,
    /// Bytes of a torn last line that were cut off.
    pub cut_bytes: u64,
}

impl Journal {
    /// Opens (or creates) `path` for appending, repairing a torn tail first.
    pub fn open(path: &Path, sync_every: usize) -> Result<(Journal, Existing)> {
        let mut existing = Existing { keys: HashSet::new(), records: 0, cut_bytes: 0 };
        if path.exists() {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .with_context(|| format!("cannot read {}", path.display()))?;
            let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < bytes.len() {
                existing.cut_bytes = (bytes.len() - whole) as u64;
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                file.set_len(whole as u64)
                    .with_context(|| format!("cannot cut the torn last line of {}", path.display()))?;
                file.sync_all()?;
            }
            for (i, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let record: Value = serde_json::from_slice(line).with_context(|| {
                    format!("{}:{}: not a JSON record; is this an annotation output?", path.display(), i + 1)
                })?;
                match record_key(&record) {
                    Ok(key) => {
                        existing.keys.insert(key);
                        existing.records += 1;
                    }
                    Err(e) => bail!("{}:{}: {e}", path.display(), i + 1),
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok((Journal { path: path.to_path_buf(), file, unsynced: 0, sync_every: sync_every.max(1) }, existing))
    }

    /// Appends one whole line (one `write` call) and syncs every `sync_every` lines.
    pub fn append(&mut self, line: &[u8]) -> Result<()> {
        debug_assert!(line.ends_with(b"\n"));
        self.file.write_all(line).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.unsynced += 1;
        if self.unsynced >= self.sync_every {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced > 0 {
            self.file.sync_data().with_context(|| format!("cannot sync {}", self.path.display()))?;
            self.unsynced = 0;
        }
        Ok(())
    }
}
