//! `preprocess helpsteer|helpsteer2|oasst`: raw datasets to `train.jsonl` and `val.jsonl`.

use super::Context;
use super::streaming::{ConvertArgs, rate};
use crate::input::{InputPath, find_split_file};
use crate::manifest::{Provenance, Role};
use crate::output::{Output, commit_all};
use crate::same_file::NamedFile;
use crate::sandbox::Kind;
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use steerlm_core::chunk::Split;
use steerlm_core::oasst;
use steerlm_core::preprocess::{PreprocessOptions, Source};

/// What every dataset is preprocessed into, inside `--output-dir`.
const SPLIT_FILES: [&str; 2] = ["train.jsonl", "val.jsonl"];

#[derive(Subcommand, Debug)]
pub enum Dataset {
    /// nvidia/HelpSteer: DIR holds train.jsonl[.gz] and validation.jsonl[.gz].
    Helpsteer(HelpSteerArgs),
    /// nvidia/HelpSteer2: DIR holds train/validation.jsonl[.gz], or preference.jsonl[.gz] with --preference.
    Helpsteer2(HelpSteer2Args),
    /// OpenAssistant message trees (2023-04-12_oasst_all.trees.jsonl.gz): shuffled and split as the reference does.
    Oasst(OasstArgs),
}

#[derive(Args, Debug)]
pub struct HelpSteerArgs {
    /// Folder with the dataset's files as it ships them.
    #[arg(long, value_name = "DIR")]
    pub input_dir: PathBuf,
    /// Folder for train.jsonl and val.jsonl (created if missing).
    #[arg(long, value_name = "OUT")]
    pub output_dir: PathBuf,
    #[command(flatten)]
    pub convert: ConvertArgs,
}

#[derive(Args, Debug)]
pub struct HelpSteer2Args {
    #[command(flatten)]
    common: HelpSteerArgs,
    /// Keep only the helpfulness attribute in labels.
    #[arg(long)]
    only_helpfulness: bool,
    /// Use the preference subset (preference.jsonl[.gz], routed by each row's `split`).
    #[arg(long)]
    preference: bool,
}

#[derive(Args, Debug)]
pub struct OasstArgs {
    /// The trees file, one tree per line (.jsonl or .jsonl.gz).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Folder for train.jsonl and val.jsonl (created if missing).
    #[arg(long, value_name = "OUT")]
    output_dir: PathBuf,
    /// Seed of Python's `random.seed` for the tree shuffle.
    #[arg(long, default_value_t = 10)]
    seed: u64,
    /// Share of shuffled trees that go to train.
    #[arg(long, default_value_t = 0.95, value_parser = parse_fraction)]
    train_fraction: f64,
    #[command(flatten)]
    convert: ConvertArgs,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

pub fn run(context: &Context, dataset: &Dataset) -> Result<()> {
    match dataset {
        Dataset::Helpsteer(args) => {
            let inputs = vec![
                (find_split_file(&args.input_dir, "train")?, Split::Train),
                (find_split_file(&args.input_dir, "validation")?, Split::Val),
            ];
            rows(context, args, Source::HelpSteer, PreprocessOptions::default(), inputs)
        }
        Dataset::Helpsteer2(args) => {
            let dir = &args.common.input_dir;
            let (source, inputs) = if args.preference {
                (Source::HelpSteer2Preference, vec![(find_split_file(dir, "preference")?, Split::Train)])
            } else {
                let inputs = vec![
                    (find_split_file(dir, "train")?, Split::Train),
                    (find_split_file(dir, "validation")?, Split::Val),
                ];
                (Source::HelpSteer2, inputs)
            };
            let options = PreprocessOptions { only_helpfulness: args.only_helpfulness };
            rows(context, &args.common, source, options, inputs)
        }
        Dataset::Oasst(args) => oasst(context, args),
    }
}

/// A dataset command's conversion options, input files (found as `run` finds them),
/// the flag that named them, and its output folder.
fn parts(dataset: &Dataset) -> Result<(&ConvertArgs, Vec<PathBuf>, &'static str, &Path)> {
    Ok(match dataset {
        Dataset::Helpsteer(args) => {
            (&args.convert, input_files(&args.input_dir, false)?, "--input-dir", args.output_dir.as_path())
        }
        Dataset::Helpsteer2(args) => {
            let common = &args.common;
            let inputs = input_files(&common.input_dir, args.preference)?;
            (&common.convert, inputs, "--input-dir", common.output_dir.as_path())
        }
        Dataset::Oasst(args) => (&args.convert, vec![args.input.clone()], "--input", args.output_dir.as_path()),
    })
}

/// `--manifest`: the dataset's input files and the two split files.
pub fn manifest_request(dataset: &Dataset) -> Result<Option<(PathBuf, Provenance)>> {
    let (convert, inputs, _, output_dir) = parts(dataset)?;
    let Some(path) = convert.manifest.clone() else { return Ok(None) };
    let mut provenance = convert.provenance(Kind::Preprocess);
    provenance.inputs = inputs;
    for name in SPLIT_FILES {
        provenance.outputs.push((Role::OutputDir, output_dir.join(name)));
    }
    Ok(Some((path, provenance)))
}

/// The dataset's input files, and the split files inside `--output-dir` with the
/// error report and manifest.
pub fn files(dataset: &Dataset) -> Result<super::Files> {
    let (convert, inputs, flag, output_dir) = parts(dataset)?;
    let mut outputs: Vec<NamedFile> =
        SPLIT_FILES.iter().map(|name| NamedFile::new("--output-dir", output_dir.join(name))).collect();
    outputs.extend(convert.output_files());
    Ok(super::Files { inputs: inputs.into_iter().map(|path| NamedFile::new(flag, path)).collect(), outputs })
}

fn input_files(dir: &Path, preference: bool) -> Result<Vec<PathBuf>> {
    let names: &[&str] = if preference { &["preference"] } else { &["train", "validation"] };
    names.iter().map(|name| Ok(find_split_file(dir, name)?.0)).collect()
}

fn split_outputs(dir: &Path) -> Result<(Output, Output)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let [train, val] = SPLIT_FILES;
    Ok((Output::create(&dir.join(train))?, Output::create(&dir.join(val))?))
}

/// HelpSteer-style rows: each input file streams into train and/or val.
pub fn rows(
    context: &Context,
    args: &HelpSteerArgs,
    source: Source,
    options: PreprocessOptions,
    inputs: Vec<(InputPath, Split)>,
) -> Result<()> {
    let started = Instant::now();
    let mut bad = args.convert.bad_records()?;
    let mut converter = args.convert.backend(context)?.row_converter(source, options)?;
    let (mut train, mut val) = split_outputs(&args.output_dir)?;
    let (mut records, mut train_lines, mut val_lines, mut bytes) = (0, 0, 0, 0);
    for (input, split) in inputs {
        let progress = context.progress(&format!("{split:?}").to_lowercase());
        for chunk in context.chunks(&input, args.convert.chunk_bytes(), &progress)? {
            let chunk = chunk?;
            bytes += chunk.bytes.len() as u64;
            let out = converter.convert(&chunk.bytes, chunk.first_line, split)?;
            bad.handle(&input.display(), out.errors)?;
            train.write_all(&out.train)?;
            val.write_all(&out.val)?;
            records += out.records_in;
            train_lines += out.train_lines;
            val_lines += out.val_lines;
        }
        progress.finish_and_clear();
    }
    let (train_name, val_name) = (train.name(), val.name());
    commit_all(vec![train, val])?;
    bad.finish()?;
    context.say(format!(
        "{records} rows -> {train_lines} records in {train_name}, {val_lines} in {val_name} ({})",
        rate(bytes, started)
    ));
    Ok(())
}

/// OpenAssistant: convert every tree into a spool file, remembering where each tree's
/// records are, then write them out in the reference's shuffled order. Memory holds
/// only the byte ranges, whatever the number of trees.
fn oasst(context: &Context, args: &OasstArgs) -> Result<()> {
    let started = Instant::now();
    let input = InputPath(args.input.clone());
    let mut bad = args.convert.bad_records()?;
    let mut converter = args.convert.backend(context)?.tree_converter()?;
    let (mut train, mut val) = split_outputs(&args.output_dir)?;

    let spool_file = tempfile::tempfile_in(&args.output_dir)
        .with_context(|| format!("cannot create a scratch file in {}", args.output_dir.display()))?;
    let mut spool = BufWriter::with_capacity(1 << 20, spool_file);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut spooled = 0u64;
    let mut bytes = 0u64;
    let progress = context.progress("trees");
    for chunk in context.chunks(&input, args.convert.chunk_bytes(), &progress)? {
        let chunk = chunk?;
        bytes += chunk.bytes.len() as u64;
        let out = converter.convert(&chunk.bytes, chunk.first_line)?;
        bad.handle(&input.display(), out.errors)?;
        ranges.extend(oasst::tree_ranges(&out.tree_ends, spooled));
        spool.write_all(&out.output).context("cannot write the scratch file")?;
        spooled += out.output.len() as u64;
    }
    progress.finish_and_clear();

    let count = u32::try_from(ranges.len()).map_err(|_| anyhow::anyhow!("more than 2^32 trees"))?;
    let order = converter.shuffle_order(count, args.seed)?;
    let train_count = converter.train_count(u64::from(count), args.train_fraction)? as usize;
    let split = oasst::TreeSplit::checked(ranges.len(), order, train_count)
        .map_err(|e| anyhow::anyhow!("the preprocess component returned an inconsistent shuffle: {e}"))?;
    let mut spool = spool.into_inner().map_err(|e| e.into_error()).context("cannot write the scratch file")?;
    let mut buffer = Vec::new();
    let (mut train_lines, mut val_lines) = (0, 0);
    for (tree, to_train) in split.destinations() {
        let (start, end) = ranges[tree];
        buffer.resize((end - start) as usize, 0);
        spool.seek(SeekFrom::Start(start))?;
        spool.read_exact(&mut buffer).context("cannot read the scratch file")?;
        let lines = buffer.iter().filter(|&&b| b == b'\n').count();
        if to_train {
            train.write_all(&buffer)?;
            train_lines += lines;
        } else {
            val.write_all(&buffer)?;
            val_lines += lines;
        }
    }
    let (train_name, val_name) = (train.name(), val.name());
    commit_all(vec![train, val])?;
    bad.finish()?;
    context.say(format!(
        "{count} trees ({train_count} train) -> {train_lines} records in {train_name}, {val_lines} in {val_name} ({})",
        rate(bytes, started)
    ));
    Ok(())
}
