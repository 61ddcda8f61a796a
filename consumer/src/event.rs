//! Classification of a payload: a structured event (a JSON object) or a raw one.
//!
//! Nothing is ever rejected: whatever is not a JSON object the scanner accepts (invalid JSON,
//! arrays, scalars, objects nested too deeply, empty payloads) is still an event, logged as
//! escaped text when it is UTF-8 and as base64 when it is not.

use crate::json::JsonScanner;
use crate::redact::RedactKeys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Structured,
    Raw,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Structured => "structured",
            Kind::Raw => "raw",
        }
    }
}

/// A classified payload. The structured variant's compact, redacted text lives in the scanner
/// that classified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Structured,
    Text(&'a str),
    Binary(&'a [u8]),
}

impl Event<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Event::Structured => Kind::Structured,
            Event::Text(_) | Event::Binary(_) => Kind::Raw,
        }
    }
}

pub fn classify<'a>(
    payload: &'a [u8],
    scanner: &mut JsonScanner,
    redact: &RedactKeys,
) -> Event<'a> {
    match std::str::from_utf8(payload) {
        Err(_) => Event::Binary(payload),
        Ok(_) if scanner.scan_object(payload, redact) => Event::Structured,
        Ok(text) => Event::Text(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(payload: &[u8]) -> Event<'_> {
        classify(payload, &mut JsonScanner::new(), &RedactKeys::default())
    }

    #[test]
    fn json_objects_are_structured() {
        assert_eq!(kind_of(br#" {"id":"1"} "#), Event::Structured);
        assert_eq!(kind_of(b"{}"), Event::Structured);
    }

    #[test]
    fn other_utf8_is_text() {
        for payload in [
            &b""[..],
            b"hello",
            b"[1,2]",
            b"\"s\"",
            b"42",
            b"{\"a\":",
            "é".as_bytes(),
        ] {
            assert_eq!(
                kind_of(payload),
                Event::Text(std::str::from_utf8(payload).unwrap())
            );
        }
    }

    #[test]
    fn invalid_utf8_is_binary() {
        assert_eq!(kind_of(b"\xff\xfe{}"), Event::Binary(b"\xff\xfe{}"));
        assert_eq!(
            kind_of(b"{\"a\":\"\xc3\"}"),
            Event::Binary(b"{\"a\":\"\xc3\"}")
        );
    }
}
