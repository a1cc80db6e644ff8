//! One scalar reward from several attribute scores: the weighted sum RLHF trainers
//! want from a multi-attribute reward model (e.g. the Nemotron-4-340B-Reward card's
//! `0,0,0,0,0.3,0.74,0.46,0.47,-0.33` over the nine SteerLM attributes).

use anyhow::{Result, bail};

#[derive(Clone, Debug, PartialEq)]
pub struct AttributeWeights(Vec<f64>);

impl AttributeWeights {
    /// Comma-separated finite numbers within f32's range (rewards are f32), optionally in
    /// brackets: `0,0.3,-0.33` or `[0, 0.3]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
        let weights = inner
            .split(',')
            .map(|part| match part.trim().parse::<f64>() {
                Ok(weight) if weight.abs() <= f32::MAX as f64 => Ok(weight),
                Ok(weight) if weight.is_finite() => {
                    Err(format!("{:?} is beyond the range of a 32-bit float reward (in {text:?})", part.trim()))
                }
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

    /// The weighted sum of one text's scores; an error where it is past f32's range
    /// (large weights times large scores), which JSON would write as `null`.
    pub fn combine(&self, scores: &[f32]) -> Result<f32> {
        let sum = self.0.iter().zip(scores).map(|(&w, &s)| w * s as f64).sum::<f64>();
        match sum as f32 {
            reward if reward.is_finite() => Ok(reward),
            _ => bail!(
                "the weighted reward {sum:e} is past the range of a 32-bit float: are --attribute-weights that large meant?"
            ),
        }
    }
}

/// The one reward of a text: its weighted scores, or the only score of a one-head model;
/// `None` for several heads and no weights.
pub fn scalar_reward(weights: Option<&AttributeWeights>, scores: &[f32]) -> Option<Result<f32>> {
    match (weights, scores) {
        (Some(weights), _) => Some(weights.combine(scores)),
        (None, [only]) => Some(Ok(*only)),
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
        assert!(AttributeWeights::parse("1e39,0").unwrap_err().contains("beyond the range of a 32-bit float"));
        let big = AttributeWeights::parse("3e38,3e38").unwrap();
        assert!(big.combine(&[1.0, 1.0]).unwrap_err().to_string().contains("past the range of a 32-bit float"));
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        weights.check(&labels).unwrap();
        assert!(weights.check(&labels[..2]).unwrap_err().to_string().contains("3 weights; the model scores 2"));
        assert_eq!(weights.combine(&[9.0, 2.0, 0.25]).unwrap(), 0.5);
        assert_eq!(scalar_reward(None, &[1.5]).unwrap().unwrap(), 1.5);
        assert!(scalar_reward(None, &[1.5, 2.0]).is_none());
        assert_eq!(scalar_reward(Some(&weights), &[9.0, 2.0, 0.25]).unwrap().unwrap(), 0.5);
    }
}
