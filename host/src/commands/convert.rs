//! `to-regression` and `format`: one JSONL file in, one out.

use super::Context;
use super::streaming::{ConvertArgs, rate, stream_lines};
use crate::engine::LineConversion;
use crate::input::InputPath;
use crate::manifest::{Provenance, Role};
use crate::output::Output;
use crate::same_file::NamedFile;
use crate::sandbox::Kind;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use steerlm_core::template::TemplateOptions;

#[derive(Args, Debug)]
pub struct LineArgs {
    /// SFT records, .jsonl or .jsonl.gz (`-` for stdin).
    #[arg(long, value_name = "IN")]
    input_file: PathBuf,
    /// Where to write (`-` for stdout; a .gz name is compressed).
    #[arg(long, value_name = "OUT")]
    output_file: PathBuf,
    /// Use each record's own `system` field as the system prompt (the reference always
    /// uses the fixed SteerLM prompt).
    #[arg(long)]
    use_record_system: bool,
    #[command(flatten)]
    convert: ConvertArgs,
}

impl LineArgs {
    pub fn files(&self) -> super::Files {
        let mut outputs = vec![NamedFile::new("--output-file", &self.output_file)];
        outputs.extend(self.convert.output_files());
        super::Files { inputs: vec![NamedFile::new("--input-file", &self.input_file)], outputs }
    }

    pub fn manifest_request(&self, component: Kind) -> Option<(PathBuf, Provenance)> {
        let path = self.convert.manifest.clone()?;
        let mut provenance = self.convert.provenance(component);
        provenance.inputs.push(self.input_file.clone());
        provenance.outputs.push((Role::OutputFile, self.output_file.clone()));
        Some((path, provenance))
    }
}

pub fn run(context: &Context, args: &LineArgs, conversion: LineConversion) -> Result<()> {
    let started = Instant::now();
    let options = TemplateOptions { use_record_system: args.use_record_system };
    let input = InputPath(args.input_file.clone());
    let mut bad = args.convert.bad_records()?;
    let backend = args.convert.backend(context)?;
    let output = Output::create(&args.output_file)?;
    let make_converter = || backend.line_converter(conversion, options);
    let (output, totals) = stream_lines(context, &input, output, make_converter, &mut bad, &args.convert)?;
    let name = output.name();
    output.commit()?;
    bad.finish()?;
    context.say(format!(
        "{} records -> {} lines in {name} ({})",
        totals.records_in,
        totals.lines_out,
        rate(totals.bytes_in, started)
    ));
    Ok(())
}
