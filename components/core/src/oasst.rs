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
use crate::pyvalue::PyValue;

/// One converted message, shared by every thread through it.
struct Message<'a> {
    text: &'a PyValue,
    is_user: bool,
    label: Option<String>,
}

/// `encode_labels`: `name:round(value * 4)` for the Open Assistant attributes present.
fn encode_labels(labels: &PyValue) -> Result<String, String> {
    let mut items = Vec::new();
    for key in OPEN_ASSISTANT_ATTRIBUTES {
        let Some(entry) = labels.get(key) else {
            continue;
        };
        let value = entry.get("value").ok_or_else(|| format!("label `{key}` has no `value`"))?;
        let rounded = match value {
            // Python's int and bool arithmetic is exact, however large the int.
            PyValue::Int(n) => n.times(4).as_str().to_owned(),
            PyValue::Bool(b) => (4 * u8::from(*b)).to_string(),
            PyValue::Float(x) => python_round(x * 4.0)
                .ok_or_else(|| format!("label `{key}` value {x} times 4 is beyond the 64-bit integer range"))?
                .to_string(),
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
    let message = if let Some(prompt) = node.get("prompt") {
        prompt
    } else if node.get("text").is_some() && node.get("role").is_some() {
        node
    } else {
        return Ok(vec![vec![]]);
    };
    let is_user = match message.get("role").ok_or("message has no `role`")? {
        PyValue::Str(r) if r == "prompter" => true,
        PyValue::Str(r) if r == "assistant" => false,
        other => return Err(format!("unknown role {}", dumps(other))),
    };
    let text = message.get("text").ok_or("message has no `text`")?;
    let label = message.get("labels").map(encode_labels).transpose()?;
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
}
