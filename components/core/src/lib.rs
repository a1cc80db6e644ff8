//! steerlm-core: the SteerLM data conversions as a plain Rust library.
//!
//! Everything here reproduces NVIDIA NeMo-Aligner's SteerLM Python scripts byte for
//! byte (see `docs/SPEC.md` in this repository): the chat template, label strings, the
//! regression format and the dataset preprocessing. The WASI components in
//! `components/*` are thin wrappers over this crate, and the `steerlm` host links it
//! natively for benchmarks and tests.
//!
//! All entry points that take file contents work on *chunks*: many JSONL lines at once,
//! reporting per-line errors with absolute line numbers (see [`chunk`]).

pub mod attributes;
pub mod chunk;
pub mod labels;
pub mod oasst;
pub mod preprocess;
pub mod pyfloat;
pub mod pyjson;
pub mod pyvalue;
pub mod record;
pub mod regression;
pub mod shuffle;
pub mod template;
pub mod unique_keys;

pub use attributes::{ALL_ATTRIBUTES, SYSTEM_PROMPT};
pub use chunk::{ChunkOutput, LineError, SplitChunkOutput};
