//! What every converting command shares: its options (errors, engine, chunking,
//! threads, manifest) and the streaming driver that runs a file through converters.

use super::Context;
use crate::bad_records::{BadRecords, OnError};
use crate::engine::{Backend, Engine, LineConverter};
use crate::input::{Chunk, DEFAULT_CHUNK_BYTES, InputPath};
use crate::manifest::{Provenance, Role};
use crate::output::{BackgroundWriter, Output};
use crate::pipeline::run_ordered;
use crate::same_file::NamedFile;
use crate::sandbox::Kind;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use steerlm_core::chunk::{ChunkOutput, LineError};

/// Options every converting command takes.
#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// What to do with a record that cannot be converted.
    #[arg(long, value_enum, default_value_t = OnError::Fail)]
    pub on_error: OnError,
    /// With --on-error skip: also write the bad records' FILE, LINE and reason here, as JSONL.
    #[arg(long, value_name = "FILE")]
    pub error_report: Option<PathBuf>,
    /// Run the conversion through the sandboxed components or the natively linked library.
    #[arg(long, value_enum, default_value_t = Engine::Component)]
    pub engine: Engine,
    /// Input is handed to the conversion in chunks of about this many MiB of whole lines.
    #[arg(long, default_value_t = (DEFAULT_CHUNK_BYTES >> 20) as u64, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub chunk_mb: u64,
    /// Chunks converted at once (each thread runs its own component instance);
    /// defaults to the number of cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
    /// Also write a provenance record to FILE: steerlm version, component hashes, options,
    /// and the sha256 and line count of every input and output (`steerlm verify-manifest`).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
}

impl ConvertArgs {
    pub fn bad_records(&self) -> Result<BadRecords> {
        BadRecords::new(self.on_error, self.error_report.clone())
    }
    pub fn chunk_bytes(&self) -> usize {
        (self.chunk_mb as usize) << 20
    }
    pub fn threads(&self) -> usize {
        self.threads.map_or_else(crate::pipeline::default_threads, |n| n as usize)
    }
    pub fn backend(&self, context: &Context) -> Result<Backend> {
        Backend::new(self.engine, || context.sandbox.sandbox())
    }
    /// The outputs these options add: the error report and the manifest.
    pub fn output_files(&self) -> Vec<NamedFile> {
        let report = self.error_report.iter().map(|p| NamedFile::new("--error-report", p));
        report.chain(self.manifest.iter().map(|p| NamedFile::new("--manifest", p))).collect()
    }
    /// The part of a manifest these options decide: the component (unless the native
    /// engine runs) and the error report.
    pub fn provenance(&self, component: Kind) -> Provenance {
        let mut provenance = Provenance::default();
        if self.engine == Engine::Component {
            provenance.components.push(component);
        }
        if let Some(report) = &self.error_report {
            provenance.outputs.push((Role::ErrorReport, report.clone()));
        }
        provenance
    }
}

/// Totals of one streamed conversion.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub records_in: u64,
    pub lines_out: u64,
    pub bytes_in: u64,
}

/// Streams `input` through converters made by `make_converter` into `output`: one
/// thread reads, `threads` convert, one writes; output keeps input order.
pub fn stream_lines(
    context: &Context,
    input: &InputPath,
    output: Output,
    make_converter: impl Fn() -> Result<Box<dyn LineConverter>> + Sync,
    bad: &mut BadRecords,
    convert: &ConvertArgs,
) -> Result<(Output, Totals)> {
    let progress = context.progress("converting");
    let mut totals = Totals::default();
    let mut writer = BackgroundWriter::spawn(output)?;
    let chunks = context.chunks(input, convert.chunk_bytes(), &progress)?;
    run_ordered(
        chunks,
        convert.threads(),
        &make_converter,
        |converter, chunk| match converter.convert(&chunk.bytes, chunk.first_line) {
            Ok(out) => Ok(out),
            // A component limit hit somewhere in the chunk: each line again alone, so the
            // error names its line and --on-error skip can skip just it.
            Err(_) => line_by_line(converter, &make_converter, chunk),
        },
        |chunk, out| {
            totals.bytes_in += chunk.bytes.len() as u64;
            bad.handle(&input.display(), out.errors)?;
            totals.records_in += out.records_in;
            totals.lines_out += out.lines_out;
            writer.write(out.output)
        },
    )?;
    progress.finish_and_clear();
    Ok((writer.finish()?, totals))
}

/// `chunk` converted one line at a time, each line that fails (a component limit: its
/// instance trapped) becoming that line's error, converted again in a fresh instance.
fn line_by_line(
    converter: &mut Box<dyn LineConverter>,
    make_converter: &impl Fn() -> Result<Box<dyn LineConverter>>,
    chunk: &Chunk,
) -> Result<ChunkOutput> {
    // The instance that trapped may be in any state: start from a fresh one.
    *converter = make_converter()?;
    let mut whole = ChunkOutput::default();
    for (i, line) in chunk.bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let number = chunk.first_line + i as u64;
        match converter.convert(line, number) {
            Ok(out) => {
                whole.output.extend_from_slice(&out.output);
                whole.errors.extend(out.errors);
                whole.records_in += out.records_in;
                whole.lines_out += out.lines_out;
            }
            Err(e) => {
                whole.errors.push(LineError { line: number, message: format!("{e:#}") });
                whole.records_in += 1;
                *converter = make_converter()?;
            }
        }
    }
    Ok(whole)
}

/// `1.23 s, 456.7 MB/s` for a summary line.
pub fn rate(bytes: u64, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64();
    format!("{seconds:.2} s, {:.1} MB/s", bytes as f64 / 1e6 / seconds.max(1e-9))
}
