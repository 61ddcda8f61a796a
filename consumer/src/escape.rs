//! Escaping of untrusted text into a double-quoted, single-line string literal.
//!
//! Both output formats use the same JSON string syntax for quoted values, so one escaper keeps
//! them in step. Beyond what JSON requires (`"`, `\` and C0 controls), it also escapes the
//! characters that terminals or line-oriented tools treat as control or line breaks: DEL, the C1
//! controls (U+0080..U+009F, which include the 8-bit CSI that starts an ANSI sequence) and
//! U+2028 / U+2029. No payload can therefore end its line, forge a field or drive a terminal.

/// What the escaper must do with one byte of UTF-8 input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as it is.
    Plain,
    /// Written as a short escape (`\n`, `\"`, ...) or `\u00XX`.
    Escape,
    /// First byte of a two-byte sequence that may be a C1 control (0xC2).
    MaybeC1,
    /// First byte of a three-byte sequence that may be U+2028 / U+2029 (0xE2).
    MaybeLineSeparator,
}

const fn class_table() -> [Class; 256] {
    let mut table = [Class::Plain; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = Class::Escape;
        byte += 1;
    }
    table[b'"' as usize] = Class::Escape;
    table[b'\\' as usize] = Class::Escape;
    table[0x7f] = Class::Escape;
    table[0xc2] = Class::MaybeC1;
    table[0xe2] = Class::MaybeLineSeparator;
    table
}

static CLASS: [Class; 256] = class_table();

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `text` as a quoted, escaped string literal (quotes included).
#[inline]
pub fn write_quoted(out: &mut Vec<u8>, text: &str) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    write_escaped(out, text.as_bytes());
    out.push(b'"');
}

/// Appends the escaped form of `text` without surrounding quotes.
///
/// `text` must be valid UTF-8; it is taken as bytes so that callers holding already-validated
/// input (the JSON scanner) need no second check.
#[inline]
pub fn write_escaped(out: &mut Vec<u8>, text: &[u8]) {
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        let byte = text[i];
        match CLASS[byte as usize] {
            Class::Plain => {
                i += 1;
            }
            Class::Escape => {
                out.extend_from_slice(&text[start..i]);
                write_byte_escape(out, byte);
                i += 1;
                start = i;
            }
            Class::MaybeC1 => match text.get(i + 1) {
                Some(&second @ 0x80..=0x9f) => {
                    out.extend_from_slice(&text[start..i]);
                    write_unicode_escape(out, u16::from(second));
                    i += 2;
                    start = i;
                }
                _ => i += 1,
            },
            Class::MaybeLineSeparator => match (text.get(i + 1), text.get(i + 2)) {
                (Some(0x80), Some(&third @ (0xa8 | 0xa9))) => {
                    out.extend_from_slice(&text[start..i]);
                    write_unicode_escape(out, 0x2000 | u16::from(third - 0x80));
                    i += 3;
                    start = i;
                }
                _ => i += 1,
            },
        }
    }
    out.extend_from_slice(&text[start..]);
}

/// Reports whether `byte` at `index` starts a sequence the escaper would rewrite; used by the
/// JSON scanner, which copies string contents that are already escaped.
#[inline]
pub(crate) fn needs_escape_at(text: &[u8], index: usize) -> bool {
    match CLASS[text[index] as usize] {
        Class::Plain => false,
        Class::Escape => true,
        Class::MaybeC1 => matches!(text.get(index + 1), Some(0x80..=0x9f)),
        Class::MaybeLineSeparator => {
            matches!(
                (text.get(index + 1), text.get(index + 2)),
                (Some(0x80), Some(0xa8 | 0xa9))
            )
        }
    }
}

/// True for bytes that are never copied without a look: the scanner's fast path skips the rest.
#[inline]
pub(crate) fn is_special(byte: u8) -> bool {
    CLASS[byte as usize] != Class::Plain
}

#[inline]
fn write_byte_escape(out: &mut Vec<u8>, byte: u8) {
    let short = match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        _ => return write_unicode_escape(out, u16::from(byte)),
    };
    out.extend_from_slice(&[b'\\', short]);
}

#[inline]
pub(crate) fn write_unicode_escape(out: &mut Vec<u8>, unit: u16) {
    out.extend_from_slice(&[
        b'\\',
        b'u',
        HEX[usize::from(unit >> 12)],
        HEX[usize::from((unit >> 8) & 0xf)],
        HEX[usize::from((unit >> 4) & 0xf)],
        HEX[usize::from(unit & 0xf)],
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(text: &str) -> String {
        let mut out = Vec::new();
        write_quoted(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_text_is_copied() {
        assert_eq!(quoted("hello wörld ✓"), r#""hello wörld ✓""#);
    }

    #[test]
    fn quotes_backslashes_and_line_breaks_are_escaped() {
        assert_eq!(quoted("a\"b\\c\nd\re\tf"), r#""a\"b\\c\nd\re\tf""#);
    }

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(
            quoted("\u{1b}[31mred\u{7f}\u{9b}1m"),
            r#""\u001b[31mred\u007f\u009b1m""#
        );
    }

    #[test]
    fn unicode_line_separators_are_escaped() {
        assert_eq!(
            quoted("a\u{2028}b\u{2029}c\u{2027}"),
            "\"a\\u2028b\\u2029c\u{2027}\""
        );
    }

    #[test]
    fn output_is_a_json_string_that_round_trips() {
        let nasty = "x\"}\n{\"forged\":true} key=value \u{0}\u{1f}\u{85}\u{a0}";
        let decoded: String = serde_json::from_str(&quoted(nasty)).unwrap();
        assert_eq!(decoded, nasty);
        assert!(!quoted(nasty).contains('\n'));
    }
}
