//! `--manifest` and `verify-manifest` through the binary: the manifest records the
//! command, its options, the embedded component's hash and every input's and output's
//! sha256 and line count (checked against an independent sha256); `verify-manifest`
//! reruns the conversion and passes, and fails on a forged hash, an edited output, an
//! edited input, a command that is not a conversion, a malformed hash or no outputs;
//! stdin cannot be recorded, and an unwritable manifest path fails before converting.

use std::fs;
use std::path::Path;

use crate::common::{assert_success, fixture, listing, p, stderr, steerlm, tempdir};

/// Runs `command --input-file IN --output-file OUT --manifest MANIFEST` and checks it succeeded.
fn convert_with_manifest(command: &str, input: &Path, output: &Path, manifest: &Path) {
    assert_success(&steerlm(&[
        command,
        "--input-file",
        p(input),
        "--output-file",
        p(output),
        "--manifest",
        p(manifest),
    ]));
}

fn manifest_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn manifest_records_hashes_and_verify_reproduces_the_bytes() {
    let dir = tempdir();
    let manifest = dir.path().join("run.manifest.json");
    let out = dir.path().join("out.jsonl.gz");
    let input = fixture("regression/input.jsonl");
    convert_with_manifest("to-regression", &input, &out, &manifest);
    let json = manifest_json(&manifest);
    assert_eq!(json["command"], "to-regression");
    assert_eq!(json["steerlm_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["options"]["use_record_system"], "false");
    assert_eq!(json["options"]["engine"], "component");
    assert!(json["argv"].as_array().unwrap().iter().all(|a| a != "--manifest"));
    // The component hash is the embedded component's: what export-components writes.
    let exported = dir.path().join("components");
    assert_success(&steerlm(&["export-components", p(&exported)]));
    let wasm = fs::read(exported.join("steerlm-regression.wasm")).unwrap();
    assert_eq!(json["components"][0]["sha256"], sha256_hex(&wasm));
    assert_eq!(json["inputs"][0]["sha256"], sha256_hex(&fs::read(&input).unwrap()));
    assert_eq!(json["inputs"][0]["lines"], 208);
    assert_eq!(json["outputs"][0]["sha256"], sha256_hex(&fs::read(&out).unwrap()));
    assert_eq!(
        json["outputs"][0]["lines"],
        fs::read_to_string(fixture("regression/expected.jsonl")).unwrap().lines().count()
    );

    let verified = steerlm(&["verify-manifest", p(&manifest)]);
    assert_success(&verified);
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("match "));
}

#[test]
fn verify_manifest_fails_when_inputs_outputs_or_hashes_changed() {
    let dir = tempdir();
    fs::copy(fixture("helpsteer/raw/train.jsonl"), dir.path().join("train.jsonl")).unwrap();
    fs::copy(fixture("helpsteer/raw/validation.jsonl"), dir.path().join("validation.jsonl")).unwrap();
    let out = dir.path().join("out");
    let manifest = dir.path().join("m.json");
    let run = |extra: &[&str]| {
        let mut args = vec!["preprocess", "helpsteer", "--input-dir", p(dir.path()), "--output-dir", p(&out)];
        args.extend_from_slice(extra);
        steerlm(&args)
    };
    assert_success(&run(&["--manifest", p(&manifest)]));
    assert_eq!(manifest_json(&manifest)["components"][0]["name"], "preprocess");
    assert_eq!(manifest_json(&manifest)["outputs"].as_array().unwrap().len(), 2);
    assert_success(&steerlm(&["verify-manifest", p(&manifest)]));

    // A recorded output hash that the re-run cannot reproduce.
    let mut json = manifest_json(&manifest);
    json["outputs"][1]["sha256"] = serde_json::json!("0".repeat(64));
    let forged = dir.path().join("forged.json");
    fs::write(&forged, serde_json::to_vec(&json).unwrap()).unwrap();
    let verified = steerlm(&["verify-manifest", p(&forged)]);
    assert_eq!(verified.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verified.stdout).contains("DIFFERS"));

    // An edited output, then an edited input.
    fs::write(out.join("val.jsonl"), b"{}\n").unwrap();
    let verified = steerlm(&["verify-manifest", p(&manifest)]);
    assert_eq!(verified.status.code(), Some(1));
    assert!(stderr(&verified).contains("was modified"), "{}", stderr(&verified));
    assert_success(&run(&[]));
    let mut train = fs::read(dir.path().join("train.jsonl")).unwrap();
    train.extend_from_slice(b"\n");
    fs::write(dir.path().join("train.jsonl"), train).unwrap();
    let verified = steerlm(&["verify-manifest", p(&manifest)]);
    assert_eq!(verified.status.code(), Some(1));
    assert!(stderr(&verified).contains("changed since"), "{}", stderr(&verified));
}

/// A "manifest" that never ends is refused: a device at once, and a gzip stream that
/// inflates past 16 MiB at that limit, not read into memory.
#[test]
fn verify_manifest_refuses_an_endless_file() {
    let verified = steerlm(&["verify-manifest", "/dev/zero"]);
    assert_eq!(verified.status.code(), Some(1));
    assert!(stderr(&verified).contains("/dev/zero is not a regular file"), "{}", stderr(&verified));
    let dir = tempdir();
    let bomb = dir.path().join("m.json.gz");
    let mut gzip = flate2::write::GzEncoder::new(fs::File::create(&bomb).unwrap(), flate2::Compression::best());
    std::io::Write::write_all(&mut gzip, &vec![b' '; 64 << 20]).unwrap();
    gzip.finish().unwrap();
    let verified = steerlm(&["verify-manifest", p(&bomb)]);
    assert_eq!(verified.status.code(), Some(1));
    assert!(
        stderr(&verified).contains("m.json.gz is larger than 16 MiB: not a steerlm manifest"),
        "{}",
        stderr(&verified)
    );
}

#[test]
fn manifest_needs_files_not_stdin() {
    let dir = tempdir();
    let out = steerlm(&[
        "format",
        "--input-file",
        "-",
        "--output-file",
        p(&dir.path().join("x.jsonl")),
        "--manifest",
        p(&dir.path().join("m.json")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot record `-`"));
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}

#[test]
fn verify_manifest_only_reruns_conversions_and_checks_its_input() {
    let dir = tempdir();
    let out = dir.path().join("out.jsonl");
    let manifest = dir.path().join("m.json");
    let input = fixture("regression/input.jsonl");
    convert_with_manifest("format", &input, &out, &manifest);
    let rewrite = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut json = manifest_json(&manifest);
        edit(&mut json);
        let path = dir.path().join("edited.json");
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        steerlm(&["verify-manifest", p(&path)])
    };
    // Another command in argv is refused, not run.
    let exported = dir.path().join("exported");
    let out = rewrite(&|j| {
        j["argv"] = serde_json::json!(["export-components", p(&exported)]);
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a conversion"), "{}", stderr(&out));
    assert!(!exported.exists());
    // A hash that is not a sha256, and no outputs at all.
    let out = rewrite(&|j| j["outputs"][0]["sha256"] = serde_json::json!("aaaaaaaaaaaé"));
    assert!(stderr(&out).contains("is not a sha256"), "{}", stderr(&out));
    let out = rewrite(&|j| j["outputs"] = serde_json::json!([]));
    assert!(stderr(&out).contains("no outputs"), "{}", stderr(&out));
    // An input that became a device or a FIFO is refused at once, not read forever (or
    // waited on).
    let fifo = dir.path().join("fifo");
    crate::common::mkfifo(&fifo);
    for endless in [Path::new("/dev/zero"), fifo.as_path()] {
        let started = std::time::Instant::now();
        let out = rewrite(&|j| j["inputs"][0]["path"] = serde_json::json!(p(endless)));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("is not a regular file"), "{}", stderr(&out));
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{endless:?}");
    }
    // A command line that reads something the inputs do not list (another file, the FIFO,
    // /dev/zero) is refused before it runs: the listed input's hash would vouch for a file
    // the re-run never reads.
    let other = dir.path().join("other.jsonl");
    fs::write(&other, "{}\n").unwrap();
    for unlisted in [other.as_path(), fifo.as_path(), Path::new("/dev/zero")] {
        let out = rewrite(&|j| j["argv"][2] = serde_json::json!(p(unlisted)));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let says = format!("its command line reads --input-file {}, which its inputs do not list", p(unlisted));
        assert!(stderr(&out).contains(&says), "{}", stderr(&out));
    }
}

/// `--manifest m.json.gz` writes gzip; verify-manifest reads it back.
#[test]
fn a_gzipped_manifest_verifies() {
    let dir = tempdir();
    let (out, manifest) = (dir.path().join("out.jsonl"), dir.path().join("m.json.gz"));
    convert_with_manifest("to-regression", &fixture("regression/input.jsonl"), &out, &manifest);
    assert_eq!(&fs::read(&manifest).unwrap()[..2], [0x1f, 0x8b]);
    assert_success(&steerlm(&["verify-manifest", p(&manifest)]));
}

#[test]
fn an_unwritable_manifest_path_fails_before_converting() {
    let dir = tempdir();
    let out = dir.path().join("out.jsonl");
    let result = steerlm(&[
        "to-regression",
        "--input-file",
        p(&fixture("regression/input.jsonl")),
        "--output-file",
        p(&out),
        "--manifest",
        p(&dir.path().join("missing-dir/m.json")),
    ]);
    assert_eq!(result.status.code(), Some(1));
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
