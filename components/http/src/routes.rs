//! The HTTP contract, as plain Rust: a request (method, path, query, decoded body) in,
//! a [`Reply`] out. No I/O happens here, so the whole contract is tested natively and
//! the component's glue (`service.rs`) only moves bytes.
//!
//! | route | body | reply |
//! |---|---|---|
//! | `POST /regression` | SFT JSONL | regression JSONL |
//! | `POST /format` | SFT JSONL | `{"text": prefix}` JSONL, one per labeled turn |
//! | `POST /labels/parse` | a label string | `{"pairs", "attributes", "vector"}` |
//! | `POST /labels/encode` | `[9 scores]` or `{"scores", "names"}` | the label string |
//! | `POST /preprocess/{helpsteer,helpsteer2,helpsteer2-preference,oasst}` | raw rows / trees | SFT JSONL, train records then val |
//! | `GET /health` | | `{"status": "ok", "version"}` |

use serde_json::{Value, json};
use steerlm_core::chunk::{LineError, OUTPUT_LIMIT, Split, split_lines};
use steerlm_core::preprocess::{PreprocessOptions, Source};
use steerlm_core::template::{self, TemplateOptions};
use steerlm_core::{ALL_ATTRIBUTES, chunk, labels, oasst, preprocess, regression};

/// Media type of every JSONL response.
pub const JSONL: &str = "application/jsonl; charset=utf-8";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Bytes converted per step: bounds the work done past the response limit.
const PIECE_BYTES: usize = 4 << 20;

/// What a route answers.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers (record counts, the train/val split).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    fn ok(content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply { status: 200, content_type, headers: Vec::new(), body }
    }

    fn header(mut self, name: &'static str, value: impl ToString) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }

    /// An error as `{"error": message, "line": N}`; `line` is null when the error is
    /// not about one line of the body.
    pub fn error(status: u16, message: impl Into<String>, line: Option<u64>) -> Reply {
        let body = json!({ "error": message.into(), "line": line });
        Reply { status, content_type: JSON, headers: Vec::new(), body: format!("{body}\n").into_bytes() }
    }

    fn bad_line(e: LineError) -> Reply {
        Reply::error(400, e.message, Some(e.line))
    }
}

/// Limits the contract enforces itself.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, before and after gzip decoding.
    pub max_body_bytes: usize,
    /// Largest response body: regression output grows with the square of a
    /// conversation's turns, so a small request can ask for a huge answer.
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 32 << 20, max_response_bytes: 256 << 20 }
    }
}

/// Every route the contract has, for `404`/`405` decisions.
const ROUTES: [(&str, &str); 9] = [
    ("GET", "/health"),
    ("POST", "/regression"),
    ("POST", "/format"),
    ("POST", "/labels/parse"),
    ("POST", "/labels/encode"),
    ("POST", "/preprocess/helpsteer"),
    ("POST", "/preprocess/helpsteer2"),
    ("POST", "/preprocess/helpsteer2-preference"),
    ("POST", "/preprocess/oasst"),
];

/// The method a path accepts, if the path is a route.
pub fn route_method(path: &str) -> Option<&'static str> {
    ROUTES.iter().find(|(_, p)| *p == path).map(|(m, _)| *m)
}

/// The `404` or `405` for a request no route takes, decided before its body is read.
pub fn reject(method: &str, path: &str) -> Option<Reply> {
    let Some(allowed) = route_method(path) else {
        return Some(Reply::error(404, format!("no route {path}; routes: {}", route_list()), None));
    };
    (method != allowed)
        .then(|| Reply::error(405, format!("{path} takes {allowed}, not {method}"), None).header("allow", allowed))
}

/// Answers one request whose body is already read and decoded.
pub fn handle(method: &str, path: &str, query: &str, body: &[u8], limits: Limits) -> Reply {
    if let Some(reply) = reject(method, path) {
        return reply;
    }
    let query = match Query::parse(query) {
        Ok(query) => query,
        Err(message) => return Reply::error(400, message, None),
    };
    let result = match path {
        "/health" => Ok(Reply::ok(JSON, health())),
        "/regression" => template_options(&query).and_then(|options| {
            jsonl(body, limits, |piece, first, budget| regression::convert_bounded(piece, first, options, budget))
        }),
        "/format" => template_options(&query).and_then(|options| {
            jsonl(body, limits, |piece, first, budget| template::format_chunk_bounded(piece, first, options, budget))
        }),
        "/labels/parse" => labels_parse(body),
        "/labels/encode" => labels_encode(body),
        "/preprocess/helpsteer" => rows(Source::HelpSteer, &query, body, limits),
        "/preprocess/helpsteer2" => rows(Source::HelpSteer2, &query, body, limits),
        "/preprocess/helpsteer2-preference" => rows(Source::HelpSteer2Preference, &query, body, limits),
        "/preprocess/oasst" => trees(&query, body, limits),
        _ => unreachable!("every path in ROUTES is handled"),
    };
    result.unwrap_or_else(|reply| reply)
}

fn route_list() -> String {
    ROUTES.iter().map(|(m, p)| format!("{m} {p}")).collect::<Vec<_>>().join(", ")
}

fn health() -> Vec<u8> {
    let body = json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "routes": route_list() });
    format!("{body}\n").into_bytes()
}

/// The query string's `name=value` pairs; names are checked by each route.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, "true"));
            if value.contains('%') || value.contains('+') {
                return Err(format!("query parameter {name}: percent-encoded values are not supported"));
            }
            pairs.push((name.to_owned(), value.to_owned()));
        }
        Ok(Query(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Refuses parameters the route does not know, so a typo is not silently ignored.
    fn only(&self, known: &[&str]) -> Result<(), Reply> {
        match self.0.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            None => Ok(()),
            Some((name, _)) => {
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                Err(Reply::error(400, format!("unknown query parameter {name:?} (this route takes: {known})"), None))
            }
        }
    }

    fn flag(&self, name: &str) -> Result<bool, Reply> {
        match self.get(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => {
                Err(Reply::error(400, format!("query parameter {name}={other}: expected true or false"), None))
            }
        }
    }

    fn number(&self, name: &str, default: f64) -> Result<f64, Reply> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| Reply::error(400, format!("query parameter {name}={text}: expected a number"), None)),
        }
    }
}

fn template_options(query: &Query) -> Result<TemplateOptions, Reply> {
    query.only(&["use_record_system"])?;
    Ok(TemplateOptions { use_record_system: query.flag("use_record_system")? })
}

/// Converts a JSONL body piece by piece, stopping at the first bad line or when the
/// output would pass the response limit (`convert` gets the bytes left).
fn jsonl(
    body: &[u8],
    limits: Limits,
    mut convert: impl FnMut(&[u8], u64, usize) -> chunk::ChunkOutput,
) -> Result<Reply, Reply> {
    let text = body_text(body)?;
    let (mut output, mut records, mut lines) = (Vec::new(), 0, 0);
    for (piece, first_line) in pieces(text.as_bytes()) {
        let out = convert(piece, first_line, limits.max_response_bytes.saturating_sub(output.len()));
        if let Some(e) = out.errors.into_iter().next() {
            if e.message == OUTPUT_LIMIT {
                return Err(response_too_large(limits));
            }
            return Err(Reply::bad_line(e));
        }
        output.extend_from_slice(&out.output);
        check_response_size(output.len(), limits)?;
        records += out.records_in;
        lines += out.lines_out;
    }
    Ok(Reply::ok(JSONL, output).header("x-steerlm-records-in", records).header("x-steerlm-lines-out", lines))
}

/// The body as text: every route takes UTF-8. The error names the line, as the
/// per-line conversions do.
fn body_text(body: &[u8]) -> Result<&str, Reply> {
    std::str::from_utf8(body).map_err(|e| {
        let line = 1 + body[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() as u64;
        Reply::error(400, "line is not valid UTF-8", Some(line))
    })
}

/// Splits a body into runs of whole lines of about [`PIECE_BYTES`], each with the
/// number of its first line.
fn pieces(body: &[u8]) -> impl Iterator<Item = (&[u8], u64)> {
    let (mut start, mut line) = (0, 1u64);
    std::iter::from_fn(move || {
        if start >= body.len() {
            return None;
        }
        let rest = &body[start..];
        let end = if rest.len() <= PIECE_BYTES {
            rest.len()
        } else {
            newline_at_or_after(rest, PIECE_BYTES).map_or(rest.len(), |i| i + 1)
        };
        let piece = &rest[..end];
        let first = line;
        line += split_lines(piece).count() as u64;
        start += end;
        Some((piece, first))
    })
}

fn newline_at_or_after(bytes: &[u8], from: usize) -> Option<usize> {
    bytes[from..].iter().position(|&b| b == b'\n').map(|i| from + i)
}

fn check_response_size(bytes: usize, limits: Limits) -> Result<(), Reply> {
    if bytes > limits.max_response_bytes {
        return Err(response_too_large(limits));
    }
    Ok(())
}

fn response_too_large(limits: Limits) -> Reply {
    Reply::error(
        413,
        format!(
            "the response would be larger than the limit of {} bytes; send fewer or shorter records per request",
            limits.max_response_bytes
        ),
        None,
    )
}

fn labels_parse(body: &[u8]) -> Result<Reply, Reply> {
    let label = single_line(body)?;
    let invalid = |message: String| Reply::error(400, message, Some(1));
    let pairs = labels::parse_label(label).map_err(invalid)?;
    let vector = labels::label_vector(label).map_err(invalid)?;
    let pairs: Vec<Value> = pairs.iter().map(|(k, v)| json!([k, v])).collect();
    let body = json!({ "pairs": pairs, "attributes": ALL_ATTRIBUTES, "vector": vector });
    Ok(Reply::ok(JSON, format!("{body}\n").into_bytes()))
}

/// A one-value body, without the newline that `curl --data-binary @file` keeps.
fn single_line(body: &[u8]) -> Result<&str, Reply> {
    let text = body_text(body)?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(text);
    if text.contains('\n') {
        return Err(Reply::error(400, "the body must be a single line", Some(2)));
    }
    Ok(text)
}

fn labels_encode(body: &[u8]) -> Result<Reply, Reply> {
    let invalid = |message: String| Reply::error(400, message, Some(1));
    let value: Value = serde_json::from_slice(body).map_err(|e| invalid(chunk::json_error(&e)))?;
    let (scores, names) = match &value {
        Value::Array(_) => (&value, None),
        Value::Object(object) => {
            if let Some(key) = object.keys().find(|k| *k != "scores" && *k != "names") {
                return Err(invalid(format!("unknown field {key:?} (expected scores and names)")));
            }
            (object.get("scores").ok_or_else(|| invalid("missing field \"scores\"".into()))?, object.get("names"))
        }
        _ => return Err(invalid("expected [scores...] or {\"scores\": [...], \"names\": [...]}".into())),
    };
    let scores: Vec<f64> = numbers(scores).ok_or_else(|| invalid("scores must be an array of numbers".into()))?;
    let names: Option<Vec<&str>> = match names {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(Value::as_str)
                .collect::<Option<_>>()
                .ok_or_else(|| invalid("names must be an array of strings".into()))?,
        ),
        Some(_) => return Err(invalid("names must be an array of strings".into())),
    };
    let label = labels::encode_scores(&scores, names.as_deref()).map_err(invalid)?;
    Ok(Reply::ok(TEXT, label.into_bytes()))
}

fn numbers(value: &Value) -> Option<Vec<f64>> {
    value.as_array()?.iter().map(Value::as_f64).collect()
}

/// HelpSteer-style rows: one body is one input file, named by `?split=` (the file it
/// came from: `train` or `validation`); preference rows name their own split.
fn rows(source: Source, query: &Query, body: &[u8], limits: Limits) -> Result<Reply, Reply> {
    let known: &[&str] = match source {
        Source::HelpSteer => &["split", "output"],
        Source::HelpSteer2 => &["split", "output", "only_helpfulness"],
        Source::HelpSteer2Preference => &["output", "only_helpfulness"],
    };
    query.only(known)?;
    let split = match query.get("split") {
        None | Some("train") => Split::Train,
        Some("validation") | Some("val") => Split::Val,
        Some(other) => {
            return Err(Reply::error(400, format!("split={other}: expected train or validation"), None));
        }
    };
    let options = PreprocessOptions { only_helpfulness: query.flag("only_helpfulness")? };
    let output = Output::from_query(query)?;
    let text = body_text(body)?;
    let (mut train, mut val, mut records) = (Vec::new(), Vec::new(), 0);
    for (piece, first_line) in pieces(text.as_bytes()) {
        let out = preprocess::convert(source, split, options, piece, first_line);
        if let Some(e) = out.errors.into_iter().next() {
            return Err(Reply::bad_line(e));
        }
        train.extend_from_slice(&out.train);
        val.extend_from_slice(&out.val);
        check_response_size(train.len() + val.len(), limits)?;
        records += out.records_in;
    }
    Ok(output.reply(train, val).header("x-steerlm-records-in", records))
}

/// Which split files a preprocess reply carries.
enum Output {
    /// Train records then val records; headers give the counts.
    All,
    Train,
    Val,
}

impl Output {
    fn from_query(query: &Query) -> Result<Output, Reply> {
        match query.get("output") {
            None | Some("all") => Ok(Output::All),
            Some("train") => Ok(Output::Train),
            Some("val") => Ok(Output::Val),
            Some(other) => Err(Reply::error(400, format!("output={other}: expected all, train or val"), None)),
        }
    }

    /// The reply, whose headers say which records are train and which val: with
    /// `output=all` the first `x-steerlm-train-records` lines are train.
    fn reply(self, train: Vec<u8>, val: Vec<u8>) -> Reply {
        let count = |bytes: &[u8]| bytes.iter().filter(|&&b| b == b'\n').count();
        let (train_records, val_records) = (count(&train), count(&val));
        let body = match self {
            Output::All => [train, val].concat(),
            Output::Train => train,
            Output::Val => val,
        };
        Reply::ok(JSONL, body)
            .header("x-steerlm-train-records", train_records)
            .header("x-steerlm-val-records", val_records)
    }
}

/// OpenAssistant trees, shuffled and split as the reference does (`seed`, default 10;
/// `train_fraction`, default 0.95).
fn trees(query: &Query, body: &[u8], limits: Limits) -> Result<Reply, Reply> {
    query.only(&["seed", "train_fraction", "output"])?;
    let seed = match query.get("seed") {
        None => 10,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| Reply::error(400, format!("seed={text}: expected a non-negative integer"), None))?,
    };
    let fraction = query.number("train_fraction", 0.95)?;
    if !(0.0..=1.0).contains(&fraction) {
        return Err(Reply::error(400, format!("train_fraction={fraction}: expected a number from 0 to 1"), None));
    }
    let output = Output::from_query(query)?;
    let text = body_text(body)?;
    let out = oasst::convert_trees(text.as_bytes(), 1);
    if let Some(e) = out.errors.into_iter().next() {
        return Err(Reply::bad_line(e));
    }
    check_response_size(out.output.len(), limits)?;
    let count = u32::try_from(out.tree_ends.len())
        .map_err(|_| Reply::error(413, "more than 2^32 trees in one request", None))?;
    let split = oasst::TreeSplit::new(count, seed, fraction);
    let ranges: Vec<(u64, u64)> = oasst::tree_ranges(&out.tree_ends, 0).collect();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (tree, to_train) in split.destinations() {
        let (start, end) = ranges[tree];
        let destination = if to_train { &mut train } else { &mut val };
        destination.extend_from_slice(&out.output[start as usize..end as usize]);
    }
    let train_count = split.train_count;
    Ok(output.reply(train, val).header("x-steerlm-trees", count).header("x-steerlm-train-trees", train_count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cut_at_line_ends_and_count_lines() {
        let line = format!("{}\n", "x".repeat(999));
        let body = line.repeat(10_000); // ~10 MB: three pieces
        let pieces: Vec<_> = pieces(body.as_bytes()).collect();
        assert!(pieces.len() >= 3);
        let mut expected_line = 1;
        for (piece, first) in &pieces {
            assert_eq!(*first, expected_line);
            assert!(piece.ends_with(b"\n"));
            expected_line += piece.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        assert_eq!(expected_line, 10_001);
    }

    #[test]
    fn a_bad_line_deep_in_a_large_body_is_named_by_its_absolute_number() {
        let good = r#"{"conversations": [{"from": "User", "value": "hi"}], "mask": "User", "system": ""}"#;
        let mut body = format!("{good}\n").repeat(60_000);
        body.push_str("{oops\n");
        let reply = handle("POST", "/regression", "", body.as_bytes(), Limits::default());
        assert_eq!(reply.status, 400);
        let json: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["line"], 60_001);
    }

    #[test]
    fn one_record_with_many_turns_stops_at_the_response_limit() {
        // 20,000 labeled turns in one 3 MB line: its prefixes would come to about 26 GB,
        // so this only finishes if the limit is checked within the line.
        let turn = format!(r#"{{"from": "User", "value": "{}", "label": "helpfulness:3"}}"#, "x".repeat(100));
        let body = format!(r#"{{"mask": "User", "system": "", "conversations": [{}]}}"#, vec![turn; 20_000].join(", "));
        let limits = Limits { max_body_bytes: 1 << 20, max_response_bytes: 4 << 20 };
        for route in ["/regression", "/format"] {
            let reply = handle("POST", route, "", body.as_bytes(), limits);
            assert_eq!(reply.status, 413, "{route}: {}", String::from_utf8_lossy(&reply.body));
        }
    }

    #[test]
    fn response_limit_is_a_413() {
        let body = std::fs::read("../../tests/fixtures/conversions/regression/input.jsonl").unwrap();
        let limits = Limits { max_body_bytes: 1 << 20, max_response_bytes: 1000 };
        let reply = handle("POST", "/regression", "", &body, limits);
        assert_eq!(reply.status, 413);
    }

    #[test]
    fn query_flags_and_unknown_parameters() {
        let query = Query::parse("use_record_system&x=1").unwrap();
        assert!(query.flag("use_record_system").unwrap());
        assert!(query.only(&["use_record_system"]).is_err());
        assert!(Query::parse("seed=%31").is_err());
        assert!(!Query::parse("a=false").unwrap().flag("a").unwrap());
        assert!(Query::parse("a=maybe").unwrap().flag("a").is_err());
    }
}
