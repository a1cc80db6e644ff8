//! JSON values as Python's `json` module reads and writes them, exactly.
//!
//! `json.loads` keeps every integer literal as an exact Python `int`, whatever its size,
//! reads other numbers as correctly rounded floats, and keeps object keys in order;
//! `json.dumps` writes them back: integers digit for digit, floats as `repr`. serde_json's
//! `Value` turns integers beyond 64 bits into floats (`1.2345678901234568e+29`), so every
//! value steerlm passes through or prints uses [`PyValue`] instead.
//!
//! Where Python accepts more than JSON, steerlm refuses the line with a reason:
//! - a key twice in one object ([`crate::unique_keys`]; Python keeps the last);
//! - `NaN`, `Infinity`, and float literals beyond the float range such as `1e400`
//!   (Python reads inf and writes `Infinity`, which is not JSON);
//! - a lone UTF-16 surrogate escape such as `"\ud800"` (it has no UTF-8 form);
//! - a byte order mark before the value (Python refuses it too).
//!
//! Integers longer than 4300 digits are refused, as Python 3.11+ refuses them.

use crate::chunk::refuse_bom;
use crate::pyfloat::write_python_repr;
use crate::pyjson::{Ascii, write_float, write_str};
use crate::unique_keys::KeySet;
use std::borrow::Cow;

/// A JSON value with Python's number semantics.
#[derive(Clone, Debug, PartialEq)]
pub enum PyValue {
    Null,
    Bool(bool),
    /// An integer literal, exact.
    Int(PyInt),
    /// A finite float.
    Float(f64),
    Str(String),
    Array(Vec<PyValue>),
    Object(PyObject),
}

/// An integer of any size, as its canonical decimal digits (`-0` reads as `0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PyInt(String);

/// An object: keys in their input order, each key once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PyObject(Vec<(String, PyValue)>);

/// Python 3.11's default `sys.get_int_max_str_digits()`.
pub const MAX_INT_DIGITS: usize = 4300;

/// How deep arrays and objects may nest (serde_json's limit).
const MAX_DEPTH: usize = 128;

impl PyInt {
    /// The decimal digits, with a leading `-` if negative.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.0.parse().ok()
    }

    /// Python's `float(n)`: correctly rounded; `None` where Python raises
    /// `OverflowError`.
    pub fn to_f64(&self) -> Option<f64> {
        self.0.parse::<f64>().ok().filter(|x| x.is_finite())
    }

    pub fn is_zero(&self) -> bool {
        self.0 == "0"
    }

    /// `n * factor`, exactly.
    pub fn times(&self, factor: u32) -> PyInt {
        let (sign, digits) = match self.0.strip_prefix('-') {
            Some(digits) => ("-", digits),
            None => ("", self.0.as_str()),
        };
        let mut carry = 0u64;
        let mut reversed = Vec::with_capacity(digits.len() + 10);
        for d in digits.bytes().rev() {
            let product = u64::from(d - b'0') * u64::from(factor) + carry;
            reversed.push(b'0' + (product % 10) as u8);
            carry = product / 10;
        }
        while carry > 0 {
            reversed.push(b'0' + (carry % 10) as u8);
            carry /= 10;
        }
        while reversed.len() > 1 && reversed.last() == Some(&b'0') {
            reversed.pop();
        }
        let magnitude: String = reversed.iter().rev().map(|&b| b as char).collect();
        let sign = if magnitude == "0" { "" } else { sign };
        PyInt(format!("{sign}{magnitude}"))
    }
}

impl From<i64> for PyInt {
    fn from(n: i64) -> Self {
        PyInt(n.to_string())
    }
}

impl PyObject {
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut PyValue> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `obj[key] = value`: an existing key keeps its place, a new one goes last.
    pub fn insert(&mut self, key: impl Into<String>, value: PyValue) {
        let key = key.into();
        match self.get_mut(&key) {
            Some(slot) => *slot = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &PyValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PyValue {
    /// Parses one JSON text (a JSONL line) as `json.loads` does, with the refusals
    /// listed in the module documentation. Errors read like
    /// `invalid JSON: expected value (column 7)`.
    ///
    /// Edit a record and write it back as `json.dumps(record)` would:
    ///
    /// ```
    /// use steerlm_core::pyjson::Ascii;
    /// use steerlm_core::pyvalue::PyValue;
    ///
    /// let line = r#"{"id": 123456789012345678901234567890, "conversations": [{"value": "é", "from": "User", "label": null}]}"#;
    /// let mut record = PyValue::parse(line)?;
    /// let turns = record.get_mut("conversations").and_then(PyValue::as_array_mut).ok_or("no turns")?;
    /// let turn = turns[0].as_object_mut().ok_or("a turn is not an object")?;
    /// turn.insert("label", PyValue::Str("quality:4".into()));
    /// let mut out = Vec::new();
    /// record.write(&mut out, Ascii::Escaped)?;
    /// assert_eq!(
    ///     String::from_utf8(out).unwrap(),
    ///     r#"{"id": 123456789012345678901234567890, "conversations": [{"value": "\u00e9", "from": "User", "label": "quality:4"}]}"#
    /// );
    /// # Ok::<(), String>(())
    /// ```
    pub fn parse(text: &str) -> Result<PyValue, String> {
        refuse_bom(text)?;
        Parser::read(text).map_err(|(why, at)| format!("invalid JSON: {why} (column {})", at + 1))
    }

    /// Whether `text` is one JSON value [`PyValue::parse`] accepts; the error is the
    /// reason alone, for a caller that reports its own position.
    pub(crate) fn check(text: &str) -> Result<(), String> {
        Parser::read(text).map(drop).map_err(|(why, _)| why)
    }

    /// Appends `json.dumps(value, ensure_ascii=...)` (Python's default separators).
    /// Fails only on a non-finite [`PyValue::Float`] built by a caller.
    pub fn write(&self, out: &mut Vec<u8>, ascii: Ascii) -> Result<(), String> {
        match self {
            PyValue::Null => out.extend_from_slice(b"null"),
            PyValue::Bool(true) => out.extend_from_slice(b"true"),
            PyValue::Bool(false) => out.extend_from_slice(b"false"),
            PyValue::Int(n) => out.extend_from_slice(n.0.as_bytes()),
            PyValue::Float(x) => write_float(out, *x)?,
            PyValue::Str(s) => write_str(out, s, ascii),
            PyValue::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    item.write(out, ascii)?;
                }
                out.push(b']');
            }
            PyValue::Object(object) => {
                out.push(b'{');
                for (i, (key, item)) in object.0.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    write_str(out, key, ascii);
                    out.extend_from_slice(b": ");
                    item.write(out, ascii)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }

    /// The field `key` of an object (`None` for a missing key or a non-object).
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        self.as_object()?.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut PyValue> {
        self.as_object_mut()?.get_mut(key)
    }

    pub fn as_object(&self) -> Option<&PyObject> {
        if let PyValue::Object(o) = self { Some(o) } else { None }
    }

    pub fn as_object_mut(&mut self) -> Option<&mut PyObject> {
        if let PyValue::Object(o) = self { Some(o) } else { None }
    }

    pub fn as_array(&self) -> Option<&[PyValue]> {
        if let PyValue::Array(a) = self { Some(a) } else { None }
    }

    pub fn as_array_mut(&mut self) -> Option<&mut Vec<PyValue>> {
        if let PyValue::Array(a) = self { Some(a) } else { None }
    }

    pub fn as_str(&self) -> Option<&str> {
        if let PyValue::Str(s) = self { Some(s) } else { None }
    }

    /// Python's `float(v)` of a number; `None` for anything else or an integer too
    /// large for a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Int(n) => n.to_f64(),
            PyValue::Float(x) => Some(*x),
            _ => None,
        }
    }

    /// Python's truthiness: `None`, `False`, `0`, `0.0`, `""`, `[]`, `{}` are false.
    pub fn is_truthy(&self) -> bool {
        match self {
            PyValue::Null => false,
            PyValue::Bool(b) => *b,
            PyValue::Int(n) => !n.is_zero(),
            PyValue::Float(x) => *x != 0.0,
            PyValue::Str(s) => !s.is_empty(),
            PyValue::Array(a) => !a.is_empty(),
            PyValue::Object(o) => !o.is_empty(),
        }
    }

    /// Python's `str()` of a scalar, as an f-string renders it: `3`, `3.5`, `True`,
    /// `None`, or the string itself.
    pub fn python_str(&self) -> Result<String, String> {
        Ok(match self {
            PyValue::Null => "None".to_owned(),
            PyValue::Bool(true) => "True".to_owned(),
            PyValue::Bool(false) => "False".to_owned(),
            PyValue::Str(s) => s.clone(),
            PyValue::Int(n) => n.0.clone(),
            PyValue::Float(x) => {
                let mut out = Vec::new();
                write_python_repr(&mut out, *x);
                String::from_utf8(out).expect("repr is ASCII")
            }
            PyValue::Array(_) | PyValue::Object(_) => {
                return Err(format!("expected a number or string, got {}", self.describe()));
            }
        })
    }

    /// A short description of the value's type for error messages.
    pub fn describe(&self) -> &'static str {
        match self {
            PyValue::Null => "null",
            PyValue::Bool(_) => "a boolean",
            PyValue::Int(_) | PyValue::Float(_) => "a number",
            PyValue::Str(_) => "a string",
            PyValue::Array(_) => "an array",
            PyValue::Object(_) => "an object",
        }
    }
}

/// A recursive-descent reader of one JSON text. Positions are byte offsets.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

type Parsed<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    /// Reads the one value of `text`; an error is the reason and the byte offset
    /// where it was found (serde_json reports the same 1-based byte column).
    fn read(text: &'a str) -> Result<PyValue, (String, usize)> {
        let mut parser = Parser { text, pos: 0, depth: 0 };
        let mut value = || {
            parser.skip_whitespace();
            let value = parser.value()?;
            parser.skip_whitespace();
            if parser.pos < text.len() {
                return Err("trailing characters after the JSON value".to_owned());
            }
            Ok(value)
        };
        value().map_err(|why| (why, parser.pos))
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn value(&mut self) -> Parsed<PyValue> {
        match self.peek() {
            None => Err("EOF while parsing a value".into()),
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => Ok(PyValue::Str(self.string()?.into_owned())),
            Some(b't') => self.literal("true", PyValue::Bool(true)),
            Some(b'f') => self.literal("false", PyValue::Bool(false)),
            Some(b'n') => self.literal("null", PyValue::Null),
            Some(b'N' | b'I' | b'-') if self.non_finite_word() => {
                Err("NaN and Infinity are not JSON numbers (Python reads them, steerlm refuses non-finite numbers)"
                    .into())
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err("expected value".into()),
        }
    }

    /// Whether Python's extension `NaN`, `Infinity` or `-Infinity` starts here.
    fn non_finite_word(&self) -> bool {
        let rest = &self.text[self.pos..];
        ["NaN", "Infinity", "-Infinity"].into_iter().any(|word| rest.starts_with(word))
    }

    fn nested(&mut self, parse: fn(&mut Self) -> Parsed<PyValue>) -> Parsed<PyValue> {
        if self.depth == MAX_DEPTH {
            return Err(format!("recursion limit exceeded (arrays and objects nested over {MAX_DEPTH} deep)"));
        }
        self.depth += 1;
        let value = parse(self)?;
        self.depth -= 1;
        Ok(value)
    }

    fn literal(&mut self, word: &str, value: PyValue) -> Parsed<PyValue> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err("expected value".into())
        }
    }

    /// After a `[` or `{` item: `true` at the closing bracket, `false` after a comma.
    fn end_or_comma(&mut self, close: u8) -> Parsed<bool> {
        self.skip_whitespace();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.skip_whitespace();
                Ok(false)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Ok(true)
            }
            None => Err("EOF while parsing".into()),
            Some(_) => Err(format!("expected `,` or `{}`", close as char)),
        }
    }

    fn array(&mut self) -> Parsed<PyValue> {
        self.pos += 1;
        self.skip_whitespace();
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(PyValue::Array(items));
        }
        loop {
            items.push(self.value()?);
            if self.end_or_comma(b']')? {
                return Ok(PyValue::Array(items));
            }
        }
    }

    fn object(&mut self) -> Parsed<PyValue> {
        self.pos += 1;
        self.skip_whitespace();
        let mut entries = Vec::new();
        let mut keys = KeySet::default();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(PyValue::Object(PyObject(entries)));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err("expected a string key".into());
            }
            let key_at = self.pos;
            let key = self.string()?;
            if let Err(why) = keys.insert(key.clone()) {
                self.pos = key_at;
                return Err(why);
            }
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err("expected `:`".into());
            }
            self.pos += 1;
            self.skip_whitespace();
            entries.push((key.into_owned(), self.value()?));
            if self.end_or_comma(b'}')? {
                return Ok(PyValue::Object(PyObject(entries)));
            }
        }
    }

    /// A string literal at `pos`, decoded; borrowed from the input when it has no escapes.
    fn string(&mut self) -> Parsed<Cow<'a, str>> {
        let bytes = self.bytes();
        self.pos += 1;
        let mut run = self.pos;
        let mut decoded: Option<String> = None;
        loop {
            let Some(&b) = bytes.get(self.pos) else {
                return Err("EOF while parsing a string".into());
            };
            match b {
                b'"' => {
                    let tail = &self.text[run..self.pos];
                    self.pos += 1;
                    return Ok(match decoded {
                        None => Cow::Borrowed(tail),
                        Some(mut s) => {
                            s.push_str(tail);
                            Cow::Owned(s)
                        }
                    });
                }
                b'\\' => {
                    let s = decoded.get_or_insert_with(String::new);
                    s.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    let c = self.escape()?;
                    decoded.as_mut().expect("set above").push(c);
                    run = self.pos;
                }
                0x00..=0x1f => {
                    return Err("control character (\\u0000-\\u001F) found while parsing a string".into());
                }
                _ => self.pos += 1,
            }
        }
    }

    /// The character of the escape after a backslash.
    fn escape(&mut self) -> Parsed<char> {
        let kind = self.peek().ok_or("EOF while parsing a string")?;
        self.pos += 1;
        Ok(match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                let code = match unit {
                    0xd800..=0xdbff if self.bytes().get(self.pos..self.pos + 2) == Some(b"\\u") => {
                        let at = self.pos;
                        self.pos += 2;
                        match self.hex4()? {
                            low @ 0xdc00..=0xdfff => 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00),
                            _ => {
                                self.pos = at;
                                return Err(lone_surrogate(unit));
                            }
                        }
                    }
                    0xd800..=0xdfff => return Err(lone_surrogate(unit)),
                    _ => unit,
                };
                char::from_u32(code).expect("surrogates are handled above")
            }
            other => return Err(format!("invalid escape `\\{}`", other as char)),
        })
    }

    fn hex4(&mut self) -> Parsed<u32> {
        let digits = self.bytes().get(self.pos..self.pos + 4).ok_or("EOF while parsing a \\u escape")?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err("invalid \\u escape (expected 4 hex digits)".into());
        }
        self.pos += 4;
        Ok(u32::from_str_radix(std::str::from_utf8(digits).expect("hex digits are ASCII"), 16)
            .expect("checked hex digits"))
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`: an exact integer
    /// without fraction or exponent, else a float.
    fn number(&mut self) -> Parsed<PyValue> {
        let start = self.pos;
        let bytes = self.bytes();
        let digits = |pos: &mut usize| {
            let from = *pos;
            while bytes.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos - from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let int_digits = digits(&mut self.pos);
        if int_digits == 0 {
            return Err("invalid number".into());
        }
        if int_digits > 1 && bytes[int_start] == b'0' {
            self.pos = int_start + 1;
            return Err("invalid number (leading zero)".into());
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            is_float = true;
            if digits(&mut self.pos) == 0 {
                return Err("invalid number (no digit after `.`)".into());
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            is_float = true;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(&mut self.pos) == 0 {
                return Err("invalid number (no digit in the exponent)".into());
            }
        }
        let literal = &self.text[start..self.pos];
        if is_float {
            // Rust's parser rounds correctly, as Python's does.
            let x: f64 = literal.parse().map_err(|_| "invalid number".to_owned())?;
            if !x.is_finite() {
                self.pos = start;
                return Err(format!(
                    "number {literal} is beyond the float range (Python would write it as Infinity, which is not JSON)"
                ));
            }
            return Ok(PyValue::Float(x));
        }
        if int_digits > MAX_INT_DIGITS {
            self.pos = start;
            return Err(format!(
                "integer of {int_digits} digits (Python refuses integers of more than {MAX_INT_DIGITS} digits)"
            ));
        }
        Ok(PyValue::Int(PyInt(if literal == "-0" { "0".to_owned() } else { literal.to_owned() })))
    }
}

fn lone_surrogate(unit: u32) -> String {
    format!("lone UTF-16 surrogate escape \\u{unit:04x} (it has no UTF-8 form)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(text: &str) -> Result<String, String> {
        let mut out = Vec::new();
        PyValue::parse(text)?.write(&mut out, Ascii::Escaped)?;
        Ok(String::from_utf8(out).unwrap())
    }

    /// Expected strings are `json.dumps(json.loads(text))` as printed by CPython 3.11.7.
    #[test]
    fn round_trips_like_python() {
        let cases = [
            (
                r#"{"id": 123456789012345678901234567890, "n": -12345678901234567890123}"#,
                r#"{"id": 123456789012345678901234567890, "n": -12345678901234567890123}"#,
            ),
            (
                "[-0, 0, -0.0, 1E5, 1e-400, 12345678901234567890, 1.5, 0.1, 1e16, 100000000000000000000.0]",
                "[0, 0, -0.0, 100000.0, 0.0, 12345678901234567890, 1.5, 0.1, 1e+16, 1e+20]",
            ),
            (
                "[2.638344616030823e-256, 9007199254740993, 1.7976931348623157e308, 5e-324, 1e22, 123.456e2]",
                "[2.638344616030823e-256, 9007199254740993, 1.7976931348623157e+308, 5e-324, 1e+22, 12345.6]",
            ),
            (
                r#" {"s": "caf\u00e9 \ud83d\ude00 \/ \"q\" é", "t": true, "f": false, "z": null, "e": {}, "a": []} "#,
                r#"{"s": "caf\u00e9 \ud83d\ude00 / \"q\" \u00e9", "t": true, "f": false, "z": null, "e": {}, "a": []}"#,
            ),
        ];
        for (text, python) in cases {
            assert_eq!(dumps(text).as_deref(), Ok(python), "{text}");
        }
        let digits = "7".repeat(MAX_INT_DIGITS);
        assert_eq!(dumps(&digits).unwrap(), digits);
    }

    #[test]
    fn refuses_what_json_or_steerlm_does_not_allow() {
        let cases = [
            ("{\"x\": 1.0e400}", "beyond the float range", 7),
            ("[NaN]", "NaN and Infinity are not JSON numbers", 2),
            ("[-Infinity]", "NaN and Infinity are not JSON numbers", 2),
            ("[Infinity]", "NaN and Infinity are not JSON numbers", 2),
            (r#"{"a": 1, "b": {"k": 1, "k": 2}}"#, "duplicate key \"k\"", 24),
            (r#""\ud800""#, "lone UTF-16 surrogate", 8),
            ("\u{feff}{}", "byte order mark", 0),
            ("[1,]", "expected value", 4),
            ("[01]", "leading zero", 3),
            ("{\"a\" 1}", "expected `:`", 6),
            ("\"tab\there\"", "control character", 5),
            ("{} x", "trailing characters", 4),
            ("", "EOF", 1),
            ("[1.]", "no digit after", 4),
        ];
        for (text, reason, column) in cases {
            let err = PyValue::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
            if column > 0 {
                assert!(err.ends_with(&format!("(column {column})")), "{text}: {err}");
            }
        }
        let err = PyValue::parse(&"1".repeat(MAX_INT_DIGITS + 1)).unwrap_err();
        assert!(err.contains("4301 digits"), "{err}");
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(PyValue::parse(&deep).unwrap_err().contains("recursion limit"));
    }

    #[test]
    fn python_semantics_of_scalars() {
        let v = PyValue::parse(r#"[3, 3.0, true, null, "s", 0, 0.0, "", 123456789012345678901234567890]"#).unwrap();
        let items = v.as_array().unwrap();
        let strs: Vec<_> = items.iter().map(|v| v.python_str().unwrap()).collect();
        assert_eq!(strs, ["3", "3.0", "True", "None", "s", "0", "0.0", "", "123456789012345678901234567890"]);
        let truthy: Vec<_> = items.iter().map(PyValue::is_truthy).collect();
        assert_eq!(truthy, [true, true, true, false, true, false, false, false, true]);
        assert_eq!(items[8].as_f64(), Some(1.2345678901234568e29));
        assert!(PyValue::Int(PyInt("1".repeat(400))).as_f64().is_none());
    }

    #[test]
    fn multiplies_exactly() {
        let n = PyInt("123456789012345678901234567890".into());
        assert_eq!(n.times(4).as_str(), "493827156049382715604938271560");
        assert_eq!(PyInt("-25".into()).times(4).as_str(), "-100");
        assert_eq!(PyInt("0".into()).times(4).as_str(), "0");
    }

    #[test]
    fn records_are_edited_in_place() {
        let mut record =
            PyValue::parse(r#"{"id": 10000000000000000000001, "conversations": [{"value": "hi", "label": null}]}"#)
                .unwrap();
        let turn = &mut record.get_mut("conversations").unwrap().as_array_mut().unwrap()[0];
        turn.as_object_mut().unwrap().insert("label", PyValue::Str("quality:4".into()));
        turn.as_object_mut().unwrap().insert("extra", PyValue::Int(7.into()));
        let mut out = Vec::new();
        record.write(&mut out, Ascii::Escaped).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id": 10000000000000000000001, "conversations": [{"value": "hi", "label": "quality:4", "extra": 7}]}"#
        );
    }
}
