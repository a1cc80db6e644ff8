//! The attribute-conditioned SFT record, read without copying its strings.
//!
//! `{"conversations": [{"value", "from", "label"}, ...], "mask", "system", "type", ...}`;
//! unknown keys are ignored, `label` and `system` may be missing.

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

#[derive(Deserialize, Debug)]
pub struct SftRecord<'a> {
    #[serde(borrow)]
    pub conversations: Vec<Turn<'a>>,
    /// Turns whose `from` equals this are rendered as the user.
    #[serde(borrow)]
    pub mask: Cow<'a, str>,
    /// Kept raw: the reference ignores it, so any JSON is accepted unless a caller
    /// asks to format with it.
    #[serde(borrow, default)]
    pub system: Option<&'a RawValue>,
}

#[derive(Deserialize, Debug)]
pub struct Turn<'a> {
    /// Kept as the raw JSON literal: conversions re-escape it without decoding it.
    #[serde(borrow)]
    pub value: &'a RawValue,
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    #[serde(borrow, default)]
    pub label: Label<'a>,
}

/// A turn's `label` field, classified the way the reference scripts test it.
#[derive(Debug, Default, PartialEq)]
pub enum Label<'a> {
    /// No `label` key.
    #[default]
    Absent,
    /// `"label": null`.
    Null,
    /// A string (possibly empty).
    Text(Cow<'a, str>),
    /// A falsy non-string: `false`, `0`, `0.0`, `[]`, `{}`.
    Falsy,
    /// A truthy non-string; the text names its type.
    Other(&'static str),
}

impl Label<'_> {
    /// `"label" in turn and turn["label"] is not None`: annotation scores these turns.
    pub fn is_present(&self) -> bool {
        !matches!(self, Label::Absent | Label::Null)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Label<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LabelVisitor)
    }
}

struct LabelVisitor;

impl<'de> Visitor<'de> for LabelVisitor {
    type Value = Label<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a label string or null")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Label::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Label::Null)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Label::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Label::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Label::Text(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(if v { Label::Other("a boolean") } else { Label::Falsy })
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(if v == 0 { Label::Falsy } else { Label::Other("a number") })
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(if v == 0 { Label::Falsy } else { Label::Other("a number") })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(if v == 0.0 { Label::Falsy } else { Label::Other("a number") })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut empty = true;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            empty = false;
        }
        Ok(if empty { Label::Falsy } else { Label::Other("an array") })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut empty = true;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
            empty = false;
        }
        Ok(if empty { Label::Falsy } else { Label::Other("an object") })
    }
}

impl Turn<'_> {
    /// The turn's text, decoded.
    pub fn text(&self) -> Result<String, String> {
        serde_json::from_str(self.value.get())
            .map_err(|_| format!("`value` must be a string, got {}", self.value.get()))
    }
}

impl<'a> SftRecord<'a> {
    /// Parses one JSONL line.
    pub fn parse(line: &'a str) -> Result<Self, String> {
        serde_json::from_str(line).map_err(|e| crate::chunk::json_error(&e))
    }

    /// The record's own `system` string, if it has one.
    pub fn own_system(&self) -> Result<Option<Cow<'a, str>>, String> {
        match self.system {
            None => Ok(None),
            Some(raw) => match serde_json::from_str::<Option<Cow<'a, str>>>(raw.get()) {
                Ok(system) => Ok(system),
                Err(_) => Err(format!("`system` must be a string, got {}", raw.get())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_classified_like_python_truthiness() {
        let line = r#"{"mask": "User", "conversations": [
            {"value": "a", "from": "User"},
            {"value": "b", "from": "User", "label": null},
            {"value": "c", "from": "User", "label": ""},
            {"value": "d", "from": "User", "label": 0},
            {"value": "e", "from": "User", "label": []},
            {"value": "f", "from": "User", "label": {"k": 1}},
            {"value": "g", "from": "User", "label": "q:1"}]}"#;
        let r = SftRecord::parse(line).unwrap();
        let labels: Vec<_> = r.conversations.iter().map(|t| &t.label).collect();
        assert_eq!(labels[0], &Label::Absent);
        assert_eq!(labels[1], &Label::Null);
        assert_eq!(labels[2], &Label::Text("".into()));
        assert_eq!(labels[3], &Label::Falsy);
        assert_eq!(labels[4], &Label::Falsy);
        assert_eq!(labels[5], &Label::Other("an object"));
        assert_eq!(labels[6], &Label::Text("q:1".into()));
    }

    #[test]
    fn missing_mask_is_named() {
        let err = SftRecord::parse(r#"{"conversations": []}"#).unwrap_err();
        assert!(err.contains("missing field `mask`"), "{err}");
    }
}
