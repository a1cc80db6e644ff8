//! `steerlm stats`: a look at a SteerLM data file before training on it.
//!
//! Reads SFT records (`{"conversations": [...]}`, annotated or not) or regression
//! lines (`{"text", "label": [9 floats]}`), and reports records, turns, labeled turns,
//! a histogram of each attribute's values (0..4 and missing; values are clamped and
//! rounded half to even, as label strings are written), and the mean text length in
//! characters (Python's `len`) and, with `--model`, in the model's tokens. Stats read
//! the data, they convert nothing, so they run natively rather than in the sandbox.

mod glyph_text;

pub mod plot;

use crate::input::InputPath;
use anyhow::{Context as _, Result, anyhow};
use indicatif::ProgressBar;
use serde::Serialize;
use steerlm_core::ALL_ATTRIBUTES;
use steerlm_core::labels::{MISSING, label_vector};
use steerlm_core::pyfloat::python_round;
use steerlm_core::pyvalue::PyValue;

/// What kind of lines the file holds (decided by its first record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// SFT records, with or without labels (annotated files are SFT records).
    Sft,
    /// `{"text", "label"}` regression lines.
    Regression,
}

/// Bucket labels of a histogram: the five values, then missing.
pub const BUCKETS: [&str; 6] = ["0", "1", "2", "3", "4", "missing"];

#[derive(Debug, Serialize)]
pub struct Stats {
    pub file: String,
    pub kind: Option<Kind>,
    pub records: u64,
    /// Conversation turns (for regression lines: the turns inside each text).
    pub turns: u64,
    /// Turns with a truthy label, as to-regression counts them (SFT), or lines (regression).
    pub labeled_turns: u64,
    /// Per attribute, in SteerLM order: counts of 0, 1, 2, 3, 4 and missing over the
    /// labeled turns.
    pub histograms: Vec<(String, [u64; 6])>,
    /// Mean characters per text: per turn for SFT, per line's text for regression.
    pub mean_chars: f64,
    /// Mean tokens per text, with `--model`.
    pub mean_tokens: Option<f64>,
    #[serde(skip)]
    texts: u64,
    #[serde(skip)]
    chars: u64,
    #[serde(skip)]
    tokens: u64,
}

impl Stats {
    fn new(file: String) -> Self {
        Stats {
            file,
            kind: None,
            records: 0,
            turns: 0,
            labeled_turns: 0,
            histograms: ALL_ATTRIBUTES.iter().map(|a| (a.to_string(), [0; 6])).collect(),
            mean_chars: 0.0,
            mean_tokens: None,
            texts: 0,
            chars: 0,
            tokens: 0,
        }
    }

    fn count_label(&mut self, vector: &[f64; 9]) {
        self.labeled_turns += 1;
        for ((_, histogram), &value) in self.histograms.iter_mut().zip(vector) {
            histogram[bucket(value)] += 1;
        }
    }
}

/// 0..=4 for a value (clamped, rounded half to even), 5 for missing.
fn bucket(value: f64) -> usize {
    if value == MISSING {
        return 5;
    }
    python_round(value.clamp(0.0, 4.0)).map_or(5, |v| v as usize)
}

/// Reads the whole input once; `max_line_bytes` bounds one line, `progress` counts bytes.
pub fn compute(
    input: &InputPath,
    tokenizer: Option<&tokenizers::Tokenizer>,
    max_line_bytes: usize,
    progress: &ProgressBar,
) -> Result<Stats> {
    let mut stats = Stats::new(input.display());
    let mut texts: Vec<String> = Vec::new();
    let mut held_bytes = 0usize;
    for line in crate::input::json_lines(input, 4 << 20, max_line_bytes, progress)? {
        let line = line?;
        let record = &line.value;
        let fail = |why: String| line.error(why);
        let kind = if record.get("conversations").is_some() {
            Kind::Sft
        } else if record.get("text").is_some() && record.get("label").is_some() {
            Kind::Regression
        } else {
            return Err(fail(
                "neither an SFT record (\"conversations\") nor a regression line (\"text\", \"label\")".into(),
            ));
        };
        match stats.kind {
            None => stats.kind = Some(kind),
            Some(first) if first != kind => {
                return Err(fail(format!("a {kind:?} line in a file of {first:?} lines").to_lowercase()));
            }
            Some(_) => {}
        }
        stats.records += 1;
        let before = texts.len();
        match kind {
            Kind::Sft => sft_record(&mut stats, record, &mut texts).map_err(fail)?,
            Kind::Regression => regression_line(&mut stats, record, &mut texts).map_err(fail)?,
        }
        held_bytes += texts[before..].iter().map(String::len).sum::<usize>();
        // Tokenized in batches (the tokenizer runs them in parallel) of at most 4096 texts
        // or 64 MiB; without a tokenizer nothing is kept.
        if tokenizer.is_none() || texts.len() >= 4096 || held_bytes >= 64 << 20 {
            count_texts(&mut stats, &mut texts, tokenizer)?;
            held_bytes = 0;
        }
    }
    count_texts(&mut stats, &mut texts, tokenizer)?;
    progress.finish_and_clear();
    if stats.texts > 0 {
        stats.mean_chars = stats.chars as f64 / stats.texts as f64;
        if tokenizer.is_some() {
            stats.mean_tokens = Some(stats.tokens as f64 / stats.texts as f64);
        }
    }
    Ok(stats)
}

fn sft_record(stats: &mut Stats, record: &PyValue, texts: &mut Vec<String>) -> Result<(), String> {
    let turns = record.get("conversations").and_then(PyValue::as_array).ok_or("\"conversations\" is not a list")?;
    for (i, turn) in turns.iter().enumerate() {
        stats.turns += 1;
        if turn.as_object().is_none() {
            return Err(format!("turn {}: a turn must be a JSON object, got {}", i + 1, turn.describe()));
        }
        let value =
            turn.get("value").and_then(PyValue::as_str).ok_or(format!("turn {}: no string \"value\"", i + 1))?;
        texts.push(value.to_owned());
        // Labeled means what to-regression converts: a truthy label, which must be a string.
        match turn.get("label") {
            Some(label) if !label.is_truthy() => {}
            None => {}
            Some(PyValue::Str(label)) => {
                let vector = label_vector(label).map_err(|e| format!("turn {}: {e}", i + 1))?;
                stats.count_label(&vector);
            }
            Some(other) => return Err(format!("turn {}: label is {}, not a string", i + 1, other.describe())),
        }
    }
    Ok(())
}

fn regression_line(stats: &mut Stats, record: &PyValue, texts: &mut Vec<String>) -> Result<(), String> {
    let text = record.get("text").and_then(PyValue::as_str).ok_or("\"text\" is not a string")?;
    let label = record
        .get("label")
        .and_then(PyValue::as_array)
        .filter(|l| l.len() == 9)
        .ok_or("\"label\" is not a list of 9 numbers")?;
    let mut vector = [MISSING; 9];
    for (slot, value) in vector.iter_mut().zip(label) {
        *slot = value.as_f64().ok_or("\"label\" is not a list of 9 numbers")?;
    }
    // Each turn of the rendered conversation starts with <extra_id_1>.
    stats.turns += text.matches("<extra_id_1>").count() as u64;
    stats.count_label(&vector);
    texts.push(text.to_owned());
    Ok(())
}

/// Adds a chunk's texts to the character (and token) totals.
fn count_texts(stats: &mut Stats, texts: &mut Vec<String>, tokenizer: Option<&tokenizers::Tokenizer>) -> Result<()> {
    stats.texts += texts.len() as u64;
    stats.chars += texts.iter().map(|t| t.chars().count() as u64).sum::<u64>();
    if let Some(tokenizer) = tokenizer {
        let encodings = tokenizer
            .encode_batch(std::mem::take(texts), false)
            .map_err(|e| anyhow!("tokenizer: {e}"))
            .context("counting tokens")?;
        stats.tokens += encodings.iter().map(|e| e.get_ids().len() as u64).sum::<u64>();
    }
    texts.clear();
    Ok(())
}

/// The terminal report.
pub fn table(stats: &Stats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let kind = match stats.kind {
        Some(Kind::Sft) => "SFT records",
        Some(Kind::Regression) => "regression lines",
        None => "empty",
    };
    let _ = writeln!(out, "{}  ({kind})", stats.file);
    let _ = writeln!(out, "  records        {:>10}", stats.records);
    let _ = writeln!(out, "  turns          {:>10}", stats.turns);
    let _ = writeln!(out, "  labeled turns  {:>10}", stats.labeled_turns);
    let per = if stats.kind == Some(Kind::Regression) { "text" } else { "turn" };
    let _ = write!(out, "  mean length    {:>10.1} characters per {per}", stats.mean_chars);
    if let Some(tokens) = stats.mean_tokens {
        let _ = write!(out, ", {tokens:.1} tokens");
    }
    let _ = writeln!(out, "\n");
    let _ = writeln!(out, "  {:<13}{}", "attribute", BUCKETS.map(|b| format!("{b:>9}")).concat());
    for (attribute, histogram) in &stats.histograms {
        let _ = writeln!(out, "  {attribute:<13}{}", histogram.map(|c| format!("{c:>9}")).concat());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_bucketed_like_label_strings() {
        assert_eq!([0.0, 0.5, 1.5, 2.5, 3.49, 4.0, 9.0, -1.0].map(bucket), [0, 0, 2, 2, 3, 4, 4, 0]);
        assert_eq!(bucket(MISSING), 5);
    }
}
