//! Events the stream's limits removed before the consumer wrote them, as a [`Feature`]: the
//! loss nobody would otherwise see. A stream with `maxAge`, `maxBytes` or `maxMessages` and
//! `discard: Old` drops its oldest events at its limit whether or not they were consumed, and
//! the consumer simply continues after the gap. Every reconciliation compares the durable
//! consumer's ack floor (every event up to it is acknowledged, so written) with the stream's
//! first sequence: the sequences between them that were not counted yet are events lost to
//! this consumer. They are counted in `status.eventsDiscarded`, reported once per new count
//! in a Warning Event, and exported as a metric the chart's alert watches.
//!
//! Only for consumers without filter subjects: a filtered consumer's ack floor passes the
//! stream's other subjects only when it acks one of its own, so a gap there is no evidence.
//! Counting starts at the operator's first look at a consumer: what the stream had dropped
//! before it (events older than a new consumer's start among them; NATS keeps a new
//! consumer's ack floor at 0) or what was already delivered then is not counted.

use async_nats::jetstream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tracing::debug;

use super::{Feature, Seen};
use crate::{
    crd::consumer::{AuditConsumer, AuditConsumerStatus},
    metrics::Metrics,
    report::Notice,
};

/// Reason of the Warning Event.
pub const EVENTS_DISCARDED: &str = "EventsDiscarded";

/// The positions compared this time, or `None` when they could not be read (or are no
/// evidence): the count stays as it was.
pub struct Discards(Option<Positions>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Positions {
    /// The stream's first sequence: everything before it is gone.
    pub first_sequence: u64,
    /// The consumer's ack floor (stream sequence).
    pub ack_floor: u64,
    /// The stream sequence of the last event delivered to it.
    pub delivered: u64,
}

/// The stream (with its info as read) and the durable consumer's info, read once per
/// reconciliation for the features that compare them: this one and [`super::limits`].
pub struct Observed {
    pub stream: jetstream::stream::Stream,
    pub consumer: jetstream::consumer::Info,
}

/// Reads the stream's info and the consumer's (I/O), for a consumer without filter subjects;
/// `None` when they cannot be read or are no evidence.
pub async fn read(seen: &Seen) -> Option<Observed> {
    let (Some(valid), Some(js), Some(stream_name)) =
        (&seen.valid, &seen.jetstream, &seen.stream_name)
    else {
        return None;
    };
    if !valid.filter_subjects.is_empty() {
        return None;
    }
    let observed = async {
        // get_stream reads the stream's info (config and state) once.
        let stream = js
            .get_stream(stream_name)
            .await
            .map_err(|e| e.to_string())?;
        let consumer = stream
            .consumer_info(&valid.durable_name)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(Observed { stream, consumer })
    }
    .await;
    match observed {
        Ok(observed) => Some(observed),
        Err(error) => {
            debug!(%error, "cannot compare the consumer's position with the stream's");
            None
        }
    }
}

/// The positions to compare, from what was read.
pub fn observe(observed: Option<&Observed>) -> Discards {
    Discards(observed.map(|observed| Positions {
        first_sequence: observed.stream.cached_info().state.first_sequence,
        ack_floor: observed.consumer.ack_floor.stream_sequence,
        delivered: observed.consumer.delivered.stream_sequence,
    }))
}

/// The events newly found discarded, and the sequence range they span (pure): the
/// sequences after the ack floor and before the stream's first, not counted before.
pub fn newly_discarded(positions: Positions, counted_through: u64) -> Option<(u64, u64)> {
    let from = positions.ack_floor.max(counted_through) + 1;
    let to = positions.first_sequence.checked_sub(1)?;
    (to >= from).then_some((from, to))
}

impl Feature for Discards {
    fn contribute(
        &self,
        previous: &AuditConsumerStatus,
        status: &mut AuditConsumerStatus,
        _now: &Time,
    ) {
        status.events_discarded = previous.events_discarded;
        status.discarded_through = previous.discarded_through;
        let Some(positions) = self.0 else {
            return;
        };
        let Some(counted) = previous.discarded_through else {
            // The first look: nothing before the stream's start or the consumer's position
            // now is evidence of a loss.
            let start = positions.first_sequence.saturating_sub(1);
            status.discarded_through = Some(start.max(positions.delivered));
            return;
        };
        if let Some((from, to)) = newly_discarded(positions, counted) {
            status.events_discarded =
                Some(previous.events_discarded.unwrap_or(0) + (to - from + 1));
            status.discarded_through = Some(to);
        }
    }

    fn notices(&self, previous: &AuditConsumerStatus, status: &AuditConsumerStatus) -> Vec<Notice> {
        let before = previous.events_discarded.unwrap_or(0);
        let now = status.events_discarded.unwrap_or(0);
        if now <= before {
            return Vec::new();
        }
        let through = status.discarded_through.unwrap_or_default();
        let from = through + 1 - (now - before);
        let stream = status.stream_name.as_deref().unwrap_or("the stream");
        vec![Notice::warning(
            EVENTS_DISCARDED,
            format!(
                "{} event(s) at stream sequences {from}-{through} were removed from {stream} by its limits before this consumer wrote them: they are in none of its output ({now} in all); raise the AuditStream's maxAge/maxBytes/maxMessages or the consumer's throughput; see the runbook AuditConsumerEventsDiscarded",
                now - before
            ),
        )]
    }

    fn record(&self, metrics: &Metrics, consumer: &AuditConsumer, status: &AuditConsumerStatus) {
        metrics.set_events_discarded(
            &consumer.namespace().unwrap_or_default(),
            &consumer.name_any(),
            status.events_discarded.unwrap_or(0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(first_sequence: u64, ack_floor: u64) -> Positions {
        Positions {
            first_sequence,
            ack_floor,
            delivered: ack_floor,
        }
    }

    #[test]
    fn the_gap_between_the_ack_floor_and_the_stream_start_is_counted_once() {
        assert_eq!(newly_discarded(at(1, 0), 0), None, "nothing gone");
        assert_eq!(
            newly_discarded(at(51, 50), 0),
            None,
            "written before it went"
        );
        assert_eq!(newly_discarded(at(151, 100), 0), Some((101, 150)));
        assert_eq!(newly_discarded(at(151, 100), 150), None, "counted already");
        assert_eq!(newly_discarded(at(201, 120), 150), Some((151, 200)));
        assert_eq!(newly_discarded(at(0, 0), 0), None, "an empty stream");
    }

    #[test]
    fn the_status_keeps_the_count_and_a_warning_says_which_sequences() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(0).unwrap());
        // The first look at a new consumer (ack floor 0) on a stream starting at 51: no loss.
        let first = AuditConsumerStatus {
            stream_name: Some("AUDIT".into()),
            ..AuditConsumerStatus::default()
        };
        let mut previous = first.clone();
        Discards(Some(at(51, 0))).contribute(&first, &mut previous, &now);
        assert_eq!(
            (previous.events_discarded, previous.discarded_through),
            (None, Some(50))
        );
        assert!(
            Discards(Some(at(51, 0)))
                .notices(&first, &previous)
                .is_empty()
        );
        // Then 100 more dropped while it wrote nothing.
        let previous = AuditConsumerStatus {
            discarded_through: Some(100),
            ..previous
        };
        let mut status = previous.clone();
        Discards(Some(at(151, 100))).contribute(&previous, &mut status, &now);
        assert_eq!(
            (status.events_discarded, status.discarded_through),
            (Some(50), Some(150))
        );
        let notices = Discards(Some(at(151, 100))).notices(&previous, &status);
        assert_eq!(notices.len(), 1);
        assert!(
            notices[0]
                .note
                .starts_with("50 event(s) at stream sequences 101-150 were removed from AUDIT"),
            "{}",
            notices[0].note
        );
        // Not observed this time: the count stays, and nothing is said again.
        let mut later = status.clone();
        Discards(None).contribute(&status, &mut later, &now);
        assert_eq!(later.events_discarded, Some(50));
        assert!(Discards(None).notices(&status, &later).is_empty());
    }
}
