//! Floats the way Python reads and prints them: `float(str)` and `repr(float)`.

/// Python's `str.isspace()` for the characters `float()` strips: Unicode White_Space
/// plus the ASCII separators U+001C..U+001F that Python also counts as space.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Parses a string as Python's `float()` does: surrounding whitespace, a sign, `.5`,
/// `5.`, exponents, `_` between digits, and `inf`/`infinity`/`nan` in any case.
/// Returns `None` where Python raises `ValueError`.
///
/// (Python also accepts non-ASCII decimal digits such as `３`; this does not.)
pub fn parse_python_float(text: &str) -> Option<f64> {
    let s = text.trim_matches(is_python_space);
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = unsigned.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return s.parse::<f64>().ok();
    }
    if !is_decimal_literal(unsigned.as_bytes()) {
        return None;
    }
    if s.contains('_') { s.replace('_', "").parse().ok() } else { s.parse().ok() }
}

/// `digits [. [digits]] | . digits`, then optional `e[sign]digits`, where every `_`
/// sits between two digits (Python's grammar for float literals, PEP 515).
fn is_decimal_literal(b: &[u8]) -> bool {
    let mut i = 0;
    let int_digits = scan_digits(b, &mut i);
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        frac_digits = scan_digits(b, &mut i);
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if scan_digits(b, &mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Advances over `digit (_? digit)*`, returning how many digits it saw. A trailing or
/// doubled `_` stops the scan before it, which later fails the literal.
fn scan_digits(b: &[u8], i: &mut usize) -> usize {
    let mut count = 0;
    while *i < b.len() {
        if b[*i].is_ascii_digit() {
            count += 1;
            *i += 1;
        } else if b[*i] == b'_' && count > 0 && *i + 1 < b.len() && b[*i + 1].is_ascii_digit() {
            *i += 1;
        } else {
            break;
        }
    }
    count
}

/// Appends Python's `repr(x)` of a finite float: the shortest digits that round-trip,
/// fixed notation for decimal exponents in [-4, 16), scientific otherwise
/// (`3.0`, `-100.0`, `0.0001`, `1e-05`, `1e+16`, `1.5e+300`, `-0.0`).
pub fn write_python_repr(out: &mut Vec<u8>, x: f64) {
    debug_assert!(x.is_finite());
    // Fast path: integral values below 1e16 print as "<int>.0".
    if x == x.trunc() && x.abs() < 1e16 {
        if x == 0.0 && x.is_sign_negative() {
            out.extend_from_slice(b"-0.0");
            return;
        }
        let mut buf = itoa_buf(x as i64);
        buf.extend_from_slice(b".0");
        out.extend_from_slice(&buf);
        return;
    }
    // Rust's `{:e}` prints the shortest round-trip digits: "d[.ddd]e<exp>".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push(b'-');
    }
    // Python's repr switches to scientific when exp < -4 or exp >= 16.
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-point) as usize));
            out.extend_from_slice(digits.as_bytes());
        } else if point as usize >= digits.len() {
            out.extend_from_slice(digits.as_bytes());
            out.extend(std::iter::repeat_n(b'0', point as usize - digits.len()));
            out.extend_from_slice(b".0");
        } else {
            let (int, frac) = digits.split_at(point as usize);
            out.extend_from_slice(int.as_bytes());
            out.push(b'.');
            out.extend_from_slice(frac.as_bytes());
        }
    } else {
        out.extend_from_slice(&digits.as_bytes()[..1]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits.as_bytes()[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let abs = exp.unsigned_abs();
        if abs < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(abs.to_string().as_bytes());
    }
}

/// `repr(x)` as a `String`.
pub fn python_repr(x: f64) -> String {
    let mut out = Vec::new();
    write_python_repr(&mut out, x);
    String::from_utf8(out).expect("repr is ASCII")
}

fn itoa_buf(v: i64) -> Vec<u8> {
    let mut tmp = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut out = Vec::with_capacity(22);
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&tmp[i..]);
    out
}

/// Python's `round(x)` for a float: nearest integer, ties to even. `None` for values
/// Python cannot turn into an int (inf, nan) or that do not fit an `i64`.
pub fn python_round(x: f64) -> Option<i64> {
    let r = x.round_ties_even();
    (r.is_finite() && r.abs() < 9.2e18).then_some(r as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (3.0, "3.0"),
            (-100.0, "-100.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-7, "1e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (2.5, "2.5"),
            (123456.789, "123456.789"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (-1.25e-5, "-1.25e-05"),
            (9999999999999998.0, "9999999999999998.0"),
        ];
        for (x, want) in cases {
            assert_eq!(python_repr(*x), *want, "repr({x:?})");
        }
    }

    #[test]
    fn float_parsing_matches_python() {
        let ok: &[(&str, f64)] = &[
            ("3", 3.0),
            (" 2", 2.0),
            ("+2", 2.0),
            (".5", 0.5),
            ("5.", 5.0),
            ("1e3", 1000.0),
            ("1E-2", 0.01),
            ("-1", -1.0),
            ("1_000", 1000.0),
            ("1_0.5_0", 10.5),
            ("\t4\n", 4.0),
            ("\u{3000}4", 4.0),
        ];
        for (s, want) in ok {
            assert_eq!(parse_python_float(s), Some(*want), "float({s:?})");
        }
        assert!(parse_python_float("inf").unwrap().is_infinite());
        assert!(parse_python_float("-Infinity").unwrap().is_infinite());
        assert!(parse_python_float("nan").unwrap().is_nan());
        for bad in ["", " ", "high", "1_", "_1", "1__0", ".", "e5", "1e", "1.2.3", "0x10", "1 2", "++1", "in f"] {
            assert_eq!(parse_python_float(bad), None, "float({bad:?}) should fail");
        }
    }

    #[test]
    fn round_is_half_to_even() {
        assert_eq!(python_round(2.5), Some(2));
        assert_eq!(python_round(3.5), Some(4));
        assert_eq!(python_round(-0.5), Some(0));
        assert_eq!(python_round(0.75 * 4.0), Some(3));
        assert_eq!(python_round(f64::NAN), None);
    }
}
