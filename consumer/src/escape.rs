//! Escaping of untrusted text into a double-quoted, single-line string literal.
//!
//! Both output formats use the same JSON string syntax for quoted values, so one escaper keeps
//! them in step. Beyond what JSON requires (`"`, `\` and C0 controls), it also escapes the
//! characters that terminals or line-oriented tools treat as control or line breaks: DEL, the C1
//! controls (U+0080..U+009F, which include the 8-bit CSI that starts an ANSI sequence) and
//! U+2028 / U+2029. No payload can therefore end its line, forge a field or drive a terminal.

use crate::swar;

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
/// input (the JSON scanner) need no second check. Runs of plain bytes are found eight at a
/// time, which suits text where special bytes are rare.
#[inline]
pub fn write_escaped(out: &mut Vec<u8>, text: &[u8]) {
    let mut rest = text;
    loop {
        rest = &rest[copy_plain_run(out, rest)..];
        if rest.is_empty() {
            return;
        }
        rest = &rest[write_special(out, rest)..];
    }
}

/// The same output as [`write_escaped`], faster for text whose special bytes are a few bytes
/// apart, as the quotes of a JSON object are.
///
/// Each word of input is stored whole; each `"` or `\\` in it becomes a backslash followed by
/// the rest of the word, stored again one byte further on. Non-ASCII bytes that are plain stay
/// where the first store put them. At any other special byte the rest goes to
/// [`write_escaped`].
pub(crate) fn write_escaped_dense(out: &mut Vec<u8>, text: &[u8]) {
    let start = out.len();
    // Handled here, the text at most doubles; the whole-word stores reach at most 8 bytes
    // further. The excess is cut off below.
    out.resize(start + 2 * text.len() + 8, 0);
    let buffer = &mut out[start..];
    let mut written = 0;
    let mut at = 0;
    while at < text.len() {
        let (word, len) = swar::load(&text[at..]);
        buffer[written..written + 8].copy_from_slice(&word.to_le_bytes());
        let mut hits = special_candidates(word) & swar::lanes_below(len);
        let mut inserted = 0;
        while hits != 0 {
            let lane = swar::first_lane(hits);
            let rest_of_word = word >> (8 * lane);
            match rest_of_word as u8 {
                b'"' | b'\\' => {
                    let backslash = written + lane + inserted;
                    buffer[backslash] = b'\\';
                    buffer[backslash + 1..backslash + 9]
                        .copy_from_slice(&rest_of_word.to_le_bytes());
                    inserted += 1;
                }
                _ if !needs_escape_at(text, at + lane) => {}
                _ => {
                    out.truncate(start + written + lane + inserted);
                    write_escaped(out, &text[at + lane..]);
                    return;
                }
            }
            hits &= hits - 1;
        }
        written += len + inserted;
        at += len;
    }
    out.truncate(start + written);
}

/// Appends the run of bytes at the start of `text` that the escaper copies as they are (class
/// [`Class::Plain`]) and returns its length; the run is found eight bytes at a time.
#[inline]
fn copy_plain_run(out: &mut Vec<u8>, text: &[u8]) -> usize {
    swar::copy_run(out, text, special_candidates, is_special)
}

/// The length of the run of bytes at the start of `text` that the escaper would copy as they
/// are; for the JSON scanner, which checks strings and copies them later.
#[inline]
pub(crate) fn plain_prefix_len(text: &[u8]) -> usize {
    swar::run_len(text, special_candidates, is_special)
}

#[inline(always)]
fn is_special(byte: u8) -> bool {
    CLASS[byte as usize] != Class::Plain
}

/// Writes the escaped form of the sequence that starts `text` (with a byte that is not
/// [`Class::Plain`]) and returns how many bytes it consumed.
#[inline]
fn write_special(out: &mut Vec<u8>, text: &[u8]) -> usize {
    let byte = text[0];
    match CLASS[byte as usize] {
        // Not reached (a run of plain bytes ends before this one), but correct regardless.
        Class::Plain => {
            out.push(byte);
            1
        }
        Class::Escape => {
            write_byte_escape(out, byte);
            1
        }
        Class::MaybeC1 => match text.get(1) {
            Some(&second @ 0x80..=0x9f) => {
                write_unicode_escape(out, u16::from(second));
                2
            }
            _ => {
                out.push(byte);
                1
            }
        },
        Class::MaybeLineSeparator => match (text.get(1), text.get(2)) {
            (Some(0x80), Some(&third @ (0xa8 | 0xa9))) => {
                write_unicode_escape(out, 0x2000 | u16::from(third - 0x80));
                3
            }
            _ => {
                out.push(byte);
                1
            }
        },
    }
}

/// The lanes of `word` whose byte may not be [`Class::Plain`]: exactly the ASCII bytes below
/// 0x20, `"`, `\\` and DEL, and every non-ASCII byte (of which only the lead bytes 0xC2 and
/// 0xE2 are special, settled by the table). Plain ASCII text runs at a word per step.
#[inline(always)]
fn special_candidates(word: u64) -> u64 {
    let low7 = swar::low7(word);
    let ascii_plain =
        swar::low7_ge(low7, 0x20) & swar::low7_ne(low7, b'"') & swar::low7_ne(low7, b'\\');
    (word | swar::low7_ge(low7, 0x7f) | !ascii_plain) & swar::HIGH
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
        let quoted = String::from_utf8(out).unwrap();
        assert_eq!(quoted, format!("\"{}\"", escaped(text)));
        quoted
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

    /// The escaper's contract, one character at a time.
    fn reference_escaped(text: &str) -> String {
        text.chars()
            .map(|c| match c {
                '"' => "\\\"".to_owned(),
                '\\' => "\\\\".to_owned(),
                '\n' => "\\n".to_owned(),
                '\r' => "\\r".to_owned(),
                '\t' => "\\t".to_owned(),
                '\u{8}' => "\\b".to_owned(),
                '\u{c}' => "\\f".to_owned(),
                '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => {
                    format!("\\u{:04x}", u32::from(c))
                }
                _ => c.to_string(),
            })
            .collect()
    }

    fn escaped(text: &str) -> String {
        let mut out = b"before".to_vec();
        write_escaped(&mut out, text.as_bytes());
        let mut dense = b"before".to_vec();
        write_escaped_dense(&mut dense, text.as_bytes());
        assert_eq!(out, dense, "both escapers agree on {text:?}");
        String::from_utf8(out.split_off(6)).unwrap()
    }

    #[test]
    fn plain_runs_end_exactly_where_the_byte_table_says() {
        let special = |byte: u8| CLASS[byte as usize] != Class::Plain;
        for byte in 0..=255u8 {
            let flagged = special_candidates(u64::from_le_bytes([byte; 8])) == swar::HIGH;
            assert!(flagged || !special(byte), "{byte:#04x} is special");
            assert!(
                !flagged || special(byte) || byte >= 0x80,
                "{byte:#04x} is plain ASCII"
            );
        }
        swar::tests::agrees_with(special_candidates, special, special);
    }

    #[test]
    fn escaper_agrees_with_the_reference_on_every_character_class() {
        // Every one- and two-byte character, the neighbours of U+2028/9 and other E2 and C2
        // sequences, and longer characters, each alone and in random mixes of all lengths.
        let mut alphabet: Vec<char> = ('\0'..='\u{7ff}').collect();
        alphabet.extend('\u{2000}'..='\u{203f}');
        alphabet.extend([
            '\u{e000}',
            '\u{fffd}',
            '\u{1f600}',
            '\u{10ffff}',
            '\u{4e2d}',
        ]);
        for &c in &alphabet {
            let text = format!("ab{c}cdefghij{c}");
            assert_eq!(escaped(&text), reference_escaped(&text), "{c:?}");
        }
        let mut rng = fastrand::Rng::with_seed(29);
        for _ in 0..50_000 {
            let text: String = (0..rng.usize(..48))
                .map(|_| match rng.u8(..4) {
                    0 => alphabet[rng.usize(..alphabet.len())],
                    _ => char::from(rng.u8(0x20..0x7f)),
                })
                .collect();
            assert_eq!(escaped(&text), reference_escaped(&text), "{text:?}");
        }
    }

    #[test]
    fn output_is_a_json_string_that_round_trips() {
        let nasty = "x\"}\n{\"forged\":true} key=value \u{0}\u{1f}\u{85}\u{a0}";
        let decoded: String = serde_json::from_str(&quoted(nasty)).unwrap();
        assert_eq!(decoded, nasty);
        assert!(!quoted(nasty).contains('\n'));
    }
}
