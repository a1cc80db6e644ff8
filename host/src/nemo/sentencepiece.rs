//! A SentencePiece `tokenizer.model` (BPE with byte fallback, as Llama 2, Mistral and
//! Nemotron-4 ship it inside `.nemo` files) turned into the equivalent Hugging Face
//! `tokenizer.json`, the file transformers' `LlamaConverter` writes for it.
//!
//! The model file is a protobuf `ModelProto`; only the fields the conversion needs are
//! read: every piece (text, score, type), the trainer's model type and byte fallback,
//! and the normalizer's `add_dummy_prefix`.

use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::collections::HashMap;

/// `SentencePiece.Type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(value: u64) -> Result<Self> {
        Ok(match value {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            other => bail!("unknown piece type {other}"),
        })
    }
}

struct Piece {
    text: String,
    kind: PieceType,
}

/// What the conversion reads from a `ModelProto`.
struct SentencePieceModel {
    pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    model_type: u64,
    byte_fallback: bool,
    add_dummy_prefix: bool,
}

/// A protobuf wire-format reader over one message's bytes.
struct Wire<'a> {
    bytes: &'a [u8],
    at: usize,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A float or fixed int (a piece's score: pieces are stored best first, so the
    /// order is all the conversion needs).
    Fixed32,
    Fixed64,
}

impl<'a> Wire<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Wire { bytes, at: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else { bail!("truncated varint") };
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("varint longer than 64 bits")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else { bail!("a field runs past the end of the message") };
        let bytes = &self.bytes[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    /// The next (field number, value), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?)?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            other => bail!("unsupported protobuf wire type {other}"),
        };
        Ok(Some((key >> 3, field)))
    }
}

impl SentencePieceModel {
    fn parse(bytes: &[u8]) -> Result<Self> {
        let mut model =
            SentencePieceModel { pieces: Vec::new(), model_type: 1, byte_fallback: false, add_dummy_prefix: true };
        let mut wire = Wire::new(bytes);
        while let Some((number, field)) = wire.next()? {
            match (number, field) {
                (1, Field::Bytes(piece)) => model.pieces.push(parse_piece(piece)?),
                (2, Field::Bytes(trainer)) => {
                    let mut trainer = Wire::new(trainer);
                    while let Some((number, field)) = trainer.next()? {
                        match (number, field) {
                            (3, Field::Varint(v)) => model.model_type = v,
                            (35, Field::Varint(v)) => model.byte_fallback = v != 0,
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(normalizer)) => {
                    let mut normalizer = Wire::new(normalizer);
                    while let Some((number, field)) = normalizer.next()? {
                        if let (3, Field::Varint(v)) = (number, field) {
                            model.add_dummy_prefix = v != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            bail!("no pieces: not a SentencePiece model");
        }
        Ok(model)
    }
}

fn parse_piece(bytes: &[u8]) -> Result<Piece> {
    let (mut text, mut kind) = (None, PieceType::Normal);
    let mut wire = Wire::new(bytes);
    while let Some((number, field)) = wire.next()? {
        match (number, field) {
            (1, Field::Bytes(b)) => text = Some(String::from_utf8(b.to_vec())?),
            (3, Field::Varint(v)) => kind = PieceType::from_proto(v)?,
            _ => {}
        }
    }
    let Some(text) = text else { bail!("a piece without text") };
    Ok(Piece { text, kind })
}

/// The `tokenizer.json` equivalent to the SentencePiece model in `bytes`.
pub fn to_tokenizer_json(bytes: &[u8]) -> Result<Value> {
    let model = SentencePieceModel::parse(bytes)?;
    if model.model_type != 2 {
        bail!(
            "the SentencePiece model is of type {} (1 unigram, 2 BPE, 3 word, 4 char); steerlm converts BPE models (Llama, Mistral, Nemotron): pass --tokenizer with a tokenizer.json",
            model.model_type
        );
    }
    let vocab: HashMap<&str, usize> = model.pieces.iter().enumerate().map(|(id, p)| (p.text.as_str(), id)).collect();
    if vocab.len() != model.pieces.len() {
        bail!("the SentencePiece model lists a piece twice");
    }
    // SentencePiece's BPE merges into the best-scored piece first, and pieces are
    // stored best first: a piece's merges rank by its id, then by where it splits.
    let mut merges = Vec::new();
    for piece in &model.pieces {
        if !matches!(piece.kind, PieceType::Normal | PieceType::UserDefined) {
            continue;
        }
        for (split, _) in piece.text.char_indices().skip(1) {
            let (left, right) = piece.text.split_at(split);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push(json!([left, right]));
            }
        }
    }
    let special = |kind: PieceType| matches!(kind, PieceType::Control | PieceType::Unknown);
    let added_tokens: Vec<Value> = model
        .pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| special(p.kind) || p.kind == PieceType::UserDefined)
        .map(|(id, p)| {
            json!({"id": id, "content": p.text, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": !special(p.kind), "special": special(p.kind)})
        })
        .collect();
    let vocab_json: serde_json::Map<String, Value> =
        model.pieces.iter().enumerate().map(|(id, p)| (p.text.clone(), json!(id))).collect();
    let bos = model.pieces.iter().enumerate().find(|(_, p)| p.kind == PieceType::Control && p.text == "<s>");
    let post_processor = match bos {
        Some((id, _)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [id], "tokens": ["<s>"]}}
        }),
        None => Value::Null,
    };
    let mut decoders = vec![json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "})];
    if model.byte_fallback {
        decoders.push(json!({"type": "ByteFallback"}));
    }
    decoders.push(json!({"type": "Fuse"}));
    if model.add_dummy_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk = model.pieces.iter().find(|p| p.kind == PieceType::Unknown).map(|p| p.text.clone());
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
                          "prepend_scheme": if model.add_dummy_prefix { "first" } else { "never" }, "split": false},
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": if model.byte_fallback { Value::Null } else { json!(unk) },
                  "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                  "byte_fallback": model.byte_fallback, "ignore_merges": false,
                  "vocab": vocab_json, "merges": merges}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    /// Mistral's `tokenizer.model` becomes the `tokenizer.json` transformers made from it:
    /// the same vocabulary and merges in the same order, and the same ids on every text.
    #[test]
    fn converts_like_transformers_llama_converter() {
        let bytes = std::fs::read(fixtures().join("nemo/sentencepiece/tokenizer.model")).unwrap();
        let ours = to_tokenizer_json(&bytes).unwrap();
        let reference_path = fixtures().join("models/llama9/tokenizer.json");
        let reference: Value = serde_json::from_str(&std::fs::read_to_string(&reference_path).unwrap()).unwrap();
        assert_eq!(ours["model"]["vocab"], reference["model"]["vocab"]);
        assert_eq!(ours["model"]["merges"], reference["model"]["merges"]);
        for field in ["added_tokens", "pre_tokenizer", "decoder", "post_processor", "normalizer"] {
            assert_eq!(ours[field], reference[field], "{field}");
        }
        let ours = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&ours).unwrap()).unwrap();
        let reference = tokenizers::Tokenizer::from_file(&reference_path).unwrap();
        let goldens: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("models/llama9/goldens.json")).unwrap())
                .unwrap();
        let mut texts: Vec<String> =
            goldens["cases"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_owned()).collect();
        texts.extend([" leading space", "tabs\tand\nnewlines", "émoji 🦀 and 中文", ""].map(String::from));
        for text in &texts {
            for special in [false, true] {
                let a = ours.encode(text.as_str(), special).unwrap();
                let b = reference.encode(text.as_str(), special).unwrap();
                assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
            }
        }
    }

    #[test]
    fn non_models_and_unigram_models_are_refused() {
        assert!(to_tokenizer_json(b"").unwrap_err().to_string().contains("not a SentencePiece model"));
        assert!(to_tokenizer_json(&[0x0a, 0x05, 0x0a]).is_err(), "a truncated piece");
        // One piece, trainer_spec.model_type = 1 (unigram).
        let unigram = [0x0a, 0x03, 0x0a, 0x01, b'a', 0x12, 0x02, 0x18, 0x01];
        assert!(to_tokenizer_json(&unigram).unwrap_err().to_string().contains("steerlm converts BPE models"));
    }
}
