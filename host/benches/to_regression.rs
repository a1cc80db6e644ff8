//! `cargo bench -p steerlm --bench to_regression`
//!
//! Generates a ~100 MB HelpSteer-shaped SFT file and converts it to regression format
//! with `steerlm to-regression`, through the sandboxed components and through the same
//! library linked natively, side by side in one run. Reports throughput (wall clock and
//! per CPU-second), peak RSS and the component/native ratio; checks the outputs match.
//!
//! `STEERLM_BENCH_MB` sets the input size (default 100), `STEERLM_BENCH_RUNS` the
//! number of timed runs per engine (default 3, best one reported).

mod common;

use common::run_measured;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;

/// English-like text with what real HelpSteer responses contain now and then:
/// newlines, quotes, a backslash, tabs and some non-ASCII.
const WORDS: &[&str] = &[
    "the",
    "model",
    "answer",
    "question",
    "helpful",
    "data",
    "because",
    "however",
    "which",
    "table",
    "function",
    "return",
    "value",
    "explain",
    "step",
    "first",
    "second",
    "finally",
    "example",
    "code",
    "is",
    "a",
    "of",
    "to",
    "and",
    "in",
    "that",
    "for",
    "it",
    "with",
    "as",
    "on",
    "be",
    "this",
    "are",
    "response",
    "user",
    "should",
    "would",
    "could",
    "their",
    "there",
    "about",
    "more",
    "other",
    "list:\n1.",
    "below.\n\n",
    "said \"yes\"",
    "café",
    "naïve",
    "C:\\path",
    "x\ty",
    "→",
    "100%",
];

/// A tiny deterministic generator (no dependency, same file every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn text(&mut self, words: usize) -> String {
        let mut s = String::new();
        for i in 0..words {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[self.next() as usize % WORDS.len()]);
        }
        s
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// HelpSteer-shaped records: a prompt, a response, a 5-attribute label, as
/// `preprocess helpsteer` writes them.
fn generate(path: &Path, target_bytes: u64) {
    let mut rng = Lcg(42);
    let mut out = BufWriter::new(fs::File::create(path).unwrap());
    let system = json_string(steerlm_core::SYSTEM_PROMPT);
    let mut written = 0u64;
    while written < target_bytes {
        let prompt_words = 20 + rng.next() as usize % 200;
        let prompt = rng.text(prompt_words);
        let response_words = 50 + rng.next() as usize % 400;
        let response = rng.text(response_words);
        let label: Vec<String> = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
            .iter()
            .map(|a| format!("{a}:{}", rng.next() % 5))
            .collect();
        let line = format!(
            "{{\"conversations\": [{{\"value\": {}, \"from\": \"User\", \"label\": null}}, {{\"value\": {}, \"from\": \"Assistant\", \"label\": \"{}\"}}], \"system\": {system}, \"mask\": \"User\", \"type\": \"VALUE_TO_TEXT\"}}\n",
            json_string(&prompt),
            json_string(&response),
            label.join(",")
        );
        out.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
    }
    out.flush().unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let mb: u64 = std::env::var("STEERLM_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let runs: usize = std::env::var("STEERLM_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-to-regression");
    fs::create_dir_all(&dir).unwrap();
    let input = dir.join(format!("sft-{mb}mb.jsonl"));
    if !input.exists() {
        eprintln!("generating {} ...", input.display());
        generate(&input, mb * 1_000_000);
    }
    let input_bytes = fs::metadata(&input).unwrap().len();
    let cache = dir.join("component-cache");

    println!("to-regression on {:.1} MB of HelpSteer-shaped SFT records, best of {runs}", input_bytes as f64 / 1e6);
    println!(
        "{:<10} {:>8} {:>10} {:>14} {:>14} {:>10}",
        "engine", "threads", "seconds", "MB/s (wall)", "MB/s per CPU-s", "peak RSS"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut best = std::collections::BTreeMap::new();
    for (engine, threads) in [("native", 1), ("component", 1), ("native", cores), ("component", cores)] {
        let threads_arg = threads.to_string();
        let steerlm = |output: &Path| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_steerlm"));
            command
                .args(["-q", "to-regression", "--engine", engine, "--threads", &threads_arg, "--input-file"])
                .arg(&input)
                .arg("--output-file")
                .arg(output)
                .env("STEERLM_CACHE_DIR", &cache);
            command
        };
        // An untimed run to a real file: fills the component compile cache and gives
        // the bytes compared below.
        run_measured(&mut steerlm(&dir.join(format!("out-{engine}.jsonl"))));
        // Timed runs write to stdout into /dev/null: this machine's disk is noisy, and
        // the disk is the same for both engines anyway.
        let run = (0..runs)
            .map(|_| run_measured(steerlm(Path::new("-")).stdout(std::process::Stdio::null())))
            .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
            .unwrap();
        let mbps = input_bytes as f64 / 1e6 / run.seconds;
        let per_cpu = input_bytes as f64 / 1e6 / run.cpu_seconds;
        println!(
            "{engine:<10} {threads:>8} {:>10.3} {mbps:>14.1} {per_cpu:>14.1} {:>7.0} MiB",
            run.seconds, run.peak_rss_mib
        );
        best.insert((engine, threads), mbps);
    }
    for threads in [1, cores] {
        let ratio = best[&("component", threads)] / best[&("native", threads)];
        println!("component / native throughput with {threads} thread(s): {:.0}%", 100.0 * ratio);
    }
    let native = fs::read(dir.join("out-native.jsonl")).unwrap();
    let component = fs::read(dir.join("out-component.jsonl")).unwrap();
    assert!(native == component, "the two engines wrote different bytes");
    println!("outputs identical ({:.1} MB)", native.len() as f64 / 1e6);
}
