//! A validating, compacting scanner for JSON object payloads, with redaction folded in.
//!
//! One pass over the payload checks it against the JSON grammar, copies it without insignificant
//! whitespace (so a pretty-printed event still fits on one line), replaces the values of
//! redacted keys at any depth, and records where each top-level member lies in the copy, which
//! the text format needs for the recognised event attributes. A general-purpose parser would
//! build a tree or decode strings only for us to encode them again; this scanner allocates
//! nothing once its buffers have grown to the working size.
//!
//! The copy is lazy: validated input is copied in one piece whenever the copy must differ from
//! it (at whitespace, a rewritten character or a redacted value) and at the end, so an event
//! that is already compact costs one `memcpy`, not one push per token.
//!
//! String contents stay in their escaped form, but the characters that `escape` rewrites (DEL,
//! C1 controls, U+2028/9) are rewritten here as well, so the compact copy is safe to embed in a
//! line as it is. Lone UTF-16 surrogates in `\u` escapes are rejected, because many consumers of
//! the log (serde_json, jq) refuse them and the line would become unparseable.

use std::ops::Range;

use crate::escape;
use crate::redact::{REDACTED, RedactKeys};

/// Deeper payloads are logged as raw text rather than risking the stack on hostile input.
/// serde_json reads at most 127 levels, and a JSON line holds the event one level down.
pub const MAX_DEPTH: usize = 126;

/// One top-level member of the scanned object, as ranges into [`JsonScanner::compact`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The key's contents, without the quotes, still escaped.
    pub key: Range<usize>,
    /// The value's compact JSON text (`"[REDACTED]"` when redacted).
    pub value: Range<usize>,
}

#[derive(Debug, Default)]
pub struct JsonScanner {
    compact: Vec<u8>,
    members: Vec<Member>,
}

/// The payload is not a JSON object this scanner accepts; it will be logged as raw text.
struct Invalid;

/// A string literal of the input.
struct Literal {
    /// Where its contents (without the quotes, still escaped) lie in the compact copy.
    contents: Range<usize>,
    /// Where its contents lie in the input.
    input: Range<usize>,
    /// Whether the contents hold a backslash escape, so that they differ from their decoded form.
    has_escapes: bool,
}

impl JsonScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans `input`, which the caller has checked to be valid UTF-8. Returns true when it is
    /// one JSON object (surrounding whitespace allowed); the results are then in
    /// [`Self::compact`] and [`Self::members`].
    pub fn scan_object(&mut self, input: &[u8], redact: &RedactKeys) -> bool {
        self.compact.clear();
        self.members.clear();
        let mut cursor = Cursor {
            input,
            pos: 0,
            copied: 0,
            out: &mut self.compact,
            members: &mut self.members,
            redact,
        };
        cursor.document().is_ok()
    }

    pub fn compact(&self) -> &[u8] {
        &self.compact
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }
}

struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
    /// The input before this position is in `out` already (or deliberately left out); the
    /// input from here to `pos` is valid and goes to `out` as it is at the next [`Self::sync`].
    copied: usize,
    out: &'a mut Vec<u8>,
    members: &'a mut Vec<Member>,
    redact: &'a RedactKeys,
}

impl Cursor<'_> {
    fn document(&mut self) -> Result<(), Invalid> {
        self.skip_whitespace();
        if self.peek() != Some(b'{') {
            return Err(Invalid);
        }
        self.out.reserve(self.input.len());
        self.object(1, true)?;
        self.skip_whitespace();
        if self.pos == self.input.len() {
            self.sync();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// Where the input at `pos` lands in the compact copy.
    #[inline]
    fn out_pos(&self) -> usize {
        self.out.len() + (self.pos - self.copied)
    }

    /// Copies the pending input, up to `pos`.
    #[inline]
    fn sync(&mut self) {
        self.out
            .extend_from_slice(&self.input[self.copied..self.pos]);
        self.copied = self.pos;
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        if let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.sync();
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
                self.pos += 1;
            }
            self.copied = self.pos;
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Result<(), Invalid> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), Invalid> {
        match self.peek().ok_or(Invalid)? {
            b'{' => self.object(depth + 1, false),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => Err(Invalid),
        }
    }

    fn object(&mut self, depth: usize, top_level: bool) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            return self.expect(b'}');
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(Invalid);
            }
            let key = self.string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            let value_start = self.out_pos();
            self.value(depth)?;
            if !self.redact.is_empty() && self.key_is_redacted(&key) {
                self.sync();
                self.out.truncate(value_start);
                self.out.extend_from_slice(REDACTED);
            }
            if top_level {
                self.members.push(Member {
                    key: key.contents,
                    value: value_start..self.out_pos(),
                });
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.expect(b',')?,
                Some(b'}') => return self.expect(b'}'),
                _ => return Err(Invalid),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.expect(b'[')?;
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            return self.expect(b']');
        }
        loop {
            self.skip_whitespace();
            self.value(depth)?;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.expect(b',')?,
                Some(b']') => return self.expect(b']'),
                _ => return Err(Invalid),
            }
        }
    }

    /// Validates a string literal and rewrites what the escaper would.
    #[inline(always)]
    fn string(&mut self) -> Result<Literal, Invalid> {
        self.expect(b'"')?;
        let contents_start = self.out_pos();
        let input_start = self.pos;
        let mut has_escapes = false;
        loop {
            self.pos += escape::plain_prefix_len(&self.input[self.pos..]);
            let byte = *self.input.get(self.pos).ok_or(Invalid)?;
            match byte {
                b'"' => {
                    let literal = Literal {
                        contents: contents_start..self.out_pos(),
                        input: input_start..self.pos,
                        has_escapes,
                    };
                    self.pos += 1;
                    return Ok(literal);
                }
                b'\\' => {
                    self.pos += self.escape_sequence_len()?;
                    has_escapes = true;
                }
                0x00..=0x1f => return Err(Invalid),
                _ if escape::needs_escape_at(self.input, self.pos) => {
                    let len = match byte {
                        0x7f => 1,
                        0xc2 => 2,
                        _ => 3,
                    };
                    self.sync();
                    escape::write_escaped(self.out, &self.input[self.pos..self.pos + len]);
                    self.pos += len;
                    self.copied = self.pos;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Validates the escape sequence at `pos` (which holds the backslash) and returns its length.
    fn escape_sequence_len(&self) -> Result<usize, Invalid> {
        match self.input.get(self.pos + 1).ok_or(Invalid)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(2),
            b'u' => {
                let unit = self.hex4(self.pos + 2)?;
                match unit {
                    0xd800..=0xdbff => {
                        let low_ok = self.input.get(self.pos + 6) == Some(&b'\\')
                            && self.input.get(self.pos + 7) == Some(&b'u')
                            && matches!(self.hex4(self.pos + 8)?, 0xdc00..=0xdfff);
                        if low_ok { Ok(12) } else { Err(Invalid) }
                    }
                    0xdc00..=0xdfff => Err(Invalid),
                    _ => Ok(6),
                }
            }
            _ => Err(Invalid),
        }
    }

    fn hex4(&self, at: usize) -> Result<u16, Invalid> {
        let digits = self.input.get(at..at + 4).ok_or(Invalid)?;
        digits.iter().try_fold(0u16, |unit, &digit| {
            let nibble = (digit as char).to_digit(16).ok_or(Invalid)?;
            Ok((unit << 4) | nibble as u16)
        })
    }

    fn number(&mut self) -> Result<(), Invalid> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Invalid),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.required_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.required_digits()?;
            return self.finite(start);
        }
        // Beyond f64's range (`1e400`) is valid grammar, but serde_json refuses it and the line
        // would become unparseable. Only an exponent or some 309 digits get there.
        if self.pos - start > 300 {
            return self.finite(start);
        }
        Ok(())
    }

    /// Whether the number from `start` to `pos` is within f64's range.
    fn finite(&self, start: usize) -> Result<(), Invalid> {
        let text = std::str::from_utf8(&self.input[start..self.pos]).map_err(|_| Invalid)?;
        match text.parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(()),
            _ => Err(Invalid),
        }
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), Invalid> {
        let start = self.pos;
        self.digits();
        if self.pos == start {
            Err(Invalid)
        } else {
            Ok(())
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Invalid> {
        if self.input[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn key_is_redacted(&self, key: &Literal) -> bool {
        if !key.has_escapes {
            return self.redact.matches(&self.input[key.input.clone()]);
        }
        // Rare: a key spelled with escapes (`"pass\u0077ord"`) must not slip past redaction.
        let quoted = &self.input[key.input.start - 1..key.input.end + 1];
        serde_json::from_slice::<String>(quoted)
            .map(|decoded| self.redact.matches(decoded.as_bytes()))
            .unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(input: &str, redact: &[&str]) -> Option<String> {
        let mut scanner = JsonScanner::new();
        scanner
            .scan_object(input.as_bytes(), &RedactKeys::new(redact))
            .then(|| String::from_utf8(scanner.compact().to_vec()).unwrap())
    }

    #[test]
    fn compacts_pretty_printed_objects() {
        let input = "{\n  \"id\" : \"1\",\n\t\"data\": [ 1, -2.5e+3, true, null, {} , [] ]\r\n}\n";
        assert_eq!(
            scan(input, &[]).unwrap(),
            r#"{"id":"1","data":[1,-2.5e+3,true,null,{},[]]}"#
        );
    }

    #[test]
    fn records_top_level_members() {
        let mut scanner = JsonScanner::new();
        assert!(scanner.scan_object(br#"{"id":"a","data":{"x":1}}"#, &RedactKeys::default()));
        let compact = scanner.compact();
        let members: Vec<(&[u8], &[u8])> = scanner
            .members()
            .iter()
            .map(|m| (&compact[m.key.clone()], &compact[m.value.clone()]))
            .collect();
        assert_eq!(
            members,
            [
                (&b"id"[..], &br#""a""#[..]),
                (&b"data"[..], &br#"{"x":1}"#[..])
            ]
        );
    }

    #[test]
    fn rejects_everything_that_is_not_one_object() {
        for input in [
            "",
            "  ",
            "[]",
            "\"s\"",
            "1",
            "null",
            "{",
            "{}{}",
            "{} x",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\n\"}",
            "{\"a\":[1 2]}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\\ud800\"}",
            "{\"a\":'x'}",
            "{\"a\":\"unterminated}",
        ] {
            assert_eq!(scan(input, &[]), None, "{input:?} must be rejected");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_valid_objects() {
        for input in [
            r#"{}"#,
            r#"{"a":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}"#,
            r#"{"n":[0,-0,1.5,1E9,2e-3,123456789012345678901234567890]}"#,
            r#"{"nested":{"a":[{"b":[[]]}]},"dup":1,"dup":2}"#,
            "{\"unicode\":\"wörld ✓ \u{2027}\"}",
        ] {
            let compact = scan(input, &[]).unwrap_or_else(|| panic!("{input} rejected"));
            let ours: serde_json::Value = serde_json::from_str(&compact).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(input).unwrap();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn terminal_controls_inside_strings_are_escaped() {
        let compact = scan("{\"a\":\"x\u{7f}\u{9b}31m\u{2028}\"}", &[]).unwrap();
        assert_eq!(compact, r#"{"a":"x\u007f\u009b31m\u2028"}"#);
    }

    #[test]
    fn strings_of_every_character_class_round_trip_and_come_out_safe() {
        let mut alphabet: Vec<char> = ('\0'..='\u{7ff}').collect();
        alphabet.extend('\u{2000}'..='\u{203f}');
        alphabet.extend(['\u{fffd}', '\u{1f600}', '\u{4e2d}']);
        let mut rng = fastrand::Rng::with_seed(43);
        let mut scanner = JsonScanner::new();
        for round in 0..20_000 {
            let text: String = (0..rng.usize(..40))
                .map(|_| match rng.u8(..3) {
                    0 => alphabet[rng.usize(..alphabet.len())],
                    _ => char::from(rng.u8(0x20..0x7f)),
                })
                .collect();
            // serde_json writes non-ASCII as it is; every other round spells it as `\u` escapes.
            let mut literal = serde_json::to_string(&text).unwrap();
            if round % 2 == 1 {
                literal = literal
                    .chars()
                    .map(|c| match u32::from(c) {
                        0x80..=0xffff => format!("\\u{:04x}", u32::from(c)),
                        _ => c.to_string(),
                    })
                    .collect();
            }
            let input = format!("{{{literal}:[{literal}],\"k\":{literal}}}");
            assert!(
                scanner.scan_object(input.as_bytes(), &RedactKeys::default()),
                "{input}"
            );
            let compact = std::str::from_utf8(scanner.compact()).unwrap();
            let reparsed: serde_json::Value = serde_json::from_str(compact).unwrap();
            assert_eq!(
                reparsed,
                serde_json::from_str::<serde_json::Value>(&input).unwrap()
            );
            assert!(
                !compact.contains(|c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')),
                "{compact:?}"
            );
        }
    }

    #[test]
    fn depth_is_limited() {
        let ok = format!(
            "{}{}",
            "{\"a\":".repeat(MAX_DEPTH - 1),
            "1".to_owned() + &"}".repeat(MAX_DEPTH - 1)
        );
        assert!(scan(&ok, &[]).is_some());
        let deep = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(scan(&deep, &[]), None);
    }

    #[test]
    fn redacts_named_keys_at_any_depth_and_nothing_else() {
        let input = r#"{"password":"p","user":{"name":"n","Token":{"x":[1]},"list":[{"authorization":"Bearer x","keep":"k"}]},"tokens":"t"}"#;
        assert_eq!(
            scan(input, &["password", "token", "authorization"]).unwrap(),
            r#"{"password":"[REDACTED]","user":{"name":"n","Token":"[REDACTED]","list":[{"authorization":"[REDACTED]","keep":"k"}]},"tokens":"t"}"#
        );
    }

    #[test]
    fn redacts_keys_spelled_with_escapes() {
        assert_eq!(
            scan(r#"{"pass\u0077ord":"secret"}"#, &["password"]).unwrap(),
            r#"{"pass\u0077ord":"[REDACTED]"}"#
        );
    }

    /// `value` with the values of the named keys replaced, at any depth.
    fn redacted(value: &serde_json::Value, keys: &[&str]) -> serde_json::Value {
        match value {
            serde_json::Value::Object(object) => object
                .iter()
                .map(|(key, value)| {
                    let value = if keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                        serde_json::Value::from("[REDACTED]")
                    } else {
                        redacted(value, keys)
                    };
                    (key.clone(), value)
                })
                .collect(),
            serde_json::Value::Array(items) => {
                items.iter().map(|item| redacted(item, keys)).collect()
            }
            other => other.clone(),
        }
    }

    #[test]
    fn pretty_printed_random_objects_compact_to_the_redacted_value() {
        let keys = ["password", "Token", "id", "x\u{7f}", "\u{2028}", "a b"];
        let strings = [
            "",
            "v",
            " spaced out ",
            "tab\there",
            "del\u{7f}",
            "c1\u{85}",
            "ls\u{2028}.",
        ];
        let mut rng = fastrand::Rng::with_seed(53);
        fn random_value(
            rng: &mut fastrand::Rng,
            keys: &[&str],
            strings: &[&str],
            depth: u32,
        ) -> serde_json::Value {
            match rng.u8(..if depth > 3 { 3 } else { 5 }) {
                0 => serde_json::Value::from(strings[rng.usize(..strings.len())]),
                1 => serde_json::Value::from(rng.i32(..)),
                2 => serde_json::Value::Null,
                3 => (0..rng.usize(..4))
                    .map(|_| random_value(rng, keys, strings, depth + 1))
                    .collect(),
                _ => (0..rng.usize(..4))
                    .map(|_| {
                        let key = keys[rng.usize(..keys.len())].to_owned();
                        (key, random_value(rng, keys, strings, depth + 1))
                    })
                    .collect(),
            }
        }
        let redact = ["password", "token"];
        let mut scanner = JsonScanner::new();
        for _ in 0..5_000 {
            let object: serde_json::Map<String, serde_json::Value> = (0..rng.usize(..5))
                .map(|_| {
                    let key = keys[rng.usize(..keys.len())].to_owned();
                    (key, random_value(&mut rng, &keys, &strings, 0))
                })
                .collect();
            let value = serde_json::Value::Object(object);
            let input = serde_json::to_string_pretty(&value).unwrap();
            assert!(scanner.scan_object(input.as_bytes(), &RedactKeys::new(redact)));
            let compact = std::str::from_utf8(scanner.compact()).unwrap();
            let expected = redacted(&value, &redact);
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(compact).unwrap(),
                expected
            );
            assert!(
                !compact.contains(['\n', '\u{7f}', '\u{85}', '\u{2028}']),
                "{compact:?}"
            );
            assert!(
                !compact.contains(": ") && !compact.contains(", "),
                "{compact:?}"
            );
            let members: Vec<(String, serde_json::Value)> = scanner
                .members()
                .iter()
                .map(|member| {
                    let key = &compact[member.key.start - 1..member.key.end + 1];
                    (
                        serde_json::from_str(key).unwrap(),
                        serde_json::from_str(&compact[member.value.clone()]).unwrap(),
                    )
                })
                .collect();
            let expected: Vec<(String, serde_json::Value)> = expected
                .as_object()
                .unwrap()
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            assert_eq!(members, expected, "{input}");
        }
    }

    #[test]
    fn random_mutations_never_accept_what_serde_json_rejects() {
        let seeds = [
            r#"{"id":"1","type":"t","data":{"a":[1,2.5,true,null],"s":"x\"y"}}"#,
            r#"{"a":"\ud83d\ude00","b":-1e-5}"#,
        ];
        let alphabet = b"{}[]\":,\\-+.0123456789eEtrufalsn u\x01\x7f";
        let mut rng = fastrand::Rng::with_seed(7);
        let mut scanner = JsonScanner::new();
        for _ in 0..20_000 {
            let mut bytes = seeds[rng.usize(..seeds.len())].as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                match rng.u8(..3) {
                    0 => bytes[at] = alphabet[rng.usize(..alphabet.len())],
                    1 => bytes.insert(at, alphabet[rng.usize(..alphabet.len())]),
                    _ => drop(bytes.remove(at)),
                }
            }
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let serde_ok = matches!(
                serde_json::from_str::<serde_json::Value>(text),
                Ok(serde_json::Value::Object(_))
            );
            let ours = scanner.scan_object(&bytes, &RedactKeys::default());
            assert_eq!(ours, serde_ok, "disagreement on {text:?}");
            if ours {
                let reparsed: serde_json::Value =
                    serde_json::from_slice(scanner.compact()).unwrap();
                assert_eq!(
                    reparsed,
                    serde_json::from_str::<serde_json::Value>(text).unwrap()
                );
            }
        }
    }
}
