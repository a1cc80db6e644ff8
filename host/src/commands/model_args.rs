//! The flags that say how a reward model loads, shared by `score`, `serve` and
//! `annotate --model`.

use crate::model::{Device, LoadOptions, Precision};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Where the forward pass runs.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Arithmetic of the wgpu path: `auto` uses tensor cores (f16 inputs, f32
    /// accumulation) when a hardware adapter has them, `f32` is the exact path, `f16`
    /// demands tensor cores (software adapters' emulated ones included) or fails.
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    pub precision: Precision,
    /// Prepend the BOS token to plain texts (the reference server adds none; chat
    /// templates add their own).
    #[arg(long)]
    pub add_bos: bool,
    /// For a `*ForCausalLM` reward model: the vocabulary ids whose logits at the last
    /// token are the scores (default `0`, the convention of NVIDIA's
    /// Llama-3.1-Nemotron-70B-Reward-HF).
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',', num_args = 1..)]
    pub reward_token_ids: Option<Vec<u32>>,
}

impl ModelArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            device: self.device,
            add_bos: self.add_bos,
            precision: self.precision,
            reward_token_ids: self.reward_token_ids.clone(),
        }
    }
}
