//! Prometheus metrics. Per-event counters are resolved once at start-up so that the hot path
//! touches one atomic per event and never hashes a label set.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::event::Kind;

type Labels = [(&'static str, &'static str); 2];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written and acked.
    Acked,
    /// Not written; handed back to the server for redelivery.
    Naked,
    /// Not written, and handed back at its final delivery (the consumer's `max_deliver`):
    /// NATS gives up on it, so no pod will write it. It stays in the stream for a replay.
    Terminated,
}

pub struct Metrics {
    registry: Registry,
    /// Indexed by `[outcome][kind]`.
    events: [[Counter; 2]; 3],
    redeliveries: Counter,
    batch_seconds: Histogram,
    end_to_end_seconds: Histogram,
    connected: Gauge,
    consumer_pending: Gauge,
    consumer_ack_pending: Gauge,
    write_errors: Counter,
    pull_errors: Family<[(&'static str, &'static str); 1], Counter>,
    checkpoints: Family<[(&'static str, &'static str); 1], Counter>,
    last_checkpoint: Gauge,
    archive_segments: Family<[(&'static str, &'static str); 1], Counter>,
    archive_segment_bytes: Histogram,
    archive_upload_failures: Counter,
    archive_held: Gauge,
    archive_last_segment: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("audit_consumer");
        let events_family = Family::<Labels, Counter>::default();
        registry.register(
            "events",
            "Events handled, by outcome and kind (structured, raw): acked (written), naked (not \
             written, handed back for redelivery), terminated (not written and handed back at \
             the consumer's max_deliver, so NATS gives up on it)",
            events_family.clone(),
        );
        let counter = |outcome, kind| {
            events_family.get_or_create_owned(&[("outcome", outcome), ("kind", kind)])
        };
        let events = [
            [counter("acked", "structured"), counter("acked", "raw")],
            [counter("naked", "structured"), counter("naked", "raw")],
            [
                counter("terminated", "structured"),
                counter("terminated", "raw"),
            ],
        ];

        let redeliveries = Counter::default();
        registry.register(
            "redeliveries",
            "Events received with a delivery count above one",
            redeliveries.clone(),
        );
        // 50 µs .. ~3.3 s: a batch of one event to a batch stuck behind a slow sink.
        let batch_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        registry.register(
            "batch_processing_seconds",
            "Time to render, write, flush and ack one batch of events",
            batch_seconds.clone(),
        );
        // 1 ms .. ~65 s: live traffic to a backlog drained after an outage.
        let end_to_end_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "end_to_end_latency_seconds",
            "Time from an event's publication to its ack",
            end_to_end_seconds.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "nats_connected",
            "1 while connected to a NATS server",
            connected.clone(),
        );
        let consumer_pending = Gauge::default();
        registry.register(
            "consumer_pending_messages",
            "Messages in the stream not yet delivered to the consumer (polled)",
            consumer_pending.clone(),
        );
        let consumer_ack_pending = Gauge::default();
        registry.register(
            "consumer_ack_pending_messages",
            "Messages delivered but not yet acked (polled)",
            consumer_ack_pending.clone(),
        );
        let write_errors = Counter::default();
        registry.register(
            "output_write_errors",
            "Failed writes to standard output; their events were naked",
            write_errors.clone(),
        );
        let pull_errors = Family::default();
        registry.register(
            "pull_errors",
            "Errors from the pull subscription, by reason",
            pull_errors.clone(),
        );
        let checkpoints = Family::default();
        registry.register(
            "integrity_checkpoints",
            "Chain heads sent to the witness stream (--integrity), by outcome: published \
             (stored by the stream) or failed (retried)",
            checkpoints.clone(),
        );
        let last_checkpoint = Gauge::default();
        registry.register(
            "integrity_last_checkpoint_timestamp_seconds",
            "When the witness stream last stored a chain head of this pod (Unix time; 0 before \
             the first)",
            last_checkpoint.clone(),
        );
        let archive_segments = Family::default();
        registry.register(
            "archive_segments",
            "Segments stored in the archive (--output archive), by what closed them: lines, \
             bytes, age, ack_pending (as many events held as the consumer lets one pod keep \
             unacked), shutdown",
            archive_segments.clone(),
        );
        // 1 KiB .. 1 GiB: a quiet minute to a full segment of large events.
        let archive_segment_bytes = Histogram::new(exponential_buckets(1024.0, 4.0, 11));
        registry.register(
            "archive_segment_bytes",
            "Size of each stored segment as stored (after compression)",
            archive_segment_bytes.clone(),
        );
        let archive_upload_failures = Counter::default();
        registry.register(
            "archive_upload_failures",
            "Failed attempts to store a segment; its events stay held and the upload is retried",
            archive_upload_failures.clone(),
        );
        let archive_held = Gauge::default();
        registry.register(
            "archive_held_events",
            "Events rendered into the open or unstored segment, not yet acked",
            archive_held.clone(),
        );
        let archive_last_segment = Gauge::default();
        registry.register(
            "archive_last_segment_timestamp_seconds",
            "When the archive last confirmed a segment of this pod (Unix time; 0 before the first)",
            archive_last_segment.clone(),
        );
        Self {
            registry,
            events,
            redeliveries,
            batch_seconds,
            end_to_end_seconds,
            connected,
            consumer_pending,
            consumer_ack_pending,
            write_errors,
            pull_errors,
            checkpoints,
            last_checkpoint,
            archive_segments,
            archive_segment_bytes,
            archive_upload_failures,
            archive_held,
            archive_last_segment,
        }
    }

    #[inline]
    pub fn event(&self, outcome: Outcome, kind: Kind) {
        self.events[outcome as usize][kind as usize].inc();
    }

    #[inline]
    pub fn redelivered(&self) {
        self.redeliveries.inc();
    }

    #[inline]
    pub fn end_to_end(&self, seconds: f64) {
        self.end_to_end_seconds.observe(seconds);
    }

    pub fn batch(&self, seconds: f64) {
        self.batch_seconds.observe(seconds);
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    pub fn set_consumer_counts(&self, pending: u64, ack_pending: usize) {
        self.consumer_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.consumer_ack_pending
            .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
    }

    pub fn write_error(&self) {
        self.write_errors.inc();
    }

    pub fn pull_error(&self, reason: &'static str) {
        self.pull_errors.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn checkpoint_published(&self, unix_seconds: i64) {
        self.checkpoints
            .get_or_create(&[("outcome", "published")])
            .inc();
        self.last_checkpoint.set(unix_seconds);
    }

    pub fn checkpoint_failed(&self) {
        self.checkpoints
            .get_or_create(&[("outcome", "failed")])
            .inc();
    }

    pub fn archive_segment_stored(&self, closed_by: &'static str, bytes: usize, unix_nanos: i128) {
        self.archive_segments
            .get_or_create(&[("closed_by", closed_by)])
            .inc();
        self.archive_segment_bytes.observe(bytes as f64);
        self.archive_last_segment
            .set(i64::try_from(unix_nanos / 1_000_000_000).unwrap_or(0));
    }

    pub fn archive_upload_failed(&self) {
        self.archive_upload_failures.inc();
    }

    pub fn set_archive_held(&self, events: usize) {
        self.archive_held
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    /// The registry in the Prometheus / OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_events_by_outcome_and_kind() {
        let metrics = Metrics::new();
        metrics.event(Outcome::Acked, Kind::Structured);
        metrics.event(Outcome::Acked, Kind::Structured);
        metrics.event(Outcome::Naked, Kind::Raw);
        metrics.event(Outcome::Terminated, Kind::Structured);
        let text = metrics.encode();
        assert!(
            text.contains(r#"audit_consumer_events_total{outcome="acked",kind="structured"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"audit_consumer_events_total{outcome="naked",kind="raw"} 1"#));
        assert!(
            text.contains(
                r#"audit_consumer_events_total{outcome="terminated",kind="structured"} 1"#
            )
        );
        assert!(text.contains(r#"audit_consumer_events_total{outcome="terminated",kind="raw"} 0"#));
        assert!(text.contains("audit_consumer_nats_connected 0"));
        assert!(text.ends_with("# EOF\n"));
    }
}
