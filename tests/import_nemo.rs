//! `steerlm import-nemo` on NeMo reward models that megatron-core itself wrote
//! (tests/fixtures/nemo, see its README): each imported folder loads in `score`, and
//! its scores equal megatron-core's own forward pass and the transformers model of the
//! same weights; the errors of what it does not read; nothing half-written.

use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::common::rest::{assert_scores_close, floats};
use crate::common::{assert_failure, assert_success, listing, mkfifo, p, steerlm, tempdir};

fn nemo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nemo").join(name)
}

fn nemo_goldens(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(nemo(name).join("goldens.json")).unwrap()).unwrap()
}

/// Scores the goldens' texts with the imported model and checks them against
/// megatron-core's (`scores`) and transformers' (`hf_scores`) numbers.
fn check_scores(model: &Path, goldens: &Value, device: &str) {
    let dir = tempdir();
    let input = dir.path().join("texts.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    for case in goldens["cases"].as_array().unwrap() {
        writeln!(file, "{}", json!({"text": case["text"]})).unwrap();
    }
    drop(file);
    let output = dir.path().join("scores.jsonl");
    let args = ["score", "--model", p(model), "--device", device, "--precision", "f32"];
    assert_success(&steerlm(&[&args[..], &["--input-file", p(&input), "--output-file", p(&output)]].concat()));
    let lines: Vec<Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (case, line) in goldens["cases"].as_array().unwrap().iter().zip(&lines) {
        assert_eq!(line["num_tokens"], case["token_ids"].as_array().unwrap().len(), "{}", case["name"]);
        assert_scores_close(&floats(&line["scores"]), &floats(&case["scores"]));
        assert_scores_close(&floats(&line["scores"]), &floats(&case["hf_scores"]));
    }
}

/// Imports fixture `input` into `dir`: the four files, and a config that agrees with the
/// one the fixture `goldens`' own conversion made for transformers.
fn import_and_compare_config(input: &str, goldens: &str, dir: &Path, extra: &[&str]) {
    assert_success(&steerlm(&[&["import-nemo", p(&nemo(input)), "--output-dir", p(dir)], extra].concat()));
    assert_eq!(
        listing(dir),
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"],
        "{input}"
    );
    let ours: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let theirs: Value =
        serde_json::from_str(&std::fs::read_to_string(nemo(goldens).join("hf/config.json")).unwrap()).unwrap();
    let fields = [
        "architectures",
        "hidden_size",
        "intermediate_size",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "id2label",
    ];
    for field in fields {
        assert_eq!(ours[field], theirs[field], "{input}: {field}");
    }
}

#[test]
fn zarr_checkpoints_import_and_score_like_megatron_and_transformers() {
    let out = tempdir();
    for (input, goldens) in
        [("llama-zarr", "llama-zarr"), ("nemotron-zarr", "nemotron-zarr"), ("llama-zarr.nemo", "llama-zarr")]
    {
        let dir = out.path().join(input).join("hf");
        import_and_compare_config(input, goldens, &dir, &[]);
        check_scores(&dir, &nemo_goldens(goldens), "cpu");
    }
    // The wgpu path runs the imported model too (lavapipe in CI).
    check_scores(&out.path().join("nemotron-zarr/hf"), &nemo_goldens("nemotron-zarr"), "wgpu");
}

#[test]
fn torch_dist_checkpoints_import_and_score_like_megatron() {
    let out = tempdir();
    // Its model_config.yaml names a Hugging Face tokenizer by hub id, which NeMo does not
    // store: without --tokenizer that is the error, naming the id.
    let dir = out.path().join("hf");
    let error = assert_failure(&steerlm(&["import-nemo", p(&nemo("llama-torch-dist")), "--output-dir", p(&dir)]));
    assert!(
        error.contains("the Hugging Face tokenizer `mistralai/Mistral-7B-v0.1`") && error.contains("--tokenizer"),
        "{error}"
    );
    assert!(!dir.exists());

    import_and_compare_config("llama-torch-dist", "llama-torch-dist", &dir, &["--tokenizer", p(&nemo("hf-tokenizer"))]);
    check_scores(&dir, &nemo_goldens("llama-torch-dist"), "cpu");
    // The same weights saved with the zarr strategy import to the same bytes.
    let zarr = out.path().join("zarr");
    assert_success(&steerlm(&["import-nemo", p(&nemo("llama-zarr")), "--output-dir", p(&zarr)]));
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(zarr.join("model.safetensors")).unwrap()
    );

    // Packed as NeMo packs a checkpoint (an uncompressed tar, members `./...`), it is read
    // in place: the hidden `.metadata` member, chunks at offsets inside `.distcp` members.
    let packed = out.path().join("llama-torch-dist.nemo");
    let mut tar = tar::Builder::new(std::fs::File::create(&packed).unwrap());
    tar.append_dir_all(".", nemo("llama-torch-dist")).unwrap();
    tar.into_inner().unwrap();
    let from_tar = out.path().join("from-tar");
    let tokenizer = nemo("hf-tokenizer");
    assert_success(&steerlm(&["import-nemo", p(&packed), "--output-dir", p(&from_tar), "--tokenizer", p(&tokenizer)]));
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(from_tar.join("model.safetensors")).unwrap()
    );

    // A .distcp file cut short: the error names the file and the tensor whose chunk is
    // missing; nothing is written.
    let damaged = out.path().join("damaged");
    copy_tree(&nemo("llama-torch-dist"), &damaged);
    let distcp = damaged.join("model_weights/__0_1.distcp");
    let bytes = std::fs::read(&distcp).unwrap();
    std::fs::write(&distcp, &bytes[..bytes.len() - 1000]).unwrap();
    let target = out.path().join("out");
    let error = assert_failure(&steerlm(&[
        "import-nemo",
        p(&damaged),
        "--output-dir",
        p(&target),
        "--tokenizer",
        p(&nemo("hf-tokenizer")),
    ]));
    assert!(error.contains("__0_1.distcp") && error.contains("tensor `model."), "{error}");
    assert!(!target.exists());
}

#[test]
fn legacy_checkpoints_import_and_score_like_megatron() {
    let out = tempdir();
    // One model_weights.ckpt (TP = 1), two tensor-parallel ranks merged (fc1 per rank is
    // [gate_r; up_r], row-parallel tensors split on columns), and those ranks each split
    // into two pipeline stages (layers numbered from 0 in each stage).
    for input in ["llama-legacy", "llama-legacy-tp2", "llama-legacy-tp2-pp2"] {
        let dir = out.path().join(input);
        import_and_compare_config(input, input, &dir, &[]);
        check_scores(&dir, &nemo_goldens(input), "cpu");
    }
    // Merged, the ranks and stages are the TP = 1 checkpoint: the imports write the same
    // bytes.
    let weights = |input: &str| std::fs::read(out.path().join(input).join("model.safetensors")).unwrap();
    assert_eq!(weights("llama-legacy"), weights("llama-legacy-tp2"));
    assert_eq!(weights("llama-legacy"), weights("llama-legacy-tp2-pp2"));
}

#[test]
fn shards_dtypes_and_a_given_tokenizer() {
    let out = tempdir();
    let dir = out.path().join("sharded");
    let tokenizer = nemo("hf-tokenizer");
    let input = nemo("llama-zarr");
    let args = ["import-nemo", p(&input), "--output-dir", p(&dir), "--max-shard-gb", "0.0001"];
    assert_success(&steerlm(&[&args[..], &["--dtype", "f32", "--tokenizer", p(&tokenizer)]].concat()));
    let files = listing(&dir);
    let shards = files.iter().filter(|f| f.starts_with("model-")).count();
    assert!(files.contains(&"model.safetensors.index.json".to_owned()) && shards >= 3, "{files:?}");
    assert!(files.contains(&"tokenizer_config.json".to_owned()));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float32");
    check_scores(&dir, &nemo_goldens("llama-zarr"), "cpu");
}

#[test]
fn what_it_does_not_read_is_named_and_nothing_is_written() {
    let out = tempdir();
    let dir = out.path().join("out");
    // A folder that is not a NeMo checkpoint.
    let error = assert_failure(&steerlm(&["import-nemo", p(&nemo("hf-tokenizer")), "--output-dir", p(&dir)]));
    assert!(error.contains("model_config.yaml does not exist"), "{error}");
    assert!(!dir.exists(), "nothing is written");
    assert!(listing(out.path()).is_empty(), "no temporary folder is left: {:?}", listing(out.path()));

    // A damaged checkpoint: one chunk of one tensor cut short. The error names it, and
    // neither the output nor a temporary folder remains.
    let damaged = out.path().join("damaged");
    copy_tree(&nemo("llama-zarr"), &damaged);
    let chunk = damaged.join("model_weights/model.decoder.layers.mlp.linear_fc2.weight/1.0.0");
    let bytes = std::fs::read(&chunk).unwrap();
    std::fs::write(&chunk, &bytes[..bytes.len() / 2]).unwrap();
    let error = assert_failure(&steerlm(&["import-nemo", p(&damaged), "--output-dir", p(&dir)]));
    assert!(
        error.contains("linear_fc2.weight/1.0.0") && error.contains("model.layers.1.mlp.down_proj.weight"),
        "{error}"
    );
    assert!(!dir.exists());
    assert_eq!(listing(out.path()), ["damaged"]);

    // Rank files that disagree with model_config.yaml's tensor_model_parallel_size, or a
    // pipeline stage missing, are named; so is a damaged model_weights.ckpt.
    let ranks = out.path().join("ranks");
    copy_tree(&nemo("llama-legacy-tp2"), &ranks);
    std::fs::remove_dir_all(ranks.join("mp_rank_01")).unwrap();
    let error = assert_failure(&steerlm(&["import-nemo", p(&ranks), "--output-dir", p(&dir)]));
    assert!(
        error.contains("tensor_model_parallel_size is 2, but the checkpoint has 1 tensor-parallel rank"),
        "{error}"
    );
    let stages = out.path().join("stages");
    copy_tree(&nemo("llama-legacy-tp2-pp2"), &stages);
    std::fs::remove_dir_all(stages.join("tp_rank_01_pp_rank_001")).unwrap();
    let error = assert_failure(&steerlm(&["import-nemo", p(&stages), "--output-dir", p(&dir)]));
    assert!(
        error.contains("the pipeline stages of tensor-parallel rank 1 are [0]; every rank needs stages 0 to 1"),
        "{error}"
    );
    assert!(!dir.exists());
    let cut = out.path().join("cut");
    copy_tree(&nemo("llama-legacy"), &cut);
    let ckpt = cut.join("model_weights.ckpt");
    let ckpt_bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &ckpt_bytes[..ckpt_bytes.len() / 2]).unwrap();
    let error = assert_failure(&steerlm(&["import-nemo", p(&cut), "--output-dir", p(&dir)]));
    assert!(error.contains("model_weights.ckpt"), "{error}");
    assert!(!dir.exists());
    assert_eq!(listing(out.path()), ["cut", "damaged", "ranks", "stages"]);

    // Without its tokenizer file, the checkpoint needs --tokenizer.
    std::fs::write(&chunk, &bytes).unwrap();
    for entry in std::fs::read_dir(&damaged).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with("_tokenizer.model") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let error = assert_failure(&steerlm(&["import-nemo", p(&damaged), "--output-dir", p(&dir)]));
    assert!(error.contains("pass --tokenizer"), "{error}");
    // A device or a FIFO given as the tokenizer is refused, not read without end or
    // waited on; so is a FIFO where the checkpoint's tokenizer file belongs.
    let fifo = out.path().join("tokenizer.model");
    mkfifo(&fifo);
    for tokenizer in [Path::new("/dev/zero"), &fifo] {
        let error = assert_failure(&steerlm(&[
            "import-nemo",
            p(&damaged),
            "--output-dir",
            p(&dir),
            "--tokenizer",
            p(tokenizer),
        ]));
        assert!(error.contains("is not a regular file (a folder, device or pipe)"), "{error}");
    }
    std::fs::rename(&fifo, damaged.join("37974873eb68a7ab30c4912fc36264ae_tokenizer.model")).unwrap();
    let error = assert_failure(&steerlm(&["import-nemo", p(&damaged), "--output-dir", p(&dir)]));
    assert!(error.contains("_tokenizer.model is not a regular file"), "{error}");
    assert!(!dir.exists());
}

#[test]
fn the_output_folder_must_be_new_or_empty() {
    let out = tempdir();
    let full = out.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep.txt"), "mine").unwrap();
    let link = out.path().join("link");
    std::os::unix::fs::symlink(out.path().join("empty"), &link).unwrap();
    std::fs::create_dir(out.path().join("empty")).unwrap();
    for (dir, says) in [
        (full.clone(), "is not empty"),
        (PathBuf::from("/dev/null"), "exists and is not a folder"),
        (link, "is a symbolic link"),
        (nemo("llama-zarr"), "is not empty"),
    ] {
        let error = assert_failure(&steerlm(&["import-nemo", p(&nemo("llama-zarr")), "--output-dir", p(&dir)]));
        assert!(error.contains(says), "{}: {error}", dir.display());
    }
    assert_eq!(std::fs::read_to_string(full.join("keep.txt")).unwrap(), "mine");
    // /dev/null is still a character device (a rename over it would have replaced it).
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    // An empty folder is filled. A temporary folder a killed run left beside it is named
    // in a warning, and left alone (another run may be writing it).
    let stale = out.path().join(".empty.steerlm-AbC123");
    std::fs::create_dir(&stale).unwrap();
    let run = steerlm(&["import-nemo", p(&nemo("llama-zarr")), "--output-dir", p(&out.path().join("empty"))]);
    assert_success(&run);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains(&format!("warning: {} is left from an unfinished run", stale.display())), "{stderr}");
    assert!(out.path().join("empty/model.safetensors").is_file());
    assert!(stale.is_dir());
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A model_config.yaml that disagrees with the tensors is refused before anything is
/// written, naming the field or the tensor.
#[test]
fn a_config_that_disagrees_with_the_tensors_is_named() {
    let out = tempdir();
    let checkpoint = out.path().join("checkpoint");
    copy_tree(&nemo("llama-zarr"), &checkpoint);
    let config = std::fs::read_to_string(checkpoint.join("model_config.yaml")).unwrap();
    let dir = out.path().join("out");
    for (from, to, says) in [
        ("num_layers: 2", "num_layers: 3", "says num_layers is 3, but"),
        ("num_layers: 2", "num_layers: 100000000000", "larger than steerlm accepts"),
        (
            "ffn_hidden_size: 96",
            "ffn_hidden_size: 64",
            "`decoder.layers.mlp.linear_fc1.weight` has shape [2, 192, 32], which does not fit",
        ),
        ("num_query_groups: 2", "num_query_groups: 1", "does not fit model_config.yaml's heads and sizes"),
        (
            "num_attributes: 9",
            "num_attributes: 5",
            "has 9 outputs, but model_config.yaml's regression.num_attributes says 5",
        ),
    ] {
        std::fs::write(checkpoint.join("model_config.yaml"), config.replace(from, to)).unwrap();
        let error = assert_failure(&steerlm(&["import-nemo", p(&checkpoint), "--output-dir", p(&dir)]));
        assert!(error.contains(says), "{to}: {error}");
        assert!(!dir.exists());
    }
    // An embedding of no rows would import as `vocab_size: 0`, which nothing can load.
    std::fs::write(checkpoint.join("model_config.yaml"), &config).unwrap();
    let zarray = checkpoint.join("model_weights/model.embedding.word_embeddings.weight/.zarray");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&zarray).unwrap()).unwrap();
    meta["shape"][0] = json!(0);
    std::fs::write(&zarray, meta.to_string()).unwrap();
    let error = assert_failure(&steerlm(&["import-nemo", p(&checkpoint), "--output-dir", p(&dir)]));
    assert!(error.contains("holds no values"), "{error}");
    assert!(!dir.exists());
}
