//! The runtime checks naga writes into our shaders when wgpu compiles them.
//!
//! By default wgpu guards every loop with a hidden iteration counter
//! (`force_loop_bounding`), so an untrusted shader with an endless loop cannot hang the
//! GPU. That counter is an extra exit the driver's compiler cannot see past: it stops
//! fully unrolling the small fixed loops our kernels are made of (register blocks,
//! staging loops, fragment steps), so per-invocation accumulator arrays stay in memory
//! instead of registers. Measured with `gpu-info --bench` on Mesa 26.1's lavapipe at
//! 1024x1536x576, the tiled matmul runs 2.3 GFLOP/s with the counter and 8-11 without.
//!
//! Our shaders are ours, not user input, and every loop in them ends: its counter starts
//! below its bound and moves toward it by a positive constant, with bounds that are sizes
//! of buffers (far below 2^31, so no wrap-around), or it halves a constant to zero.
//! `every_shader_loop_ends` checks that shape for every `for` in `shaders/`, and that there
//! is no `loop` or `while`. So the counter is left out, and nothing else: bounds checks,
//! integer-division guards and zeroed workgroup memory stay (turning them off too measured
//! no difference beyond noise).
//!
//! `STEERLM_SHADER_CHECKS=full` puts the counter back, to compare or to rule it out when
//! debugging a hang; benches compare both in one run with [`set_full_checks`].

use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not yet decided (read the environment), 1: trusted, 2: full.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Whether kernels compiled from now on keep every wgpu check (`true`), or leave out the
/// loop counter (`false`, the default). For benches and tests comparing the two.
pub fn set_full_checks(full: bool) {
    MODE.store(if full { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether the loop counter is in (`STEERLM_SHADER_CHECKS=full`, or [`set_full_checks`]).
pub fn full_checks() -> bool {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let full = std::env::var("STEERLM_SHADER_CHECKS").is_ok_and(|v| v.trim().eq_ignore_ascii_case("full"));
            // A racing set_full_checks wins: only replace "undecided".
            let _ = MODE.compare_exchange(0, if full { 2 } else { 1 }, Ordering::Relaxed, Ordering::Relaxed);
            MODE.load(Ordering::Relaxed) == 2
        }
        mode => mode == 2,
    }
}

/// The checks a kernel is compiled with.
pub fn runtime_checks() -> wgpu::ShaderRuntimeChecks {
    let mut checks = wgpu::ShaderRuntimeChecks::checked();
    if !full_checks() {
        checks.force_loop_bounding = false;
    }
    checks
}

#[cfg(test)]
mod tests {
    /// Every shader source in `shaders/`, by file name.
    fn shaders() -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
        let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "wgsl"))
            .map(|path| {
                (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    /// What makes leaving out wgpu's loop counter sound: every loop in every shader is a
    /// `for` whose counter moves toward its bound by a positive constant (a literal, an
    /// upper-case constant, or one of the named positive `let`s), or halves down to zero.
    #[test]
    fn every_shader_loop_ends() {
        // `let`s of matmul_tiled.wgsl, products of its positive override constants.
        const POSITIVE_LETS: [&str; 2] = ["steps4", "invocations"];
        let positive = |step: &str| {
            step.trim_end_matches('u').parse::<u32>().is_ok_and(|v| v > 0)
                || step.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                || POSITIVE_LETS.contains(&step)
        };
        let shaders = shaders();
        assert!(shaders.len() >= 10, "found only {} shaders", shaders.len());
        let mut loops = 0;
        for (name, source) in &shaders {
            let code: String = source.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
            let words: Vec<&str> = code.split(|c: char| !c.is_alphanumeric() && c != '_').collect();
            for word in ["loop", "while"] {
                assert!(!words.contains(&word), "{name}: `{word}`: only `for` loops of the checked shape may run");
            }
            for header in code.split("for (").skip(1) {
                loops += 1;
                // Up to the `)` that closes `for (`.
                let mut depth = 0i32;
                let end = header
                    .find(|c: char| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth < 0
                    })
                    .unwrap_or(header.len());
                let header = header[..end].split_whitespace().collect::<Vec<_>>().join(" ");
                let parts: Vec<&str> = header.split("; ").collect();
                let [init, test, step] = parts[..] else { panic!("{name}: `for ({header})`: want init; test; step") };
                let counter = init.strip_prefix("var ").and_then(|i| i.split(' ').next()).unwrap_or_default();
                let test: Vec<&str> = test.splitn(3, ' ').collect();
                let step: Vec<&str> = step.splitn(5, ' ').collect();
                // A step of constants: `WORKGROUP`, `1u`, `TILE_K / 4u` (whose constants
                // the shaders keep positive and divisible).
                let constant_step = |step: &str| {
                    let tokens: Vec<&str> = step.split(' ').collect();
                    tokens.iter().step_by(2).all(|t| positive(t))
                        && tokens.iter().skip(1).step_by(2).all(|op| ["*", "/"].contains(op))
                };
                let ok = !counter.is_empty()
                    && test.len() == 3
                    && test[0] == counter
                    && step.len() == 5
                    && step[0..4] == [counter, "=", counter, step[3]]
                    && match (test[1], step[3]) {
                        ("<", "+") => constant_step(step[4]),
                        (">", "/") => test[2] == "0u" && step[4] == "2u",
                        _ => false,
                    };
                assert!(
                    ok,
                    "{name}: `for ({header})` does not step its counter toward its bound by a positive constant"
                );
            }
        }
        assert!(loops >= 60, "found only {loops} loops");
    }

    #[test]
    fn the_loop_counter_is_left_out_unless_asked_for() {
        super::set_full_checks(false);
        let trusted = super::runtime_checks();
        assert!(!trusted.force_loop_bounding);
        assert!(trusted.bounds_checks && trusted.int_div_checks);
        super::set_full_checks(true);
        assert!(super::runtime_checks().force_loop_bounding);
        super::set_full_checks(false);
    }
}
