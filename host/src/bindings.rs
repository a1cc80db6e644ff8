//! The typed bindings of each world in `wit/pipeline.wit`, and the conversions between
//! the WIT types and steerlm-core's.
//!
//! `steerlm:pipeline/types` is generated once (with the regression world) and every
//! other world maps it there with `with:`, so a `template-options` or a `line-error`
//! is one Rust type whichever component it comes from.

pub mod regression {
    wasmtime::component::bindgen!({ path: "../wit", world: "regression-component" });
}
pub mod formatting {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "formatting-component",
        with: { "steerlm:pipeline/types": crate::bindings::types },
    });
}
pub mod preprocess {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "preprocess-component",
        with: { "steerlm:pipeline/types": crate::bindings::types },
    });
}
pub mod labels {
    wasmtime::component::bindgen!({ path: "../wit", world: "labels-component" });
}

/// `steerlm:pipeline/types`, shared by every world.
pub use regression::steerlm::pipeline::types;

use preprocess::exports::steerlm::pipeline::preprocess as wit_preprocess;
use steerlm_core::chunk::{ChunkOutput, LineError, Split, SplitChunkOutput};
use steerlm_core::oasst::TreeChunkOutput;
use steerlm_core::preprocess::{PreprocessOptions, Source};
use steerlm_core::template::TemplateOptions;

fn line_errors(errors: Vec<types::LineError>) -> Vec<LineError> {
    errors.into_iter().map(|e| LineError { line: e.line, message: e.message }).collect()
}

impl From<TemplateOptions> for types::TemplateOptions {
    fn from(options: TemplateOptions) -> Self {
        types::TemplateOptions { use_record_system: options.use_record_system }
    }
}

impl From<types::ChunkOutput> for ChunkOutput {
    fn from(out: types::ChunkOutput) -> Self {
        ChunkOutput {
            output: out.output,
            errors: line_errors(out.errors),
            records_in: out.records_in,
            lines_out: out.lines_out,
        }
    }
}

impl From<types::SplitOutput> for SplitChunkOutput {
    fn from(out: types::SplitOutput) -> Self {
        SplitChunkOutput {
            train: out.train,
            val: out.val,
            errors: line_errors(out.errors),
            records_in: out.records_in,
            train_lines: out.train_lines,
            val_lines: out.val_lines,
        }
    }
}

impl From<wit_preprocess::TreeOutput> for TreeChunkOutput {
    fn from(out: wit_preprocess::TreeOutput) -> Self {
        TreeChunkOutput { output: out.output, tree_ends: out.tree_ends, errors: line_errors(out.errors) }
    }
}

impl From<Source> for wit_preprocess::Source {
    fn from(source: Source) -> Self {
        match source {
            Source::HelpSteer => wit_preprocess::Source::Helpsteer,
            Source::HelpSteer2 => wit_preprocess::Source::Helpsteer2,
            Source::HelpSteer2Preference => wit_preprocess::Source::Helpsteer2Preference,
        }
    }
}

impl From<Split> for wit_preprocess::Split {
    fn from(split: Split) -> Self {
        match split {
            Split::Train => wit_preprocess::Split::Train,
            Split::Val => wit_preprocess::Split::Val,
        }
    }
}

impl From<PreprocessOptions> for wit_preprocess::PreprocessOptions {
    fn from(options: PreprocessOptions) -> Self {
        wit_preprocess::PreprocessOptions { only_helpfulness: options.only_helpfulness }
    }
}
