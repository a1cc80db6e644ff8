//! The `labels` interface as a WASI component, over `steerlm_core::labels`.

wit_bindgen::generate!({ world: "labels-component", path: "../../wit" });

use exports::steerlm::pipeline::labels::{Guest, LabelPair};
use steerlm_core::{ALL_ATTRIBUTES, labels};

struct Component;

impl Guest for Component {
    fn attribute_names() -> Vec<String> {
        ALL_ATTRIBUTES.iter().map(|a| a.to_string()).collect()
    }

    fn parse(label: String) -> Result<Vec<LabelPair>, String> {
        let pairs = labels::parse_label(&label)?;
        Ok(pairs.into_iter().map(|(key, value)| LabelPair { key: key.into(), value: value.into() }).collect())
    }

    fn to_vector(label: String) -> Result<Vec<f64>, String> {
        labels::label_vector(&label).map(Vec::from)
    }

    fn encode_scores(scores: Vec<f64>, names: Option<Vec<String>>) -> Result<String, String> {
        let names: Option<Vec<&str>> = names.as_ref().map(|n| n.iter().map(String::as_str).collect());
        labels::encode_scores(&scores, names.as_deref())
    }
}

#[cfg(target_family = "wasm")]
export!(Component);
