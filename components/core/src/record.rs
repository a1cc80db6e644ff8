//! The attribute-conditioned SFT record, read without copying its strings.
//!
//! `{"conversations": [{"value", "from", "label"}, ...], "mask", "system", "type", ...}`;
//! unknown keys are ignored, `label` and `system` may be missing. A record and each
//! turn must be JSON objects (serde's derived readers would also take arrays), and no
//! object in the line may repeat a key ([`crate::unique_keys`]).

use crate::unique_keys::{CowStr, KeySet, Unread, check_unread, set_once, skip_unknown};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

#[derive(Debug)]
pub struct SftRecord<'a> {
    pub conversations: Vec<Turn<'a>>,
    /// Turns whose `from` equals this are rendered as the user.
    pub mask: Cow<'a, str>,
    /// Kept raw: the reference ignores it, so any JSON is accepted unless a caller
    /// asks to format with it.
    pub system: Option<&'a RawValue>,
}

#[derive(Debug)]
pub struct Turn<'a> {
    /// Kept as the raw JSON literal: conversions re-escape it without decoding it.
    pub value: &'a RawValue,
    pub from: Cow<'a, str>,
    pub label: Label<'a>,
}

impl<'de: 'a, 'a> Deserialize<'de> for SftRecord<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor(PhantomData))
    }
}

struct RecordVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for RecordVisitor<'a> {
    type Value = SftRecord<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an SFT record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut conversations, mut mask, mut system) = (None, None, None::<Option<&'a RawValue>>);
        // Known fields are checked by their slot (no allocation on the hot path), the
        // rest by the set.
        let mut others = KeySet::default();
        while let Some(CowStr(key)) = map.next_key()? {
            match key.as_ref() {
                "conversations" => set_once(&mut map, &mut conversations, &key)?,
                "mask" => set_once(&mut map, &mut mask, &key)?,
                "system" => {
                    set_once(&mut map, &mut system, &key)?;
                    if let Some(Some(raw)) = system {
                        // Not read unless asked for, but held to the same rules as the rest.
                        check_unread(raw.get()).map_err(|e| de::Error::custom(format!("`system`: {e}")))?;
                    }
                }
                _ => skip_unknown(&mut map, &mut others, key)?,
            }
        }
        Ok(SftRecord {
            conversations: conversations.ok_or_else(|| de::Error::missing_field("conversations"))?,
            mask: mask.map(|CowStr(mask)| mask).ok_or_else(|| de::Error::missing_field("mask"))?,
            system: system.flatten(),
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Turn<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TurnVisitor(PhantomData))
    }
}

struct TurnVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TurnVisitor<'a> {
    type Value = Turn<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a turn (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut value, mut from, mut label) = (None, None, None);
        let mut others = KeySet::default();
        while let Some(CowStr(key)) = map.next_key()? {
            match key.as_ref() {
                "value" => set_once(&mut map, &mut value, &key)?,
                "from" => set_once(&mut map, &mut from, &key)?,
                "label" => set_once(&mut map, &mut label, &key)?,
                _ => skip_unknown(&mut map, &mut others, key)?,
            }
        }
        Ok(Turn {
            value: value.ok_or_else(|| de::Error::missing_field("value"))?,
            from: from.map(|CowStr(from)| from).ok_or_else(|| de::Error::missing_field("from"))?,
            label: label.unwrap_or_default(),
        })
    }
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
        while seq.next_element::<Unread>()?.is_some() {
            empty = false;
        }
        Ok(if empty { Label::Falsy } else { Label::Other("an array") })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut empty = true;
        let mut keys = KeySet::default();
        while let Some(CowStr(key)) = map.next_key()? {
            skip_unknown(&mut map, &mut keys, key)?;
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
        crate::chunk::refuse_bom(line)?;
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

    #[test]
    fn records_and_turns_are_objects_with_each_key_once() {
        let dup = crate::unique_keys::duplicate_key;
        let cases = [
            (
                r#"[[{"value": "v", "from": "User"}], "User"]"#.to_owned(),
                "expected an SFT record (a JSON object)".to_owned(),
            ),
            (
                r#"{"mask": "User", "conversations": [["v", "User"]]}"#.to_owned(),
                "expected a turn (a JSON object)".to_owned(),
            ),
            (r#"{"mask": "User", "mask": "User", "conversations": []}"#.to_owned(), dup("mask")),
            (r#"{"id": {"a": 1, "\u0061": 1}, "mask": "User", "conversations": []}"#.to_owned(), dup("a")),
            (r#"{"mask": "User", "system": {"s": 1, "s": 2}, "conversations": []}"#.to_owned(), dup("s")),
            (
                r#"{"mask": "User", "conversations": [{"value": "v", "from": "User", "x": [{"k": 1, "k": 2}]}]}"#
                    .to_owned(),
                dup("k"),
            ),
            (
                r#"{"mask": "User", "conversations": [{"value": "v", "from": "User", "label": {"k": 1, "k": 2}}]}"#
                    .to_owned(),
                dup("k"),
            ),
            (
                r#"{"mask": "User", "conversations": [{"value": "v", "from": "User", "from": "User"}]}"#.to_owned(),
                dup("from"),
            ),
            ("\u{feff}{\"mask\": \"User\", \"conversations\": []}".to_owned(), "byte order mark".to_owned()),
        ];
        for (line, reason) in &cases {
            let err = SftRecord::parse(line).unwrap_err();
            assert!(err.contains(reason.as_str()), "{line}: {err}");
        }
        // Pass-through numbers follow PyValue's rules: any integer, no infinite float.
        let big = format!(r#"{{"id": {}, "mask": "User", "conversations": []}}"#, "9".repeat(400));
        SftRecord::parse(&big).unwrap();
        let err = SftRecord::parse(r#"{"x": [1e400], "mask": "User", "conversations": []}"#).unwrap_err();
        assert!(err.contains("beyond the float range"), "{err}");
        // The same keys in different objects are fine.
        let ok =
            r#"{"mask": "User", "id": {"a": 1}, "conversations": [{"value": "v", "from": "User", "id": {"a": 1}}]}"#;
        assert_eq!(SftRecord::parse(ok).unwrap().conversations.len(), 1);
    }
}
