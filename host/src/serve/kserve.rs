//! The KServe v2 inference protocol as NVIDIA Triton speaks it over HTTP: JSON tensors,
//! and the binary tensor extension (`Inference-Header-Content-Length`: a JSON header,
//! then raw tensor bytes; BYTES elements are a 4-byte little-endian length and the
//! bytes).

use serde::Deserialize;
use serde_json::{Map, Value, json};

pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A 4xx problem with the request, said plainly.
#[derive(Debug)]
pub struct BadRequest(pub String);

impl<T: Into<String>> From<T> for BadRequest {
    fn from(message: T) -> Self {
        BadRequest(message.into())
    }
}

#[derive(Deserialize, Debug)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<Value>,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize, Debug)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize, Debug)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// What the model is asked to score.
#[derive(Debug, PartialEq)]
pub enum Inputs {
    /// `sentences`: BYTES, one text per batch row.
    Sentences(Vec<String>),
    /// NeMo's other form: `tokens` INT64 `[n, max_len]` with `sequence_lengths` INT64 `[n]`.
    Tokens(Vec<Vec<u32>>),
}

/// The outputs a response can hold.
const OUTPUTS: [&str; 2] = ["rewards", "exceeded"];

/// Parses an inference request: the JSON header, each input's tensor (from JSON or
/// the binary tail), and what they ask the model to score.
pub fn parse_request(body: &[u8], header_length: Option<usize>) -> Result<(InferRequest, Inputs), BadRequest> {
    let (header, mut binary) = split_body(body, header_length)?;
    let request: InferRequest =
        serde_json::from_slice(header).map_err(|e| format!("invalid inference request JSON: {e}"))?;
    let mut names = std::collections::HashSet::new();
    for input in &request.inputs {
        if !names.insert(input.name.as_str()) {
            return Err(format!("input `{}` is sent twice", input.name).into());
        }
    }
    for output in request.outputs.iter().flatten() {
        if !OUTPUTS.contains(&output.name.as_str()) {
            return Err(format!("unknown output `{}`; this model has `rewards` and `exceeded`", output.name).into());
        }
    }
    let mut tensors = Tensors::default();
    for input in &request.inputs {
        let raw = take_binary(input, &mut binary)?;
        decode_input(input, raw, &mut tensors)?;
    }
    if !binary.is_empty() {
        return Err(format!("{} bytes of binary data follow the tensors", binary.len()).into());
    }
    Ok((request, tensors.into_inputs()?))
}

/// The JSON header and the binary tail (empty without `Inference-Header-Content-Length`).
fn split_body(body: &[u8], header_length: Option<usize>) -> Result<(&[u8], &[u8]), BadRequest> {
    match header_length {
        Some(n) if n > body.len() => {
            Err(format!("Inference-Header-Content-Length {n} is larger than the body ({} bytes)", body.len()).into())
        }
        Some(n) => Ok(body.split_at(n)),
        None => Ok((body, &[][..])),
    }
}

/// The input's `binary_data_size` bytes, taken off the front of the binary tail; `None`
/// when its data is in the JSON.
fn take_binary<'a>(input: &InputTensor, binary: &mut &'a [u8]) -> Result<Option<&'a [u8]>, BadRequest> {
    let size = input.parameters.as_ref().and_then(|p| p.get("binary_data_size")).and_then(Value::as_u64);
    let Some(size) = size.map(|n| n as usize) else { return Ok(None) };
    if input.data.is_some() {
        // Which of the two to read would be a guess.
        return Err(
            format!("input `{}` has both `data` and a `binary_data_size`: send its values once", input.name).into()
        );
    }
    if size > binary.len() {
        return Err(format!(
            "input `{}`: binary data is truncated ({size} bytes announced, {} left)",
            input.name,
            binary.len()
        )
        .into());
    }
    let (mine, rest) = binary.split_at(size);
    *binary = rest;
    Ok(Some(mine))
}

/// The tensors a request sent, decoded, before they are checked to belong together.
#[derive(Default)]
struct Tensors {
    sentences: Option<Vec<String>>,
    /// Values and shape.
    tokens: Option<(Vec<i64>, Vec<i64>)>,
    lengths: Option<Vec<i64>>,
}

/// Decodes one input tensor, from `raw` bytes or its JSON `data`, into `tensors`.
fn decode_input(input: &InputTensor, raw: Option<&[u8]>, tensors: &mut Tensors) -> Result<(), BadRequest> {
    let elements = element_count(input)?;
    match input.name.as_str() {
        "sentences" => {
            expect_type(input, "BYTES")?;
            check_sentences_shape(input)?;
            let values = match raw {
                Some(bytes) => decode_bytes_elements(bytes, &input.name)?,
                None => json_strings(input)?,
            };
            check_element_count(input, values.len(), elements)?;
            tensors.sentences = Some(values);
        }
        "tokens" | "sequence_lengths" => {
            expect_type(input, "INT64")?;
            let values = match raw {
                Some(bytes) => {
                    if bytes.len() % 8 != 0 {
                        return Err(format!("input `{}`: INT64 data of {} bytes", input.name, bytes.len()).into());
                    }
                    bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
                }
                None => json_ints(input)?,
            };
            check_element_count(input, values.len(), elements)?;
            if input.name == "tokens" {
                tensors.tokens = Some((values, input.shape.clone()));
            } else {
                tensors.lengths = Some(values);
            }
        }
        other => {
            return Err(format!(
                "unknown input `{other}`; this model takes `sentences` (BYTES) or `tokens` + `sequence_lengths` (INT64)"
            )
            .into());
        }
    }
    Ok(())
}

impl Tensors {
    /// Either `sentences`, or `tokens` with `sequence_lengths` cut into sequences.
    fn into_inputs(self) -> Result<Inputs, BadRequest> {
        match (self.sentences, self.tokens, self.lengths) {
            (Some(sentences), None, None) => Ok(Inputs::Sentences(sentences)),
            (None, Some((tokens, shape)), Some(lengths)) => token_rows(&tokens, &shape, &lengths).map(Inputs::Tokens),
            (None, Some(_), None) | (None, None, Some(_)) => {
                Err("`tokens` and `sequence_lengths` must be sent together".into())
            }
            _ => Err("send either `sentences` or `tokens` + `sequence_lengths`".into()),
        }
    }
}

/// Each row of a padded `tokens` [batch, length] matrix, cut to its sequence length.
fn token_rows(tokens: &[i64], shape: &[i64], lengths: &[i64]) -> Result<Vec<Vec<u32>>, BadRequest> {
    let (rows, width) = match shape {
        [rows, width] => (*rows as usize, *width as usize),
        other => return Err(format!("`tokens` must be 2-D [batch, length], got {other:?}").into()),
    };
    if lengths.len() != rows {
        return Err(format!("{} sequence_lengths for {rows} token rows", lengths.len()).into());
    }
    let mut sequences = Vec::with_capacity(rows);
    for (row, &len) in lengths.iter().enumerate() {
        if len < 1 || len as usize > width {
            return Err(format!("sequence_lengths[{row}] = {len} is outside 1..={width}").into());
        }
        let ids = &tokens[row * width..row * width + len as usize];
        if let Some(bad) = ids.iter().find(|&&t| t < 0 || t > u32::MAX as i64) {
            return Err(format!("token id {bad} in row {row} is not a valid id").into());
        }
        sequences.push(ids.iter().map(|&t| t as u32).collect());
    }
    Ok(sequences)
}

fn expect_type(input: &InputTensor, datatype: &str) -> Result<(), BadRequest> {
    if input.datatype != datatype {
        return Err(format!("input `{}` must be {datatype}, got {}", input.name, input.datatype).into());
    }
    Ok(())
}

/// How many elements the input's shape holds. Shapes come from the client, so the
/// product is checked: a shape whose product overflows is a bad request, not a panic.
fn element_count(input: &InputTensor) -> Result<usize, BadRequest> {
    let mut count: usize = 1;
    for &dimension in &input.shape {
        let dimension = usize::try_from(dimension)
            .map_err(|_| format!("input `{}` has a negative dimension in {:?}", input.name, input.shape))?;
        count = count.checked_mul(dimension).ok_or_else(|| {
            format!("input `{}`: shape {:?} has more elements than can be addressed", input.name, input.shape)
        })?;
    }
    Ok(count)
}

fn check_element_count(input: &InputTensor, found: usize, expected: usize) -> Result<(), BadRequest> {
    if found != expected {
        return Err(format!("input `{}` has {found} elements for shape {:?}", input.name, input.shape).into());
    }
    Ok(())
}

/// `sentences` is one text per batch row: shape [n] or [n, 1].
fn check_sentences_shape(input: &InputTensor) -> Result<(), BadRequest> {
    if !matches!(input.shape.as_slice(), [_] | [_, 1]) {
        return Err(format!("input `sentences` must have shape [batch, 1] or [batch], got {:?}", input.shape).into());
    }
    Ok(())
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

fn json_strings(input: &InputTensor) -> Result<Vec<String>, BadRequest> {
    let data = input.data.as_ref().ok_or_else(|| format!("input `{}` has no data", input.name))?;
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    flat.into_iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| BadRequest(format!("input `{}`: BYTES elements must be strings", input.name)))
        })
        .collect()
}

fn json_ints(input: &InputTensor) -> Result<Vec<i64>, BadRequest> {
    let data = input.data.as_ref().ok_or_else(|| format!("input `{}` has no data", input.name))?;
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    flat.into_iter()
        .map(|v| {
            v.as_i64().ok_or_else(|| BadRequest(format!("input `{}`: INT64 elements must be integers", input.name)))
        })
        .collect()
}

/// BYTES elements: a little-endian u32 length, then that many bytes (UTF-8 here).
pub fn decode_bytes_elements(mut bytes: &[u8], name: &str) -> Result<Vec<String>, BadRequest> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err(format!("input `{name}`: binary BYTES data is truncated").into());
        }
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        if bytes.len() < 4 + len {
            return Err(format!("input `{name}`: binary BYTES element of {len} bytes is truncated").into());
        }
        let text = std::str::from_utf8(&bytes[4..4 + len])
            .map_err(|e| format!("input `{name}`: element {} is not valid UTF-8 ({e})", out.len()))?;
        out.push(text.to_owned());
        bytes = &bytes[4 + len..];
    }
    Ok(out)
}

pub fn encode_bytes_elements(values: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Whether the client asked for `name` as binary data.
fn wants_binary(request: &InferRequest, name: &str) -> bool {
    let default =
        request.parameters.as_ref().and_then(|p| p.get("binary_data_output")).and_then(Value::as_bool).unwrap_or(false);
    match &request.outputs {
        Some(outputs) => outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| {
                o.parameters.as_ref().and_then(|p| p.get("binary_data")).and_then(Value::as_bool).unwrap_or(default)
            })
            .unwrap_or(default),
        None => default,
    }
}

/// Whether `name` is among the outputs the client asked for (all when it names none).
fn wants(request: &InferRequest, name: &str) -> bool {
    request.outputs.as_ref().is_none_or(|outputs| outputs.iter().any(|o| o.name == name))
}

/// The response body and, for binary outputs, the JSON header's length. `labels` is the
/// model's number of outputs: `rewards` is `[rows, labels]` even when there are no rows.
pub fn response(
    request: &InferRequest,
    model_name: &str,
    labels: usize,
    rewards: &[Vec<f32>],
    exceeded: &[bool],
) -> (Vec<u8>, Option<usize>) {
    let rows = rewards.len();
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    let mut add = |name: &str, datatype: &str, shape: Vec<usize>, json_data: Value, bytes: Vec<u8>| {
        if !wants(request, name) {
            return;
        }
        let mut tensor = json!({ "name": name, "datatype": datatype, "shape": shape });
        if wants_binary(request, name) {
            tensor["parameters"] = json!({ "binary_data_size": bytes.len() });
            binary.extend_from_slice(&bytes);
        } else {
            tensor["data"] = json_data;
        }
        outputs.push(tensor);
    };
    let flat: Vec<f32> = rewards.iter().flatten().copied().collect();
    add("rewards", "FP32", vec![rows, labels], json!(flat), flat.iter().flat_map(|v| v.to_le_bytes()).collect());
    let flags: Vec<i32> = exceeded.iter().map(|&e| i32::from(e)).collect();
    add("exceeded", "INT32", vec![rows, 1], json!(flags), flags.iter().flat_map(|v| v.to_le_bytes()).collect());
    let mut header = json!({ "model_name": model_name, "model_version": "1", "outputs": outputs });
    if let Some(id) = &request.id {
        header["id"] = id.clone();
    }
    let mut body = serde_json::to_vec(&header).expect("JSON values serialize");
    if binary.is_empty() {
        return (body, None);
    }
    let header_length = body.len();
    body.extend_from_slice(&binary);
    (body, Some(header_length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_binary_sentences() {
        let body =
            br#"{"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["b"]]}]}"#;
        let (_, inputs) = parse_request(body, None).unwrap();
        assert_eq!(inputs, Inputs::Sentences(vec!["a".into(), "b".into()]));

        let data = encode_bytes_elements(&[b"hello", "wörld".as_bytes()]);
        let header = format!(
            r#"{{"inputs": [{{"name": "sentences", "datatype": "BYTES", "shape": [2, 1], "parameters": {{"binary_data_size": {}}}}}], "outputs": [{{"name": "rewards", "parameters": {{"binary_data": true}}}}]}}"#,
            data.len()
        );
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&data);
        let (request, inputs) = parse_request(&body, Some(header.len())).unwrap();
        assert_eq!(inputs, Inputs::Sentences(vec!["hello".into(), "wörld".into()]));
        let (response, header_length) = response(&request, "m", 2, &[vec![1.0, 2.0], vec![3.0, 4.0]], &[false, true]);
        let header_length = header_length.unwrap();
        let head: Value = serde_json::from_slice(&response[..header_length]).unwrap();
        assert_eq!(head["outputs"].as_array().unwrap().len(), 1, "only rewards was asked for");
        assert_eq!(response.len() - header_length, 16);

        assert!(parse_request(&body[..body.len() - 3], Some(header.len())).unwrap_err().0.contains("truncated"));

        // Values both in the JSON and in the binary tail: refused, not one of them taken.
        let both = header.replace(r#""shape": [2, 1], "#, r#""shape": [2, 1], "data": [["x"], ["y"]], "#);
        let mut body = both.clone().into_bytes();
        body.extend_from_slice(&data);
        let error = parse_request(&body, Some(both.len())).unwrap_err().0;
        assert!(error.contains("input `sentences` has both `data` and a `binary_data_size`"), "{error}");
    }

    #[test]
    fn tokens_form() {
        let body = br#"{"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [2, 3], "data": [5, 6, 7, 8, 0, 0]},
                                   {"name": "sequence_lengths", "datatype": "INT64", "shape": [2, 1], "data": [3, 1]}]}"#;
        let (_, inputs) = parse_request(body, None).unwrap();
        assert_eq!(inputs, Inputs::Tokens(vec![vec![5, 6, 7], vec![8]]));
        let bad = br#"{"inputs": [{"name": "sentences", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}"#;
        assert!(parse_request(bad, None).unwrap_err().0.contains("must be BYTES"));
    }

    /// Shapes whose element count overflows are refused by name, JSON and binary alike.
    #[test]
    fn overflowing_shapes_are_bad_requests() {
        let huge = i64::MAX;
        let json = format!(
            r#"{{"inputs": [{{"name": "tokens", "datatype": "INT64", "shape": [{huge}, 4], "data": [1, 2, 3, 4]}},
                           {{"name": "sequence_lengths", "datatype": "INT64", "shape": [1], "data": [4]}}]}}"#
        );
        let e = parse_request(json.as_bytes(), None).unwrap_err().0;
        assert!(e.contains("input `tokens`") && e.contains("more elements"), "{e}");

        let header = format!(
            r#"{{"inputs": [{{"name": "tokens", "datatype": "INT64", "shape": [4, {huge}], "parameters": {{"binary_data_size": 8}}}},
                           {{"name": "sequence_lengths", "datatype": "INT64", "shape": [{huge}, {huge}], "data": [1]}}]}}"#
        );
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&1i64.to_le_bytes());
        let e = parse_request(&body, Some(header.len())).unwrap_err().0;
        assert!(e.contains("input `tokens`") && e.contains("more elements"), "{e}");

        let sentences = format!(
            r#"{{"inputs": [{{"name": "sentences", "datatype": "BYTES", "shape": [{huge}, 1], "data": ["a"]}}]}}"#
        );
        assert!(parse_request(sentences.as_bytes(), None).unwrap_err().0.contains("1 elements for shape"));
        let negative = br#"{"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, 2], "data": [1, 2]}]}"#;
        assert!(parse_request(negative, None).unwrap_err().0.contains("negative dimension"));
    }

    /// No rows still has the model's number of outputs as its second dimension.
    #[test]
    fn empty_batch_keeps_the_label_dimension() {
        let body = br#"{"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [0, 1], "data": []}]}"#;
        let (request, inputs) = parse_request(body, None).unwrap();
        assert_eq!(inputs, Inputs::Sentences(Vec::new()));
        let (response, header_length) = response(&request, "m", 9, &[], &[]);
        assert_eq!(header_length, None);
        let head: Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(head["outputs"][0]["shape"], json!([0, 9]));
        assert_eq!(head["outputs"][1]["shape"], json!([0, 1]));
    }
}
