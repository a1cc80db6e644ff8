//! The library, called natively, against the reference outputs in tests/fixtures.

use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::PathBuf;
use steerlm_core::chunk::Split;
use steerlm_core::preprocess::{self, PreprocessOptions, Source};
use steerlm_core::template::TemplateOptions;
use steerlm_core::{oasst, regression, shuffle};

fn fixture(path: &str) -> Vec<u8> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/conversions").join(path);
    let bytes = std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        MultiGzDecoder::new(&bytes[..]).read_to_end(&mut out).unwrap();
        out
    } else {
        bytes
    }
}

fn assert_same(ours: &[u8], golden: &str) {
    let want = fixture(golden);
    if ours != want {
        let ours = String::from_utf8_lossy(ours);
        let want = String::from_utf8_lossy(&want);
        for (i, (a, b)) in ours.lines().zip(want.lines()).enumerate() {
            assert_eq!(a, b, "{golden}: first difference at line {}", i + 1);
        }
        panic!("{golden}: {} lines, expected {}", ours.lines().count(), want.lines().count());
    }
}

#[test]
fn regression_matches_reference() {
    let out = regression::convert(&fixture("regression/input.jsonl"), 1, TemplateOptions::default());
    assert_eq!(out.errors, vec![]);
    assert_same(&out.output, "regression/expected.jsonl");
}

#[test]
fn regression_errors_name_line_two() {
    for name in ["label_not_string", "no_colon", "not_a_number", "trailing_comma"] {
        let out =
            regression::convert(&fixture(&format!("regression/errors/{name}.jsonl")), 1, TemplateOptions::default());
        assert_eq!(out.errors.len(), 1, "{name}");
        assert_eq!(out.errors[0].line, 2, "{name}");
    }
}

fn preprocess_pair(source: Source, raw: &[(&str, Split)], only_helpfulness: bool) -> (Vec<u8>, Vec<u8>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (file, split) in raw {
        let out = preprocess::convert(source, *split, PreprocessOptions { only_helpfulness }, &fixture(file), 1);
        assert_eq!(out.errors, vec![], "{file}");
        train.extend(out.train);
        val.extend(out.val);
    }
    (train, val)
}

#[test]
fn helpsteer_matches_reference() {
    let raw = [("helpsteer/raw/train.jsonl", Split::Train), ("helpsteer/raw/validation.jsonl", Split::Val)];
    let (train, val) = preprocess_pair(Source::HelpSteer, &raw, false);
    assert_same(&train, "helpsteer/expected/train.jsonl");
    assert_same(&val, "helpsteer/expected/val.jsonl");
}

#[test]
fn helpsteer2_matches_reference() {
    let raw = [("helpsteer2/raw/train.jsonl.gz", Split::Train), ("helpsteer2/raw/validation.jsonl.gz", Split::Val)];
    for (only, dir) in [(false, "expected"), (true, "expected_only_helpfulness")] {
        let (train, val) = preprocess_pair(Source::HelpSteer2, &raw, only);
        assert_same(&train, &format!("helpsteer2/{dir}/train.jsonl"));
        assert_same(&val, &format!("helpsteer2/{dir}/val.jsonl"));
    }
}

#[test]
fn helpsteer2_preference_matches_reference() {
    let raw = [("helpsteer2_preference/raw/preference.jsonl", Split::Train)];
    for (only, dir) in [(false, "expected"), (true, "expected_only_helpfulness")] {
        let (train, val) = preprocess_pair(Source::HelpSteer2Preference, &raw, only);
        assert_same(&train, &format!("helpsteer2_preference/{dir}/train.jsonl"));
        assert_same(&val, &format!("helpsteer2_preference/{dir}/val.jsonl"));
    }
}

#[test]
fn oasst_matches_reference() {
    let out = oasst::convert_trees(&fixture("oasst/2023-04-12_oasst_all.trees.jsonl.gz"), 1);
    assert_eq!(out.errors, vec![]);
    let n = out.tree_ends.len();
    let order = shuffle::python_shuffle_order(n as u32, 10);
    let train_n = shuffle::train_count(n as u64, 0.95) as usize;
    let tree = |i: usize| {
        let start = if i == 0 { 0 } else { out.tree_ends[i - 1] as usize };
        &out.output[start..out.tree_ends[i] as usize]
    };
    let train: Vec<u8> = order[..train_n].iter().flat_map(|&i| tree(i as usize).to_vec()).collect();
    let val: Vec<u8> = order[train_n..].iter().flat_map(|&i| tree(i as usize).to_vec()).collect();
    assert_same(&train, "oasst/expected/train.jsonl");
    assert_same(&val, "oasst/expected/val.jsonl");
}
