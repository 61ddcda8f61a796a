//! Rendering of one event and its delivery metadata as one line, in JSON or key=value text.
//!
//! Every value that comes from outside (subject, headers, payload) goes through the escaper or
//! the JSON scanner, so a line always ends at its own newline and payload content can only ever
//! appear inside a value. In the text format all payload-derived keys carry an `event.` or
//! `header.` prefix, so a payload cannot forge `subject=` or `delivered=`.
//!
//! The renderer appends to a caller-owned buffer and keeps its scratch buffers between events,
//! so steady-state rendering does not allocate.

use async_nats::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::escape::{write_escaped, write_escaped_dense, write_quoted};
use crate::event::{self, Event, Kind};
use crate::json::JsonScanner;
use crate::redact::RedactKeys;
use crate::swar;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// logfmt-style `key=value` pairs, values quoted when needed.
    Text,
}

/// Where and how a message was delivered; everything but the payload.
#[derive(Clone, Copy, Debug)]
pub struct Metadata<'a> {
    pub subject: &'a str,
    pub stream: &'a str,
    pub consumer: &'a str,
    pub stream_sequence: u64,
    pub consumer_sequence: u64,
    pub delivered: i64,
    pub pending: u64,
    /// Publish time as nanoseconds since the Unix epoch.
    pub published_nanos: i128,
    pub headers: Option<&'a HeaderMap>,
}

pub struct LineRenderer {
    format: Format,
    redact: RedactKeys,
    scanner: JsonScanner,
    extra: Vec<u8>,
}

impl LineRenderer {
    pub fn new(format: Format, redact: RedactKeys) -> Self {
        Self {
            format,
            redact,
            scanner: JsonScanner::new(),
            extra: Vec::new(),
        }
    }

    /// Appends the line (newline included) for one message to `out`.
    pub fn render(&mut self, meta: &Metadata<'_>, payload: &[u8], out: &mut Vec<u8>) -> Kind {
        let event = event::classify(payload, &mut self.scanner, &self.redact);
        match self.format {
            Format::Json => self.render_json(meta, event, out),
            Format::Text => self.render_text(meta, event, out),
        }
        out.push(b'\n');
        event.kind()
    }

    /// The kind of an event without rendering it, for one handed back unwritten.
    pub fn kind(&mut self, payload: &[u8]) -> Kind {
        event::classify(payload, &mut self.scanner, &self.redact).kind()
    }

    fn render_json(&self, meta: &Metadata<'_>, event: Event<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"kind\":\"");
        out.extend_from_slice(event.kind().as_str().as_bytes());
        out.extend_from_slice(b"\",\"subject\":");
        write_quoted(out, meta.subject);
        out.extend_from_slice(b",\"stream\":");
        write_quoted(out, meta.stream);
        out.extend_from_slice(b",\"consumer\":");
        write_quoted(out, meta.consumer);
        out.extend_from_slice(b",\"stream_seq\":");
        write_integer(out, meta.stream_sequence);
        out.extend_from_slice(b",\"consumer_seq\":");
        write_integer(out, meta.consumer_sequence);
        out.extend_from_slice(b",\"delivered\":");
        write_integer(out, meta.delivered);
        out.extend_from_slice(b",\"pending\":");
        write_integer(out, meta.pending);
        out.extend_from_slice(b",\"published\":\"");
        write_rfc3339(out, meta.published_nanos);
        out.push(b'"');
        if let Some(headers) = meta.headers.filter(|headers| !headers.is_empty()) {
            out.extend_from_slice(b",\"headers\":{");
            for (index, (name, values)) in headers.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_quoted(out, name.as_ref());
                out.push(b':');
                if self.redact.matches(AsRef::<str>::as_ref(name).as_bytes()) {
                    out.extend_from_slice(crate::redact::REDACTED);
                } else if let [value] = values.as_slice() {
                    write_quoted(out, value.as_str());
                } else {
                    out.push(b'[');
                    for (index, value) in values.iter().enumerate() {
                        if index > 0 {
                            out.push(b',');
                        }
                        write_quoted(out, value.as_str());
                    }
                    out.push(b']');
                }
            }
            out.push(b'}');
        }
        match event {
            Event::Structured => {
                out.extend_from_slice(b",\"event\":");
                out.extend_from_slice(self.scanner.compact());
            }
            Event::Text(text) => {
                out.extend_from_slice(b",\"raw\":");
                write_quoted(out, text);
            }
            Event::Binary(bytes) => {
                out.extend_from_slice(b",\"raw_base64\":\"");
                write_base64(out, bytes);
                out.push(b'"');
            }
        }
        out.push(b'}');
    }

    fn render_text(&mut self, meta: &Metadata<'_>, event: Event<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"kind=");
        out.extend_from_slice(event.kind().as_str().as_bytes());
        out.extend_from_slice(b" subject=");
        write_text_value(out, meta.subject.as_bytes());
        out.extend_from_slice(b" stream=");
        write_text_value(out, meta.stream.as_bytes());
        out.extend_from_slice(b" consumer=");
        write_text_value(out, meta.consumer.as_bytes());
        out.extend_from_slice(b" stream_seq=");
        write_integer(out, meta.stream_sequence);
        out.extend_from_slice(b" consumer_seq=");
        write_integer(out, meta.consumer_sequence);
        out.extend_from_slice(b" delivered=");
        write_integer(out, meta.delivered);
        out.extend_from_slice(b" pending=");
        write_integer(out, meta.pending);
        out.extend_from_slice(b" published=");
        write_rfc3339(out, meta.published_nanos);
        if let Some(headers) = meta.headers {
            for (name, values) in headers.iter() {
                let redacted = self.redact.matches(AsRef::<str>::as_ref(name).as_bytes());
                for value in values {
                    out.extend_from_slice(b" header.");
                    write_text_key(out, name.as_ref());
                    out.push(b'=');
                    if redacted {
                        out.extend_from_slice(crate::redact::REDACTED);
                    } else {
                        write_text_value(out, value.as_str().as_bytes());
                    }
                }
            }
        }
        match event {
            Event::Structured => self.render_text_members(out),
            Event::Text(text) => {
                out.extend_from_slice(b" raw=");
                write_text_value(out, text.as_bytes());
            }
            Event::Binary(bytes) => {
                // Quoted: base64 padding is `=`, which a bare value must not contain.
                out.extend_from_slice(b" raw_base64=\"");
                write_base64(out, bytes);
                out.push(b'"');
            }
        }
    }

    /// Recognised attributes become `event.<name>=` fields; all other members are kept together
    /// as one compact JSON object in `event.extra=`, so nothing is lost and no key is invented.
    fn render_text_members(&mut self, out: &mut Vec<u8>) {
        let compact = self.scanner.compact();
        self.extra.clear();
        for member in self.scanner.members() {
            if let Some(field) = recognised_field(&compact[member.key.clone()]) {
                out.extend_from_slice(field);
                write_text_json_value(out, &compact[member.value.clone()]);
            } else {
                self.extra
                    .push(if self.extra.is_empty() { b'{' } else { b',' });
                self.extra
                    .extend_from_slice(&compact[member.key.start - 1..member.value.end]);
            }
        }
        if !self.extra.is_empty() {
            self.extra.push(b'}');
            out.extend_from_slice(b" event.extra=");
            write_text_json_value(out, &self.extra);
        }
    }
}

/// The text field of a top-level attribute that the text format lifts out of the event: the
/// old service's `id`, `type`, `source`, `data` and timestamp, and the CloudEvents 1.0 context
/// attributes. `key` is the key as the scanner copied it, still escaped: a key spelled
/// `"\u0069d"` is not `id`.
fn recognised_field(key: &[u8]) -> Option<&'static [u8]> {
    Some(match key {
        b"specversion" => b" event.specversion=",
        b"id" => b" event.id=",
        b"type" => b" event.type=",
        b"source" => b" event.source=",
        b"subject" => b" event.subject=",
        b"time" => b" event.time=",
        b"timestamp" => b" event.timestamp=",
        b"datacontenttype" => b" event.datacontenttype=",
        b"dataschema" => b" event.dataschema=",
        b"data" => b" event.data=",
        b"data_base64" => b" event.data_base64=",
        _ => return None,
    })
}

/// The lanes of `word` whose byte may not appear in an unquoted text value: anything but
/// printable ASCII, and the characters that delimit or quote (`"`, `=`, `\`). Every
/// non-ASCII byte is therefore quoted.
#[inline(always)]
fn not_bare_lanes(word: u64) -> u64 {
    let low7 = swar::low7(word);
    let bare_ascii = swar::low7_ge(low7, 0x21)
        & !swar::low7_ge(low7, 0x7f)
        & swar::low7_ne(low7, b'"')
        & swar::low7_ne(low7, b'=')
        & swar::low7_ne(low7, b'\\');
    (word | !bare_ascii) & swar::HIGH
}

/// Appends the longest prefix of `bytes` that may go unquoted and returns its length.
#[inline]
fn copy_bare(out: &mut Vec<u8>, bytes: &[u8]) -> usize {
    swar::copy_run(out, bytes, not_bare_lanes, |_| true)
}

/// Writes UTF-8 `bytes` bare when that is unambiguous, quoted and escaped otherwise.
#[inline]
fn write_text_value(out: &mut Vec<u8>, bytes: &[u8]) {
    write_text_value_with(out, bytes, write_escaped);
}

/// Writes `bytes` as [`write_text_value`] does, escaping with `escape`. The bare prefix copied
/// first is plain for the escaper too, so only the rest is escaped.
#[inline(always)]
fn write_text_value_with(out: &mut Vec<u8>, bytes: &[u8], escape: fn(&mut Vec<u8>, &[u8])) {
    let start = out.len();
    let bare = copy_bare(out, bytes);
    if bare == bytes.len() && !bytes.is_empty() {
        return;
    }
    out.insert(start, b'"');
    escape(out, &bytes[bare..]);
    out.push(b'"');
}

/// Writes a compact JSON value from the scanner: a string whose contents need no quoting goes
/// bare; any other string is already a safe quoted literal; numbers and literals go bare;
/// objects and arrays are quoted as text.
fn write_text_json_value(out: &mut Vec<u8>, value: &[u8]) {
    if let [b'"', contents @ .., b'"'] = value {
        let start = out.len();
        if copy_bare(out, contents) != contents.len() || contents.is_empty() {
            out.truncate(start);
            out.extend_from_slice(value);
        }
    } else {
        // Objects and arrays have a quote every few bytes: the byte-wise escaper is faster.
        write_text_value_with(out, value, write_escaped_dense);
    }
}

/// Header names come from the publisher; anything outside `[A-Za-z0-9_.-]` becomes `_` so a
/// name cannot smuggle a space, `=` or quote into the key.
fn write_text_key(out: &mut Vec<u8>, name: &str) {
    out.extend(name.bytes().map(|byte| {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-') {
            byte
        } else {
            b'_'
        }
    }));
}

#[inline]
fn write_integer<I: itoa::Integer>(out: &mut Vec<u8>, value: I) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    let written = BASE64
        .encode_slice(bytes, &mut out[start..])
        .expect("buffer sized by encoded_len");
    out.truncate(start + written);
}

/// Writes `nanos` since the epoch as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC). Hand-written
/// because it runs once per event and a general formatter costs more than the whole line.
pub(crate) fn write_rfc3339(out: &mut Vec<u8>, nanos: i128) {
    // 64-bit nanoseconds reach from 1677 to 2262; only times beyond need 128-bit division.
    let (seconds, fraction) = match i64::try_from(nanos) {
        Ok(nanos) => (
            nanos.div_euclid(1_000_000_000),
            nanos.rem_euclid(1_000_000_000) as u32,
        ),
        Err(_) => (
            nanos.div_euclid(1_000_000_000) as i64,
            nanos.rem_euclid(1_000_000_000) as u32,
        ),
    };
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    let mut digits = [0u8; 30];
    let year = year.clamp(0, 9999) as u32;
    put_digits(&mut digits[0..4], year);
    digits[4] = b'-';
    put_digits(&mut digits[5..7], month);
    digits[7] = b'-';
    put_digits(&mut digits[8..10], day);
    digits[10] = b'T';
    put_digits(&mut digits[11..13], second_of_day / 3600);
    digits[13] = b':';
    put_digits(&mut digits[14..16], second_of_day / 60 % 60);
    digits[16] = b':';
    put_digits(&mut digits[17..19], second_of_day % 60);
    digits[19] = b'.';
    put_digits(&mut digits[20..29], fraction);
    digits[29] = b'Z';
    out.extend_from_slice(&digits);
}

/// Fills `slot` with the low decimal digits of `value`, zero-padded, two digits per step.
#[inline(always)]
fn put_digits(slot: &mut [u8], mut value: u32) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
                                2021222324252627282930313233343536373839\
                                4041424344454647484950515253545556575859\
                                6061626364656667686970717273747576777879\
                                8081828384858687888990919293949596979899";
    let mut end = slot.len();
    while end >= 2 {
        let pair = (value % 100) as usize * 2;
        slot[end - 2..end].copy_from_slice(&PAIRS[pair..pair + 2]);
        value /= 100;
        end -= 2;
    }
    if end == 1 {
        slot[0] = b'0' + (value % 10) as u8;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(headers: Option<&HeaderMap>) -> Metadata<'_> {
        Metadata {
            subject: "audit.login",
            stream: "AUDIT",
            consumer: "logger",
            stream_sequence: 42,
            consumer_sequence: 7,
            delivered: 2,
            pending: 3,
            published_nanos: 1_795_000_000_123_456_789,
            headers,
        }
    }

    fn render(
        format: Format,
        redact: &[&str],
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> String {
        let mut renderer = LineRenderer::new(format, RedactKeys::new(redact));
        let mut out = Vec::new();
        renderer.render(&meta(headers), payload, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "exactly one line: {line:?}");
        assert!(line.ends_with('\n'));
        line
    }

    fn json(payload: &[u8]) -> serde_json::Value {
        serde_json::from_str(&render(Format::Json, &[], None, payload)).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_nanoseconds() {
        let mut out = Vec::new();
        write_rfc3339(&mut out, 0);
        write_rfc3339(&mut out, 951_782_400_000_000_001); // 2000-02-29
        write_rfc3339(&mut out, -1);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000000Z2000-02-29T00:00:00.000000001Z1969-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn timestamps_agree_with_the_time_crate_inside_and_beyond_64_bits() {
        let utc = |year, month, day, time| {
            time::OffsetDateTime::new_utc(
                time::Date::from_calendar_date(year, month, day).unwrap(),
                time,
            )
            .unix_timestamp_nanos()
        };
        let min = utc(0, time::Month::January, 1, time::Time::MIDNIGHT);
        let max = utc(
            9999,
            time::Month::December,
            31,
            time::Time::from_hms_nano(23, 59, 59, 999_999_999).unwrap(),
        );
        let mut rng = fastrand::Rng::with_seed(41);
        let samples = (0..20_000).map(|_| rng.i128(min..=max));
        let edges = [i64::MIN, -1, 0, 1, i64::MAX].map(i128::from);
        let beyond = [i128::from(i64::MIN) - 1, i128::from(i64::MAX) + 1, min, max];
        for nanos in samples.chain(edges).chain(beyond) {
            let mut out = Vec::new();
            write_rfc3339(&mut out, nanos);
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.nanosecond()
            );
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{nanos}");
        }
    }

    #[test]
    fn json_line_carries_all_metadata_and_the_event() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "m-1");
        headers.append("X-Multi", "a");
        headers.append("X-Multi", "b");
        let line = render(
            Format::Json,
            &[],
            Some(&headers),
            br#"{"id":"1","type":"t","data":{"k":1}}"#,
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "kind": "structured", "subject": "audit.login", "stream": "AUDIT",
                "consumer": "logger", "stream_seq": 42, "consumer_seq": 7, "delivered": 2,
                "pending": 3, "published": "2026-11-18T11:06:40.123456789Z",
                "headers": {"Nats-Msg-Id": "m-1", "X-Multi": ["a", "b"]},
                "event": {"id": "1", "type": "t", "data": {"k": 1}},
            })
        );
    }

    #[test]
    fn json_raw_events_keep_their_text_or_bytes() {
        assert_eq!(json(b"")["raw"], "");
        assert_eq!(json(b"[1,2]")["raw"], "[1,2]");
        assert_eq!(json(b"line\n\"}{\x1b[2J")["raw"], "line\n\"}{\x1b[2J");
        assert_eq!(json(b"\xff\x00")["raw_base64"], "/wA=");
        assert_eq!(json(b"\xff\x00")["kind"], "raw");
    }

    #[test]
    fn hostile_payloads_stay_inside_their_value() {
        let forged = b"x\" subject=forged delivered=99\n{\"kind\":\"structured\"}";
        let value = json(forged);
        assert_eq!(value["subject"], "audit.login");
        assert_eq!(value["raw"], std::str::from_utf8(forged).unwrap());

        let line = render(Format::Text, &[], None, forged);
        assert_eq!(line.matches(" subject=").count(), 2);
        assert!(line.contains(" subject=audit.login "));
        assert!(
            line.contains(r#" raw="x\" subject=forged delivered=99\n{\"kind\":\"structured\"}""#)
        );
    }

    #[test]
    fn text_line_lifts_recognised_attributes_and_keeps_the_rest() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "m 1");
        let line = render(
            Format::Text,
            &["password"],
            Some(&headers),
            br#"{"specversion":"1.0","id":"e-1","source":"/svc a","type":"login","time":"2026-01-01T00:00:00Z","data":{"user":"u","password":"p"},"other":1,"more":"x"}"#,
        );
        assert_eq!(
            line,
            concat!(
                "kind=structured subject=audit.login stream=AUDIT consumer=logger stream_seq=42 ",
                "consumer_seq=7 delivered=2 pending=3 published=2026-11-18T11:06:40.123456789Z ",
                "header.Nats-Msg-Id=\"m 1\" event.specversion=1.0 event.id=e-1 event.source=\"/svc a\" ",
                "event.type=login event.time=2026-01-01T00:00:00Z ",
                r#"event.data="{\"user\":\"u\",\"password\":\"[REDACTED]\"}" "#,
                r#"event.extra="{\"other\":1,\"more\":\"x\"}""#,
                "\n"
            )
        );
    }

    #[test]
    fn text_raw_values_are_quoted_only_when_needed() {
        assert!(render(Format::Text, &[], None, b"plain").ends_with(" raw=plain\n"));
        assert!(render(Format::Text, &[], None, b"").ends_with(" raw=\"\"\n"));
        assert!(render(Format::Text, &[], None, b"a=b").ends_with(" raw=\"a=b\"\n"));
        assert!(
            render(Format::Text, &[], None, "\u{1b}[31m".as_bytes())
                .ends_with(" raw=\"\\u001b[31m\"\n")
        );
        assert!(render(Format::Text, &[], None, b"\xff").ends_with(" raw_base64=\"/w==\"\n"));
    }

    #[test]
    fn headers_named_like_a_redaction_key_are_redacted_in_both_formats() {
        let mut headers = HeaderMap::new();
        headers.insert("Authorization", "Bearer s3cr3t");
        headers.insert("Nats-Msg-Id", "m-1");
        for format in [Format::Json, Format::Text] {
            let line = render(format, &["authorization"], Some(&headers), b"{}");
            assert!(!line.contains("s3cr3t"), "{line}");
            assert!(line.contains("[REDACTED]"), "{line}");
            assert!(line.contains("m-1"), "other headers are kept: {line}");
        }
    }

    /// The attributes docs/audit-consumer.md ("Output") lists are the ones recognised.
    #[test]
    fn recognised_attributes_are_the_ones_the_docs_list() {
        let listed = "specversion id type source subject time timestamp datacontenttype \
                      dataschema data data_base64";
        let docs = include_str!("../../docs/audit-consumer.md")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            docs.contains(&format!("(`{listed}`)")),
            "docs/audit-consumer.md lists the recognised attributes as `{listed}`"
        );
        for name in listed.split_whitespace() {
            assert_eq!(
                recognised_field(name.as_bytes()),
                Some(format!(" event.{name}=").as_bytes()),
            );
        }
        for other in [
            "",
            "ID",
            "ids",
            "dat",
            "extra",
            "data_base",
            "\\u0069d",
            "kind",
        ] {
            assert_eq!(recognised_field(other.as_bytes()), None, "{other}");
        }
    }

    /// The text value rule, one byte at a time: bare when every byte is printable ASCII other
    /// than `"`, `=` and `\\`, and the value is not empty; quoted and escaped otherwise.
    fn reference_text_value(bytes: &[u8]) -> Vec<u8> {
        let bare = |&byte: &u8| matches!(byte, 0x21..=0x7e) && !matches!(byte, b'"' | b'=' | b'\\');
        if !bytes.is_empty() && bytes.iter().all(bare) {
            return bytes.to_vec();
        }
        let mut out = b"\"".to_vec();
        write_escaped(&mut out, bytes);
        out.push(b'"');
        out
    }

    fn random_text(rng: &mut fastrand::Rng, alphabet: &[char]) -> String {
        (0..rng.usize(..40))
            .map(|_| match rng.u8(..4) {
                0 => alphabet[rng.usize(..alphabet.len())],
                _ => char::from(rng.u8(0x20..0x7f)),
            })
            .collect()
    }

    fn text_alphabet() -> Vec<char> {
        let mut alphabet: Vec<char> = ('\0'..='\u{7ff}').collect();
        alphabet.extend('\u{2000}'..='\u{203f}');
        alphabet.extend(['\u{fffd}', '\u{1f600}', '\u{4e2d}']);
        alphabet
    }

    #[test]
    fn bare_runs_end_exactly_where_the_byte_wise_rule_says() {
        let bare = |byte: u8| matches!(byte, 0x21..=0x7e) && !matches!(byte, b'"' | b'=' | b'\\');
        swar::tests::agrees_with(not_bare_lanes, |_| true, |byte| !bare(byte));
    }

    #[test]
    fn text_values_agree_with_the_byte_wise_rule() {
        let alphabet = text_alphabet();
        let check = |text: &str| {
            let mut out = b"x=".to_vec();
            write_text_value(&mut out, text.as_bytes());
            assert_eq!(out[2..], reference_text_value(text.as_bytes()), "{text:?}");
            let line = String::from_utf8(out).unwrap();
            assert!(!line.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']));
        };
        for &c in &alphabet {
            check(&format!("{c}"));
            check(&format!("abcdefgh{c}ij"));
            check(&format!("abc{c}{c}"));
        }
        let mut rng = fastrand::Rng::with_seed(31);
        for _ in 0..50_000 {
            check(&random_text(&mut rng, &alphabet));
        }
    }

    #[test]
    fn text_json_values_agree_with_the_byte_wise_rule() {
        let reference = |value: &[u8]| match value {
            [b'"', contents @ .., b'"'] if reference_text_value(contents) == contents => {
                contents.to_vec()
            }
            [b'"', .., b'"'] => value.to_vec(),
            _ => reference_text_value(value),
        };
        let alphabet = text_alphabet();
        let mut rng = fastrand::Rng::with_seed(37);
        let mut scanner = JsonScanner::new();
        for _ in 0..20_000 {
            let text = random_text(&mut rng, &alphabet);
            let object = serde_json::json!({
                "s": text,
                "o": {"k": text, "n": [1, -2.5, true, null]},
                "e": {},
                "n": rng.i64(..),
            });
            assert!(scanner.scan_object(object.to_string().as_bytes(), &RedactKeys::default()));
            let compact = scanner.compact();
            for member in scanner.members() {
                let value = &compact[member.value.clone()];
                let mut out = Vec::new();
                write_text_json_value(&mut out, value);
                assert_eq!(out, reference(value), "{}", String::from_utf8_lossy(value));
            }
        }
    }

    /// Splits a text line into its `key=value` fields, decoding quoted values; panics on
    /// anything else, such as a stray space, quote or line break.
    fn parse_text_line(line: &str) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        let mut rest = line.strip_suffix('\n').expect("ends with a newline");
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=').expect("key=value");
            assert!(!key.contains([' ', '"', '\\']), "key {key:?} in {line:?}");
            let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
                let mut escaped = false;
                let end = quoted
                    .char_indices()
                    .find(|&(_, c)| {
                        let closes = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        closes
                    })
                    .expect("closing quote")
                    .0
                    + 2;
                let value: String = serde_json::from_str(&after[..end]).expect("a JSON string");
                (value, &after[end..])
            } else {
                let end = after.find(' ').unwrap_or(after.len());
                assert!(!after[..end].contains(['"', '=', '\\']), "bare {after:?}");
                (after[..end].to_owned(), &after[end..])
            };
            fields.push((key.to_owned(), value));
            rest = after.strip_prefix(' ').unwrap_or(after);
            assert!(!rest.starts_with(' '), "double space in {line:?}");
        }
        fields
    }

    #[test]
    fn text_lines_parse_back_to_the_event_they_came_from() {
        let alphabet = text_alphabet();
        let mut rng = fastrand::Rng::with_seed(47);
        let mut renderer = LineRenderer::new(Format::Text, RedactKeys::default());
        for _ in 0..5_000 {
            let mut text = || random_text(&mut rng, &alphabet);
            let event = serde_json::json!({
                "id": text(),
                text(): text(),
                "data": {text(): [text(), 1.5, null]},
                "time": text(),
                "n": 7,
            });
            let payload = event.to_string();
            let mut out = Vec::new();
            renderer.render(&meta(None), payload.as_bytes(), &mut out);
            let line = String::from_utf8(out).unwrap();
            assert_eq!(line.matches('\n').count(), 1);
            assert!(
                !line.contains(|c: char| c.is_control() && c != '\n'),
                "{line:?}"
            );
            assert!(!line.contains(['\u{2028}', '\u{2029}']), "{line:?}");

            let fields = parse_text_line(&line);
            let keys: Vec<&str> = fields.iter().map(|(key, _)| key.as_str()).collect();
            assert_eq!(
                keys[..9],
                [
                    "kind",
                    "subject",
                    "stream",
                    "consumer",
                    "stream_seq",
                    "consumer_seq",
                    "delivered",
                    "pending",
                    "published"
                ]
            );
            let object = event.as_object().unwrap();
            let mut extra = serde_json::Map::new();
            let mut lifted = Vec::new();
            for (key, value) in object {
                match recognised_field(key.as_bytes()) {
                    Some(_) => lifted.push((format!("event.{key}"), value.clone())),
                    None => drop(extra.insert(key.clone(), value.clone())),
                }
            }
            if !extra.is_empty() {
                lifted.push(("event.extra".to_owned(), serde_json::Value::Object(extra)));
            }
            let event_fields = &fields[9..];
            assert_eq!(event_fields.len(), lifted.len(), "{line:?}");
            for ((key, value), (expected_key, expected)) in event_fields.iter().zip(&lifted) {
                assert_eq!(key, expected_key, "{line:?}");
                match expected {
                    serde_json::Value::String(string) => assert_eq!(value, string, "{line:?}"),
                    other => assert_eq!(
                        &serde_json::from_str::<serde_json::Value>(value).unwrap(),
                        other,
                        "{line:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn text_header_names_cannot_forge_keys() {
        let mut headers = HeaderMap::new();
        headers.insert("a=b\"c", "v");
        assert!(render(Format::Text, &[], Some(&headers), b"x").contains(" header.a_b_c=v "));
    }

    #[test]
    fn redaction_changes_only_named_values() {
        let payload = br#"{"id":"1","auth":{"Authorization":"Bearer x","scheme":"basic"},"list":[{"token":1}]}"#;
        let value = serde_json::from_str::<serde_json::Value>(&render(
            Format::Json,
            &["authorization", "token"],
            None,
            payload,
        ))
        .unwrap();
        assert_eq!(
            value["event"],
            serde_json::json!({"id":"1","auth":{"Authorization":"[REDACTED]","scheme":"basic"},"list":[{"token":"[REDACTED]"}]})
        );
    }
}
