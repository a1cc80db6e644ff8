//! `demo`: the whole data path on a small embedded HelpSteer-shaped sample.

use super::{Context, convert, preprocess};
use crate::engine::LineConversion;
use anyhow::{Context as _, Result};
use clap::{Args, Parser};
use std::path::PathBuf;

const SAMPLE_TRAIN: &[u8] = include_bytes!("../../../tests/fixtures/conversions/helpsteer/raw/train.jsonl");
const SAMPLE_VALIDATION: &[u8] = include_bytes!("../../../tests/fixtures/conversions/helpsteer/raw/validation.jsonl");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for the sample and everything made from it.
    #[arg(long, default_value = "steerlm-demo", value_name = "DIR")]
    output_dir: PathBuf,
}

pub fn run(context: &Context, args: &DemoArgs) -> Result<()> {
    let dir = &args.output_dir;
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).with_context(|| format!("cannot create {}", raw.display()))?;
    crate::output::write_file(&raw.join("train.jsonl"), SAMPLE_TRAIN)?;
    crate::output::write_file(&raw.join("validation.jsonl"), SAMPLE_VALIDATION)?;
    let sft = dir.join("sft");
    let regression = dir.join("regression");
    std::fs::create_dir_all(&regression)?;

    // Run the real commands, parsed from their own command lines.
    let step = |argv: Vec<String>| -> Result<()> {
        context.say(format!("$ steerlm {}", argv.join(" ")));
        let cli = super::Cli::try_parse_from(std::iter::once("steerlm".to_owned()).chain(argv))?;
        match cli.command {
            super::Command::Preprocess(dataset) => preprocess::run(context, &dataset),
            super::Command::ToRegression(a) => convert::run(context, &a, LineConversion::Regression),
            other => unreachable!("the demo runs no {other:?}"),
        }
    };
    let s = |p: &PathBuf| p.display().to_string();
    step(vec!["preprocess".into(), "helpsteer".into(), "--input-dir".into(), s(&raw), "--output-dir".into(), s(&sft)])?;
    for split in ["train", "val"] {
        step(vec![
            "to-regression".into(),
            "--input-file".into(),
            s(&sft.join(format!("{split}.jsonl"))),
            "--output-file".into(),
            s(&regression.join(format!("{split}.jsonl"))),
        ])?;
    }
    crate::output::print(&format!(
        "sample rows:      {}\nSFT records:      {}\nregression lines: {}\n",
        raw.display(),
        sft.display(),
        regression.display()
    ))
}
