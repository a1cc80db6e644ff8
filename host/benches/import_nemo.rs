//! `cargo bench -p steerlm --bench import_nemo`
//!
//! Writes a Llama-shaped NeMo reward model (~1 GB of bf16 weights: 8 layers, hidden 2048,
//! 16 heads in 8 query groups, ffn 5632, vocab 32000) as a zarr distributed checkpoint, the
//! layout megatron-core writes (tests/fixtures/nemo/FORMAT.md), then imports it with
//! `steerlm import-nemo`. The baseline, measured in the same run, copies the same
//! checkpoint folder file by file and syncs each copy, as the import syncs its output:
//! the disk's cost of reading and durably writing those bytes.
//! Reports seconds, MB/s, the import/copy ratio and peak RSS beside the largest tensor
//! (the import streams tensor by tensor, so its memory should track that tensor, not the
//! model).
//!
//! `STEERLM_BENCH_LAYERS` sets the layer count (default 8), `STEERLM_BENCH_RUNS` the timed
//! runs of each (default 3, best one reported).

mod common;

use common::{Run, run_measured};
use std::fs;
use std::path::Path;
use std::process::Command;

const HIDDEN: usize = 2048;
const HEADS: usize = 16;
const GROUPS: usize = 8;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 5632;
const VOCAB: usize = 32000;
const OUTPUTS: usize = 9;

/// Deterministic filler bytes (xorshift), fast enough not to dominate generation.
fn fill(bytes: &mut [u8], seed: u64) {
    let mut state = seed | 1;
    for chunk in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// One zarr v2 array, uncompressed, as megatron-core writes it: `.zarray` and one file
/// per chunk, chunks of `chunk` shape tiling `shape`.
fn write_array(dir: &Path, key: &str, dtype: &str, esize: usize, shape: &[usize], chunk: &[usize]) {
    let folder = dir.join(format!("model.{key}"));
    fs::create_dir_all(&folder).unwrap();
    let meta = serde_json::json!({
        "chunks": chunk, "compressor": null, "dtype": dtype, "fill_value": null,
        "filters": null, "order": "C", "shape": shape, "zarr_format": 2,
    });
    fs::write(folder.join(".zarray"), serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    let grid: Vec<usize> = shape.iter().zip(chunk).map(|(s, c)| s / c).collect();
    let mut bytes = vec![0u8; chunk.iter().product::<usize>() * esize];
    let mut position = vec![0usize; shape.len()];
    for n in 0.. {
        fill(&mut bytes, n as u64 + key.len() as u64 * 7919);
        let name: Vec<String> = position.iter().map(|p| p.to_string()).collect();
        fs::write(folder.join(name.join(".")), &bytes).unwrap();
        // Next chunk position, odometer style.
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            position[d] += 1;
            if position[d] < grid[d] {
                break;
            }
            position[d] = 0;
        }
    }
}

fn generate(dir: &Path, layers: usize) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nemo/llama-zarr");
    fs::create_dir_all(dir.join("model_weights")).unwrap();
    let mut config = String::new();
    for line in fs::read_to_string(fixture.join("model_config.yaml")).unwrap().lines() {
        let value = match line.split(':').next().unwrap() {
            "num_layers" => Some(layers),
            "hidden_size" => Some(HIDDEN),
            "ffn_hidden_size" => Some(FFN),
            "num_attention_heads" => Some(HEADS),
            "num_query_groups" => Some(GROUPS),
            _ => None,
        };
        match value {
            Some(value) => config.push_str(&format!("{}: {value}\n", line.split(':').next().unwrap())),
            None => config.push_str(&format!("{line}\n")),
        }
    }
    fs::write(dir.join("model_config.yaml"), config).unwrap();
    for entry in fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with("_tokenizer.model") {
            fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let weights = dir.join("model_weights");
    fs::copy(fixture.join("model_weights/metadata.json"), weights.join("metadata.json")).unwrap();
    let bf16 = |key: &str, shape: &[usize], chunk: &[usize]| write_array(&weights, key, "bfloat16", 2, shape, chunk);
    let qkv = (HEADS + 2 * GROUPS) * HEAD_DIM;
    bf16("embedding.word_embeddings.weight", &[VOCAB, HIDDEN], &[VOCAB, HIDDEN]);
    bf16("output_layer.weight", &[VOCAB, HIDDEN], &[VOCAB, HIDDEN]);
    bf16("decoder.final_layernorm.weight", &[HIDDEN], &[HIDDEN]);
    let l = layers;
    bf16("decoder.layers.self_attention.linear_qkv.layer_norm_weight", &[l, HIDDEN], &[1, HIDDEN]);
    bf16("decoder.layers.self_attention.linear_qkv.weight", &[l, qkv, HIDDEN], &[1, qkv, HIDDEN]);
    bf16("decoder.layers.self_attention.linear_proj.weight", &[l, HIDDEN, HIDDEN], &[1, HIDDEN, HIDDEN]);
    bf16("decoder.layers.mlp.linear_fc1.layer_norm_weight", &[l, HIDDEN], &[1, HIDDEN]);
    // Gated fc1: gate and up are separate chunks of each layer.
    bf16("decoder.layers.mlp.linear_fc1.weight", &[l, 2 * FFN, HIDDEN], &[1, FFN, HIDDEN]);
    bf16("decoder.layers.mlp.linear_fc2.weight", &[l, HIDDEN, FFN], &[1, HIDDEN, FFN]);
    write_array(&weights, "rm_head.weight", "<f4", 4, &[OUTPUTS, HIDDEN], &[OUTPUTS, HIDDEN]);
    write_array(&weights, "rm_head.bias", "<f4", 4, &[OUTPUTS], &[OUTPUTS]);
}

fn folder_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() { folder_bytes(&e.path()) } else { e.metadata().unwrap().len() }
        })
        .sum()
}

fn copy_folder(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
            // The import syncs its output before renaming it into place: so does the copy.
            fs::File::open(&target).unwrap().sync_all().unwrap();
        }
    }
}

fn main() {
    // The baseline's child process: copy FROM to TO.
    if let Ok(paths) = std::env::var("STEERLM_BENCH_COPY") {
        let (from, to) = paths.split_once('\n').unwrap();
        copy_folder(Path::new(from), Path::new(to));
        return;
    }
    let layers: usize = std::env::var("STEERLM_BENCH_LAYERS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let runs: usize = std::env::var("STEERLM_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-import-nemo");
    let checkpoint = dir.join(format!("llama-{layers}-layers"));
    if !checkpoint.join("model_config.yaml").exists() {
        eprintln!("generating {} ...", checkpoint.display());
        let _ = fs::remove_dir_all(&checkpoint);
        generate(&checkpoint, layers);
    }
    let bytes = folder_bytes(&checkpoint);
    let largest_mib = (VOCAB * HIDDEN * 2) as f64 / (1 << 20) as f64;
    let scratch = dir.join("out");

    let best = |what: &str, command: &dyn Fn() -> Run| -> Run {
        let run = (0..runs)
            .map(|_| {
                let _ = fs::remove_dir_all(&scratch);
                command()
            })
            .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
            .unwrap();
        println!(
            "{what:<22} {:>8.3} s {:>9.1} MB/s {:>8.3} CPU-s {:>8.0} MiB peak RSS",
            run.seconds,
            bytes as f64 / 1e6 / run.seconds,
            run.cpu_seconds,
            run.peak_rss_mib
        );
        run
    };
    println!("import-nemo of a {layers}-layer zarr checkpoint, {:.0} MB, best of {runs}", bytes as f64 / 1e6);
    // The baseline runs in a child too, so both pay a process start and both RSS
    // figures are a process's own.
    let exe = std::env::current_exe().unwrap();
    let copy = best("copy (baseline)", &|| {
        run_measured(
            Command::new(&exe).env("STEERLM_BENCH_COPY", format!("{}\n{}", checkpoint.display(), scratch.display())),
        )
    });
    let import = best("import-nemo", &|| {
        run_measured(
            Command::new(env!("CARGO_BIN_EXE_steerlm"))
                .args(["-q", "import-nemo"])
                .arg(&checkpoint)
                .arg("--output-dir")
                .arg(&scratch),
        )
    });
    println!("import / copy time: {:.2}x", import.seconds / copy.seconds);
    println!(
        "import peak RSS {:.0} MiB for a largest tensor of {largest_mib:.0} MiB and a model of {:.0} MiB",
        import.peak_rss_mib,
        bytes as f64 / (1 << 20) as f64
    );
    let _ = fs::remove_dir_all(&scratch);
}
