//! `cargo bench -p steerlm --bench serve_component`
//!
//! The HTTP component's cost over calling the same component in-process, in one run:
//! - 2,000 one-record `POST /regression` requests, 8 in flight, each in a fresh instance,
//!   vs 2,000 one-record calls into one reused in-process regression instance;
//! - one 8 MB request vs one in-process call on the same 8 MB.
//!
//! Every response is checked against the in-process bytes.

use futures::StreamExt;
use serde_json::json;
use std::process::Command;
use support::Server;

#[path = "../../tests/common/server.rs"]
mod support;
use std::time::Instant;
use steerlm::bindings::types::TemplateOptions;
use steerlm::sandbox::{Limits, Sandbox};

const SMALL_REQUESTS: usize = 2000;
const IN_FLIGHT: usize = 8;

fn record(i: usize) -> String {
    let words = "the model gives a helpful answer to the question because it explains each step first";
    json!({"conversations": [
        {"value": format!("{i}: {words}"), "from": "User", "label": null},
        {"value": words.repeat(4), "from": "Assistant", "label": "helpfulness:3,correctness:4"}],
        "system": steerlm_core::SYSTEM_PROMPT, "mask": "User", "type": "VALUE_TO_TEXT"})
    .to_string()
        + "\n"
}

fn serve() -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_steerlm"));
    command.args(["serve-component", "--listen", "127.0.0.1:0"]);
    support::spawn(command)
}

fn main() {
    let small: Vec<String> = (0..SMALL_REQUESTS).map(record).collect();
    let large: Vec<u8> = (0..20_000).map(record).collect::<String>().into_bytes();
    let options = TemplateOptions { use_record_system: false };

    // Baseline: the same component, one instance, called in-process.
    let sandbox = Sandbox::new(Limits::default()).unwrap();
    let mut regression = sandbox.regression().unwrap();
    let mut convert = |bytes: &[u8]| {
        regression.call(|c, s| c.steerlm_pipeline_regression().call_convert_chunk(s, bytes, 1, options)).unwrap().output
    };
    convert(small[0].as_bytes()); // warm up
    let started = Instant::now();
    let expected_small: Vec<Vec<u8>> = small.iter().map(|r| convert(r.as_bytes())).collect();
    let in_process_small = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let expected_large = convert(&large);
    let in_process_large = started.elapsed().as_secs_f64();

    let server = serve();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/regression", server.url);
    let post = |body: Vec<u8>| {
        let request = client.post(&url).body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap().to_vec()
        }
    };
    runtime.block_on(post(small[0].clone().into_bytes())); // compile/cache warm-up
    let started = Instant::now();
    let replies: Vec<Vec<u8>> = runtime.block_on(
        futures::stream::iter(small.iter().map(|r| post(r.clone().into_bytes()))).buffered(IN_FLIGHT).collect(),
    );
    let http_small = started.elapsed().as_secs_f64();
    assert!(replies == expected_small, "HTTP responses differ from the in-process bytes");
    let started = Instant::now();
    let reply = runtime.block_on(post(large.clone()));
    let http_large = started.elapsed().as_secs_f64();
    assert!(reply == expected_large, "the large HTTP response differs from the in-process bytes");

    let mb = large.len() as f64 / 1e6;
    println!("{:<58} {:>10} {:>14}", "path", "seconds", "rate");
    println!(
        "{:<58} {in_process_small:>10.3} {:>10.0} req/s",
        "in-process component, 2000 one-record calls (baseline)",
        SMALL_REQUESTS as f64 / in_process_small
    );
    println!(
        "{:<58} {http_small:>10.3} {:>10.0} req/s",
        "serve-component, 2000 one-record requests, 8 in flight",
        SMALL_REQUESTS as f64 / http_small
    );
    println!(
        "{:<58} {in_process_large:>10.3} {:>9.1} MB/s",
        format!("in-process component, {mb:.1} MB (baseline)"),
        mb / in_process_large
    );
    println!(
        "{:<58} {http_large:>10.3} {:>9.1} MB/s",
        format!("serve-component, one {mb:.1} MB request"),
        mb / http_large
    );
    println!(
        "per-request cost of HTTP + a fresh instance: {:.2} ms ({:.0}x the in-process call); large body at {:.0}% of in-process speed",
        (http_small / SMALL_REQUESTS as f64) * 1e3,
        http_small / in_process_small,
        100.0 * in_process_large / http_large
    );
}
