//! `steerlm annotate`: label every labeled turn of SFT records with a reward model's
//! clamped, rounded scores, exactly as NeMo-Aligner's `attribute_annotate.py` writes
//! them: concurrently, in input order, streaming, resumable, and safe against crashes.
//!
//! A reader thread parses the input (and, when resuming, checks the output already
//! written against it); records flow through a bounded queue to up to `--concurrency`
//! scoring requests at once, and come out in input order into the [`Journal`].

pub mod client;
pub mod journal;
pub mod resume;
pub mod triton;

use crate::input::{InputPath, spawn_chunks};
use crate::model::{Device, LoadOptions, Precision, RewardModel};
use crate::same_file::NamedFile;
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use client::Scorer;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use journal::Journal;
use resume::ResumeMode;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use steerlm_core::pyjson::Ascii;
use steerlm_core::pyvalue::PyValue;
use steerlm_core::record::SftRecord;
use steerlm_core::template::{TemplateOptions, labeled_prefixes, labeled_turns};

#[derive(Args, Debug)]
pub struct AnnotateArgs {
    /// SFT records to annotate (.jsonl or .jsonl.gz, `-` for stdin).
    #[arg(long, value_name = "IN")]
    input_file: PathBuf,
    /// Annotated records are appended here, in input order. An existing file is resumed:
    /// see --resume-by.
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
    /// Seconds one request to a server may take (connecting, sending, waiting for the
    /// model, reading the answer) before it counts as failed and is retried.
    #[arg(long, default_value_t = 600, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: u64,
    /// Run the model in this process instead of asking a server.
    #[arg(long, value_name = "DIR", conflicts_with = "servers")]
    model: Option<PathBuf>,
    /// With --model: where it runs.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Arithmetic of the wgpu path: `auto` uses tensor cores (f16 inputs, f32
    /// accumulation) when the adapter has them, `f32` is the exact path.
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    precision: Precision,
    /// Records in flight at once.
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    concurrency: usize,
    /// fsync the output every N records.
    #[arg(long, default_value_t = 16, value_name = "N")]
    sync_every: usize,
    /// How to resume into an output that already holds records. `position` (default):
    /// its lines must be the first input records' annotations, and the run continues
    /// after them. `key`: NeMo-Aligner's rule, for outputs its annotator wrote: skip
    /// input records whose turn values (concatenated) are already in the output.
    #[arg(long, value_enum, default_value_t = ResumeMode::Position, value_name = "MODE")]
    resume_by: ResumeMode,
    /// Shorthand for --resume-by key.
    #[arg(long, conflicts_with = "resume_by")]
    resume_by_key: bool,
}

/// One record waiting for its scores.
struct Work {
    line: u64,
    /// The record as read, big integers and key order intact.
    record: PyValue,
    prefixes: Vec<String>,
    /// Indices of the turns the prefixes belong to.
    turns: Vec<usize>,
}

/// What the reader needs to skip the records an earlier run wrote.
struct Resume {
    /// The output, when it already holds records.
    existing: Option<PathBuf>,
    mode: ResumeMode,
    max_line_bytes: usize,
}

/// How the run went so far, shared with the reader thread.
#[derive(Default)]
struct Counts {
    kept: AtomicU64,
}

fn progress(quiet: bool) -> ProgressBar {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} of the input, {msg} [{elapsed_precise}, eta {eta}]",
        )
        .expect("valid template"),
    );
    bar
}

/// The files `annotate` reads and writes, named by their flags, for the overlap check
/// every command makes before it opens anything for writing.
pub fn files(args: &AnnotateArgs) -> (Vec<NamedFile>, Vec<NamedFile>) {
    let inputs = [NamedFile::new("--input-file", &args.input_file)];
    let model = args.model.iter().map(|dir| NamedFile::new("--model", dir));
    (inputs.into_iter().chain(model).collect(), vec![NamedFile::new("--output-file", &args.output_file)])
}

/// Runs `annotate`; `max_line_bytes` bounds one input line (`--max-line-mb`).
pub fn run(args: &AnnotateArgs, quiet: bool, max_line_bytes: usize) -> Result<()> {
    let started = Instant::now();
    let mode = if args.resume_by_key { ResumeMode::Key } else { args.resume_by };
    let input = InputPath(args.input_file.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let scorer = match &args.model {
        Some(dir) => {
            let model =
                RewardModel::load(dir, LoadOptions { device: args.device, add_bos: false, precision: args.precision })
                    .with_context(|| format!("loading the model in {}", dir.display()))?;
            Scorer::Local(Arc::new(model))
        }
        None => {
            let servers = if args.servers.is_empty() {
                vec![format!("http://{}:{}", args.host, args.port)]
            } else {
                args.servers.clone()
            };
            runtime.block_on(Scorer::remote(&servers, &args.model_name, Duration::from_secs(args.request_timeout)))?
        }
    };
    let (mut journal, previous) = Journal::open(&args.output_file, args.sync_every)?;
    if previous.cut_bytes > 0 && !quiet {
        eprintln!(
            "{}: a torn last line ({} bytes) left by an interrupted run is cut before anything is written",
            args.output_file.display(),
            previous.cut_bytes
        );
    }

    let bar = progress(quiet);
    let counts = Arc::new(Counts::default());
    let queue = args.concurrency.max(1) * 2;
    let existing = previous.resumable.then(|| args.output_file.clone());
    let chunks = spawn_chunks(&input, 4 << 20, max_line_bytes, &bar)?;
    let resume = Resume { existing, mode, max_line_bytes };
    let records = spawn_reader(input.clone(), chunks, resume, queue, Arc::clone(&counts))?;
    let name = &input.display();
    let scorer = &scorer;
    let result: Result<(u64, u64)> = runtime.block_on(async {
        let results = records
            .map(|work| async move {
                let mut item = work?;
                // The prefixes are only needed for the request: move them into it.
                let prefixes = std::mem::take(&mut item.prefixes);
                let scores = if prefixes.is_empty() { Ok(Vec::new()) } else { scorer.score(prefixes).await };
                let scores = scores.with_context(|| format!("{name}:{}", item.line))?;
                anyhow::Ok((item, scores))
            })
            .buffered(args.concurrency.max(1));
        let mut results = std::pin::pin!(results);
        let (mut records, mut turns) = (0u64, 0u64);
        while let Some(result) = results.next().await {
            let (mut item, scores) = result?;
            let line = annotate_record(scorer, &mut item, &scores).with_context(|| format!("{name}:{}", item.line))?;
            journal.append(&line)?;
            records += 1;
            turns += scores.len() as u64;
            let seconds = started.elapsed().as_secs_f64();
            bar.set_message(format!("{records} records, {turns} turns, {:.1} records/s", records as f64 / seconds));
        }
        journal.cut_torn_tail()?;
        journal.sync()?;
        Ok((records, turns))
    });
    bar.finish_and_clear();
    let kept = counts.kept.load(Ordering::Relaxed);
    let (records, turns) = result.inspect_err(|_| {
        if !quiet && kept > 0 {
            eprintln!("{kept} records were already in {}", args.output_file.display());
        }
    })?;
    if !quiet {
        eprintln!(
            "annotated {records} records ({turns} turns) into {} in {:.2} s{}",
            args.output_file.display(),
            started.elapsed().as_secs_f64(),
            if kept > 0 { format!("; {kept} records were already there") } else { String::new() }
        );
        let exceeded = scorer.exceeded();
        if exceeded > 0 {
            eprintln!("warning: the server cut {exceeded} texts to the model's context before scoring them");
        }
    }
    Ok(())
}

/// Reads, parses and (when resuming) skips input records on a thread of its own; the
/// records to annotate come out of the returned stream, at most `queue` ahead.
fn spawn_reader(
    input: InputPath,
    chunks: std::sync::mpsc::Receiver<Result<crate::input::Chunk>>,
    resume: Resume,
    queue: usize,
    counts: Arc<Counts>,
) -> Result<impl futures::Stream<Item = Result<Work>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Work>>(queue);
    std::thread::Builder::new().name("steerlm-annotate-reader".into()).spawn(move || {
        if let Err(e) = read_records(&input, chunks, &resume, &counts, &sender) {
            let _ = sender.blocking_send(Err(e));
        }
    })?;
    Ok(stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) }))
}

fn read_records(
    input: &InputPath,
    chunks: std::sync::mpsc::Receiver<Result<crate::input::Chunk>>,
    resume: &Resume,
    counts: &Counts,
    sender: &tokio::sync::mpsc::Sender<Result<Work>>,
) -> Result<()> {
    let name = input.display();
    let existing = resume.existing.as_deref();
    let keys = match (existing, resume.mode) {
        (Some(path), ResumeMode::Key) => Some(resume::existing_keys(path, resume.max_line_bytes)?),
        _ => None,
    };
    let mut written = match (existing, resume.mode) {
        (Some(path), ResumeMode::Position) => Some((path, journal::existing_lines(path, resume.max_line_bytes)?)),
        _ => None,
    };
    for chunk in chunks {
        let chunk = chunk?;
        for (i, raw) in steerlm_core::chunk::split_lines(&chunk.bytes).enumerate() {
            let line = chunk.first_line + i as u64;
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let work = parse_work(raw, line).map_err(|e| anyhow!("{name}:{line}: {e}"))?;
            if let Some((path, lines)) = &mut written {
                match lines.next().transpose()? {
                    Some((number, bytes)) => {
                        resume::check_position(path, number, &bytes, &work.record, &work.turns)?;
                        counts.kept.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    None => written = None,
                }
            }
            if let Some(keys) = &keys
                && keys.contains(&resume::record_key(&work.record).map_err(|e| anyhow!("{name}:{line}: {e}"))?)
            {
                counts.kept.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if sender.blocking_send(Ok(work)).is_err() {
                return Ok(()); // the writer stopped: its error is reported
            }
        }
    }
    if let Some((path, mut lines)) = written
        && let Some((number, _)) = lines.next().transpose()?
    {
        bail!(
            "{}:{number}: the output has more records than {name}: it was written from another input. \
             Write to a new --output-file",
            path.display()
        );
    }
    Ok(())
}

/// Parses one input line into the record and the prefixes of its labeled turns.
fn parse_work(raw: &[u8], line: u64) -> Result<Work, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("invalid UTF-8 ({e})"))?;
    let record = PyValue::parse(text)?;
    resume::record_key(&record)?;
    let parsed = SftRecord::parse(text)?;
    let prefixes = labeled_prefixes(&parsed, TemplateOptions::default())?;
    let turns = labeled_turns(&parsed);
    Ok(Work { line, record, prefixes, turns })
}

/// Writes the scores into the record's labeled turns and renders it as the reference's
/// `json.dumps(record)` (ASCII-escaped, key order and integers as written).
fn annotate_record(scorer: &Scorer, item: &mut Work, scores: &[Vec<f32>]) -> Result<Vec<u8>> {
    if scores.len() != item.turns.len() {
        bail!("{} scores for {} labeled turns", scores.len(), item.turns.len());
    }
    let turns = item.record.get_mut("conversations").and_then(PyValue::as_array_mut).expect("checked when read");
    for (&turn, scores) in item.turns.iter().zip(scores) {
        if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
            bail!("the reward model returned a non-finite score ({bad}) for turn {}", turn + 1);
        }
        let names = scorer.names(scores.len())?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let values: Vec<f64> = scores.iter().map(|&s| s as f64).collect();
        let label = steerlm_core::labels::encode_scores(&values, Some(&names)).map_err(|e| anyhow!(e))?;
        let turn = turns[turn].as_object_mut().expect("turns are objects: checked when read");
        turn.insert("label", PyValue::Str(label));
    }
    let mut line = Vec::new();
    item.record.write(&mut line, Ascii::Escaped).map_err(|e| anyhow!(e))?;
    line.push(b'\n');
    Ok(line)
}
