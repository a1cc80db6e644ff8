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

use crate::input::{InputPath, JsonLine, JsonLines, json_lines};
use crate::model::{LoadOptions, RewardModel};
use anyhow::{Context, Result, anyhow, bail};
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
use steerlm_core::template::{TemplateOptions, labeled_prefix_bytes, labeled_prefixes, labeled_turns};

/// Most bytes of labeled prefixes one record may make (each labeled turn repeats the
/// conversation before it, so 50,000 short labeled turns would make tens of gigabytes).
const MAX_RECORD_PREFIX_BYTES: usize = 1 << 30;

/// Where the scores come from.
pub enum ScoreSource {
    /// KServe v2 / Triton servers (base URLs), asked for `model_name`; a request that
    /// takes longer than `request_timeout` fails and is retried.
    Servers { urls: Vec<String>, model_name: String, request_timeout: Duration },
    /// The model in this process, loaded from a checkpoint folder.
    Model { dir: PathBuf, load: LoadOptions },
}

/// One `annotate` run.
pub struct AnnotateOptions {
    pub input: InputPath,
    /// Annotated records are appended here; an existing file is resumed.
    pub output: PathBuf,
    pub source: ScoreSource,
    /// Records in flight at once.
    pub concurrency: usize,
    /// fsync the output every N records.
    pub sync_every: usize,
    pub resume_by: ResumeMode,
    /// Longest input line accepted, in bytes.
    pub max_line_bytes: usize,
    /// Print nothing but errors.
    pub quiet: bool,
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

/// Runs `annotate` to the end of the input.
pub async fn run(options: &AnnotateOptions) -> Result<()> {
    let started = Instant::now();
    let quiet = options.quiet;
    let input = &options.input;
    let scorer = match &options.source {
        ScoreSource::Model { dir, load } => {
            let model = RewardModel::load(dir, load.clone())
                .with_context(|| format!("loading the model in {}", dir.display()))?;
            Scorer::Local(Arc::new(model))
        }
        ScoreSource::Servers { urls, model_name, request_timeout } => {
            Scorer::remote(urls, model_name, *request_timeout).await?
        }
    };
    let (mut journal, previous) = Journal::open(&options.output, options.sync_every)?;
    if previous.cut_bytes > 0 && !quiet {
        eprintln!(
            "{}: a torn last line ({} bytes, or zeros a power loss left) from an interrupted run is cut before anything is written",
            options.output.display(),
            previous.cut_bytes
        );
    }

    let bar = progress(quiet);
    let counts = Arc::new(Counts::default());
    let queue = options.concurrency.max(1) * 2;
    let existing = previous.resumable.then(|| options.output.clone());
    let lines = json_lines(input, 4 << 20, options.max_line_bytes, &bar)?;
    let resume = Resume { existing, mode: options.resume_by, max_line_bytes: options.max_line_bytes };
    let records = spawn_reader(lines, resume, queue, Arc::clone(&counts))?;
    let name = &input.display();
    let scorer = &scorer;
    let result: Result<(u64, u64)> = async {
        let results = records
            .map(|work| async move {
                let mut item = work?;
                // The prefixes are only needed for the request: move them into it.
                let prefixes = std::mem::take(&mut item.prefixes);
                let scores = if prefixes.is_empty() { Ok(Vec::new()) } else { scorer.score(prefixes).await };
                let scores = scores.with_context(|| format!("{name}:{}", item.line))?;
                anyhow::Ok((item, scores))
            })
            .buffered(options.concurrency.max(1));
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
    }
    .await;
    bar.finish_and_clear();
    let kept = counts.kept.load(Ordering::Relaxed);
    let (records, turns) = result.inspect_err(|_| {
        if !quiet && kept > 0 {
            eprintln!("{kept} records were already in {}", options.output.display());
        }
    })?;
    if !quiet {
        eprintln!(
            "annotated {records} records ({turns} turns) into {} in {:.2} s{}",
            options.output.display(),
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
    lines: JsonLines,
    resume: Resume,
    queue: usize,
    counts: Arc<Counts>,
) -> Result<impl futures::Stream<Item = Result<Work>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Work>>(queue);
    std::thread::Builder::new().name("steerlm-annotate-reader".into()).spawn(move || {
        if let Err(e) = read_records(lines, &resume, &counts, &sender) {
            let _ = sender.blocking_send(Err(e));
        }
    })?;
    Ok(stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) }))
}

fn read_records(
    lines: JsonLines,
    resume: &Resume,
    counts: &Counts,
    sender: &tokio::sync::mpsc::Sender<Result<Work>>,
) -> Result<()> {
    let existing = resume.existing.as_deref();
    let keys = match (existing, resume.mode) {
        (Some(path), ResumeMode::Key) => Some(resume::existing_keys(path, resume.max_line_bytes)?),
        _ => None,
    };
    let mut written = match (existing, resume.mode) {
        (Some(path), ResumeMode::Position) => Some((path, journal::existing_lines(path, resume.max_line_bytes)?)),
        _ => None,
    };
    let name = lines.input_name().to_owned();
    for line in lines {
        let line = line?;
        let work = parse_work(line).map_err(|(line, e)| line.error(e))?;
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
            && keys.contains(&resume::record_key(&work.record).map_err(|e| anyhow!("{name}:{}: {e}", work.line))?)
        {
            counts.kept.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if sender.blocking_send(Ok(work)).is_err() {
            return Ok(()); // the writer stopped: its error is reported
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

/// The record of one input line and the prefixes of its labeled turns; an error comes
/// back with the line, to be named.
fn parse_work(line: JsonLine) -> Result<Work, (JsonLine, String)> {
    let parsed = match resume::record_key(&line.value).and_then(|_| parse_prefixes(&line.text)) {
        Ok(parsed) => parsed,
        Err(e) => return Err((line, e)),
    };
    let (prefixes, turns) = parsed;
    Ok(Work { line: line.number, record: line.value, prefixes, turns })
}

/// The labeled prefixes of an SFT record and the indices of their turns.
fn parse_prefixes(text: &str) -> Result<(Vec<String>, Vec<usize>), String> {
    let parsed = SftRecord::parse(text)?;
    let bytes = labeled_prefix_bytes(&parsed);
    if bytes > MAX_RECORD_PREFIX_BYTES {
        return Err(format!(
            "its {} labeled turns make {} MiB of prefixes to score (each repeats the conversation before it), more \
             than the {} MiB one record may make",
            labeled_turns(&parsed).len(),
            bytes >> 20,
            MAX_RECORD_PREFIX_BYTES >> 20
        ));
    }
    Ok((labeled_prefixes(&parsed, TemplateOptions::default())?, labeled_turns(&parsed)))
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
