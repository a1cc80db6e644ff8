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
//! debugging a hang; benches compare both in one run with [`set_checks`].
//! `STEERLM_SHADER_CHECKS=none` also leaves out naga's index clamps and division guards,
//! for measuring what they cost on a GPU. It is not a default: the clamps are what keeps
//! a wrong index inside workgroup memory. Storage buffers stay guarded where the driver
//! does it itself (Vulkan's robustBufferAccess2).

use std::sync::atomic::{AtomicU8, Ordering};

/// Which of wgpu's runtime checks the kernels are compiled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShaderChecks {
    /// Every check but the loop counter (the default).
    Trusted,
    /// Every check wgpu has (`STEERLM_SHADER_CHECKS=full`).
    Full,
    /// None at all (`STEERLM_SHADER_CHECKS=none`).
    None,
}

impl ShaderChecks {
    /// What `STEERLM_SHADER_CHECKS` asks for; anything but `full` and `none` is the default.
    pub fn from_setting(value: Option<&str>) -> ShaderChecks {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("full") => ShaderChecks::Full,
            Some("none") => ShaderChecks::None,
            _ => ShaderChecks::Trusted,
        }
    }

    fn code(self) -> u8 {
        match self {
            ShaderChecks::Trusted => 1,
            ShaderChecks::Full => 2,
            ShaderChecks::None => 3,
        }
    }
}

/// 0: not yet decided (read the environment), else [`ShaderChecks::code`].
static MODE: AtomicU8 = AtomicU8::new(0);

/// The checks kernels compiled from now on get. For benches and tests comparing them.
pub fn set_checks(checks: ShaderChecks) {
    MODE.store(checks.code(), Ordering::Relaxed);
}

/// The checks kernels are compiled with: `STEERLM_SHADER_CHECKS`, or [`set_checks`].
pub fn checks() -> ShaderChecks {
    let mut mode = MODE.load(Ordering::Relaxed);
    if mode == 0 {
        let asked = ShaderChecks::from_setting(std::env::var("STEERLM_SHADER_CHECKS").ok().as_deref());
        // A racing set_checks wins: only replace "undecided".
        let _ = MODE.compare_exchange(0, asked.code(), Ordering::Relaxed, Ordering::Relaxed);
        mode = MODE.load(Ordering::Relaxed);
    }
    [ShaderChecks::Trusted, ShaderChecks::Full, ShaderChecks::None]
        .into_iter()
        .find(|c| c.code() == mode)
        .unwrap_or(ShaderChecks::Trusted)
}

/// The checks a kernel is compiled with.
pub fn runtime_checks() -> wgpu::ShaderRuntimeChecks {
    match checks() {
        ShaderChecks::Full => wgpu::ShaderRuntimeChecks::checked(),
        ShaderChecks::Trusted => {
            wgpu::ShaderRuntimeChecks { force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() }
        }
        // What this gives up: see the module comment. On request only.
        ShaderChecks::None => wgpu::ShaderRuntimeChecks::unchecked(),
    }
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
        use super::ShaderChecks;
        assert_eq!(ShaderChecks::from_setting(None), ShaderChecks::Trusted);
        assert_eq!(ShaderChecks::from_setting(Some(" FULL ")), ShaderChecks::Full);
        assert_eq!(ShaderChecks::from_setting(Some("none")), ShaderChecks::None);
        assert_eq!(ShaderChecks::from_setting(Some("off")), ShaderChecks::Trusted);
        super::set_checks(ShaderChecks::Trusted);
        let trusted = super::runtime_checks();
        assert!(!trusted.force_loop_bounding);
        assert!(trusted.bounds_checks && trusted.int_div_checks);
        super::set_checks(ShaderChecks::Full);
        assert!(super::runtime_checks().force_loop_bounding);
        super::set_checks(ShaderChecks::None);
        let none = super::runtime_checks();
        assert!(!none.force_loop_bounding && !none.bounds_checks && !none.int_div_checks);
        super::set_checks(ShaderChecks::Trusted);
    }
}
