//! What to do with records that cannot be converted (`--on-error`).

use crate::output::Output;
use anyhow::{Result, bail};
use clap::ValueEnum;
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
    /// `--error-report`: like every output, it appears only when the command succeeds.
    report: Option<Output>,
    skipped: u64,
}

impl BadRecords {
    pub fn new(policy: OnError, report: Option<PathBuf>) -> Result<Self> {
        let report = report.map(|path| Output::create(&path)).transpose()?;
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
            if let Some(report) = &mut self.report {
                let line = serde_json::json!({ "file": file, "line": error.line, "error": error.message });
                report.write_all(format!("{line}\n").as_bytes())?;
            }
        }
        Ok(())
    }

    /// Commits the report and prints a summary of what was skipped.
    pub fn finish(self) -> Result<()> {
        let report_name = self.report.as_ref().map(Output::name);
        if let Some(report) = self.report {
            report.commit()?;
        }
        if self.skipped > SHOWN {
            eprintln!("... and {} more", self.skipped - SHOWN);
        }
        if self.skipped > 0 {
            let where_ = report_name.map(|name| format!(" (listed in {name})")).unwrap_or_default();
            eprintln!("skipped {} bad record(s){where_}", self.skipped);
        }
        Ok(())
    }
}
