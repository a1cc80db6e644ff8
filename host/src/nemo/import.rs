//! The import itself: find the checkpoint's tensors, map Megatron-core names and fused
//! layouts to Hugging Face ones, and stream them into safetensors shards beside a
//! `config.json` and `tokenizer.json`, all in a folder renamed into place at the end.

use super::config::{NemoConfig, NemoFamily};
use super::legacy::LegacyCheckpoint;
use super::sentencepiece;
use super::shards::{OutTensor, write_shards};
use super::store::{DESCRIPTION_LIMIT, METADATA_LIMIT, Store, read_regular};
use super::torch_dist::TorchDistCheckpoint;
use super::zarr::ZarrArray;
use crate::model::weights::DType;
use crate::output::OutputDir;
use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct ImportOptions {
    pub input: PathBuf,
    pub output_dir: PathBuf,
    /// A `tokenizer.json`, a SentencePiece `tokenizer.model`, or a Hugging Face
    /// tokenizer folder, when the checkpoint holds none.
    pub tokenizer: Option<PathBuf>,
    /// Output dtype; `None` keeps the checkpoint's.
    pub dtype: Option<DType>,
    pub max_shard_bytes: usize,
}

/// What an import wrote, for the summary line.
pub struct Imported {
    pub tensors: usize,
    pub bytes: u64,
    pub architecture: String,
    pub labels: Vec<String>,
}

/// Rows picked from a 2-D tensor, which must have `groups * group_rows` rows: for each
/// group, rows `offset..offset + take` of it (the q, k or v part of a fused `linear_qkv`
/// per query group; one group for a half of SwiGLU's fused fc1).
#[derive(Clone, Copy, Debug)]
struct RowPick {
    groups: usize,
    group_rows: usize,
    offset: usize,
    take: usize,
}

/// Where one output tensor's values come from.
#[derive(Clone, Debug)]
struct Source {
    key: String,
    /// The layer's index along the first axis of a tensor stacked over layers.
    layer: Option<usize>,
    rows: Option<RowPick>,
}

impl Source {
    fn whole(key: String) -> Self {
        Source { key, layer: None, rows: None }
    }
}

/// The tensors of one checkpoint container, by their Megatron-core key without the
/// `model.` prefix some containers add.
pub trait Tensors {
    /// Where the tensors are, for errors.
    fn describe(&self) -> String;
    fn contains(&self, key: &str) -> bool;
    /// Stored dtype and shape.
    fn info(&self, key: &str) -> Result<(DType, Vec<usize>)>;
    /// All of `key`'s values, little-endian, C order.
    fn read(&self, key: &str) -> Result<Vec<u8>>;
    /// `key[index]` along the first axis: one layer of a tensor stacked over layers.
    fn read_first_axis(&self, key: &str, index: usize) -> Result<Vec<u8>>;
}

/// The Megatron-core key without `model.` (and `module.`, Float16Module's): how
/// [`Tensors`] name tensors.
pub fn strip_model_prefix(key: &str) -> String {
    let key = key.strip_prefix("model.").unwrap_or(key);
    key.strip_prefix("module.").unwrap_or(key).to_owned()
}

/// The tensors of a zarr distributed checkpoint (`model_weights/`): one zarr array per
/// key, layers stacked on the first axis.
struct ZarrCheckpoint<'s> {
    store: &'s Store,
    folder: String,
    /// Stored keys, each a folder of `folder`.
    keys: BTreeMap<String, ()>,
    /// The prefix the keys carry (`model.`, or none).
    prefix: String,
}

impl<'s> ZarrCheckpoint<'s> {
    fn open(store: &'s Store, folder: &str) -> Result<Self> {
        let keys: BTreeMap<String, ()> = store
            .list(folder)?
            .into_iter()
            .filter(|k| !k.starts_with('.') && k.contains('.'))
            .map(|k| (k, ()))
            .collect();
        let prefix = if keys.keys().any(|k| k.starts_with("model.")) { "model." } else { "" }.to_owned();
        Ok(ZarrCheckpoint { store, folder: folder.to_owned(), keys, prefix })
    }

    fn array(&self, key: &str) -> Result<ZarrArray<'s>> {
        ZarrArray::open(self.store, &format!("{}/{}{key}", self.folder, self.prefix))
    }
}

impl Tensors for ZarrCheckpoint<'_> {
    fn describe(&self) -> String {
        self.store.describe(&self.folder)
    }

    fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(&format!("{}{key}", self.prefix))
    }

    fn info(&self, key: &str) -> Result<(DType, Vec<usize>)> {
        let array = self.array(key)?;
        Ok((array.dtype, array.shape.clone()))
    }

    fn read(&self, key: &str) -> Result<Vec<u8>> {
        self.array(key)?.read()
    }

    fn read_first_axis(&self, key: &str, index: usize) -> Result<Vec<u8>> {
        self.array(key)?.read_first_axis(index)
    }
}

/// The first of `names` the checkpoint has, or an error naming them all.
fn require(ckpt: &dyn Tensors, names: &[String]) -> Result<String> {
    names
        .iter()
        .find(|n| ckpt.contains(n))
        .cloned()
        .ok_or_else(|| anyhow!("the checkpoint has no tensor `{}` (in {})", names.join("` or `"), ckpt.describe()))
}

/// Layer `layer`'s tensor `name` (one of alternatives): stacked over layers
/// (`decoder.layers.NAME`, distributed checkpoints) or per layer (`decoder.layers.L.NAME`).
fn layer_source(ckpt: &dyn Tensors, names: &[String], layer: usize) -> Result<Source> {
    let stacked: Vec<String> = names.iter().map(|n| format!("decoder.layers.{n}")).collect();
    if let Some(key) = stacked.iter().find(|k| ckpt.contains(k)) {
        return Ok(Source { key: key.clone(), layer: Some(layer), rows: None });
    }
    let per_layer: Vec<String> = names.iter().map(|n| format!("decoder.layers.{layer}.{n}")).collect();
    Ok(Source::whole(
        require(ckpt, &per_layer).map_err(|_| {
            anyhow!("the checkpoint has no tensor `{}` (in {})", stacked.join("` or `"), ckpt.describe())
        })?,
    ))
}

fn convert_dtype(bytes: Vec<u8>, from: DType, to: DType, name: &str) -> Result<Vec<u8>> {
    if from == to {
        return Ok(bytes);
    }
    let values: Vec<f32> = match from {
        DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
    };
    Ok(match to {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        DType::F16 => {
            if let Some(bad) = values.iter().find(|v| v.is_finite() && half::f16::from_f32(**v).is_infinite()) {
                bail!("tensor `{name}` holds {bad}, outside f16's range: use --dtype bf16 or f32");
            }
            values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
        }
    })
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
    }
}

/// The container in `store`: a distributed checkpoint (zarr or torch_dist, as its
/// `metadata.json` says) or legacy `model_weights.ckpt` files.
fn open_weights<'s>(store: &'s Store, config: &NemoConfig) -> Result<Box<dyn Tensors + 's>> {
    if let Some(metadata) = store.read_optional("model_weights/metadata.json", DESCRIPTION_LIMIT)? {
        let metadata: Value = serde_json::from_slice(&metadata)
            .with_context(|| format!("{} is not JSON", store.describe("model_weights/metadata.json")))?;
        return match metadata.get("sharded_backend").and_then(Value::as_str) {
            Some("zarr") => Ok(Box::new(ZarrCheckpoint::open(store, "model_weights")?)),
            Some("torch_dist") => Ok(Box::new(TorchDistCheckpoint::open(store, "model_weights")?)),
            other => bail!("{}: unknown sharded_backend {other:?}", store.describe("model_weights/metadata.json")),
        };
    }
    // Legacy: torch.save files, SwiGLU's fc1 merged across ranks as [gate; up].
    if let Some(legacy) = LegacyCheckpoint::open(store, config.tensor_parallel, config.family == NemoFamily::Llama)? {
        return Ok(Box::new(legacy));
    }
    bail!("{} has no model_weights/ folder nor model_weights.ckpt: not a NeMo checkpoint", store.describe(""))
}

/// The output tensors and where each comes from; each keeps its stored dtype unless
/// `out_dtype` is given (NeMo-Aligner stores `rm_head` in f32 beside bf16 weights).
fn plan(config: &NemoConfig, ckpt: &dyn Tensors, out_dtype: Option<DType>) -> Result<Vec<(OutTensor, Source)>> {
    let (h, hd, heads, groups, ffn) =
        (config.hidden_size, config.head_dim, config.num_heads, config.num_query_groups, config.ffn_hidden_size);
    let per_group = heads / groups;
    let nemotron = config.family == NemoFamily::Nemotron;
    let names = |list: &[&str]| -> Vec<String> { list.iter().map(|n| n.to_string()).collect() };
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, source: Source| {
        out.push((OutTensor { name, dtype: out_dtype.unwrap_or(DType::F32), shape }, source));
    };
    let embed = require(ckpt, &names(&["embedding.word_embeddings.weight"]))?;
    let vocab = ckpt.info(&embed)?.1.first().copied().unwrap_or(0);
    push("model.embed_tokens.weight".into(), vec![vocab, h], Source::whole(embed));

    // The layer count is checked against the tensors before the plan grows with it.
    let stacked = "decoder.layers.self_attention.linear_qkv.weight";
    let stored_layers = if ckpt.contains(stacked) {
        ckpt.info(stacked)?.1.first().copied().unwrap_or(0)
    } else {
        let has = |i: usize| ckpt.contains(&format!("decoder.layers.{i}.self_attention.linear_qkv.weight"));
        (config.num_layers..=config.num_layers).find(|&n| n > 0 && has(n - 1) && !has(n)).unwrap_or(0)
    };
    if stored_layers != config.num_layers {
        bail!(
            "model_config.yaml says num_layers is {}, but {} does not hold that many layers",
            config.num_layers,
            ckpt.describe()
        );
    }
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        // Norms: Transformer Engine names (fused into the next linear layer) first, then
        // the local spec's.
        for (hf, te, local) in [
            ("input_layernorm", "self_attention.linear_qkv", "input_layernorm"),
            ("post_attention_layernorm", "mlp.linear_fc1", "pre_mlp_layernorm"),
        ] {
            let kinds: &[&str] = if nemotron { &["weight", "bias"] } else { &["weight"] };
            for kind in kinds {
                let source = layer_source(ckpt, &[format!("{te}.layer_norm_{kind}"), format!("{local}.{kind}")], i)?;
                push(format!("{p}.{hf}.{kind}"), vec![h], source);
            }
        }
        let kinds: &[&str] = if config.bias { &["weight", "bias"] } else { &["weight"] };
        // linear_qkv: per query group, its q heads, then k, then v.
        let group_rows = (per_group + 2) * hd;
        for (name, offset, take) in
            [("q_proj", 0, per_group * hd), ("k_proj", per_group * hd, hd), ("v_proj", (per_group + 1) * hd, hd)]
        {
            for kind in kinds {
                let mut source = layer_source(ckpt, &[format!("self_attention.linear_qkv.{kind}")], i)?;
                source.rows = Some(RowPick { groups, group_rows, offset, take });
                let shape = if *kind == "weight" { vec![groups * take, h] } else { vec![groups * take] };
                push(format!("{p}.self_attn.{name}.{kind}"), shape, source);
            }
        }
        let mut linears = vec![("self_attn.o_proj", "self_attention.linear_proj", h, heads * hd, None)];
        if nemotron {
            linears.push(("mlp.up_proj", "mlp.linear_fc1", ffn, h, None));
        } else {
            // SwiGLU's fused fc1 is [gate; up].
            linears.push(("mlp.gate_proj", "mlp.linear_fc1", ffn, h, Some((0, ffn))));
            linears.push(("mlp.up_proj", "mlp.linear_fc1", ffn, h, Some((ffn, ffn))));
        }
        linears.push(("mlp.down_proj", "mlp.linear_fc2", h, ffn, None));
        for (hf, mcore, rows, cols, pick) in linears {
            for kind in kinds {
                let mut source = layer_source(ckpt, &[format!("{mcore}.{kind}")], i)?;
                // A pick is a half of [gate; up]: the tensor must have exactly both halves.
                source.rows = pick.map(|(offset, take)| RowPick { groups: 1, group_rows: 2 * ffn, offset, take });
                let shape = if *kind == "weight" { vec![rows, cols] } else { vec![rows] };
                push(format!("{p}.{hf}.{kind}"), shape, source);
            }
        }
    }
    let final_kinds: &[&str] = if nemotron { &["weight", "bias"] } else { &["weight"] };
    for kind in final_kinds {
        let key = require(ckpt, &[format!("decoder.final_layernorm.{kind}")])?;
        push(format!("model.norm.{kind}"), vec![h], Source::whole(key));
    }
    let head = require(ckpt, &names(&["rm_head.weight"]))?;
    let rows = ckpt.info(&head)?.1.first().copied().unwrap_or(0);
    if rows != config.outputs {
        bail!("`{head}` has {rows} outputs, but model_config.yaml's regression.num_attributes says {}", config.outputs);
    }
    push("score.weight".into(), vec![config.outputs, h], Source::whole(head));
    if ckpt.contains("rm_head.bias") {
        push("score.bias".into(), vec![config.outputs], Source::whole("rm_head.bias".into()));
    }
    for (tensor, source) in &mut out {
        let (dtype, stored) = ckpt.info(&source.key)?;
        check_shape(config, tensor, source, &stored)?;
        if out_dtype.is_none() {
            tensor.dtype = dtype;
        }
    }
    Ok(out)
}

/// Whether `source` (stored as `stored`) gives exactly `tensor`'s shape: checked for
/// every tensor before anything is written, with no arithmetic that a hostile
/// `model_config.yaml` could overflow.
fn check_shape(config: &NemoConfig, tensor: &OutTensor, source: &Source, stored: &[usize]) -> Result<()> {
    let key = &source.key;
    if stored.contains(&0) {
        bail!("tensor `{key}` has shape {stored:?}: it holds no values (a model's tensors never are empty)");
    }
    let mut shape = stored.to_vec();
    if source.layer.is_some() {
        if shape.first() != Some(&config.num_layers) {
            bail!(
                "tensor `{key}` has shape {stored:?}: its first axis should be model_config.yaml's {} layers",
                config.num_layers
            );
        }
        shape.remove(0);
    }
    if let Some(RowPick { groups, group_rows, offset, take }) = source.rows {
        let rows = shape.first().copied().unwrap_or(0);
        let fits = groups.checked_mul(group_rows) == Some(rows)
            && offset.checked_add(take).is_some_and(|end| end <= group_rows);
        if !fits {
            bail!("tensor `{key}` has shape {stored:?}, which does not fit model_config.yaml's heads and sizes");
        }
        shape[0] = groups * take;
    }
    let elements = |dims: &[usize]| dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if elements(&shape).and_then(|n| n.checked_mul(8)).is_none() {
        bail!("tensor `{key}` has shape {stored:?}: more elements than any tensor can hold");
    }
    if shape != tensor.shape {
        bail!(
            "tensor `{key}` has shape {stored:?}, but `{}` needs {:?} by model_config.yaml",
            tensor.name,
            tensor.shape
        );
    }
    Ok(())
}

/// The last region read for a row pick (one layer of `linear_qkv` or `linear_fc1`): q, k
/// and v, or gate and up, are planned one after the other and pick rows of the same
/// region, which is then read once instead of three or two times.
#[derive(Default)]
struct PickedRegion {
    source: Option<(String, Option<usize>)>,
    bytes: Vec<u8>,
}

/// The values of one planned tensor, in `out.dtype`, checked against its shape.
fn read_tensor(
    ckpt: &dyn Tensors,
    config: &NemoConfig,
    out: &OutTensor,
    source: &Source,
    last: &mut PickedRegion,
) -> Result<Vec<u8>> {
    let key = &source.key;
    let (dtype, mut stored) = ckpt.info(key)?;
    if source.layer.is_some() {
        if stored.first() != Some(&config.num_layers) {
            bail!("tensor `{key}` has shape {stored:?}: its first axis should be the {} layers", config.num_layers);
        }
        stored.remove(0);
    }
    let read_region = || match source.layer {
        Some(layer) => ckpt.read_first_axis(key, layer),
        None => ckpt.read(key),
    };
    let esize = dtype.size();
    let bytes = match source.rows {
        Some(RowPick { groups, group_rows, offset, take }) => {
            let rows = stored.first().copied().unwrap_or(0);
            if groups * group_rows != rows || offset + take > group_rows {
                bail!("tensor `{key}` has shape {stored:?}, which does not fit the config's heads and sizes");
            }
            let wanted = Some((key.clone(), source.layer));
            if last.source != wanted {
                // Free the previous region before reading the next.
                *last = PickedRegion::default();
                *last = PickedRegion { bytes: read_region()?, source: wanted };
            }
            let region = &last.bytes;
            let row_bytes = stored.iter().skip(1).product::<usize>() * esize;
            if region.len() != rows * row_bytes {
                bail!("tensor `{key}` holds {} bytes, not the {} of shape {stored:?}", region.len(), rows * row_bytes);
            }
            let mut picked = Vec::with_capacity(groups * take * row_bytes);
            for g in 0..groups {
                let start = (g * group_rows + offset) * row_bytes;
                picked.extend_from_slice(&region[start..start + take * row_bytes]);
            }
            picked
        }
        None => {
            *last = PickedRegion::default();
            read_region()?
        }
    };
    if bytes.len() / esize != out.shape.iter().product::<usize>() {
        bail!("tensor `{key}` has shape {stored:?}, but `{}` needs {:?}", out.name, out.shape);
    }
    convert_dtype(bytes, dtype, out.dtype, key)
}

/// The tokenizer files to write: `tokenizer.json` and, for a folder, its companions.
fn tokenizer_files(store: &Store, config: &NemoConfig, given: Option<&Path>) -> Result<Vec<(String, Vec<u8>)>> {
    let from_model = |bytes: &[u8], source: &str| -> Result<Vec<(String, Vec<u8>)>> {
        let json = sentencepiece::to_tokenizer_json(bytes).with_context(|| format!("converting {source}"))?;
        Ok(vec![("tokenizer.json".to_owned(), serde_json::to_vec(&json)?)])
    };
    if let Some(path) = given {
        if path.is_dir() {
            let mut files = Vec::new();
            for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"] {
                if let Some(bytes) = read_regular(&path.join(name), METADATA_LIMIT)? {
                    files.push((name.to_owned(), bytes));
                }
            }
            if files.iter().all(|(n, _)| n != "tokenizer.json") {
                bail!("--tokenizer {}: the folder has no tokenizer.json", path.display());
            }
            return Ok(files);
        }
        let bytes = read_regular(path, METADATA_LIMIT)
            .and_then(|bytes| bytes.with_context(|| format!("{} does not exist", path.display())))
            .context("cannot read --tokenizer")?;
        return if path.extension().is_some_and(|e| e == "json") {
            tokenizers::Tokenizer::from_bytes(&bytes)
                .map_err(|e| anyhow!("--tokenizer {} is not a tokenizer.json: {e}", path.display()))?;
            Ok(vec![("tokenizer.json".to_owned(), bytes)])
        } else {
            from_model(&bytes, &path.display().to_string())
        };
    }
    let Some(model) = &config.tokenizer_model else {
        if let Some(name) = &config.hf_tokenizer {
            // Converters write the folder they read: use it when it is on this machine.
            let folder = Path::new(name);
            if folder.is_absolute() && folder.join("tokenizer.json").is_file() {
                return tokenizer_files(store, config, Some(folder));
            }
            bail!(
                "model_config.yaml's tokenizer is the Hugging Face tokenizer `{name}`, which NeMo does not store in the checkpoint: pass --tokenizer with its folder or tokenizer.json (e.g. `huggingface-cli download {name} tokenizer.json tokenizer_config.json --local-dir tokenizer`)"
            );
        }
        bail!(
            "model_config.yaml names no tokenizer model: pass --tokenizer (a tokenizer.json, tokenizer.model or tokenizer folder)"
        );
    };
    // `nemo:NAME` is a file packed into the checkpoint.
    let member = model.strip_prefix("nemo:").unwrap_or(model);
    let member = Path::new(member).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match store.read_optional(&member, METADATA_LIMIT)? {
        Some(bytes) => from_model(&bytes, &store.describe(&member)),
        None => {
            bail!("the tokenizer model_config.yaml names ({model}) is not in {}: pass --tokenizer", store.describe(""))
        }
    }
}

/// The id of `token` in a tokenizer.json (added tokens, then the vocabulary).
fn token_id(tokenizer: &Value, token: &str) -> Option<u32> {
    let added = tokenizer.get("added_tokens").and_then(Value::as_array).and_then(|tokens| {
        tokens.iter().find(|t| t.get("content").and_then(Value::as_str) == Some(token))?.get("id")?.as_u64()
    });
    added.or_else(|| tokenizer.get("model")?.get("vocab")?.get(token)?.as_u64()).map(|id| id as u32)
}

pub fn import(options: &ImportOptions, progress: &ProgressBar) -> Result<Imported> {
    let store = Store::open(&options.input)?;
    let config_name = "model_config.yaml";
    let config = super::config::read(&store.read(config_name, METADATA_LIMIT)?, &store.describe(config_name))?;
    let ckpt = open_weights(&store, &config)?;
    let ckpt = ckpt.as_ref();
    let planned = plan(&config, ckpt, options.dtype)?;
    // config.json's dtype: the embedding's.
    let dtype = planned[0].0.dtype;
    let tokenizer = tokenizer_files(&store, &config, options.tokenizer.as_deref())?;

    let out = OutputDir::create(&options.output_dir)?;
    let tensors: Vec<OutTensor> = planned.iter().map(|(t, _)| t.clone()).collect();
    let total: u64 = tensors.iter().map(|t| t.bytes() as u64).sum();
    progress.set_length(total);
    let mut last_region = PickedRegion::default();
    write_shards(
        out.path(),
        &tensors,
        options.max_shard_bytes,
        |i| {
            let (tensor, source) = &planned[i];
            progress.set_message(format!("tensor {}/{}", i + 1, planned.len()));
            read_tensor(ckpt, &config, tensor, source, &mut last_region)
                .with_context(|| format!("writing `{}`", tensor.name))
        },
        |n| progress.inc(n),
    )?;
    let tokenizer_json: Value =
        serde_json::from_slice(&tokenizer.iter().find(|(n, _)| n == "tokenizer.json").expect("a tokenizer.json").1)?;
    let (bos, eos) = (token_id(&tokenizer_json, "<s>"), token_id(&tokenizer_json, "</s>"));
    let vocab = tensors[0].shape[0];
    let hf = config.hf_config(vocab, dtype_name(dtype), bos, eos);
    std::fs::write(out.path().join("config.json"), serde_json::to_vec_pretty(&hf)?)?;
    let has_tokenizer_config = tokenizer.iter().any(|(n, _)| n == "tokenizer_config.json");
    for (name, bytes) in &tokenizer {
        std::fs::write(out.path().join(name), bytes)?;
    }
    if !has_tokenizer_config {
        let mut tokenizer_config =
            json!({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.max_positions});
        for (field, token) in [("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>")] {
            if token_id(&tokenizer_json, token).is_some() {
                tokenizer_config[field] = json!(token);
            }
        }
        std::fs::write(out.path().join("tokenizer_config.json"), serde_json::to_vec_pretty(&tokenizer_config)?)?;
    }
    out.commit()?;
    Ok(Imported {
        tensors: tensors.len(),
        bytes: total,
        architecture: hf["architectures"][0].as_str().unwrap_or_default().to_owned(),
        labels: config.labels(),
    })
}
