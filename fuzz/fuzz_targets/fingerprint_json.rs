//! Canonical JSON and the request fingerprint built on it.
//!
//! The input's first byte picks a mode. Raw mode hands the rest to `canonicalize` as is: it
//! must not panic, and what it accepts it must map to a fixed point (canonicalising the
//! canonical form changes nothing) with the same fingerprint. Structured mode builds a JSON value
//! from the input and writes it twice: once plainly, once re-serialised the way another client
//! might (members in another order, whitespace everywhere, characters escaped as `\uXXXX`, the
//! same number spelled another way). Equal values must give equal canonical bytes and equal
//! fingerprints; a value with one leaf changed must give different canonical bytes.
#![no_main]

use std::fmt::Write as _;

use idemstore::{Fingerprint, canonicalize};
use idemstore_fuzz::Src;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone)]
enum Value {
    Null,
    Bool(bool),
    /// `-`? `mantissa` × 10^`exp`.
    Num {
        negative: bool,
        mantissa: u64,
        exp: i32,
    },
    Str(String),
    Arr(Vec<Value>),
    /// Member names are unique.
    Obj(Vec<(String, Value)>),
}

const CHARS: &[char] = &[
    'a',
    'Z',
    '0',
    ' ',
    '"',
    '\\',
    '/',
    '\n',
    '\t',
    '\u{1}',
    '\u{1f}',
    '\u{7f}',
    'é',
    '€',
    '\u{ffff}',
    '\u{10000}',
    '😀',
    '\u{fffd}',
    '\u{2028}',
    'ÿ',
];

fn gen_string(src: &mut Src) -> String {
    let len = src.below(6);
    (0..len)
        .map(|_| CHARS[usize::from(src.below(CHARS.len() as u8))])
        .collect()
}

fn gen_value(src: &mut Src, depth: u32) -> Value {
    let kind = if depth >= 6 {
        src.below(4)
    } else {
        src.below(6)
    };
    match kind {
        0 => Value::Null,
        1 => Value::Bool(src.byte() & 1 == 1),
        2 => {
            let negative = src.byte() & 1 == 1;
            let mantissa = match src.below(4) {
                0 => 0,
                1 => u64::from(src.byte()),
                2 => u64::from(u16::from_le_bytes([src.byte(), src.byte()])),
                _ => u64::from_le_bytes(std::array::from_fn(|_| src.byte())) >> src.below(64),
            };
            let exp = i32::from(src.byte() as i8) * if src.byte() & 1 == 1 { 4 } else { 1 };
            Value::Num {
                negative,
                mantissa,
                exp,
            }
        }
        3 => Value::Str(gen_string(src)),
        4 => {
            let n = src.below(5);
            Value::Arr((0..n).map(|_| gen_value(src, depth + 1)).collect())
        }
        _ => {
            let n = src.below(5);
            let mut members: Vec<(String, Value)> = Vec::new();
            for _ in 0..n {
                let name = gen_string(src);
                let value = gen_value(src, depth + 1);
                if members.iter().all(|(m, _)| *m != name) {
                    members.push((name, value));
                }
            }
            Value::Obj(members)
        }
    }
}

/// Writes a string with only the escapes JSON requires.
fn plain_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes a string escaping characters the way another serialiser might.
fn noisy_string(out: &mut String, s: &str, src: &mut Src) {
    out.push('"');
    for c in s.chars() {
        let escape = src.byte() & 1 == 1;
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if escape => out.push_str("\\/"),
            '\n' if escape => out.push_str("\\n"),
            '\t' if escape => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || escape => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if src.byte() & 1 == 1 {
                        let _ = write!(out, "\\u{unit:04X}");
                    } else {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Spells `mantissa` × 10^`exp` plainly: the digits, then an exponent if it is not zero.
fn plain_number(out: &mut String, negative: bool, mantissa: u64, exp: i32) {
    if negative {
        out.push('-');
    }
    let _ = write!(out, "{mantissa}");
    if exp != 0 {
        let _ = write!(out, "e{exp}");
    }
}

/// Spells the same number another way: trailing zeros moved between the digits and the
/// exponent, a decimal point, `E`, `+`, a negative zero.
fn noisy_number(out: &mut String, negative: bool, mantissa: u64, exp: i32, src: &mut Src) {
    let zeros = usize::from(src.below(4));
    let mut digits = mantissa.to_string();
    let mut exp = i64::from(exp);
    if mantissa != 0 {
        digits.extend(std::iter::repeat_n('0', zeros));
        exp -= zeros as i64;
    } else if src.byte() & 1 == 1 {
        // Zero under any sign and exponent is zero.
        out.push('-');
    }
    if negative && mantissa != 0 {
        out.push('-');
    }
    // Move the decimal point `point` places left, keeping the value.
    let point = usize::from(src.below(8)).min(digits.len().saturating_sub(1));
    if point > 0 {
        let (int, frac) = digits.split_at(digits.len() - point);
        let _ = write!(out, "{int}.{frac}");
        exp += point as i64;
    } else {
        out.push_str(&digits);
    }
    if exp != 0 || src.byte() & 1 == 1 {
        out.push(if src.byte() & 1 == 1 { 'E' } else { 'e' });
        if exp >= 0 && src.byte() & 1 == 1 {
            out.push('+');
        }
        let _ = write!(out, "{exp}");
    }
}

fn plain(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Num {
            negative,
            mantissa,
            exp,
        } => plain_number(out, *negative, *mantissa, *exp),
        Value::Str(s) => plain_string(out, s),
        Value::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                plain(out, item);
            }
            out.push(']');
        }
        Value::Obj(members) => {
            out.push('{');
            for (i, (name, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                plain_string(out, name);
                out.push(':');
                plain(out, value);
            }
            out.push('}');
        }
    }
}

fn space(out: &mut String, src: &mut Src) {
    for _ in 0..src.below(3) {
        out.push([' ', '\t', '\n', '\r'][usize::from(src.below(4))]);
    }
}

fn noisy(out: &mut String, v: &Value, src: &mut Src) {
    space(out, src);
    match v {
        Value::Null | Value::Bool(_) => plain(out, v),
        Value::Num {
            negative,
            mantissa,
            exp,
        } => noisy_number(out, *negative, *mantissa, *exp, src),
        Value::Str(s) => noisy_string(out, s, src),
        Value::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                noisy(out, item, src);
            }
            if items.is_empty() {
                space(out, src);
            }
            out.push(']');
        }
        Value::Obj(members) => {
            out.push('{');
            let mut order: Vec<usize> = (0..members.len()).collect();
            if !order.is_empty() {
                let shift = usize::from(src.byte()) % order.len();
                order.rotate_left(shift);
                if src.byte() & 1 == 1 {
                    order.reverse();
                }
            }
            for (i, &m) in order.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let (name, value) = &members[m];
                space(out, src);
                noisy_string(out, name, src);
                space(out, src);
                out.push(':');
                noisy(out, value, src);
            }
            if members.is_empty() {
                space(out, src);
            }
            out.push('}');
        }
    }
    space(out, src);
}

/// Changes one leaf of `v` (the first one met, depth first) so that the value differs.
fn change_one_leaf(v: &mut Value) {
    match v {
        Value::Null => *v = Value::Bool(false),
        Value::Bool(b) => *b = !*b,
        Value::Num { mantissa, .. } => *mantissa = mantissa.wrapping_add(1),
        Value::Str(s) => s.push('x'),
        Value::Arr(items) => match items.first_mut() {
            Some(first) => change_one_leaf(first),
            None => items.push(Value::Null),
        },
        Value::Obj(members) => match members.first_mut() {
            Some((_, first)) => change_one_leaf(first),
            None => members.push((String::new(), Value::Null)),
        },
    }
}

fn fingerprint(body: &[u8]) -> Fingerprint {
    Fingerprint::of_request("POST", "/v1/x", Some("application/json"), body)
}

/// A canonical form is valid JSON and its own canonical form.
fn check_fixed_point(canonical: &[u8]) {
    let again = canonicalize(canonical);
    assert_eq!(
        again.as_deref(),
        Some(canonical),
        "canonicalising twice changed {:?}",
        String::from_utf8_lossy(canonical)
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Some(canonical) = canonicalize(rest) {
            check_fixed_point(&canonical);
            assert_eq!(fingerprint(rest), fingerprint(&canonical));
        }
        return;
    }
    let mut src = Src(rest);
    let value = gen_value(&mut src, 0);
    let mut a = String::new();
    plain(&mut a, &value);
    let mut b = String::new();
    noisy(&mut b, &value, &mut src);
    let (Some(ca), Some(cb)) = (canonicalize(a.as_bytes()), canonicalize(b.as_bytes())) else {
        // Exponents the generator writes stay far below the parser's limit, nesting below 128.
        panic!("valid JSON refused: {a:?} / {b:?}");
    };
    assert_eq!(
        String::from_utf8_lossy(&ca),
        String::from_utf8_lossy(&cb),
        "one value, two canonical forms: {a:?} / {b:?}"
    );
    check_fixed_point(&ca);
    assert_eq!(fingerprint(a.as_bytes()), fingerprint(b.as_bytes()));
    let mut other = value.clone();
    change_one_leaf(&mut other);
    let mut c = String::new();
    plain(&mut c, &other);
    assert_ne!(
        canonicalize(c.as_bytes()),
        Some(ca),
        "two values, one canonical form: {a:?} / {c:?}"
    );
});
