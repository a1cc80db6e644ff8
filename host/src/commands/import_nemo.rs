//! `steerlm import-nemo`: a NeMo reward-model checkpoint to a Hugging Face folder (see
//! [`crate::nemo`]).

use super::Context;
use crate::model::weights::DType;
use crate::nemo::import::{ImportOptions, import};
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ImportNemoArgs {
    /// A `.nemo` file (an uncompressed tar) or an extracted checkpoint folder:
    /// `model_config.yaml` + a `model_weights/` distributed checkpoint (zarr or
    /// torch_dist), or legacy `model_weights.ckpt` files (`mp_rank_NN/`,
    /// `tp_rank_NN_pp_rank_NNN/`).
    #[arg(value_name = "PATH")]
    input: PathBuf,
    /// The Hugging Face folder to write: config.json, model.safetensors (sharded past
    /// --max-shard-gb), tokenizer.json. It must not exist, or be an empty folder.
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
    /// The tokenizer when the checkpoint holds none (NeMo never stores Hugging Face
    /// tokenizers): a tokenizer.json, a SentencePiece tokenizer.model, or a Hugging Face
    /// tokenizer folder.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Stored dtype of the output (default: the checkpoint's).
    #[arg(long, value_enum)]
    dtype: Option<OutDtype>,
    /// Largest safetensors shard, in GB.
    #[arg(long, default_value_t = 5.0, value_name = "GB")]
    max_shard_gb: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutDtype {
    Bf16,
    F16,
    F32,
}

pub fn run(context: &Context, args: &ImportNemoArgs) -> Result<()> {
    if !(args.max_shard_gb.is_finite() && args.max_shard_gb > 0.0) {
        anyhow::bail!("--max-shard-gb must be a positive number, got {}", args.max_shard_gb);
    }
    let started = Instant::now();
    let options = ImportOptions {
        input: args.input.clone(),
        output_dir: args.output_dir.clone(),
        tokenizer: args.tokenizer.clone(),
        dtype: args.dtype.map(|d| match d {
            OutDtype::Bf16 => DType::BF16,
            OutDtype::F16 => DType::F16,
            OutDtype::F32 => DType::F32,
        }),
        max_shard_bytes: (args.max_shard_gb * 1e9) as usize,
    };
    let progress = context.progress("tensors");
    let imported = import(&options, &progress)?;
    progress.finish_and_clear();
    context.say(format!(
        "{} -> {}: {}, {} tensors, {:.1} MB, labels {} in {:.1} s",
        args.input.display(),
        args.output_dir.display(),
        imported.architecture,
        imported.tensors,
        imported.bytes as f64 / 1e6,
        imported.labels.join(","),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
