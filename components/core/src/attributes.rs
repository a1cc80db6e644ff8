//! The fixed vocabulary of SteerLM: attribute names and the default system prompt.

/// Open Assistant's attributes, in label order.
pub const OPEN_ASSISTANT_ATTRIBUTES: [&str; 4] = ["quality", "toxicity", "humor", "creativity"];

/// HelpSteer's attributes, in label order.
pub const HELPSTEER_ATTRIBUTES: [&str; 5] = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"];

/// All nine SteerLM attributes, in the order of every label vector.
pub const ALL_ATTRIBUTES: [&str; 9] = [
    "quality",
    "toxicity",
    "humor",
    "creativity",
    "helpfulness",
    "correctness",
    "coherence",
    "complexity",
    "verbosity",
];

/// The system prompt every reference script writes (and formats with).
pub const SYSTEM_PROMPT: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// Position of an attribute in [`ALL_ATTRIBUTES`].
pub fn attribute_index(name: &str) -> Option<usize> {
    ALL_ATTRIBUTES.iter().position(|a| *a == name)
}
