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

    /// Why the loops of one shader might not end: a `loop` or `while`, a `for` that does not
    /// step its counter toward its bound by a positive constant (a literal, an upper-case
    /// constant, one of the named positive `let`s, or products and quotients of those) or
    /// halve it down to zero, or a loop body that assigns to its counter. With the number
    /// of `for` loops read.
    fn loop_problems(name: &str, source: &str) -> (Vec<String>, usize) {
        // `let`s of matmul_tiled.wgsl, products of its positive override constants.
        const POSITIVE_LETS: [&str; 2] = ["steps4", "invocations"];
        let positive = |step: &str| {
            step.trim_end_matches('u').parse::<u32>().is_ok_and(|v| v > 0)
                || step.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                || POSITIVE_LETS.contains(&step)
        };
        let constant_step = |step: &str| {
            let tokens: Vec<&str> = step.split(' ').collect();
            tokens.iter().step_by(2).all(|t| positive(t))
                && tokens.iter().skip(1).step_by(2).all(|op| ["*", "/"].contains(op))
        };
        let mut problems = Vec::new();
        let code: String = source.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
        let words: Vec<&str> = code.split(|c: char| !c.is_alphanumeric() && c != '_').collect();
        for word in ["loop", "while"] {
            if words.contains(&word) {
                problems.push(format!("{name}: `{word}`: only `for` loops of the checked shape may run"));
            }
        }
        // The text from `open` to its matching `close`, exclusive.
        let matching = |text: &str, open: char, close: char| -> usize {
            let mut depth = 0i32;
            text.find(|c: char| {
                depth += i32::from(c == open) - i32::from(c == close);
                depth < 0
            })
            .unwrap_or(text.len())
        };
        let mut loops = 0;
        for (at, _) in code.match_indices("for (") {
            loops += 1;
            let after = &code[at + "for (".len()..];
            let end = matching(after, '(', ')');
            let header = after[..end].split_whitespace().collect::<Vec<_>>().join(" ");
            let body = after[end..].find('{').map_or("", |open| {
                let inside = &after[end + open + 1..];
                &inside[..matching(inside, '{', '}')]
            });
            let parts: Vec<&str> = header.split("; ").collect();
            let [init, test, step] = parts[..] else {
                problems.push(format!("{name}: `for ({header})`: want init; test; step"));
                continue;
            };
            let counter = init.strip_prefix("var ").and_then(|i| i.split(' ').next()).unwrap_or_default();
            let test: Vec<&str> = test.splitn(3, ' ').collect();
            let step: Vec<&str> = step.splitn(5, ' ').collect();
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
            if !ok {
                problems.push(format!(
                    "{name}: `for ({header})` does not step its counter toward its bound by a positive constant"
                ));
                continue;
            }
            // The body must not assign to the counter.
            let assigns = body.split([';', '{', '}']).map(str::trim).find(|s| {
                s.strip_prefix(counter).is_some_and(|rest| {
                    let rest = rest.trim_start();
                    ["=", "+=", "-=", "*=", "/=", "++", "--"].iter().any(|op| rest.starts_with(op))
                        && !rest.starts_with("==")
                })
            });
            if let Some(statement) = assigns {
                problems.push(format!("{name}: `{statement}` assigns to the loop counter `{counter}` in its body"));
            }
        }
        (problems, loops)
    }

    /// What makes leaving out wgpu's loop counter sound: every loop in every shader ends
    /// ([`loop_problems`]).
    #[test]
    fn every_shader_loop_ends() {
        let shaders = shaders();
        assert!(shaders.len() >= 10, "found only {} shaders", shaders.len());
        let mut loops = 0;
        for (name, source) in &shaders {
            let (problems, count) = loop_problems(name, source);
            assert!(problems.is_empty(), "{}", problems.join("\n"));
            loops += count;
        }
        assert!(loops >= 60, "found only {loops} loops");
    }

    #[test]
    fn loops_that_might_not_end_are_found() {
        let fine = "for (var i = lid; i < n * HD4; i = i + WORKGROUP) { x = x + 1u; }\n\
                    for (var s = 128u; s > 0u; s = s / 2u) {}\n\
                    for (var k0 = 0u; k0 < k4; k0 = k0 + TILE_K / 4u) {}";
        assert_eq!(loop_problems("fine", fine), (Vec::new(), 3));
        for bad in [
            "loop { break; }",
            "while (x < 3u) { x = x + 1u; }",
            "for (var i = 0u; i < n; i = i + step) {}",
            "for (var i = 0u; i < n; i = i + 0u) {}",
            "for (var i = n; i > 0u; i = i - 1u) {}",
            "for (var i = 0u; i < n; i = i * 2u) {}",
            "for (var i = 0u; j < n; i = i + 1u) {}",
            "for (var i = 0u; i < n; i = i + 1u) { i = 0u; }",
            "for (var i = 0u; i < n; i = i + 1u) { if (x) { i -= 1u; } }",
        ] {
            let (problems, _) = loop_problems("bad", bad);
            assert!(!problems.is_empty(), "not flagged: {bad}");
        }
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
