//! A segment: the lines of many events, gathered to be stored as one object, and the rules
//! that close it and name it. Pure: no I/O, no clock of its own.

use std::time::{Duration, Instant};

use crate::format::Format;

/// When a segment is closed: whichever limit is reached first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub lines: u64,
    pub bytes: usize,
    pub age: Duration,
}

/// Why a segment was closed; a metric label and a log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Lines,
    Bytes,
    Age,
    /// As many events are held as the consumer lets one pod keep unacknowledged: no more
    /// would be delivered until these are acked.
    AckPending,
    Shutdown,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Lines => "lines",
            CloseReason::Bytes => "bytes",
            CloseReason::Age => "age",
            CloseReason::AckPending => "ack_pending",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The open segment's lines and what its key says about them.
#[derive(Default)]
pub struct Segment {
    buffer: Vec<u8>,
    lines: u64,
    opened: Option<Instant>,
    opened_unix_nanos: i128,
    lowest_sequence: u64,
    highest_sequence: u64,
}

impl Segment {
    /// Where the renderer appends the next line.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buffer
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Records the line just rendered for the event at `stream_sequence`.
    pub fn line_added(&mut self, stream_sequence: u64, now: Instant, unix_nanos: i128) {
        if self.lines == 0 {
            self.opened = Some(now);
            self.opened_unix_nanos = unix_nanos;
            self.lowest_sequence = stream_sequence;
            self.highest_sequence = stream_sequence;
        }
        self.lines += 1;
        // Redeliveries arrive out of order: the key names the range the segment covers.
        self.lowest_sequence = self.lowest_sequence.min(stream_sequence);
        self.highest_sequence = self.highest_sequence.max(stream_sequence);
    }

    /// Whether the segment must be stored now, and why. `held_limit` is how many events this
    /// pod may hold unacknowledged before the server stops delivering more.
    pub fn close_reason(
        &self,
        limits: &Limits,
        now: Instant,
        held_limit: u64,
    ) -> Option<CloseReason> {
        if self.is_empty() {
            return None;
        }
        if self.lines >= limits.lines {
            Some(CloseReason::Lines)
        } else if self.buffer.len() >= limits.bytes {
            Some(CloseReason::Bytes)
        } else if self.lines >= held_limit {
            Some(CloseReason::AckPending)
        } else if self
            .opened
            .is_some_and(|opened| now.duration_since(opened) >= limits.age)
        {
            Some(CloseReason::Age)
        } else {
            None
        }
    }

    /// When the segment reaches its age, if it has lines.
    pub fn deadline(&self, limits: &Limits) -> Option<Instant> {
        self.opened.map(|opened| opened + limits.age)
    }

    /// Empties the segment after it was stored (or given up), keeping the buffer's memory
    /// unless one segment of huge lines grew it far beyond the limit.
    pub fn clear(&mut self, limits: &Limits) {
        self.buffer.clear();
        if self.buffer.capacity() > limits.bytes.saturating_mul(2).max(1 << 20) {
            self.buffer.shrink_to(limits.bytes.min(64 << 20));
        }
        *self = Self {
            buffer: std::mem::take(&mut self.buffer),
            ..Self::default()
        };
    }

    /// What the object key says about this segment.
    pub fn span(&self) -> Span {
        Span {
            opened_unix_nanos: self.opened_unix_nanos,
            lowest_sequence: self.lowest_sequence,
            highest_sequence: self.highest_sequence,
        }
    }
}

/// The time and stream positions a segment covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub opened_unix_nanos: i128,
    pub lowest_sequence: u64,
    pub highest_sequence: u64,
}

/// The fixed parts of every key one process writes.
#[derive(Clone, Debug)]
pub struct Naming {
    /// The user's prefix, with its trailing `/` if it has one.
    pub prefix: String,
    pub stream: String,
    pub consumer: String,
    /// The pod, with any character a key should not carry replaced.
    pub pod: String,
    /// When this process started writing (RFC 3339 basic format, UTC, ns): the run, or with
    /// integrity the chain, its segments belong to.
    pub run: String,
    pub extension: &'static str,
}

impl Naming {
    pub fn new(
        prefix: &str,
        stream: &str,
        consumer: &str,
        pod: &str,
        started_unix_nanos: i128,
        format: Format,
        gzip: bool,
    ) -> Self {
        let extension = match (format, gzip) {
            (Format::Json, false) => "jsonl",
            (Format::Json, true) => "jsonl.gz",
            (Format::Text, false) => "log",
            (Format::Text, true) => "log.gz",
        };
        Self {
            prefix: prefix.to_owned(),
            stream: key_safe(stream),
            consumer: key_safe(consumer),
            pod: key_safe(pod),
            run: basic_timestamp(started_unix_nanos, true),
            extension,
        }
    }

    /// `<prefix><stream>/<consumer>/<yyyy>/<mm>/<dd>/<opened>_<pod>_<run>_<number>_<lowest>-<highest>.<ext>`.
    ///
    /// Date first, then the opening time: listing one day, or every key between two times,
    /// is a prefix listing with a start key. The pod and the run tell which process (and with
    /// integrity which chain) wrote it; the number orders one run's segments; the sequence
    /// range says which stream positions it holds.
    pub fn key(&self, number: u64, span: &Span) -> String {
        let opened = basic_timestamp(span.opened_unix_nanos, false);
        let (year, month, day) = (&opened[0..4], &opened[4..6], &opened[6..8]);
        format!(
            "{}{}/{}/{year}/{month}/{day}/{opened}_{}_{}_{number:06}_{:020}-{:020}.{}",
            self.prefix,
            self.stream,
            self.consumer,
            self.pod,
            self.run,
            span.lowest_sequence,
            span.highest_sequence,
            self.extension
        )
    }

    /// The prefix under which one day's keys of this stream and consumer are listed.
    pub fn day_prefix(prefix: &str, stream: &str, consumer: &str, unix_nanos: i128) -> String {
        let day = basic_timestamp(unix_nanos, false);
        format!(
            "{prefix}{}/{}/{}/{}/{}/",
            key_safe(stream),
            key_safe(consumer),
            &day[0..4],
            &day[4..6],
            &day[6..8]
        )
    }
}

/// `20261204T023015Z` (or with `.123456789` before the `Z`): sorts as text in time order.
pub(crate) fn basic_timestamp(unix_nanos: i128, with_nanos: bool) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(unix_nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut text = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    if with_nanos {
        text.push_str(&format!(".{:09}", time.nanosecond()));
    }
    text.push('Z');
    text
}

/// Keeps what is safe in any store's keys and in a URL path; everything else becomes `-`.
pub(crate) fn key_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        lines: 3,
        bytes: 100,
        age: Duration::from_secs(60),
    };

    fn with_lines(lines: &[(u64, &str)], at: Instant) -> Segment {
        let mut segment = Segment::default();
        for (sequence, line) in lines {
            segment.buffer().extend_from_slice(line.as_bytes());
            segment.line_added(*sequence, at, 1_764_815_415_000_000_000);
        }
        segment
    }

    #[test]
    fn an_empty_segment_never_closes() {
        let segment = Segment::default();
        assert_eq!(segment.close_reason(&LIMITS, Instant::now(), 0), None);
        assert_eq!(segment.deadline(&LIMITS), None);
    }

    #[test]
    fn closes_at_whichever_limit_comes_first() {
        let now = Instant::now();
        let lines = with_lines(&[(1, "a\n"), (2, "b\n"), (3, "c\n")], now);
        assert_eq!(
            lines.close_reason(&LIMITS, now, u64::MAX),
            Some(CloseReason::Lines)
        );

        let big = "x".repeat(120) + "\n";
        let bytes = with_lines(&[(1, &big)], now);
        assert_eq!(
            bytes.close_reason(&LIMITS, now, u64::MAX),
            Some(CloseReason::Bytes)
        );

        let two = with_lines(&[(1, "a\n"), (2, "b\n")], now);
        assert_eq!(two.close_reason(&LIMITS, now, u64::MAX), None);
        assert_eq!(
            two.close_reason(&LIMITS, now, 2),
            Some(CloseReason::AckPending)
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(
            two.close_reason(&LIMITS, later, u64::MAX),
            Some(CloseReason::Age)
        );
        assert_eq!(two.deadline(&LIMITS), Some(later));
    }

    #[test]
    fn the_key_names_the_day_the_run_and_the_sequence_range() {
        let now = Instant::now();
        // Redelivered events arrive out of order.
        let segment = with_lines(&[(7, "a\n"), (3, "b\n"), (12, "c\n")], now);
        let naming = Naming::new(
            "audit/",
            "AUDIT",
            "to-archive",
            "archiver-0",
            1_764_815_000_123_456_789,
            Format::Json,
            true,
        );
        assert_eq!(
            naming.key(4, &segment.span()),
            "audit/AUDIT/to-archive/2025/12/04/20251204T023015Z_archiver-0_\
             20251204T022320.123456789Z_000004_00000000000000000003-00000000000000000012.jsonl.gz"
        );
        assert_eq!(
            Naming::day_prefix("audit/", "AUDIT", "to-archive", 1_764_815_415_000_000_000),
            "audit/AUDIT/to-archive/2025/12/04/"
        );
    }

    #[test]
    fn keys_sort_in_time_order_and_carry_no_unsafe_characters() {
        let naming = Naming::new("", "S", "c/x", "pod:1", 0, Format::Text, false);
        let span = |nanos| Span {
            opened_unix_nanos: nanos,
            lowest_sequence: 1,
            highest_sequence: 2,
        };
        let earlier = naming.key(1, &span(1_000_000_000_000_000_000));
        let later = naming.key(2, &span(1_900_000_000_000_000_000));
        assert!(earlier < later);
        assert!(earlier.starts_with("S/c-x/2001/09/09/"), "{earlier}");
        assert!(earlier.contains("_pod-1_"), "{earlier}");
        assert!(earlier.ends_with(".log"));
    }

    #[test]
    fn clearing_keeps_the_buffer_for_the_next_segment() {
        let mut segment = with_lines(&[(1, "a\n")], Instant::now());
        segment.clear(&LIMITS);
        assert!(segment.is_empty());
        assert!(segment.bytes().is_empty());
        assert_eq!(segment.deadline(&LIMITS), None);
        assert!(segment.buffer().capacity() > 0);
    }
}
