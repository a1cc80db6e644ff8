//! Megatron-core distributed checkpoints with the `torch_dist` strategy (FORMAT.md section
//! 5): PyTorch distributed checkpointing's `.metadata` (a pickle of
//! `torch.distributed.checkpoint.metadata.Metadata`) lists each tensor's global shape and
//! the chunks it was saved in; each chunk is a byte range of a `__<rank>_<n>.distcp` file
//! holding a complete torch.save zip of that chunk ([`super::torch_save`]).
//!
//! A region (a whole tensor, or one layer of a stacked one) is assembled from the chunks
//! that overlap it, each read on its own: memory stays bounded by the tensor.

use super::import::{Tensors, strip_model_prefix};
use super::pickle::{self, Value};
use super::region::{Block, copy_overlap};
use super::store::{METADATA_LIMIT, Store};
use super::torch_save::{TorchSave, dtype_of, shape_of};
use crate::model::weights::DType;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::{BTreeMap, BTreeSet};

/// One stored chunk of a tensor and where its bytes are.
#[derive(Debug)]
struct Chunk {
    offsets: Vec<usize>,
    sizes: Vec<usize>,
    /// A `.distcp` file in the checkpoint folder.
    file: String,
    offset: u64,
    length: u64,
}

#[derive(Debug)]
struct DistTensor {
    /// The key as stored (with its `model.` prefix), for errors.
    fqn: String,
    dtype: DType,
    shape: Vec<usize>,
    chunks: Vec<Chunk>,
}

pub struct TorchDistCheckpoint<'s> {
    store: &'s Store,
    folder: String,
    /// By key without `model.`.
    tensors: BTreeMap<String, DistTensor>,
}

fn ints(value: Option<&Value>, what: &str) -> Result<Vec<usize>> {
    let items = match value {
        Some(Value::Tuple(items) | Value::List(items)) => items,
        _ => bail!("{what} is not a list of sizes"),
    };
    items
        .iter()
        .map(|v| match v {
            Value::Int(i) => usize::try_from(*i).map_err(|_| anyhow!("{what} holds {i}")),
            _ => bail!("{what} is not a list of sizes"),
        })
        .collect()
}

fn int(value: Option<&Value>, what: &str) -> Result<u64> {
    match value {
        Some(Value::Int(i)) => u64::try_from(*i).map_err(|_| anyhow!("{what} is {i}")),
        _ => bail!("{what} is not an integer"),
    }
}

fn string<'v>(value: Option<&'v Value>, what: &str) -> Result<&'v str> {
    match value {
        Some(Value::Str(s)) => Ok(s),
        _ => bail!("{what} is not a string"),
    }
}

fn entries<'v>(value: Option<&'v Value>, what: &str) -> Result<&'v [(Value, Value)]> {
    match value {
        Some(Value::Dict(items)) => Ok(items),
        _ => bail!("the metadata has no `{what}` dict"),
    }
}

/// The dtype in a `TensorProperties`: the first element of its state tuple (torch >= 2.4
/// pickles a tuple), or its `dtype` field (older torch, a dict).
fn properties_dtype(properties: Option<&Value>, key: &str) -> Result<DType> {
    let dtype = match properties {
        Some(Value::Object { state, .. }) => match state.as_ref() {
            Value::Tuple(fields) => fields.first(),
            dict @ Value::Dict(_) => dict.field("dtype"),
            _ => None,
        },
        _ => None,
    };
    match dtype {
        Some(Value::Global(name)) => match name.as_str() {
            "torch.float32" => Ok(DType::F32),
            "torch.bfloat16" => Ok(DType::BF16),
            "torch.float16" => Ok(DType::F16),
            other => bail!("tensor `{key}` is {other}; steerlm reads float32, bfloat16 and float16 weights"),
        },
        _ => bail!("tensor `{key}` has no dtype in its properties"),
    }
}

/// Whether `chunks` tile `shape` exactly: each chunk must be one cell of the grid that
/// all chunk boundaries cut, no two the same cell, every cell taken. Megatron-core's
/// chunks (layers times tensor-parallel shards) always form such a grid; checking it is
/// what makes a tensor with a gap or an overlap an error rather than zeros or a guess.
fn check_tiling(shape: &[usize], chunks: &[Chunk]) -> Result<()> {
    let rank = shape.len();
    let mut cuts: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); rank];
    for chunk in chunks {
        if chunk.offsets.len() != rank || chunk.sizes.len() != rank {
            bail!("a chunk at {:?} has not the tensor's {rank} dimensions", chunk.offsets);
        }
        for d in 0..rank {
            let end = chunk.offsets[d].checked_add(chunk.sizes[d]).filter(|&end| end <= shape[d]);
            if end.is_none() || chunk.sizes[d] == 0 {
                bail!("a chunk at {:?} of size {:?} lies outside the shape {shape:?}", chunk.offsets, chunk.sizes);
            }
            cuts[d].insert(chunk.offsets[d]);
        }
    }
    let cuts: Vec<Vec<usize>> = cuts.into_iter().map(|c| c.into_iter().collect()).collect();
    let mut cells = BTreeSet::new();
    for chunk in chunks {
        let mut cell = Vec::with_capacity(rank);
        for d in 0..rank {
            let index = cuts[d].binary_search(&chunk.offsets[d]).expect("every offset is a cut");
            // The chunk must end where the next cut (or the axis) does.
            let next = cuts[d].get(index + 1).copied().unwrap_or(shape[d]);
            if chunk.offsets[d] + chunk.sizes[d] != next {
                bail!("the chunks overlap or leave gaps (one at {:?} of size {:?})", chunk.offsets, chunk.sizes);
            }
            cell.push(index);
        }
        if !cells.insert(cell) {
            bail!("two chunks start at {:?}", chunk.offsets);
        }
    }
    let grid = cuts.iter().try_fold(1usize, |n, c| n.checked_mul(c.len()));
    // A zero-sized axis has no chunks and no cuts; nothing to tile then.
    let empty = shape.contains(&0);
    if !empty && grid != Some(cells.len()) || empty && !chunks.is_empty() {
        bail!("the chunks leave gaps: {} chunks for a grid of {:?} cells", chunks.len(), grid);
    }
    if !empty && cuts.iter().any(|c| c.first() != Some(&0)) {
        bail!("the chunks leave a gap at the start of an axis");
    }
    Ok(())
}

impl<'s> TorchDistCheckpoint<'s> {
    /// The checkpoint in `folder` (its `.metadata` and `.distcp` files).
    pub fn open(store: &'s Store, folder: &str) -> Result<Self> {
        let member = format!("{folder}/.metadata");
        let what = store.describe(&member);
        let metadata = pickle::load(&store.read(&member, METADATA_LIMIT)?)
            .with_context(|| format!("reading {what} (a pickled Metadata)"))?;
        Self::from_metadata(store, folder, &metadata).with_context(|| format!("in {what}"))
    }

    fn from_metadata(store: &'s Store, folder: &str, metadata: &Value) -> Result<Self> {
        if metadata.class() != Some("torch.distributed.checkpoint.metadata.Metadata") {
            bail!("the pickle holds no torch.distributed.checkpoint Metadata");
        }
        // (fqn, chunk offsets) -> (file, offset, length). The `index` field is only a hint.
        let mut locations: BTreeMap<(String, Vec<usize>), (String, u64, u64)> = BTreeMap::new();
        for (index, info) in entries(metadata.field("storage_data"), "storage_data")? {
            let Ok(fqn) = string(index.field("fqn"), "fqn") else { continue };
            // Bytes items (`_extra_state`) have no offset.
            let Ok(offsets) = ints(index.field("offset"), "offset") else { continue };
            let file = string(info.field("relative_path"), "a storage's relative_path")?;
            // Only a plain file name inside the folder: never a path out of it.
            if file.is_empty() || file.contains('/') || file.contains('\\') || file.starts_with('.') {
                bail!("tensor `{fqn}` is stored in {file:?}, which is not a file of the checkpoint folder");
            }
            let (offset, length) =
                (int(info.field("offset"), "a storage offset")?, int(info.field("length"), "a storage length")?);
            locations.insert((fqn.to_owned(), offsets), (file.to_owned(), offset, length));
        }
        let mut tensors = BTreeMap::new();
        for (key, meta) in entries(metadata.field("state_dict_metadata"), "state_dict_metadata")? {
            let Value::Str(fqn) = key else { bail!("a state_dict_metadata key is not a string") };
            match meta.class() {
                Some("torch.distributed.checkpoint.metadata.TensorStorageMetadata") => {}
                // `_extra_state` objects: nothing steerlm needs.
                Some("torch.distributed.checkpoint.metadata.BytesStorageMetadata") => continue,
                _ => bail!("`{fqn}` is neither a tensor nor a bytes item"),
            }
            let tensor = (|| -> Result<DistTensor> {
                let dtype = properties_dtype(meta.field("properties"), fqn)?;
                let shape = ints(meta.field("size"), "its size")?;
                let Some(Value::List(listed)) = meta.field("chunks") else { bail!("it lists no chunks") };
                let mut chunks = Vec::with_capacity(listed.len());
                for chunk in listed {
                    let offsets = ints(chunk.field("offsets"), "a chunk's offsets")?;
                    let sizes = ints(chunk.field("sizes"), "a chunk's sizes")?;
                    let Some((file, offset, length)) = locations.get(&(fqn.clone(), offsets.clone())).cloned() else {
                        bail!("its chunk at {offsets:?} is stored nowhere (no storage_data entry)");
                    };
                    chunks.push(Chunk { offsets, sizes, file, offset, length });
                }
                check_tiling(&shape, &chunks)?;
                Ok(DistTensor { fqn: fqn.clone(), dtype, shape, chunks })
            })()
            .with_context(|| format!("tensor `{fqn}`"))?;
            tensors.insert(strip_model_prefix(fqn), tensor);
        }
        if tensors.is_empty() {
            bail!("the metadata lists no tensors");
        }
        Ok(TorchDistCheckpoint { store, folder: folder.to_owned(), tensors })
    }

    fn tensor(&self, key: &str) -> Result<&DistTensor> {
        self.tensors.get(key).ok_or_else(|| anyhow!("{} has no tensor `{key}`", self.describe()))
    }

    /// One chunk's values, C order, checked against what the metadata says of it.
    fn read_chunk(&self, tensor: &DistTensor, chunk: &Chunk) -> Result<Vec<u8>> {
        let member = format!("{}/{}", self.folder, chunk.file);
        let what = format!(
            "{} bytes {}..+{} (tensor `{}`, chunk at {:?})",
            self.store.describe(&member),
            chunk.offset,
            chunk.length,
            tensor.fqn,
            chunk.offsets
        );
        let size = self.store.size(&member)?;
        if chunk.offset.checked_add(chunk.length).is_none_or(|end| end > size) {
            bail!("{what}: lie past the file's end ({size} bytes): truncated?");
        }
        let file = TorchSave::open_range(self.store, &member, chunk.offset, chunk.length, what.clone())?;
        let Value::Tensor(stored) = file.load(self.store)? else { bail!("{what} holds no tensor") };
        let (dtype, shape) = (dtype_of(&stored, &tensor.fqn)?, shape_of(&stored)?);
        if dtype != tensor.dtype || shape != chunk.sizes {
            bail!("{what} holds a {dtype:?} {shape:?} tensor; the metadata says {:?} {:?}", tensor.dtype, chunk.sizes);
        }
        file.tensor_bytes(self.store, &stored, &tensor.fqn)
    }

    /// The hyper-rectangle `start .. start + size` of `key`, from the chunks it overlaps.
    fn read_region(&self, key: &str, start: &[usize], size: &[usize]) -> Result<Vec<u8>> {
        let tensor = self.tensor(key)?;
        let esize = tensor.dtype.size();
        let elements = size.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let bytes =
            elements.and_then(|n| n.checked_mul(esize)).ok_or_else(|| anyhow!("tensor `{key}` is too large"))?;
        // A region that is exactly one chunk (a layer, a whole tensor) is that chunk's bytes:
        // no second buffer, no copy.
        if let Some(chunk) = tensor.chunks.iter().find(|c| c.offsets == start && c.sizes == size) {
            return self.read_chunk(tensor, chunk);
        }
        let mut out = vec![0u8; bytes];
        let region = Block { origin: start, shape: size };
        for chunk in &tensor.chunks {
            let overlaps = (0..size.len())
                .all(|d| chunk.offsets[d] < start[d] + size[d] && start[d] < chunk.offsets[d] + chunk.sizes[d]);
            if overlaps {
                let values = self.read_chunk(tensor, chunk)?;
                copy_overlap(&values, Block { origin: &chunk.offsets, shape: &chunk.sizes }, &mut out, region, esize);
            }
        }
        Ok(out)
    }
}

impl Tensors for TorchDistCheckpoint<'_> {
    fn describe(&self) -> String {
        self.store.describe(&self.folder)
    }

    fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    fn info(&self, key: &str) -> Result<(DType, Vec<usize>)> {
        let tensor = self.tensor(key)?;
        Ok((tensor.dtype, tensor.shape.clone()))
    }

    fn read(&self, key: &str) -> Result<Vec<u8>> {
        let shape = self.tensor(key)?.shape.clone();
        self.read_region(key, &vec![0; shape.len()], &shape)
    }

    fn read_first_axis(&self, key: &str, index: usize) -> Result<Vec<u8>> {
        let shape = &self.tensor(key)?.shape;
        if shape.first().is_none_or(|&n| index >= n) {
            bail!("tensor `{key}` has shape {shape:?}: no index {index} on its first axis");
        }
        let mut start = vec![0; shape.len()];
        let mut size = shape.clone();
        (start[0], size[0]) = (index, 1);
        self.read_region(key, &start, &size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemo::zarr::ZarrArray;
    use std::path::Path;

    fn fixture(name: &str) -> Store {
        Store::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nemo").join(name)).unwrap()
    }

    #[test]
    fn reads_the_same_tensors_as_the_zarr_checkpoint() {
        // Both fixtures hold the same weights, saved by megatron-core with each strategy.
        let (dist, zarr) = (fixture("llama-torch-dist"), fixture("llama-zarr"));
        let ckpt = TorchDistCheckpoint::open(&dist, "model_weights").unwrap();
        assert_eq!(ckpt.tensors.len(), 11, "{:?}", ckpt.tensors.keys());
        // Gated fc1: two chunks per layer, each a view into the layer's whole fc1 storage.
        assert_eq!(ckpt.tensors["decoder.layers.mlp.linear_fc1.weight"].chunks.len(), 4);
        for (key, tensor) in &ckpt.tensors {
            let array = ZarrArray::open(&zarr, &format!("model_weights/model.{key}")).unwrap();
            assert_eq!((tensor.dtype, &tensor.shape), (array.dtype, &array.shape), "{key}");
            assert_eq!(ckpt.read(key).unwrap(), array.read().unwrap(), "{key}");
            if tensor.shape.len() == 3 {
                assert_eq!(ckpt.read_first_axis(key, 1).unwrap(), array.read_first_axis(1).unwrap(), "{key}");
                assert!(ckpt.read_first_axis(key, 2).is_err());
            }
        }
    }

    /// A `Metadata` with one bf16 tensor `model.w` of shape [4] in one chunk, stored in
    /// `file` at bytes 0..100.
    fn metadata(file: &str, stored_offsets: &[i64]) -> Value {
        let object = |class: &str, fields: Vec<(&str, Value)>| Value::Object {
            class: format!("torch.distributed.checkpoint.{class}"),
            state: Box::new(Value::Dict(fields.into_iter().map(|(k, v)| (Value::Str(k.into()), v)).collect())),
        };
        let ints = |v: &[i64]| Value::Tuple(v.iter().map(|&i| Value::Int(i)).collect());
        let properties = Value::Object {
            class: "torch.distributed.checkpoint.metadata.TensorProperties".into(),
            state: Box::new(Value::Tuple(vec![Value::Global("torch.bfloat16".into())])),
        };
        let chunk = object("metadata.ChunkStorageMetadata", vec![("offsets", ints(&[0])), ("sizes", ints(&[4]))]);
        let tensor = object(
            "metadata.TensorStorageMetadata",
            vec![("properties", properties), ("size", ints(&[4])), ("chunks", Value::List(vec![chunk]))],
        );
        let index = object(
            "metadata.MetadataIndex",
            vec![("fqn", Value::Str("model.w".into())), ("offset", ints(stored_offsets))],
        );
        let info = object(
            "filesystem._StorageInfo",
            vec![("relative_path", Value::Str(file.into())), ("offset", Value::Int(0)), ("length", Value::Int(100))],
        );
        object(
            "metadata.Metadata",
            vec![
                ("state_dict_metadata", Value::Dict(vec![(Value::Str("model.w".into()), tensor)])),
                ("storage_data", Value::Dict(vec![(index, info)])),
            ],
        )
    }

    #[test]
    fn metadata_cannot_point_outside_the_folder() {
        let store = fixture("llama-torch-dist");
        let ckpt =
            TorchDistCheckpoint::from_metadata(&store, "model_weights", &metadata("__0_0.distcp", &[0])).unwrap();
        assert_eq!(ckpt.info("w").unwrap(), (DType::BF16, vec![4]));
        for file in ["../model_config.yaml", "/etc/passwd", ".metadata", "", "a\\b"] {
            let error =
                TorchDistCheckpoint::from_metadata(&store, "model_weights", &metadata(file, &[0])).err().unwrap();
            assert!(format!("{error:#}").contains("not a file of the checkpoint folder"), "{file}: {error:#}");
        }
        // A chunk no storage entry describes.
        let error =
            TorchDistCheckpoint::from_metadata(&store, "model_weights", &metadata("__0_0.distcp", &[1])).err().unwrap();
        assert!(format!("{error:#}").contains("stored nowhere"), "{error:#}");
    }

    fn chunk(offsets: &[usize], sizes: &[usize]) -> Chunk {
        Chunk { offsets: offsets.to_vec(), sizes: sizes.to_vec(), file: "__0_0.distcp".into(), offset: 0, length: 0 }
    }

    #[test]
    fn chunks_must_tile_the_tensor() {
        let halves = [chunk(&[0, 0], &[2, 4]), chunk(&[2, 0], &[2, 4])];
        check_tiling(&[4, 4], &halves).unwrap();
        let quarters =
            [chunk(&[0, 0], &[2, 2]), chunk(&[0, 2], &[2, 2]), chunk(&[2, 0], &[2, 2]), chunk(&[2, 2], &[2, 2])];
        check_tiling(&[4, 4], &quarters).unwrap();
        for (chunks, why) in [
            (vec![chunk(&[0, 0], &[2, 4])], "a gap"),
            (vec![chunk(&[0, 0], &[3, 4]), chunk(&[2, 0], &[2, 4])], "an overlap"),
            (vec![chunk(&[0, 0], &[2, 4]), chunk(&[2, 0], &[2, 4]), chunk(&[2, 0], &[2, 4])], "a duplicate"),
            (vec![chunk(&[0, 0], &[2, 4]), chunk(&[2, 0], &[4, 4])], "past the end"),
            (vec![chunk(&[1, 0], &[3, 4])], "a gap at the start"),
            (
                vec![
                    chunk(&[0, 0], &[2, 2]),
                    chunk(&[2, 0], &[2, 4]),
                    chunk(&[0, 2], &[2, 2]),
                    chunk(&[0, 0], &[0, 4]),
                ],
                "an empty chunk",
            ),
            (vec![chunk(&[0], &[4])], "a wrong rank"),
        ] {
            assert!(check_tiling(&[4, 4], &chunks).is_err(), "{why}");
        }
    }
}
