//! Where each architecture keeps its tensors, with their shapes checked once at load.
//! Both backends (CPU and wgpu) build their weights from this.

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

/// RMSNorm (`weight`) or LayerNorm1P (`weight` w applied as `1 + w`, and `bias`).
pub struct NormTensors<'a> {
    pub weight: TensorView<'a>,
    pub bias: Option<TensorView<'a>>,
}

pub struct LayerTensors<'a> {
    pub input_norm: NormTensors<'a>,
    pub q: LinearTensors<'a>,
    pub k: LinearTensors<'a>,
    pub v: LinearTensors<'a>,
    pub o: LinearTensors<'a>,
    pub post_norm: NormTensors<'a>,
    /// Absent for the squared-ReLU MLP.
    pub gate: Option<LinearTensors<'a>>,
    pub up: LinearTensors<'a>,
    pub down: LinearTensors<'a>,
}

pub struct ModelTensors<'a> {
    pub embed: TensorView<'a>,
    pub layers: Vec<LayerTensors<'a>>,
    pub final_norm: NormTensors<'a>,
    pub score: LinearTensors<'a>,
}

fn linear<'a>(w: &'a Weights, prefix: &str, out_features: usize, in_features: usize) -> Result<LinearTensors<'a>> {
    Ok(LinearTensors {
        weight: w.get(&format!("{prefix}.weight"), &[out_features, in_features])?,
        bias: w.get_optional(&format!("{prefix}.bias"), &[out_features])?,
        out_features,
        in_features,
    })
}

fn norm<'a>(w: &'a Weights, config: &ModelConfig, prefix: &str) -> Result<NormTensors<'a>> {
    let h = config.hidden_size;
    let weight = w.get(&format!("{prefix}.weight"), &[h])?;
    let bias = if config.architecture.layer_norm_1p() {
        Some(w.get(&format!("{prefix}.bias"), &[h])?)
    } else {
        w.get_optional(&format!("{prefix}.bias"), &[h])?
    };
    Ok(NormTensors { weight, bias })
}

impl<'a> ModelTensors<'a> {
    pub fn locate(config: &ModelConfig, w: &'a Weights) -> Result<Self> {
        let (h, hd) = (config.hidden_size, config.head_dim);
        let (q_out, kv_out) = (config.num_heads * hd, config.num_kv_heads * hd);
        let ffn = config.intermediate_size;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("model.layers.{i}");
            let gated = !config.architecture.squared_relu_mlp();
            layers.push(LayerTensors {
                input_norm: norm(w, config, &format!("{p}.input_layernorm"))?,
                q: linear(w, &format!("{p}.self_attn.q_proj"), q_out, h)?,
                k: linear(w, &format!("{p}.self_attn.k_proj"), kv_out, h)?,
                v: linear(w, &format!("{p}.self_attn.v_proj"), kv_out, h)?,
                o: linear(w, &format!("{p}.self_attn.o_proj"), h, q_out)?,
                post_norm: norm(w, config, &format!("{p}.post_attention_layernorm"))?,
                gate: if gated { Some(linear(w, &format!("{p}.mlp.gate_proj"), ffn, h)?) } else { None },
                up: linear(w, &format!("{p}.mlp.up_proj"), ffn, h)?,
                down: linear(w, &format!("{p}.mlp.down_proj"), h, ffn)?,
            });
        }
        let num_labels = w.rows("score.weight").unwrap_or(config.labels.len());
        if num_labels != config.labels.len() {
            bail!("score.weight has {num_labels} outputs but config.json names {} labels", config.labels.len());
        }
        Ok(ModelTensors {
            embed: w.get("model.embed_tokens.weight", &[config.vocab_size, h])?,
            layers,
            final_norm: norm(w, config, "model.norm")?,
            score: linear(w, "score", num_labels, h)?,
        })
    }
}
