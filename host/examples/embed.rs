//! Embedding steerlm's sandboxed components in another Rust program.
//!
//!     cargo run -p steerlm --example embed -- tests/fixtures/conversions/regression/input.jsonl
//!
//! Prints the regression lines for the SFT file given (the same bytes as
//! `steerlm to-regression`), or the first bad line's number and reason.

use anyhow::{Result, bail};
use steerlm::bindings::types::TemplateOptions;
use steerlm::sandbox::{Limits, Sandbox};

fn main() -> Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "tests/fixtures/conversions/regression/input.jsonl".into());
    let sft = std::fs::read(&path)?;

    // One engine for the process; each instance is granted nothing and bounded by `Limits`.
    let sandbox = Sandbox::new(Limits::default())?;
    let mut regression = sandbox.regression()?;

    // A call takes whole lines and the number of the first (for error messages).
    let options = TemplateOptions { use_record_system: false };
    let out = regression
        .call(|component, store| component.steerlm_pipeline_regression().call_convert_chunk(store, &sft, 1, options))?;
    if let Some(error) = out.errors.first() {
        bail!("{path}:{}: {}", error.line, error.message);
    }
    std::io::Write::write_all(&mut std::io::stdout(), &out.output)?;
    eprintln!("{} records -> {} lines", out.records_in, out.lines_out);
    Ok(())
}
