//! `steerlm stats`: counts, label histograms and text lengths of a data file.

use super::Context;
use crate::input::InputPath;
use crate::stats::{self, plot};
use anyhow::{Result, anyhow};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// SFT, annotated or regression JSONL (.jsonl or .jsonl.gz; `-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub input_file: PathBuf,
    /// Also draw one histogram per attribute into OUT (.svg or .png).
    #[arg(long, value_name = "OUT")]
    pub plot: Option<PathBuf>,
    /// Picture size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1200x900", value_parser = parse_size, value_name = "WxH")]
    pub plot_size: (u32, u32),
    /// A checkpoint folder (or any folder with a tokenizer.json): also count tokens.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// How to print the numbers.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let parsed = text.split_once(['x', 'X']).and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
    match parsed {
        Some((w, h)) if (200..=8000).contains(&w) && (200..=8000).contains(&h) => Ok((w, h)),
        _ => Err(format!("{text:?}: expected WIDTHxHEIGHT, each 200 to 8000 pixels")),
    }
}

pub fn run(context: &Context, args: &StatsArgs) -> Result<()> {
    if let Some(plot) = &args.plot {
        plot::check_extension(plot)?;
    }
    let tokenizer = match &args.model {
        Some(dir) => Some(load_tokenizer(dir)?),
        None => None,
    };
    let progress = context.progress("reading");
    let stats =
        stats::compute(&InputPath(args.input_file.clone()), tokenizer.as_ref(), context.max_line_bytes, &progress)?;
    match args.format {
        Format::Table => crate::output::print(&stats::table(&stats))?,
        Format::Json => crate::output::print(&format!("{}\n", serde_json::to_string_pretty(&stats)?))?,
    }
    if let Some(path) = &args.plot {
        let title = format!("{} ({} labeled turns)", stats.file, stats.labeled_turns);
        let histograms: Vec<(&str, [u64; 6])> = stats.histograms.iter().map(|(a, h)| (a.as_str(), *h)).collect();
        plot::draw_histograms(path, &title, &histograms, args.plot_size)?;
        context.say(format!("plot: {}", path.display()));
    }
    Ok(())
}

fn load_tokenizer(dir: &std::path::Path) -> Result<tokenizers::Tokenizer> {
    let path = if dir.is_dir() { dir.join("tokenizer.json") } else { dir.to_owned() };
    tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow!("cannot load {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_within_bounds() {
        assert_eq!(parse_size("800x600"), Ok((800, 600)));
        assert!(parse_size("10x10").is_err());
        assert!(parse_size("800").is_err());
    }
}
