//! Legacy NeMo checkpoints: `model_weights.ckpt` files written by `torch.save(state_dict)`,
//! one at the root (TP = 1) or one per tensor-parallel rank (`mp_rank_NN/`), merged here
//! into the global tensors (FORMAT.md sections 7 and 9).
//!
//! A `.ckpt` is a zip (stored, sizes in the central directory) holding `data.pkl` (read
//! by [`super::pickle`]) and one `data/<key>` entry per storage; tensor bytes are read
//! from the store per request, never the whole file.

use super::import::Tensors;
use super::pickle::{self, TensorRef, Value};
use super::store::Store;
use crate::model::weights::DType;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The entries of a zip (torch's writer: stored, zip64 end records), located through its
/// central directory.
struct Zip {
    member: String,
    /// Name -> (local header offset, size).
    entries: BTreeMap<String, (u64, u64)>,
}

impl Zip {
    fn open(store: &Store, member: &str) -> Result<Self> {
        let what = store.describe(member);
        let size = store.size(member)?;
        let tail_len = size.min(22 + 65535 + 20);
        let tail = store.read_at(member, size - tail_len, tail_len as usize)?;
        let Some(eocd) = (0..tail.len().saturating_sub(21)).rev().find(|&i| le32(&tail, i) == 0x0605_4b50) else {
            bail!("{what} is not a zip file (torch.save's format): no end of central directory");
        };
        let (mut count, mut cd_size, mut cd_offset) =
            (u64::from(le16(&tail, eocd + 10)), u64::from(le32(&tail, eocd + 12)), u64::from(le32(&tail, eocd + 16)));
        // A zip64 locator right before the end record points at the zip64 end record.
        if eocd >= 20 && le32(&tail, eocd - 20) == 0x0706_4b50 {
            let at = le64(&tail, eocd - 20 + 8);
            let record = store.read_at(member, at, 56).with_context(|| format!("{what}: a damaged zip64 record"))?;
            if le32(&record, 0) != 0x0606_4b50 {
                bail!("{what}: a damaged zip64 end of central directory");
            }
            (count, cd_size, cd_offset) = (le64(&record, 32), le64(&record, 40), le64(&record, 48));
        }
        if cd_offset.checked_add(cd_size).is_none_or(|end| end > size) || count > cd_size / 46 + 1 {
            bail!("{what}: the zip's central directory lies outside the file");
        }
        let cd = store.read_at(member, cd_offset, cd_size as usize)?;
        let mut entries = BTreeMap::new();
        let mut pos = 0usize;
        for _ in 0..count {
            if pos + 46 > cd.len() || le32(&cd, pos) != 0x0201_4b50 {
                bail!("{what}: a damaged zip central directory");
            }
            let method = le16(&cd, pos + 10);
            let (mut csize, mut stored, mut local) =
                (u64::from(le32(&cd, pos + 20)), u64::from(le32(&cd, pos + 24)), u64::from(le32(&cd, pos + 42)));
            let (n, e, c) = (le16(&cd, pos + 28) as usize, le16(&cd, pos + 30) as usize, le16(&cd, pos + 32) as usize);
            if pos + 46 + n + e + c > cd.len() {
                bail!("{what}: a damaged zip central directory");
            }
            let name = String::from_utf8_lossy(&cd[pos + 46..pos + 46 + n]).into_owned();
            // The zip64 extra field holds, in order, those of the three that are 0xffffffff.
            let mut extra = &cd[pos + 46 + n..pos + 46 + n + e];
            while extra.len() >= 4 {
                let (id, len) = (le16(extra, 0), le16(extra, 2) as usize);
                let Some(body) = extra.get(4..4 + len) else { break };
                if id == 1 {
                    let mut fields = body.chunks_exact(8).map(|f| le64(f, 0));
                    for field in [&mut stored, &mut csize, &mut local] {
                        if *field == 0xffff_ffff {
                            *field = fields.next().ok_or_else(|| anyhow!("{what}: a damaged zip64 extra field"))?;
                        }
                    }
                }
                extra = &extra[4 + len..];
            }
            if method != 0 || csize != stored {
                bail!("{what}: entry {name} is compressed (method {method}); torch.save stores entries uncompressed");
            }
            entries.insert(name, (local, stored));
            pos += 46 + n + e + c;
        }
        Ok(Zip { member: member.to_owned(), entries })
    }

    /// The one top folder torch names after the file (`model_weights/`, `archive/`).
    fn top(&self) -> Result<String> {
        let pkl = self.entries.keys().find(|k| k.ends_with("/data.pkl") && k.matches('/').count() == 1);
        pkl.map(|k| k.trim_end_matches("data.pkl").to_owned())
            .ok_or_else(|| anyhow!("has no <folder>/data.pkl: not a torch.save file"))
    }

    /// `len` bytes of entry `name` from `offset`.
    fn read(&self, store: &Store, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let what = store.describe(&self.member);
        let &(local, size) = self.entries.get(name).ok_or_else(|| anyhow!("{what} has no entry {name}"))?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            bail!("{what}: entry {name} holds {size} bytes, {len} wanted from {offset}");
        }
        let header = store.read_at(&self.member, local, 30)?;
        if le32(&header, 0) != 0x0403_4b50 {
            bail!("{what}: a damaged local header for {name}");
        }
        let data = local + 30 + u64::from(le16(&header, 26)) + u64::from(le16(&header, 28));
        let len = usize::try_from(len)?;
        store.read_at(&self.member, data + offset, len)
    }
}

/// One rank's file: its zip and its tensors by normalized key.
struct Rank {
    zip: Zip,
    top: String,
    tensors: BTreeMap<String, TensorRef>,
}

fn dtype_of(tensor: &TensorRef, key: &str) -> Result<DType> {
    Ok(match tensor.storage.dtype.as_str() {
        "float32" => DType::F32,
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        other => bail!("tensor `{key}` is {other}; steerlm reads float32, bfloat16 and float16 weights"),
    })
}

fn shape_of(tensor: &TensorRef) -> Result<Vec<usize>> {
    tensor.shape.iter().map(|&d| usize::try_from(d).map_err(|_| anyhow!("a dimension of {d}"))).collect()
}

/// The Megatron-core key without `model.` (and `module.`, Float16Module's).
fn normalize(key: &str) -> String {
    let key = key.strip_prefix("model.").unwrap_or(key);
    key.strip_prefix("module.").unwrap_or(key).to_owned()
}

impl Rank {
    fn open(store: &Store, member: &str) -> Result<Self> {
        let what = store.describe(member);
        let zip = Zip::open(store, member)?;
        let top = zip.top().with_context(|| what.clone())?;
        let pkl_name = format!("{top}data.pkl");
        let size = zip.entries[&pkl_name].1;
        let pkl = zip.read(store, &pkl_name, 0, size)?;
        let value = pickle::load(&pkl).with_context(|| format!("reading {what}:{pkl_name}"))?;
        let Value::Dict(items) = value else { bail!("{what}: the pickle holds no state dict") };
        let mut tensors = BTreeMap::new();
        for (key, value) in items {
            // Everything else (`_extra_state`: BytesIO, None or bytes) is skipped.
            if let (Value::Str(key), Value::Tensor(tensor)) = (key, value) {
                tensors.insert(normalize(&key), tensor);
            }
        }
        if tensors.is_empty() {
            bail!("{what} holds no tensors");
        }
        Ok(Rank { zip, top, tensors })
    }

    fn tensor(&self, store: &Store, key: &str) -> Result<&TensorRef> {
        self.tensors.get(key).ok_or_else(|| anyhow!("{} has no tensor `{key}`", store.describe(&self.zip.member)))
    }

    /// The tensor's values, C order.
    fn read(&self, store: &Store, key: &str) -> Result<(Vec<u8>, Vec<usize>)> {
        let tensor = self.tensor(store, key)?;
        let esize = dtype_of(tensor, key)?.size() as u64;
        let shape = shape_of(tensor)?;
        let mut expected = 1u64;
        for (&dim, &stride) in tensor.shape.iter().zip(&tensor.stride).rev() {
            if dim != 1 && stride != expected {
                bail!(
                    "tensor `{key}` is stored with strides {:?} for shape {:?} (not contiguous), which steerlm does not read",
                    tensor.stride,
                    tensor.shape
                );
            }
            expected = expected.checked_mul(dim).ok_or_else(|| anyhow!("tensor `{key}`: a shape too large"))?;
        }
        if tensor.offset.checked_add(expected).is_none_or(|end| end > tensor.storage.numel) {
            bail!("tensor `{key}` reaches past its storage ({} elements)", tensor.storage.numel);
        }
        let name = format!("{}data/{}", self.top, tensor.storage.key);
        let too_large = || anyhow!("tensor `{key}`: a size too large");
        let (start, len) = (
            tensor.offset.checked_mul(esize).ok_or_else(too_large)?,
            expected.checked_mul(esize).ok_or_else(too_large)?,
        );
        let bytes = self.zip.read(store, &name, start, len).with_context(|| format!("reading tensor `{key}`"))?;
        Ok((bytes, shape))
    }
}

/// How one tensor's per-rank shards make the global one (FORMAT.md section 9).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Merge {
    Replicated,
    Rows,
    Columns,
    /// Gated fc1: rank r holds [gate_r; up_r].
    GatedRows,
}

pub struct LegacyCheckpoint<'s> {
    store: &'s Store,
    root: String,
    ranks: Vec<Rank>,
    gated: bool,
}

impl<'s> LegacyCheckpoint<'s> {
    /// The legacy checkpoint in `store`, if it is one: `model_weights.ckpt` or
    /// `mp_rank_NN/model_weights.ckpt`. `gated`: fc1 is [gate; up] (SwiGLU).
    pub fn open(store: &'s Store, gated: bool) -> Result<Option<Self>> {
        let names = store.list("")?;
        if let Some(pp) = names.iter().find(|n| n.starts_with("tp_rank_") && n.contains("_pp_rank_")) {
            bail!(
                "{} is a legacy NeMo checkpoint with pipeline parallelism ({pp}/), which steerlm does not read: convert it with NeMo to pipeline-parallel size 1 or to a distributed checkpoint",
                store.describe("")
            );
        }
        let mut members = Vec::new();
        if store.exists("model_weights.ckpt") {
            members.push("model_weights.ckpt".to_owned());
        } else {
            let mut ranks: Vec<usize> = names.iter().filter_map(|n| n.strip_prefix("mp_rank_")?.parse().ok()).collect();
            ranks.sort_unstable();
            ranks.dedup();
            if ranks.is_empty() {
                return Ok(None);
            }
            if ranks.iter().enumerate().any(|(i, &r)| i != r) {
                bail!("{}: the mp_rank_NN folders are not numbered 00..{:02}", store.describe(""), ranks.len() - 1);
            }
            members.extend(ranks.iter().map(|r| format!("mp_rank_{r:02}/model_weights.ckpt")));
        }
        let ranks = members.iter().map(|m| Rank::open(store, m)).collect::<Result<Vec<_>>>()?;
        Ok(Some(LegacyCheckpoint { store, root: members[0].clone(), ranks, gated }))
    }

    fn merge(&self, key: &str) -> Result<Merge> {
        if self.ranks.len() == 1 {
            return Ok(Merge::Replicated);
        }
        let last = key.rsplit('.').next().unwrap_or(key);
        let module = key.strip_suffix(&format!(".{last}")).unwrap_or("");
        let module_name = module.rsplit('.').next().unwrap_or(module);
        Ok(match (module_name, last) {
            (_, "layer_norm_weight" | "layer_norm_bias") => Merge::Replicated,
            ("input_layernorm" | "pre_mlp_layernorm" | "final_layernorm", _) => Merge::Replicated,
            ("word_embeddings" | "output_layer", "weight") => Merge::Rows,
            ("linear_qkv", "weight" | "bias") => Merge::Rows,
            ("linear_fc1", "weight" | "bias") => {
                if self.gated {
                    Merge::GatedRows
                } else {
                    Merge::Rows
                }
            }
            ("linear_proj" | "linear_fc2" | "rm_head", "weight") => Merge::Columns,
            ("linear_proj" | "linear_fc2" | "rm_head", "bias") => Merge::Replicated,
            _ => bail!(
                "tensor `{key}`: steerlm does not know how to merge it across the {} tensor-parallel ranks",
                self.ranks.len()
            ),
        })
    }
}

impl Tensors for LegacyCheckpoint<'_> {
    fn describe(&self) -> String {
        if self.ranks.len() == 1 {
            self.store.describe(&self.root)
        } else {
            format!("{} ({} mp_rank_NN files)", self.store.describe(""), self.ranks.len())
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.ranks[0].tensors.contains_key(key)
    }

    fn info(&self, key: &str) -> Result<(DType, Vec<usize>)> {
        let first = self.ranks[0].tensor(self.store, key)?;
        let dtype = dtype_of(first, key)?;
        let mut shape = shape_of(first)?;
        let merge = self.merge(key)?;
        for rank in &self.ranks[1..] {
            let tensor = rank.tensor(self.store, key)?;
            let other = shape_of(tensor)?;
            let axis = match merge {
                Merge::Replicated => None,
                Merge::Rows | Merge::GatedRows => Some(0),
                Merge::Columns => Some(1),
            };
            let same_elsewhere = other.len() == shape.len()
                && other.iter().zip(&shape).enumerate().all(|(i, (a, b))| Some(i) == axis || a == b);
            if dtype_of(tensor, key)? != dtype || !same_elsewhere {
                bail!(
                    "tensor `{key}` is {:?} {other:?} on one rank and {dtype:?} {shape:?} on rank 0",
                    dtype_of(tensor, key)?
                );
            }
            if let Some(axis) = axis {
                let Some(dim) = shape.get_mut(axis) else { bail!("tensor `{key}` has no axis {axis} to merge on") };
                *dim += other[axis];
            }
        }
        Ok((dtype, shape))
    }

    fn read(&self, key: &str) -> Result<Vec<u8>> {
        let merge = self.merge(key)?;
        let (dtype, _) = self.info(key)?;
        if merge == Merge::Replicated {
            return Ok(self.ranks[0].read(self.store, key)?.0);
        }
        let shards = self.ranks.iter().map(|r| r.read(self.store, key)).collect::<Result<Vec<_>>>()?;
        let esize = dtype.size();
        let total: usize = shards.iter().map(|(b, _)| b.len()).sum();
        let mut out = Vec::with_capacity(total);
        match merge {
            Merge::Replicated => unreachable!("returned above"),
            Merge::Rows => shards.iter().for_each(|(b, _)| out.extend_from_slice(b)),
            Merge::GatedRows => {
                for half in 0..2 {
                    for (bytes, shape) in &shards {
                        if shape[0] % 2 != 0 {
                            bail!("tensor `{key}` has {} rows on a rank: not [gate; up]", shape[0]);
                        }
                        let mid = bytes.len() / 2;
                        out.extend_from_slice(if half == 0 { &bytes[..mid] } else { &bytes[mid..] });
                    }
                }
            }
            Merge::Columns => {
                let rows = shards[0].1[0];
                for row in 0..rows {
                    for (bytes, shape) in &shards {
                        let row_bytes = shape[1..].iter().product::<usize>() * esize;
                        out.extend_from_slice(&bytes[row * row_bytes..(row + 1) * row_bytes]);
                    }
                }
            }
        }
        Ok(out)
    }

    fn read_first_axis(&self, key: &str, index: usize) -> Result<Vec<u8>> {
        let (_, shape) = self.info(key)?;
        let Some(&first) = shape.first().filter(|&&n| index < n) else {
            bail!("tensor `{key}` has shape {shape:?}: no index {index} on its first axis");
        };
        let bytes = self.read(key)?;
        let step = bytes.len() / first;
        Ok(bytes[index * step..(index + 1) * step].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> Store {
        Store::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nemo").join(name)).unwrap()
    }

    #[test]
    fn tensor_parallel_ranks_merge_into_the_single_rank_checkpoint() {
        let (one, two) = (fixture("llama-legacy"), fixture("llama-legacy-tp2"));
        let one = LegacyCheckpoint::open(&one, true).unwrap().unwrap();
        let two = LegacyCheckpoint::open(&two, true).unwrap().unwrap();
        assert_eq!(two.ranks.len(), 2);
        let keys: Vec<&String> = one.ranks[0].tensors.keys().collect();
        assert_eq!(keys.len(), 17, "{keys:?}");
        assert!(keys.iter().all(|k| !k.starts_with("model.") && !k.contains("_extra_state")));
        for key in keys {
            assert_eq!(one.info(key).unwrap(), two.info(key).unwrap(), "{key}");
            assert_eq!(one.read(key).unwrap(), two.read(key).unwrap(), "{key}");
        }
        let head = one.read("rm_head.weight").unwrap();
        assert_eq!(two.read_first_axis("rm_head.weight", 8).unwrap(), head[8 * 128..]);
        assert!(two.read_first_axis("rm_head.weight", 9).is_err());
    }

    #[test]
    fn a_damaged_file_is_an_error() {
        let bytes = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/nemo/llama-legacy-tp2/mp_rank_01/model_weights.ckpt"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model_weights.ckpt");
        // Cut short at many places, and bytes flipped: errors, never a panic.
        for cut in (0..bytes.len()).step_by(bytes.len() / 97).chain([bytes.len() - 1, bytes.len() - 30]) {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let store = Store::open(dir.path()).unwrap();
            let read_all = || -> Result<()> {
                let ckpt = LegacyCheckpoint::open(&store, true)?.expect("a legacy checkpoint");
                for key in ckpt.ranks[0].tensors.keys() {
                    ckpt.read(key)?;
                }
                Ok(())
            };
            assert!(read_all().is_err(), "cut at {cut}");
        }
        for at in (0..bytes.len()).step_by(bytes.len() / 200) {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0xff;
            std::fs::write(&path, &flipped).unwrap();
            let store = Store::open(dir.path()).unwrap();
            if let Ok(Some(ckpt)) = LegacyCheckpoint::open(&store, true) {
                for key in ckpt.ranks[0].tensors.keys() {
                    let _ = ckpt.read(key);
                }
            }
        }
    }
}
