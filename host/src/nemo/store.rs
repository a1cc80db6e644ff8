//! Where a NeMo checkpoint's files are: an extracted folder, or a `.nemo` tar read in
//! place (its members are located once, then read at their offsets: a 680 GB archive is
//! never extracted or read whole).

use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Most bytes of a small description file (`.zarray`, `metadata.json`).
pub const DESCRIPTION_LIMIT: u64 = 1 << 20;
/// Most bytes of `model_config.yaml`, a pickled `.metadata` or a tokenizer file.
pub const METADATA_LIMIT: u64 = 256 << 20;

/// `len` zero bytes, or an error where the allocator refuses: sizes come from headers a
/// damaged or hostile checkpoint writes, and `vec!` would abort the process on them.
pub fn zeroed(len: usize) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).map_err(|_| anyhow!("cannot allocate {len} bytes"))?;
    bytes.resize(len, 0);
    Ok(bytes)
}

/// The regular file at `path` and its size; `Ok(None)` when there is no such file.
fn open_regular(path: &Path) -> Result<Option<(File, u64)>> {
    // Non-blocking, so that opening a FIFO returns and fstat can refuse it.
    let file = match File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file (a folder, device or pipe)", path.display());
    }
    Ok(Some((file, meta.len())))
}

/// The bytes of the regular file at `path`, at most `limit` of them: a FIFO would block
/// the read forever and a device (`/dev/zero`) never ends. `Ok(None)` when there is no
/// such file.
pub fn read_regular(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some((file, len)) = open_regular(path)? else { return Ok(None) };
    if len > limit {
        bail!("{} is {len} bytes, more than the {limit} expected", path.display());
    }
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len as usize).map_err(|_| anyhow!("cannot allocate {len} bytes"))?;
    // A file that grows while it is read stops at the limit too.
    file.take(limit + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!("{} grew past the {limit} bytes expected while it was read", path.display());
    }
    Ok(Some(bytes))
}

pub enum Store {
    Folder(PathBuf),
    Tar { path: PathBuf, file: File, members: BTreeMap<String, (u64, u64)> },
}

/// A member path without a leading `./` (NeMo writes `./model_config.yaml`).
fn normal(path: &str) -> &str {
    path.trim_start_matches("./")
}

impl Store {
    /// The checkpoint at `path`: a folder, or a tar file (`.nemo`).
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            return Ok(Store::Folder(path.to_owned()));
        }
        if !meta.is_file() {
            bail!("{} is neither a folder nor a .nemo file", path.display());
        }
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut magic = [0u8; 2];
        file.read_exact_at(&mut magic, 0).ok();
        if magic == [0x1f, 0x8b] {
            bail!(
                "{} is a gzip-compressed tar: extract it (`tar xzf`) and pass the folder, so its tensors can be read in place",
                path.display()
            );
        }
        let mut members = BTreeMap::new();
        let mut archive = tar::Archive::new(&file);
        let entries = archive.entries().with_context(|| format!("{} is not a tar archive", path.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("{}: a damaged tar entry", path.display()))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path()?.to_string_lossy().into_owned();
            members.insert(normal(&name).to_owned(), (entry.raw_file_position(), entry.size()));
        }
        if members.is_empty() {
            bail!("{} holds no files: not a .nemo archive", path.display());
        }
        Ok(Store::Tar { path: path.to_owned(), file, members })
    }

    /// How errors name `member`: its path on disk, or `ARCHIVE:member`.
    pub fn describe(&self, member: &str) -> String {
        match self {
            Store::Folder(root) => root.join(member).display().to_string(),
            Store::Tar { path, .. } => format!("{}:{}", path.display(), normal(member)),
        }
    }

    /// The bytes of `member`, a regular file of at most `limit` bytes; `Ok(None)` when
    /// there is no such file.
    pub fn read_optional(&self, member: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Folder(root) => read_regular(&root.join(member), limit),
            Store::Tar { file, members, .. } => {
                let Some(&(offset, size)) = members.get(normal(member)) else { return Ok(None) };
                if size > limit {
                    bail!("{} is {size} bytes, more than the {limit} expected", self.describe(member));
                }
                let mut bytes = zeroed(usize::try_from(size)?)?;
                file.read_exact_at(&mut bytes, offset)
                    .with_context(|| format!("cannot read {} (truncated archive?)", self.describe(member)))?;
                Ok(Some(bytes))
            }
        }
    }

    /// The size of `member` in bytes.
    pub fn size(&self, member: &str) -> Result<u64> {
        match self {
            Store::Folder(root) => Ok(std::fs::metadata(root.join(member))
                .with_context(|| format!("cannot read {}", self.describe(member)))?
                .len()),
            Store::Tar { members, .. } => members
                .get(normal(member))
                .map(|&(_, size)| size)
                .with_context(|| format!("{} does not exist", self.describe(member))),
        }
    }

    /// `len` bytes of `member` from `offset`: an error, not a short read, past its end.
    pub fn read_at(&self, member: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let size = self.size(member)?;
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            bail!("{}: bytes {offset}..+{len} lie past its end ({size} bytes)", self.describe(member));
        }
        let mut bytes = zeroed(len)?;
        match self {
            Store::Folder(root) => {
                let (file, _) = open_regular(&root.join(member))?
                    .with_context(|| format!("{} does not exist", self.describe(member)))?;
                file.read_exact_at(&mut bytes, offset)
                    .with_context(|| format!("cannot read {}", self.describe(member)))?;
            }
            Store::Tar { file, members, .. } => {
                let start = members.get(normal(member)).map(|&(start, _)| start).unwrap_or_default();
                file.read_exact_at(&mut bytes, start + offset)
                    .with_context(|| format!("cannot read {} (truncated archive?)", self.describe(member)))?;
            }
        }
        Ok(bytes)
    }

    /// [`Store::read_optional`], where a missing file is an error.
    pub fn read(&self, member: &str, limit: u64) -> Result<Vec<u8>> {
        self.read_optional(member, limit)?.with_context(|| format!("{} does not exist", self.describe(member)))
    }

    pub fn exists(&self, member: &str) -> bool {
        match self {
            Store::Folder(root) => root.join(member).exists(),
            Store::Tar { members, .. } => {
                let member = normal(member).trim_end_matches('/');
                members.contains_key(member)
                    || members
                        .range(format!("{member}/")..)
                        .next()
                        .is_some_and(|(k, _)| k.starts_with(&format!("{member}/")))
            }
        }
    }

    /// The files directly under `folder` (names only).
    pub fn list(&self, folder: &str) -> Result<Vec<String>> {
        let folder = normal(folder).trim_end_matches('/');
        match self {
            Store::Folder(root) => {
                let dir = root.join(folder);
                let mut names = Vec::new();
                for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
                names.sort();
                Ok(names)
            }
            Store::Tar { members, .. } => {
                let prefix = if folder.is_empty() { String::new() } else { format!("{folder}/") };
                let mut names: Vec<String> = members
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
                    .collect();
                names.dedup();
                Ok(names)
            }
        }
    }
}
