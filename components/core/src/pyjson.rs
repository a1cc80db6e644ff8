//! JSON written the way Python's `json.dumps` writes it: `", "` and `": "` separators,
//! floats in `repr` form, and strings escaped either with `ensure_ascii=False`
//! (non-ASCII raw) or `ensure_ascii=True` (`\uXXXX`, astral characters as surrogate
//! pairs, lowercase hex).

use crate::pyfloat::write_python_repr;

/// Which of `json.dumps`' two string escapings to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ascii {
    /// `ensure_ascii=False`: escape `"`, `\` and control characters only.
    Raw,
    /// `ensure_ascii=True` (Python's default): also escape everything outside `' '..='~'`.
    Escaped,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// For each byte: 0 = copy as is, otherwise the character after the backslash
/// (`u` meaning a `\u00XX` escape). Only ASCII bytes need escaping in `Raw` mode.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends the body of a JSON string (no surrounding quotes).
pub fn write_str_body(out: &mut Vec<u8>, s: &str, ascii: Ascii) {
    match ascii {
        Ascii::Raw => write_raw_body(out, s.as_bytes()),
        Ascii::Escaped => write_ascii_body(out, s),
    }
}

/// Appends a quoted JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str, ascii: Ascii) {
    out.push(b'"');
    write_str_body(out, s, ascii);
    out.push(b'"');
}

fn write_escape(out: &mut Vec<u8>, byte: u8, kind: u8) {
    if kind == b'u' {
        out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(byte >> 4) as usize], HEX[(byte & 15) as usize]]);
    } else {
        out.extend_from_slice(&[b'\\', kind]);
    }
}

// Copies runs of plain bytes in one go; this is the hot loop of every conversion.
fn write_raw_body(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let kind = ESCAPE[b as usize];
        if kind != 0 {
            out.extend_from_slice(&bytes[start..i]);
            write_escape(out, b, kind);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

fn write_ascii_body(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let code = c as u32;
        if (0x20..0x7f).contains(&code) && c != '"' && c != '\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + c.len_utf8();
        if code < 0x80 && ESCAPE[code as usize] != 0 {
            write_escape(out, code as u8, ESCAPE[code as usize]);
        } else if code < 0x10000 {
            write_u_escape(out, code as u16);
        } else {
            let v = code - 0x10000;
            write_u_escape(out, 0xd800 | (v >> 10) as u16);
            write_u_escape(out, 0xdc00 | (v & 0x3ff) as u16);
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

fn write_u_escape(out: &mut Vec<u8>, unit: u16) {
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 15) as usize]);
    }
}

/// Re-escapes a JSON string literal (as it appears in the input, quotes included)
/// straight into `ensure_ascii=False` form, without decoding it into a `String` first:
/// runs without a backslash are copied as they are (the input's raw UTF-8 is already
/// what Python writes), and each escape is rewritten the way Python would write the
/// character it stands for. This is the hot path of `to-regression` and `format`.
///
/// `literal` must be a string literal serde_json has already validated; a lone UTF-16
/// surrogate escape, which serde_json lets through here, is refused.
pub fn transcode_str_body(out: &mut Vec<u8>, literal: &str) -> Result<(), String> {
    let bytes = literal.as_bytes();
    if bytes.len() < 2 || bytes[0] != b'"' || bytes[bytes.len() - 1] != b'"' {
        return Err(format!("expected a string, got {}", preview(literal)));
    }
    let body = &bytes[1..bytes.len() - 1];
    let mut i = 0;
    while let Some(offset) = memchr::memchr(b'\\', &body[i..]) {
        out.extend_from_slice(&body[i..i + offset]);
        i += offset + 1;
        let kind = *body.get(i).ok_or("unterminated escape")?;
        i += 1;
        match kind {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.push(b'/'),
            b'b' | b'f' | b'n' | b'r' | b't' => out.extend_from_slice(&[b'\\', kind]),
            b'u' => {
                let unit = hex4(body, i)?;
                i += 4;
                let code = match unit {
                    0xd800..=0xdbff => {
                        let low = if body.get(i..i + 2) == Some(b"\\u") { hex4(body, i + 2).ok() } else { None };
                        match low {
                            Some(low @ 0xdc00..=0xdfff) => {
                                i += 6;
                                0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                            }
                            _ => return Err(format!("lone UTF-16 surrogate escape \\u{unit:04x}")),
                        }
                    }
                    0xdc00..=0xdfff => return Err(format!("lone UTF-16 surrogate escape \\u{unit:04x}")),
                    _ => unit,
                };
                let c = char::from_u32(code).expect("surrogates are handled above");
                let mut utf8 = [0u8; 4];
                write_raw_body(out, c.encode_utf8(&mut utf8).as_bytes());
            }
            other => return Err(format!("invalid escape \\{}", other as char)),
        }
    }
    out.extend_from_slice(&body[i..]);
    Ok(())
}

fn hex4(body: &[u8], at: usize) -> Result<u32, String> {
    let digits = body.get(at..at + 4).ok_or("truncated \\u escape")?;
    let text = std::str::from_utf8(digits).map_err(|_| "invalid \\u escape")?;
    u32::from_str_radix(text, 16).map_err(|_| format!("invalid \\u escape \\u{text}"))
}

fn preview(literal: &str) -> String {
    let mut end = literal.len().min(40);
    while !literal.is_char_boundary(end) {
        end -= 1;
    }
    if end < literal.len() { format!("{}...", &literal[..end]) } else { literal.to_owned() }
}

/// Appends a float as `json.dumps` does. Non-finite values are refused: Python would
/// write `NaN`/`Infinity`, which is not JSON.
pub fn write_float(out: &mut Vec<u8>, x: f64) -> Result<(), String> {
    if !x.is_finite() {
        return Err(format!("value {x} is not finite"));
    }
    write_python_repr(out, x);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str, ascii: Ascii) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s, ascii);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_python() {
        assert_eq!(esc("a\"b\\c\n\t\r\u{8}\u{c}\u{1}\u{1f}", Ascii::Raw), r#""a\"b\\c\n\t\r\b\f\u0001\u001f""#);
        assert_eq!(esc("café 😀 \u{7f}", Ascii::Raw), "\"café 😀 \u{7f}\"");
        assert_eq!(esc("café 😀 \u{7f}", Ascii::Escaped), r#""caf\u00e9 \ud83d\ude00 \u007f""#);
        assert_eq!(esc("日本\u{2028}", Ascii::Escaped), r#""\u65e5\u672c\u2028""#);
    }

    #[test]
    fn transcoding_equals_decoding_then_escaping() {
        let cases = [
            r#""plain café 😀""#,
            r#""q\"s \\ \/ \b\f\n\r\t \u0001 \u001f \u0041 \u00e9 \u2028 \ud83d\ude00 \u007f""#,
            r#""\u000a\u0022\u005c""#,
            r#""""#,
        ];
        for literal in cases {
            let decoded: String = serde_json::from_str(literal).unwrap();
            let mut want = Vec::new();
            write_str_body(&mut want, &decoded, Ascii::Raw);
            let mut got = Vec::new();
            transcode_str_body(&mut got, literal).unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap(), "{literal}");
        }
        for bad in [r#""\ud800""#, r#""\udc00x""#, r#""\ud800\u0041""#, "5", "null"] {
            assert!(transcode_str_body(&mut Vec::new(), bad).is_err(), "{bad}");
        }
    }
}
