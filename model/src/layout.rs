//! Where each architecture keeps its tensors, with their shapes checked once at load.
//! Both backends (CPU and wgpu) build their weights from this.

use super::arch::{HeadKind, NormKind};
use super::config::ModelConfig;
use super::weights::{TensorView, Weights};
use anyhow::{Result, bail};

/// A linear layer `y = x @ W^T (+ b)`, W stored `[out, in]`.
pub struct LinearTensors<'a> {
    pub weight: TensorView<'a>,
    pub bias: Option<TensorView<'a>>,
    pub out_features: usize,
    pub in_features: usize,
}

/// RMSNorm (`weight`), Gemma's RMSNorm (`weight` w applied as `1 + w`) or LayerNorm1P
/// (`weight` w applied as `1 + w` by the kernel, and `bias`).
pub struct NormTensors<'a> {
    pub weight: TensorView<'a>,
    pub bias: Option<TensorView<'a>>,
    /// The stored weight is an offset from 1 that the backends fold in at load
    /// ([`NormKind::RmsUnitOffset`]).
    pub unit_offset: bool,
}

impl NormTensors<'_> {
    /// The multiplier an RMSNorm kernel applies: the weight, or `1 + weight` in f32 for
    /// Gemma (as transformers computes `1.0 + self.weight.float()`).
    pub fn multiplier(&self) -> Vec<f32> {
        let mut weight = self.weight.to_f32();
        if self.unit_offset {
            weight.iter_mut().for_each(|w| *w += 1.0);
        }
        weight
    }
}

pub struct LayerTensors<'a> {
    pub input_norm: NormTensors<'a>,
    pub q: LinearTensors<'a>,
    pub k: LinearTensors<'a>,
    pub v: LinearTensors<'a>,
    pub o: LinearTensors<'a>,
    /// Qwen3's per-head RMSNorm on queries and keys (`[head_dim]` each).
    pub q_norm: Option<TensorView<'a>>,
    pub k_norm: Option<TensorView<'a>>,
    /// The norm before the MLP (`post_attention_layernorm`, or Gemma2's
    /// `pre_feedforward_layernorm`).
    pub post_norm: NormTensors<'a>,
    /// Gemma2's norms of the attention output and of the MLP output, applied before each
    /// joins the residual stream (`post_attention_layernorm`, `post_feedforward_layernorm`).
    pub attention_out_norm: Option<NormTensors<'a>>,
    pub mlp_out_norm: Option<NormTensors<'a>>,
    /// Absent for the squared-ReLU MLP.
    pub gate: Option<LinearTensors<'a>>,
    pub up: LinearTensors<'a>,
    pub down: LinearTensors<'a>,
}

pub struct ModelTensors<'a> {
    pub embed: TensorView<'a>,
    pub layers: Vec<LayerTensors<'a>>,
    pub final_norm: NormTensors<'a>,
    /// The regression head, or a causal LM's reward rows of its output projection.
    pub score: LinearTensors<'a>,
}

/// A linear layer; its bias is read when `bias` (the architecture table and config
/// say so), and a stored bias nobody asked for is an error rather than ignored.
fn linear<'a>(
    w: &'a Weights,
    prefix: &str,
    out_features: usize,
    in_features: usize,
    bias: bool,
) -> Result<LinearTensors<'a>> {
    let bias_name = format!("{prefix}.bias");
    let bias = if bias {
        Some(w.get(&bias_name, &[out_features])?)
    } else if w.contains(&bias_name) {
        bail!(
            "the checkpoint has `{bias_name}`, but config.json gives this architecture no such bias (`attention_bias` / `mlp_bias`)"
        )
    } else {
        None
    };
    Ok(LinearTensors {
        weight: w.get(&format!("{prefix}.weight"), &[out_features, in_features])?,
        bias,
        out_features,
        in_features,
    })
}

fn norm<'a>(w: &'a Weights, config: &ModelConfig, prefix: &str) -> Result<NormTensors<'a>> {
    let h = config.hidden_size;
    let weight = w.get(&format!("{prefix}.weight"), &[h])?;
    let kind = config.architecture.norm();
    let bias = match kind {
        NormKind::LayerNorm1P => Some(w.get(&format!("{prefix}.bias"), &[h])?),
        NormKind::Rms | NormKind::RmsUnitOffset => None,
    };
    Ok(NormTensors { weight, bias, unit_offset: kind == NormKind::RmsUnitOffset })
}

/// The head: `score` for a regression model; for a causal LM the reward ids' rows of
/// `lm_head.weight`, or of the embedding when the two are tied.
fn head<'a>(w: &'a Weights, config: &ModelConfig) -> Result<LinearTensors<'a>> {
    let h = config.hidden_size;
    match config.architecture.head {
        HeadKind::Regression => linear(w, "score", config.labels.len(), h, w.contains("score.bias")),
        HeadKind::TokenLogits => {
            let source = if config.tie_word_embeddings {
                "model.embed_tokens.weight"
            } else if w.contains("lm_head.weight") {
                "lm_head.weight"
            } else {
                bail!("the checkpoint has no `lm_head.weight` and config.json does not set `tie_word_embeddings`")
            };
            let ids = &config.reward_token_ids;
            Ok(LinearTensors {
                weight: w.rows_of(source, ids, h)?,
                bias: None,
                out_features: ids.len(),
                in_features: h,
            })
        }
    }
}

/// How many decoder layers the checkpoint stores: one past the highest `model.layers.N`.
fn stored_layers(w: &Weights) -> usize {
    w.names()
        .filter_map(|name| name.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |highest| highest.saturating_add(1))
}

/// Compares config.json's sizes with the checkpoint's tensors, before anything is
/// allocated by them, so a wrong value is named rather than sizing a huge allocation.
fn check_config_against(config: &ModelConfig, w: &Weights) -> Result<()> {
    let stored = stored_layers(w);
    if config.num_layers != stored {
        bail!(
            "config.json says `num_hidden_layers` is {}, but the checkpoint has {stored} layers (model.layers.N tensors)",
            config.num_layers
        );
    }
    let hd = config.head_dim;
    // (the config field, its value, the tensor that must agree, the dimension that must equal it)
    let expectations: [(&str, Option<usize>, &str, usize); 5] = [
        ("vocab_size", Some(config.vocab_size), "model.embed_tokens.weight", 0),
        ("hidden_size", Some(config.hidden_size), "model.embed_tokens.weight", 1),
        ("intermediate_size", Some(config.intermediate_size), "model.layers.0.mlp.up_proj.weight", 0),
        (
            "num_attention_heads x head_dim",
            config.num_heads.checked_mul(hd),
            "model.layers.0.self_attn.q_proj.weight",
            0,
        ),
        (
            "num_key_value_heads x head_dim",
            config.num_kv_heads.checked_mul(hd),
            "model.layers.0.self_attn.k_proj.weight",
            0,
        ),
    ];
    for (field, value, tensor, dimension) in expectations {
        let Some(stored) = w.shape(tensor).and_then(|shape| shape.get(dimension).copied()) else {
            bail!("the checkpoint has no tensor `{tensor}` (or it has fewer than {} dimensions)", dimension + 1);
        };
        if value != Some(stored) {
            let value = value.map_or_else(|| "too large".to_owned(), |v| v.to_string());
            bail!("config.json says `{field}` is {value}, but `{tensor}` has {stored} in dimension {dimension}");
        }
    }
    let labels = config.labels.len();
    if config.architecture.head == HeadKind::Regression
        && let Some(rows) = w.rows("score.weight")
        && rows != labels
    {
        bail!("score.weight has {rows} outputs but config.json names {labels} labels");
    }
    Ok(())
}

impl ModelTensors<'_> {
    /// Bytes of the weight matrices as stored (norms and biases, a rounding error, left
    /// out), for messages about memory.
    pub fn matrix_bytes(&self) -> usize {
        let layers =
            self.layers.iter().flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.up, &l.down].into_iter().chain(&l.gate));
        self.embed.bytes.len() + layers.chain([&self.score]).map(|linear| linear.weight.bytes.len()).sum::<usize>()
    }
}

impl<'a> ModelTensors<'a> {
    pub fn locate(config: &ModelConfig, w: &'a Weights) -> Result<Self> {
        check_config_against(config, w)?;
        let (h, hd) = (config.hidden_size, config.head_dim);
        let (q_out, kv_out) = (config.num_heads * hd, config.num_kv_heads * hd);
        let ffn = config.intermediate_size;
        // Grown as layers are found, not sized by the config up front.
        let mut layers = Vec::new();
        for i in 0..config.num_layers {
            let p = format!("model.layers.{i}");
            let gated = config.architecture.mlp().gated();
            let sandwich = config.architecture.family.sandwich_norms;
            // Gemma2's `post_attention_layernorm` normalises the attention output; in the
            // other families it is the norm before the MLP.
            let (pre_mlp_norm, attention_out_norm, mlp_out_norm) = if sandwich {
                (
                    norm(w, config, &format!("{p}.pre_feedforward_layernorm"))?,
                    Some(norm(w, config, &format!("{p}.post_attention_layernorm"))?),
                    Some(norm(w, config, &format!("{p}.post_feedforward_layernorm"))?),
                )
            } else {
                (norm(w, config, &format!("{p}.post_attention_layernorm"))?, None, None)
            };
            let (attn_bias, mlp_bias) = (config.qkv_bias, config.mlp_bias);
            let head_norm = |name: &str| -> Result<Option<TensorView<'a>>> {
                match config.architecture.family.qk_norm {
                    true => Ok(Some(w.get(&format!("{p}.self_attn.{name}.weight"), &[hd])?)),
                    false => Ok(None),
                }
            };
            layers.push(LayerTensors {
                input_norm: norm(w, config, &format!("{p}.input_layernorm"))?,
                q: linear(w, &format!("{p}.self_attn.q_proj"), q_out, h, attn_bias)?,
                k: linear(w, &format!("{p}.self_attn.k_proj"), kv_out, h, attn_bias)?,
                v: linear(w, &format!("{p}.self_attn.v_proj"), kv_out, h, attn_bias)?,
                o: linear(w, &format!("{p}.self_attn.o_proj"), h, q_out, config.o_bias)?,
                q_norm: head_norm("q_norm")?,
                k_norm: head_norm("k_norm")?,
                post_norm: pre_mlp_norm,
                attention_out_norm,
                mlp_out_norm,
                gate: if gated { Some(linear(w, &format!("{p}.mlp.gate_proj"), ffn, h, mlp_bias)?) } else { None },
                up: linear(w, &format!("{p}.mlp.up_proj"), ffn, h, mlp_bias)?,
                down: linear(w, &format!("{p}.mlp.down_proj"), h, ffn, mlp_bias)?,
            });
        }
        Ok(ModelTensors {
            embed: w.get("model.embed_tokens.weight", &[config.vocab_size, h])?,
            layers,
            final_norm: norm(w, config, "model.norm")?,
            score: head(w, config)?,
        })
    }
}
