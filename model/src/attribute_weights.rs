//! One scalar reward from several attribute scores: the weighted sum RLHF trainers
//! want from a multi-attribute reward model (e.g. the Nemotron-4-340B-Reward card's
//! `0,0,0,0,0.3,0.74,0.46,0.47,-0.33` over the nine SteerLM attributes).

use anyhow::{Result, bail};

#[derive(Clone, Debug, PartialEq)]
pub struct AttributeWeights(Vec<f64>);

impl AttributeWeights {
    /// Comma-separated finite numbers, optionally in brackets: `0,0.3,-0.33` or `[0, 0.3]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
        let weights = inner
            .split(',')
            .map(|part| match part.trim().parse::<f64>() {
                Ok(weight) if weight.is_finite() => Ok(weight),
                _ => Err(format!("{:?} is not a finite number (in {text:?})", part.trim())),
            })
            .collect::<Result<Vec<f64>, String>>()?;
        Ok(AttributeWeights(weights))
    }

    /// There is one weight per attribute the model scores.
    pub fn check(&self, labels: &[String]) -> Result<()> {
        if self.0.len() != labels.len() {
            bail!(
                "--attribute-weights has {} weights; the model scores {} attributes ({})",
                self.0.len(),
                labels.len(),
                labels.join(", ")
            );
        }
        Ok(())
    }

    /// The weighted sum of one text's scores.
    pub fn combine(&self, scores: &[f32]) -> f32 {
        self.0.iter().zip(scores).map(|(&w, &s)| w * s as f64).sum::<f64>() as f32
    }
}

/// The one reward of a text: its weighted scores, or the only score of a one-head model;
/// `None` for several heads and no weights.
pub fn scalar_reward(weights: Option<&AttributeWeights>, scores: &[f32]) -> Option<f32> {
    match (weights, scores) {
        (Some(weights), _) => Some(weights.combine(scores)),
        (None, [only]) => Some(*only),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_check_and_combine() {
        let weights = AttributeWeights::parse("[0, 0.5,-2]").unwrap();
        assert_eq!(weights, AttributeWeights(vec![0.0, 0.5, -2.0]));
        assert!(AttributeWeights::parse("1,x").unwrap_err().contains("\"x\""));
        assert!(AttributeWeights::parse("1,inf").is_err());
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        weights.check(&labels).unwrap();
        assert!(weights.check(&labels[..2]).unwrap_err().to_string().contains("3 weights; the model scores 2"));
        assert_eq!(weights.combine(&[9.0, 2.0, 0.25]), 0.5);
        assert_eq!(scalar_reward(None, &[1.5]), Some(1.5));
        assert_eq!(scalar_reward(None, &[1.5, 2.0]), None);
        assert_eq!(scalar_reward(Some(&weights), &[9.0, 2.0, 0.25]), Some(0.5));
    }
}
