//! `steerlm`: SteerLM data preparation through sandboxed WASI components.

mod bad_records;
mod commands;
mod engine;
mod input;
mod model;
mod output;
mod pipeline;
mod sandbox;

use clap::Parser;

fn main() {
    let cli = commands::Cli::parse();
    output::install_interrupt_cleanup();
    if let Err(error) = commands::run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
