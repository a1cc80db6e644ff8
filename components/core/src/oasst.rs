//! OpenAssistant message trees to SFT records (`preprocess_openassistant_data.py`).
//!
//! Each tree line yields every root-to-leaf thread (depth first, replies in order) of
//! two or more messages. Shuffling and splitting the trees is the caller's job (see
//! [`crate::shuffle`]): this module converts each tree on its own, so a host can stream
//! trees through and reorder the converted bytes afterwards.

use crate::attributes::OPEN_ASSISTANT_ATTRIBUTES;
use crate::chunk::{LineError, for_each_line};
use crate::preprocess::write_record_tail;
use crate::pyfloat::python_round;
use crate::pyjson::{Ascii, write_str};
use crate::pyvalue::{PyInt, PyValue};

/// One converted message, shared by every thread through it.
struct Message<'a> {
    text: &'a PyValue,
    is_user: bool,
    label: Option<String>,
}

/// Python's `key in container` on a JSON value: a dict's keys, a substring of a string,
/// an element of a list; a TypeError (the reference crashes) on anything else.
fn py_contains(container: &PyValue, key: &str, what: &str) -> Result<bool, String> {
    match container {
        PyValue::Object(object) => Ok(object.get(key).is_some()),
        PyValue::Str(text) => Ok(text.contains(key)),
        PyValue::Array(items) => Ok(items.iter().any(|item| matches!(item, PyValue::Str(s) if s == key))),
        other => Err(format!("{what} is {}, not an object", other.describe())),
    }
}

/// Python's `container[key]` for a key `py_contains` found: only a dict has it (a string
/// or list holding the key crashes the reference with a TypeError).
fn py_index<'a>(container: &'a PyValue, key: &str, what: &str) -> Result<&'a PyValue, String> {
    container.get(key).ok_or_else(|| format!("{what} is {}, not an object", container.describe()))
}

/// Python's `round(x)` for a float: the nearest integer (ties to even), exactly however
/// large (a float past 2^53 is an integer already: its mantissa times a power of two);
/// `None` for infinity (an OverflowError in Python).
fn round_exactly(x: f64) -> Option<String> {
    if let Some(small) = python_round(x) {
        return Some(small.to_string());
    }
    if !x.is_finite() {
        return None;
    }
    // x = ±mantissa * 2^exponent with exponent > 0 here (|x| >= 2^63).
    let bits = x.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1075;
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    let mut exact = PyInt::from(if x < 0.0 { -(mantissa as i64) } else { mantissa as i64 });
    for _ in 0..exponent / 16 {
        exact = exact.times(1 << 16);
    }
    exact = exact.times(1 << (exponent % 16));
    Some(exact.as_str().to_owned())
}

/// `encode_labels`: `name:round(value * 4)` for the Open Assistant attributes present.
fn encode_labels(labels: &PyValue) -> Result<String, String> {
    let mut items = Vec::new();
    for key in OPEN_ASSISTANT_ATTRIBUTES {
        if !py_contains(labels, key, "`labels`")? {
            continue;
        }
        let entry = py_index(labels, key, "`labels`")?;
        let value = py_index(entry, "value", &format!("label `{key}`"))
            .map_err(|e| if entry.as_object().is_some() { format!("label `{key}` has no `value`") } else { e })?;
        let rounded = match value {
            // Python's int and bool arithmetic is exact, however large the int.
            PyValue::Int(n) => n.times(4).as_str().to_owned(),
            PyValue::Bool(b) => (4 * u8::from(*b)).to_string(),
            PyValue::Float(x) => {
                round_exactly(x * 4.0).ok_or_else(|| format!("label `{key}` value {x} times 4 is not finite"))?
            }
            other => {
                return Err(format!("label `{key}` value is {}, not a number", other.describe()));
            }
        };
        items.push(format!("{key}:{rounded}"));
    }
    Ok(items.join(","))
}

/// `parse_conversations`: every thread below `node`, as indices into `messages`.
fn threads<'a>(node: &'a PyValue, messages: &mut Vec<Message<'a>>) -> Result<Vec<Vec<usize>>, String> {
    // The reference's `in` and `[]`: where they raise on a value, so does this.
    let message = if py_contains(node, "prompt", "a tree or reply")? {
        py_index(node, "prompt", "a tree or reply")?
    } else if py_contains(node, "text", "a tree or reply")? && py_contains(node, "role", "a tree or reply")? {
        if node.as_object().is_none() {
            return Err(format!("a tree or reply is {}, not an object", node.describe()));
        }
        node
    } else {
        return Ok(vec![vec![]]);
    };
    let is_user = match py_index(message, "role", "a message")
        .map_err(|e| if message.as_object().is_some() { "message has no `role`".to_owned() } else { e })?
    {
        PyValue::Str(r) if r == "prompter" => true,
        PyValue::Str(r) if r == "assistant" => false,
        other => return Err(format!("unknown role {}", dumps(other))),
    };
    let text = message.get("text").ok_or("message has no `text`")?;
    let label = message.get("labels").map(encode_labels).transpose()?;
    // (`message` is an object here: its `role` was read.)
    let me = messages.len();
    messages.push(Message { text, is_user, label });
    let replies = match message.get("replies").ok_or("message has no `replies`")? {
        PyValue::Array(replies) => replies,
        other => return Err(format!("`replies` is {}, not an array", other.describe())),
    };
    let mut below = Vec::new();
    for reply in replies {
        below.extend(threads(reply, messages)?);
    }
    if below.is_empty() {
        return Ok(vec![vec![me]]);
    }
    Ok(below
        .into_iter()
        .map(|sub| {
            let mut thread = Vec::with_capacity(sub.len() + 1);
            thread.push(me);
            thread.extend(sub);
            thread
        })
        .collect())
}

/// A value as JSON, for error messages.
fn dumps(value: &PyValue) -> String {
    let mut out = Vec::new();
    match value.write(&mut out, Ascii::Raw) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => value.describe().to_owned(),
    }
}

/// Converts one tree line, appending one SFT record line per thread.
pub fn convert_tree(line: &str, out: &mut Vec<u8>) -> Result<u64, String> {
    let tree = PyValue::parse(line)?;
    let mut messages = Vec::new();
    let mut written = 0;
    for thread in threads(&tree, &mut messages)? {
        if thread.len() <= 1 {
            continue;
        }
        out.extend_from_slice(b"{\"conversations\": [");
        for (i, &m) in thread.iter().enumerate() {
            let message = &messages[m];
            if i > 0 {
                out.extend_from_slice(b"}, ");
            }
            out.extend_from_slice(b"{\"value\": ");
            message.text.write(out, Ascii::Raw)?;
            if message.is_user {
                // User turns always get `label: null`, labels or not.
                out.extend_from_slice(b", \"from\": \"User\", \"label\": null");
            } else {
                out.extend_from_slice(b", \"from\": \"Assistant\"");
                if let Some(label) = &message.label {
                    out.extend_from_slice(b", \"label\": ");
                    write_str(out, label, Ascii::Raw);
                }
            }
        }
        write_record_tail(out);
        written += 1;
    }
    Ok(written)
}

/// A chunk of trees, converted one by one.
#[derive(Debug, Default, PartialEq)]
pub struct TreeChunkOutput {
    /// All trees' records, tree after tree.
    pub output: Vec<u8>,
    /// For each tree (non-blank line) in order, where its records end in `output`;
    /// a bad tree has an empty range and stays in the count so the shuffle of the
    /// others does not change.
    pub tree_ends: Vec<u64>,
    pub errors: Vec<LineError>,
}

pub fn convert_trees(chunk: &[u8], first_line: u64) -> TreeChunkOutput {
    let mut out = TreeChunkOutput::default();
    let (output, tree_ends) = (&mut out.output, &mut out.tree_ends);
    for_each_line(chunk, first_line, &mut out.errors, |_, line| {
        let mark = output.len();
        let result = line.and_then(|line| convert_tree(line, output));
        if result.is_err() {
            output.truncate(mark);
        }
        tree_ends.push(output.len() as u64);
        result.map(|_| ())
    });
    out
}

/// Where the reference's shuffle sends each tree: `order[k]` is the tree written k-th,
/// and the first `train_count` of them go to train, the rest to validation.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeSplit {
    pub order: Vec<u32>,
    pub train_count: usize,
}

impl TreeSplit {
    /// `random.seed(seed); random.shuffle(trees)`, then `int(len * train_fraction)` to train.
    pub fn new(count: u32, seed: u64, train_fraction: f64) -> Self {
        let order = crate::shuffle::python_shuffle_order(count, seed);
        let train_count = crate::shuffle::train_count(u64::from(count), train_fraction) as usize;
        TreeSplit { order, train_count }
    }

    /// A split computed elsewhere (a component), checked to be one for `count` trees.
    pub fn checked(count: usize, order: Vec<u32>, train_count: usize) -> Result<Self, String> {
        let mut seen = vec![false; count];
        let permutation = order.len() == count
            && order.iter().all(|&tree| seen.get_mut(tree as usize).is_some_and(|s| !std::mem::replace(s, true)));
        if !permutation || train_count > count {
            return Err("the shuffle is not a permutation of the trees".to_owned());
        }
        Ok(TreeSplit { order, train_count })
    }

    /// The trees in output order, each with whether it goes to train.
    pub fn destinations(&self) -> impl Iterator<Item = (usize, bool)> + '_ {
        self.order.iter().enumerate().map(|(position, &tree)| (tree as usize, position < self.train_count))
    }
}

/// The byte range of each tree's records, from the ends [`convert_trees`] reports,
/// offset by `base` (where the chunk's output starts in a larger buffer or file).
pub fn tree_ranges(tree_ends: &[u64], base: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let starts = std::iter::once(0).chain(tree_ends.iter().copied());
    starts.zip(tree_ends).map(move |(start, &end)| (base + start, base + end))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_split_sends_the_first_shuffled_trees_to_train() {
        let split = TreeSplit::new(10, 10, 0.7);
        let destinations: Vec<(usize, bool)> = split.destinations().collect();
        assert_eq!(destinations[..3], [(5, true), (2, true), (7, true)]);
        assert_eq!(destinations.iter().filter(|(_, train)| *train).count(), 7);
        assert_eq!(TreeSplit::checked(10, split.order.clone(), 7), Ok(split));
        assert!(TreeSplit::checked(3, vec![0, 0, 1], 1).is_err());
        assert!(TreeSplit::checked(2, vec![1, 0], 3).is_err());
        assert_eq!(tree_ranges(&[3, 3, 8], 100).collect::<Vec<_>>(), [(100, 103), (103, 103), (103, 108)]);
    }

    use super::*;

    /// Expected label as the reference computes `round(value * 4)` in CPython 3.11.
    #[test]
    fn integer_label_values_stay_exact() {
        let tree = r#"{"prompt": {"text": "q", "role": "prompter", "replies": [{"text": "a", "role": "assistant", "replies": [], "labels": {"quality": {"value": 123456789012345678901234567890}, "humor": {"value": true}, "toxicity": {"value": 0.625}}}]}}"#;
        let mut out = Vec::new();
        assert_eq!(convert_tree(tree, &mut out).unwrap(), 1);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""label": "quality:493827156049382715604938271560,toxicity:2,humor:4"}"#), "{text}");
    }

    /// Float label values past the 64-bit range round exactly, as Python's int does
    /// (expected values printed by CPython 3.11: `round(1e300 * 4)`, ...).
    #[test]
    fn huge_float_label_values_round_exactly() {
        assert_eq!(
            round_exactly(1e300 * 4.0).unwrap(),
            "4000000000000000210019041020817680994817874324432636619663416462047209831955632783145485500321791456174817775331535512707770092941441722302579168739146827931393548803706303214951320935179152360237475812939883199780324476155870563520298610971120569978317035155280227371352462677888785547461837602160640"
        );
        assert_eq!(round_exactly(-3.5e20 * 4.0).unwrap(), "-1400000000000000000000");
        assert_eq!(round_exactly(2f64.powi(63) * 4.0).unwrap(), "36893488147419103232");
        assert_eq!(round_exactly(2.5).unwrap(), "2");
        assert_eq!(round_exactly(f64::INFINITY), None);
    }

    /// Where the reference's `key in labels` / `labels[key]` (and the same on trees and
    /// replies) raise a TypeError, the tree is an error; where Python's `in` is merely
    /// false (a string or list without the key), it goes on as Python does.
    #[test]
    fn labels_and_replies_that_crash_the_reference_are_errors() {
        let tree = |labels: &str, reply: &str| {
            format!(
                r#"{{"prompt": {{"text": "q", "role": "prompter", "replies": [{{"text": "a", "role": "assistant", "replies": [], "labels": {labels}}}, {reply}]}}}}"#
            )
        };
        for (labels, reply, says) in [
            ("null", "{}", "`labels` is null, not an object"),
            ("7", "{}", "`labels` is a number, not an object"),
            (r#""quality""#, "{}", "`labels` is a string, not an object"),
            (r#"["humor"]"#, "{}", "`labels` is an array, not an object"),
            (r#"{"quality": 3}"#, "{}", "label `quality` is a number, not an object"),
            ("{}", "5", "a tree or reply is a number, not an object"),
            ("{}", "null", "a tree or reply is null, not an object"),
            ("{}", r#""my prompt""#, "a tree or reply is a string, not an object"),
        ] {
            let e = convert_tree(&tree(labels, reply), &mut Vec::new()).unwrap_err();
            assert!(e.contains(says), "{labels} {reply}: {e}");
        }
        // `"quality" in "foo"` and `"quality" in ["foo"]` are false in Python: no label.
        for labels in [r#""foo""#, r#"["foo"]"#] {
            let mut out = Vec::new();
            assert_eq!(convert_tree(&tree(labels, r#""no keys here""#), &mut out).unwrap(), 1, "{labels}");
            assert!(String::from_utf8(out).unwrap().contains(r#""from": "Assistant", "label": """#), "{labels}");
        }
    }
}
