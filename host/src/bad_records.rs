//! What to do with records that cannot be converted (`--on-error`).

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use std::io::Write;
use std::path::PathBuf;
use steerlm_core::LineError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Stop at the first bad record, naming FILE:LINE and the reason; write nothing.
    Fail,
    /// Write every good record; report the bad ones on stderr (and in --error-report).
    Skip,
}

/// Bad lines printed to stderr in skip mode before the rest are only counted.
const SHOWN: u64 = 20;

/// Applies the policy to the errors of every chunk of every input.
pub struct BadRecords {
    policy: OnError,
    report: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    skipped: u64,
}

impl BadRecords {
    pub fn new(policy: OnError, report: Option<PathBuf>) -> Result<Self> {
        let report = match report {
            Some(path) => {
                let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
                Some((path, std::io::BufWriter::new(file)))
            }
            None => None,
        };
        Ok(BadRecords { policy, report, skipped: 0 })
    }

    /// Fails on the first error under `fail`; records and reports them under `skip`.
    pub fn handle(&mut self, file: &str, errors: Vec<LineError>) -> Result<()> {
        for error in errors {
            if self.policy == OnError::Fail {
                bail!("{file}:{}: {}", error.line, error.message);
            }
            self.skipped += 1;
            if self.skipped <= SHOWN {
                eprintln!("skipped {file}:{}: {}", error.line, error.message);
            }
            if let Some((path, report)) = &mut self.report {
                let line = serde_json::json!({ "file": file, "line": error.line, "error": error.message });
                writeln!(report, "{line}").with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Flushes the report and prints a summary of what was skipped.
    pub fn finish(mut self) -> Result<()> {
        if let Some((path, report)) = &mut self.report {
            report.flush().with_context(|| format!("cannot write {}", path.display()))?;
        }
        if self.skipped > SHOWN {
            eprintln!("... and {} more", self.skipped - SHOWN);
        }
        if self.skipped > 0 {
            let where_ = self.report.as_ref().map(|(p, _)| format!(" (listed in {})", p.display())).unwrap_or_default();
            eprintln!("skipped {} bad record(s){where_}", self.skipped);
        }
        Ok(())
    }
}
