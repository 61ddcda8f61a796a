//! The hash chain of one pod process's output, and how a chained line is read back.
//!
//! With integrity on, every line ends with three fields: `chain` (the chain's id), `seq` (the
//! line's position in the chain, from 1) and `prev` (the BLAKE3 hash of the chain's previous
//! line, lowercase hex, or `start` on the first line). In JSON they are the object's last
//! members, `...,"chain":"<id>","seq":<n>,"prev":"<hex>"}`; in text the last pairs,
//! `... chain=<id> seq=<n> prev=<hex>`. The hash of a line is BLAKE3 over the line exactly as
//! written, these fields included, without its newline. Fields added at the end leave the
//! renderer untouched, and a reader finds them by searching from the end of the line: every
//! payload-derived byte comes before them, and the id's characters need no quoting in either
//! format.

use std::sync::Arc;

use crate::format::Format;

/// The `prev` value of a chain's first line.
pub const START: &str = "start";

/// The characters a chain id keeps; any other becomes `_`. None of them needs quoting in JSON
/// or in the text format, and `/` separates the id's parts.
fn id_char(byte: u8) -> u8 {
    if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b':') {
        byte
    } else {
        b'_'
    }
}

/// `<consumer>/<pod>/<start>`: the durable consumer (named after its AuditConsumer), the pod,
/// and when the chain started (RFC 3339, UTC, ns) so that a restarted container starts a new
/// chain.
pub fn chain_id(consumer: &str, pod: &str, start_nanos: i128) -> String {
    let mut id = Vec::with_capacity(consumer.len() + pod.len() + 32);
    id.extend(consumer.bytes().map(id_char));
    id.push(b'/');
    id.extend(pod.bytes().map(id_char));
    id.push(b'/');
    crate::format::write_rfc3339(&mut id, start_nanos);
    String::from_utf8(id).expect("only ASCII is kept")
}

/// The pod part of a chain id (as [`chain_id`] wrote it: a pod name keeps its characters).
pub fn pod_of(chain: &str) -> Option<&str> {
    let mut parts = chain.splitn(3, '/');
    let _consumer = parts.next()?;
    let pod = parts.next()?;
    parts.next().map(|_| pod)
}

/// A position of a chain and the hash of its line: what a checkpoint witnesses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub chain: Arc<str>,
    pub seq: u64,
    pub hash: blake3::Hash,
}

/// The chain state of the lines being rendered: the last line's position and hash.
pub struct Chain {
    format: Format,
    id: Arc<str>,
    seq: u64,
    prev: blake3::Hash,
}

impl Chain {
    pub fn new(format: Format, id: String) -> Self {
        Self {
            format,
            id: id.into(),
            seq: 0,
            prev: blake3::Hash::from_bytes([0; 32]),
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Adds the chain fields to the line that `render` just appended to `out` from
    /// `line_start` (its newline included), and advances the chain past it.
    pub fn seal(&mut self, out: &mut Vec<u8>, line_start: usize) {
        debug_assert_eq!(out.last(), Some(&b'\n'));
        self.seq += 1;
        let mut hex = [0u8; 64];
        let prev: &[u8] = if self.seq == 1 {
            START.as_bytes()
        } else {
            write_hex(&mut hex, self.prev.as_bytes());
            &hex
        };
        match self.format {
            Format::Json => {
                debug_assert!(out.ends_with(b"}\n"));
                out.truncate(out.len() - 2);
                out.extend_from_slice(b",\"chain\":\"");
                out.extend_from_slice(self.id.as_bytes());
                out.extend_from_slice(b"\",\"seq\":");
                out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
                out.extend_from_slice(b",\"prev\":\"");
                out.extend_from_slice(prev);
                out.extend_from_slice(b"\"}");
            }
            Format::Text => {
                out.truncate(out.len() - 1);
                out.extend_from_slice(b" chain=");
                out.extend_from_slice(self.id.as_bytes());
                out.extend_from_slice(b" seq=");
                out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
                out.extend_from_slice(b" prev=");
                out.extend_from_slice(prev);
            }
        }
        self.prev = blake3::hash(&out[line_start..]);
        out.push(b'\n');
    }

    /// The last line sealed, if any.
    pub fn head(&self) -> Option<Head> {
        (self.seq > 0).then(|| Head {
            chain: self.id.clone(),
            seq: self.seq,
            hash: self.prev,
        })
    }
}

/// The chain fields of a line, as [`parse`] reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link<'a> {
    pub chain: &'a str,
    pub seq: u64,
    /// `None` on a chain's first line (`start`).
    pub prev: Option<blake3::Hash>,
}

/// The chain fields of `line` (without its newline), or `None` when it is not a chained line.
pub fn parse(line: &[u8]) -> Option<Link<'_>> {
    // The fields in the order written, separators as each format writes them.
    let (after_chain, seq_key, prev_key) = if line.first() == Some(&b'{') {
        let at = memchr::memmem::rfind(line, b",\"chain\":\"")?;
        (
            line[at + 10..].strip_suffix(b"\"}")?,
            &b"\",\"seq\":"[..],
            &b",\"prev\":\""[..],
        )
    } else {
        let at = memchr::memmem::rfind(line, b" chain=")?;
        (&line[at + 7..], &b" seq="[..], &b" prev="[..])
    };
    let (chain, rest) = split_once(after_chain, seq_key)?;
    let (seq, prev) = split_once(rest, prev_key)?;
    if chain.is_empty()
        || chain
            .iter()
            .any(|&byte| byte != b'/' && id_char(byte) != byte)
    {
        return None;
    }
    if seq.is_empty() || !seq.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let prev = match prev {
        b"start" => None,
        hex if hex.len() == 64 => Some(blake3::Hash::from_hex(hex).ok()?),
        _ => return None,
    };
    Some(Link {
        chain: std::str::from_utf8(chain).ok()?,
        seq: std::str::from_utf8(seq).ok()?.parse().ok()?,
        prev,
    })
}

fn split_once<'a>(bytes: &'a [u8], separator: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let at = memchr::memmem::find(bytes, separator)?;
    Some((&bytes[..at], &bytes[at + separator.len()..]))
}

/// The hash of a line as the chain defines it: BLAKE3 over the line without its newline.
pub fn line_hash(line: &[u8]) -> blake3::Hash {
    blake3::hash(line)
}

pub fn write_hex(out: &mut [u8; 64], bytes: &[u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{LineRenderer, Metadata};
    use crate::redact::RedactKeys;

    const ID: &str = "audit-logger/audit-logger-0/2026-11-28T11:00:00.000000000Z";

    fn meta() -> Metadata<'static> {
        Metadata {
            subject: "audit.x",
            stream: "AUDIT",
            consumer: "audit-logger",
            stream_sequence: 7,
            consumer_sequence: 7,
            delivered: 1,
            pending: 0,
            published_nanos: 1_795_000_000_000_000_000,
            headers: None,
        }
    }

    /// Three chained lines of `payloads`, without their newlines.
    fn chained(format: Format, payloads: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut renderer = LineRenderer::new(format, RedactKeys::new(Vec::<String>::new()));
        let mut chain = Chain::new(format, ID.into());
        let mut out = Vec::new();
        for payload in payloads {
            let start = out.len();
            renderer.render(&meta(), payload, &mut out);
            chain.seal(&mut out, start);
        }
        out.split(|&byte| byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }

    const PAYLOADS: [&[u8]; 3] = [
        br#"{"id":"a","data":{"chain":"forged","seq":1}}"#,
        b"raw text with chain=forged seq=9 prev=start inside",
        &[0xff, 0x00, 0x10],
    ];

    #[test]
    fn each_line_names_the_hash_of_the_one_before() {
        for format in [Format::Json, Format::Text] {
            let lines = chained(format, &PAYLOADS);
            let links: Vec<Link<'_>> = lines
                .iter()
                .map(|line| parse(line).unwrap_or_else(|| panic!("{line:?}")))
                .collect();
            assert_eq!(links[0].prev, None, "the first line starts the chain");
            for (n, link) in links.iter().enumerate() {
                assert_eq!(link.chain, ID);
                assert_eq!(link.seq, n as u64 + 1);
                if n > 0 {
                    assert_eq!(link.prev, Some(line_hash(&lines[n - 1])), "{format:?} {n}");
                }
            }
        }
    }

    #[test]
    fn the_head_is_the_hash_of_the_last_line_as_written() {
        let mut chain = Chain::new(Format::Text, ID.into());
        assert_eq!(chain.head(), None);
        let mut out = b"kind=raw raw=x\n".to_vec();
        chain.seal(&mut out, 0);
        let line = out.strip_suffix(b"\n").unwrap();
        assert_eq!(
            line,
            format!("kind=raw raw=x chain={ID} seq=1 prev=start").as_bytes()
        );
        let head = chain.head().unwrap();
        assert_eq!((head.seq, head.hash), (1, blake3::hash(line)));
        assert_eq!(&*head.chain, ID);
    }

    #[test]
    fn json_lines_stay_json_with_the_chain_as_top_level_members() {
        let lines = chained(Format::Json, &PAYLOADS);
        let first: serde_json::Value = serde_json::from_slice(&lines[0]).unwrap();
        assert_eq!(first["chain"], ID);
        assert_eq!(first["seq"], 1);
        assert_eq!(first["prev"], "start");
        assert_eq!(first["event"]["data"]["chain"], "forged");
        let second: serde_json::Value = serde_json::from_slice(&lines[1]).unwrap();
        assert_eq!(
            second["prev"].as_str().unwrap(),
            line_hash(&lines[0]).to_hex().as_str()
        );
    }

    #[test]
    fn payload_text_cannot_pose_as_the_chain_fields() {
        let lines = chained(Format::Text, &PAYLOADS);
        let link = parse(&lines[1]).unwrap();
        assert_eq!((link.chain, link.seq), (ID, 2));
        // Without the real fields at the end, the forged ones inside a value are not read
        // as a link.
        let text = b"kind=raw raw=\"x chain=c seq=1 prev=start\"";
        assert_eq!(parse(text), None);
        assert_eq!(parse(br#"{"kind":"raw","raw":"x"}"#), None);
        assert_eq!(parse(b"kind=raw chain=a/b seq=x prev=start"), None);
        assert_eq!(parse(b"kind=raw chain=a/b seq=1 prev=abc"), None);
    }

    #[test]
    fn chain_ids_name_consumer_pod_and_start_and_need_no_quoting() {
        assert_eq!(
            chain_id("audit-logger", "pod 1\"=x", 1_795_000_000_123_456_789),
            "audit-logger/pod_1__x/2026-11-18T11:06:40.123456789Z"
        );
        let id = chain_id("logger", "app.reader-audit-consumer-7f9-x2", 0);
        assert_eq!(pod_of(&id), Some("app.reader-audit-consumer-7f9-x2"));
        assert_eq!(pod_of("no-parts"), None);
    }
}
