//! `steerlm`: SteerLM data preparation through sandboxed WASI components, and SteerLM
//! reward models on the CPU or through wgpu.

use clap::Parser;
use steerlm::model::memory_budget::BudgetedAllocator;
use steerlm::{commands, output};

// Chat templates come with checkpoints and render within a memory budget, which only this
// allocator can keep (see steerlm_model::memory_budget).
#[global_allocator]
static ALLOCATOR: BudgetedAllocator = BudgetedAllocator;

fn main() {
    let cli = commands::Cli::parse();
    output::install_interrupt_cleanup();
    // Arguments that are not UTF-8 parse fine but cannot go into a --manifest.
    let argv: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    if let Err(error) = commands::run(cli, &argv) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
