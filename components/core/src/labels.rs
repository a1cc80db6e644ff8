//! Label strings: `helpfulness:3,correctness:4`.
//!
//! Parsed as the reference's `{p.split(":")[0]: p.split(":")[1] for p in s.split(",")}`:
//! the key is the text before the first `:`, the value the text up to the second; a
//! later duplicate key wins (keeping the first one's position); keys are not trimmed.

use crate::attributes::{ALL_ATTRIBUTES, attribute_index};
use crate::pyfloat::{parse_python_float, python_round};

/// The value the regression format uses for an attribute the label does not give.
pub const MISSING: f64 = -100.0;

/// Splits a label string into `(key, value)` pairs, de-duplicated like a Python dict.
pub fn parse_label(label: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for piece in label.split(',') {
        let mut parts = piece.split(':');
        let key = parts.next().unwrap_or_default();
        let Some(value) = parts.next() else {
            return Err(if piece.is_empty() {
                format!("label {label:?} has an empty attribute (a stray ',')")
            } else {
                format!("label {label:?}: {piece:?} has no ':' between attribute and value")
            });
        };
        match pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value,
            None => pairs.push((key, value)),
        }
    }
    Ok(pairs)
}

/// The 9-float label vector in [`ALL_ATTRIBUTES`] order, [`MISSING`] where absent.
/// Unknown keys are ignored (and their values never parsed), as in the reference.
pub fn label_vector(label: &str) -> Result<[f64; 9], String> {
    let mut vector = [MISSING; 9];
    for (key, value) in parse_label(label)? {
        let Some(index) = attribute_index(key) else {
            continue;
        };
        let Some(number) = parse_python_float(value) else {
            return Err(format!("label {label:?}: value {value:?} of {key} is not a number"));
        };
        if !number.is_finite() {
            return Err(format!("label {label:?}: value {value:?} of {key} is not finite"));
        }
        vector[index] = number;
    }
    Ok(vector)
}

/// Turns raw model scores into a label string: each clamped to [0, 4] and rounded half
/// to even, named by `names` (the nine SteerLM attributes when `None`).
pub fn encode_scores(scores: &[f64], names: Option<&[&str]>) -> Result<String, String> {
    let names = names.unwrap_or(&ALL_ATTRIBUTES);
    if scores.len() != names.len() {
        return Err(format!("{} scores for {} attributes", scores.len(), names.len()));
    }
    let mut label = String::new();
    for (i, (name, score)) in names.iter().zip(scores).enumerate() {
        if !score.is_finite() {
            return Err(format!("score {score} for {name} is not finite"));
        }
        let rounded = python_round(score.clamp(0.0, 4.0)).expect("a clamped score rounds");
        if i > 0 {
            label.push(',');
        }
        label.push_str(name);
        label.push(':');
        label.push_str(&rounded.to_string());
    }
    Ok(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_reference() {
        assert_eq!(parse_label("a:1:9,b: 2,a:3").unwrap(), vec![("a", "3"), ("b", " 2")]);
        assert!(parse_label("helpfulness").unwrap_err().contains("no ':'"));
        assert!(parse_label("helpfulness:3,").unwrap_err().contains("stray ','"));
        let v = label_vector("helpfulness:3:9, correctness:4,verbosity: 2,humor:.5").unwrap();
        assert_eq!(v, [MISSING, MISSING, 0.5, MISSING, 3.0, MISSING, MISSING, MISSING, 2.0]);
        assert!(label_vector("helpfulness:high").unwrap_err().contains("not a number"));
        assert!(label_vector("helpfulness:nan").unwrap_err().contains("not finite"));
        assert!(label_vector("unknown:high").is_ok());
    }

    #[test]
    fn encodes_clamped_half_even() {
        let s = encode_scores(&[2.5, 3.5, -1.0, 9.0, 0.49, 1.5, 0.5, 3.49, 4.0], None).unwrap();
        assert_eq!(
            s,
            "quality:2,toxicity:4,humor:0,creativity:4,helpfulness:0,correctness:2,coherence:0,complexity:3,verbosity:4"
        );
        assert!(encode_scores(&[f64::NAN; 9], None).is_err());
        assert!(encode_scores(&[1.0; 5], None).is_err());
        assert_eq!(encode_scores(&[1.2], Some(&["helpfulness"])).unwrap(), "helpfulness:1");
    }
}
