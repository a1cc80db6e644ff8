//! Legacy NeMo checkpoints: `model_weights.ckpt` files written by `torch.save(state_dict)`,
//! one at the root (TP = 1), one per tensor-parallel rank (`mp_rank_NN/`), or one per rank
//! and pipeline stage (`tp_rank_NN_pp_rank_NNN/`), merged here into the global tensors
//! (FORMAT.md sections 7 and 9).
//!
//! Each `.ckpt` is a torch.save file ([`super::torch_save`]); tensor bytes are read from
//! the store per request, never the whole file.

use super::import::{Tensors, strip_model_prefix};
use super::pickle::{TensorRef, Value};
use super::store::Store;
use super::torch_save::{TorchSave, dtype_of, shape_of};
use crate::model::weights::DType;
use anyhow::{Result, anyhow, bail};
use std::collections::BTreeMap;

/// One tensor-parallel rank: its file, or one file per pipeline stage, and its tensors by
/// normalized key, layers numbered globally.
struct Rank {
    files: Vec<TorchSave>,
    /// Key -> (index in `files`, tensor).
    tensors: BTreeMap<String, (usize, TensorRef)>,
}

/// `decoder.layers.N.rest` as (N, rest).
fn layer_key(key: &str) -> Option<(usize, &str)> {
    let (layer, rest) = key.strip_prefix("decoder.layers.")?.split_once('.')?;
    Some((layer.parse().ok()?, rest))
}

impl Rank {
    /// The rank in `members`: one file per pipeline stage, in stage order. A stage numbers
    /// its layers from 0 (Megatron-core's state dict keys are local to the stage); here
    /// they follow the layers of the stages before it.
    fn open(store: &Store, members: &[String]) -> Result<Self> {
        let mut files = Vec::with_capacity(members.len());
        let mut tensors = BTreeMap::new();
        let mut first_layer = 0;
        for (stage, member) in members.iter().enumerate() {
            let file = TorchSave::open(store, member)?;
            let Value::Dict(items) = file.load(store)? else {
                bail!("{}: the pickle holds no state dict", file.describe())
            };
            let mut layers = 0;
            let before = tensors.len();
            for (key, value) in items {
                // Everything else (`_extra_state`: BytesIO, None or bytes) is skipped.
                let (Value::Str(key), Value::Tensor(tensor)) = (key, value) else { continue };
                let mut key = strip_model_prefix(&key);
                if let Some((layer, rest)) = layer_key(&key) {
                    layers = layers.max(layer.saturating_add(1));
                    key = format!("decoder.layers.{}.{rest}", first_layer + layer);
                }
                if tensors.insert(key.clone(), (stage, tensor)).is_some() {
                    bail!("{}: tensor `{key}` is also in an earlier pipeline stage", file.describe());
                }
            }
            if tensors.len() == before {
                bail!("{} holds no tensors", file.describe());
            }
            first_layer += layers;
            files.push(file);
        }
        Ok(Rank { files, tensors })
    }

    fn tensor(&self, key: &str) -> Result<&(usize, TensorRef)> {
        self.tensors.get(key).ok_or_else(|| {
            let files: Vec<&str> = self.files.iter().map(|f| f.describe()).collect();
            anyhow!("{} has no tensor `{key}`", files.join(" nor "))
        })
    }

    /// The tensor's values, C order.
    fn read(&self, store: &Store, key: &str) -> Result<(Vec<u8>, Vec<usize>)> {
        let (stage, tensor) = self.tensor(key)?;
        Ok((self.files[*stage].tensor_bytes(store, tensor, key)?, shape_of(tensor)?))
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
    /// The legacy checkpoint in `store`, if it is one: `model_weights.ckpt`,
    /// `mp_rank_NN/model_weights.ckpt` (tensor parallel) or
    /// `tp_rank_NN_pp_rank_NNN/model_weights.ckpt` (pipeline parallel too).
    /// `tensor_parallel`: model_config.yaml's size, checked against the folders.
    /// `gated`: fc1 is [gate; up] (SwiGLU).
    pub fn open(store: &'s Store, tensor_parallel: Option<usize>, gated: bool) -> Result<Option<Self>> {
        let names = store.list("")?;
        let what = store.describe("");
        // Folders by tensor-parallel rank, then pipeline stage.
        let mut grid: BTreeMap<usize, BTreeMap<usize, String>> = BTreeMap::new();
        if store.exists("model_weights.ckpt") {
            grid.entry(0).or_default().insert(0, "model_weights.ckpt".to_owned());
        } else {
            for name in &names {
                let rank = if let Some(tp) = name.strip_prefix("mp_rank_") {
                    tp.parse().ok().map(|tp| (tp, 0))
                } else {
                    let (tp, pp) = name.strip_prefix("tp_rank_").and_then(|rest| rest.split_once("_pp_rank_")).unzip();
                    tp.and_then(|tp| tp.parse().ok()).zip(pp.and_then(|pp| pp.parse().ok()))
                };
                if let Some((tp, pp)) = rank {
                    let member = format!("{name}/model_weights.ckpt");
                    if grid.entry(tp).or_default().insert(pp, member).is_some() {
                        bail!("{what}: two folders hold tensor-parallel rank {tp}, pipeline stage {pp}");
                    }
                }
            }
        }
        if grid.is_empty() {
            return Ok(None);
        }
        let stages = grid.values().next().map_or(0, BTreeMap::len);
        let numbered = |keys: &mut dyn Iterator<Item = &usize>, n: usize| keys.copied().eq(0..n);
        if !numbered(&mut grid.keys(), grid.len()) {
            bail!("{what}: the tensor-parallel ranks are not numbered 0..{}", grid.len() - 1);
        }
        if let Some((tp, found)) = grid.iter().find(|(_, s)| !numbered(&mut s.keys(), stages)) {
            bail!(
                "{what}: the pipeline stages of tensor-parallel rank {tp} are {:?}; every rank needs stages 0 to {}",
                found.keys().collect::<Vec<_>>(),
                stages - 1
            );
        }
        if let Some(expected) = tensor_parallel.filter(|&n| n != grid.len()) {
            bail!(
                "{what}: model_config.yaml's tensor_model_parallel_size is {expected}, but the checkpoint has {} tensor-parallel rank files",
                grid.len()
            );
        }
        let ranks = grid
            .values()
            .map(|stages| Rank::open(store, &stages.values().cloned().collect::<Vec<_>>()))
            .collect::<Result<Vec<_>>>()?;
        let root = grid[&0][&0].clone();
        Ok(Some(LegacyCheckpoint { store, root, ranks, gated }))
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
        match (self.ranks.len(), self.ranks[0].files.len()) {
            (1, 1) => self.store.describe(&self.root),
            (tp, 1) => format!("{} ({tp} mp_rank_NN files)", self.store.describe("")),
            (tp, pp) => format!("{} ({tp} tensor-parallel ranks x {pp} pipeline stages)", self.store.describe("")),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.ranks[0].tensors.contains_key(key)
    }

    fn info(&self, key: &str) -> Result<(DType, Vec<usize>)> {
        let (_, first) = self.ranks[0].tensor(key)?;
        let dtype = dtype_of(first, key)?;
        let mut shape = shape_of(first)?;
        let merge = self.merge(key)?;
        for rank in &self.ranks[1..] {
            let (_, tensor) = rank.tensor(key)?;
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
        let one = LegacyCheckpoint::open(&one, Some(1), true).unwrap().unwrap();
        let two = LegacyCheckpoint::open(&two, Some(2), true).unwrap().unwrap();
        assert_eq!(two.ranks.len(), 2);
        let keys: Vec<&String> = one.ranks[0].tensors.keys().collect();
        assert_eq!(keys.len(), 17, "{keys:?}");
        assert!(keys.iter().all(|k| !k.starts_with("model.") && !k.contains("_extra_state")));
        for key in keys {
            assert_eq!(one.info(key).unwrap(), two.info(key).unwrap(), "{key}");
            assert_eq!(one.read(key).unwrap(), two.read(key).unwrap(), "{key}");
        }
        // Two pipeline stages of two ranks each: layer 1 is stage 1's layer 0.
        let four = fixture("llama-legacy-tp2-pp2");
        let four = LegacyCheckpoint::open(&four, Some(2), true).unwrap().unwrap();
        assert_eq!(four.ranks[1].files.len(), 2);
        assert_eq!(four.ranks[1].tensors.keys().collect::<Vec<_>>(), one.ranks[0].tensors.keys().collect::<Vec<_>>());
        for key in one.ranks[0].tensors.keys() {
            assert_eq!(one.read(key).unwrap(), four.read(key).unwrap(), "{key}");
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
                let ckpt = LegacyCheckpoint::open(&store, None, true)?.expect("a legacy checkpoint");
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
            if let Ok(Some(ckpt)) = LegacyCheckpoint::open(&store, None, true) {
                for key in ckpt.ranks[0].tensors.keys() {
                    let _ = ckpt.read(key);
                }
            }
        }
    }
}
