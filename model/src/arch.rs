//! Every architecture steerlm runs, as data: one row per decoder family saying how it
//! differs from Llama, and the head a checkpoint puts on top. The CPU and wgpu paths and
//! the tensor layout read these fields; nothing else names an architecture.
//!
//! An `architectures` value is `<Family>For<Head>`: `Qwen3ForSequenceClassification`,
//! `LlamaForCausalLM`, ...

use std::fmt;

/// The normalisation before attention, before the MLP and at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `x / sqrt(mean(x^2) + eps) * w`.
    Rms,
    /// Nemotron's LayerNorm1P: `(x - mean) / sqrt(var + eps) * (1 + w) + b`.
    LayerNorm1P,
    /// Gemma's RMSNorm: `x / sqrt(mean(x^2) + eps) * (1 + w)`. The backends are given
    /// `1 + w` (computed once, in f32, as transformers does) and run [`NormKind::Rms`].
    RmsUnitOffset,
}

/// The feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(silu(gate(x)) * up(x))`.
    SiluGated,
    /// `down(relu(up(x))^2)`, no gate (Nemotron).
    SquaredRelu,
    /// `down(gelu_tanh(gate(x)) * up(x))`, GELU's tanh approximation (Gemma).
    GeluTanhGated,
}

impl MlpKind {
    /// The `hidden_act` / `hidden_activation` values meaning this MLP's activation.
    pub fn activation_names(self) -> &'static [&'static str] {
        match self {
            MlpKind::SiluGated => &["silu", "swish"],
            MlpKind::SquaredRelu => &["relu2"],
            MlpKind::GeluTanhGated => &["gelu_pytorch_tanh"],
        }
    }

    /// Whether a gate projection multiplies into the up projection.
    pub fn gated(self) -> bool {
        self != MlpKind::SquaredRelu
    }
}

/// Which linear layers carry a bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Biases {
    /// q, k and v always have one, o never (Qwen2).
    QkvAlways,
    /// As config.json says: `attention_bias` for q, k, v and o, `mlp_bias` for the MLP
    /// (both false when absent).
    FromConfig,
    /// None at all (Mistral has no such config fields).
    Never,
}

/// Which layers attend only to the last `sliding_window` keys, by transformers' rules for
/// each family (a query at position i sees keys i - window + 1 ..= i).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sliding {
    /// No layer slides, whatever config.json says (Llama, Nemotron, Gemma).
    Never,
    /// Every layer, when `sliding_window` is a number (4096 when absent; null turns it
    /// off); `layer_types` is ignored (Mistral).
    EveryLayer,
    /// Only with `use_sliding_window: true`: the sliding layers of `layer_types`, else
    /// those from `max_window_layers` (28 when absent) on (Qwen2, Qwen3).
    Opted,
    /// The sliding layers of `layer_types`, else the even-numbered ones (Gemma2).
    Alternating,
}

/// What turns the last token's hidden state into scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// `*ForSequenceClassification`: `score.weight` `[labels, hidden]`, one output per
    /// attribute (SteerLM, HelpSteer, Skywork, ...).
    Regression,
    /// `*ForCausalLM` used as a reward model: the logits of chosen vocabulary ids
    /// (`--reward-token-ids`, default 0 as NVIDIA's Nemotron-70B-Reward reads), from the
    /// rows of `lm_head.weight`, or of the embedding when the two are tied.
    TokenLogits,
}

/// A decoder family and how it departs from Llama.
#[derive(Debug, PartialEq)]
pub struct Family {
    /// The prefix of its `architectures` values.
    pub name: &'static str,
    pub norm: NormKind,
    pub mlp: MlpKind,
    pub biases: Biases,
    /// Per-head RMSNorm on queries and keys after their projections, before rotary
    /// (`self_attn.q_norm` / `k_norm`, `[head_dim]`).
    pub qk_norm: bool,
    /// Gemma2's "sandwich": the attention output and the MLP output are normalised
    /// before they join the residual stream (`post_attention_layernorm`,
    /// `post_feedforward_layernorm`), and the MLP's input norm is `pre_feedforward_layernorm`.
    pub sandwich_norms: bool,
    /// Embeddings are multiplied by `sqrt(hidden_size)` (Gemma).
    pub scaled_embedding: bool,
    /// `hidden_act: "gelu"` also means the tanh approximation: Gemma's original configs say
    /// `gelu`, and transformers reads it as `gelu_pytorch_tanh`.
    pub legacy_gelu: bool,
    pub sliding: Sliding,
    /// Gemma2's attention: scores scaled by `query_pre_attn_scalar^-0.5` and soft-capped
    /// by `attn_logit_softcapping`, a causal LM's logits by `final_logit_softcapping`.
    /// Elsewhere transformers ignores these fields, and so do we.
    pub soft_capping: bool,
    /// Only the first `partial_rotary_factor` of each head rotates (Nemotron's 0.5).
    /// Elsewhere transformers' default RoPE ignores the field, and so do we.
    pub partial_rotary: bool,
}

impl Family {
    /// Whether config.json's activation name means this family's MLP activation.
    pub fn accepts_activation(&self, name: &str) -> bool {
        self.mlp.activation_names().contains(&name) || (self.legacy_gelu && name == "gelu")
    }
}

/// The table.
pub const FAMILIES: [Family; 7] = [
    Family { name: "Llama", ..LLAMA },
    Family { name: "Mistral", biases: Biases::Never, sliding: Sliding::EveryLayer, ..LLAMA },
    Family { name: "Qwen2", biases: Biases::QkvAlways, sliding: Sliding::Opted, ..LLAMA },
    Family { name: "Qwen3", qk_norm: true, sliding: Sliding::Opted, ..LLAMA },
    Family { name: "Nemotron", norm: NormKind::LayerNorm1P, mlp: MlpKind::SquaredRelu, partial_rotary: true, ..LLAMA },
    Family {
        name: "Gemma",
        norm: NormKind::RmsUnitOffset,
        mlp: MlpKind::GeluTanhGated,
        scaled_embedding: true,
        legacy_gelu: true,
        ..LLAMA
    },
    // Its soft caps and `query_pre_attn_scalar` are read from config.json (see `ModelConfig`).
    Family {
        name: "Gemma2",
        norm: NormKind::RmsUnitOffset,
        mlp: MlpKind::GeluTanhGated,
        sandwich_norms: true,
        scaled_embedding: true,
        sliding: Sliding::Alternating,
        soft_capping: true,
        ..LLAMA
    },
];

/// The baseline the table departs from.
const LLAMA: Family = Family {
    name: "Llama",
    norm: NormKind::Rms,
    mlp: MlpKind::SiluGated,
    biases: Biases::FromConfig,
    qk_norm: false,
    sandwich_norms: false,
    scaled_embedding: false,
    legacy_gelu: false,
    sliding: Sliding::Never,
    soft_capping: false,
    partial_rotary: false,
};

/// The heads, by the suffix of an `architectures` value.
const HEADS: [(&str, HeadKind); 2] =
    [("ForSequenceClassification", HeadKind::Regression), ("ForCausalLM", HeadKind::TokenLogits)];

/// One `architectures` value steerlm runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Architecture {
    pub family: &'static Family,
    pub head: HeadKind,
}

impl Architecture {
    /// The architecture named `name` (`LlamaForCausalLM`), if steerlm runs it.
    pub fn from_name(name: &str) -> Option<Self> {
        let (suffix, head) = HEADS.iter().find(|(suffix, _)| name.ends_with(suffix))?;
        let family_name = &name[..name.len() - suffix.len()];
        let family = FAMILIES.iter().find(|f| f.name == family_name)?;
        Some(Architecture { family, head: *head })
    }

    /// Every name [`Architecture::from_name`] accepts.
    pub fn supported() -> Vec<String> {
        HEADS.iter().flat_map(|(suffix, _)| FAMILIES.iter().map(move |f| format!("{}{suffix}", f.name))).collect()
    }

    pub fn norm(self) -> NormKind {
        self.family.norm
    }

    pub fn mlp(self) -> MlpKind {
        self.family.mlp
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = HEADS.iter().find(|(_, head)| *head == self.head).map_or("", |(suffix, _)| suffix);
        write!(f, "{}{suffix}", self.family.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_the_table() {
        let names = Architecture::supported();
        assert_eq!(names.len(), FAMILIES.len() * HEADS.len());
        for name in &names {
            assert_eq!(Architecture::from_name(name).unwrap().to_string(), *name);
        }
        let qwen3 = Architecture::from_name("Qwen3ForSequenceClassification").unwrap();
        assert!(qwen3.family.qk_norm && qwen3.head == HeadKind::Regression);
        let nemotron = Architecture::from_name("NemotronForCausalLM").unwrap();
        assert_eq!(
            (nemotron.norm(), nemotron.mlp(), nemotron.head),
            (NormKind::LayerNorm1P, MlpKind::SquaredRelu, HeadKind::TokenLogits)
        );
        for unknown in ["GPT2ForSequenceClassification", "LlamaForTokenClassification", "Llama", ""] {
            assert!(Architecture::from_name(unknown).is_none(), "{unknown}");
        }
    }
}
