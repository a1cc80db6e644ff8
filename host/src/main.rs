//! `steerlm`: SteerLM data preparation through sandboxed WASI components, and SteerLM
//! reward models on the CPU or through wgpu.

use clap::Parser;
use steerlm::{commands, output};

fn main() {
    let cli = commands::Cli::parse();
    output::install_interrupt_cleanup();
    if let Err(error) = commands::run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
