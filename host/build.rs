//! Builds the WASI components (`components/*`, target `wasm32-wasip2`) and hands them
//! to the host, which embeds them with `include_bytes!`.
//!
//! The components are built by a nested `cargo build` into their own target directory
//! (`target/components`), always with the `wasm` profile, whatever profile the host uses.
//! Set `STEERLM_COMPONENTS_DIR` to a folder of prebuilt `steerlm_*_component.wasm`
//! files to skip that step.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (file stem in OUT_DIR, cargo package) of every embedded component.
const COMPONENTS: [(&str, &str); 5] = [
    ("labels", "steerlm-labels-component"),
    ("formatting", "steerlm-formatting-component"),
    ("regression", "steerlm-regression-component"),
    ("preprocess", "steerlm-preprocess-component"),
    ("http", "steerlm-http-component"),
];
const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("host/ sits in the workspace").to_path_buf();

    println!("cargo:rerun-if-env-changed=STEERLM_COMPONENTS_DIR");
    let built = match env::var_os("STEERLM_COMPONENTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            for watched in ["components", "wit", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
                println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
            }
            build_components(&workspace)
        }
    };
    for (stem, package) in COMPONENTS {
        let file = built.join(format!("{}.wasm", package.replace('-', "_")));
        std::fs::copy(&file, out_dir.join(format!("{stem}.wasm")))
            .unwrap_or_else(|e| panic!("component {}: {e}", file.display()));
    }
}

fn build_components(workspace: &Path) -> PathBuf {
    ensure_wasm_target();
    let target_root = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    let target_dir = target_root.join("components");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .args(["--profile", "wasm", "--target", WASM_TARGET, "--target-dir"])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    for (_, package) in COMPONENTS {
        command.args(["-p", package]);
    }
    // The outer build's flags are for the host target, not for wasm.
    for var in
        ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "CARGO_BUILD_RUSTFLAGS"]
    {
        command.env_remove(var);
    }
    let status = command.status().expect("run cargo to build the components");
    assert!(status.success(), "building the WASI components failed (see the cargo output above)");
    target_dir.join(WASM_TARGET).join("wasm")
}

/// Installs the `wasm32-wasip2` standard library with rustup when it is missing, so a
/// fresh machine needs no manual step.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc).args(["--print", "target-libdir", "--target", WASM_TARGET]).output();
    if let Ok(out) = libdir {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success()
            && dir.is_dir()
            && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(false)
        {
            return;
        }
    }
    println!("cargo:warning=installing the {WASM_TARGET} target with rustup");
    let status = Command::new("rustup").args(["target", "add", WASM_TARGET]).status();
    match status {
        Ok(s) if s.success() => {}
        _ => panic!(
            "the {WASM_TARGET} target is missing and `rustup target add {WASM_TARGET}` failed; install it and rebuild"
        ),
    }
}
