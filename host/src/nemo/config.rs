//! A NeMo `model_config.yaml` (Megatron-core GPT, as NeMo-Aligner's reward models have
//! it) read and mapped to the Hugging Face `config.json` of the same model, as NeMo's
//! `convert_llama_nemo_to_hf.py` and `convert_nemotron_nemo_to_hf.py` map it.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use steerlm_core::attributes::{ALL_ATTRIBUTES, HELPSTEER_ATTRIBUTES};
use yaml_rust2::{Yaml, YamlLoader};

/// Largest size or count read from `model_config.yaml`.
const MAX_SIZE: usize = 1 << 22;

/// Most a `model_config.yaml` may weigh once its aliases are expanded, in values plus the
/// bytes of its strings (a NeMo config: a few hundred values, some KiB).
const MAX_EXPANDED: u64 = 64 << 20;

/// What `text` weighs with every alias expanded: one per value (scalar, list, map) plus
/// each scalar's bytes, counted from the parser's events without building anything. The
/// loader copies an anchored value at each alias, so nine levels of nine aliases (a
/// "billion laughs"), or a thousand copies of a thousand copies of a long string, in a few
/// KiB would take gigabytes.
fn expanded_size(text: &str) -> Result<u64, yaml_rust2::ScanError> {
    #[derive(Default)]
    struct Counter {
        /// Values under each anchor, by anchor id.
        anchored: std::collections::HashMap<usize, u64>,
        /// The lists and maps being read: their anchors and values so far.
        open: Vec<(usize, u64)>,
        total: u64,
    }
    impl Counter {
        fn value(&mut self, count: u64, anchor: usize) {
            if anchor != 0 {
                self.anchored.insert(anchor, count);
            }
            match self.open.last_mut() {
                Some((_, inner)) => *inner = inner.saturating_add(count),
                None => self.total = self.total.saturating_add(count),
            }
        }
    }
    impl yaml_rust2::parser::EventReceiver for Counter {
        fn on_event(&mut self, event: yaml_rust2::Event) {
            use yaml_rust2::Event;
            match event {
                Event::Scalar(text, _, anchor, _) => self.value(1 + text.len() as u64, anchor),
                Event::Alias(id) => self.value(self.anchored.get(&id).copied().unwrap_or(1), 0),
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => self.open.push((anchor, 1)),
                Event::SequenceEnd | Event::MappingEnd => {
                    if let Some((anchor, count)) = self.open.pop() {
                        self.value(count, anchor);
                    }
                }
                _ => {}
            }
        }
    }
    let mut counter = Counter::default();
    yaml_rust2::parser::Parser::new_from_str(text).load(&mut counter, true)?;
    Ok(counter.total)
}

/// The decoder families NeMo reward models come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NemoFamily {
    /// RMSNorm, SwiGLU (fused `linear_fc1` = [gate; up]), rotary over the whole head.
    Llama,
    /// LayerNorm1P with bias, squared ReLU without gate, partial rotary.
    Nemotron,
}

#[derive(Clone, Debug)]
pub struct NemoConfig {
    pub family: NemoFamily,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub ffn_hidden_size: usize,
    pub num_heads: usize,
    pub num_query_groups: usize,
    pub head_dim: usize,
    pub norm_eps: f64,
    pub rotary_base: f64,
    pub rotary_percentage: f64,
    /// `scale_positional_embedding: true`: Megatron-core's Llama 3.1 RoPE scaling (factor
    /// 8, frequency factors 1 and 4 over an original 8,192 tokens, its fixed values), which
    /// transformers names `llama3`.
    pub llama3_rope_scaling: bool,
    pub max_positions: usize,
    /// Linear layers have biases.
    pub bias: bool,
    /// The reward head's outputs (`regression.num_attributes`).
    pub outputs: usize,
    pub tie_embeddings: bool,
    /// `tokenizer.model` in the config (`nemo:<file>` names a file in the checkpoint).
    pub tokenizer_model: Option<String>,
    /// A Hugging Face tokenizer (`library: huggingface`): its `type`, a hub id or the
    /// path it was read from when the checkpoint was converted. NeMo does not store it.
    pub hf_tokenizer: Option<String>,
    /// `tensor_model_parallel_size`: how many rank files a legacy checkpoint has.
    pub tensor_parallel: Option<usize>,
    /// The checkpoint's training precision (`bf16`, `16`, `32`), for the default dtype.
    pub precision: String,
}

/// YAML to JSON, keys as strings.
fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(text) => text.parse::<f64>().map_or(Value::Null, |v| json!(v)),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect::<Map<String, Value>>(),
        ),
        _ => Value::Null,
    }
}

impl NemoConfig {
    pub fn parse(text: &str) -> Result<Self> {
        let expanded = expanded_size(text).map_err(|e| anyhow!("not YAML: {e}"))?;
        if expanded > MAX_EXPANDED {
            bail!("its aliases expand to more than {} MiB of values (a NeMo config is a few KiB)", MAX_EXPANDED >> 20);
        }
        let docs = YamlLoader::load_from_str(text).map_err(|e| anyhow!("not YAML: {e}"))?;
        let root = docs.first().map(to_json).unwrap_or(Value::Null);
        // Some checkpoints nest the model section under `model:` (a full training config).
        let config = if root.get("num_layers").is_none() { root.get("model").cloned().unwrap_or(root) } else { root };
        if !config.is_object() {
            bail!("a NeMo model config is a mapping of settings (`num_layers: 32`, ...), not {}", json_kind(&config));
        }
        Self::from_json(&config)
    }

    fn from_json(c: &Value) -> Result<Self> {
        let count = |name: &str| -> Result<Option<usize>> {
            match c.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| anyhow!("`{name}` must be a positive integer, got {v}")),
            }
        };
        let required = |name: &str| count(name)?.ok_or_else(|| anyhow!("model_config.yaml has no `{name}`"));
        let number = |name: &str, default: f64| -> Result<f64> {
            match c.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| anyhow!("`{name}` must be a positive number, got {v}")),
            }
        };
        let text = |name: &str| c.get(name).and_then(Value::as_str).map(str::to_lowercase);
        if c.get("mcore_gpt").and_then(Value::as_bool) == Some(false) {
            bail!("`mcore_gpt: false`: legacy (non-Megatron-core) NeMo GPT models are not supported");
        }
        if let Some(kind) = text("position_embedding_type")
            && kind != "rope"
        {
            bail!("`position_embedding_type: {kind}` is not supported (rope only)");
        }
        if c.get("seq_len_interpolation_factor").is_some_and(|v| !v.is_null()) {
            bail!("`seq_len_interpolation_factor` (scaled RoPE) is not supported");
        }
        let normalization = text("normalization").unwrap_or_else(|| "layernorm".into());
        let activation = text("activation").unwrap_or_else(|| "gelu".into());
        let family = match (normalization.as_str(), activation.as_str()) {
            ("rmsnorm", "fast-swiglu" | "swiglu") => NemoFamily::Llama,
            ("layernorm1p", "squared-relu") => NemoFamily::Nemotron,
            (norm, act) => bail!(
                "normalization `{norm}` with activation `{act}` is not a supported architecture (rmsnorm + swiglu: Llama; layernorm1p + squared-relu: Nemotron-4)"
            ),
        };
        let hidden_size = required("hidden_size")?;
        let num_heads = required("num_attention_heads")?;
        let num_query_groups = count("num_query_groups")?.unwrap_or(num_heads);
        if num_heads % num_query_groups != 0 {
            bail!("num_attention_heads {num_heads} is not a multiple of num_query_groups {num_query_groups}");
        }
        let head_dim = match count("kv_channels")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => bail!("hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"),
        };
        // Sizes far beyond any model's (hidden 18432, ffn 73728, 96 heads for 340B), so
        // products of two can never overflow.
        let sizes = [
            ("num_layers", required("num_layers")?),
            ("hidden_size", hidden_size),
            ("ffn_hidden_size", required("ffn_hidden_size")?),
            ("num_attention_heads", num_heads),
            ("kv_channels", head_dim),
        ];
        for (name, value) in sizes {
            if value > MAX_SIZE {
                bail!("`{name}` {value} is larger than steerlm accepts ({MAX_SIZE})");
            }
        }
        let rotary_percentage = number("rotary_percentage", 1.0)?;
        if rotary_percentage > 1.0 {
            bail!("`rotary_percentage` must be at most 1, got {rotary_percentage}");
        }
        let tokenizer = |field: &str| c.get("tokenizer")?.get(field)?.as_str().map(str::to_owned);
        let tokenizer_model = tokenizer("model");
        let hf_tokenizer = tokenizer("type").filter(|_| tokenizer("library").as_deref() == Some("huggingface"));
        Ok(NemoConfig {
            family,
            num_layers: required("num_layers")?,
            hidden_size,
            ffn_hidden_size: required("ffn_hidden_size")?,
            num_heads,
            num_query_groups,
            head_dim,
            norm_eps: number("layernorm_epsilon", 1e-5)?,
            rotary_base: number("rotary_base", 10000.0)?,
            rotary_percentage,
            llama3_rope_scaling: match c.get("scale_positional_embedding") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => bail!("`scale_positional_embedding` must be true or false, got {other}"),
            },
            max_positions: count("max_position_embeddings")?.or(count("encoder_seq_length")?).unwrap_or(4096),
            bias: c.get("bias").and_then(Value::as_bool).unwrap_or(true),
            // NeMo-Aligner's regression reward models; the importer checks it against
            // `rm_head`'s rows.
            outputs: match c.get("regression").and_then(|r| r.get("num_attributes")) {
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| anyhow!("`regression.num_attributes` must be a positive integer, got {v}"))?,
                None => count("output_sequence_dim")?.unwrap_or(1),
            },
            tie_embeddings: c.get("share_embeddings_and_output_weights").and_then(Value::as_bool).unwrap_or(false),
            tokenizer_model,
            hf_tokenizer,
            tensor_parallel: count("tensor_model_parallel_size")?,
            precision: c
                .get("precision")
                .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                .unwrap_or_default(),
        })
    }

    /// The reward head's output names: SteerLM's 9 attributes, HelpSteer's 5, or
    /// `reward` / `LABEL_i`.
    pub fn labels(&self) -> Vec<String> {
        match self.outputs {
            9 => ALL_ATTRIBUTES.iter().map(|s| s.to_string()).collect(),
            5 => HELPSTEER_ATTRIBUTES.iter().map(|s| s.to_string()).collect(),
            1 => vec!["reward".to_owned()],
            n => (0..n).map(|i| format!("LABEL_{i}")).collect(),
        }
    }

    /// The Hugging Face `config.json` of the converted model.
    pub fn hf_config(&self, vocab_size: usize, dtype: &str, bos: Option<u32>, eos: Option<u32>) -> Value {
        let labels = self.labels();
        let id2label: Map<String, Value> = labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
        let label2id: Map<String, Value> = labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
        let (architecture, model_type, act, eps_name) = match self.family {
            NemoFamily::Llama => ("LlamaForSequenceClassification", "llama", "silu", "rms_norm_eps"),
            NemoFamily::Nemotron => ("NemotronForSequenceClassification", "nemotron", "relu2", "norm_eps"),
        };
        let mut config = json!({
            "architectures": [architecture],
            "model_type": model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.ffn_hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_query_groups,
            "head_dim": self.head_dim,
            "hidden_act": act,
            eps_name: self.norm_eps,
            "max_position_embeddings": self.max_positions,
            "rope_theta": self.rotary_base,
            "vocab_size": vocab_size,
            "attention_bias": self.bias,
            "mlp_bias": self.bias,
            "tie_word_embeddings": self.tie_embeddings,
            "id2label": id2label,
            "label2id": label2id,
            "num_labels": labels.len(),
            "torch_dtype": dtype,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        });
        if self.family == NemoFamily::Nemotron {
            config["partial_rotary_factor"] = json!(self.rotary_percentage);
        }
        if self.llama3_rope_scaling {
            config["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        }
        config
    }
}

/// Reads `model_config.yaml` text, naming `source` in errors.
/// What a JSON value is, for errors: "a list", "a number", ...
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

pub fn read(text: &[u8], source: &str) -> Result<NemoConfig> {
    let text = std::str::from_utf8(text).with_context(|| format!("{source} is not UTF-8"))?;
    NemoConfig::parse(text).with_context(|| format!("in {source}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = "mcore_gpt: true\nnum_layers: 2\nhidden_size: 32\nffn_hidden_size: 96\nnum_attention_heads: 4\nnum_query_groups: 2\nnormalization: rmsnorm\nactivation: fast-swiglu\nbias: false\nposition_embedding_type: rope\nrotary_base: 500000.0\nlayernorm_epsilon: 1.0e-05\nregression:\n  num_attributes: 9\ntokenizer:\n  library: sentencepiece\n  model: nemo:abc_tokenizer.model\n";

    /// Aliases are counted as the loader would expand them: a few in a real config pass;
    /// nine levels of nine (387 million values from 300 bytes), or a million copies of a
    /// 10 KB string, are refused unbuilt.
    #[test]
    fn a_config_that_is_not_a_mapping_says_so() {
        for (text, kind) in [("- 1\n- 2\n", "a list"), ("just words\n", "a string"), ("", "empty")] {
            let e = NemoConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("is a mapping of settings (`num_layers: 32`, ...), not {kind}")), "{e}");
        }
    }

    #[test]
    fn alias_bombs_are_refused_before_expanding() {
        let shared = format!("defaults: &d [1, 2, 3]\n{LLAMA}extra: [*d, *d]\n");
        // The map, key a, [1, 2] (3 values, 2 bytes), key b, and its two copies (1 + 5 + 5);
        // each value weighs one plus its bytes.
        assert_eq!(expanded_size("a: &x [1, 2]\nb: [*x, *x]\n").unwrap(), 1 + 2 + 5 + 2 + 11);
        NemoConfig::parse(&shared).unwrap();
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (level, previous) in
            ["b", "c", "d", "e", "f", "g", "h", "i"].iter().zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            bomb += &format!("{level}: &{level} [{}]\n", vec![format!("*{previous}"); 9].join(", "));
        }
        let error = NemoConfig::parse(&bomb).unwrap_err().to_string();
        assert!(error.contains("aliases expand to more than 64 MiB of values"), "{error}");
        let long = format!(
            "s: &s \"{}\"\nl: &l [{}]\nm: [{}]\n",
            "x".repeat(10_000),
            ["*s"; 1000].join(", "),
            ["*l"; 1000].join(", ")
        );
        assert!(NemoConfig::parse(&long).unwrap_err().to_string().contains("aliases expand"));
    }

    #[test]
    fn maps_a_llama_reward_model() {
        let c = NemoConfig::parse(LLAMA).unwrap();
        assert_eq!((c.family, c.head_dim, c.num_query_groups, c.bias), (NemoFamily::Llama, 8, 2, false));
        assert_eq!(c.tokenizer_model.as_deref(), Some("nemo:abc_tokenizer.model"));
        let hf = c.hf_config(32000, "bfloat16", Some(1), Some(2));
        assert_eq!(hf["architectures"][0], "LlamaForSequenceClassification");
        assert_eq!((hf["rope_theta"].as_f64(), hf["id2label"]["8"].as_str()), (Some(500000.0), Some("verbosity")));
        // The mapping is a config steerlm loads.
        let loaded = crate::model::config::ModelConfig::from_json(&hf).unwrap();
        assert_eq!(loaded.rope_scaling, crate::model::config::RopeScaling::None);

        // Llama 3.1 NeMo checkpoints: Megatron-core's fixed scaling, as transformers' llama3.
        let c = NemoConfig::parse(&format!("{LLAMA}scale_positional_embedding: true\n")).unwrap();
        let hf = c.hf_config(32000, "bfloat16", Some(1), Some(2));
        let loaded = crate::model::config::ModelConfig::from_json(&hf).unwrap();
        let want = crate::model::config::RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192.0,
        };
        assert_eq!(loaded.rope_scaling, want);
        let e = NemoConfig::parse(&format!("{LLAMA}scale_positional_embedding: 8\n")).unwrap_err();
        assert!(format!("{e:#}").contains("`scale_positional_embedding` must be true or false"), "{e:#}");
    }

    #[test]
    fn unsupported_models_are_named() {
        for (from, to, says) in [
            ("activation: fast-swiglu", "activation: gelu", "activation `gelu`"),
            ("position_embedding_type: rope", "position_embedding_type: learned_absolute", "learned_absolute"),
            ("num_query_groups: 2", "num_query_groups: 3", "not a multiple of num_query_groups 3"),
            ("num_layers: 2", "num_layers: -1", "`num_layers` must be a positive integer"),
            ("mcore_gpt: true", "mcore_gpt: false", "legacy"),
            ("num_layers: 2", "num_layers: 1000000000000", "`num_layers` 1000000000000 is larger than"),
            ("hidden_size: 32", "hidden_size: 1099511627776", "`hidden_size` 1099511627776 is larger than"),
        ] {
            let e = format!("{:#}", NemoConfig::parse(&LLAMA.replace(from, to)).unwrap_err());
            assert!(e.contains(says), "{to}: {e}");
        }
        assert!(NemoConfig::parse("a: [").is_err());
    }
}
