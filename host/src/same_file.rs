//! Refusing, before anything is opened for writing, an output that is one of the
//! inputs (it would be replaced by what was read from it, or truncated before being
//! read) and two outputs that are one file (one would silently replace the other).
//!
//! "The same file" means the same device and inode once symbolic links are followed,
//! so `./data.jsonl`, `data.jsonl` and a link to it all match. An output that does not
//! exist yet is compared by where it would be created (its existing parent folders
//! canonicalised, plus the rest of its name). `-` is standard input or output, compared
//! as the file it is when that is a regular file (`--input-file - < data.jsonl`,
//! `--output-file - >> data.jsonl`). FIFOs and devices are not compared: they are
//! written through and never replaced, so `--output-file /dev/null --error-report
//! /dev/null` is fine.

use crate::output::{Resolved, resolve_links};
use anyhow::{Result, bail};
use std::path::{Component, Path, PathBuf};

/// A file named on the command line, and the flag that named it (for messages).
#[derive(Clone, Debug)]
pub struct NamedFile {
    pub flag: &'static str,
    pub path: PathBuf,
}

impl NamedFile {
    pub fn new(flag: &'static str, path: impl Into<PathBuf>) -> Self {
        NamedFile { flag, path: path.into() }
    }

    fn describe(&self) -> String {
        let stream = if is_dash(&self.path) { " (a standard stream)" } else { "" };
        format!("{} {}{stream}", self.flag, self.path.display())
    }
}

/// What makes two names the same file.
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    /// An existing regular file or folder: device and inode.
    Inode(u64, u64),
    /// A file that does not exist yet: the path it would be created at.
    Path(PathBuf),
}

/// Fails, naming both flags and paths, if an output is an input or two outputs are
/// the same file.
pub fn refuse_overlaps(inputs: &[NamedFile], outputs: &[NamedFile]) -> Result<()> {
    let inputs: Vec<(&NamedFile, Identity)> =
        inputs.iter().filter_map(|file| Some((file, existing_identity(&file.path)?))).collect();
    let mut seen_outputs: Vec<(&NamedFile, Identity)> = Vec::new();
    for output in outputs {
        let Some(identity) = output_identity(&output.path) else { continue };
        if let Some((input, _)) = inputs.iter().find(|(_, other)| *other == identity) {
            bail!(
                "{} is the same file as {}: refusing to overwrite an input (name another output)",
                output.describe(),
                input.describe()
            );
        }
        if let Some((first, _)) = seen_outputs.iter().find(|(_, other)| *other == identity) {
            bail!(
                "{} and {} are the same file: one output would replace the other (name different files)",
                first.describe(),
                output.describe()
            );
        }
        seen_outputs.push((output, identity));
    }
    Ok(())
}

/// A model folder named by `flag` and the files a load may read from it, each an input
/// no output may overwrite: the folder, every file directly in it (config, tokenizer,
/// weights) and every shard its `model.safetensors.index.json` names, wherever that is.
/// A folder that cannot be listed is named alone (loading it reports why).
pub fn model_folder(flag: &'static str, dir: &Path) -> Vec<NamedFile> {
    let mut files = vec![NamedFile::new(flag, dir)];
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries.flatten() {
        files.push(NamedFile::new(flag, entry.path()));
    }
    let index = dir.join("model.safetensors.index.json");
    // An index is a few hundred KiB; a bigger one is not read here (loading reports it).
    let small = std::fs::metadata(&index).is_ok_and(|meta| meta.is_file() && meta.len() <= 64 << 20);
    if let Some(text) = small.then(|| std::fs::read_to_string(&index).ok()).flatten()
        && let Ok(index) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(map) = index.get("weight_map").and_then(|m| m.as_object())
    {
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        files.extend(shards.into_iter().map(|shard| NamedFile::new(flag, dir.join(shard))));
    }
    files
}

fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The identity of an existing regular file or folder; `None` for `-`, FIFOs, devices
/// and names that cannot be read (opening them reports why).
fn existing_identity(path: &Path) -> Option<Identity> {
    if is_dash(path) {
        return stream_identity(std::io::stdin());
    }
    let meta = std::fs::metadata(path).ok()?;
    (meta.is_file() || meta.is_dir()).then(|| inode(path, &meta))?
}

/// The identity of the regular file a standard stream reads or writes, if it is one.
#[cfg(unix)]
fn stream_identity(stream: impl std::os::fd::AsFd) -> Option<Identity> {
    let file = std::fs::File::from(stream.as_fd().try_clone_to_owned().ok()?);
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| inode(Path::new("-"), &meta))?
}

#[cfg(not(unix))]
fn stream_identity<T>(_: T) -> Option<Identity> {
    None
}

#[cfg(unix)]
fn inode(_: &Path, meta: &std::fs::Metadata) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    Some(Identity::Inode(meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn inode(path: &Path, _: &std::fs::Metadata) -> Option<Identity> {
    Some(Identity::Path(path.canonicalize().ok()?))
}

/// An output's identity: an existing file's, or where a new one would be created.
fn output_identity(path: &Path) -> Option<Identity> {
    if is_dash(path) {
        return stream_identity(std::io::stdout());
    }
    match std::fs::metadata(path) {
        Ok(_) => existing_identity(path),
        Err(_) => match resolve_links(path).ok()? {
            Resolved::Path(target) => Some(Identity::Path(canonical_new_path(&target))),
            Resolved::Descriptor => None,
        },
    }
}

/// Where `path` would be created: folders that exist are canonicalised one by one, and
/// `..` after them is then exact (folders `preprocess` would create do not exist yet).
fn canonical_new_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut resolved = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
            }
            other => {
                resolved.push(other);
                if let Ok(canonical) = resolved.canonicalize() {
                    resolved = canonical;
                }
            }
        }
    }
    resolved
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn named(flag: &'static str, path: &Path) -> NamedFile {
        NamedFile::new(flag, path)
    }

    #[test]
    fn an_output_that_is_an_input_is_refused_through_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("data.jsonl");
        std::fs::write(&input, b"{}\n").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink("data.jsonl", &link).unwrap();
        let dotted = dir.path().join(".").join("data.jsonl");
        for output in [&input, &link, &dotted] {
            let error = refuse_overlaps(&[named("--input-file", &input)], &[named("--manifest", output)]).unwrap_err();
            let message = error.to_string();
            assert!(message.contains("--manifest") && message.contains("--input-file"), "{message}");
            assert!(message.contains("refusing to overwrite an input"), "{message}");
        }
        assert_eq!(std::fs::read(&input).unwrap(), b"{}\n");
    }

    #[test]
    fn two_outputs_that_will_be_one_new_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new").join("out.jsonl");
        let same = dir.path().join("new").join("..").join("new").join("out.jsonl");
        let error = refuse_overlaps(&[], &[named("--output-file", &out), named("--error-report", &same)]).unwrap_err();
        assert!(error.to_string().contains("are the same file"), "{error}");
    }

    #[test]
    fn distinct_files_stdin_and_devices_pass() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, b"").unwrap();
        let inputs = [named("--input-file", &input), named("--input-file", Path::new("-"))];
        let outputs = [
            named("--output-file", &dir.path().join("out.jsonl")),
            named("--error-report", Path::new("/dev/null")),
            named("--manifest", Path::new("/dev/null")),
            named("--output-file", Path::new("-")),
        ];
        refuse_overlaps(&inputs, &outputs).unwrap();
    }
}
