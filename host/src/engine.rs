//! The conversions as the host calls them: through the sandboxed components (the
//! default), or through `steerlm-core` linked natively (`--engine native`, the
//! baseline the benchmark compares against). Both give the same bytes.

use crate::bindings;
use crate::sandbox::{Instance, Sandbox};
use anyhow::Result;
use clap::ValueEnum;
use steerlm_core::chunk::{ChunkOutput, Split, SplitChunkOutput};
use steerlm_core::oasst::TreeChunkOutput;
use steerlm_core::preprocess::{PreprocessOptions, Source};
use steerlm_core::template::TemplateOptions;
use steerlm_core::{oasst, preprocess, regression, shuffle, template};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// The embedded WASI components, sandboxed by wasmtime.
    #[default]
    Component,
    /// The same library compiled into the host (no sandbox).
    Native,
}

/// Converts chunks of JSONL lines into one output.
pub trait LineConverter {
    fn convert(&mut self, chunk: &[u8], first_line: u64) -> Result<ChunkOutput>;
}

/// Converts chunks of raw rows into train and val outputs.
pub trait RowConverter {
    fn convert(&mut self, chunk: &[u8], first_line: u64, split: Split) -> Result<SplitChunkOutput>;
}

/// Converts OpenAssistant trees and computes the reference's shuffle.
pub trait TreeConverter {
    fn convert(&mut self, chunk: &[u8], first_line: u64) -> Result<TreeChunkOutput>;
    fn shuffle_order(&mut self, count: u32, seed: u64) -> Result<Vec<u32>>;
    fn train_count(&mut self, count: u64, fraction: f64) -> Result<u64>;
}

/// Which line conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineConversion {
    Regression,
    Format,
}

/// An [`Engine`] ready to make converters: the sandbox is started once and shared
/// by every converter (each of which gets its own component instance).
#[allow(clippy::large_enum_variant)] // one per command run: boxing would buy nothing
pub enum Backend {
    Native,
    Component(Sandbox),
}

impl Backend {
    pub fn new(engine: Engine, sandbox: impl FnOnce() -> Result<Sandbox>) -> Result<Self> {
        Ok(match engine {
            Engine::Native => Backend::Native,
            Engine::Component => Backend::Component(sandbox()?),
        })
    }

    pub fn line_converter(
        &self,
        conversion: LineConversion,
        options: TemplateOptions,
    ) -> Result<Box<dyn LineConverter>> {
        Ok(match (self, conversion) {
            (Backend::Native, _) => Box::new(NativeLines { conversion, options }),
            (Backend::Component(sandbox), LineConversion::Regression) => {
                Box::new(RegressionComponent { instance: sandbox.regression()?, options: options.into() })
            }
            (Backend::Component(sandbox), LineConversion::Format) => {
                Box::new(FormatComponent { instance: sandbox.formatting()?, options: options.into() })
            }
        })
    }

    pub fn row_converter(&self, source: Source, options: PreprocessOptions) -> Result<Box<dyn RowConverter>> {
        Ok(match self {
            Backend::Native => Box::new(NativeRows { source, options }),
            Backend::Component(sandbox) => {
                Box::new(PreprocessComponent { instance: sandbox.preprocess()?, source, options })
            }
        })
    }

    pub fn tree_converter(&self) -> Result<Box<dyn TreeConverter>> {
        Ok(match self {
            Backend::Native => Box::new(NativeTrees),
            Backend::Component(sandbox) => Box::new(TreeComponent { instance: sandbox.preprocess()? }),
        })
    }
}

// ---- native ----

struct NativeLines {
    conversion: LineConversion,
    options: TemplateOptions,
}

impl LineConverter for NativeLines {
    fn convert(&mut self, chunk: &[u8], first_line: u64) -> Result<ChunkOutput> {
        let options = self.options;
        Ok(match self.conversion {
            LineConversion::Regression => regression::convert(chunk, first_line, options),
            LineConversion::Format => steerlm_core::chunk::convert_chunk(chunk, first_line, |line, out| {
                template::format_line(line, options, out)
            }),
        })
    }
}

struct NativeRows {
    source: Source,
    options: PreprocessOptions,
}

impl RowConverter for NativeRows {
    fn convert(&mut self, chunk: &[u8], first_line: u64, split: Split) -> Result<SplitChunkOutput> {
        Ok(preprocess::convert(self.source, split, self.options, chunk, first_line))
    }
}

struct NativeTrees;

impl TreeConverter for NativeTrees {
    fn convert(&mut self, chunk: &[u8], first_line: u64) -> Result<TreeChunkOutput> {
        Ok(oasst::convert_trees(chunk, first_line))
    }
    fn shuffle_order(&mut self, count: u32, seed: u64) -> Result<Vec<u32>> {
        Ok(shuffle::python_shuffle_order(count, seed))
    }
    fn train_count(&mut self, count: u64, fraction: f64) -> Result<u64> {
        Ok(shuffle::train_count(count, fraction))
    }
}

// ---- components ----

struct RegressionComponent {
    instance: Instance<bindings::regression::RegressionComponent>,
    options: bindings::types::TemplateOptions,
}

impl LineConverter for RegressionComponent {
    fn convert(&mut self, chunk: &[u8], first_line: u64) -> Result<ChunkOutput> {
        let options = self.options;
        let out = self
            .instance
            .call(|b, store| b.steerlm_pipeline_regression().call_convert_chunk(store, chunk, first_line, options))?;
        Ok(out.into())
    }
}

struct FormatComponent {
    instance: Instance<bindings::formatting::FormattingComponent>,
    options: bindings::types::TemplateOptions,
}

impl LineConverter for FormatComponent {
    fn convert(&mut self, chunk: &[u8], first_line: u64) -> Result<ChunkOutput> {
        let options = self.options;
        let out = self
            .instance
            .call(|b, store| b.steerlm_pipeline_formatting().call_format_chunk(store, chunk, first_line, options))?;
        Ok(out.into())
    }
}

struct PreprocessComponent {
    instance: Instance<bindings::preprocess::PreprocessComponent>,
    source: Source,
    options: PreprocessOptions,
}

impl RowConverter for PreprocessComponent {
    fn convert(&mut self, chunk: &[u8], first_line: u64, split: Split) -> Result<SplitChunkOutput> {
        let (source, split, options) = (self.source.into(), split.into(), self.options.into());
        let out = self.instance.call(|b, store| {
            b.steerlm_pipeline_preprocess().call_convert_rows(store, source, split, options, chunk, first_line)
        })?;
        Ok(out.into())
    }
}

struct TreeComponent {
    instance: Instance<bindings::preprocess::PreprocessComponent>,
}

impl TreeConverter for TreeComponent {
    fn convert(&mut self, chunk: &[u8], first_line: u64) -> Result<TreeChunkOutput> {
        let out = self
            .instance
            .call(|b, store| b.steerlm_pipeline_preprocess().call_convert_trees(store, chunk, first_line))?;
        Ok(out.into())
    }
    fn shuffle_order(&mut self, count: u32, seed: u64) -> Result<Vec<u32>> {
        self.instance.call(|b, store| b.steerlm_pipeline_preprocess().call_shuffle_order(store, count, seed))
    }
    fn train_count(&mut self, count: u64, fraction: f64) -> Result<u64> {
        self.instance.call(|b, store| b.steerlm_pipeline_preprocess().call_train_count(store, count, fraction))
    }
}
