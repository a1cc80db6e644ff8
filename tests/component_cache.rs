//! The compiled-component cache through the binary: whatever is done to its files or
//! its folder, a conversion still gives the golden bytes, and nothing untrusted is loaded:
//!
//! - cache entries swapped between two components are recompiled, said so, and
//!   trusted again once rewritten;
//! - a truncated entry is recompiled and rewritten;
//! - a cache folder other users can write is not used.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{fixture, p, stderr, steerlm_command, tempdir};

/// The conversions used here, each through its own component.
#[derive(Clone, Copy)]
enum Conversion {
    /// The regression component.
    ToRegression,
    /// The preprocess component.
    HelpSteer,
}

/// Runs `conversion` with `cache` as the cache folder, checks the output is the
/// golden's, and returns the run (for its messages).
fn convert_and_check(cache: &Path, conversion: Conversion) -> Output {
    let out = tempdir();
    // This test's own cache folder, not the one the other tests share.
    let mut command = steerlm_command(&[]);
    command.env("STEERLM_CACHE_DIR", cache).env_remove("STEERLM_NO_CACHE");
    let result = match conversion {
        Conversion::ToRegression => command.args([
            "to-regression",
            "--input-file",
            p(&fixture("regression/input.jsonl")),
            "--output-file",
            p(&out.path().join("out.jsonl")),
        ]),
        Conversion::HelpSteer => command.args([
            "preprocess",
            "helpsteer",
            "--input-dir",
            p(&fixture("helpsteer/raw")),
            "--output-dir",
            p(out.path()),
        ]),
    }
    .output()
    .unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    let pairs = match conversion {
        Conversion::ToRegression => vec![("out.jsonl", "regression/expected.jsonl")],
        Conversion::HelpSteer => {
            vec![("train.jsonl", "helpsteer/expected/train.jsonl"), ("val.jsonl", "helpsteer/expected/val.jsonl")]
        }
    };
    for (ours, golden) in pairs {
        assert!(fs::read(out.path().join(ours)).unwrap() == fs::read(fixture(golden)).unwrap(), "{ours} differs");
    }
    result
}

fn cache_files(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(cache).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// A cache filled by one conversion: returns the one file it added.
fn fill(cache: &Path, conversion: Conversion) -> PathBuf {
    let before = cache_files(cache);
    convert_and_check(cache, conversion);
    let added: Vec<PathBuf> = cache_files(cache).into_iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(added.len(), 1, "{added:?}");
    added[0].clone()
}

#[test]
fn swapped_cache_files_are_never_loaded_as_the_wrong_component() {
    let cache = tempdir();
    let regression = fill(cache.path(), Conversion::ToRegression);
    let preprocess = fill(cache.path(), Conversion::HelpSteer);
    let (a, b) = (fs::read(&regression).unwrap(), fs::read(&preprocess).unwrap());
    assert_ne!(a, b);
    fs::write(&regression, &b).unwrap();
    fs::write(&preprocess, &a).unwrap();

    let run = convert_and_check(cache.path(), Conversion::ToRegression);
    assert!(stderr(&run).contains("written for another component or engine"), "{}", stderr(&run));
    convert_and_check(cache.path(), Conversion::HelpSteer);
    // Both entries were rewritten with what they should hold, and are trusted again.
    for conversion in [Conversion::ToRegression, Conversion::HelpSteer] {
        let run = convert_and_check(cache.path(), conversion);
        assert!(!stderr(&run).contains("warning"), "{}", stderr(&run));
    }
    assert_eq!(cache_files(cache.path()).len(), 2);
}

#[test]
fn a_truncated_cache_file_is_not_loaded() {
    let cache = tempdir();
    let entry = fill(cache.path(), Conversion::ToRegression);
    let good = fs::read(&entry).unwrap();
    fs::write(&entry, &good[..good.len() * 2 / 3]).unwrap();
    let run = convert_and_check(cache.path(), Conversion::ToRegression);
    assert!(stderr(&run).contains("truncated or corrupted"), "{}", stderr(&run));
    let run = convert_and_check(cache.path(), Conversion::ToRegression);
    assert!(!stderr(&run).contains("warning"), "the entry was not rewritten: {}", stderr(&run));
}

#[test]
fn a_cache_folder_other_users_can_write_is_not_used() {
    let cache = tempdir();
    fs::set_permissions(cache.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let run = convert_and_check(cache.path(), Conversion::ToRegression);
    let message = stderr(&run);
    assert!(message.contains("not using the component cache") && message.contains("mode 777"), "{message}");
    assert!(cache_files(cache.path()).is_empty(), "wrote into a folder others can write");
}
