//! The command line: argument definitions and the shared streaming driver.

mod annotate;
mod convert;
mod demo;
mod export;
mod gpu_info;
mod import_nemo;
mod label;
mod model_args;
mod preprocess;
mod score;
mod serve;
mod serve_component;
mod stats;
mod streaming;
mod verify;

use crate::input::{DEFAULT_MAX_LINE_MB, InputPath, spawn_chunks};
use crate::manifest::Provenance;
use crate::output::{Output, Staging};
use crate::same_file::NamedFile;
use crate::sandbox::{Kind, Limits, Sandbox};
use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// SteerLM data preparation, reproducible byte for byte.
///
/// Every conversion runs inside sandboxed WASI components (granted no files, network or
/// environment) and writes exactly the bytes NVIDIA NeMo-Aligner's Python scripts write.
/// Inputs may be .jsonl or .jsonl.gz; outputs appear only when a command succeeds.
#[derive(Parser, Debug)]
#[command(name = "steerlm", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Longest input line accepted, in MiB; a longer line is an error naming it. Memory
    /// use stays below a few chunks plus this, plus each conversion thread's component
    /// memory (--component-memory-mb): a record's regression lines repeat its
    /// conversation, so they can be far larger than it.
    #[arg(long, global = true, default_value_t = DEFAULT_MAX_LINE_MB, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_line_mb: u64,
}

impl Cli {
    fn context(&self, quiet: bool) -> Context {
        Context { sandbox: self.sandbox, quiet, max_line_bytes: (self.max_line_mb as usize) << 20 }
    }
}

/// The longest any `--*-timeout` may be, in seconds (a week): longer means nothing, and
/// far longer overflows the clock arithmetic deadlines are made of.
pub const MAX_SECONDS: u64 = 7 * 24 * 3600;

#[derive(Args, Debug, Clone, Copy)]
struct SandboxArgs {
    /// Most memory one component instance may use, in MiB (components are 32-bit: 4096
    /// at most).
    #[arg(long, global = true, default_value_t = 2048, value_name = "MIB", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    component_memory_mb: usize,
    /// Longest one component call (one chunk of input) may run, in seconds.
    #[arg(long, global = true, default_value_t = 600, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    component_timeout: u64,
}

impl SandboxArgs {
    fn sandbox(&self) -> Result<Sandbox> {
        Sandbox::new(Limits {
            memory_bytes: self.component_memory_mb << 20,
            call_timeout: Duration::from_secs(self.component_timeout),
        })
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// SFT records to regression reward-model training lines ({"text", "label": [9 floats]}).
    #[command(name = "to-regression")]
    ToRegression(convert::LineArgs),
    /// SFT records to one {"text": prefix} line per labeled prefix (what a reward model scores).
    Format(convert::LineArgs),
    /// Raw datasets (HelpSteer, HelpSteer2, OpenAssistant) to attribute-conditioned SFT records.
    #[command(subcommand)]
    Preprocess(preprocess::Dataset),
    /// Parse or encode label strings like `helpfulness:3,correctness:4`.
    #[command(subcommand)]
    Label(label::LabelCommand),
    /// Annotate SFT records with a reward model (a server, or --model in-process); resumable.
    Annotate(annotate::AnnotateArgs),
    /// Serve a reward model over HTTP: KServe v2 / Triton protocol, /v1/score, /metrics.
    Serve(serve::ServeArgs),
    /// Score `{"text": ...}` or `{"messages": [...]}` lines with a reward model (Hugging Face checkpoint folder).
    Score(score::ScoreArgs),
    /// Show the wgpu adapter, its limits and features, and which kernels `score` runs on it.
    #[command(name = "gpu-info")]
    GpuInfo(gpu_info::GpuInfoArgs),
    /// Serve the conversions over HTTP from the embedded wasi:http component (the one Spin runs).
    #[command(name = "serve-component")]
    ServeComponent(serve_component::ServeComponentArgs),
    /// Write the embedded .wasm components to DIR, for embedding them elsewhere.
    #[command(name = "export-components")]
    ExportComponents(export::ExportArgs),
    /// Preprocess a small embedded HelpSteer sample and convert it to regression format.
    Demo(demo::DemoArgs),
    /// Re-run the conversion a --manifest FILE records and check that the bytes match.
    #[command(name = "verify-manifest")]
    VerifyManifest(verify::VerifyArgs),
    /// Counts, label histograms and text lengths of an SFT, annotated or regression file.
    Stats(stats::StatsArgs),
    /// Convert a NeMo reward model (.nemo or its folder; zarr distributed checkpoint) to a
    /// Hugging Face folder that `score`, `serve` and transformers load.
    #[command(name = "import-nemo")]
    ImportNemo(import_nemo::ImportNemoArgs),
}

/// Shared context of one command run.
pub struct Context {
    sandbox: SandboxArgs,
    quiet: bool,
    /// `--max-line-mb` in bytes.
    max_line_bytes: usize,
}

impl Context {
    /// A byte progress bar on stderr; drawn only on a terminal and when not quiet.
    pub(crate) fn progress(&self, what: &str) -> ProgressBar {
        let target = if self.quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{msg:>14} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar
    }

    /// Chunks of whole lines of `input`, none longer than `--max-line-mb`.
    pub(crate) fn chunks(
        &self,
        input: &InputPath,
        chunk_bytes: usize,
        progress: &ProgressBar,
    ) -> Result<std::sync::mpsc::Receiver<Result<crate::input::Chunk>>> {
        spawn_chunks(input, chunk_bytes, self.max_line_bytes, progress)
    }

    /// The parsed lines of a JSONL `input`, none longer than `--max-line-mb`.
    pub(crate) fn json_lines(
        &self,
        input: &InputPath,
        chunk_bytes: usize,
        progress: &ProgressBar,
    ) -> Result<crate::input::JsonLines> {
        crate::input::json_lines(input, chunk_bytes, self.max_line_bytes, progress)
    }

    /// Runs `future` to completion on a multi-threaded tokio runtime.
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(runtime.block_on(future))
    }

    pub(crate) fn say(&self, message: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", message.as_ref());
        }
    }
}

/// The files a command reads and the files it writes, named by their flags.
#[derive(Default)]
pub struct Files {
    pub inputs: Vec<NamedFile>,
    pub outputs: Vec<NamedFile>,
}

impl Command {
    /// Every file the command will read or write, known before it runs.
    fn files(&self) -> Result<Files> {
        Ok(match self {
            Command::ToRegression(args) | Command::Format(args) => args.files(),
            Command::Preprocess(dataset) => preprocess::files(dataset)?,
            Command::Score(args) => args.files(),
            Command::Stats(args) => Files {
                inputs: vec![NamedFile::new("--input-file", &args.input_file)],
                outputs: args.plot.iter().map(|p| NamedFile::new("--plot", p)).collect(),
            },
            Command::ExportComponents(args) => export::files(args),
            Command::Annotate(args) => args.files(),
            _ => Files::default(),
        })
    }

    /// Whether every output of this command is a whole file that may wait to be placed
    /// until the command is done ([`Staging`]). Not the servers (a port file must appear
    /// while they run), `demo` (it reads what it wrote), `annotate` (it appends, to
    /// resume) or `import-nemo` (a folder, placed as one).
    fn writes_whole_files(&self) -> bool {
        match self {
            Command::ToRegression(_)
            | Command::Format(_)
            | Command::Preprocess(_)
            | Command::Label(_)
            | Command::Score(_)
            | Command::Stats(_)
            | Command::ExportComponents(_) => true,
            Command::GpuInfo(_)
            | Command::Serve(_)
            | Command::ServeComponent(_)
            | Command::Annotate(_)
            | Command::Demo(_)
            | Command::VerifyManifest(_)
            | Command::ImportNemo(_) => false,
        }
    }

    /// For a converting command run with `--manifest FILE`: FILE and what to record.
    fn manifest_request(&self) -> Result<Option<(PathBuf, Provenance)>> {
        let request = match self {
            Command::ToRegression(args) => args.manifest_request(Kind::Regression),
            Command::Format(args) => args.manifest_request(Kind::Formatting),
            Command::Preprocess(dataset) => preprocess::manifest_request(dataset)?,
            _ => None,
        };
        if let Some((_, provenance)) = &request {
            provenance.check_files()?;
        }
        Ok(request)
    }
}

/// The subcommand path (`preprocess oasst`) and every option's effective value, as
/// clap parsed them from `argv`.
fn command_and_options(argv: &[String]) -> (String, BTreeMap<String, String>) {
    let matches =
        Cli::command().try_get_matches_from(std::iter::once("steerlm").chain(argv.iter().map(String::as_str)));
    let Ok(mut matches) = matches else { return (String::new(), BTreeMap::new()) };
    let mut names = Vec::new();
    while let Some((name, sub)) = matches.remove_subcommand() {
        names.push(name);
        matches = sub;
    }
    let options = matches
        .ids()
        .filter_map(|id| {
            let values = matches.try_get_raw(id.as_str()).ok()??;
            let values: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
            Some((id.as_str().to_owned(), values.join(",")))
        })
        // Flattened argument structs show up as groups named after their type.
        .filter(|(id, _)| id != "manifest" && !id.starts_with(|c: char| c.is_ascii_uppercase()))
        .collect();
    (names.join(" "), options)
}

/// Runs a parsed command line; `argv` (the arguments after the program name) is what
/// `--manifest` records.
pub fn run(cli: Cli, argv: &[String]) -> Result<()> {
    let context = cli.context(cli.quiet);
    // Before anything is opened for writing: no output may be an input or another output.
    let files = cli.command.files()?;
    crate::same_file::refuse_overlaps(&files.inputs, &files.outputs)?;
    let manifest = match cli.command.manifest_request()? {
        // Created (as a temporary file) before the conversion, so a bad path fails first.
        Some((path, provenance)) => Some((Output::create(&path)?, path, provenance)),
        None => None,
    };
    // A conversion's outputs, error report and manifest appear together once all are
    // written; any error leaves every old one as it was.
    let staging = cli.command.writes_whole_files().then(Staging::begin);
    run_command(&context, cli.command)?;
    if let Some((output, path, provenance)) = manifest {
        let (command, options) = command_and_options(argv);
        crate::manifest::write(output, argv, command, options, &provenance)
            .with_context(|| format!("writing the manifest {}", path.display()))?;
        context.say(format!("manifest: {}", path.display()));
    }
    staging.map_or(Ok(()), Staging::place_all)
}

fn run_command(context: &Context, command: Command) -> Result<()> {
    match command {
        Command::ToRegression(args) => convert::run(context, &args, crate::engine::LineConversion::Regression),
        Command::Format(args) => convert::run(context, &args, crate::engine::LineConversion::Format),
        Command::Preprocess(dataset) => preprocess::run(context, &dataset),
        Command::Label(command) => label::run(context, &command),
        Command::Score(args) => score::run(context, &args),
        Command::GpuInfo(args) => gpu_info::run(context, &args),
        Command::Serve(args) => serve::run(context, &args),
        Command::ServeComponent(args) => serve_component::run(context, &args),
        Command::Annotate(args) => annotate::run(context, &args),
        Command::ExportComponents(args) => export::run(context, &args),
        Command::Demo(args) => demo::run(context, &args),
        Command::VerifyManifest(args) => verify::run(context, &args),
        Command::Stats(args) => stats::run(context, &args),
        Command::ImportNemo(args) => import_nemo::run(context, &args),
    }
}
