//! steerlm's native host as a library: the sandbox that runs the conversion components,
//! streaming I/O, and the reward model (CPU and wgpu). The `steerlm` binary is a thin
//! command line over it; other Rust programs can embed the same pieces.

pub mod annotate;
pub mod bad_records;
pub mod bindings;
pub mod commands;
pub mod component_cache;
pub mod component_server;
pub mod engine;
pub mod input;
pub mod manifest;
pub use steerlm_model as model;
pub mod nemo;
pub mod output;
pub mod pipeline;
pub mod same_file;
pub mod sandbox;
pub mod serve;
pub mod stats;
