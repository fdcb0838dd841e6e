//! Making stored text safe to print on an operator's terminal.
//!
//! Why: scopes, keys, header names and values and bodies come from clients (and a damaged or
//! foreign file can hold any bytes), and the operator tool prints them. Printed raw, an escape
//! sequence (ESC, CSI, OSC 8 links, 8-bit C1 controls) would drive the terminal: recolour,
//! retitle, hide or fake output; a bidi override (U+202E) or another invisible format character
//! would make the text read differently from what it is. Invariant: the text this module
//! returns holds no C0 or C1 control character, no DEL, no bidi control, no other invisible
//! format character (Unicode category Cf) and no line or paragraph separator; each is written
//! as the visible text `\u{…}` (`\n`, `\r`, `\t` for those three), a backslash is doubled so
//! that an escape cannot be faked, and bytes that are not UTF-8 are written `\xNN`. JSON
//! output keeps JSON's own escapes and writes the same characters as `\uXXXX`, which every
//! JSON reader decodes back to the stored text.

use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as it is.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || is_format(c)
}

/// Unicode's format characters (category Cf, as of Unicode 16): the bidi embeddings,
/// overrides, isolates and marks, zero-width characters, invisible operators, the byte order
/// mark, interlinear annotation controls, tag characters, and the rest. None of them shows a
/// glyph; several change how the text around them is displayed.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// `s` with every character a terminal would act on, or that would not show, escaped.
pub(crate) fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

/// `b` as [`text`], with each byte that is not part of valid UTF-8 written `\xNN`.
pub(crate) fn bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        push_escaped(&mut out, chunk.valid());
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// A JSON document, serialized, with every character [`text`] escapes written as a JSON
/// `\uXXXX` escape. serde_json already escapes the C0 controls, `"` and `\`; it leaves DEL, the
/// C1 controls, bidi controls and other format characters raw, which would reach the terminal.
/// Outside strings JSON text is ASCII without controls, so only string contents change, and
/// they decode to the same text.
pub(crate) fn json(doc: &serde_json::Value) -> String {
    json_text(&doc.to_string())
}

/// Serialized JSON (one document, or JSON Lines) escaped as [`json`] escapes it: for text that
/// is JSON already, such as an export read from the admin interface.
pub(crate) fn json_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if unsafe_char(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_and_invisible_characters_are_escaped() {
        assert_eq!(text("acct_42"), "acct_42");
        assert_eq!(text("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert_eq!(text("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(text("del\u{7f}"), "del\\u{7f}");
        assert_eq!(text("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(text("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert_eq!(
            text("zero\u{200b}width\u{feff}"),
            "zero\\u{200b}width\\u{feff}"
        );
        assert_eq!(text("tag\u{e0041}"), "tag\\u{e0041}");
        assert_eq!(text("l1\nl2\r\tx\u{2028}"), "l1\\nl2\\r\\tx\\u{2028}");
        assert_eq!(text("back\\slash"), "back\\\\slash");
        assert_eq!(text("fake \\u{1b}"), "fake \\\\u{1b}");
        // Visible non-ASCII text stays as it is.
        assert_eq!(text("café, 東京, ✓"), "café, 東京, ✓");
        // An OSC 8 hyperlink: ESC ] 8 ; ; url ESC \ text ESC ] 8 ; ; ESC \
        let osc = "\u{1b}]8;;http://x\u{1b}\\click\u{1b}]8;;\u{1b}\\";
        assert!(!text(osc).contains('\u{1b}'));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_written_as_hex() {
        assert_eq!(bytes(b"ok"), "ok");
        assert_eq!(bytes(&[0, 255, b'a', 0x1b]), "\\u{0}\\xffa\\u{1b}");
        assert_eq!(bytes("é".as_bytes()), "é");
        assert_eq!(bytes(&[0xc3]), "\\xc3");
    }

    #[test]
    fn json_escapes_what_serde_json_leaves_raw_and_still_decodes() {
        let s = "\u{1b}[2J\u{7f}\u{9b}\u{202e}\u{e0041}\\\"ok";
        let doc = serde_json::json!({ "scope": s });
        let out = json(&doc);
        assert!(out.chars().all(|c| !unsafe_char(c)), "{out}");
        assert!(
            out.contains("\\u202e") && out.contains("\\udb40\\udc41"),
            "{out}"
        );
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["scope"], s);
    }
}
