//! Files written by `torch.save` (FORMAT.md section 7): a zip of stored entries under one
//! top folder, holding `data.pkl` (read by [`super::pickle`]) and one `data/<key>` entry
//! per storage. Legacy `model_weights.ckpt` files are one; so is every item of a
//! `torch_dist` `.distcp` file, which is why a zip may start anywhere inside a member.
//!
//! Only the central directory and the bytes asked for are read, never the whole file.

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

/// A torch.save zip: `len` bytes of store member `member` from `base`.
pub struct TorchSave {
    member: String,
    base: u64,
    /// What to call it in errors.
    what: String,
    /// Entry name -> (local header offset, size), offsets relative to `base`.
    entries: BTreeMap<String, (u64, u64)>,
    /// The one top folder torch names after the file (`model_weights/`, `archive/`).
    top: String,
}

impl TorchSave {
    /// The whole member `member`.
    pub fn open(store: &Store, member: &str) -> Result<Self> {
        let size = store.size(member)?;
        Self::open_range(store, member, 0, size, store.describe(member))
    }

    /// The zip in bytes `base..base + len` of `member`, called `what` in errors.
    pub fn open_range(store: &Store, member: &str, base: u64, len: u64, what: String) -> Result<Self> {
        let read = |at: u64, n: u64| -> Result<Vec<u8>> {
            if at.checked_add(n).is_none_or(|end| end > len) {
                bail!("{what} is cut short: {n} bytes wanted at {at} of {len}");
            }
            store.read_at(member, base + at, usize::try_from(n)?)
        };
        let tail_len = len.min(22 + 65535 + 20);
        let tail = read(len - tail_len, tail_len)?;
        let Some(eocd) = (0..tail.len().saturating_sub(21)).rev().find(|&i| le32(&tail, i) == 0x0605_4b50) else {
            bail!("{what} is not a zip file (torch.save's format): no end of central directory");
        };
        let (mut count, mut cd_size, mut cd_offset) =
            (u64::from(le16(&tail, eocd + 10)), u64::from(le32(&tail, eocd + 12)), u64::from(le32(&tail, eocd + 16)));
        // A zip64 locator right before the end record points at the zip64 end record.
        if eocd >= 20 && le32(&tail, eocd - 20) == 0x0706_4b50 {
            let at = le64(&tail, eocd - 20 + 8);
            let record = read(at, 56).with_context(|| format!("{what}: a damaged zip64 record"))?;
            if le32(&record, 0) != 0x0606_4b50 {
                bail!("{what}: a damaged zip64 end of central directory");
            }
            (count, cd_size, cd_offset) = (le64(&record, 32), le64(&record, 40), le64(&record, 48));
        }
        if cd_offset.checked_add(cd_size).is_none_or(|end| end > len) || count > cd_size / 46 + 1 {
            bail!("{what}: the zip's central directory lies outside the file");
        }
        let cd = read(cd_offset, cd_size)?;
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
        let pkl = entries.keys().find(|k| k.ends_with("/data.pkl") && k.matches('/').count() == 1);
        let Some(top) = pkl.map(|k| k.trim_end_matches("data.pkl").to_owned()) else {
            bail!("{what} has no <folder>/data.pkl: not a torch.save file");
        };
        Ok(TorchSave { member: member.to_owned(), base, what, entries, top })
    }

    pub fn describe(&self) -> &str {
        &self.what
    }

    /// `len` bytes of entry `name` from `offset`.
    fn read_entry(&self, store: &Store, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let what = &self.what;
        let &(local, size) = self.entries.get(name).ok_or_else(|| anyhow!("{what} has no entry {name}"))?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            bail!("{what}: entry {name} holds {size} bytes, {len} wanted from {offset}");
        }
        let header = store.read_at(&self.member, self.base + local, 30)?;
        if le32(&header, 0) != 0x0403_4b50 {
            bail!("{what}: a damaged local header for {name}");
        }
        let data = local + 30 + u64::from(le16(&header, 26)) + u64::from(le16(&header, 28));
        store.read_at(&self.member, self.base + data + offset, usize::try_from(len)?)
    }

    /// The value `data.pkl` holds.
    pub fn load(&self, store: &Store) -> Result<Value> {
        let name = format!("{}data.pkl", self.top);
        let size = self.entries[&name].1;
        let pkl = self.read_entry(store, &name, 0, size)?;
        pickle::load(&pkl).with_context(|| format!("reading {}:{name}", self.what))
    }

    /// The values of `tensor` (called `key` in errors), C order: it must be contiguous
    /// (axes of length 1 aside) but may start anywhere in its storage.
    pub fn tensor_bytes(&self, store: &Store, tensor: &TensorRef, key: &str) -> Result<Vec<u8>> {
        let esize = dtype_of(tensor, key)?.size() as u64;
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
        self.read_entry(store, &name, start, len).with_context(|| format!("reading tensor `{key}`"))
    }
}

/// The weight dtype of a stored tensor; other dtypes are refused by name.
pub fn dtype_of(tensor: &TensorRef, key: &str) -> Result<DType> {
    Ok(match tensor.storage.dtype.as_str() {
        "float32" => DType::F32,
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        other => bail!("tensor `{key}` is {other}; steerlm reads float32, bfloat16 and float16 weights"),
    })
}

pub fn shape_of(tensor: &TensorRef) -> Result<Vec<usize>> {
    tensor.shape.iter().map(|&d| usize::try_from(d).map_err(|_| anyhow!("a dimension of {d}"))).collect()
}
