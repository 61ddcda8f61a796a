//! Property tests of what turns untrusted payload bytes into log lines: the classifier, the
//! JSON scanner with redaction, the escaper and both line formats (`LineRenderer`).
//!
//! The number of cases comes from `PROPTEST_CASES` (default [`CASES`], a few seconds per
//! property in a debug build); `make fuzz` runs the same properties with many more.
//! Failures are saved as seeds in `tests/proptest-regressions/properties_format.txt`, which is
//! committed and replayed first on every run; the inputs of bugs found so far are also kept
//! below as plain tests (`regression_*`).

use std::str::FromStr;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use audit_consumer::event::{self, Kind};
use audit_consumer::format::{Format, LineRenderer, Metadata};
use audit_consumer::json::{JsonScanner, MAX_DEPTH};
use audit_consumer::redact::RedactKeys;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;

/// Cases per property when `PROPTEST_CASES` is not set.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/properties_format.txt"
        )))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// Characters that matter to the escaper, the scanner or a terminal, beside plain ASCII:
/// JSON's specials, C0 and C1 controls, DEL, line and paragraph separators and their
/// neighbours, and characters of every UTF-8 length.
const SPECIAL_CHARS: &str = "\"\\/\n\r\t\0\u{1}\u{8}\u{c}\u{1b}\u{1f} =\u{7f}\u{80}\u{85}\u{9b}\u{9f}\u{a0}é\u{7ff}\
                             \u{800}\u{2027}\u{2028}\u{2029}\u{202e}\u{4e2d}\u{d7ff}\u{e000}\u{fffd}\
                             \u{ffff}\u{10000}\u{1f600}\u{10ffff}";

fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => (0x20u8..0x7f).prop_map(char::from),
        3 => proptest::sample::select(SPECIAL_CHARS.chars().collect::<Vec<_>>()),
        1 => any::<char>(),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any_char(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

/// Byte fragments that sit on the edges of the scanner's and escaper's cases: JSON tokens,
/// escapes (valid, invalid, lone surrogates), partial and invalid UTF-8, the multi-byte
/// characters that are escaped, and text that looks like another field.
const FRAGMENTS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b" ",
    b"\t",
    b"\n",
    b"\r\n",
    b"\0",
    b"\\",
    b"\\\"",
    b"\\n",
    b"\\u0000",
    b"\\u0069",
    b"\\u2028",
    b"\\ud83d\\ude00",
    b"\\ud800",
    b"\\udc00",
    b"\\x",
    b"0",
    b"-1.5e+3",
    b"1e400",
    b"-2E+308",
    b"01",
    b"1.",
    b"true",
    b"null",
    b"fals",
    b"\"id\"",
    b"\"password\"",
    b"\"data\":",
    b"\x7f",
    b"\xc2\x85",
    b"\xc2\x9b",
    b"\xc2",
    b"\xe2\x80\xa8",
    b"\xe2\x80\xa9",
    b"\xe2\x80",
    b"\xf0\x9f\x98\x80",
    b"\xf0\x9f",
    b"\xff",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\x1b[2J",
    b" subject=forged",
    b" chain=a/b/c seq=1 prev=start",
    b",\"kind\":\"structured\"",
    b"\",\"chain\":\"a/b/c\",\"seq\":1,\"prev\":\"start\"}",
    b"x",
    b"=",
];

fn fragments() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..48)
        .prop_map(|parts| parts.concat())
}

/// A JSON value as written, not as parsed: objects keep duplicate keys and numbers their text.
#[derive(Clone, Debug)]
enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// Number texts serde_json reads as finite numbers.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (any::<f64>().prop_filter("finite", |f| f.is_finite())).prop_map(|f| f.to_string()),
        (
            any::<bool>(),
            "[1-9][0-9]{0,14}|0",
            proptest::option::of("[0-9]{1,12}"),
            proptest::option::of((
                prop_oneof![Just("e"), Just("E")],
                prop_oneof![Just(""), Just("+"), Just("-")],
                0u32..290
            )),
        )
            .prop_map(|(negative, int, fraction, exponent)| {
                let mut text = String::new();
                if negative {
                    text.push('-');
                }
                text.push_str(&int);
                if let Some(fraction) = fraction {
                    text.push('.');
                    text.push_str(&fraction);
                }
                if let Some((e, sign, exponent)) = exponent {
                    text.push_str(&format!("{e}{sign}{exponent}"));
                }
                text
            }),
        // Longer than any integer type: serde_json reads it as a float.
        "[1-9][0-9]{20,40}",
    ]
}

/// Keys that mean something to the consumer (recognised attributes, redaction candidates,
/// the line's own field names), and arbitrary ones.
const KEYS: &[&str] = &[
    "id",
    "type",
    "source",
    "data",
    "data_base64",
    "specversion",
    "time",
    "subject",
    "kind",
    "raw",
    "event",
    "chain",
    "seq",
    "prev",
    "password",
    "Password",
    "TOKEN",
    "token",
    "authorization",
    "a b",
    "",
    "x\u{7f}",
    "\u{2028}",
    "é",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => text(12),
    ]
}

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number().prop_map(Json::Number),
        text(24).prop_map(Json::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::vec((key(), inner), 0..6).prop_map(Json::Object),
        ]
    })
}

/// A top-level object whose keys are distinct (nested objects may repeat theirs).
fn json_object() -> impl Strategy<Value = Json> {
    proptest::collection::vec((key(), json_value()), 0..8).prop_map(|mut members| {
        let mut seen = std::collections::BTreeSet::new();
        members.retain(|(key, _)| seen.insert(key.clone()));
        Json::Object(members)
    })
}

/// How a JSON text is spelled: the whitespace between tokens and which characters are
/// written as escapes, drawn from `choices` in turn.
struct Writer<'a> {
    choices: &'a [u8],
    next: usize,
    out: String,
}

impl Writer<'_> {
    fn choice(&mut self) -> u8 {
        if self.choices.is_empty() {
            return 0;
        }
        let choice = self.choices[self.next % self.choices.len()];
        self.next += 1;
        choice
    }

    fn whitespace(&mut self) {
        let choice = self.choice();
        if choice < 160 {
            return;
        }
        for _ in 0..(choice % 3) + 1 {
            let space = match self.choice() % 4 {
                0 => ' ',
                1 => '\t',
                2 => '\n',
                _ => '\r',
            };
            self.out.push(space);
        }
    }

    fn string(&mut self, text: &str, is_key: bool) {
        self.out.push('"');
        for c in text.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\u{0}'..='\u{1f}' => self.out.push_str(&format!("\\u{:04x}", u32::from(c))),
                // Keys keep ASCII as it is, so that a recognised attribute is spelled as one
                // (`"\u0069d"` is not `id`, by design; `edge_payloads_render_as_documented`).
                _ if is_key && c.is_ascii() => self.out.push(c),
                '/' if self.choice() < 64 => self.out.push_str("\\/"),
                _ if self.choice() < 48 => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        self.out.push_str(&format!("\\u{:04X}", unit));
                    }
                }
                _ => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn value(&mut self, value: &Json) {
        match value {
            Json::Null => self.out.push_str("null"),
            Json::Bool(true) => self.out.push_str("true"),
            Json::Bool(false) => self.out.push_str("false"),
            Json::Number(text) => self.out.push_str(text),
            Json::String(text) => self.string(text, false),
            Json::Array(items) => {
                self.out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        self.whitespace();
                        self.out.push(',');
                    }
                    self.whitespace();
                    self.value(item);
                }
                self.whitespace();
                self.out.push(']');
            }
            Json::Object(members) => {
                self.out.push('{');
                for (index, (key, value)) in members.iter().enumerate() {
                    if index > 0 {
                        self.whitespace();
                        self.out.push(',');
                    }
                    self.whitespace();
                    self.string(key, true);
                    self.whitespace();
                    self.out.push(':');
                    self.whitespace();
                    self.value(value);
                }
                self.whitespace();
                self.out.push('}');
            }
        }
    }
}

fn write_json(value: &Json, choices: &[u8]) -> String {
    let mut writer = Writer {
        choices,
        next: 0,
        out: String::new(),
    };
    writer.whitespace();
    writer.value(value);
    writer.whitespace();
    writer.out
}

/// A JSON object payload, spelled in one of many ways.
fn json_payload() -> impl Strategy<Value = Vec<u8>> {
    (json_object(), proptest::collection::vec(any::<u8>(), 0..32))
        .prop_map(|(value, choices)| write_json(&value, &choices).into_bytes())
}

#[derive(Clone, Debug)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Splice(usize, Vec<u8>),
}

/// JSON-ish: a JSON payload with a few edits, mostly with bytes that matter to JSON.
fn mutated_json_payload() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => proptest::sample::select(&b"{}[]\":,\\/-+.0123456789eEtrufalsnu \t\n\x01\x7f"[..]),
        1 => any::<u8>(),
    ];
    let edit = prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, byte)| Edit::Replace(at, byte)),
        (any::<usize>(), byte).prop_map(|(at, byte)| Edit::Insert(at, byte)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), proptest::sample::select(FRAGMENTS))
            .prop_map(|(at, bytes)| Edit::Splice(at, bytes.to_vec())),
    ];
    (json_payload(), proptest::collection::vec(edit, 1..4)).prop_map(|(mut bytes, edits)| {
        for edit in edits {
            let len = bytes.len();
            match edit {
                Edit::Replace(at, byte) if len > 0 => bytes[at % len] = byte,
                Edit::Insert(at, byte) => bytes.insert(at % (len + 1), byte),
                Edit::Delete(at) if len > 0 => drop(bytes.remove(at % len)),
                Edit::Splice(at, fragment) => {
                    let at = at % (len + 1);
                    bytes.splice(at..at, fragment);
                }
                _ => {}
            }
        }
        bytes
    })
}

/// Nesting around the scanner's limit and serde_json's, and far beyond both.
fn nested_payload() -> impl Strategy<Value = Vec<u8>> {
    let depth = prop_oneof![
        3 => (MAX_DEPTH - 4)..(MAX_DEPTH + 4),
        1 => 0usize..20_000,
    ];
    (
        depth,
        proptest::collection::vec(any::<bool>(), 1..8),
        any::<bool>(),
        0usize..3,
    )
        .prop_map(|(depth, kinds, closed, inner)| {
            // Levels below the top-level object, each an object or an array.
            let mut open = Vec::new();
            let mut close = Vec::new();
            open.extend_from_slice(b"{\"a\":");
            for level in 1..depth {
                if kinds[level % kinds.len()] {
                    open.extend_from_slice(b"{\"a\":");
                    close.push(b'}');
                } else {
                    open.push(b'[');
                    close.push(b']');
                }
            }
            open.extend_from_slice(match inner {
                0 => &b"1"[..],
                1 => b"\"s\"",
                _ => b"[]",
            });
            if closed {
                close.reverse();
                open.extend_from_slice(&close);
                open.push(b'}');
            }
            open
        })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..256),
        3 => fragments(),
        2 => text(64).prop_map(String::into_bytes),
        4 => json_payload(),
        4 => mutated_json_payload(),
        1 => nested_payload(),
    ]
}

/// Redaction sets: nothing, or some of the keys the payloads use (names as an operator would
/// write them: any case, spaces around, empty entries).
fn redact_names() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(&[
                    "password", " Token ", "AUTHORIZATION", "id", "data", "subject", "", "é",
                    "x-secret",
                ][..]).prop_map(str::to_owned),
                key(),
            ],
            1..4,
        ),
    ]
}

/// Delivery metadata; subject and headers come from publishers too.
#[derive(Clone, Debug)]
struct Meta {
    subject: String,
    stream: String,
    consumer: String,
    stream_sequence: u64,
    consumer_sequence: u64,
    delivered: i64,
    pending: u64,
    published_nanos: i128,
    headers: Option<Vec<(String, String)>>,
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "Nats-Msg-Id",
                "Authorization",
                "X-Secret",
                "a=b\"c",
                "x y",
                "Content-Type"
            ][..]
        )
        .prop_map(str::to_owned),
        "[!-9;-~]{1,12}",
    ]
}

fn meta() -> impl Strategy<Value = Meta> {
    (
        prop_oneof![Just("audit.login".to_owned()), text(24)],
        prop_oneof![Just("AUDIT".to_owned()), text(8)],
        prop_oneof![Just("logger".to_owned()), text(8)],
        (any::<u64>(), any::<u64>(), any::<i64>(), any::<u64>()),
        prop_oneof![
            3 => -62_167_219_200_000_000_000i128..253_402_300_800_000_000_000i128,
            1 => any::<i128>(),
        ],
        proptest::option::of(proptest::collection::vec((header_name(), text(16)), 0..5)),
    )
        .prop_map(
            |(
                subject,
                stream,
                consumer,
                (stream_sequence, consumer_sequence, delivered, pending),
                published_nanos,
                headers,
            )| Meta {
                subject,
                stream,
                consumer,
                stream_sequence,
                consumer_sequence,
                delivered,
                pending,
                published_nanos,
                headers,
            },
        )
}

/// The header map the NATS client would hand over: names and values it would not accept are
/// left out.
fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
            map.append(name, value);
        }
    }
    map
}

fn metadata<'a>(meta: &'a Meta, headers: Option<&'a HeaderMap>) -> Metadata<'a> {
    Metadata {
        subject: &meta.subject,
        stream: &meta.stream,
        consumer: &meta.consumer,
        stream_sequence: meta.stream_sequence,
        consumer_sequence: meta.consumer_sequence,
        delivered: meta.delivered,
        pending: meta.pending,
        published_nanos: meta.published_nanos,
        headers,
    }
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Json), Just(Format::Text)]
}

// ---------------------------------------------------------------------------------------------
// Oracles
// ---------------------------------------------------------------------------------------------

/// Renders one line with a fresh renderer.
fn render(
    format: Format,
    redact: &[String],
    meta: &Metadata<'_>,
    payload: &[u8],
) -> (String, Kind) {
    let mut renderer = LineRenderer::new(format, RedactKeys::new(redact));
    let mut out = Vec::new();
    let kind = renderer.render(meta, payload, &mut out);
    (String::from_utf8(out).expect("a line is UTF-8"), kind)
}

/// One line, nothing a terminal or a line-oriented reader would take as a break or a control.
fn assert_one_safe_line(line: &str) {
    let body = line
        .strip_suffix('\n')
        .expect("the line ends with its newline");
    assert!(
        !body.contains(|c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')),
        "a break or control character inside the line: {line:?}"
    );
}

/// The JSON nesting depth of a value (a scalar is 0, `{}` is 1).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// serde_json's reading of a payload as a JSON object.
fn parse_object(payload: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .filter(Value::is_object)
}

/// What the structured event of a payload must be: the payload as serde_json reads it, with
/// the values of redacted keys replaced at any depth. `None` when the payload is a raw event.
/// serde_json reads at most 127 levels and refuses numbers beyond f64's range.
fn expected_event(payload: &[u8], redact: &[String]) -> Option<Value> {
    let value = parse_object(payload)?;
    (depth(&value) <= MAX_DEPTH).then(|| redacted(&value, redact))
}

fn redacted(value: &Value, redact: &[String]) -> Value {
    let names: Vec<String> = redact
        .iter()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect();
    fn walk(value: &Value, names: &[String]) -> Value {
        match value {
            Value::Object(members) => members
                .iter()
                .map(|(key, value)| {
                    let value = if names.iter().any(|name| name.eq_ignore_ascii_case(key)) {
                        Value::from("[REDACTED]")
                    } else {
                        walk(value, names)
                    };
                    (key.clone(), value)
                })
                .collect(),
            Value::Array(items) => items.iter().map(|item| walk(item, names)).collect(),
            other => other.clone(),
        }
    }
    walk(value, &names)
}

/// Reads a JSON line with serde_json's own defaults, as a consumer of the log would.
fn parse_json_line(line: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(object)) => object,
        Ok(other) => panic!("not an object: {other}"),
        Err(err) => panic!("the line is not JSON serde_json reads ({err}): {line:?}"),
    }
}

/// The RFC 3339 form of `nanos` as the time crate writes it, for the years it can hold.
fn rfc3339(nanos: i128) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    (0..=9999).contains(&t.year()).then(|| {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond()
        )
    })
}

fn assert_rfc3339_shape(text: &str) {
    let bytes = text.as_bytes();
    assert_eq!(bytes.len(), 30, "{text:?}");
    for (at, byte) in bytes.iter().enumerate() {
        match at {
            4 | 7 => assert_eq!(*byte, b'-', "{text:?}"),
            10 => assert_eq!(*byte, b'T', "{text:?}"),
            13 | 16 => assert_eq!(*byte, b':', "{text:?}"),
            19 => assert_eq!(*byte, b'.', "{text:?}"),
            29 => assert_eq!(*byte, b'Z', "{text:?}"),
            _ => assert!(byte.is_ascii_digit(), "{text:?}"),
        }
    }
}

/// The headers as the JSON line must carry them.
fn expected_headers(headers: &HeaderMap, redact: &RedactKeys) -> Value {
    headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            let value = if redact.matches(name.as_bytes()) {
                Value::from("[REDACTED]")
            } else if let [value] = values.as_slice() {
                Value::from(value.as_str())
            } else {
                values
                    .iter()
                    .map(|value| Value::from(value.as_str()))
                    .collect()
            };
            (name.to_owned(), value)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// One `key=value` field of a text line, its value decoded.
#[derive(Debug)]
struct Field {
    key: String,
    value: String,
    quoted: bool,
}

/// Splits a text line into its fields as the format documents them: `key=value` pairs
/// separated by one space, a value either bare (printable ASCII without `"`, `=`, `\`) or a
/// quoted JSON string. Panics on anything else.
fn parse_text_line(line: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut rest = line.strip_suffix('\n').expect("ends with a newline");
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("key=value in {line:?}"));
        assert!(
            !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'=')),
            "key {key:?} in {line:?}"
        );
        let (value, quoted, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut escaped = false;
            let end = quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .unwrap_or_else(|| panic!("closing quote in {line:?}"))
                .0
                + 2;
            let value: String = serde_json::from_str(&after[..end])
                .unwrap_or_else(|err| panic!("a JSON string ({err}) in {line:?}"));
            (value, true, &after[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let bare = &after[..end];
            assert!(
                !bare.is_empty()
                    && bare
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\')),
                "bare value {bare:?} in {line:?}"
            );
            (bare.to_owned(), false, &after[end..])
        };
        fields.push(Field {
            key: key.to_owned(),
            value,
            quoted,
        });
        if !after.is_empty() {
            rest = after
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("a space after a value in {line:?}"));
            assert!(
                !rest.is_empty() && !rest.starts_with(' '),
                "one space between fields: {line:?}"
            );
        } else {
            rest = after;
        }
    }
    fields
}

const TEXT_METADATA: [&str; 9] = [
    "kind",
    "subject",
    "stream",
    "consumer",
    "stream_seq",
    "consumer_seq",
    "delivered",
    "pending",
    "published",
];

/// The recognised attributes the text format lifts out of a structured event
/// (docs/audit-consumer.md, "Output").
const RECOGNISED: [&str; 11] = [
    "specversion",
    "id",
    "type",
    "source",
    "subject",
    "time",
    "timestamp",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// A text field's value against the JSON value it came from: a string is its contents, any
/// other value its JSON text (a bare string that looks like a number reads back as one).
fn assert_text_value(field: &Field, expected: &Value, line: &str) {
    match expected {
        Value::String(string) => assert_eq!(&field.value, string, "{} in {line:?}", field.key),
        other => {
            let read: Value = serde_json::from_str(&field.value)
                .unwrap_or_else(|err| panic!("{} is not JSON ({err}) in {line:?}", field.key));
            assert_eq!(&read, other, "{} in {line:?}", field.key);
        }
    }
}

/// What a line was rendered from.
#[derive(Clone, Copy)]
struct Input<'a> {
    meta: &'a Meta,
    headers: Option<&'a HeaderMap>,
    payload: &'a [u8],
    redact: &'a [String],
    /// The payload spells its keys without escapes, so every recognised attribute is lifted.
    plain_keys: bool,
}

/// Checks a text line against the metadata, headers and payload it came from.
fn check_text_line(line: &str, kind: Kind, input: Input<'_>) {
    let Input {
        meta,
        headers,
        payload,
        redact,
        plain_keys,
    } = input;
    let fields = parse_text_line(line);
    let keys: Vec<&str> = fields.iter().map(|field| field.key.as_str()).collect();
    assert_eq!(keys[..9], TEXT_METADATA, "{line:?}");
    assert_eq!(fields[0].value, kind.as_str());
    assert_eq!(fields[1].value, meta.subject, "{line:?}");
    assert_eq!(fields[2].value, meta.stream, "{line:?}");
    assert_eq!(fields[3].value, meta.consumer, "{line:?}");
    assert_eq!(fields[4].value, meta.stream_sequence.to_string());
    assert_eq!(fields[5].value, meta.consumer_sequence.to_string());
    assert_eq!(fields[6].value, meta.delivered.to_string());
    assert_eq!(fields[7].value, meta.pending.to_string());
    if let Some(expected) = rfc3339(meta.published_nanos) {
        assert_eq!(fields[8].value, expected);
    }
    assert_rfc3339_shape(&fields[8].value);

    let redact_keys = RedactKeys::new(redact);
    let mut rest = &fields[9..];
    for (name, values) in headers.iter().flat_map(|headers| headers.iter()) {
        let name: &str = name.as_ref();
        let sanitized: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        for value in values {
            let field = &rest[0];
            assert_eq!(field.key, format!("header.{sanitized}"), "{line:?}");
            if redact_keys.matches(name.as_bytes()) {
                assert_eq!(field.value, "[REDACTED]", "{line:?}");
            } else {
                assert_eq!(field.value, value.as_str(), "{line:?}");
            }
            rest = &rest[1..];
        }
    }

    match (kind, std::str::from_utf8(payload)) {
        (Kind::Raw, Ok(text)) => {
            assert_eq!(rest.len(), 1, "{line:?}");
            assert_eq!(rest[0].key, "raw", "{line:?}");
            assert_eq!(
                rest[0].value, text,
                "the raw text comes back byte for byte: {line:?}"
            );
        }
        (Kind::Raw, Err(_)) => {
            assert_eq!(rest.len(), 1, "{line:?}");
            assert_eq!(rest[0].key, "raw_base64", "{line:?}");
            assert!(rest[0].quoted, "base64 padding is quoted: {line:?}");
            assert_eq!(BASE64.decode(&rest[0].value).unwrap(), payload, "{line:?}");
        }
        (Kind::Structured, _) => {
            let expected =
                expected_event(payload, redact).expect("a structured payload is a JSON object");
            let object = expected.as_object().unwrap();
            // With a key twice at the top level, the line has both and the parsed payload the
            // last: only the fields' form is checked then.
            let distinct = top_level_keys(payload) == object.len();
            let mut seen = 0;
            for field in rest {
                let name = field
                    .key
                    .strip_prefix("event.")
                    .unwrap_or_else(|| panic!("an event field, not {:?}, in {line:?}", field.key));
                if name == "extra" {
                    let extra: serde_json::Map<String, Value> = serde_json::from_str(&field.value)
                        .unwrap_or_else(|err| {
                            panic!("event.extra is a JSON object ({err}) in {line:?}")
                        });
                    for (key, value) in &extra {
                        // A key spelled with escapes (`"\u0069d"`) is not lifted, by design.
                        if plain_keys {
                            assert!(
                                !RECOGNISED.contains(&key.as_str()),
                                "{key} is lifted, not extra: {line:?}"
                            );
                        }
                        if distinct {
                            assert_eq!(object.get(key), Some(value), "extra {key:?} in {line:?}");
                        }
                    }
                    seen += extra.len();
                } else {
                    assert!(
                        RECOGNISED.contains(&name),
                        "{name} is not recognised: {line:?}"
                    );
                    let value = object
                        .get(name)
                        .unwrap_or_else(|| panic!("event.{name} not in the payload: {line:?}"));
                    if distinct {
                        assert_text_value(field, value, line);
                    }
                    seen += 1;
                }
            }
            if distinct {
                assert_eq!(
                    seen,
                    object.len(),
                    "every member of the event, once: {line:?}"
                );
            }
        }
    }
}

/// How many members the payload's top-level object has, repeated keys counted each time.
fn top_level_keys(payload: &[u8]) -> usize {
    struct Count(usize);
    impl<'de> serde::Deserialize<'de> for Count {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Count;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Count, A::Error> {
                    let mut count = 0;
                    while map
                        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                        .is_some()
                    {
                        count += 1;
                    }
                    Ok(Count(count))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }
    serde_json::from_slice::<Count>(payload).map_or(0, |count| count.0)
}

/// Checks a JSON line against the metadata, headers and payload it came from.
fn check_json_line(line: &str, kind: Kind, input: Input<'_>) {
    let Input {
        meta,
        headers,
        payload,
        redact,
        ..
    } = input;
    let object = parse_json_line(line);
    assert_eq!(object["kind"], kind.as_str());
    assert_eq!(object["subject"], meta.subject.as_str());
    assert_eq!(object["stream"], meta.stream.as_str());
    assert_eq!(object["consumer"], meta.consumer.as_str());
    assert_eq!(object["stream_seq"], meta.stream_sequence);
    assert_eq!(object["consumer_seq"], meta.consumer_sequence);
    assert_eq!(object["delivered"], meta.delivered);
    assert_eq!(object["pending"], meta.pending);
    let published = object["published"].as_str().expect("published is a string");
    if let Some(expected) = rfc3339(meta.published_nanos) {
        assert_eq!(published, expected);
    }
    assert_rfc3339_shape(published);
    match headers.filter(|headers| !headers.is_empty()) {
        Some(headers) => assert_eq!(
            object["headers"],
            expected_headers(headers, &RedactKeys::new(redact)),
            "{line:?}"
        ),
        None => assert!(!object.contains_key("headers"), "{line:?}"),
    }
    let payload_fields: Vec<&str> = ["event", "raw", "raw_base64"]
        .into_iter()
        .filter(|field| object.contains_key(*field))
        .collect();
    match (kind, std::str::from_utf8(payload)) {
        (Kind::Raw, Ok(text)) => {
            assert_eq!(payload_fields, ["raw"], "{line:?}");
            assert_eq!(
                object["raw"], text,
                "the raw text comes back byte for byte: {line:?}"
            );
        }
        (Kind::Raw, Err(_)) => {
            assert_eq!(payload_fields, ["raw_base64"], "{line:?}");
            let encoded = object["raw_base64"].as_str().unwrap();
            assert_eq!(BASE64.decode(encoded).unwrap(), payload, "{line:?}");
        }
        (Kind::Structured, _) => {
            assert_eq!(payload_fields, ["event"], "{line:?}");
            let expected =
                expected_event(payload, redact).expect("a structured payload is a JSON object");
            assert_eq!(
                object["event"], expected,
                "the event is the payload, redacted: {line:?}"
            );
        }
    }
    let count = 9 + usize::from(object.contains_key("headers")) + 1;
    assert_eq!(object.len(), count, "no other member: {line:?}");
}

/// The classification an independent reader (serde_json) expects.
fn assert_kind(payload: &[u8], kind: Kind) {
    let expected = match expected_event(payload, &[]) {
        Some(_) => Kind::Structured,
        None => Kind::Raw,
    };
    assert_eq!(
        kind,
        expected,
        "kind of {:?}",
        String::from_utf8_lossy(payload)
    );
}

/// The checks of a line in its format, and of the kind against serde_json's reading.
fn check_line(format: Format, line: &str, kind: Kind, input: Input<'_>) {
    assert_one_safe_line(line);
    match format {
        Format::Json => check_json_line(line, kind, input),
        Format::Text => check_text_line(line, kind, input),
    }
    assert_kind(input.payload, kind);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Whatever the bytes, one line: exactly one newline, at the end, and no other break or
    /// control character; text the kind of which is what `render` and `classify` return.
    /// The line is appended: what the buffer held before is left as it was.
    #[test]
    fn every_payload_renders_as_exactly_one_line(
        format in format(),
        redact in redact_names(),
        meta in meta(),
        payload in payload(),
        before in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let headers = meta.headers.as_deref().map(header_map);
        let mut renderer = LineRenderer::new(format, RedactKeys::new(&redact));
        let mut out = before.clone();
        let kind = renderer.render(&metadata(&meta, headers.as_ref()), &payload, &mut out);
        prop_assert_eq!(&out[..before.len()], &before[..]);
        let line = std::str::from_utf8(&out[before.len()..]).expect("a line is UTF-8");
        prop_assert_eq!(line.matches('\n').count(), 1, "{:?}", line);
        assert_one_safe_line(line);
        prop_assert_eq!(renderer.kind(&payload), kind);
        let mut scanner = JsonScanner::new();
        let classified = event::classify(&payload, &mut scanner, &RedactKeys::new(&redact));
        prop_assert_eq!(classified.kind(), kind);
        // Redaction never changes what an event is.
        let unredacted = event::classify(&payload, &mut scanner, &RedactKeys::default());
        prop_assert_eq!(unredacted.kind(), kind);
    }

    /// Every JSON line parses back with serde_json and carries the metadata and headers as
    /// given; a raw payload comes back byte for byte (`raw`, or `raw_base64` when it is not
    /// UTF-8), a structured one as the payload serde_json reads, redacted.
    #[test]
    fn json_lines_parse_back_to_what_was_rendered(
        redact in redact_names(),
        meta in meta(),
        payload in payload(),
    ) {
        let headers = meta.headers.as_deref().map(header_map);
        let delivery = metadata(&meta, headers.as_ref());
        let (line, kind) = render(Format::Json, &redact, &delivery, &payload);
        let input = Input {
            meta: &meta,
            headers: headers.as_ref(),
            payload: &payload,
            redact: &redact,
            plain_keys: false,
        };
        check_line(Format::Json, &line, kind, input);
    }

    /// Every text line splits into `key=value` fields as documented: the metadata first, then
    /// the headers, then `raw=` / `raw_base64=` (decoding to the payload byte for byte) or the
    /// event's members (`event.<attribute>=` and `event.extra=`, together the payload).
    #[test]
    fn text_lines_parse_back_to_what_was_rendered(
        redact in redact_names(),
        meta in meta(),
        payload in payload(),
    ) {
        let headers = meta.headers.as_deref().map(header_map);
        let delivery = metadata(&meta, headers.as_ref());
        let (line, kind) = render(Format::Text, &redact, &delivery, &payload);
        let input = Input {
            meta: &meta,
            headers: headers.as_ref(),
            payload: &payload,
            redact: &redact,
            plain_keys: false,
        };
        check_line(Format::Text, &line, kind, input);
    }

    /// A JSON object payload, however it is spelled (whitespace, escapes, duplicate keys in
    /// nested objects), survives unredacted: the line's event is the payload's content.
    #[test]
    fn structured_payloads_survive_in_both_formats(
        format in format(),
        payload in json_payload(),
    ) {
        let meta = Meta {
            subject: "audit.login".into(),
            stream: "AUDIT".into(),
            consumer: "logger".into(),
            stream_sequence: 1,
            consumer_sequence: 1,
            delivered: 1,
            pending: 0,
            published_nanos: 1_795_000_000_123_456_789,
            headers: None,
        };
        let (line, kind) = render(format, &[], &metadata(&meta, None), &payload);
        let parsed = parse_object(&payload).expect("the generator writes JSON objects");
        prop_assert_eq!(kind, Kind::Structured, "{:?}", String::from_utf8_lossy(&payload));
        let input = Input {
            meta: &meta,
            headers: None,
            payload: &payload,
            redact: &[],
            plain_keys: true,
        };
        check_line(format, &line, kind, input);
        if format == Format::Json {
            prop_assert_eq!(&parse_json_line(&line)["event"], &parsed);
        }
    }

    /// The renderer keeps scratch buffers between events: a renderer that has rendered other
    /// events writes the same line as a fresh one.
    #[test]
    fn a_reused_renderer_writes_what_a_fresh_one_does(
        format in format(),
        redact in redact_names(),
        payloads in proptest::collection::vec(payload(), 1..6),
    ) {
        let meta = Meta {
            subject: "audit.login".into(),
            stream: "AUDIT".into(),
            consumer: "logger".into(),
            stream_sequence: 7,
            consumer_sequence: 7,
            delivered: 1,
            pending: 0,
            published_nanos: 0,
            headers: None,
        };
        let mut reused = LineRenderer::new(format, RedactKeys::new(&redact));
        let mut out = Vec::new();
        for payload in &payloads {
            let start = out.len();
            let kind = reused.render(&metadata(&meta, None), payload, &mut out);
            let (fresh, fresh_kind) = render(format, &redact, &metadata(&meta, None), payload);
            prop_assert_eq!(kind, fresh_kind);
            prop_assert_eq!(std::str::from_utf8(&out[start..]).unwrap(), fresh.as_str());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions and edges, as plain tests
// ---------------------------------------------------------------------------------------------

fn plain_meta() -> Meta {
    Meta {
        subject: "audit.login".into(),
        stream: "AUDIT".into(),
        consumer: "logger".into(),
        stream_sequence: 1,
        consumer_sequence: 1,
        delivered: 1,
        pending: 0,
        published_nanos: 0,
        headers: None,
    }
}

fn check_both_formats(payload: &[u8]) {
    let meta = plain_meta();
    for format in [Format::Json, Format::Text] {
        let (line, kind) = render(format, &[], &metadata(&meta, None), payload);
        let input = Input {
            meta: &meta,
            headers: None,
            payload,
            redact: &[],
            plain_keys: false,
        };
        check_line(format, &line, kind, input);
    }
}

fn nested(depth: usize) -> Vec<u8> {
    let mut payload = "{\"a\":".repeat(depth).into_bytes();
    payload.push(b'1');
    payload.extend(std::iter::repeat_n(b'}', depth));
    payload
}

/// Found by `json_lines_parse_back_to_what_was_rendered`: the scanner accepted payloads 127
/// and 128 levels deep (its limit was 128), but serde_json reads at most 127 levels, and the
/// JSON line holds the event one level down: `{"a":[[...[1]...]]}` 127 levels deep made a
/// line serde_json refused ("recursion limit exceeded"). The limit is now 126.
#[test]
fn regression_nesting_at_the_limit_stays_parseable() {
    for depth in [
        1,
        MAX_DEPTH - 2,
        MAX_DEPTH - 1,
        MAX_DEPTH,
        MAX_DEPTH + 1,
        MAX_DEPTH + 2,
        100_000,
    ] {
        check_both_formats(&nested(depth));
    }
}

#[test]
fn edge_payloads_render_as_documented() {
    for payload in [
        &b""[..],
        b"{}",
        b" {} ",
        b"\n",
        b"\0",
        b"\xff",
        b"{\"a\":\"\\ud800\"}",
        b"{\"a\":\"\\ud83d\\ude00\"}",
        b"{\"id\":1,\"id\":2}",
        b"{\"\\u0069d\":1,\"id\":2}",
        b"{\"a\":\"\xe2\x80\xa8\xc2\x85\x7f\"}",
        b"x\" subject=forged\n{\"kind\":\"structured\"}",
    ] {
        check_both_formats(payload);
    }
}

/// Found while writing the number generator: `{"a":1e400}` is valid JSON grammar, and the
/// scanner took it as a structured event, but serde_json refuses numbers beyond f64's range
/// ("number out of range"), so the JSON line could not be read back. Such payloads are now raw.
#[test]
fn regression_numbers_beyond_f64_stay_parseable() {
    let huge_integer = format!("{{\"a\":1{}}}", "0".repeat(400));
    let huge_fraction = format!("{{\"a\":-9{}.5}}", "9".repeat(320));
    for payload in [
        &b"{\"a\":1e400}"[..],
        b"{\"a\":-1.5E+309}",
        b"{\"a\":[0,1e308,2e308]}",
        huge_integer.as_bytes(),
        huge_fraction.as_bytes(),
        b"{\"a\":1e-400}",
        b"{\"a\":0e999}",
        b"{\"a\":1.7976931348623157e308}",
    ] {
        check_both_formats(payload);
    }
}
