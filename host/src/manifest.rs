//! Provenance: `--manifest FILE` records what made a conversion's outputs, and
//! `steerlm verify-manifest FILE` re-runs it to prove the bytes.
//!
//! A manifest is JSON: the steerlm version, the sha256 of every component the
//! conversion ran, the command line and its effective options (defaults included),
//! and the sha256, size and line count of every input and output file. Paths are
//! kept as they were given, relative to the recorded working directory.

use crate::input::InputPath;
use crate::sandbox::{Kind, hex};
use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The manifest format's version, bumped on incompatible changes.
pub const FORMAT: u32 = 1;

/// What an output file is to the command that wrote it, so `verify-manifest` can send
/// it elsewhere: the flag that named it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `--output-file FILE`.
    OutputFile,
    /// A file inside `--output-dir DIR`.
    OutputDir,
    /// `--error-report FILE`.
    ErrorReport,
}

impl Role {
    fn flag(self) -> &'static str {
        match self {
            Role::OutputFile => "--output-file",
            Role::OutputDir => "--output-dir",
            Role::ErrorReport => "--error-report",
        }
    }
}

/// The files and components of one converting command, known before it runs.
#[derive(Debug, Default)]
pub struct Provenance {
    /// Components the conversion runs (none with `--engine native`).
    pub components: Vec<Kind>,
    pub inputs: Vec<PathBuf>,
    pub outputs: Vec<(Role, PathBuf)>,
}

impl Provenance {
    /// `-` (stdin/stdout), FIFOs and devices cannot be hashed afterwards (reading a
    /// FIFO again would wait forever) nor re-read by `verify-manifest`.
    pub fn check_files(&self) -> Result<()> {
        let dash = Path::new("-");
        for path in self.inputs.iter().chain(self.outputs.iter().map(|(_, p)| p)) {
            if path == dash {
                bail!("--manifest needs files: it cannot record `-` (stdin or stdout)");
            }
            if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
                bail!("--manifest needs regular files: it cannot record {}", path.display());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub steerlm_manifest: u32,
    pub steerlm_version: String,
    /// The subcommand, e.g. `to-regression` or `preprocess oasst`.
    pub command: String,
    /// The arguments after `steerlm`, without `--manifest`.
    pub argv: Vec<String>,
    /// Every option of the subcommand with its effective value, defaults included.
    pub options: BTreeMap<String, String>,
    /// Working directory the paths are relative to.
    pub cwd: PathBuf,
    pub components: Vec<ComponentRecord>,
    pub inputs: Vec<FileRecord>,
    pub outputs: Vec<FileRecord>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ComponentRecord {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct FileRecord {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub role: Option<Role>,
    pub sha256: String,
    pub bytes: u64,
    /// Lines of the content (of the decompressed text for a `.gz` file).
    pub lines: u64,
}

/// Hashes a file, counting its bytes and its content's lines.
pub fn describe(path: &Path, role: Option<Role>) -> Result<FileRecord> {
    // A device or pipe would never end (/dev/zero) or never open (a FIFO without a writer);
    // a manifest records regular files only.
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file (a device, pipe or folder): a manifest records regular files", path.display());
    }
    let read = || std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()));
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    let mut file = read()?;
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    // Lines of the content, opened as every input is (gzip recognised by its bytes).
    let mut content = InputPath(path.to_owned()).open(&indicatif::ProgressBar::hidden())?;
    let lines = count_lines(&mut content, &mut buffer).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(FileRecord { path: path.to_owned(), role, sha256: hex(&hasher.finalize()), bytes, lines })
}

/// Lines as `wc -l` counts them, plus a last line without a newline.
fn count_lines(reader: &mut dyn Read, buffer: &mut [u8]) -> std::io::Result<u64> {
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = reader.read(buffer)?;
        if n == 0 {
            return Ok(lines + u64::from(last != b'\n'));
        }
        lines += memchr::memchr_iter(b'\n', &buffer[..n]).count() as u64;
        last = buffer[n - 1];
    }
}

/// `argv` without `--manifest FILE` / `--manifest=FILE`.
pub fn without_manifest_flag(argv: &[String]) -> Vec<String> {
    let mut kept = Vec::with_capacity(argv.len());
    let mut skip_next = false;
    for arg in argv {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if arg == "--manifest" {
            skip_next = true;
        } else if !arg.starts_with("--manifest=") {
            kept.push(arg.clone());
        }
    }
    kept
}

/// Writes the manifest of a finished conversion into `output`, which the caller
/// created before the conversion ran (so a bad manifest path fails first).
pub fn write(
    mut output: crate::output::Output,
    argv: &[String],
    command: String,
    options: BTreeMap<String, String>,
    provenance: &Provenance,
) -> Result<()> {
    let mut outputs = Vec::new();
    for (role, path) in &provenance.outputs {
        // Outputs are still under their temporary names (see `output::Staging`).
        let content = crate::output::staged_path(path).unwrap_or_else(|| path.clone());
        // An error report exists only when some record was bad.
        if *role == Role::ErrorReport && !content.exists() {
            continue;
        }
        outputs.push(FileRecord { path: path.clone(), ..describe(&content, Some(*role))? });
    }
    let manifest = Manifest {
        steerlm_manifest: FORMAT,
        steerlm_version: env!("CARGO_PKG_VERSION").to_owned(),
        command,
        argv: without_manifest_flag(argv),
        options,
        cwd: std::env::current_dir().context("cannot read the working directory")?,
        components: provenance
            .components
            .iter()
            .map(|kind| ComponentRecord { name: kind.name().to_owned(), sha256: kind.sha256() })
            .collect(),
        inputs: provenance.inputs.iter().map(|p| describe(p, None)).collect::<Result<_>>()?,
        outputs,
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    output.write_all(&json)?;
    output.commit()
}

/// Largest manifest read (one lists a few files; `/dev/zero` would never end).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

pub fn read(path: &Path) -> Result<Manifest> {
    use std::io::Read;
    // A FIFO would block the open; `--manifest m.json.gz` wrote gzip, read back as such.
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file (a device, pipe or folder): not a steerlm manifest", path.display());
    }
    let file = InputPath(path.to_owned()).open(&indicatif::ProgressBar::hidden())?;
    let mut text = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        bail!("{} is larger than {} MiB: not a steerlm manifest", path.display(), MAX_MANIFEST_BYTES >> 20);
    }
    let manifest: Manifest =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a steerlm manifest", path.display()))?;
    let hashes = manifest.components.iter().map(|c| &c.sha256);
    let hashes = hashes.chain(manifest.inputs.iter().chain(&manifest.outputs).map(|f| &f.sha256));
    for hash in hashes {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{} is not a valid manifest: {hash:?} is not a sha256", path.display());
        }
    }
    if manifest.steerlm_manifest != FORMAT {
        bail!(
            "{} is manifest format {}; this steerlm reads format {FORMAT}",
            path.display(),
            manifest.steerlm_manifest
        );
    }
    Ok(manifest)
}

/// The manifest's command line with every output flag pointed into `dir` (also flags
/// whose file the original run did not write, such as an error report), and, per
/// recorded output, where the re-run writes it.
pub fn redirect_outputs(manifest: &Manifest, dir: &Path) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let mut argv = manifest.argv.clone();
    for role in [Role::OutputFile, Role::OutputDir, Role::ErrorReport] {
        let flag = role.flag();
        let inline = format!("{flag}=");
        for i in 0..argv.len() {
            let (index, original) = if argv[i] == flag && i + 1 < argv.len() {
                (i + 1, argv[i + 1].clone())
            } else if let Some(value) = argv[i].strip_prefix(&inline) {
                (i, value.to_owned())
            } else {
                continue;
            };
            let target = scratch_target(dir, role, Path::new(&original))?;
            let target = target.to_str().context("the scratch directory's path is not UTF-8")?.to_owned();
            argv[index] = if index == i { format!("{inline}{target}") } else { target };
        }
    }
    let mut rerun_paths = Vec::new();
    for output in &manifest.outputs {
        let role = output.role.context("an output of the manifest has no role")?;
        if !manifest.argv.iter().any(|a| a == role.flag() || a.starts_with(&format!("{}=", role.flag()))) {
            bail!("the manifest's command line has no {}, though an output came from it", role.flag());
        }
        let path = match role {
            Role::OutputDir => scratch_target(dir, role, &output.path)?
                .join(output.path.file_name().context("an output path of the manifest has no file name")?),
            _ => scratch_target(dir, role, &output.path)?,
        };
        rerun_paths.push(path);
    }
    Ok((argv, rerun_paths))
}

/// Where output `original` (named by `role`'s flag) goes in the scratch directory; the
/// file name is kept so a `.gz` output is still compressed.
fn scratch_target(dir: &Path, role: Role, original: &Path) -> Result<PathBuf> {
    let folder = dir.join(role.flag().trim_start_matches('-'));
    std::fs::create_dir_all(&folder)?;
    Ok(match role {
        Role::OutputDir => folder,
        _ => folder.join(original.file_name().context("an output path of the manifest has no file name")?),
    })
}

/// Components the manifest names whose bytes differ from this binary's.
pub fn component_differences(manifest: &Manifest) -> Vec<String> {
    manifest
        .components
        .iter()
        .filter_map(|recorded| {
            let ours = Kind::ALL.iter().find(|k| k.name() == recorded.name)?;
            (ours.sha256() != recorded.sha256).then(|| {
                format!(
                    "the {} component differs: manifest {}, this steerlm {}",
                    recorded.name,
                    short(&recorded.sha256),
                    short(&ours.sha256())
                )
            })
        })
        .collect()
}

pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_flag_is_dropped_in_both_spellings() {
        let argv: Vec<String> = ["format", "--manifest", "m.json", "--input-file", "a", "--manifest=x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(without_manifest_flag(&argv), ["format", "--input-file", "a"]);
    }

    #[test]
    fn lines_are_counted_like_wc_plus_an_unterminated_last_line() {
        let mut buffer = vec![0; 3];
        for (text, lines) in [("", 0), ("a", 1), ("a\n", 1), ("a\nb", 2), ("a\n\nb\n", 3)] {
            assert_eq!(count_lines(&mut text.as_bytes(), &mut buffer).unwrap(), lines, "{text:?}");
        }
    }
}
