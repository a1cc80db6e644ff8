//! Running the `steerlm` binary in tests: one component compile cache for the whole
//! test run, and the failure output in every assertion message.

use std::path::Path;
use std::process::{Command, Output};

/// `steerlm ARGS`, not yet run.
pub fn steerlm_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_steerlm"));
    command.env("STEERLM_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache"));
    command.args(args);
    command
}

/// Runs `steerlm ARGS` to completion.
pub fn steerlm(args: &[&str]) -> Output {
    steerlm_command(args).output().expect("run steerlm")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(out.status.success(), "steerlm failed: {}", stderr(out));
}

/// Asserts a run failed with exit status 1; returns its stderr.
#[track_caller]
pub fn assert_failure(out: &Output) -> String {
    let stderr = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected a failure, got: {stderr}");
    stderr
}
