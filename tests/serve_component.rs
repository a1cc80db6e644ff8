//! `steerlm serve-component` as a real HTTP server on 127.0.0.1:
//!
//! - every route's bytes against the reference goldens (regression, format, labels,
//!   the preprocess routes, oasst's seeded shuffle), plain and gzipped, by magic bytes
//!   and by `Content-Encoding`;
//! - 400 naming the line for the reference's error files, invalid UTF-8 and bad JSON;
//!   400 for truncated gzip and bad query parameters; 404, 405 and 415;
//! - 413 by `Content-Length`, by a chunked body and by a gzip bomb;
//! - the sandbox's memory limit ends one request (500) and the next succeeds;
//! - 200 concurrent requests all succeed;
//! - a body that never ends gets 408, and `/health` answers while every slot is busy.

use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use crate::common::server::{self, Server};
use crate::common::{fixture, runtime, steerlm_command};

fn read(path: &str) -> Vec<u8> {
    std::fs::read(fixture(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(bytes), &mut out).unwrap();
    out
}

/// Starts `steerlm serve-component` on a free port.
fn serve(extra: &[&str]) -> Server {
    let mut command = steerlm_command(&["serve-component", "--listen", "127.0.0.1:0"]);
    command.args(extra);
    server::spawn(command)
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
    }

    #[track_caller]
    fn assert_body(&self, expected: &[u8]) {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        assert!(
            self.body == expected,
            "body differs from the golden ({} vs {} bytes)",
            self.body.len(),
            expected.len()
        );
    }

    /// A JSON error with the given status, naming `line`.
    #[track_caller]
    fn assert_error(&self, status: u16, line: Option<u64>, says: &str) {
        assert_eq!(self.status, status, "{}", String::from_utf8_lossy(&self.body));
        let json = self.json();
        assert_eq!(json["line"], json!(line), "{json}");
        let message = json["error"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} does not say {says:?}");
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap()
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Reply { status, headers, body: response.bytes().await.unwrap().to_vec() }
}

async fn post(server: &Server, route: &str, body: Vec<u8>) -> Reply {
    send(client().post(format!("{}{route}", server.url)).body(body)).await
}

#[test]
fn regression_route_gives_the_reference_bytes_plain_and_gzipped() {
    let server = serve(&[]);
    runtime().block_on(async {
        let input = read("regression/input.jsonl");
        let expected = read("regression/expected.jsonl");
        let reply = post(&server, "/regression", input.clone()).await;
        reply.assert_body(&expected);
        assert_eq!(reply.header("content-type"), "application/jsonl; charset=utf-8");
        assert_eq!(reply.header("x-steerlm-lines-out"), expected.iter().filter(|&&b| b == b'\n').count().to_string());
        // gzip recognised by its magic bytes, and by Content-Encoding.
        post(&server, "/regression", gzip(&input)).await.assert_body(&expected);
        let request =
            client().post(format!("{}/regression", server.url)).header("content-encoding", "gzip").body(gzip(&input));
        send(request).await.assert_body(&expected);
    });
}

/// What `steerlm format` writes for the same input, for comparing bytes.
fn cli_format(input: &Path, extra: &[&str]) -> Vec<u8> {
    let out = steerlm_command(&["format", "--input-file", input.to_str().unwrap(), "--output-file", "-"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn format_route_yields_the_prefixes_the_reference_scored() {
    let server = serve(&[]);
    runtime().block_on(async {
        let input = fixture("annotate/input.jsonl");
        let reply = post(&server, "/format", read("annotate/input.jsonl")).await;
        reply.assert_body(&cli_format(&input, &[]));
        // The same texts the reference sent to its reward model.
        let texts = |bytes: &[u8]| -> BTreeSet<String> {
            String::from_utf8(bytes.to_vec())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()["text"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(texts(&reply.body), texts(&read("annotate/scores.jsonl")));
        let with_system = post(&server, "/format?use_record_system=true", read("annotate/input.jsonl")).await;
        with_system.assert_body(&cli_format(&input, &["--use-record-system"]));
    });
}

#[test]
fn label_routes_parse_and_encode() {
    let server = serve(&[]);
    runtime().block_on(async {
        let reply = post(&server, "/labels/parse", b"helpfulness:3:9, correctness:4,verbosity: 2\n".to_vec()).await;
        assert_eq!(reply.status, 200);
        let json = reply.json();
        assert_eq!(json["vector"], json!([-100.0, -100.0, -100.0, -100.0, 3.0, -100.0, -100.0, -100.0, 2.0]));
        assert_eq!(json["pairs"][1], json!([" correctness", "4"]));
        assert_eq!(json["attributes"][4], "helpfulness");

        let scores = b"[2.5, 3.5, -1, 9, 0.49, 1.5, 0.5, 3.49, 4]".to_vec();
        let reply = post(&server, "/labels/encode", scores).await;
        reply.assert_body(
            b"quality:2,toxicity:4,humor:0,creativity:4,helpfulness:0,correctness:2,coherence:0,complexity:3,verbosity:4",
        );
        let named = br#"{"scores": [3.6, 0.2], "names": ["helpfulness", "verbosity"]}"#.to_vec();
        post(&server, "/labels/encode", named).await.assert_body(b"helpfulness:4,verbosity:0");

        post(&server, "/labels/parse", b"helpfulness".to_vec()).await.assert_error(400, Some(1), "no ':'");
        post(&server, "/labels/encode", b"[1, 2]".to_vec()).await.assert_error(400, Some(1), "2 scores for 9 attributes");
        post(&server, "/labels/encode", b"{\"scores\": [1], \"nmes\": []}".to_vec()).await.assert_error(
            400,
            Some(1),
            "unknown field",
        );
    });
}

#[test]
fn preprocess_routes_give_the_reference_bytes() {
    let server = serve(&[]);
    runtime().block_on(async {
        let reply = post(&server, "/preprocess/helpsteer", read("helpsteer/raw/train.jsonl")).await;
        reply.assert_body(&read("helpsteer/expected/train.jsonl"));
        let reply =
            post(&server, "/preprocess/helpsteer?split=validation", read("helpsteer/raw/validation.jsonl")).await;
        reply.assert_body(&read("helpsteer/expected/val.jsonl"));
        assert_eq!(reply.header("x-steerlm-train-records"), "0");

        // HelpSteer2 ships gzipped; send it as it is.
        let reply = post(&server, "/preprocess/helpsteer2", read("helpsteer2/raw/train.jsonl.gz")).await;
        reply.assert_body(&read("helpsteer2/expected/train.jsonl"));
        let reply = post(
            &server,
            "/preprocess/helpsteer2?split=validation&only_helpfulness=true",
            read("helpsteer2/raw/validation.jsonl.gz"),
        )
        .await;
        reply.assert_body(&read("helpsteer2/expected_only_helpfulness/val.jsonl"));

        // Preference rows carry their own split: all = train then val, headers say where.
        let raw = read("helpsteer2_preference/raw/preference.jsonl");
        let (train, val) =
            (read("helpsteer2_preference/expected/train.jsonl"), read("helpsteer2_preference/expected/val.jsonl"));
        let reply = post(&server, "/preprocess/helpsteer2-preference", raw.clone()).await;
        reply.assert_body(&[train.clone(), val.clone()].concat());
        let count = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count().to_string();
        assert_eq!(reply.header("x-steerlm-train-records"), count(&train));
        assert_eq!(reply.header("x-steerlm-val-records"), count(&val));
        post(&server, "/preprocess/helpsteer2-preference?output=val", raw.clone()).await.assert_body(&val);
        let reply = post(&server, "/preprocess/helpsteer2-preference?output=train&only_helpfulness=1", raw).await;
        reply.assert_body(&read("helpsteer2_preference/expected_only_helpfulness/train.jsonl"));
    });
}

#[test]
fn oasst_route_shuffles_and_splits_like_the_reference() {
    let server = serve(&[]);
    runtime().block_on(async {
        let trees = read("oasst/2023-04-12_oasst_all.trees.jsonl.gz");
        let (train, val) = (read("oasst/expected/train.jsonl"), read("oasst/expected/val.jsonl"));
        let reply = post(&server, "/preprocess/oasst", trees.clone()).await;
        reply.assert_body(&[train.clone(), val.clone()].concat());
        assert_eq!(reply.header("x-steerlm-train-records"), train.iter().filter(|&&b| b == b'\n').count().to_string());
        assert_eq!(reply.header("x-steerlm-trees"), gunzip(&trees).iter().filter(|&&b| b == b'\n').count().to_string());
        post(&server, "/preprocess/oasst?output=train&seed=10&train_fraction=0.95", trees.clone())
            .await
            .assert_body(&train);
        // Another seed is another order of the same records.
        let other = post(&server, "/preprocess/oasst?seed=11", trees).await;
        assert_eq!(other.status, 200);
        assert_ne!(other.body, reply.body);
        let sorted = |b: &[u8]| -> Vec<Vec<u8>> {
            let mut lines: Vec<Vec<u8>> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&other.body), sorted(&reply.body));
    });
}

#[test]
fn bad_input_gets_400_naming_the_line() {
    let server = serve(&[]);
    runtime().block_on(async {
        for name in ["label_not_string", "no_colon", "not_a_number", "trailing_comma"] {
            let reply = post(&server, "/regression", read(&format!("regression/errors/{name}.jsonl"))).await;
            reply.assert_error(400, Some(2), "");
        }
        let mut body = read("regression/input.jsonl").split(|&b| b == b'\n').take(2).collect::<Vec<_>>().join(&b'\n');
        body.extend_from_slice(b"\n{\"conversations\": [\xff]}\n");
        post(&server, "/regression", body).await.assert_error(400, Some(3), "UTF-8");
        post(&server, "/format", b"{}\n{not json\n".to_vec()).await.assert_error(400, Some(1), "");
        let reply = post(&server, "/preprocess/helpsteer", b"{\"prompt\": \"hi\"}\n".to_vec()).await;
        assert_eq!((reply.status, reply.json()["line"].clone()), (400, json!(1)));
        let mut truncated = gzip(&read("regression/input.jsonl"));
        truncated.truncate(truncated.len() / 2);
        post(&server, "/regression", truncated).await.assert_error(400, None, "gzip");
        post(&server, "/regression?use_record_sytem=true", Vec::new()).await.assert_error(400, None, "unknown query");
        post(&server, "/preprocess/oasst?train_fraction=2", Vec::new()).await.assert_error(400, None, "train_fraction");
    });
}

#[test]
fn unknown_routes_methods_and_encodings_are_refused() {
    let server = serve(&[]);
    runtime().block_on(async {
        post(&server, "/regresion", Vec::new()).await.assert_error(404, None, "POST /regression");
        let reply = send(client().get(format!("{}/regression", server.url))).await;
        reply.assert_error(405, None, "POST");
        assert_eq!(reply.header("allow"), "POST");
        let reply = send(client().get(format!("{}/health", server.url))).await;
        assert_eq!((reply.status, reply.json()["status"].clone()), (200, json!("ok")));
        let request = client().post(format!("{}/regression", server.url)).header("content-encoding", "br").body("x");
        send(request).await.assert_error(415, None, "gzip");
    });
}

#[test]
fn bodies_over_the_limit_get_413_however_they_arrive() {
    let server = serve(&[]);
    let limited = serve(&["--max-body-mb", "1"]);
    runtime().block_on(async {
        let big = vec![b'a'; (1 << 20) + 1];
        // Declared by Content-Length: refused by the host before any instance is made
        // (the component's own messages say "as sent" or "once decompressed").
        let reply = post(&limited, "/regression", big.clone()).await;
        reply.assert_error(413, None, "limit of 1048576 bytes;");
        // Chunked, without a length: the component counts as it reads.
        let stream = futures::stream::iter(
            big.chunks(64 << 10).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
        );
        let request = client().post(format!("{}/regression", limited.url)).body(reqwest::Body::wrap_stream(stream));
        send(request).await.assert_error(413, None, "as sent");
        // Small when compressed, over the limit once decompressed.
        post(&limited, "/regression", gzip(&big)).await.assert_error(413, None, "decompressed");
        // The same body is fine under the default limit (it is simply not JSON).
        post(&server, "/regression", big).await.assert_error(400, Some(1), "");
    });
}

#[test]
fn memory_limit_ends_the_request_not_the_server() {
    // 24 MiB of linear memory cannot hold a 12 MiB body twice over.
    let server = serve(&["--component-memory-mb", "24"]);
    runtime().block_on(async {
        let line = read("regression/input.jsonl").split(|&b| b == b'\n').next().unwrap().to_vec();
        let mut body = Vec::new();
        while body.len() < 12 << 20 {
            body.extend_from_slice(&line);
            body.push(b'\n');
        }
        post(&server, "/regression", body).await.assert_error(500, None, "memory limit");
        // The next request gets a fresh instance and succeeds.
        post(&server, "/regression", read("regression/input.jsonl"))
            .await
            .assert_body(&read("regression/expected.jsonl"));
    });
}

#[test]
fn two_hundred_concurrent_requests_all_succeed() {
    let server = serve(&[]);
    runtime().block_on(async {
        let client = client();
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            ("/regression", read("regression/input.jsonl"), read("regression/expected.jsonl")),
            ("/preprocess/helpsteer", read("helpsteer/raw/train.jsonl"), read("helpsteer/expected/train.jsonl")),
            (
                "/preprocess/helpsteer2?split=validation",
                read("helpsteer2/raw/validation.jsonl.gz"),
                read("helpsteer2/expected/val.jsonl"),
            ),
            ("/labels/encode", b"[0,1,2,3,4,5,-1,2.5,3.5]".to_vec(), b"quality:0,toxicity:1,humor:2,creativity:3,helpfulness:4,correctness:4,coherence:0,complexity:2,verbosity:4".to_vec()),
        ];
        let requests = (0..200).map(|i| {
            let (route, body, expected) = cases[i % cases.len()].clone();
            let request = client.post(format!("{}{route}", server.url)).body(body);
            async move { (i, route, send(request).await, expected) }
        });
        let replies = futures::future::join_all(requests).await;
        let mut failures = 0;
        for (i, route, reply, expected) in &replies {
            if reply.status != 200 || reply.body != *expected {
                failures += 1;
                eprintln!("request {i} {route}: {} {}", reply.status, String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]));
            }
        }
        assert_eq!(failures, 0, "{failures} of 200 concurrent requests failed");
    });
}

/// Sends a chunked POST whose body never ends: headers and one chunk, then silence.
fn start_endless_body(server: &Server) -> std::net::TcpStream {
    let mut socket = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    socket
        .write_all(b"POST /regression HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .unwrap();
    socket
}

/// One client's slow bodies hold at most its share of the request slots: its next
/// request waits for one of its own, and the slots left serve another client at once.
#[test]
fn one_client_cannot_hold_every_request_slot() {
    let server = serve(&["--max-concurrent-requests", "4", "--max-requests-per-client", "2"]);
    let held: Vec<_> = (0..2).map(|_| start_endless_body(&server)).collect();
    runtime().block_on(async {
        // Time for the server to take both (nothing shows it from outside).
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let url = format!("{}/labels/parse", server.url);
        let same = tokio::spawn(send(reqwest::Client::new().post(&url).body("quality:1")));
        // Another client address (Linux routes all of 127/8 to loopback).
        let other_client = reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap());
        let reply = send(other_client.build().unwrap().post(&url).body("quality:1")).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(!same.is_finished(), "the client's third request waits for its share");
        drop(held);
        let reply = same.await.unwrap();
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    });
}

#[test]
fn a_body_that_never_ends_gets_408() {
    use std::io::Read;
    let server = serve(&["--body-read-timeout", "1"]);
    let mut socket = start_endless_body(&server);
    // Generous: a server that waits for --component-timeout fails here instead of hanging.
    socket.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut reply = vec![0; 4096];
    let n = socket.read(&mut reply).expect("a reply before the read timeout");
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("within 1 seconds (--body-read-timeout)"), "{reply}");
}

#[test]
fn health_checks_answer_while_every_slot_is_busy() {
    use std::io::Read;
    let server = serve(&["--max-concurrent-requests", "1"]);
    let mut busy = start_endless_body(&server);
    runtime().block_on(async {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap();
        let reply = send(client.get(format!("{}/health", server.url))).await;
        assert_eq!((reply.status, reply.json()["status"].clone()), (200, json!("ok")));
    });
    // The endless request still holds its slot, unanswered.
    busy.set_nonblocking(true).unwrap();
    let error = busy.read(&mut [0; 16]).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock);
}

/// The same connection admission as `serve`: one client's idle sockets past
/// --max-connections-per-client are answered 503 and closed instead of using up the
/// server's descriptors (400 idle sockets left /health unanswered), and its slots come
/// back as they close.
#[test]
fn idle_connections_past_a_clients_share_are_refused() {
    let server = serve(&["--max-connections-per-client", "2"]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let held: Vec<std::net::TcpStream> = (0..2).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    let answer = server::answer_past_share(&address, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("--max-connections-per-client"), "{answer:?}");
    drop(held);
    runtime().block_on(server::wait_for_ok(&format!("{}/health", server.url)));
}
