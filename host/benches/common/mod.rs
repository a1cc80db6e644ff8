//! What the benches share: running a command and reading its own resource usage.

use std::process::Command;
use std::time::Instant;

pub struct Run {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
}

/// Runs a command and reads its own resource usage with wait4.
#[allow(clippy::zombie_processes)] // the child is reaped by wait4, which clippy does not see
pub fn run_measured(command: &mut Command) -> Run {
    let started = Instant::now();
    let child = command.spawn().expect("spawn steerlm");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain wait4 on our own child with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "steerlm failed");
    let seconds = started.elapsed().as_secs_f64();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run { seconds, cpu_seconds: tv(usage.ru_utime) + tv(usage.ru_stime), peak_rss_mib: usage.ru_maxrss as f64 / 1024.0 }
}
