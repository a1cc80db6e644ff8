//! The import itself: find the checkpoint's tensors, map Megatron-core names and fused
//! layouts to Hugging Face ones, and stream them into safetensors shards beside a
//! `config.json` and `tokenizer.json`, all in a folder renamed into place at the end.

use super::config::{NemoConfig, NemoFamily};
use super::sentencepiece;
use super::shards::{OutTensor, write_shards};
use super::store::Store;
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

/// Where one output tensor's values come from.
#[derive(Clone, Debug)]
enum Source {
    /// A whole stored array.
    Whole(String),
    /// Layer `layer` of an array stacked over layers (or `...layers.N...` unstacked).
    Layer { key: String, layer: usize },
    /// Rows `start..start + rows` of layer `layer`'s array, in blocks: for each of
    /// `groups` groups of `group_rows` rows, rows `offset..offset + take` of the group
    /// (the q, k or v part of a fused `linear_qkv`; `groups == 1` for a plain slice).
    LayerRows { key: String, layer: usize, groups: usize, group_rows: usize, offset: usize, take: usize },
}

/// The tensors of a zarr distributed checkpoint (`model_weights/`), by key.
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

    /// The stored key of `name` (one of alternatives), if present.
    fn find(&self, names: &[&str]) -> Option<String> {
        names.iter().map(|n| format!("{}{n}", self.prefix)).find(|k| self.keys.contains_key(k))
    }

    fn require(&self, names: &[&str]) -> Result<String> {
        self.find(names).ok_or_else(|| {
            anyhow!(
                "the checkpoint has no tensor `{}{}` (in {})",
                self.prefix,
                names.join("` or `"),
                self.store.describe(&self.folder)
            )
        })
    }

    fn array(&self, key: &str) -> Result<ZarrArray<'s>> {
        ZarrArray::open(self.store, &format!("{}/{key}", self.folder))
    }
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

/// The container in `store`, refused by name when it is one steerlm does not read yet.
fn open_weights(store: &Store) -> Result<ZarrCheckpoint<'_>> {
    if let Some(metadata) = store.read_optional("model_weights/metadata.json")? {
        let metadata: Value = serde_json::from_slice(&metadata)
            .with_context(|| format!("{} is not JSON", store.describe("model_weights/metadata.json")))?;
        return match metadata.get("sharded_backend").and_then(Value::as_str) {
            Some("zarr") => ZarrCheckpoint::open(store, "model_weights"),
            Some("torch_dist") => bail!(
                "{} is a `torch_dist` distributed checkpoint, which steerlm does not read yet (it reads `zarr` ones): convert it with NeMo to zarr or Hugging Face",
                store.describe("model_weights")
            ),
            other => bail!("{}: unknown sharded_backend {other:?}", store.describe("model_weights/metadata.json")),
        };
    }
    if store.exists("model_weights.ckpt") || store.exists("mp_rank_00") {
        bail!(
            "{} is a legacy NeMo checkpoint (model_weights.ckpt files), which steerlm does not read yet (it reads `zarr` distributed checkpoints)",
            store.describe("")
        );
    }
    bail!("{} has no model_weights/ folder: not a NeMo checkpoint", store.describe(""))
}

/// The output tensors and where each comes from; each keeps its stored dtype unless
/// `out_dtype` is given (NeMo-Aligner stores `rm_head` in f32 beside bf16 weights).
fn plan(config: &NemoConfig, ckpt: &ZarrCheckpoint, out_dtype: Option<DType>) -> Result<Vec<(OutTensor, Source)>> {
    let (h, hd, heads, groups, ffn) =
        (config.hidden_size, config.head_dim, config.num_heads, config.num_query_groups, config.ffn_hidden_size);
    let per_group = heads / groups;
    let nemotron = config.family == NemoFamily::Nemotron;
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, source: Source| {
        out.push((OutTensor { name, dtype: out_dtype.unwrap_or(DType::F32), shape }, source));
    };
    let embed = ckpt.require(&["embedding.word_embeddings.weight"])?;
    let vocab = ckpt.array(&embed)?.shape.first().copied().unwrap_or(0);
    push("model.embed_tokens.weight".into(), vec![vocab, h], Source::Whole(embed));

    // Per-layer tensors: (HF suffix, mcore names (TE spec first, then the local spec), shape).
    let layer = |names: &[&str]| -> Result<String> {
        ckpt.require(
            &names
                .iter()
                .map(|n| format!("decoder.layers.{n}"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    };
    let norm_names = |te: &str, local: &str, what: &str| [format!("{te}.layer_norm_{what}"), format!("{local}.{what}")];
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let mut norm = |hf: &str, te: &str, local: &str| -> Result<()> {
            let [a, b] = norm_names(te, local, "weight");
            push(format!("{p}.{hf}.weight"), vec![h], Source::Layer { key: layer(&[&a, &b])?, layer: i });
            if nemotron {
                let [a, b] = norm_names(te, local, "bias");
                push(format!("{p}.{hf}.bias"), vec![h], Source::Layer { key: layer(&[&a, &b])?, layer: i });
            }
            Ok(())
        };
        norm("input_layernorm", "self_attention.linear_qkv", "input_layernorm")?;
        norm("post_attention_layernorm", "mlp.linear_fc1", "pre_mlp_layernorm")?;

        let qkv = layer(&["self_attention.linear_qkv.weight"])?;
        let group_rows = (per_group + 2) * hd;
        let parts =
            [("q_proj", 0, per_group * hd), ("k_proj", per_group * hd, hd), ("v_proj", (per_group + 1) * hd, hd)];
        for (name, offset, take) in parts {
            let rows = Source::LayerRows { key: qkv.clone(), layer: i, groups, group_rows, offset, take };
            push(format!("{p}.self_attn.{name}.weight"), vec![groups * take, h], rows);
            if config.bias {
                let key = layer(&["self_attention.linear_qkv.bias"])?;
                let rows = Source::LayerRows { key, layer: i, groups, group_rows, offset, take };
                push(format!("{p}.self_attn.{name}.bias"), vec![groups * take], rows);
            }
        }
        let linear = |push: &mut dyn FnMut(String, Vec<usize>, Source),
                      hf: &str,
                      mcore: &str,
                      shape: Vec<usize>,
                      rows: Option<(usize, usize)>|
         -> Result<()> {
            let key = layer(&[&format!("{mcore}.weight")])?;
            let source = |key: String| match rows {
                Some((offset, take)) => Source::LayerRows { key, layer: i, groups: 1, group_rows: 0, offset, take },
                None => Source::Layer { key, layer: i },
            };
            push(format!("{p}.{hf}.weight"), shape.clone(), source(key));
            if config.bias {
                let key = layer(&[&format!("{mcore}.bias")])?;
                push(format!("{p}.{hf}.bias"), vec![shape[0]], source(key));
            }
            Ok(())
        };
        linear(&mut push, "self_attn.o_proj", "self_attention.linear_proj", vec![h, heads * hd], None)?;
        if nemotron {
            linear(&mut push, "mlp.up_proj", "mlp.linear_fc1", vec![ffn, h], None)?;
        } else {
            // SwiGLU's fused fc1 is [gate; up].
            linear(&mut push, "mlp.gate_proj", "mlp.linear_fc1", vec![ffn, h], Some((0, ffn)))?;
            linear(&mut push, "mlp.up_proj", "mlp.linear_fc1", vec![ffn, h], Some((ffn, ffn)))?;
        }
        linear(&mut push, "mlp.down_proj", "mlp.linear_fc2", vec![h, ffn], None)?;
    }
    push("model.norm.weight".into(), vec![h], Source::Whole(ckpt.require(&["decoder.final_layernorm.weight"])?));
    if nemotron {
        push("model.norm.bias".into(), vec![h], Source::Whole(ckpt.require(&["decoder.final_layernorm.bias"])?));
    }
    let head = ckpt.require(&["rm_head.weight"])?;
    let rows = ckpt.array(&head)?.shape.first().copied().unwrap_or(0);
    if rows != config.outputs {
        bail!("`{head}` has {rows} outputs, but model_config.yaml's regression.num_attributes says {}", config.outputs);
    }
    push("score.weight".into(), vec![config.outputs, h], Source::Whole(head));
    if let Some(bias) = ckpt.find(&["rm_head.bias"]) {
        push("score.bias".into(), vec![config.outputs], Source::Whole(bias));
    }
    if out_dtype.is_none() {
        for (tensor, source) in &mut out {
            let (Source::Whole(key) | Source::Layer { key, .. } | Source::LayerRows { key, .. }) = source;
            tensor.dtype = ckpt.array(key)?.dtype;
        }
    }
    Ok(out)
}

/// The values of one planned tensor, in `out.dtype`, checked against its shape.
fn read_tensor(ckpt: &ZarrCheckpoint, config: &NemoConfig, out: &OutTensor, source: &Source) -> Result<Vec<u8>> {
    let (key, bytes, dtype, stored) = match source {
        Source::Whole(key) => {
            let array = ckpt.array(key)?;
            (key, array.read()?, array.dtype, array.shape.clone())
        }
        Source::Layer { key, layer } | Source::LayerRows { key, layer, .. } => {
            let array = ckpt.array(key)?;
            if array.shape.first() != Some(&config.num_layers) {
                bail!(
                    "tensor `{key}` has shape {:?}: its first axis should be the {} layers",
                    array.shape,
                    config.num_layers
                );
            }
            (key, array.read_first_axis(*layer)?, array.dtype, array.shape[1..].to_vec())
        }
    };
    let esize = dtype.size();
    let bytes = match source {
        Source::LayerRows { groups, group_rows, offset, take, .. } => {
            let row_elems: usize = stored.iter().skip(1).product();
            let rows = stored.first().copied().unwrap_or(0);
            let group_rows = if *groups == 1 { rows } else { *group_rows };
            if groups * group_rows != rows || offset + take > group_rows {
                bail!("tensor `{key}` has shape {stored:?}, which does not fit the config's heads and sizes");
            }
            let row_bytes = row_elems * esize;
            let mut picked = Vec::with_capacity(groups * take * row_bytes);
            for g in 0..*groups {
                let start = (g * group_rows + offset) * row_bytes;
                picked.extend_from_slice(&bytes[start..start + take * row_bytes]);
            }
            picked
        }
        _ => bytes,
    };
    let elements = bytes.len() / esize;
    if elements != out.shape.iter().product::<usize>() {
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
                if path.join(name).is_file() {
                    files.push((name.to_owned(), std::fs::read(path.join(name))?));
                }
            }
            if files.iter().all(|(n, _)| n != "tokenizer.json") {
                bail!("--tokenizer {}: the folder has no tokenizer.json", path.display());
            }
            return Ok(files);
        }
        let bytes = std::fs::read(path).with_context(|| format!("cannot read --tokenizer {}", path.display()))?;
        return if path.extension().is_some_and(|e| e == "json") {
            tokenizers::Tokenizer::from_bytes(&bytes)
                .map_err(|e| anyhow!("--tokenizer {} is not a tokenizer.json: {e}", path.display()))?;
            Ok(vec![("tokenizer.json".to_owned(), bytes)])
        } else {
            from_model(&bytes, &path.display().to_string())
        };
    }
    let Some(model) = &config.tokenizer_model else {
        bail!(
            "model_config.yaml names no tokenizer model: pass --tokenizer (a tokenizer.json, tokenizer.model or tokenizer folder)"
        );
    };
    // `nemo:NAME` is a file packed into the checkpoint.
    let member = model.strip_prefix("nemo:").unwrap_or(model);
    let member = Path::new(member).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match store.read_optional(&member)? {
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
    let config = super::config::read(&store.read(config_name)?, &store.describe(config_name))?;
    let ckpt = open_weights(&store)?;
    let stored_dtype = ckpt.array(&ckpt.require(&["embedding.word_embeddings.weight"])?)?.dtype;
    let dtype = options.dtype.unwrap_or(stored_dtype);
    let planned = plan(&config, &ckpt, options.dtype)?;
    let tokenizer = tokenizer_files(&store, &config, options.tokenizer.as_deref())?;

    let out = OutputDir::create(&options.output_dir)?;
    let tensors: Vec<OutTensor> = planned.iter().map(|(t, _)| t.clone()).collect();
    let total: u64 = tensors.iter().map(|t| t.bytes() as u64).sum();
    progress.set_length(total);
    write_shards(
        out.path(),
        &tensors,
        options.max_shard_bytes,
        |i| {
            let (tensor, source) = &planned[i];
            progress.set_message(tensor.name.clone());
            read_tensor(&ckpt, &config, tensor, source).with_context(|| format!("writing `{}`", tensor.name))
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
