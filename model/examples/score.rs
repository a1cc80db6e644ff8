//! Embedding the reward model alone (no wasmtime, no HTTP server) in another Rust program.
//!
//!     cargo run -p steerlm-model --example score -- tests/fixtures/models/llama9 "Hello" "Hi there"
//!
//! Loads a Hugging Face checkpoint folder (`config.json`, `*.safetensors`, `tokenizer.json`)
//! and prints one line per text: each label and its score. The CPU path runs unless a
//! hardware GPU is present (`Device::Auto`); `Device::Wgpu` takes any adapter. The defaults
//! are `steerlm score`'s: no BOS added to plain texts, `Precision::Auto`.

use anyhow::{Result, bail};
use std::path::PathBuf;
use steerlm_model::{LoadOptions, RewardModel};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        bail!("usage: score MODEL_DIR TEXT [TEXT ...]");
    };
    let texts: Vec<String> = args.collect();
    if texts.is_empty() {
        bail!("give at least one text to score");
    }

    let model = RewardModel::load(&dir, LoadOptions::default())?;
    eprintln!("{} on {}", dir.display(), model.device_name());
    // One call scores every text; batching into forward passes happens inside.
    for (text, scores) in texts.iter().zip(model.score_texts(&texts)?) {
        let labeled: Vec<String> = model.labels().iter().zip(&scores).map(|(l, s)| format!("{l}:{s:.4}")).collect();
        println!("{text:?}\t{}", labeled.join(","));
    }
    Ok(())
}
