//! The end-to-end tests of the `steerlm` binary, as one test binary:
//! `cargo test -p steerlm --test cli [MODULE::]` (e.g. `serve::` for one topic).
//!
//! One module per topic; each module's `//!` says what it tests. They all run the built
//! binary (`CARGO_BIN_EXE_steerlm`) in child processes, so they share no state but the
//! component compile cache in `CARGO_TARGET_TMPDIR` and may run in parallel. What they
//! share as code is in `common`. One binary rather than one per topic: every test
//! binary is linked against the steerlm library and its dependencies, so one binary
//! means one link after each change to the library instead of one per topic.

mod common;

mod annotate;
mod component_cache;
mod conversions;
mod import_nemo;
mod input_rules;
mod manifest;
mod outputs;
mod reward_checkpoints;
mod rlhf_apis;
mod score;
mod serve;
mod serve_component;
mod stats;
