//! `steerlm annotate`: SFT records labeled by a reward model (see [`crate::annotate`]).

use super::model_args::ModelArgs;
use super::{Context, Files};
use crate::annotate::resume::ResumeMode;
use crate::annotate::{AnnotateOptions, ScoreSource};
use crate::input::InputPath;
use crate::same_file::NamedFile;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct AnnotateArgs {
    /// SFT records to annotate (.jsonl or .jsonl.gz, `-` for stdin).
    #[arg(long, value_name = "IN")]
    input_file: PathBuf,
    /// Annotated records are appended here, in input order (plain JSONL: not a .gz name).
    /// An existing file is resumed: see --resume-by.
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
    #[arg(long, default_value_t = 600, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=crate::commands::MAX_SECONDS))]
    request_timeout: u64,
    /// Run the model in this process instead of asking a server.
    #[arg(long, value_name = "DIR", conflicts_with = "servers")]
    model: Option<PathBuf>,
    /// With --model: how it loads and where it runs.
    #[command(flatten)]
    model_args: ModelArgs,
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

impl AnnotateArgs {
    /// The files `annotate` reads and writes, named by their flags.
    pub fn files(&self) -> Files {
        let inputs = [NamedFile::new("--input-file", &self.input_file)];
        let model = self.model.iter().flat_map(|dir| crate::same_file::model_folder("--model", dir));
        Files {
            inputs: inputs.into_iter().chain(model).collect(),
            outputs: vec![NamedFile::new("--output-file", &self.output_file)],
        }
    }

    fn source(&self) -> ScoreSource {
        match &self.model {
            Some(dir) => ScoreSource::Model { dir: dir.clone(), load: self.model_args.load_options() },
            None => ScoreSource::Servers {
                urls: if self.servers.is_empty() {
                    vec![format!("http://{}:{}", self.host, self.port)]
                } else {
                    self.servers.clone()
                },
                model_name: self.model_name.clone(),
                request_timeout: Duration::from_secs(self.request_timeout),
            },
        }
    }
}

pub fn run(context: &Context, args: &AnnotateArgs) -> Result<()> {
    // Every other output named *.gz is compressed; this one is appended to as it goes
    // (so that a rerun resumes it), which a gzip stream does not allow.
    if args.output_file.extension().is_some_and(|e| e == "gz") {
        anyhow::bail!(
            "--output-file {}: annotate writes plain JSONL, appending as it goes so that a rerun resumes; name a \
             .jsonl output and compress it once done",
            args.output_file.display()
        );
    }
    let options = AnnotateOptions {
        input: InputPath(args.input_file.clone()),
        output: args.output_file.clone(),
        source: args.source(),
        concurrency: args.concurrency,
        sync_every: args.sync_every,
        resume_by: if args.resume_by_key { ResumeMode::Key } else { args.resume_by },
        max_line_bytes: context.max_line_bytes,
        quiet: context.quiet,
    };
    context.block_on(crate::annotate::run(&options))?
}
