//! `config.json` of a Hugging Face reward checkpoint, in both the
//! transformers 4.x form (top-level `rope_theta`, `partial_rotary_factor`,
//! `torch_dtype`) and the 5.x form (`rope_parameters`, `dtype`).

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::path::Path;

pub use super::arch::Architecture;
use super::arch::{Biases, HeadKind, Sliding};
pub use super::rope::RopeScaling;

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// q, k, v and o projections have biases (o only where `o_bias`).
    pub qkv_bias: bool,
    pub o_bias: bool,
    /// gate, up and down projections have biases.
    pub mlp_bias: bool,
    /// A causal LM's output projection is its embedding matrix (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// A `*ForCausalLM` reward: the vocabulary ids whose logits are the scores (`[0]`
    /// unless `--reward-token-ids` says otherwise); empty for a regression head.
    pub reward_token_ids: Vec<u32>,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub norm_eps: f32,
    pub rope_theta: f64,
    /// How the rotary frequencies are scaled (Llama 3.1's `llama3`, `linear`), if at all.
    pub rope_scaling: RopeScaling,
    /// Leading dimensions of each head that are rotated (`head_dim * partial_rotary_factor`).
    pub rotary_dim: usize,
    /// The context: texts are cut to this many tokens.
    pub max_positions: usize,
    /// The sliding-attention window and the layers that use it, where it is shorter than
    /// the context (see [`ModelConfig::attention_window`]).
    pub sliding_window: Option<(usize, SlidingLayers)>,
    /// Multiplies the embeddings: `sqrt(hidden_size)` for Gemma, else 1.
    pub embedding_scale: f32,
    /// Multiplies attention scores: `query_pre_attn_scalar^-0.5` where config.json has
    /// one (Gemma2), else `head_dim^-0.5`.
    pub attention_scale: f32,
    /// Gemma2's `attn_logit_softcapping`: scores become `cap * tanh(score / cap)`.
    pub attention_softcap: Option<f32>,
    /// Gemma2's `final_logit_softcapping`, on a causal LM's logits (the scores).
    pub final_softcap: Option<f32>,
    /// Output names, from `id2label` (`LABEL_i` where absent).
    pub labels: Vec<String>,
    pub bos_token_id: Option<u32>,
    /// The stored dtype named by the config (`dtype` or `torch_dtype`), for display.
    pub dtype: String,
}

/// A count named by one of `names` (the first present wins): `None` when absent or null,
/// an error naming the field when it is not a non-negative integer.
fn count_field(config: &Value, names: &[&str]) -> Result<Option<usize>> {
    for name in names {
        match config.get(*name) {
            None | Some(Value::Null) => continue,
            Some(value) => {
                let count = value
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| anyhow!("`{name}` must be a non-negative integer, got {value}"))?;
                return Ok(Some(count));
            }
        }
    }
    Ok(None)
}

fn required_count(config: &Value, names: &[&str]) -> Result<usize> {
    count_field(config, names)?.ok_or_else(|| anyhow!("config.json has no `{}`", names[0]))
}

/// `value` of the field `name`, refused when zero (a size or count every layer divides by
/// or allocates with).
fn positive(name: &str, value: usize) -> Result<usize> {
    if value == 0 {
        bail!("`{name}` must be at least 1, got 0");
    }
    Ok(value)
}

/// Which layers of a checkpoint attend within its sliding window (rules, not a list, since
/// `num_hidden_layers` is only checked against the checkpoint later).
#[derive(Clone, Debug, PartialEq)]
pub enum SlidingLayers {
    None,
    All,
    /// Those from this one on (Qwen's `max_window_layers`).
    From(usize),
    /// The even-numbered ones (Gemma2 without `layer_types`).
    Even,
    /// As `layer_types` lists them.
    Listed(Vec<bool>),
}

impl SlidingLayers {
    fn slides(&self, layer: usize) -> bool {
        match self {
            SlidingLayers::None => false,
            SlidingLayers::All => true,
            SlidingLayers::From(first) => layer >= *first,
            SlidingLayers::Even => layer.is_multiple_of(2),
            SlidingLayers::Listed(listed) => listed.get(layer).copied().unwrap_or(false),
        }
    }
}

/// The sliding window and the layers it applies to, by `sliding`'s rules (see [`Sliding`]):
/// `None` when no layer slides, or when the window is at least the context (texts never
/// reach it).
fn sliding_window(
    config: &Value,
    sliding: Sliding,
    use_sliding_window: bool,
    layers: usize,
    context: usize,
) -> Result<Option<(usize, SlidingLayers)>> {
    let listed = || -> Result<Option<SlidingLayers>> {
        let Some(types) = config.get("layer_types").filter(|v| !v.is_null()) else { return Ok(None) };
        let types = types.as_array().ok_or_else(|| anyhow!("`layer_types` must be a list, got {types}"))?;
        if types.len() != layers {
            bail!("`layer_types` lists {} layers, but num_hidden_layers is {layers}", types.len());
        }
        let sliding = types.iter().enumerate().map(|(i, t)| match t.as_str() {
            Some("sliding_attention") => Ok(true),
            Some("full_attention") => Ok(false),
            _ => bail!("`layer_types` entry {i} is {t}; steerlm runs \"full_attention\" and \"sliding_attention\""),
        });
        Ok(Some(SlidingLayers::Listed(sliding.collect::<Result<_>>()?)))
    };
    let layers_sliding = match sliding {
        Sliding::Never => SlidingLayers::None,
        Sliding::EveryLayer => SlidingLayers::All,
        Sliding::Opted if !use_sliding_window => SlidingLayers::None,
        Sliding::Opted => match listed()? {
            Some(listed) => listed,
            None => SlidingLayers::From(count_field(config, &["max_window_layers"])?.unwrap_or(28)),
        },
        Sliding::Alternating => listed()?.unwrap_or(SlidingLayers::Even),
    };
    let any_slides = match &layers_sliding {
        SlidingLayers::None => false,
        SlidingLayers::All | SlidingLayers::Even => layers > 0,
        SlidingLayers::From(first) => *first < layers,
        SlidingLayers::Listed(listed) => listed.contains(&true),
    };
    if !any_slides {
        return Ok(None);
    }
    // transformers' default when the field is absent; null turns the window off.
    let window = match config.get("sliding_window") {
        None => 4096,
        Some(Value::Null) => return Ok(None),
        Some(_) => positive("sliding_window", required_count(config, &["sliding_window"])?)?,
    };
    Ok((window < context).then_some((window, layers_sliding)))
}

/// The RoPE scaling named by `rope_parameters` (5.x) or `rope_scaling` (4.x), with its
/// parameters checked; types steerlm does not apply are an error naming them.
fn rope_scaling(config: &Value, rope_parameters: Option<&Value>, context: usize) -> Result<RopeScaling> {
    fn type_of(block: &Value) -> Option<&str> {
        block.get("rope_type").or_else(|| block.get("type")).and_then(Value::as_str)
    }
    let scaling_block = config.get("rope_scaling").filter(|v| v.is_object());
    let (block, rope_type) = match (rope_parameters, scaling_block) {
        (Some(block), _) if type_of(block).is_some_and(|t| t != "default") => (block, type_of(block)),
        (_, Some(block)) => (block, type_of(block)),
        (Some(block), None) => (block, type_of(block)),
        (None, None) => return Ok(RopeScaling::None),
    };
    let block_name =
        if scaling_block.is_some_and(|b| std::ptr::eq(b, block)) { "rope_scaling" } else { "rope_parameters" };
    let number = |name: &str| -> Result<f64> {
        match block.get(name).and_then(Value::as_f64) {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => bail!(
                "`{block_name}.{name}` must be a positive number, got {}",
                block.get(name).unwrap_or(&Value::Null)
            ),
        }
    };
    match rope_type.unwrap_or("default") {
        "default" => Ok(RopeScaling::None),
        // Dynamic NTK scaling raises the base only for sequences longer than
        // max_position_embeddings (transformers recomputes it from the longest position
        // in the batch); steerlm cuts texts to max_position_embeddings, where it is exactly
        // the plain rotation.
        "dynamic" => number("factor").map(|_| RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: number("factor")? }),
        "llama3" => {
            let (low_freq_factor, high_freq_factor) = (number("low_freq_factor")?, number("high_freq_factor")?);
            if high_freq_factor <= low_freq_factor {
                bail!(
                    "`{block_name}.high_freq_factor` {high_freq_factor} must be more than `low_freq_factor` {low_freq_factor}"
                );
            }
            let original_context = original_context(config, block, &number, context)?;
            Ok(RopeScaling::Llama3 { factor: number("factor")?, low_freq_factor, high_freq_factor, original_context })
        }
        "yarn" => {
            let original_context = original_context(config, block, &number, context)?;
            let present = |name: &str| block.get(name).is_some_and(|v| !v.is_null());
            // Without a factor, transformers takes the context over the original one.
            let factor = if present("factor") { number("factor")? } else { context as f64 / original_context };
            // Python's `x or default`: absent, null or 0 take the default.
            let or_default = |name: &str, default: f64| -> Result<f64> {
                match block.get(name) {
                    None | Some(Value::Null) => Ok(default),
                    Some(v) if v.as_f64() == Some(0.0) => Ok(default),
                    Some(_) => number(name),
                }
            };
            let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor = if present("attention_factor") {
                number("attention_factor")?
            } else {
                match (or_default("mscale", 0.0)?, or_default("mscale_all_dim", 0.0)?) {
                    (m, all) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                }
            };
            let truncate = match block.get("truncate") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(other) => bail!("`{block_name}.truncate` must be true or false, got {other}"),
            };
            Ok(RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast: or_default("beta_fast", 32.0)?,
                beta_slow: or_default("beta_slow", 1.0)?,
                truncate,
                attention_factor,
            })
        }
        other => {
            bail!("RoPE type {other:?} is not supported (steerlm applies default, dynamic, linear, llama3 and yarn)")
        }
    }
}

/// The context a scaled RoPE was trained on, in transformers' order: a top-level
/// `original_max_position_embeddings`, then the block's, then the context itself.
fn original_context(
    config: &Value,
    block: &Value,
    number: &dyn Fn(&str) -> Result<f64>,
    context: usize,
) -> Result<f64> {
    match f64_field(config, "original_max_position_embeddings")? {
        Some(_) => positive_number(config, "original_max_position_embeddings"),
        // A null in the block means absent, as transformers reads it.
        None if block.get("original_max_position_embeddings").is_some_and(|v| !v.is_null()) => {
            number("original_max_position_embeddings")
        }
        None => Ok(context as f64),
    }
}

/// A positive finite number at `name`, or an error naming it.
fn positive_number(config: &Value, name: &str) -> Result<f64> {
    match f64_field(config, name)? {
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => bail!("`{name}` must be a positive number, got {}", config.get(name).unwrap_or(&Value::Null)),
    }
}

/// A number at `name`; `None` when it is absent or null. Anything else (`"1e-5"`,
/// `"NaN"`) is an error naming it, not a silent default.
fn f64_field(config: &Value, name: &str) -> Result<Option<f64>> {
    match config.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_f64() {
            Some(v) => Ok(Some(v)),
            None => bail!("`{name}` must be a number, got {value}"),
        },
    }
}

/// Most rotary-table entries (`max_position_embeddings` x rotary dimension) allocated at
/// load: 2^28 f32s is 1 GiB for each of cos and sin (a 128k context at 128 dims is 2^24).
pub const MAX_ROPE_TABLE: usize = 1 << 28;

/// Most outputs a score head may have (reward models have a handful; `num_labels` also
/// sizes the label list before any tensor is read).
pub const MAX_LABELS: usize = 1 << 16;

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let config: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        Self::from_json(&config).with_context(|| format!("in {}", path.display()))
    }

    /// Reads and checks every value: sizes positive, heads dividing evenly, RoPE
    /// dimensions even, and nothing that would size an allocation beyond reason. Shapes
    /// against the checkpoint are checked by [`super::layout::ModelTensors::locate`].
    pub fn from_json(config: &Value) -> Result<Self> {
        let kind = match config {
            Value::Object(_) => None,
            Value::Array(_) => Some("a list"),
            Value::String(_) => Some("a string"),
            Value::Null => Some("null"),
            _ => Some("a single value"),
        };
        if let Some(kind) = kind {
            bail!("a model config is a JSON object of settings (`\"hidden_size\": 4096`, ...), not {kind}");
        }
        let names: Vec<&str> = match config.get("architectures") {
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            None | Some(Value::Null) => Vec::new(),
            Some(other) => bail!("`architectures` must be a list of names, got {other}"),
        };
        let architecture = names.iter().find_map(|n| Architecture::from_name(n)).ok_or_else(|| {
            anyhow!("unsupported architecture {:?}; steerlm runs {}", names, Architecture::supported().join(", "))
        })?;
        let family = architecture.family;
        // Gemma2 reads `hidden_activation`; the others `hidden_act` (Gemma 1 configs may
        // carry a null `hidden_activation` beside it).
        let (act_field, activation) = ["hidden_activation", "hidden_act"]
            .into_iter()
            .find_map(|name| Some((name, config.get(name)?.as_str()?)))
            .unzip();
        if let (Some(field), Some(activation)) = (act_field, activation)
            && !family.accepts_activation(activation)
        {
            let runs = family.mlp.activation_names()[0];
            bail!("`{field}` {activation:?} is not supported for {architecture} (steerlm runs {runs})");
        }
        let flag = |name: &str| -> Result<bool> {
            match config.get(name) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => bail!("`{name}` must be true or false, got {other}"),
            }
        };
        let (qkv_bias, o_bias, mlp_bias) = match family.biases {
            Biases::QkvAlways => (true, false, false),
            Biases::FromConfig => (flag("attention_bias")?, flag("attention_bias")?, flag("mlp_bias")?),
            Biases::Never => (false, false, false),
        };
        let tie_word_embeddings = flag("tie_word_embeddings")?;
        let hidden_size = positive("hidden_size", required_count(config, &["hidden_size"])?)?;
        let num_heads = positive("num_attention_heads", required_count(config, &["num_attention_heads"])?)?;
        let num_kv_heads =
            positive("num_key_value_heads", count_field(config, &["num_key_value_heads"])?.unwrap_or(num_heads))?;
        if num_heads % num_kv_heads != 0 {
            bail!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}");
        }
        let head_dim = match count_field(config, &["head_dim"])? {
            Some(d) => positive("head_dim", d)?,
            None if hidden_size % num_heads != 0 => {
                bail!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads} (and there is no head_dim)"
                )
            }
            None => hidden_size / num_heads,
        };
        if num_heads.checked_mul(head_dim).is_none() {
            bail!("num_attention_heads {num_heads} x head_dim {head_dim} is too large");
        }
        let num_layers = positive("num_hidden_layers", required_count(config, &["num_hidden_layers"])?)?;
        let intermediate_size = positive("intermediate_size", required_count(config, &["intermediate_size"])?)?;
        let vocab_size = positive("vocab_size", required_count(config, &["vocab_size"])?)?;
        let context = positive(
            "max_position_embeddings",
            count_field(config, &["max_position_embeddings", "max_sequence_length", "seq_length"])?.unwrap_or(4096),
        )?;
        let max_positions = context;
        let sliding_window = sliding_window(config, family.sliding, flag("use_sliding_window")?, num_layers, context)?;

        // transformers 5.x nests RoPE settings in `rope_parameters`; 4.x keeps theta at the
        // top level and a scaling in a `rope_scaling` block.
        // A RoPE block that is not an object would silently mean "no scaling".
        for block in ["rope_parameters", "rope_scaling"] {
            if let Some(value) = config.get(block).filter(|v| !v.is_null() && !v.is_object()) {
                bail!("`{block}` must be an object or null, got {value}");
            }
        }
        let rope = config.get("rope_parameters").filter(|v| v.is_object());
        let rope_field = |name: &str| -> Result<Option<f64>> {
            match rope.map(|r| f64_field(r, name)).transpose()?.flatten() {
                Some(v) => Ok(Some(v)),
                None => f64_field(config, name),
            }
        };
        let rope_scaling = rope_scaling(config, rope, context)?;
        let rope_theta = rope_field("rope_theta")?.unwrap_or(10000.0);
        if !((rope_theta as f32).is_finite() && rope_theta as f32 > 0.0) {
            bail!("`rope_theta` must be a positive number, got {rope_theta}");
        }
        let partial = if family.partial_rotary { rope_field("partial_rotary_factor")?.unwrap_or(1.0) } else { 1.0 };
        if !(partial > 0.0 && partial <= 1.0) {
            bail!("`partial_rotary_factor` must be in (0, 1], got {partial}");
        }
        let rotary_dim = (head_dim as f64 * partial) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim || rotary_dim > 512 {
            bail!(
                "rotary dimension {rotary_dim} (head_dim {head_dim} x {partial}) must be even, positive and at most head_dim (and 512)"
            );
        }
        if max_positions.checked_mul(rotary_dim).is_none_or(|entries| entries > MAX_ROPE_TABLE) {
            bail!(
                "max_position_embeddings {max_positions} x rotary dimension {rotary_dim} is more than the {MAX_ROPE_TABLE} rotary-table entries steerlm allocates"
            );
        }

        let mut eps = None;
        for name in ["rms_norm_eps", "norm_eps", "layer_norm_eps", "layer_norm_epsilon"] {
            if eps.is_none() {
                eps = f64_field(config, name)?.map(|v| (name, v));
            }
        }
        let (eps_name, norm_eps) = eps.unwrap_or(("rms_norm_eps", 1e-5));
        // In f32, as the kernels add it: 1e300 would be infinite, 1e-50 zero.
        let norm_eps = norm_eps as f32;
        if !(norm_eps.is_finite() && norm_eps > 0.0) {
            bail!("`{eps_name}` must be a positive number within f32's range, got {}", config[eps_name]);
        }

        let positive_float = |name: &str| -> Result<Option<f64>> {
            if !family.soft_capping {
                return Ok(None);
            }
            match config.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => match value.as_f64() {
                    Some(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
                    _ => bail!("`{name}` must be a positive number or null, got {value}"),
                },
            }
        };
        let attention_scale = (positive_float("query_pre_attn_scalar")?.unwrap_or(head_dim as f64)).powf(-0.5) as f32;
        let attention_softcap = positive_float("attn_logit_softcapping")?.map(|v| v as f32);
        let final_softcap = positive_float("final_logit_softcapping")?.map(|v| v as f32);
        // A classification head's scores are not capped (transformers caps only the LM's logits).
        let final_softcap = final_softcap.filter(|_| architecture.head == HeadKind::TokenLogits);
        let embedding_scale = if family.scaled_embedding { (hidden_size as f64).sqrt() as f32 } else { 1.0 };

        let reward_token_ids = match architecture.head {
            HeadKind::TokenLogits => vec![0],
            HeadKind::Regression => Vec::new(),
        };
        if let Some(other) = config.get("id2label").filter(|v| !v.is_null() && !v.is_object()) {
            bail!("`id2label` must be an object like {{\"0\": \"helpfulness\"}}, got {other}");
        }
        let labels: Vec<String> = match config.get("id2label").and_then(Value::as_object) {
            _ if architecture.head == HeadKind::TokenLogits => token_labels(&reward_token_ids),
            Some(map) => {
                let mut pairs: Vec<(usize, String)> = map
                    .iter()
                    .map(|(k, v)| Ok((k.parse::<usize>()?, v.as_str().unwrap_or_default().to_owned())))
                    .collect::<Result<_>>()
                    .context("id2label keys must be integers")?;
                pairs.sort();
                if pairs.iter().enumerate().any(|(i, (id, _))| *id != i) {
                    bail!("`id2label` keys must be 0 to {} without gaps or repeats", pairs.len().saturating_sub(1));
                }
                pairs.into_iter().map(|(_, name)| name).collect()
            }
            None => {
                let n = positive("num_labels", count_field(config, &["num_labels"])?.unwrap_or(1))?;
                if n > MAX_LABELS {
                    bail!("`num_labels` {n} is more than the {MAX_LABELS} outputs steerlm reads");
                }
                (0..n).map(|i| format!("LABEL_{i}")).collect()
            }
        };
        if labels.is_empty() {
            bail!("`id2label` names no labels");
        }

        Ok(ModelConfig {
            architecture,
            qkv_bias,
            o_bias,
            mlp_bias,
            tie_word_embeddings,
            reward_token_ids,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size,
            vocab_size,
            norm_eps,
            rope_theta,
            rope_scaling,
            rotary_dim,
            max_positions,
            sliding_window,
            embedding_scale,
            attention_scale,
            attention_softcap,
            final_softcap,
            labels,
            bos_token_id: config.get("bos_token_id").and_then(Value::as_u64).map(|v| v as u32),
            dtype: config
                .get("dtype")
                .or_else(|| config.get("torch_dtype"))
                .and_then(Value::as_str)
                .unwrap_or("float32")
                .to_owned(),
        })
    }
}

impl ModelConfig {
    /// Layer `layer`'s sliding window: a query at position i sees keys i - window + 1 ..= i.
    /// `None`: full causal attention.
    pub fn attention_window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.as_ref().filter(|(_, layers)| layers.slides(layer)).map(|&(window, _)| window)
    }

    /// What the load line adds about attention: ", llama3 RoPE scaling (factor 8)" where
    /// the frequencies are scaled, ", a sliding window of W tokens on N of L layers" where
    /// layers slide; else "".
    pub fn attention_note(&self) -> String {
        let mut note = match self.rope_scaling {
            RopeScaling::None => String::new(),
            RopeScaling::Linear { factor } => format!(", linear RoPE scaling (factor {factor})"),
            RopeScaling::Llama3 { factor, .. } => format!(", llama3 RoPE scaling (factor {factor})"),
            RopeScaling::Yarn { factor, .. } => format!(", yarn RoPE scaling (factor {factor})"),
        };
        if let Some((window, _)) = &self.sliding_window {
            let sliding = (0..self.num_layers).filter(|&layer| self.attention_window(layer).is_some()).count();
            note += &format!(", a sliding window of {window} tokens on {sliding} of {} layers", self.num_layers);
        }
        note
    }

    /// Every layer's [`Self::attention_window`].
    pub fn attention_windows(&self) -> Vec<Option<usize>> {
        (0..self.num_layers).map(|layer| self.attention_window(layer)).collect()
    }

    /// A causal-LM reward read from the logits of `ids` instead of id 0.
    pub fn with_reward_token_ids(mut self, ids: &[u32]) -> Result<Self> {
        if self.architecture.head != HeadKind::TokenLogits {
            bail!(
                "--reward-token-ids is for *ForCausalLM checkpoints; this is a {} with its own score head",
                self.architecture
            );
        }
        if ids.is_empty() {
            bail!("--reward-token-ids names no ids");
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            bail!("--reward-token-ids: {bad} is outside the vocabulary ({} ids)", self.vocab_size);
        }
        self.reward_token_ids = ids.to_vec();
        self.labels = token_labels(ids);
        Ok(self)
    }
}

/// A causal-LM reward's output names: `logit_<id>`.
fn token_labels(ids: &[u32]) -> Vec<String> {
    ids.iter().map(|id| format!("logit_{id}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"architectures": ["NemotronForSequenceClassification"], "hidden_size": 64,
               "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
               "intermediate_size": 176, "vocab_size": 32000, "norm_eps": 1e-5})
    }

    #[test]
    fn reads_both_config_generations() {
        let mut v5 = base();
        v5["rope_parameters"] = json!({"rope_theta": 10000.0, "rope_type": "default", "partial_rotary_factor": 0.5});
        v5["dtype"] = json!("bfloat16");
        let mut v4 = base();
        v4["rope_theta"] = json!(10000.0);
        v4["partial_rotary_factor"] = json!(0.5);
        v4["torch_dtype"] = json!("bfloat16");
        for config in [v5, v4] {
            let c = ModelConfig::from_json(&config).unwrap();
            assert_eq!((c.rotary_dim, c.head_dim, c.rope_theta), (8, 16, 10000.0));
            assert_eq!(c.dtype, "bfloat16");
            assert_eq!(c.labels, ["LABEL_0"]);
        }
    }

    #[test]
    fn unknown_architecture_is_named() {
        let mut c = base();
        c["architectures"] = json!(["GPT2ForSequenceClassification"]);
        let e = ModelConfig::from_json(&c).unwrap_err().to_string();
        assert!(e.contains("GPT2ForSequenceClassification") && e.contains("LlamaForSequenceClassification"), "{e}");
        let mut c = base();
        c["rope_scaling"] = json!({"rope_type": "longrope", "factor": 4.0});
        let e = ModelConfig::from_json(&c).unwrap_err().to_string();
        assert!(
            e.contains(
                "RoPE type \"longrope\" is not supported (steerlm applies default, dynamic, linear, llama3 and yarn)"
            ),
            "{e}"
        );
    }

    /// A Llama 3.1 reward model's config.json as its checkpoint ships it (Skywork-Reward-
    /// Llama-3.1-8B's fields, transformers 4.43), which steerlm refused before it applied
    /// `llama3`.
    #[test]
    fn a_config_that_is_not_an_object_says_so() {
        for (config, kind) in [(json!([]), "a list"), (json!("x"), "a string"), (json!(3), "a single value")] {
            let e = ModelConfig::from_json(&config).unwrap_err().to_string();
            assert!(
                e.contains(&format!("a JSON object of settings (`\"hidden_size\": 4096`, ...), not {kind}")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_llama31_reward_model_config_loads() {
        let config = json!({
            "architectures": ["LlamaForSequenceClassification"], "attention_bias": false, "attention_dropout": 0.0,
            "bos_token_id": 128000, "eos_token_id": 128009, "hidden_act": "silu", "hidden_size": 4096,
            "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
            "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
            "num_key_value_heads": 8, "pad_token_id": 128256, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
            "transformers_version": "4.43.4", "use_cache": true, "vocab_size": 128257
        });
        let c = ModelConfig::from_json(&config).unwrap();
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { original_context: 8192.0, .. }));
        assert_eq!(c.attention_note(), ", llama3 RoPE scaling (factor 8)");
        assert_eq!((c.max_positions, c.head_dim, c.rotary_dim, c.labels.len()), (131072, 128, 128, 1));
        assert_eq!(c.attention_windows(), [None; 32]);
    }

    /// Llama 3.1's `llama3` scaling in both config generations, `linear`, and their checks.
    #[test]
    fn rope_scaling_is_read_from_either_generation() {
        let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192});
        let want =
            RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: 8192.0 };
        let mut v4 = base();
        v4["rope_theta"] = json!(500000.0);
        v4["rope_scaling"] = llama3.clone();
        let mut v5 = base();
        v5["rope_parameters"] = llama3.clone();
        v5["rope_parameters"]["rope_theta"] = json!(500000.0);
        for c in [v4, v5] {
            let c = ModelConfig::from_json(&c).unwrap();
            assert_eq!((c.rope_scaling, c.rope_theta), (want, 500000.0));
        }
        // Without its own original context, transformers takes max_position_embeddings.
        let mut c = base();
        c["rope_scaling"] = llama3.clone();
        c["rope_scaling"].as_object_mut().unwrap().remove("original_max_position_embeddings");
        c["max_position_embeddings"] = json!(2048);
        let RopeScaling::Llama3 { original_context, .. } = ModelConfig::from_json(&c).unwrap().rope_scaling else {
            panic!("llama3")
        };
        assert_eq!(original_context, 2048.0);
        // ... and so it does when the block's is null.
        c["rope_scaling"]["original_max_position_embeddings"] = json!(null);
        let RopeScaling::Llama3 { original_context, .. } = ModelConfig::from_json(&c).unwrap().rope_scaling else {
            panic!("llama3")
        };
        assert_eq!(original_context, 2048.0);
        let mut c = base();
        c["rope_scaling"] = json!({"type": "linear", "factor": 4.0});
        assert_eq!(ModelConfig::from_json(&c).unwrap().rope_scaling, RopeScaling::Linear { factor: 4.0 });
        c["rope_scaling"] = json!(null);
        assert_eq!(ModelConfig::from_json(&c).unwrap().rope_scaling, RopeScaling::None);
        c["rope_scaling"] = json!("llama3");
        let e = ModelConfig::from_json(&c).unwrap_err().to_string();
        assert!(e.contains("`rope_scaling` must be an object or null, got \"llama3\""), "{e}");

        // YaRN: its defaults, the attention factor from the factor or from DeepSeek's mscales.
        let mut c = base();
        c["max_position_embeddings"] = json!(131072);
        c["rope_scaling"] = json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768});
        let RopeScaling::Yarn { factor, original_context, beta_fast, beta_slow, truncate, attention_factor } =
            ModelConfig::from_json(&c).unwrap().rope_scaling
        else {
            panic!("yarn")
        };
        assert_eq!((factor, original_context, beta_fast, beta_slow, truncate), (4.0, 32768.0, 32.0, 1.0, true));
        assert_eq!(attention_factor, 0.1 * 4f64.ln() + 1.0);
        c["rope_scaling"] = json!({"type": "yarn", "original_max_position_embeddings": 32768, "factor": null,
                                   "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 0, "truncate": false});
        let RopeScaling::Yarn { factor, beta_fast, truncate, attention_factor, .. } =
            ModelConfig::from_json(&c).unwrap().rope_scaling
        else {
            panic!("yarn")
        };
        assert_eq!(
            (factor, beta_fast, truncate, attention_factor),
            (4.0, 32.0, false, 1.0),
            "null factor: context ratio"
        );
        c["rope_scaling"]["truncate"] = json!("no");
        let e = ModelConfig::from_json(&c).unwrap_err().to_string();
        assert!(e.contains("`rope_scaling.truncate` must be true or false"), "{e}");

        for (field, value, error) in [
            ("factor", json!(0.0), "`rope_scaling.factor` must be a positive number, got 0.0"),
            ("low_freq_factor", json!("1"), "`rope_scaling.low_freq_factor` must be a positive number, got \"1\""),
            ("high_freq_factor", json!(1.0), "`rope_scaling.high_freq_factor` 1 must be more than `low_freq_factor` 1"),
        ] {
            let mut c = base();
            c["rope_scaling"] = llama3.clone();
            c["rope_scaling"][field] = value;
            let e = ModelConfig::from_json(&c).unwrap_err().to_string();
            assert!(e.contains(error), "{field}: {e}");
        }
    }

    #[test]
    fn the_table_and_config_decide_biases_heads_and_windows() {
        let mut c = base();
        c["hidden_act"] = json!("gelu_pytorch_tanh");
        let e = ModelConfig::from_json(&c).unwrap_err().to_string();
        assert!(e.contains("\"gelu_pytorch_tanh\" is not supported for NemotronForSequenceClassification"), "{e}");

        let mut c = base();
        c["architectures"] = json!(["Qwen2ForCausalLM"]);
        c["hidden_act"] = json!("silu");
        c["use_sliding_window"] = json!(false);
        c["sliding_window"] = json!(64);
        c["id2label"] = json!({"0": "ignored for a causal LM"});
        let q = ModelConfig::from_json(&c).unwrap();
        assert_eq!((q.qkv_bias, q.o_bias, q.mlp_bias), (true, false, false), "Qwen2 always has q/k/v biases");
        assert_eq!(
            (q.max_positions, q.reward_token_ids.clone(), q.labels.clone()),
            (4096, vec![0], vec!["logit_0".into()])
        );
        assert_eq!(q.attention_windows(), [None, None], "Qwen's window needs use_sliding_window");
        assert_eq!(q.with_reward_token_ids(&[3, 9]).unwrap().labels, ["logit_3", "logit_9"]);
        c["use_sliding_window"] = json!(true);
        c["max_window_layers"] = json!(1);
        assert_eq!(
            ModelConfig::from_json(&c).unwrap().attention_windows(),
            [None, Some(64)],
            "from max_window_layers on"
        );
        c["layer_types"] = json!(["sliding_attention", "full_attention"]);
        assert_eq!(ModelConfig::from_json(&c).unwrap().attention_windows(), [Some(64), None], "layer_types decides");
        c["sliding_window"] = json!(0);
        let e = ModelConfig::from_json(&c).unwrap_err().to_string();
        assert!(e.contains("`sliding_window` must be at least 1"), "{e}");

        // Mistral v0.1's window applies to every layer; texts still reach the context.
        let mut c = base();
        c["architectures"] = json!(["MistralForSequenceClassification"]);
        c["hidden_act"] = json!("silu");
        c["sliding_window"] = json!(64);
        c["attention_bias"] = json!(true);
        let m = ModelConfig::from_json(&c).unwrap();
        assert_eq!((m.max_positions, m.qkv_bias), (4096, false), "Mistral has no biases whatever the config says");
        assert_eq!(m.attention_windows(), [Some(64), Some(64)]);
        c["sliding_window"] = json!(null);
        assert_eq!(ModelConfig::from_json(&c).unwrap().attention_windows(), [None, None], "null turns it off");
        c.as_object_mut().unwrap().remove("sliding_window");
        c["max_position_embeddings"] = json!(32768);
        assert_eq!(ModelConfig::from_json(&c).unwrap().attention_windows(), [Some(4096); 2], "transformers' default");
        c["max_position_embeddings"] = json!(4096);
        assert_eq!(ModelConfig::from_json(&c).unwrap().attention_windows(), [None, None], "as long as the context");

        let mut c = base();
        c["attention_bias"] = json!("yes");
        assert!(ModelConfig::from_json(&c).unwrap_err().to_string().contains("`attention_bias` must be true or false"));
    }

    /// Gemma2's fields: scale, soft caps, `hidden_activation`, embedding scale, and a window
    /// that applies only when `layer_types` has a sliding layer.
    #[test]
    fn gemma2_fields_are_read_and_checked() {
        let gemma2 = || {
            json!({"architectures": ["Gemma2ForSequenceClassification"], "hidden_size": 64, "head_dim": 16,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                   "intermediate_size": 176, "vocab_size": 32000, "rms_norm_eps": 1e-6,
                   "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
                   "query_pre_attn_scalar": 144, "attn_logit_softcapping": 50.0,
                   "final_logit_softcapping": 30.0, "sliding_window": 64, "max_position_embeddings": 8192,
                   "layer_types": ["sliding_attention", "full_attention"]})
        };
        let c = ModelConfig::from_json(&gemma2()).unwrap();
        assert_eq!((c.attention_scale, c.attention_softcap), (1.0 / 12.0, Some(50.0)));
        assert_eq!(c.embedding_scale, 8.0);
        assert_eq!(c.final_softcap, None, "a classification head is not capped");
        assert_eq!(c.max_positions, 8192, "texts are cut to the context, not the window");
        assert_eq!(c.attention_windows(), [Some(64), None], "the sliding layer of layer_types");
        let mut v4 = gemma2();
        v4.as_object_mut().unwrap().remove("layer_types");
        v4["num_hidden_layers"] = json!(3);
        let c = ModelConfig::from_json(&v4).unwrap();
        assert_eq!(c.attention_windows(), [Some(64), None, Some(64)], "without layer_types, the even layers slide");
        assert_eq!(c.attention_note(), ", a sliding window of 64 tokens on 2 of 3 layers");
        for (types, error) in [
            (json!(["sliding_attention"]), "`layer_types` lists 1 layers, but num_hidden_layers is 2"),
            (json!(["full_attention", "chunked_attention"]), "`layer_types` entry 1 is \"chunked_attention\""),
            (json!("sliding_attention"), "`layer_types` must be a list"),
        ] {
            let mut c = gemma2();
            c["layer_types"] = types;
            let e = ModelConfig::from_json(&c).unwrap_err().to_string();
            assert!(e.contains(error), "{e}");
        }
        let mut causal = gemma2();
        causal["architectures"] = json!(["Gemma2ForCausalLM"]);
        assert_eq!(ModelConfig::from_json(&causal).unwrap().final_softcap, Some(30.0));

        let mut full = gemma2();
        full["layer_types"] = json!(["full_attention", "full_attention"]);
        assert_eq!(ModelConfig::from_json(&full).unwrap().attention_windows(), [None, None], "no layer slides");
        let mut uncapped = gemma2();
        uncapped["attn_logit_softcapping"] = json!(null);
        assert_eq!(ModelConfig::from_json(&uncapped).unwrap().attention_softcap, None);

        // Gemma 1's original configs say `gelu` (meaning the tanh approximation) beside a null
        // `hidden_activation`; Gemma2 reads `hidden_activation`, where `gelu` is exact GELU.
        let mut gemma = gemma2();
        gemma["architectures"] = json!(["GemmaForSequenceClassification"]);
        gemma["hidden_act"] = json!("gelu");
        gemma["hidden_activation"] = json!(null);
        let g = ModelConfig::from_json(&gemma).unwrap();
        assert_eq!((g.embedding_scale, g.architecture.family.sandwich_norms), (8.0, false));
        gemma["hidden_act"] = json!("gelu_new");
        let e = ModelConfig::from_json(&gemma).unwrap_err().to_string();
        assert!(e.contains("`hidden_act` \"gelu_new\" is not supported for GemmaForSequenceClassification"), "{e}");

        // Llama's defaults are untouched: head_dim^-0.5, no caps, unscaled embeddings.
        let mut llama = base();
        llama["architectures"] = json!(["LlamaForSequenceClassification"]);
        let l = ModelConfig::from_json(&llama).unwrap();
        assert_eq!((l.attention_scale, l.attention_softcap, l.embedding_scale), (0.25, None, 1.0));
        // ... also when its config carries Gemma2's fields or a partial rotary factor,
        // which transformers' Llama ignores.
        llama["attn_logit_softcapping"] = json!(0.5);
        llama["query_pre_attn_scalar"] = json!(4);
        llama["final_logit_softcapping"] = json!(0.01);
        llama["partial_rotary_factor"] = json!(0.5);
        llama["architectures"] = json!(["LlamaForCausalLM"]);
        let l = ModelConfig::from_json(&llama).unwrap();
        assert_eq!((l.attention_scale, l.attention_softcap, l.final_softcap), (0.25, None, None));
        assert_eq!(l.rotary_dim, l.head_dim);

        for (field, value, says) in [
            ("attn_logit_softcapping", json!(0.0), "`attn_logit_softcapping` must be a positive number or null"),
            ("attn_logit_softcapping", json!("50"), "`attn_logit_softcapping` must be a positive number"),
            ("final_logit_softcapping", json!(-30.0), "`final_logit_softcapping` must be a positive number"),
            ("query_pre_attn_scalar", json!(0), "`query_pre_attn_scalar` must be a positive number"),
            ("hidden_activation", json!("gelu"), "\"gelu\" is not supported for Gemma2ForSequenceClassification"),
        ] {
            let mut c = gemma2();
            c[field] = value.clone();
            let e = format!("{:#}", ModelConfig::from_json(&c).unwrap_err());
            assert!(e.contains(says), "{field} = {value}: {e:?} does not say {says:?}");
        }
    }

    /// Hostile values are refused by name instead of dividing by zero or sizing a huge
    /// allocation.
    #[test]
    fn hostile_values_are_named() {
        let cases: [(&str, Value, &str); 19] = [
            ("num_attention_heads", json!(0), "`num_attention_heads` must be at least 1"),
            ("num_key_value_heads", json!(0), "`num_key_value_heads` must be at least 1"),
            ("num_key_value_heads", json!(3), "not a multiple of num_key_value_heads 3"),
            ("hidden_size", json!(0), "`hidden_size` must be at least 1"),
            ("hidden_size", json!(66), "hidden_size 66 is not a multiple of num_attention_heads 4"),
            ("num_hidden_layers", json!(0), "`num_hidden_layers` must be at least 1"),
            ("num_hidden_layers", json!(-2), "`num_hidden_layers` must be a non-negative integer, got -2"),
            ("intermediate_size", json!(1.5), "`intermediate_size` must be a non-negative integer"),
            ("vocab_size", json!(0), "`vocab_size` must be at least 1"),
            ("head_dim", json!(0), "`head_dim` must be at least 1"),
            ("head_dim", json!(u64::MAX), "too large"),
            ("max_position_embeddings", json!(1_000_000_000_000u64), "rotary-table entries"),
            ("num_labels", json!(1_000_000_000_000u64), "`num_labels` 1000000000000 is more than"),
            ("norm_eps", json!(-1.0), "`norm_eps` must be a positive number"),
            // Not numbers: errors, not the defaults.
            ("norm_eps", json!("x"), "`norm_eps` must be a number, got \"x\""),
            ("rope_theta", json!("NaN"), "`rope_theta` must be a number"),
            // Out of f32's range, where the kernels use them.
            ("norm_eps", json!(1e300), "`norm_eps` must be a positive number within f32's range, got 1e+300"),
            ("norm_eps", json!(1e-50), "within f32's range"),
            ("rope_theta", json!(1e-300), "`rope_theta` must be a positive"),
        ];
        for (field, value, says) in cases {
            let mut c = base();
            c[field] = value.clone();
            let e = format!("{:#}", ModelConfig::from_json(&c).unwrap_err());
            assert!(e.contains(says), "{field} = {value}: {e:?} does not say {says:?}");
        }
        let mut c = base();
        c["rope_theta"] = json!(0.0);
        assert!(ModelConfig::from_json(&c).unwrap_err().to_string().contains("`rope_theta` must be a positive"));
        let mut c = base();
        c["partial_rotary_factor"] = json!(0.0);
        assert!(ModelConfig::from_json(&c).unwrap_err().to_string().contains("`partial_rotary_factor`"));
        let mut c = base();
        c["head_dim"] = json!(15);
        assert!(ModelConfig::from_json(&c).unwrap_err().to_string().contains("must be even"));
        let mut c = base();
        c["id2label"] = json!({"0": "a", "2": "b"});
        assert!(ModelConfig::from_json(&c).unwrap_err().to_string().contains("without gaps"));
        c["id2label"] = json!(["a", "b"]);
        assert!(ModelConfig::from_json(&c).unwrap_err().to_string().contains("`id2label` must be an object"));
        let mut c = base();
        c["architectures"] = json!("LlamaForSequenceClassification");
        let e = ModelConfig::from_json(&c).unwrap_err().to_string();
        assert!(e.contains("`architectures` must be a list of names, got \"LlamaForSequenceClassification\""), "{e}");
    }
}
