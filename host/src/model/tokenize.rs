//! Text to token ids with the checkpoint's own `tokenizer.json`.

use anyhow::{Context, Result, anyhow};
use std::path::Path;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    max_tokens: usize,
}

/// A tokenized text, cut to the model's context.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// The text had more tokens than the context; `ids` holds the first ones.
    pub exceeded: bool,
}

impl TextTokenizer {
    /// `add_bos`: prepend the config's BOS id (the reference server adds none).
    pub fn load(dir: &Path, bos: Option<u32>, add_bos: bool, max_tokens: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
        let bos = match (add_bos, bos) {
            (true, None) => anyhow::bail!("--add-bos: config.json names no bos_token_id"),
            (true, Some(id)) => Some(id),
            (false, _) => None,
        };
        Ok(TextTokenizer { inner, bos, max_tokens })
    }

    /// The text's ids (after the BOS, when added), however many.
    pub fn encode_uncut(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.encode_rendered(text)?;
        Ok(self.bos.into_iter().chain(ids).collect())
    }

    /// The ids of a rendered chat template: special tokens only where the template
    /// wrote them (no BOS added), as transformers' `apply_chat_template` tokenizes.
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        let encoding =
            self.inner.encode(text, false).map_err(|e| anyhow!("tokenizer: {e}")).context("encoding a text")?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text's ids cut to the context (the first ones kept).
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        Ok(self.cut(self.encode_uncut(text)?))
    }

    /// `ids` cut to the context (the first ones kept).
    pub fn cut(&self, mut ids: Vec<u32>) -> Tokens {
        let exceeded = ids.len() > self.max_tokens;
        ids.truncate(self.max_tokens);
        Tokens { ids, exceeded }
    }
}
