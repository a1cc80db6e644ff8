//! `score`: run a reward model over `{"text": ...}` or `{"messages": [...]}` lines.

use super::Context;
use super::model_args::ModelArgs;
use crate::input::InputPath;
use crate::model::attribute_weights::AttributeWeights;
use crate::model::chat_template::Messages;
use crate::model::gpu::kernels::KernelTimes;
use crate::model::{Prompt, RewardModel, check_finite};
use crate::output::Output;
use crate::same_file::NamedFile;
use anyhow::{Context as _, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use steerlm_core::pyvalue::PyValue;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Hugging Face checkpoint folder: config.json, model.safetensors (or sharded), tokenizer.json.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// `{"text": ...}` lines, or `{"messages": [{"role", "content"}, ...]}` lines that the
    /// checkpoint's chat template renders (.jsonl or .jsonl.gz, `-` for stdin); other
    /// keys are ignored.
    #[arg(long, value_name = "IN")]
    input_file: PathBuf,
    /// One `{"scores", "num_tokens", "exceeded"}` line per input record, in order (blank
    /// lines are not records: they are skipped, as every command skips them).
    #[arg(long, value_name = "OUT")]
    output_file: PathBuf,
    #[command(flatten)]
    model_args: ModelArgs,
    /// Print each kernel's GPU time (total ms, share, TFLOP/s) at the end, from
    /// timestamp queries (wgpu adapters that have them).
    #[arg(long)]
    profile: bool,
    /// Most tokens in one packed batch.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    batch_tokens: usize,
    /// Also write one combined `"reward"` per line: the attribute scores weighted, one
    /// weight per attribute (e.g. `0,0,0,0,0.3,0.74,0.46,0.47,-0.33`).
    #[arg(long, value_name = "W,W,...", value_parser = AttributeWeights::parse, allow_hyphen_values = true)]
    attribute_weights: Option<AttributeWeights>,
}

impl ScoreArgs {
    pub fn files(&self) -> super::Files {
        super::Files {
            inputs: std::iter::once(NamedFile::new("--input-file", &self.input_file))
                .chain(crate::same_file::model_folder("--model", &self.model))
                .collect(),
            outputs: vec![NamedFile::new("--output-file", &self.output_file)],
        }
    }
}

#[derive(Serialize)]
struct ScoreLine<'a> {
    scores: &'a [f32],
    num_tokens: usize,
    exceeded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reward: Option<f32>,
}

/// One text waiting for its batch.
struct Pending {
    line: u64,
    ids: Vec<u32>,
    exceeded: bool,
}

pub fn run(context: &Context, args: &ScoreArgs) -> Result<()> {
    let started = Instant::now();
    let model = RewardModel::load(&args.model, args.model_args.load_options())
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    if let Some(weights) = &args.attribute_weights {
        weights.check(model.labels())?;
    }
    context.say(format!(
        "{}: {}, {} layers, hidden {}, {} labels{}, on {}",
        args.model.display(),
        model.config.architecture,
        model.config.num_layers,
        model.config.hidden_size,
        model.labels().len(),
        model.config.attention_note(),
        model.device_name()
    ));
    let input = InputPath(args.input_file.clone());
    let name = input.display();
    let mut output = Output::create(&args.output_file)?;
    let bytes_bar = context.progress("reading");
    let texts_bar = texts_progress(context);

    let mut pending: Vec<Pending> = Vec::new();
    let mut pending_tokens = 0usize;
    let (mut texts, mut tokens) = (0u64, 0u64);
    let mut kernel_times = KernelTimes::default();
    let mut flush = |pending: &mut Vec<Pending>, output: &mut Output| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        // The ids move into the batch; only their counts are needed afterwards.
        let sequences: Vec<Vec<u32>> = pending.iter_mut().map(|p| std::mem::take(&mut p.ids)).collect();
        let scores = if args.profile {
            let (scores, times) = model.score_profiled(&sequences)?;
            if let Some(times) = times {
                kernel_times.add(&times);
            }
            scores
        } else {
            model.score(&sequences)?
        };
        let mut out = Vec::new();
        for ((p, scores), ids) in pending.iter().zip(&scores).zip(&sequences) {
            check_finite(scores).with_context(|| format!("{name}:{}", p.line))?;
            let reward = args.attribute_weights.as_ref().map(|w| w.combine(scores)).transpose();
            let reward = reward.with_context(|| format!("{name}:{}", p.line))?;
            serde_json::to_writer(
                &mut out,
                &ScoreLine { scores, num_tokens: ids.len(), exceeded: p.exceeded, reward },
            )?;
            out.push(b'\n');
            texts += 1;
            tokens += ids.len() as u64;
        }
        output.write_all(&out)?;
        texts_bar.set_position(texts);
        texts_bar
            .set_message(format!("{tokens} tokens, {:.0} tokens/s", tokens as f64 / started.elapsed().as_secs_f64()));
        pending.clear();
        Ok(())
    };
    for line in context.json_lines(&input, 1 << 20, &bytes_bar)? {
        let mut line = line?;
        let input = line_input(&mut line.value).map_err(|e| line.error(e))?;
        let prompt = match &input {
            LineInput::Text(text) => Prompt::Text(text),
            LineInput::Chat(messages) => Prompt::Chat(messages),
        };
        let encoded = model.tokenize_prompt(prompt).map_err(|e| line.error(format!("{e:#}")))?;
        if pending_tokens + encoded.ids.len() > args.batch_tokens.max(1) {
            flush(&mut pending, &mut output)?;
            pending_tokens = 0;
        }
        pending_tokens += encoded.ids.len();
        pending.push(Pending { line: line.number, ids: encoded.ids, exceeded: encoded.exceeded });
    }
    flush(&mut pending, &mut output)?;
    bytes_bar.finish_and_clear();
    texts_bar.finish_and_clear();
    let out_name = output.name();
    output.commit()?;
    let seconds = started.elapsed().as_secs_f64();
    context.say(format!(
        "{texts} texts, {tokens} tokens -> {out_name} in {seconds:.2} s ({:.0} tokens/s)",
        tokens as f64 / seconds
    ));
    if args.profile {
        if kernel_times.kernels.is_empty() {
            eprintln!(
                "--profile: no kernel times: {} has no GPU timestamp queries",
                if model.backend_kind() == crate::model::BackendKind::Cpu { "the CPU path" } else { "this adapter" }
            );
        } else {
            // The table is the output asked for: printed even with --quiet.
            eprint!("{}", kernel_times.table());
        }
    }
    Ok(())
}

/// What a line asks to score.
enum LineInput {
    Text(String),
    Chat(Messages),
}

/// The `text` of a `{"text": ...}` line, or the conversation of a
/// `{"messages": [...]}` line (rendered with the checkpoint's chat template).
fn line_input(line: &mut PyValue) -> Result<LineInput, String> {
    let PyValue::Object(object) = line else {
        return Err(format!("a line must be a JSON object, got {}", line.describe()));
    };
    if let Some(messages) = object.get("messages") {
        if object.get("text").is_some() {
            return Err("the line has both `text` and `messages`; send one".to_owned());
        }
        return Messages::from_py(messages).map(LineInput::Chat).map_err(|e| format!("{e:#}"));
    }
    match object.get_mut("text") {
        Some(PyValue::Str(text)) => Ok(LineInput::Text(std::mem::take(text))),
        Some(other) => Err(format!("`text` must be a string, got {}", other.describe())),
        None => Err("the line has no `text` (or `messages`)".to_owned()),
    }
}

fn texts_progress(context: &Context) -> ProgressBar {
    let target = if context.quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} texts scored, {msg} [{elapsed_precise}]")
            .expect("valid template"),
    );
    bar
}
