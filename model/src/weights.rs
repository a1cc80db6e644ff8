//! Memory-mapped safetensors checkpoints: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Tensors stay in their stored dtype until a backend
//! asks for them.

use anyhow::{Context, Result, anyhow, bail};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Element types steerlm reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

/// A tensor's place in one of the mapped files.
#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A view of one stored tensor, or of rows picked from one (a causal LM's reward rows).
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: Cow<'a, [usize]>,
    pub bytes: Cow<'a, [u8]>,
}

impl TensorView<'_> {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to f32 (exactly: bf16 and f16 are subsets of f32).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            DType::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
        }
    }
}

pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

impl Weights {
    /// Maps the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_paths(&index)?
        } else {
            bail!("{} has neither model.safetensors nor model.safetensors.index.json", dir.display());
        };
        let mut weights = Weights { files: Vec::new(), entries: HashMap::new() };
        for path in paths {
            // A FIFO would block the open forever, a device would not map.
            let meta = std::fs::metadata(&path).with_context(|| format!("cannot open {}", path.display()))?;
            if !meta.is_file() {
                bail!("{} is not a regular file (a folder, device or pipe)", path.display());
            }
            let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the checkpoint is read-only input; like every safetensors loader we
            // assume it is not truncated or rewritten while the model is loaded.
            let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
            let index = weights.files.len();
            let (header_len, metadata) = SafeTensors::read_metadata(&map)
                .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
            for (name, info) in metadata.tensors() {
                let dtype = match info.dtype {
                    Dtype::F32 => DType::F32,
                    Dtype::BF16 => DType::BF16,
                    Dtype::F16 => DType::F16,
                    other => {
                        bail!("{}: tensor {name} has dtype {other:?}; steerlm reads F32, BF16 and F16", path.display())
                    }
                };
                let (start, end) = info.data_offsets;
                let base = 8 + header_len;
                let entry =
                    Entry { file: index, dtype, shape: info.shape.clone(), start: base + start, end: base + end };
                if let Some(earlier) = weights.entries.insert(name.clone(), entry) {
                    // Which copy a loader takes is up to it: refuse to guess.
                    bail!(
                        "tensor {name} is in both {} and {}: a checkpoint holds each tensor once",
                        weights.files[earlier.file].0.display(),
                        path.display()
                    );
                }
            }
            weights.files.push((path, map));
        }
        Ok(weights)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The tensor `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>> {
        let (key, entry) =
            self.entries.get_key_value(name).ok_or_else(|| anyhow!("the checkpoint has no tensor `{name}`"))?;
        if entry.shape != shape {
            bail!("tensor `{name}` has shape {:?}, expected {shape:?}", entry.shape);
        }
        let map = &self.files[entry.file].1;
        Ok(TensorView {
            name: key,
            dtype: entry.dtype,
            shape: Cow::Borrowed(&entry.shape),
            bytes: Cow::Borrowed(&map[entry.start..entry.end]),
        })
    }

    /// Rows `rows` (in that order) of the 2-D tensor `name`, which must have `cols`
    /// columns: only those rows are copied out (a 128k-row `lm_head` gives one row).
    pub fn rows_of(&self, name: &str, rows: &[u32], cols: usize) -> Result<TensorView<'_>> {
        let stored_rows = match self.shape(name) {
            Some([stored_rows, stored_cols]) if *stored_cols == cols => *stored_rows,
            Some(shape) => bail!("tensor `{name}` has shape {shape:?}, expected [rows, {cols}]"),
            None => bail!("the checkpoint has no tensor `{name}`"),
        };
        let whole = self.get(name, &[stored_rows, cols])?;
        let row_bytes = cols * whole.dtype.size();
        let mut bytes = Vec::with_capacity(rows.len() * row_bytes);
        for &row in rows {
            let row = row as usize;
            if row >= stored_rows {
                bail!("row {row} is outside tensor `{name}` ({stored_rows} rows)");
            }
            bytes.extend_from_slice(&whole.bytes[row * row_bytes..(row + 1) * row_bytes]);
        }
        Ok(TensorView {
            name: whole.name,
            dtype: whole.dtype,
            shape: Cow::Owned(vec![rows.len(), cols]),
            bytes: Cow::Owned(bytes),
        })
    }

    /// Like [`Weights::get`], `None` when the tensor is absent (optional biases).
    pub fn get_optional(&self, name: &str, shape: &[usize]) -> Result<Option<TensorView<'_>>> {
        if self.contains(name) { self.get(name, shape).map(Some) } else { Ok(None) }
    }

    /// Rows of a 2-D tensor (the score head's output count).
    pub fn rows(&self, name: &str) -> Option<usize> {
        self.shape(name).and_then(|shape| shape.first().copied())
    }

    /// The stored shape of `name`, if the checkpoint has it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Every tensor name in the checkpoint, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{} has no weight_map", index.display()))?;
    let mut files = Vec::new();
    for (tensor, file) in map {
        // A shard is a file of the checkpoint's folder (or a folder inside it), as
        // transformers writes them: never `../` or an absolute path to elsewhere.
        let inside = file.as_str().map(Path::new).filter(|path| {
            use std::path::Component::{CurDir, Normal};
            path.components().any(|c| matches!(c, Normal(_)))
                && path.components().all(|c| matches!(c, Normal(_) | CurDir))
        });
        match inside {
            Some(path) => files.push(path),
            None => bail!("{}: the shard of {tensor}, {file}, is not a file name inside the folder", index.display()),
        }
    }
    if files.is_empty() {
        bail!("{}: its weight_map names no tensors", index.display());
    }
    files.sort_unstable();
    files.dedup();
    let dir = index.parent().expect("an index file has a directory");
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// An index may name shards inside the checkpoint's folder only, as regular files: a
    /// path out of it, a non-string, or a FIFO (which would block the open forever) is an
    /// error naming it.
    #[test]
    fn an_index_names_regular_files_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        let fifo = dir.path().join("pipe.safetensors");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        for (shard, says) in [
            (
                serde_json::json!("../outside.safetensors"),
                "the shard of score.weight, \"../outside.safetensors\", is not a file name inside the folder",
            ),
            (serde_json::json!("/tmp/outside.safetensors"), "is not a file name inside the folder"),
            (serde_json::json!(""), "is not a file name inside the folder"),
            (serde_json::json!(3), "the shard of score.weight, 3, is not"),
            (serde_json::json!("pipe.safetensors"), "pipe.safetensors is not a regular file"),
            // `./` is inside: accepted as a name, then opened (a FIFO here, so refused as one).
            (serde_json::json!("./pipe.safetensors"), "pipe.safetensors is not a regular file"),
            (serde_json::json!("./"), "is not a file name inside the folder"),
        ] {
            std::fs::write(&index, serde_json::json!({"weight_map": {"score.weight": shard}}).to_string()).unwrap();
            let error = format!("{:#}", Weights::open(dir.path()).err().expect("refused"));
            assert!(error.contains(says), "{shard}: {error}");
        }
        std::fs::write(&index, r#"{"weight_map": {}}"#).unwrap();
        let error = format!("{:#}", Weights::open(dir.path()).err().expect("refused"));
        assert!(error.contains("its weight_map names no tensors"), "{error}");
    }

    /// Two shards that both hold a tensor: which copy a loader takes is its own choice,
    /// so the checkpoint is refused, naming the tensor and both files.
    #[test]
    fn a_tensor_in_two_shards_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let llama9 = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama9");
        for shard in ["a.safetensors", "b.safetensors"] {
            std::os::unix::fs::symlink(llama9.join("model.safetensors"), dir.path().join(shard)).unwrap();
        }
        let index =
            serde_json::json!({"weight_map": {"score.weight": "a.safetensors", "model.norm.weight": "b.safetensors"}});
        std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
        let error = format!("{:#}", Weights::open(dir.path()).err().expect("refused"));
        assert!(
            error.contains("a.safetensors and ")
                && error.contains("b.safetensors: a checkpoint holds each tensor once"),
            "{error}"
        );
    }
}
