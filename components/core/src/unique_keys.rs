//! One rule for JSON objects in every input steerlm reads: a key may appear once.
//!
//! Python's `json.loads` keeps the last of duplicate keys without a word, so a record
//! with two `"label"`s or two `"conversations"` silently loses data. steerlm refuses
//! such a line instead, naming the key, wherever the object sits in the line (records,
//! turns, dataset rows, OpenAssistant trees, pass-through fields alike).
//!
//! Readers that pick fields out of a line with serde ([`crate::record`]) hold the values
//! they do not read (`Unread`) to the same rules as [`PyValue`] does for whole lines,
//! so every command accepts and refuses the same lines.

use crate::pyvalue::PyValue;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// The message for a key seen twice in one object.
pub fn duplicate_key(key: &str) -> String {
    format!("duplicate key {key:?} in an object (Python would keep only the last one)")
}

/// Objects with more keys than this are checked with a hash set, smaller ones by a scan.
const SCAN_LIMIT: usize = 16;

/// The keys of one object seen so far.
#[derive(Default)]
pub(crate) struct KeySet<'k> {
    few: Vec<Cow<'k, str>>,
    many: HashSet<Cow<'k, str>>,
}

impl<'k> KeySet<'k> {
    /// Records `key`; fails with [`duplicate_key`]'s message if it was already seen.
    pub(crate) fn insert(&mut self, key: Cow<'k, str>) -> Result<(), String> {
        if self.many.is_empty() && self.few.len() < SCAN_LIMIT {
            if self.few.contains(&key) {
                return Err(duplicate_key(&key));
            }
            self.few.push(key);
            return Ok(());
        }
        if self.many.is_empty() {
            self.many.extend(self.few.drain(..));
        }
        if self.many.contains(&key) {
            return Err(duplicate_key(&key));
        }
        self.many.insert(key);
        Ok(())
    }
}

/// Any JSON value a reader skips, held to [`PyValue`]'s rules: each key once, no
/// non-finite or out-of-range float, integers of any size up to Python's limit. Strings
/// (the usual pass-through field) are taken as they are, without a second look.
pub(crate) struct Unread;

impl<'de> Deserialize<'de> for Unread {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Captured raw: serde_json would refuse an integer beyond the float range, which
        // Python (and PyValue) keep.
        let raw = <&RawValue>::deserialize(deserializer)?;
        check_unread(raw.get()).map_err(de::Error::custom)?;
        Ok(Unread)
    }
}

/// [`Unread`]'s check of one raw JSON value.
pub(crate) fn check_unread(raw: &str) -> Result<(), String> {
    if raw.starts_with('"') {
        return Ok(());
    }
    PyValue::check(raw)
}

/// A string (or key), borrowed from the input where it has no escapes.
pub(crate) struct CowStr<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CowStrVisitor;
        impl<'de> Visitor<'de> for CowStrVisitor {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(CowStrVisitor)
    }
}

/// Reads the value of a field a visitor knows into its slot, refusing a second one.
pub(crate) fn set_once<'de, A, T>(map: &mut A, slot: &mut Option<T>, key: &str) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if slot.is_some() {
        return Err(de::Error::custom(duplicate_key(key)));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// Skips the value of a field a visitor does not know, refusing a key seen before
/// among `others` and holding everything under it to the rule.
pub(crate) fn skip_unknown<'de, A: MapAccess<'de>>(
    map: &mut A,
    others: &mut KeySet<'de>,
    key: Cow<'de, str>,
) -> Result<(), A::Error> {
    others.insert(key).map_err(de::Error::custom)?;
    map.next_value::<Unread>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_may_appear_once_at_any_depth_and_any_size() {
        for ok in [r#"{"a": 1, "b": {"a": 2}}"#, r#"[{"a": 1}, {"a": 1}]"#, "3", "\"s\""] {
            serde_json::from_str::<Unread>(ok).unwrap();
        }
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        let big = format!("{{{}, \"k39\": 0}}", many.join(", "));
        for (bad, key) in
            [(r#"{"a": 1, "a": 2}"#, "a"), (r#"[{"x": {"é": 1, "\u00e9": 2}}]"#, "é"), (big.as_str(), "k39")]
        {
            let err = serde_json::from_str::<Unread>(bad).err().unwrap().to_string();
            assert!(err.contains(&duplicate_key(key)), "{bad}: {err}");
        }
    }

    #[test]
    fn unread_values_follow_pyvalue_rules() {
        let long_int = "9".repeat(400);
        serde_json::from_str::<Unread>(&long_int).unwrap();
        for bad in ["1e400", "[1e400]", "NaN"] {
            assert!(serde_json::from_str::<Unread>(bad).is_err(), "{bad}");
        }
    }
}
