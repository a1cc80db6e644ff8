//! What the integration tests share, written once: where the fixtures are, running the
//! binary ([`cli`]), a server process ([`server`], also used by host/benches), comparing
//! files, and the small file-system helpers.

pub mod cli;
pub mod rest;
pub mod server;

pub use cli::{assert_failure, assert_success, stderr, steerlm, steerlm_command};

use std::fs;
use std::path::{Path, PathBuf};

/// A file of the conversion goldens: tests/fixtures/conversions/PATH (made by
/// NeMo-Aligner's own scripts).
pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/conversions").join(path)
}

/// A fixture reward model: tests/fixtures/models/NAME.
pub fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(name)
}

/// A fixture model's goldens.json: transformers' token ids and scores for its texts.
pub fn goldens(model: &str) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(model_dir(model).join("goldens.json")).unwrap()).unwrap()
}

/// Asserts `ours` holds exactly the bytes of `golden`, naming the first differing line.
#[track_caller]
pub fn assert_same(ours: &Path, golden: &Path) {
    let ours_bytes = fs::read(ours).unwrap_or_else(|e| panic!("{}: {e}", ours.display()));
    let golden_bytes = fs::read(golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
    if ours_bytes != golden_bytes {
        let (a, b) = (String::from_utf8_lossy(&ours_bytes), String::from_utf8_lossy(&golden_bytes));
        let line = a.lines().zip(b.lines()).position(|(x, y)| x != y);
        panic!(
            "{} differs from {} (first differing line {line:?}; {} vs {} lines)",
            ours.display(),
            golden.display(),
            a.lines().count(),
            b.lines().count()
        );
    }
}

/// The names in `dir`, sorted: proves no temporary file was left behind.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The llama9 fixture with `from` replaced by `to` in its config.json (weights and
/// tokenizer linked), in a temporary folder.
pub fn llama9_with_config(from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempdir();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(model_dir("llama9").join(file), dir.path().join(file)).unwrap();
    }
    let config = fs::read_to_string(model_dir("llama9").join("config.json")).unwrap();
    assert!(config.contains(from), "llama9's config.json has no {from}");
    fs::write(dir.path().join("config.json"), config.replace(from, to)).unwrap();
    dir
}

pub fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(p(path)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// A runtime for the async HTTP clients and test servers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

/// A valid SFT record: a user turn, then an assistant turn labeled `humor:1`.
pub const GOOD: &str = r#"{"mask": "User", "conversations": [{"value": "q", "from": "User"}, {"value": "a", "from": "Assistant", "label": "humor:1"}]}"#;
