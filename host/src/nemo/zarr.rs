//! Zarr v2 arrays as Megatron's `zarr` distributed-checkpoint strategy writes them: one
//! directory per tensor with a `.zarray` description and one file per chunk (`0.0.0`),
//! each chunk a Blosc buffer (or raw bytes) in C order. Megatron writes bfloat16 as the
//! dtype string `"bfloat16"`. Regions are read chunk by chunk, so reading one layer of a
//! stacked `[layers, ...]` tensor reads only that layer's chunks.

use super::blosc;
use super::region::{Block, copy_overlap};
use super::store::{DESCRIPTION_LIMIT, Store, zeroed};
use crate::model::weights::DType;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

#[derive(Debug)]
enum Compressor {
    None,
    Blosc,
    Zlib,
}

pub struct ZarrArray<'s> {
    store: &'s Store,
    /// The array's folder in the store.
    folder: String,
    pub shape: Vec<usize>,
    chunks: Vec<usize>,
    /// Bytes of one decoded chunk.
    chunk_bytes: usize,
    pub dtype: DType,
    compressor: Compressor,
    separator: char,
    /// Bytes of one element to fill a chunk that was never written; `None` when the
    /// array has no fill value (a missing chunk is then an error).
    fill: Option<Vec<u8>>,
}

impl<'s> ZarrArray<'s> {
    /// The array in `folder` of `store`.
    pub fn open(store: &'s Store, folder: &str) -> Result<Self> {
        let member = Self::member(folder, ".zarray");
        let meta: Value = serde_json::from_slice(&store.read(&member, DESCRIPTION_LIMIT)?)
            .with_context(|| format!("{} is not JSON", store.describe(&member)))?;
        Self::from_meta(store, folder, &meta).with_context(|| format!("in {}", store.describe(&member)))
    }

    fn member(folder: &str, name: &str) -> String {
        if folder.is_empty() { name.to_owned() } else { format!("{folder}/{name}") }
    }

    fn from_meta(store: &'s Store, folder: &str, meta: &Value) -> Result<Self> {
        if meta.get("zarr_format").and_then(Value::as_u64) != Some(2) {
            bail!("not a zarr v2 array (`zarr_format` is not 2)");
        }
        let dims = |name: &str| -> Result<Vec<usize>> {
            meta.get(name)
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("no `{name}`"))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(|| anyhow!("`{name}` must list sizes")))
                .collect()
        };
        let (shape, chunks) = (dims("shape")?, dims("chunks")?);
        if shape.len() != chunks.len() || chunks.contains(&0) {
            bail!("`chunks` {chunks:?} does not fit `shape` {shape:?}");
        }
        let dtype = match meta.get("dtype").and_then(Value::as_str) {
            Some("<f4") => DType::F32,
            Some("<f2") => DType::F16,
            Some("bfloat16") | Some("<V2") => DType::BF16,
            Some(other) => bail!("dtype {other:?} is not a float type steerlm reads (<f4, <f2, bfloat16)"),
            None => bail!("no `dtype`"),
        };
        // Sizes in bytes must be numbers: a made-up header would overflow them.
        let bytes = |dims: &[usize]| dims.iter().try_fold(dtype.size(), |n, &d| n.checked_mul(d));
        if bytes(&shape).is_none() {
            bail!("`shape` {shape:?} has more elements than any array");
        }
        let chunk_bytes =
            bytes(&chunks).ok_or_else(|| anyhow!("`chunks` {chunks:?} has more elements than any array"))?;
        if meta.get("order").and_then(Value::as_str).unwrap_or("C") != "C" {
            bail!("Fortran-order arrays are not supported");
        }
        if meta.get("filters").is_some_and(|f| !f.is_null() && f.as_array().is_none_or(|a| !a.is_empty())) {
            bail!("zarr filters are not supported");
        }
        let compressor = match meta.get("compressor") {
            None | Some(Value::Null) => Compressor::None,
            Some(c) => match c.get("id").and_then(Value::as_str) {
                Some("blosc") => Compressor::Blosc,
                Some("zlib") => Compressor::Zlib,
                other => bail!("compressor {other:?} is not supported (blosc, zlib or none)"),
            },
        };
        let separator = match meta.get("dimension_separator").and_then(Value::as_str) {
            None | Some(".") => '.',
            Some("/") => '/',
            Some(other) => bail!("dimension_separator {other:?} is not supported"),
        };
        let fill = match meta.get("fill_value") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let v = value.as_f64().ok_or_else(|| anyhow!("`fill_value` {value} is not a number"))?;
                Some(match dtype {
                    DType::F32 => (v as f32).to_le_bytes().to_vec(),
                    DType::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
                    DType::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
                })
            }
        };
        Ok(ZarrArray {
            store,
            folder: folder.to_owned(),
            shape,
            chunks,
            chunk_bytes,
            dtype,
            compressor,
            separator,
            fill,
        })
    }

    /// Most bytes a stored chunk may take: its decoded size, plus what a compressor adds
    /// to data it cannot shrink (Blosc 16 bytes, zlib about 0.03%), with room to spare.
    fn stored_limit(&self) -> u64 {
        let expected = self.chunk_bytes as u64;
        match self.compressor {
            Compressor::None => expected,
            Compressor::Blosc | Compressor::Zlib => expected + expected / 64 + 4096,
        }
    }

    /// The decoded bytes of the chunk at grid position `index`.
    fn chunk(&self, index: &[usize]) -> Result<Vec<u8>> {
        let key: Vec<String> = index.iter().map(usize::to_string).collect();
        let key = if key.is_empty() { "0".to_owned() } else { key.join(&self.separator.to_string()) };
        let member = Self::member(&self.folder, &key);
        let name = self.store.describe(&member);
        let expected = self.chunk_bytes;
        // Errors name the chunk's path.
        let Some(stored) = self.store.read_optional(&member, self.stored_limit())? else {
            return match &self.fill {
                Some(fill) => {
                    let mut filled = zeroed(expected).with_context(|| format!("filling the missing chunk {name}"))?;
                    filled.chunks_exact_mut(fill.len()).for_each(|element| element.copy_from_slice(fill));
                    Ok(filled)
                }
                None => bail!("chunk {name} is missing (and the array has no fill value)"),
            };
        };
        let decoded = match self.compressor {
            Compressor::None => Ok(stored),
            Compressor::Blosc => blosc::decompress(&stored, expected),
            Compressor::Zlib => (|| {
                let mut out = Vec::new();
                out.try_reserve_exact(expected).map_err(|_| anyhow!("cannot allocate {expected} bytes"))?;
                // One byte past the chunk's size is enough to tell that it holds too much.
                let decoder = flate2::read::ZlibDecoder::new(&stored[..]);
                std::io::Read::read_to_end(&mut std::io::Read::take(decoder, expected as u64 + 1), &mut out)?;
                Ok(out)
            })(),
        }
        .with_context(|| format!("chunk {name}"))?;
        match decoded.len().cmp(&expected) {
            std::cmp::Ordering::Equal => Ok(decoded),
            std::cmp::Ordering::Less => {
                bail!("chunk {name} holds {} bytes, {expected} expected (truncated?)", decoded.len())
            }
            std::cmp::Ordering::Greater => bail!("chunk {name} holds more than the {expected} bytes expected"),
        }
    }

    /// The whole array's bytes, C order.
    pub fn read(&self) -> Result<Vec<u8>> {
        let start = vec![0; self.shape.len()];
        self.read_region(&start, &self.shape.clone())
    }

    /// `array[index]` along the first axis (one layer of a stacked tensor), C order.
    pub fn read_first_axis(&self, index: usize) -> Result<Vec<u8>> {
        if self.shape.is_empty() || index >= self.shape[0] {
            bail!("index {index} is outside the first axis of shape {:?}", self.shape);
        }
        let mut start = vec![0; self.shape.len()];
        let mut size = self.shape.clone();
        start[0] = index;
        size[0] = 1;
        self.read_region(&start, &size)
    }

    /// The hyper-rectangle `start .. start + size`, C order, assembled chunk by chunk.
    fn read_region(&self, start: &[usize], size: &[usize]) -> Result<Vec<u8>> {
        let esize = self.dtype.size();
        let rank = self.shape.len();
        // Within the array's shape, whose size in bytes `from_meta` checked.
        let total: usize = size.iter().product();
        let mut out = zeroed(total * esize)?;
        if total == 0 {
            return Ok(out);
        }
        if rank == 0 {
            out.copy_from_slice(&self.chunk(&[])?[..esize]);
            return Ok(out);
        }
        // A region that is exactly one chunk (a layer, a whole tensor) is that chunk's bytes:
        // no second buffer, no copy.
        if (0..rank).all(|d| start[d].is_multiple_of(self.chunks[d]) && size[d] == self.chunks[d]) {
            let position: Vec<usize> = (0..rank).map(|d| start[d] / self.chunks[d]).collect();
            if (0..rank).all(|d| start[d] + size[d] <= self.shape[d]) {
                return self.chunk(&position);
            }
        }
        // Chunk grid positions the region touches, per dimension.
        let ranges: Vec<(usize, usize)> =
            (0..rank).map(|d| (start[d] / self.chunks[d], (start[d] + size[d] - 1) / self.chunks[d])).collect();
        let mut position: Vec<usize> = ranges.iter().map(|r| r.0).collect();
        loop {
            let chunk = self.chunk(&position)?;
            self.copy_intersection(&chunk, &position, start, size, &mut out);
            // Next chunk position, odometer style.
            let mut d = rank;
            loop {
                if d == 0 {
                    return Ok(out);
                }
                d -= 1;
                if position[d] < ranges[d].1 {
                    position[d] += 1;
                    break;
                }
                position[d] = ranges[d].0;
            }
        }
    }

    /// Copies the part of `chunk` (at grid `position`) inside the region into `out`.
    fn copy_intersection(&self, chunk: &[u8], position: &[usize], start: &[usize], size: &[usize], out: &mut [u8]) {
        let origin: Vec<usize> = position.iter().zip(&self.chunks).map(|(p, c)| p * c).collect();
        let chunk_block = Block { origin: &origin, shape: &self.chunks };
        copy_overlap(chunk, chunk_block, out, Block { origin: start, shape: size }, self.dtype.size());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nemo/zarr")
    }

    fn values(array: &ZarrArray, bytes: &[u8]) -> Vec<f64> {
        match array.dtype {
            DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
            DType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
        }
    }

    fn flatten(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
            // As f32 (every fixture value is one): serde_json's default parser may be an
            // ulp off in f64.
            other => out.push(other.as_f64().unwrap() as f32 as f64),
        }
    }

    /// Arrays the zarr library wrote (edge chunks, Blosc, zlib, raw, `/` keys, a missing
    /// chunk with a fill value) read back whole and layer by layer.
    #[test]
    fn reads_what_the_zarr_library_wrote() {
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap();
        let store = Store::open(&fixtures()).unwrap();
        for name in ["f32_edges", "f16_layers_fill", "f32_raw_slashes"] {
            let array = ZarrArray::open(&store, name).unwrap();
            let mut want = Vec::new();
            flatten(&expected[name], &mut want);
            assert_eq!(values(&array, &array.read().unwrap()), want, "{name}");
            let layer = want.len() / array.shape[0];
            for i in 0..array.shape[0] {
                let got = values(&array, &array.read_first_axis(i).unwrap());
                assert_eq!(got, want[i * layer..(i + 1) * layer], "{name} layer {i}");
            }
        }
    }

    #[test]
    fn missing_and_truncated_chunks_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let source = fixtures().join("f32_edges");
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let chunk = dir.path().join("1.0.1");
        let bytes = std::fs::read(&chunk).unwrap();
        std::fs::write(&chunk, &bytes[..bytes.len() - 3]).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let array = ZarrArray::open(&store, "").unwrap();
        let e = format!("{:#}", array.read().unwrap_err());
        assert!(e.contains("1.0.1") && e.contains("truncated"), "{e}");
        assert!(array.read_first_axis(0).is_ok(), "layer 0 does not touch the bad chunk");
        std::fs::remove_file(&chunk).unwrap();
        // Layer 2 is in the second row of chunks (two layers per chunk).
        let e = format!("{:#}", array.read_first_axis(2).unwrap_err());
        assert!(e.contains("1.0.1 is missing"), "{e}");
        assert!(ZarrArray::open(&store, "nowhere").err().unwrap().to_string().contains("nowhere/.zarray"));
    }

    /// A copy of fixture array `name` in a temporary folder, its `.zarray` edited by `edit`.
    fn edited(name: &str, edit: impl Fn(&mut Value)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let source = fixtures().join(name);
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
        let meta_path = dir.path().join(".zarray");
        let mut meta: Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        edit(&mut meta);
        std::fs::write(&meta_path, meta.to_string()).unwrap();
        dir
    }

    fn read_error(dir: &Path) -> String {
        let store = Store::open(dir).unwrap();
        match ZarrArray::open(&store, "") {
            Ok(array) => format!("{:#}", array.read().unwrap_err()),
            Err(e) => format!("{e:#}"),
        }
    }

    /// Sizes a damaged or hostile `.zarray` makes up, and chunk files that hold more than
    /// their array's chunks can: errors that say so, without reading or allocating what
    /// they claim (each of these aborted, panicked, hung or took gigabytes before).
    #[test]
    fn made_up_sizes_and_oversized_chunks_are_errors() {
        // 70 TB of fill value: refused by the allocator, not an abort.
        let dir = edited("f16_layers_fill", |m| m["shape"] = serde_json::json!([1u64 << 40, 6]));
        assert!(read_error(dir.path()).contains("cannot allocate"), "{}", read_error(dir.path()));
        let dir = edited("f16_layers_fill", |m| m["chunks"] = serde_json::json!([1u64 << 32, 1u64 << 32]));
        assert!(read_error(dir.path()).contains("`chunks` [4294967296, 4294967296] has more elements"));
        let dir = edited("f16_layers_fill", |m| m["shape"] = serde_json::json!([1u64 << 62, 1u64 << 62]));
        assert!(read_error(dir.path()).contains("has more elements than any array"));

        // A zlib chunk of 2 MB of zeros (2 KB stored) where the array's chunks hold 12 bytes.
        let dir = edited("f16_layers_fill", |_| {});
        let mut bomb = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut bomb, &vec![0u8; 2 << 20]).unwrap();
        std::fs::write(dir.path().join("0.0"), bomb.finish().unwrap()).unwrap();
        let e = read_error(dir.path());
        assert!(e.contains("0.0 holds more than the 12 bytes expected"), "{e}");

        // A raw chunk file of 3 GB (sparse): refused from its size, not read.
        let dir = edited("f32_raw_slashes", |_| {});
        let raw = fixtures().join("f32_raw_slashes");
        for row in ["0", "1"] {
            std::fs::create_dir(dir.path().join(row)).unwrap();
            for column in ["0", "1"] {
                let (from, to) = (raw.join(row).join(column), dir.path().join(row).join(column));
                std::fs::copy(from, to).unwrap();
            }
        }
        std::fs::File::options().write(true).open(dir.path().join("0/1")).unwrap().set_len(3 << 30).unwrap();
        let e = read_error(dir.path());
        assert!(e.contains("0/1 is 3221225472 bytes, more than the 8 expected"), "{e}");

        // A FIFO where a chunk belongs: refused, not waited on.
        std::fs::remove_file(dir.path().join("0/1")).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("0/1").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = read_error(dir.path());
        assert!(e.contains("is not a regular file"), "{e}");
    }
}
