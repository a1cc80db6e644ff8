//! `steerlm annotate`: label every labeled turn of SFT records with a reward model's
//! clamped, rounded scores, exactly as NeMo-Aligner's `attribute_annotate.py` writes
//! them — concurrently, in input order, resumable, and safe against crashes.

pub mod client;
pub mod journal;

use crate::input::{InputPath, spawn_chunks};
use crate::model::{Device, LoadOptions, RewardModel};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use client::Scorer;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use journal::{Journal, record_key};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use steerlm_core::pyjson::{Ascii, write_value};
use steerlm_core::record::SftRecord;
use steerlm_core::template::{TemplateOptions, labeled_prefixes};

#[derive(Args, Debug)]
pub struct AnnotateArgs {
    /// SFT records to annotate (.jsonl or .jsonl.gz, `-` for stdin).
    #[arg(long, value_name = "IN")]
    input_file: PathBuf,
    /// Annotated records are appended here; records already in it are skipped.
    #[arg(long, value_name = "OUT")]
    output_file: PathBuf,
    /// Reward server host (with --port), as in the reference script.
    #[arg(long, default_value = "localhost")]
    host: String,
    #[arg(long, default_value_t = 5555)]
    port: u16,
    /// Model name on the server.
    #[arg(long = "model_name", alias = "model-name", default_value = "reward_model")]
    model_name: String,
    /// Server base URL (e.g. http://10.0.0.5:5555); repeat to spread the work over several.
    #[arg(long = "server", value_name = "URL")]
    servers: Vec<String>,
    /// Run the model in this process instead of asking a server.
    #[arg(long, value_name = "DIR", conflicts_with = "servers")]
    model: Option<PathBuf>,
    /// With --model: where it runs.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Records in flight at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    concurrency: usize,
    /// fsync the output every N records.
    #[arg(long, default_value_t = 16, value_name = "N")]
    sync_every: usize,
}

/// One record waiting for its scores.
struct Work {
    line: u64,
    record: Value,
    prefixes: Vec<String>,
    /// Indices of the turns the prefixes belong to.
    turns: Vec<usize>,
}

fn progress(quiet: bool) -> ProgressBar {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} records, {msg} [{elapsed_precise}, eta {eta}]")
            .expect("valid template"),
    );
    bar
}

pub fn run(args: &AnnotateArgs, quiet: bool) -> Result<()> {
    let started = Instant::now();
    let scorer = match &args.model {
        Some(dir) => {
            let model = RewardModel::load(dir, LoadOptions { device: args.device, add_bos: false })
                .with_context(|| format!("loading the model in {}", dir.display()))?;
            Scorer::Local(Arc::new(model))
        }
        None => {
            let servers = if args.servers.is_empty() {
                vec![format!("http://{}:{}", args.host, args.port)]
            } else {
                args.servers.clone()
            };
            Scorer::remote(&servers, &args.model_name)?
        }
    };
    let (mut journal, existing) = Journal::open(&args.output_file, args.sync_every)?;
    if existing.cut_bytes > 0 && !quiet {
        eprintln!(
            "{}: cut a torn last line ({} bytes) left by an interrupted run",
            args.output_file.display(),
            existing.cut_bytes
        );
    }

    // Read every record first (the reference does too): the key check needs them all,
    // and the count gives the progress bar its length.
    let input = InputPath(args.input_file.clone());
    let name = input.display();
    let mut work = Vec::new();
    let mut skipped = 0u64;
    for chunk in spawn_chunks(&input, 4 << 20, crate::input::DEFAULT_MAX_LINE_BYTES, &ProgressBar::hidden())? {
        let chunk = chunk?;
        for (i, raw) in steerlm_core::chunk::split_lines(&chunk.bytes).enumerate() {
            let line = chunk.first_line + i as u64;
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = std::str::from_utf8(raw).map_err(|e| anyhow!("{name}:{line}: invalid UTF-8 ({e})"))?;
            let record: Value = serde_json::from_str(text)
                .map_err(|e| anyhow!("{name}:{line}: {}", steerlm_core::chunk::json_error(&e)))?;
            let key = record_key(&record).map_err(|e| anyhow!("{name}:{line}: {e}"))?;
            if existing.keys.contains(&key) {
                skipped += 1;
                continue;
            }
            let parsed = SftRecord::parse(text).map_err(|e| anyhow!("{name}:{line}: {e}"))?;
            let prefixes =
                labeled_prefixes(&parsed, TemplateOptions::default()).map_err(|e| anyhow!("{name}:{line}: {e}"))?;
            let turns =
                parsed.conversations.iter().enumerate().filter(|(_, t)| t.label.is_present()).map(|(i, _)| i).collect();
            work.push(Work { line, record, prefixes, turns });
        }
    }
    if !quiet {
        eprintln!(
            "{} records already in {}, {} to annotate",
            existing.records.max(skipped),
            args.output_file.display(),
            work.len()
        );
    }

    let bar = progress(quiet);
    bar.set_length(work.len() as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let scorer = &scorer;
    let result: Result<(u64, u64)> = runtime.block_on(async {
        let mut results = stream::iter(work)
            .map(|mut item| async move {
                // The prefixes are only needed for the request: move them into it.
                let prefixes = std::mem::take(&mut item.prefixes);
                let scores = if prefixes.is_empty() { Ok(Vec::new()) } else { scorer.score(prefixes).await };
                (item, scores)
            })
            .buffered(args.concurrency.max(1));
        let (mut records, mut turns) = (0u64, 0u64);
        while let Some((mut item, scores)) = results.next().await {
            let scores = scores.with_context(|| format!("{name}:{}", item.line))?;
            let line = annotate_record(scorer, &mut item, &scores).with_context(|| format!("{name}:{}", item.line))?;
            journal.append(&line)?;
            records += 1;
            turns += scores.len() as u64;
            bar.inc(1);
            let seconds = started.elapsed().as_secs_f64();
            bar.set_message(format!("{turns} turns, {:.1} records/s", records as f64 / seconds));
        }
        journal.sync()?;
        Ok((records, turns))
    });
    bar.finish_and_clear();
    let (records, turns) = result?;
    if !quiet {
        eprintln!(
            "annotated {records} records ({turns} turns) into {} in {:.2} s",
            args.output_file.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Writes the scores into the record's labeled turns and renders it as the reference's
/// `json.dumps(record)` (ASCII-escaped, key order kept).
fn annotate_record(scorer: &Scorer, item: &mut Work, scores: &[Vec<f32>]) -> Result<Vec<u8>> {
    if scores.len() != item.turns.len() {
        bail!("{} scores for {} labeled turns", scores.len(), item.turns.len());
    }
    let turns = item.record.get_mut("conversations").and_then(Value::as_array_mut).expect("checked when read");
    for (&turn, scores) in item.turns.iter().zip(scores) {
        if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
            bail!("the reward model returned a non-finite score ({bad}) for turn {}", turn + 1);
        }
        let names = scorer.names(scores.len())?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let values: Vec<f64> = scores.iter().map(|&s| s as f64).collect();
        let label = steerlm_core::labels::encode_scores(&values, Some(&names)).map_err(|e| anyhow!(e))?;
        turns[turn]["label"] = Value::String(label);
    }
    let mut line = Vec::new();
    write_value(&mut line, &item.record, Ascii::Escaped).map_err(|e| anyhow!(e))?;
    line.push(b'\n');
    Ok(line)
}
