//! `label parse|encode`: the labels component from the command line.

use super::Context;
use anyhow::{Result, anyhow};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum LabelCommand {
    /// Print a label string's pairs and its 9-float vector (-100.0 = missing) as JSON.
    Parse {
        /// e.g. `helpfulness:3,correctness:4`
        label: String,
    },
    /// Turn raw scores into a label string (clamped to [0, 4], rounded half to even).
    Encode {
        /// One score per attribute, in order (9 by default).
        #[arg(required = true, allow_negative_numbers = true)]
        scores: Vec<f64>,
        /// Attribute names, comma-separated, if not the nine SteerLM attributes.
        #[arg(long, value_delimiter = ',')]
        names: Option<Vec<String>>,
    },
}

pub fn run(context: &Context, command: &LabelCommand) -> Result<()> {
    let mut labels = context.sandbox.sandbox()?.labels()?;
    match command {
        LabelCommand::Parse { label } => {
            let pairs =
                labels.call(|b, s| b.steerlm_pipeline_labels().call_parse(s, label))?.map_err(|e| anyhow!(e))?;
            let vector =
                labels.call(|b, s| b.steerlm_pipeline_labels().call_to_vector(s, label))?.map_err(|e| anyhow!(e))?;
            let names = labels.call(|b, s| b.steerlm_pipeline_labels().call_attribute_names(s))?;
            let pairs: Vec<_> = pairs.iter().map(|p| serde_json::json!([p.key, p.value])).collect();
            let json = serde_json::json!({ "pairs": pairs, "attributes": names, "vector": vector });
            crate::output::print(&format!("{json}\n"))?;
        }
        LabelCommand::Encode { scores, names } => {
            let label = labels
                .call(|b, s| b.steerlm_pipeline_labels().call_encode_scores(s, scores, names.as_deref()))?
                .map_err(|e| anyhow!(e))?;
            crate::output::print(&format!("{label}\n"))?;
        }
    }
    Ok(())
}
