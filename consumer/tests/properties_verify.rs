//! Property tests of what `audit-consumer verify` reads: log lines (`chain::parse` and the
//! `Verifier`) and witnessed heads (`head::open`), from untrusted bytes.
//!
//! The main property: a trail whose witnessed lines were changed in any way (a byte flipped,
//! a line dropped, duplicated ahead of itself, moved, cut, joined, split, forged or replaced
//! by a consistent forgery) is never reported complete; an untouched one always is.
//!
//! The number of cases comes from `PROPTEST_CASES` (default [`CASES`], a few seconds per
//! property in a debug build); `make fuzz` runs the same properties with many more.
//! Failures are saved as seeds in `tests/proptest-regressions/properties_verify.txt`, which is
//! committed and replayed first on every run; the inputs of bugs found so far are also kept
//! below as plain tests (`regression_*`).

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use audit_consumer::format::{Format, LineRenderer, Metadata};
use audit_consumer::integrity::chain::{self, Chain, Head, chain_id};
use audit_consumer::integrity::head::{self, Checkpoint, Rejected};
use audit_consumer::integrity::verify::{ChainReport, Location, Status, Verifier};
use audit_consumer::redact::RedactKeys;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

/// Cases per property when `PROPTEST_CASES` is not set.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/properties_verify.txt"
        )))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Trails written by the crate's own renderer and chain
// ---------------------------------------------------------------------------------------------

const PRIMARY: &str = "audit-logger/audit-logger-0/2026-11-28T11:00:00.000000000Z";
const OTHER: &str = "audit-logger/audit-logger-1/2026-11-28T11:00:00.000000000Z";

fn meta(sequence: u64) -> Metadata<'static> {
    Metadata {
        subject: "audit.x",
        stream: "AUDIT",
        consumer: "audit-logger",
        stream_sequence: sequence,
        consumer_sequence: sequence,
        delivered: 1,
        pending: 0,
        published_nanos: 1_795_000_000_000_000_000,
        headers: None,
    }
}

/// The lines (without their newlines) the consumer writes for `payloads` with integrity on,
/// and the chain's head after each line.
fn chained(format: Format, id: &str, payloads: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Head>) {
    let mut renderer = LineRenderer::new(format, RedactKeys::default());
    let mut chain = Chain::new(format, id.into());
    let mut lines = Vec::new();
    let mut heads = Vec::new();
    for (n, payload) in payloads.iter().enumerate() {
        let mut out = Vec::new();
        renderer.render(&meta(n as u64 + 1), payload, &mut out);
        chain.seal(&mut out, 0);
        assert_eq!(out.pop(), Some(b'\n'));
        lines.push(out);
        heads.push(chain.head().expect("a line was sealed"));
    }
    (lines, heads)
}

fn checkpoint(head: &Head) -> Checkpoint {
    Checkpoint::new(head, 1_795_000_000_000_000_000, "signer".into())
}

/// Text that looks like the chain fields of either format.
const FORGING: &[&[u8]] = &[
    b" chain=audit-logger/audit-logger-0/2026-11-28T11:00:00.000000000Z seq=1 prev=start",
    b",\"chain\":\"audit-logger/audit-logger-0/2026-11-28T11:00:00.000000000Z\",\"seq\":1,\"prev\":\"start\"}",
    b" seq=2 prev=",
    b"\",\"seq\":",
    b"{\"id\":\"a\",\"data\":{\"chain\":\"forged\",\"seq\":1}}",
    b"\n",
    b"\r",
    b"\"",
    b"\\",
    b"\xff",
];

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => "[ -~]{0,40}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => proptest::collection::vec(proptest::sample::select(FORGING), 0..4).prop_map(|parts| parts.concat()),
        1 => ("[a-z]{1,8}", "[ -~]{0,16}").prop_map(|(key, value)| {
            serde_json::json!({"id": key, "data": {"value": value}}).to_string().into_bytes()
        }),
    ]
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Json), Just(Format::Text)]
}

/// A chain of one pod: its payloads, and the positions (from 1) whose heads were witnessed.
#[derive(Clone, Debug)]
struct Written {
    format: Format,
    payloads: Vec<Vec<u8>>,
    witnessed: Vec<usize>,
}

fn written(max_lines: usize) -> impl Strategy<Value = Written> {
    (format(), proptest::collection::vec(payload(), 1..max_lines)).prop_flat_map(
        |(format, payloads)| {
            let count = payloads.len();
            (
                Just(format),
                Just(payloads),
                proptest::collection::vec(1..=count, 1..4).prop_map(move |mut witnessed| {
                    witnessed.sort_unstable();
                    witnessed.dedup();
                    witnessed
                }),
            )
                .prop_map(|(format, payloads, witnessed)| Written {
                    format,
                    payloads,
                    witnessed,
                })
        },
    )
}

/// One position of the trail before it is changed: a line of the primary chain, of the other
/// chain, or a line that is not chained (another program's output on the same stream).
#[derive(Clone, Debug)]
enum Slot {
    Primary(usize),
    Other(usize),
    Noise(Vec<u8>),
}

/// A change to the trail, applied to its lines in order.
#[derive(Clone, Debug)]
enum LineEdit {
    Drop(usize),
    /// A copy of a line, at any position (also ahead of the original).
    Duplicate(usize, usize),
    /// A copy of a line right after it (a log shipper sending it again).
    Repeat(usize),
    Move(usize, usize),
    Swap(usize, usize),
    /// The line cut to `keep` bytes (a torn write).
    Cut(usize, usize),
    /// The line and the next as one (a lost newline).
    Join(usize),
    /// Bytes written into the line at an offset (may hold a newline: then two lines).
    Splice(usize, usize, Vec<u8>),
    /// A line of other bytes at a position.
    Insert(usize, Vec<u8>),
    /// A line claiming a position of the primary chain: the text before another line's
    /// chain fields, then the primary chain's fields with the given position and `prev`.
    Forge {
        at: usize,
        template: usize,
        seq: u64,
        prev: Prev,
    },
    /// A line replaced by another line's content, keeping its own chain fields.
    Transplant {
        line: usize,
        content_of: usize,
    },
}

#[derive(Clone, Debug)]
enum Prev {
    Start,
    /// The hash of the line at this index of the trail.
    HashOf(usize),
    Random([u8; 32]),
}

/// A change to the trail's bytes as one stream, after the line edits.
#[derive(Clone, Debug)]
enum ByteEdit {
    Flip(usize, u8),
    Set(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    /// The stream cut at an offset (a truncated file).
    Truncate(usize),
}

fn seq_choice() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..20,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => any::<u64>(),
    ]
}

fn noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(proptest::sample::select(FORGING), 1..4)
            .prop_map(|parts| parts.concat()),
        "[ -~]{0,40}".prop_map(String::into_bytes),
    ]
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    let index = any::<usize>;
    prop_oneof![
        2 => index().prop_map(LineEdit::Drop),
        2 => (index(), index()).prop_map(|(line, to)| LineEdit::Duplicate(line, to)),
        1 => index().prop_map(LineEdit::Repeat),
        1 => (index(), index()).prop_map(|(from, to)| LineEdit::Move(from, to)),
        1 => (index(), index()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        1 => (index(), index()).prop_map(|(line, keep)| LineEdit::Cut(line, keep)),
        1 => index().prop_map(LineEdit::Join),
        1 => (index(), index(), noise()).prop_map(|(line, at, bytes)| LineEdit::Splice(line, at, bytes)),
        1 => (index(), noise()).prop_map(|(at, bytes)| LineEdit::Insert(at, bytes)),
        2 => (
            index(),
            index(),
            seq_choice(),
            prop_oneof![
                Just(Prev::Start),
                index().prop_map(Prev::HashOf),
                any::<[u8; 32]>().prop_map(Prev::Random),
            ],
        )
            .prop_map(|(at, template, seq, prev)| LineEdit::Forge { at, template, seq, prev }),
        1 => (index(), index()).prop_map(|(line, content_of)| LineEdit::Transplant { line, content_of }),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let offset = any::<usize>;
    prop_oneof![
        3 => (offset(), 1u8..=255).prop_map(|(at, mask)| ByteEdit::Flip(at, mask)),
        1 => (offset(), any::<u8>()).prop_map(|(at, byte)| ByteEdit::Set(at, byte)),
        1 => (offset(), 1usize..8).prop_map(|(at, len)| ByteEdit::Delete(at, len)),
        1 => (offset(), noise()).prop_map(|(at, bytes)| ByteEdit::Insert(at, bytes)),
        1 => offset().prop_map(ByteEdit::Truncate),
    ]
}

/// The text before a line's chain fields, and the fields for `id`, `seq` and `prev`.
fn with_chain_fields(line: &[u8], id: &str, seq: u64, prev: &str) -> Vec<u8> {
    let json = line.first() == Some(&b'{');
    let marker: &[u8] = if json { b",\"chain\":\"" } else { b" chain=" };
    let body = match memchr::memmem::rfind(line, marker) {
        Some(at) => &line[..at],
        None => line,
    };
    let mut out = body.to_vec();
    if json {
        out.extend_from_slice(
            format!(",\"chain\":\"{id}\",\"seq\":{seq},\"prev\":\"{prev}\"}}").as_bytes(),
        );
    } else {
        out.extend_from_slice(format!(" chain={id} seq={seq} prev={prev}").as_bytes());
    }
    out
}

fn hex(bytes: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*bytes).to_hex().to_string()
}

fn apply_line_edit(lines: &mut Vec<Vec<u8>>, edit: &LineEdit) {
    let len = lines.len();
    if len == 0 {
        if let LineEdit::Insert(_, bytes) = edit {
            lines.push(bytes.clone());
        }
        return;
    }
    match edit {
        LineEdit::Drop(line) => drop(lines.remove(line % len)),
        LineEdit::Duplicate(line, to) => {
            let copy = lines[line % len].clone();
            lines.insert(to % (len + 1), copy);
        }
        LineEdit::Repeat(line) => {
            let at = line % len;
            let copy = lines[at].clone();
            lines.insert(at + 1, copy);
        }
        LineEdit::Move(from, to) => {
            let line = lines.remove(from % len);
            lines.insert(to % len, line);
        }
        LineEdit::Swap(a, b) => lines.swap(a % len, b % len),
        LineEdit::Cut(line, keep) => {
            let line = &mut lines[line % len];
            let keep = keep % (line.len() + 1);
            line.truncate(keep);
        }
        LineEdit::Join(line) => {
            let at = line % len;
            if at + 1 < len {
                let next = lines.remove(at + 1);
                lines[at].extend_from_slice(&next);
            }
        }
        LineEdit::Splice(line, at, bytes) => {
            let line = &mut lines[line % len];
            let at = at % (line.len() + 1);
            line.splice(at..at, bytes.iter().copied());
        }
        LineEdit::Insert(at, bytes) => lines.insert(at % (len + 1), bytes.clone()),
        LineEdit::Forge {
            at,
            template,
            seq,
            prev,
        } => {
            let prev = match prev {
                Prev::Start => chain::START.to_owned(),
                Prev::HashOf(line) => chain::line_hash(&lines[line % len]).to_hex().to_string(),
                Prev::Random(bytes) => hex(bytes),
            };
            let forged = with_chain_fields(&lines[template % len], PRIMARY, *seq, &prev);
            lines.insert(at % (len + 1), forged);
        }
        LineEdit::Transplant { line, content_of } => {
            let target = line % len;
            let Some(link) = chain::parse(&lines[target]) else {
                return;
            };
            let prev = link
                .prev
                .map_or(chain::START.to_owned(), |hash| hash.to_hex().to_string());
            let (id, seq) = (link.chain.to_owned(), link.seq);
            lines[target] = with_chain_fields(&lines[content_of % len], &id, seq, &prev);
        }
    }
}

fn apply_byte_edit(stream: &mut Vec<u8>, edit: &ByteEdit) {
    let len = stream.len();
    match edit {
        ByteEdit::Flip(at, mask) if len > 0 => stream[at % len] ^= mask,
        ByteEdit::Set(at, byte) if len > 0 => stream[at % len] = *byte,
        ByteEdit::Delete(at, count) if len > 0 => {
            let at = at % len;
            stream.drain(at..(at + count).min(len));
        }
        ByteEdit::Insert(at, bytes) => {
            let at = at % (len + 1);
            stream.splice(at..at, bytes.iter().copied());
        }
        ByteEdit::Truncate(at) => stream.truncate(at % (len + 1)),
        _ => {}
    }
}

/// The lines `verify` reads from a file: split at each newline (a last line without one is
/// still a line), the newline and a carriage return before it removed.
fn read_lines(stream: &[u8]) -> Vec<Vec<u8>> {
    if stream.is_empty() {
        return Vec::new();
    }
    let body = stream.strip_suffix(b"\n").unwrap_or(stream);
    body.split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        .collect()
}

/// Everything that makes one check: the chains as written, the trail as read.
#[derive(Clone, Debug)]
struct Case {
    primary: Written,
    other: Option<Written>,
    /// The order of the trail's lines before it is changed.
    slots: Vec<Slot>,
    /// The first position the check expects of the primary chain (an incremental check);
    /// its earlier lines are not in the trail.
    floor: Option<usize>,
    /// A consistent forgery of the primary chain from a position on (every link holds): the
    /// position's payload replaced and everything after it sealed again.
    forgery: Option<(usize, Vec<u8>)>,
    line_edits: Vec<LineEdit>,
    byte_edits: Vec<ByteEdit>,
    /// The trail split into files at these line indices, the files given in this order.
    cuts: Vec<usize>,
    file_order: Vec<u8>,
}

fn case(max_edits: usize) -> impl Strategy<Value = Case> {
    (written(14), proptest::option::of(written(6))).prop_flat_map(move |(primary, other)| {
        let primary_count = primary.payloads.len();
        let other_count = other.as_ref().map_or(0, |other| other.payloads.len());
        (
            Just(primary),
            Just(other),
            proptest::collection::vec(any::<u16>(), other_count),
            proptest::collection::vec(
                (
                    any::<u16>(),
                    noise().prop_filter("one line, not chained", |line| {
                        !line.contains(&b'\n')
                            && chain::parse(line.strip_suffix(b"\r").unwrap_or(line)).is_none()
                    }),
                ),
                0..3,
            ),
            proptest::option::weighted(0.25, 1..=primary_count),
            proptest::option::weighted(0.2, (1..=primary_count, payload())),
            proptest::collection::vec(line_edit(), 0..=max_edits),
            proptest::collection::vec(byte_edit(), 0..=max_edits / 2),
            proptest::collection::vec(any::<usize>(), 0..3),
            proptest::collection::vec(any::<u8>(), 4),
        )
            .prop_map(
                move |(
                    primary,
                    other,
                    other_at,
                    noise,
                    floor,
                    forgery,
                    line_edits,
                    byte_edits,
                    cuts,
                    file_order,
                )| {
                    // The other chain's and the noise lines go between the primary's, each
                    // chain in its own order.
                    let mut slots: Vec<(u32, Slot)> = (0..primary_count)
                        .map(|n| ((n as u32) << 16 | 0x8000, Slot::Primary(n)))
                        .collect();
                    let mut keys: Vec<u32> = other_at
                        .iter()
                        .map(|&key| u32::from(key) * primary_count as u32)
                        .collect();
                    keys.sort_unstable();
                    slots.extend(
                        keys.into_iter()
                            .enumerate()
                            .map(|(n, key)| (key, Slot::Other(n))),
                    );
                    slots.extend(noise.into_iter().map(|(key, line)| {
                        (u32::from(key) * primary_count as u32, Slot::Noise(line))
                    }));
                    slots.sort_by_key(|(key, _)| *key);
                    Case {
                        primary,
                        other,
                        slots: slots.into_iter().map(|(_, slot)| slot).collect(),
                        floor,
                        forgery,
                        line_edits,
                        byte_edits,
                        cuts,
                        file_order,
                    }
                },
            )
    })
}

/// The chains as written, their heads, and what `verify` reads after the case's changes.
struct Trail {
    primary: Vec<Vec<u8>>,
    primary_heads: Vec<Head>,
    other: Vec<Vec<u8>>,
    other_heads: Vec<Head>,
    /// The files as given to the verifier, in order: (source, lines).
    files: Vec<(usize, Vec<Vec<u8>>)>,
}

fn trail(case: &Case) -> Trail {
    let (primary, primary_heads) = chained(case.primary.format, PRIMARY, &case.primary.payloads);
    let (other, other_heads) = match &case.other {
        Some(other) => chained(other.format, OTHER, &other.payloads),
        None => (Vec::new(), Vec::new()),
    };
    let written = match &case.forgery {
        Some((from, payload)) => {
            let mut payloads = case.primary.payloads.clone();
            payloads[from - 1] = payload.clone();
            chained(case.primary.format, PRIMARY, &payloads).0
        }
        None => primary.clone(),
    };
    let floor = case.floor.unwrap_or(1);
    let mut lines: Vec<Vec<u8>> = case
        .slots
        .iter()
        .filter_map(|slot| match slot {
            Slot::Primary(n) => (n + 1 >= floor).then(|| written[*n].clone()),
            Slot::Other(n) => Some(other[*n].clone()),
            Slot::Noise(line) => Some(line.clone()),
        })
        .collect();
    for edit in &case.line_edits {
        apply_line_edit(&mut lines, edit);
    }
    let mut stream = Vec::new();
    for line in &lines {
        stream.extend_from_slice(line);
        stream.push(b'\n');
    }
    for edit in &case.byte_edits {
        apply_byte_edit(&mut stream, edit);
    }
    let lines = read_lines(&stream);

    // Files: consecutive runs of lines, given in any order.
    let mut cuts: Vec<usize> = case
        .cuts
        .iter()
        .map(|cut| cut % (lines.len() + 1))
        .collect();
    cuts.extend([0, lines.len()]);
    cuts.sort_unstable();
    cuts.dedup();
    let mut files: Vec<(usize, Vec<Vec<u8>>)> = cuts
        .windows(2)
        .enumerate()
        .map(|(source, range)| (source, lines[range[0]..range[1]].to_vec()))
        .collect();
    files.sort_by_key(|(source, _)| case.file_order[source % case.file_order.len()]);
    Trail {
        primary,
        primary_heads,
        other,
        other_heads,
        files,
    }
}

fn verify(case: &Case, trail: &Trail) -> Vec<ChainReport> {
    let mut verifier = Verifier::default();
    if let Some(floor) = case.floor {
        verifier.set_floor(PRIMARY, floor as u64);
    }
    for (source, lines) in &trail.files {
        for (index, line) in lines.iter().enumerate() {
            verifier.add_line(
                line,
                Location {
                    source: *source,
                    line: index + 1,
                },
            );
        }
    }
    for &position in &case.primary.witnessed {
        verifier.add_checkpoint(&checkpoint(&trail.primary_heads[position - 1]));
    }
    // The other pod's chain is witnessed up to its end.
    if let Some(last) = trail.other_heads.last() {
        verifier.add_checkpoint(&checkpoint(last));
    }
    verifier.reports()
}

/// Whether the trail as read still holds the witnessed lines of chain `id` exactly as
/// written: every line of the chain read is one of them (positions below `floor` aside, which
/// the check does not expect, by design), each of `floor..=witnessed` is there, and within
/// each file their first copies come in order.
fn intact(trail: &Trail, id: &str, written: &[Vec<u8>], witnessed: usize, floor: usize) -> bool {
    let mut first_seen = BTreeSet::new();
    for (_, lines) in &trail.files {
        let mut highest = 0;
        for line in lines {
            let Some(link) = chain::parse(line) else {
                continue;
            };
            if link.chain != id || link.seq < floor as u64 {
                continue;
            }
            let Some(position) =
                (floor..=witnessed).find(|&position| written[position - 1] == *line)
            else {
                return false;
            };
            if first_seen.insert(position) {
                if position < highest {
                    return false;
                }
                highest = position;
            }
        }
    }
    first_seen.len() == (floor..=witnessed).count()
}

/// Whether the witnessed part alone is as written: every line of chain `id` at a position in
/// `floor..=witnessed` is the line written there, each of those positions is there, and within
/// each file their first copies come in order. Lines at other positions are not looked at.
fn witnessed_part_intact(
    trail: &Trail,
    id: &str,
    written: &[Vec<u8>],
    witnessed: usize,
    floor: usize,
) -> bool {
    let covered = floor as u64..=witnessed as u64;
    let mut first_seen = BTreeSet::new();
    for (_, lines) in &trail.files {
        let mut highest = 0;
        for line in lines {
            let Some(link) = chain::parse(line) else {
                continue;
            };
            if link.chain != id || !covered.contains(&link.seq) {
                continue;
            }
            if written[link.seq as usize - 1] != *line {
                return false;
            }
            if first_seen.insert(link.seq) {
                if link.seq < highest {
                    return false;
                }
                highest = link.seq;
            }
        }
    }
    first_seen.len() == covered.count()
}

fn report_of<'a>(reports: &'a [ChainReport], id: &str) -> Option<&'a ChainReport> {
    reports.iter().find(|report| report.chain == id)
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input
// ---------------------------------------------------------------------------------------------

const IDS: &[&str] = &[PRIMARY, OTHER, "a/b", "x", "a/b/c/d", "-", "a//b"];

/// Text in the shape of a chained line, with fields that are right, wrong or out of range.
fn chained_looking_line() -> impl Strategy<Value = Vec<u8>> {
    let seq = prop_oneof![
        seq_choice().prop_map(|seq| seq.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("00".to_owned()),
        Just(String::new()),
        "[0-9a-z+-]{1,4}",
    ];
    let prev = prop_oneof![
        Just("start".to_owned()),
        any::<[u8; 32]>().prop_map(|bytes| hex(&bytes)),
        "[0-9a-fA-Fz]{60,66}",
        Just(String::new()),
    ];
    (
        any::<bool>(),
        prop_oneof![proptest::sample::select(IDS).prop_map(str::to_owned), "[ -~]{0,12}"],
        seq,
        prev,
        "[ -~]{0,20}",
    )
        .prop_map(|(json, id, seq, prev, body)| {
            if json {
                format!("{{\"kind\":\"raw\",\"raw\":{body:?},\"chain\":\"{id}\",\"seq\":{seq},\"prev\":\"{prev}\"}}")
            } else {
                format!("kind=raw raw={body} chain={id} seq={seq} prev={prev}")
            }
            .into_bytes()
        })
}

fn any_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..96),
        3 => chained_looking_line(),
        1 => (chained_looking_line(), any::<usize>(), 1u8..=255).prop_map(|(mut line, at, mask)| {
            let at = at % line.len();
            line[at] ^= mask;
            line
        }),
        1 => proptest::collection::vec(proptest::sample::select(FORGING), 0..6).prop_map(|parts| parts.concat()),
    ]
}

fn any_checkpoint() -> impl Strategy<Value = Checkpoint> {
    (
        prop_oneof![
            proptest::sample::select(IDS).prop_map(str::to_owned),
            "[ -~]{0,12}"
        ],
        seq_choice(),
        prop_oneof![
            any::<[u8; 32]>().prop_map(|bytes| hex(&bytes)),
            "[ -~]{0,70}",
            "[0-9A-F]{64}",
        ],
    )
        .prop_map(|(chain, seq, hash)| Checkpoint {
            chain,
            seq,
            hash,
            time: "2026-11-28T11:00:00.000000000Z".into(),
            signer: "signer".into(),
            segment: None,
        })
}

/// The trusted key of the head properties, and its public half as `verify` holds it.
static KEY: LazyLock<(KeyPair, KeyPair)> = LazyLock::new(|| {
    let key = KeyPair::new_account();
    let public = KeyPair::from_public_key(&key.public_key()).unwrap();
    (key, public)
});

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// No bytes make `chain::parse` panic, and what it reads is what the fields say: a chain
    /// id of the id's characters, found in the line as written.
    #[test]
    fn parse_reads_any_bytes(line in any_line()) {
        if let Some(link) = chain::parse(&line) {
            prop_assert!(!link.chain.is_empty());
            prop_assert!(link.chain.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-/".contains(&b)), "{:?}", link.chain);
            let json = format!(",\"chain\":\"{}\",\"seq\":", link.chain);
            let text = format!(" chain={} seq=", link.chain);
            let found = if line.first() == Some(&b'{') { json } else { text };
            prop_assert!(memchr::memmem::rfind(&line, found.as_bytes()).is_some());
        }
    }

    /// Whatever the payload (also one that spells chain fields), every line the chain seals is
    /// still one line, reads back as its own chain, position and link, and its hash is the
    /// head; a JSON line stays JSON with the fields as its last members.
    #[test]
    fn sealed_lines_read_back_as_their_chain(
        format in format(),
        consumer in "[ -~]{0,16}",
        pod in "\\PC{0,16}",
        start in any::<i128>(),
        payloads in proptest::collection::vec(payload(), 1..8),
    ) {
        let id = chain_id(&consumer, &pod, start);
        let (lines, heads) = chained(format, &id, &payloads);
        for (n, line) in lines.iter().enumerate() {
            prop_assert!(!line.contains(&b'\n'));
            let link = chain::parse(line).expect("a sealed line is chained");
            prop_assert_eq!(link.chain, id.as_str());
            prop_assert_eq!(link.seq, n as u64 + 1);
            prop_assert_eq!(link.prev, (n > 0).then(|| chain::line_hash(&lines[n - 1])));
            prop_assert_eq!(&heads[n], &Head { chain: Arc::from(id.as_str()), seq: n as u64 + 1, hash: chain::line_hash(line) });
            if format == Format::Json {
                let value: serde_json::Value = serde_json::from_slice(line).expect("a JSON line");
                prop_assert_eq!(&value["chain"], id.as_str());
                prop_assert_eq!(&value["seq"], n as u64 + 1);
            }
        }
    }

    /// Any lines, in any files, any heads (trusted but wrong: any chain, position, hash), any
    /// floor or object bounds: the verifier reports without panicking, and its counts are
    /// those of its input.
    #[test]
    fn the_verifier_takes_any_input(
        files in proptest::collection::vec(proptest::collection::vec(any_line(), 0..12), 1..4),
        checkpoints in proptest::collection::vec(any_checkpoint(), 0..6),
        floor in proptest::option::of((proptest::sample::select(IDS), seq_choice())),
        confine in proptest::option::of((0usize..4, proptest::option::of(seq_choice()))),
    ) {
        let mut verifier = Verifier::default();
        let mut chained = 0;
        for (source, lines) in files.iter().enumerate() {
            for (index, line) in lines.iter().enumerate() {
                let taken = verifier.add_line(line, Location { source, line: index + 1 });
                prop_assert_eq!(taken, chain::parse(line).is_some());
                chained += usize::from(taken);
            }
        }
        for checkpoint in &checkpoints {
            verifier.add_checkpoint(checkpoint);
        }
        if let Some((chain, first)) = floor {
            verifier.set_floor(chain, first);
        }
        if let Some((source, end)) = confine {
            verifier.confine_to_source(source, |_| end);
        }
        let reports = verifier.reports();
        prop_assert!(reports.iter().map(|report| report.lines).sum::<usize>() <= chained);
        for report in &reports {
            let _ = report.status();
            let _ = format!("{report:?} {}", report.status());
        }
    }

    /// The main property: a chain is reported complete only when the trail as read holds
    /// exactly its witnessed lines, in order; and whenever what the heads witness was changed,
    /// the chain has a problem (not merely unwitnessed lines, which `--unwitnessed-ok`
    /// accepts).
    #[test]
    fn a_changed_trail_is_never_complete(case in case(4)) {
        let trail = trail(&case);
        let reports = verify(&case, &trail);
        let floor = case.floor.unwrap_or(1);
        let witnessed = *case.primary.witnessed.last().unwrap();
        let primary = report_of(&reports, PRIMARY).expect("the heads make a report");
        if primary.status() == Status::Complete {
            prop_assert!(
                intact(&trail, PRIMARY, &trail.primary, witnessed, floor),
                "reported complete, but the witnessed lines were changed: {:?}",
                reports
            );
        }
        if !witnessed_part_intact(&trail, PRIMARY, &trail.primary, witnessed, floor) {
            prop_assert_eq!(
                primary.status(),
                Status::Problems,
                "the witnessed lines were changed: {:?}",
                reports
            );
        }
        if report_of(&reports, OTHER).is_some_and(|report| report.status() == Status::Complete) {
            prop_assert!(
                intact(&trail, OTHER, &trail.other, trail.other.len(), 1),
                "the other chain reported complete, but its lines were changed: {:?}",
                reports
            );
        }
    }

    /// And the converse, so that the main property is not met by a verifier that finds fault
    /// with everything: an unchanged trail (other lines and another pod's chain among its
    /// lines, split into files given in any order, lines sent twice) is complete up to its
    /// last head, and unwitnessed when lines follow that head.
    #[test]
    fn an_unchanged_trail_is_complete(
        case in case(0),
        repeats in proptest::collection::vec(any::<usize>(), 0..3),
    ) {
        let mut case = case;
        case.forgery = None;
        case.line_edits = repeats.into_iter().map(LineEdit::Repeat).collect();
        let trail = trail(&case);
        let reports = verify(&case, &trail);
        let primary = report_of(&reports, PRIMARY).expect("the primary chain is reported");
        let witnessed = *case.primary.witnessed.last().unwrap();
        let expected = if witnessed == case.primary.payloads.len() { Status::Complete } else { Status::Unwitnessed };
        prop_assert_eq!(primary.status(), expected, "{:?}", reports);
        if case.other.is_some() {
            prop_assert_eq!(report_of(&reports, OTHER).unwrap().status(), Status::Complete, "{:?}", reports);
        }
        prop_assert_eq!(reports.len(), 1 + usize::from(case.other.is_some()), "{:?}", reports);
    }
}

/// How a witness head is presented to `head::open`.
#[derive(Clone, Debug)]
enum Presented {
    /// Any bytes, with any signature header or none.
    Unsigned(Vec<u8>, Option<String>),
    /// Any bytes, signed by the trusted key.
    Signed(Vec<u8>),
    /// A checkpoint as the witness signs it, then one byte of the payload or of the
    /// signature header changed (or none).
    Changed {
        checkpoint: Checkpoint,
        change: Option<(bool, usize, u8)>,
    },
}

fn presented() -> impl Strategy<Value = Presented> {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..96),
        any_checkpoint().prop_map(|checkpoint| serde_json::to_vec(&checkpoint).unwrap()),
        "[ -~]{0,96}".prop_map(String::into_bytes),
    ];
    prop_oneof![
        (
            bytes.clone(),
            proptest::option::of("[A-Za-z0-9_=+/-]{0,100}")
        )
            .prop_map(|(bytes, signature)| Presented::Unsigned(bytes, signature)),
        bytes.prop_map(Presented::Signed),
        (
            any_checkpoint(),
            proptest::option::of((any::<bool>(), any::<usize>(), 1u8..=255))
        )
            .prop_map(|(checkpoint, change)| Presented::Changed { checkpoint, change }),
    ]
}

fn check_presented(presented: Presented) -> Result<(), TestCaseError> {
    let (key, public) = &*KEY;
    let trusted = std::slice::from_ref(public);
    match presented {
        Presented::Unsigned(bytes, signature) => {
            let opened = head::open(&bytes, signature.as_deref(), trusted);
            prop_assert!(opened.is_err(), "{:?}", opened);
        }
        Presented::Signed(bytes) => {
            let signature = URL_SAFE_NO_PAD.encode(key.sign(&bytes).unwrap());
            match head::open(&bytes, Some(&signature), trusted) {
                Ok(opened) => {
                    prop_assert_eq!(
                        serde_json::from_slice::<Checkpoint>(&bytes).ok(),
                        Some(opened.clone())
                    );
                    prop_assert!(blake3::Hash::from_hex(&opened.hash).is_ok());
                }
                Err(Rejected::Malformed(_)) => {}
                Err(other) => prop_assert!(false, "signed bytes rejected as {:?}", other),
            }
        }
        Presented::Changed { checkpoint, change } => {
            let (mut payload, header) = head::sign(&checkpoint, key).unwrap();
            let mut header = header.into_bytes();
            match change {
                None => {}
                Some((true, at, mask)) => {
                    let at = at % header.len();
                    header[at] ^= mask;
                }
                Some((false, at, mask)) => {
                    let at = at % payload.len();
                    payload[at] ^= mask;
                }
            }
            let header = String::from_utf8_lossy(&header).into_owned();
            let opened = head::open(&payload, Some(&header), trusted);
            match change {
                Some(_) => prop_assert!(opened.is_err(), "a changed head opened: {:?}", opened),
                None if blake3::Hash::from_hex(&checkpoint.hash).is_ok() => {
                    prop_assert_eq!(opened, Ok(checkpoint))
                }
                None => prop_assert!(
                    matches!(opened, Err(Rejected::Malformed(_))),
                    "{:?}",
                    opened
                ),
            }
        }
    }
    Ok(())
}

/// A witness head opens only with its signature by a trusted key: any payload with any
/// signature header never panics and is rejected; any bytes the key signed open only as the
/// checkpoint they are; a signed head opens as signed, and with one byte of its payload or
/// signature changed is rejected.
///
/// Ed25519 is slow without optimisation, so this property runs an eighth of the cases.
#[test]
fn heads_open_only_as_signed() {
    let mut config = proptest::test_runner::contextualize_config(config());
    config.cases = (config.cases / 8).max(1);
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(err) = runner.run(&presented(), check_presented) {
        panic!("{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions, as plain tests
// ---------------------------------------------------------------------------------------------

/// Found by `the_verifier_takes_any_input` and `a_changed_trail_is_never_complete`: a line or
/// a head at position `u64::MAX` (and a line at 0) made the report overflow `seq + 1` /
/// `seq - 1`: a panic in a debug build, a silent wrap in a release build.
#[test]
fn regression_positions_at_the_ends_of_u64_do_not_overflow() {
    let hash = blake3::hash(b"line").to_hex();
    for (seq, prev) in [
        (u64::MAX, hash.as_str()),
        (u64::MAX, "start"),
        (0, "start"),
        (0, hash.as_str()),
        (u64::MAX - 1, hash.as_str()),
    ] {
        for line in [
            format!("kind=raw raw=x chain={PRIMARY} seq={seq} prev={prev}"),
            format!(
                "{{\"kind\":\"raw\",\"chain\":\"{PRIMARY}\",\"seq\":{seq},\"prev\":\"{prev}\"}}"
            ),
        ] {
            let mut verifier = Verifier::default();
            assert!(verifier.add_line(line.as_bytes(), Location { source: 0, line: 1 }));
            for head_seq in [u64::MAX, u64::MAX - 1, 0] {
                verifier.add_checkpoint(&checkpoint(&Head {
                    chain: Arc::from(PRIMARY),
                    seq: head_seq,
                    hash: blake3::hash(b"other line"),
                }));
            }
            let reports = verifier.reports();
            assert_eq!(reports.len(), 1);
            assert_ne!(reports[0].status(), Status::Complete, "{line}: {reports:?}");
        }
    }
}
