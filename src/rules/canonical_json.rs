//! Canonical JSON: one byte string per JSON value.
//!
//! # Why
//!
//! A request fingerprint must not change when a client re-serialises the
//! same JSON body differently on a retry (other key order, other whitespace,
//! `"\u00e9"` instead of `"é"`, `1.0` instead of `1`). Before hashing a JSON
//! body we therefore reduce it to a canonical text.
//!
//! # Invariant
//!
//! * Equal JSON values give equal canonical bytes.
//! * Distinct JSON values give distinct canonical bytes.
//! * The output is itself valid JSON, and canonicalising it again returns it
//!   unchanged (`canonicalize(&canonicalize(x)?) == canonicalize(x)`).
//!
//! # Rules
//!
//! The form follows RFC 8785 (JSON Canonicalization Scheme) except for
//! numbers:
//!
//! * No insignificant whitespace. Any JSON value may be the top-level value.
//! * Object members are sorted by their names compared as sequences of UTF-16
//!   code units. Duplicate member names (compared after unescaping) make the
//!   input invalid.
//! * Strings are fully unescaped, then written with exactly the RFC 8785
//!   escapes: `\"`, `\\`, `\b`, `\t`, `\n`, `\f`, `\r`, and `\u00xx` (lowercase
//!   hex) for the other characters below U+0020. Every other character is
//!   written as literal UTF-8. Unpaired surrogate escapes, raw control
//!   characters and invalid UTF-8 make the input invalid.
//! * Numbers (deliberate deviation from RFC 8785): RFC 8785 goes through
//!   IEEE-754 doubles, which would map `12345678901234567890` and
//!   `12345678901234567891` to the same text and so give two different
//!   requests the same fingerprint. Here numbers are normalised *exactly* as
//!   decimals. A number is written as `sign × D × 10^E` where `D` is a digit
//!   string without leading or trailing zeros; every zero (`-0`, `0.000`,
//!   `0e5`) is written `0`. If `E >= 0` and `len(D) + E <= 21` the plain
//!   integer is written (`100`); otherwise, if the value has a fractional part
//!   and the decimal exponent of its leading digit is at least -6, a plain
//!   decimal is written (`12.5`, `0.000123`); otherwise ECMAScript-like
//!   scientific notation is written (`1e+21`, `1.5e-7`). Negative numbers get
//!   a leading `-`. For values that a double represents exactly (and whose
//!   shortest round-trip text is the exact decimal) the output equals RFC
//!   8785's. A number whose written exponent, or the decimal exponent of
//!   whose leading digit, exceeds 10^15 in magnitude makes the input invalid:
//!   the second bound keeps every canonical form valid input, so the
//!   canonical form of a canonical form is itself (`10e1000000000000000`
//!   would otherwise become `1e+1000000000000001`, which the first bound
//!   refuses).
//! * `true`, `false` and `null` are written as is.
//!
//! # Limits
//!
//! The parser is a hand-written recursive descent parser over strict RFC 8259
//! JSON (UTF-8, no byte order mark, no leading zeros, no `+1`, `.5`, `1.`,
//! `NaN`, hex, comments or trailing commas). Arrays and objects nested more
//! than 128 deep are rejected, so the stack is bounded whatever the
//! input. No input makes it panic.

use std::ops::Range;

/// Deepest nesting of arrays and objects that [`canonicalize`] accepts; one
/// level more makes it return `None`.
const MAX_DEPTH: usize = 128;

/// Largest exponent magnitude (as written in the input) that is accepted.
const MAX_EXPONENT: i64 = 1_000_000_000_000_000;

/// Largest number of digits a plain (non-scientific) integer may have.
const MAX_PLAIN_INTEGER_DIGITS: i128 = 21;

/// Smallest decimal exponent of the leading digit written in plain decimal
/// form (`0.000001`).
const MIN_PLAIN_DECIMAL_EXPONENT: i128 = -6;

/// Parses the JSON text `input` and returns its canonical form, or `None` if
/// `input` is not a valid JSON text (the `canonical_json` module docs give
/// the exact rules).
///
/// Whitespace around the value is allowed; a leading byte order mark,
/// trailing non-whitespace, duplicate object member names, unpaired
/// surrogates, invalid UTF-8 and nesting of arrays/objects more than 128
/// deep are not.
#[must_use]
pub fn canonicalize(input: &[u8]) -> Option<Vec<u8>> {
    let src = std::str::from_utf8(input).ok()?;
    let mut parser = Parser { src, pos: 0 };
    let mut out = Vec::with_capacity(input.len());
    parser.skip_whitespace();
    parser.value(&mut out, 0)?;
    parser.skip_whitespace();
    if parser.pos != src.len() {
        return None;
    }
    Some(out)
}

/// Recursive descent parser writing canonical output as it goes.
struct Parser<'a> {
    /// The whole input, already checked to be UTF-8.
    src: &'a str,
    /// Byte offset of the next unread byte.
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn eat(&mut self, expected: u8) -> bool {
        if self.peek() == Some(expected) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn skip_digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    /// The input bytes from `start` to the current position.
    fn since(&self, start: usize) -> Option<&'a [u8]> {
        self.src.as_bytes().get(start..self.pos)
    }

    /// Parses one value; `depth` is the number of enclosing arrays/objects.
    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(out, depth),
            b'[' => self.array(out, depth),
            b'"' => {
                let s = self.string()?;
                write_string(out, &s);
                Some(())
            }
            b't' => self.literal("true", out),
            b'f' => self.literal("false", out),
            b'n' => self.literal("null", out),
            b'-' | b'0'..=b'9' => self.number(out),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str, out: &mut Vec<u8>) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        if self.src.get(self.pos..end)? != word {
            return None;
        }
        self.pos = end;
        out.extend_from_slice(word.as_bytes());
        Some(())
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        let depth = depth + 1;
        if depth > MAX_DEPTH || !self.eat(b'[') {
            return None;
        }
        out.push(b'[');
        self.skip_whitespace();
        if self.eat(b']') {
            out.push(b']');
            return Some(());
        }
        loop {
            self.skip_whitespace();
            self.value(out, depth)?;
            self.skip_whitespace();
            match self.bump()? {
                b',' => out.push(b','),
                b']' => {
                    out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        let depth = depth + 1;
        if depth > MAX_DEPTH || !self.eat(b'{') {
            return None;
        }
        out.push(b'{');
        // Members are written to `out` in input order as `"name":value`,
        // comma-separated, and reordered afterwards only if needed, so the
        // common already-sorted case costs no extra copy.
        let body_start = out.len();
        let mut members: Vec<(String, Range<usize>)> = Vec::new();
        self.skip_whitespace();
        if !self.eat(b'}') {
            loop {
                self.skip_whitespace();
                if self.peek()? != b'"' {
                    return None;
                }
                let name = self.string()?;
                self.skip_whitespace();
                if !self.eat(b':') {
                    return None;
                }
                self.skip_whitespace();
                if !members.is_empty() {
                    out.push(b',');
                }
                let start = out.len();
                write_string(out, &name);
                out.push(b':');
                self.value(out, depth)?;
                members.push((name, start..out.len()));
                self.skip_whitespace();
                match self.bump()? {
                    b',' => {}
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
        if members
            .windows(2)
            .any(|pair| matches!(pair, [a, b] if a.0 == b.0))
        {
            return None;
        }
        let in_input_order = members
            .windows(2)
            .all(|pair| matches!(pair, [a, b] if a.1.start < b.1.start));
        if !in_input_order {
            let written = out.split_off(body_start);
            for (i, (_, range)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let member = written.get(
                    range.start.checked_sub(body_start)?..range.end.checked_sub(body_start)?,
                )?;
                out.extend_from_slice(member);
            }
        }
        out.push(b'}');
        Some(())
    }

    /// Parses a string literal (the current byte must be `"`) and returns its
    /// unescaped contents.
    fn string(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut s = String::new();
        loop {
            let start = self.pos;
            while let Some(byte) = self.peek() {
                if byte == b'"' || byte == b'\\' || byte < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // `start` and `pos` sit next to ASCII bytes (or the ends of the
            // input), so they are char boundaries; `get` keeps this panic-free.
            s.push_str(self.src.get(start..self.pos)?);
            match self.bump()? {
                b'"' => return Some(s),
                b'\\' => s.push(self.escape()?),
                // A raw control character.
                _ => return None,
            }
        }
    }

    /// Parses the part of an escape sequence after the backslash.
    fn escape(&mut self) -> Option<char> {
        let c = match self.bump()? {
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
                match unit {
                    0xD800..=0xDBFF => {
                        if !(self.eat(b'\\') && self.eat(b'u')) {
                            return None;
                        }
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => char::from_u32(unit)?,
                }
            }
            _ => return None,
        };
        Some(c)
    }

    fn hex4(&mut self) -> Option<u32> {
        let mut unit = 0u32;
        for _ in 0..4 {
            let digit = char::from(self.bump()?).to_digit(16)?;
            unit = (unit << 4) | digit;
        }
        Some(unit)
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let negative = self.eat(b'-');
        let int_start = self.pos;
        match self.bump()? {
            b'0' => {}
            b'1'..=b'9' => self.skip_digits(),
            _ => return None,
        }
        let int_digits = self.since(int_start)?;
        let mut frac_digits: &[u8] = &[];
        if self.eat(b'.') {
            let frac_start = self.pos;
            self.skip_digits();
            if self.pos == frac_start {
                return None;
            }
            frac_digits = self.since(frac_start)?;
        }
        let mut exponent: i64 = 0;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            let exp_negative = if self.eat(b'-') {
                true
            } else {
                self.eat(b'+');
                false
            };
            let exp_start = self.pos;
            while let Some(byte @ b'0'..=b'9') = self.peek() {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(i64::from(byte - b'0'));
                self.pos += 1;
            }
            if self.pos == exp_start || exponent > MAX_EXPONENT {
                return None;
            }
            if exp_negative {
                exponent = -exponent;
            }
        }
        write_number(out, negative, int_digits, frac_digits, exponent)
    }
}

/// Writes the number `(-1)^negative × int_digits.frac_digits × 10^exponent`
/// in canonical form.
fn write_number(
    out: &mut Vec<u8>,
    negative: bool,
    int_digits: &[u8],
    frac_digits: &[u8],
    exponent: i64,
) -> Option<()> {
    let all: Vec<u8> = int_digits.iter().chain(frac_digits).copied().collect();
    let Some(first) = all.iter().position(|&d| d != b'0') else {
        out.push(b'0');
        return Some(());
    };
    let last = all.iter().rposition(|&d| d != b'0')?;
    let digits = all.get(first..=last)?;
    let trailing_zeros = all.len() - 1 - last;

    // value = digits × 10^e, with `digits` free of leading/trailing zeros.
    let n = i128::try_from(digits.len()).ok()?;
    let e = i128::from(exponent) - i128::try_from(frac_digits.len()).ok()?
        + i128::try_from(trailing_zeros).ok()?;
    // Decimal exponent of the leading digit.
    let x = n - 1 + e;
    if x.unsigned_abs() > MAX_EXPONENT.unsigned_abs().into() {
        return None;
    }

    if negative {
        out.push(b'-');
    }
    if e >= 0 && n + e <= MAX_PLAIN_INTEGER_DIGITS {
        out.extend_from_slice(digits);
        out.resize(out.len() + usize::try_from(e).ok()?, b'0');
    } else if e < 0 && x >= MIN_PLAIN_DECIMAL_EXPONENT {
        if x >= 0 {
            // `e < 0` means there are fewer than `n` integer digits.
            let (int_part, frac_part) = digits.split_at_checked(usize::try_from(x + 1).ok()?)?;
            out.extend_from_slice(int_part);
            out.push(b'.');
            out.extend_from_slice(frac_part);
        } else {
            out.extend_from_slice(b"0.");
            out.resize(out.len() + usize::try_from(-x - 1).ok()?, b'0');
            out.extend_from_slice(digits);
        }
    } else {
        let (lead, rest) = digits.split_first()?;
        out.push(*lead);
        if !rest.is_empty() {
            out.push(b'.');
            out.extend_from_slice(rest);
        }
        out.push(b'e');
        out.push(if x >= 0 { b'+' } else { b'-' });
        out.extend_from_slice(x.unsigned_abs().to_string().as_bytes());
    }
    Some(())
}

/// Writes `s` as a JSON string literal with RFC 8785 escaping.
fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &byte in s.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0A => out.extend_from_slice(b"\\n"),
            0x0C => out.extend_from_slice(b"\\f"),
            0x0D => out.extend_from_slice(b"\\r"),
            0x00..=0x1F => {
                out.extend_from_slice(b"\\u00");
                out.push(hex_digit(byte >> 4));
                out.push(hex_digit(byte & 0xF));
            }
            // Bytes >= 0x80 belong to multi-byte UTF-8 sequences of `s`,
            // which is valid UTF-8; copy them through.
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// Lowercase hex digit for the low four bits of `nibble`.
fn hex_digit(nibble: u8) -> u8 {
    let nibble = nibble & 0xF;
    if nibble < 10 {
        b'0' + nibble
    } else {
        b'a' + (nibble - 10)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn canon(input: &str) -> Option<String> {
        canonicalize(input.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    fn assert_canon(input: &str, expected: &str) {
        assert_eq!(canon(input).as_deref(), Some(expected), "input: {input:?}");
        // The expected output is itself canonical.
        assert_eq!(
            canon(expected).as_deref(),
            Some(expected),
            "output: {expected:?}"
        );
    }

    fn assert_invalid(input: &str) {
        assert_eq!(canon(input), None, "input: {input:?}");
    }

    #[test]
    fn sorts_object_keys() {
        assert_canon(
            r#"{"b":1,"a":2,"c":{"z":[],"y":{}}}"#,
            r#"{"a":2,"b":1,"c":{"y":{},"z":[]}}"#,
        );
        assert_eq!(canon(r#"{"a":1,"b":2}"#), canon(r#"{"b":2,"a":1}"#));
        // Array order is significant.
        assert_ne!(canon("[1,2]"), canon("[2,1]"));
    }

    #[test]
    fn the_exponent_bound_applies_to_the_canonical_form_too() {
        // The leading digit's exponent is 10^15 + 1: refused, rather than written as a form
        // that is not valid input.
        assert_invalid("10e1000000000000000");
        assert_invalid("0.01e-999999999999999");
        assert_canon("1e1000000000000000", "1e+1000000000000000");
        assert_canon("0.1e1000000000000000", "1e+999999999999999");
        assert_canon("1e-1000000000000000", "1e-1000000000000000");
    }

    #[test]
    fn strips_whitespace() {
        assert_canon(
            " \t\r\n{ \"a\" : [ 1 , true ,\nfalse , null , \"x y\" ] , \"b\" : { } } \n",
            r#"{"a":[1,true,false,null,"x y"],"b":{}}"#,
        );
        assert_canon("  \"top\"  ", r#""top""#);
        assert_canon("[ ]", "[]");
        assert_canon("{ }", "{}");
    }

    #[test]
    fn top_level_scalars() {
        assert_canon("true", "true");
        assert_canon("false", "false");
        assert_canon("null", "null");
        assert_canon("42", "42");
        assert_canon(r#""s""#, r#""s""#);
    }

    #[test]
    fn escapes_are_equivalent() {
        assert_eq!(canon(r#""\u00e9""#), canon("\"é\""));
        assert_eq!(canon(r#""\/""#), canon(r#""/""#));
        assert_eq!(canon(r#""\u0041""#), canon(r#""A""#));
        assert_eq!(canon(r#""\ud83d\ude00""#), canon("\"😀\""));
        assert_eq!(canon(r#"{"\u0061":1}"#), canon(r#"{"a":1}"#));
        assert_canon(r#""\u0008\u0009\u000A\u000c\u000D""#, r#""\b\t\n\f\r""#);
        assert_canon(r#""\u0000\u001F\u007f""#, "\"\\u0000\\u001f\u{7f}\"");
        assert_canon(r#""\"\\""#, r#""\"\\""#);
        assert_canon(r#""\u00e9\u20AC""#, "\"é€\"");
    }

    #[test]
    fn rfc8785_string_and_literal_sample() {
        // RFC 8785 section 3.2.2 sample (strings and literals).
        assert_canon(
            r#"{"literals": [null, true, false], "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"}"#,
            "{\"literals\":[null,true,false],\"string\":\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}",
        );
    }

    #[test]
    fn rfc8785_numbers_sample_with_exact_deviation() {
        // RFC 8785 gives 333333333.3333333 for the first number (double
        // rounding); we keep the exact decimal.
        assert_canon(
            "[333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001]",
            "[333333333.33333329,1e+30,4.5,0.002,1e-27]",
        );
    }

    #[test]
    fn number_equivalences() {
        for one in [
            "1", "1.0", "1.00", "10e-1", "0.1e1", "1e0", "1E+0", "100e-2", "0.01E2",
        ] {
            assert_canon(one, "1");
        }
        for hundred in ["100", "1e2", "1E2", "10e1", "100.000", "0.1e3", "1000e-1"] {
            assert_canon(hundred, "100");
        }
        for zero in ["0", "-0", "0.0", "0.000", "0e5", "-0.0e-7", "0E+99", "-0e0"] {
            assert_canon(zero, "0");
        }
        assert_canon("-1.50", "-1.5");
        assert_canon("12.5", "12.5");
        assert_canon("125e-1", "12.5");
        assert_canon("0.000123", "0.000123");
        assert_canon("1.23e-4", "0.000123");
        assert_canon("0.000001", "0.000001");
        assert_canon("1e-6", "0.000001");
        assert_canon("1e-7", "1e-7");
        assert_canon("0.00000015", "1.5e-7");
        assert_canon("-15e-8", "-1.5e-7");
        assert_canon("1e20", "100000000000000000000");
        assert_canon("123456789012345678901", "123456789012345678901");
        assert_canon("1e21", "1e+21");
        assert_canon("1234567890123456789012", "1.234567890123456789012e+21");
        assert_canon("-1e21", "-1e+21");
        assert_canon("1.5e300", "1.5e+300");
        assert_canon("1e1000000000000000", "1e+1000000000000000");
        assert_canon("1e-1000000000000000", "1e-1000000000000000");
        assert_canon("123.456e1", "1234.56");
        // A fractional part with a large integer part stays plain.
        assert_canon("1234567890123456789012.5", "1234567890123456789012.5");
        assert_canon("9007199254740993", "9007199254740993");
    }

    #[test]
    fn distinct_big_integers_differ() {
        let a = canon("12345678901234567890").unwrap();
        let b = canon("12345678901234567891").unwrap();
        assert_eq!(a, "12345678901234567890");
        assert_eq!(b, "12345678901234567891");
        assert_ne!(a, b);
        assert_ne!(canon("0.1"), canon("0.10000000000000001"));
        assert_ne!(
            canon("1e400"),
            canon("10000000000000000000000000000000000000000000000000000000001e342")
        );
    }

    #[test]
    fn rejects_invalid_numbers() {
        for bad in [
            "01",
            "-01",
            "00",
            "+1",
            ".5",
            "1.",
            "-",
            "1e",
            "1e+",
            "1e-",
            "1.e5",
            "-.5",
            "NaN",
            "Infinity",
            "-Infinity",
            "0x10",
            "1_000",
            "1 2",
            "--1",
            "1ee5",
            "1e5.5",
            "[01]",
            "1e1000000000000001",
            "1e-1000000000000001",
            "1e99999999999999999999999999999999999999999",
        ] {
            assert_invalid(bad);
        }
    }

    #[test]
    fn rejects_duplicate_keys() {
        assert_invalid(r#"{"a":1,"a":1}"#);
        assert_invalid(r#"{"a":1,"b":2,"a":3}"#);
        assert_invalid(r#"{"a":1,"\u0061":2}"#);
        assert_invalid(r#"{"x":{"k":1,"k":2}}"#);
        // Same key in different objects is fine.
        assert_canon(r#"[{"a":1},{"a":2}]"#, r#"[{"a":1},{"a":2}]"#);
    }

    #[test]
    fn rejects_bad_strings() {
        assert_invalid(r#""\ud800""#);
        assert_invalid(r#""\udc00""#);
        assert_invalid(r#""\ud800x""#);
        assert_invalid(r#""\ud800\u0041""#);
        assert_invalid(r#""\ude00\ud83d""#);
        assert_invalid(r#"{"\ud800":1}"#);
        assert_invalid("\"a\u{1}b\"");
        assert_invalid("\"a\nb\"");
        assert_invalid(r#""\x41""#);
        assert_invalid(r#""\u12""#);
        assert_invalid(r#""\u12g4""#);
        assert_invalid(r#""\'""#);
        assert_invalid("\"unterminated");
        assert_invalid("\"unterminated\\");
        assert_eq!(canonicalize(b"\"\xff\""), None);
        assert_eq!(canonicalize(b"\"\xed\xa0\x80\""), None); // UTF-8 encoded surrogate
        assert_eq!(canonicalize(b"\"\xc3\""), None);
    }

    #[test]
    fn rejects_other_malformed_input() {
        for bad in [
            "",
            " ",
            "{",
            "}",
            "[",
            "]",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{"a" 1}"#,
            "{a:1}",
            "{1:1}",
            "[1 2]",
            "tru",
            "truex",
            "nul",
            "True",
            "[1]]",
            "[1] x",
            "{} {}",
            "'a'",
            "/* c */ 1",
            "1 // c",
            "[\u{a0}1]",
        ] {
            assert_invalid(bad);
        }
        // Byte order mark is not allowed.
        assert_eq!(canonicalize(b"\xef\xbb\xbf{}"), None);
        assert_eq!(canonicalize(b"{}\x00"), None);
    }

    #[test]
    fn depth_limit() {
        let nested = |depth: usize, open: &str, close: &str| {
            let mut s = open.repeat(depth);
            s.push_str(&close.repeat(depth));
            s
        };
        let ok = nested(MAX_DEPTH, "[", "]");
        assert_eq!(canon(&ok).as_deref(), Some(ok.as_str()));
        assert_invalid(&nested(MAX_DEPTH + 1, "[", "]"));
        let ok = format!("{}1{}", r#"{"a":"#.repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(canon(&ok).as_deref(), Some(ok.as_str()));
        let too_deep = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_invalid(&too_deep);
        // Huge unbalanced inputs fail fast without exhausting the stack.
        assert_invalid(&"[".repeat(1_000_000));
        assert_invalid(&r#"{"a":["#.repeat(200_000));
    }

    #[test]
    fn utf16_key_order_rfc8785() {
        // RFC 8785 section 3.2.3.
        let input = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let expected = concat!(
            "{\"\\r\":\"Carriage Return\",",
            "\"1\":\"One\",",
            "\"\u{80}\":\"Control\",",
            "\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",",
            "\"\u{20ac}\":\"Euro Sign\",",
            "\"\u{1f600}\":\"Emoji: Grinning Face\",",
            "\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}",
        );
        assert_canon(input, expected);
    }

    const SAMPLES: &[&str] = &[
        r#"{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}"#,
        r#"[1,2.0,"x",-0.5e-10,1E400,{"b":[true,false,null],"a":"\u00e9\n"}]"#,
        r#"{"":0,"\u0000":"\u001f","\ud83d\ude00":[[[]]],"aa":{"a":{}}}"#,
        "0.000001",
        "-123456789012345678901234567890.000000000000000000001e-3",
        "\"\\\\\\\"\\/\\b\\f\\n\\r\\t\"",
        "[1e21,1e20,1e-7,1e-6,12.5,-0,100]",
        "  {\"k\" : [ 1 , 2 ] }  ",
    ];

    #[test]
    fn idempotent_on_samples() {
        for sample in SAMPLES {
            let once = canonicalize(sample.as_bytes()).unwrap();
            let twice = canonicalize(&once).unwrap();
            assert_eq!(once, twice, "sample: {sample:?}");
        }
    }

    /// xorshift64* pseudo-random generator, deterministic for reproducible fuzzing.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    fn check(input: &[u8]) -> bool {
        match canonicalize(input) {
            Some(once) => {
                let twice = canonicalize(&once);
                assert_eq!(twice.as_deref(), Some(once.as_slice()), "input: {input:?}");
                assert!(std::str::from_utf8(&once).is_ok());
                true
            }
            None => false,
        }
    }

    #[test]
    fn fuzz_no_panic_and_idempotent() {
        const ALPHABET: &[u8] =
            b"{}[]\",:\\/ \t\n\r0123456789-+.eEtrufalsnbu\x00\x1f\x7f\xc3\xa9\xed\xa0\x80\xff";
        const TOKENS: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\\u",
            "\\ud83d",
            "\\ude00",
            "\\n",
            "0",
            "-",
            "1",
            ".",
            "e",
            "E+",
            "e-",
            "9",
            "true",
            "false",
            "null",
            " ",
            "\"a\"",
            "\"\\u00e9\"",
            "1e21",
            "0.000001",
            "é",
            "😀",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut valid = 0usize;
        for i in 0..20_000 {
            let input: Vec<u8> = match i % 3 {
                // Random bytes from a JSON-flavoured alphabet.
                0 => (0..rng.below(40)).map(|_| *rng.pick(ALPHABET)).collect(),
                // Random token soup.
                1 => (0..rng.below(20))
                    .flat_map(|_| rng.pick(TOKENS).as_bytes().to_vec())
                    .collect(),
                // Mutations of valid samples.
                _ => {
                    let mut bytes = rng.pick(SAMPLES).as_bytes().to_vec();
                    for _ in 0..=rng.below(3) {
                        let pos = rng.below(bytes.len() + 1);
                        match rng.below(4) {
                            0 if pos < bytes.len() => {
                                bytes.remove(pos);
                            }
                            1 if pos < bytes.len() => bytes[pos] = *rng.pick(ALPHABET),
                            2 => {
                                for (k, b) in rng.pick(TOKENS).bytes().enumerate() {
                                    bytes.insert(pos + k, b);
                                }
                            }
                            _ => {
                                let end = pos + rng.below(bytes.len() - pos + 1);
                                let copy = bytes[pos..end].to_vec();
                                bytes.splice(pos..pos, copy);
                            }
                        }
                    }
                    bytes
                }
            };
            if check(&input) {
                valid += 1;
            }
        }
        // The generator must exercise the success path too.
        assert!(valid > 500, "only {valid} valid inputs");
    }
}
