//! Text to token ids with the checkpoint's own `tokenizer.json`.

use anyhow::{Context, Result, anyhow, bail};
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
        let mut inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
        // A `truncation` or `padding` block saved in tokenizer.json would cut texts (not
        // flagged as exceeded) or pad them with scored pad tokens; transformers switches
        // both off unless a call asks for them, and so do we.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
        let bos = match (add_bos, bos) {
            (true, None) => anyhow::bail!("--add-bos: config.json names no bos_token_id"),
            (true, Some(id)) => Some(id),
            (false, _) => None,
        };
        Ok(TextTokenizer { inner, bos, max_tokens })
    }

    /// The model's context in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The text's ids cut to the context (the first ones kept, the BOS first when added).
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        self.encode_end(text, Source::Text, self.max_tokens, End::First)
    }

    /// The first or last `keep` ids of `text` (`exceeded`: it has more).
    ///
    /// For the first ids, only as much of the text is tokenized as they take: a text of
    /// megabytes would cost gigabytes to tokenize whole, for a context of a few thousand
    /// tokens. A prefix is tokenized, 16 bytes per wanted token at first and four times
    /// longer each try, until it gives `SLACK_TOKENS` more ids than kept, or is the whole
    /// text. BPE pairs equal merges leftmost first, so cutting a text changes only the
    /// tokens next to the cut, at least `SLACK_TOKENS` after the kept ones (tested on every
    /// kind of tokenizer among the fixtures, runs of one character included).
    ///
    /// The last ids come from the whole text: a run of one character (spaces) pairs from
    /// its left end, so a suffix can pair all of it differently. That whole text may be at
    /// most [`TextTokenizer::last_end_limit`] bytes.
    pub fn encode_end(&self, text: &str, source: Source, keep: usize, end: End) -> Result<Tokens> {
        let bos = match source {
            Source::Text => self.bos,
            Source::Rendered => None,
        };
        let wanted = keep + SLACK_TOKENS;
        let mut budget = match end {
            End::First => wanted.saturating_mul(16),
            End::Last if text.len() > self.last_end_limit() => bail!(
                "keeping the last tokens of a text needs all of it tokenized, and this one is {:.1} MiB, more than \
                 {} MiB (send less, or keep its first tokens)",
                text.len() as f64 / (1 << 20) as f64,
                self.last_end_limit() >> 20
            ),
            End::Last => text.len(),
        };
        loop {
            let piece = &text[..text.floor_char_boundary(budget.min(text.len()))];
            let whole = piece.len() == text.len();
            let mut ids = self.encode_rendered(piece)?;
            ids.splice(0..0, bos);
            if whole || ids.len() >= wanted {
                let exceeded = ids.len() > keep;
                match end {
                    End::First => ids.truncate(keep),
                    End::Last => drop(ids.drain(..ids.len().saturating_sub(keep))),
                }
                return Ok(Tokens { ids, exceeded });
            }
            budget = budget.saturating_mul(4);
        }
    }

    /// The longest text whose last tokens [`TextTokenizer::encode_end`] keeps: 64 bytes per
    /// token of the context, at least 1 MiB.
    pub fn last_end_limit(&self) -> usize {
        self.max_tokens.saturating_mul(64).max(1 << 20)
    }

    /// The ids of a rendered chat template: special tokens only where the template
    /// wrote them (no BOS added), as transformers' `apply_chat_template` tokenizes.
    fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        let encoding =
            self.inner.encode(text, false).map_err(|e| anyhow!("tokenizer: {e}")).context("encoding a text")?;
        Ok(encoding.get_ids().to_vec())
    }
}

impl TextTokenizer {
    /// The token `id` names in tokenizer.json, for messages.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// Ids a cut text must give past the kept ones before they are trusted to be the whole
/// text's (see [`TextTokenizer::encode_end`]).
const SLACK_TOKENS: usize = 256;

/// What is tokenized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A text: the BOS first, when added.
    Text,
    /// A rendered chat template: special tokens only where it wrote them.
    Rendered,
}

/// Which end of a long text is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    First,
    Last,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three kinds of tokenizer among the fixtures: SentencePiece-style (Metaspace, byte
    /// fallback), GPT-2 byte-level, and Qwen2's NFC and regex split.
    const KINDS: [&str; 3] = ["gemma-5", "qwen9", "qwen2-causal-tied"];

    fn tokenizer(model: &str, add_bos: bool) -> TextTokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(model);
        TextTokenizer::load(&dir, Some(1), add_bos, 4096).unwrap()
    }

    /// Long texts of every shape a cut could disturb: prose, one endless word, a run of
    /// spaces, multi-byte characters, digits, and lines.
    fn long_texts() -> Vec<String> {
        let prose = "The reward model reads the whole conversation, then scores its last turn. ";
        vec![
            prose.repeat(900),
            "x".repeat(100_000),
            format!("{}end", " ".repeat(40_000)),
            "naïve café 你好世界 🙂 ".repeat(3_000),
            "1234567890".repeat(8_000),
            "line one\n\n  indented line\r\n".repeat(3_000),
        ]
    }

    /// Tokenizing only a piece of a long text keeps exactly the ids the whole text gives
    /// at that end, for either end, with and without a BOS, on every kind of tokenizer.
    #[test]
    fn a_long_text_cut_before_tokenizing_keeps_the_whole_texts_ids() {
        for model in KINDS {
            for add_bos in [false, true] {
                let tokenizer = tokenizer(model, add_bos);
                for text in long_texts() {
                    let mut whole = tokenizer.encode_rendered(&text).unwrap();
                    if add_bos {
                        whole.insert(0, 1);
                    }
                    for keep in [1, 64, 300] {
                        // Long enough that the first piece is not the whole text.
                        assert!(text.len() > (keep + SLACK_TOKENS) * 16, "{model}: a text too short to cut");
                        let what = format!("{model}, bos {add_bos}, keep {keep}, text {:?}...", &text[..12]);
                        let first = tokenizer.encode_end(&text, Source::Text, keep, End::First).unwrap();
                        assert_eq!(first.ids, whole[..keep], "{what}: first");
                        assert!(first.exceeded, "{what}");
                        let last = tokenizer.encode_end(&text, Source::Text, keep, End::Last).unwrap();
                        assert_eq!(last.ids, whole[whole.len() - keep..], "{what}: last");
                        assert!(last.exceeded, "{what}");
                    }
                }
            }
        }
    }

    /// Keeping the last tokens of a text over the limit is refused, saying why; its first
    /// tokens are kept from a piece of it.
    #[test]
    fn the_last_tokens_of_a_huge_text_are_refused_and_its_first_kept() {
        let tokenizer = tokenizer("qwen9", false);
        let huge = "word ".repeat(tokenizer.last_end_limit() / 5 + 1);
        let error = tokenizer.encode_end(&huge, Source::Text, 10, End::Last).unwrap_err();
        assert!(error.to_string().contains("needs all of it tokenized"), "{error}");
        let first = tokenizer.encode_end(&huge, Source::Text, 10, End::First).unwrap();
        assert_eq!(first.ids, tokenizer.encode_rendered(&huge[..100]).unwrap()[..10], "the first ids");
        assert!(first.exceeded);
    }

    /// The `truncation` and `padding` a tokenizer.json may carry are not applied, as
    /// transformers does not apply them to a plain call.
    #[test]
    fn saved_truncation_and_padding_are_ignored() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen9/tokenizer.json");
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(source).unwrap()).unwrap();
        json["truncation"] =
            serde_json::json!({"direction": "Left", "max_length": 2, "strategy": "LongestFirst", "stride": 0});
        json["padding"] = serde_json::json!({"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null,
            "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"});
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        let saved = TextTokenizer::load(dir.path(), None, false, 4096).unwrap();
        let text = "A text of more than two tokens, and fewer than sixty-four.";
        let ids = tokenizer("qwen9", false).encode(text).unwrap();
        assert!(ids.ids.len() > 2 && ids.ids.len() < 64, "{ids:?}");
        assert_eq!(saved.encode(text).unwrap(), ids);
    }

    /// A text within the limit is tokenized whole, BOS included at either end.
    #[test]
    fn a_short_text_keeps_all_its_ids() {
        for model in KINDS {
            let tokenizer = tokenizer(model, true);
            let text = "A short text.";
            let whole: Vec<u32> = std::iter::once(1).chain(tokenizer.encode_rendered(text).unwrap()).collect();
            for end in [End::First, End::Last] {
                let tokens = tokenizer.encode_end(text, Source::Text, whole.len(), end).unwrap();
                assert_eq!(tokens, Tokens { ids: whole.clone(), exceeded: false }, "{model} {end:?}");
                let rendered = tokenizer.encode_end(text, Source::Rendered, 100, end).unwrap();
                assert_eq!(rendered.ids, whole[1..], "{model} {end:?}: no BOS for a rendered template");
            }
            let cut = tokenizer.encode_end(text, Source::Text, 2, End::Last).unwrap();
            assert_eq!(cut, Tokens { ids: whole[whole.len() - 2..].to_vec(), exceeded: true }, "{model}");
        }
    }
}
