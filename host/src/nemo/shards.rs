//! Writes a checkpoint as Hugging Face safetensors shards, one tensor at a time: the
//! shapes are known up front, so every shard's header is written first and each tensor's
//! bytes are asked for only when its turn comes (memory stays at one tensor).

use crate::model::weights::DType;
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use std::io::{BufWriter, Write};
use std::path::Path;

/// One tensor of the output.
#[derive(Clone, Debug)]
pub struct OutTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl OutTensor {
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
    }
}

/// Tensors grouped into shards of at most `max_shard_bytes` (a larger tensor gets a
/// shard of its own), in the given order.
pub fn plan_shards(tensors: &[OutTensor], max_shard_bytes: usize) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut size = 0;
    for (i, tensor) in tensors.iter().enumerate() {
        let bytes = tensor.bytes();
        if shards.is_empty() || (size + bytes > max_shard_bytes && size > 0) {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("a shard").push(i);
        size += bytes;
    }
    shards
}

/// The file name of shard `index` of `count` (transformers' naming).
pub fn shard_name(index: usize, count: usize) -> String {
    if count == 1 {
        "model.safetensors".to_owned()
    } else {
        format!("model-{:05}-of-{count:05}.safetensors", index + 1)
    }
}

/// Writes `tensors` into `dir` as shards of at most `max_shard_bytes`, plus
/// `model.safetensors.index.json` when there are several. `bytes_of(i)` gives tensor
/// i's little-endian bytes; `done(bytes)` is told after each tensor (progress).
pub fn write_shards(
    dir: &Path,
    tensors: &[OutTensor],
    max_shard_bytes: usize,
    mut bytes_of: impl FnMut(usize) -> Result<Vec<u8>>,
    mut done: impl FnMut(u64),
) -> Result<()> {
    let shards = plan_shards(tensors, max_shard_bytes);
    let mut weight_map = Map::new();
    let mut total = 0usize;
    for (index, members) in shards.iter().enumerate() {
        let name = shard_name(index, shards.len());
        let path = dir.join(&name);
        let mut header = Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0usize;
        for &i in members {
            let t = &tensors[i];
            let end = offset + t.bytes();
            header.insert(
                t.name.clone(),
                json!({"dtype": dtype_name(t.dtype), "shape": t.shape, "data_offsets": [offset, end]}),
            );
            weight_map.insert(t.name.clone(), Value::String(name.clone()));
            offset = end;
        }
        total += offset;
        let mut header = serde_json::to_vec(&Value::Object(header))?;
        // The data starts 8-byte aligned, as the safetensors writers pad it.
        header.resize(header.len().next_multiple_of(8), b' ');
        let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for &i in members {
            let t = &tensors[i];
            let bytes = bytes_of(i)?;
            if bytes.len() != t.bytes() {
                bail!(
                    "tensor `{}`: {} bytes made for shape {:?} ({} expected)",
                    t.name,
                    bytes.len(),
                    t.shape,
                    t.bytes()
                );
            }
            out.write_all(&bytes).with_context(|| format!("writing {}", path.display()))?;
            done(bytes.len() as u64);
        }
        out.into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if shards.len() > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&index)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::Weights;

    #[test]
    fn shards_load_back_as_a_checkpoint() {
        let tensors: Vec<OutTensor> = (0..5)
            .map(|i| OutTensor {
                name: format!("t{i}"),
                dtype: if i % 2 == 0 { DType::F32 } else { DType::BF16 },
                shape: vec![3, i + 1],
            })
            .collect();
        let payload = |i: usize| -> Vec<u8> { (0..tensors[i].bytes()).map(|b| (b * 7 + i) as u8).collect() };
        // 12 + 12 bytes, then 36 (over the limit: alone), 24, 60.
        assert_eq!(plan_shards(&tensors, 30), vec![vec![0, 1], vec![2], vec![3], vec![4]]);
        let dir = tempfile::tempdir().unwrap();
        let mut written = 0;
        write_shards(dir.path(), &tensors, 30, |i| Ok(payload(i)), |n| written += n).unwrap();
        assert_eq!(written as usize, tensors.iter().map(OutTensor::bytes).sum::<usize>());
        assert!(dir.path().join("model-00004-of-00004.safetensors").is_file());
        let weights = Weights::open(dir.path()).unwrap();
        for (i, t) in tensors.iter().enumerate() {
            let view = weights.get(&t.name, &t.shape).unwrap();
            assert_eq!((view.dtype, &*view.bytes), (t.dtype, payload(i).as_slice()));
        }
        let one = tempfile::tempdir().unwrap();
        write_shards(one.path(), &tensors, usize::MAX, |i| Ok(payload(i)), |_| {}).unwrap();
        assert!(
            one.path().join("model.safetensors").is_file() && !one.path().join("model.safetensors.index.json").exists()
        );
    }
}
