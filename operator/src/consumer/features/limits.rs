//! How close the stream's limits are to the events this consumer has not written yet, as a
//! [`Feature`]: the warning before [`super::discards`] has a loss to count. A stream with
//! `maxMessages`, `maxBytes` or `maxAge` removes its oldest events at the limit (`discard:
//! Old`) or refuses new ones (`discard: New`), consumed or not. What is at risk is the part
//! of the stream from the oldest event this consumer has not acknowledged to the newest: its
//! events against `maxMessages`, their size against `maxBytes`, and the age of the oldest
//! against `maxAge`. Each share is in `status.limitsUse` (percent) and in the metric
//! `audit_operator_consumer_limit_use_ratio{limit}` that the chart's alert watches.
//!
//! A caught-up consumer uses nothing, however full the stream: a stream at its limit is the
//! normal state of one with `discard: Old`. As for the discard count, only consumers without
//! filter subjects are measured: a filtered consumer's ack floor stays at its own last event
//! while the stream's other subjects go by, which would read as a backlog it does not have.

use std::time::Duration;

use async_nats::jetstream;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;
use tracing::debug;

use super::{Feature, discards::Observed};
use crate::{
    crd::consumer::{AuditConsumer, AuditConsumerStatus, LimitsUse},
    metrics::Metrics,
    report::Notice,
};

/// The limits the stream sets, and where it and the consumer stand (pure input).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Standing {
    /// `maxMessages`, `maxBytes`, `maxAge`; `None` when unlimited.
    pub max_messages: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    pub messages: u64,
    pub bytes: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// The consumer's ack floor (stream sequence): everything up to it is written.
    pub ack_floor: u64,
    /// When the oldest event after the ack floor was stored, if it was read.
    pub oldest_unwritten: Option<Timestamp>,
}

/// Shares of each limit, as ratios (1.0 is the limit).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Use {
    pub messages: Option<f64>,
    pub bytes: Option<f64>,
    pub age: Option<f64>,
}

/// The shares of the limits the unwritten part of the stream takes (pure). Its size is
/// estimated from the stream's mean event size: NATS does not say the bytes of a range.
pub fn limits_use(standing: &Standing, now: Timestamp) -> Use {
    let from = standing
        .ack_floor
        .max(standing.first_sequence.saturating_sub(1));
    let unwritten = standing
        .last_sequence
        .saturating_sub(from)
        .min(standing.messages);
    let ratio = |part: f64, limit: u64| part / limit as f64;
    let messages = standing
        .max_messages
        .map(|limit| ratio(unwritten as f64, limit));
    let bytes = standing.max_bytes.map(|limit| {
        let mean = if standing.messages == 0 {
            0.0
        } else {
            standing.bytes as f64 / standing.messages as f64
        };
        ratio(unwritten as f64 * mean, limit)
    });
    let age = standing.max_age.and_then(|limit| {
        if unwritten == 0 {
            return Some(0.0);
        }
        let stored = standing.oldest_unwritten?;
        let age = now.duration_since(stored).as_secs_f64().max(0.0);
        Some(age / limit.as_secs_f64())
    });
    Use {
        messages,
        bytes,
        age,
    }
}

/// A ratio as the status's whole percent, rounded down (99.9% is not yet 100).
fn percent(ratio: f64) -> u32 {
    (ratio * 100.0).floor().clamp(0.0, f64::from(u32::MAX)) as u32
}

impl Use {
    fn status(&self) -> Option<LimitsUse> {
        let status = LimitsUse {
            messages: self.messages.map(percent),
            bytes: self.bytes.map(percent),
            age: self.age.map(percent),
        };
        (status != LimitsUse::default()).then_some(status)
    }
}

/// This reconciliation's shares, or `None` when they could not be read (the status keeps the
/// last ones).
pub struct Limits(Option<Use>);

/// Reads the time of the oldest unwritten event when the stream has `maxAge` (one request),
/// and computes the shares (I/O).
pub async fn observe(observed: Option<&Observed>) -> Limits {
    let Some(observed) = observed else {
        return Limits(None);
    };
    let info = observed.stream.cached_info();
    let limit = |value: i64| u64::try_from(value).ok().filter(|v| *v > 0);
    let max_age = (!info.config.max_age.is_zero()).then_some(info.config.max_age);
    let state = &info.state;
    let ack_floor = observed.consumer.ack_floor.stream_sequence;
    let next = ack_floor.max(state.first_sequence.saturating_sub(1)) + 1;
    let oldest_unwritten = if max_age.is_some() && next <= state.last_sequence {
        oldest_from(&observed.stream, next).await
    } else {
        None
    };
    let standing = Standing {
        max_messages: limit(info.config.max_messages),
        max_bytes: limit(info.config.max_bytes),
        max_age,
        messages: state.messages,
        bytes: state.bytes,
        first_sequence: state.first_sequence,
        last_sequence: state.last_sequence,
        ack_floor,
        oldest_unwritten,
    };
    Limits(Some(limits_use(&standing, Timestamp::now())))
}

/// When the first event at or after `sequence` was stored: skips events deleted from the
/// middle of the stream.
async fn oldest_from(stream: &jetstream::stream::Stream, sequence: u64) -> Option<Timestamp> {
    let message = stream
        .raw_message_builder()
        .sequence(sequence)
        .next_by_subject(">")
        .send()
        .await;
    match message {
        Ok(message) => {
            let nanos = message.time.unix_timestamp_nanos();
            Timestamp::from_nanosecond(nanos).ok()
        }
        Err(error) => {
            debug!(%error, sequence, "cannot read when the oldest unwritten event was stored");
            None
        }
    }
}

impl Feature for Limits {
    fn contribute(
        &self,
        previous: &AuditConsumerStatus,
        status: &mut AuditConsumerStatus,
        _now: &Time,
    ) {
        status.limits_use = match &self.0 {
            Some(shares) => shares.status(),
            None => previous.limits_use.clone(),
        };
    }

    fn notices(&self, _: &AuditConsumerStatus, _: &AuditConsumerStatus) -> Vec<Notice> {
        // The alert warns, at a threshold the chart sets; an Event per crossing would repeat
        // it in a second place with a threshold of its own.
        Vec::new()
    }

    fn record(&self, metrics: &Metrics, consumer: &AuditConsumer, _status: &AuditConsumerStatus) {
        let Some(shares) = &self.0 else {
            return;
        };
        let namespace = consumer.namespace().unwrap_or_default();
        let name = consumer.name_any();
        for (limit, share) in [
            ("messages", shares.messages),
            ("bytes", shares.bytes),
            ("age", shares.age),
        ] {
            metrics.set_limit_use(&namespace, &name, limit, share);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn standing() -> Standing {
        Standing {
            max_messages: Some(1000),
            max_bytes: Some(100_000),
            max_age: Some(Duration::from_secs(3600)),
            messages: 1000,
            bytes: 100_000,
            first_sequence: 501,
            last_sequence: 1500,
            ack_floor: 1500,
            oldest_unwritten: None,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    #[test]
    fn a_caught_up_consumer_uses_nothing_of_a_full_stream() {
        let shares = limits_use(&standing(), now());
        assert_eq!(
            shares,
            Use {
                messages: Some(0.0),
                bytes: Some(0.0),
                age: Some(0.0)
            }
        );
    }

    #[test]
    fn the_unwritten_part_is_measured_against_each_limit() {
        let behind = Standing {
            ack_floor: 700,
            oldest_unwritten: Some(Timestamp::from_second(NOW - 2700).unwrap()),
            ..standing()
        };
        let shares = limits_use(&behind, now());
        assert_eq!(shares.messages, Some(0.8));
        assert_eq!(
            shares.bytes,
            Some(0.8),
            "800 events of 100 bytes on average"
        );
        assert_eq!(shares.age, Some(0.75));
        assert_eq!(
            shares.status(),
            Some(LimitsUse {
                messages: Some(80),
                bytes: Some(80),
                age: Some(75)
            })
        );
    }

    #[test]
    fn a_floor_before_the_stream_start_counts_the_stream_only() {
        // Events were discarded already (the discard count has them): what remains at risk is
        // the whole stream, never more.
        let lost = Standing {
            ack_floor: 100,
            ..standing()
        };
        assert_eq!(limits_use(&lost, now()).messages, Some(1.0));
    }

    #[test]
    fn only_the_limits_the_stream_sets_are_reported() {
        let unlimited = Standing {
            max_messages: None,
            max_bytes: None,
            max_age: Some(Duration::from_secs(60)),
            ack_floor: 1000,
            oldest_unwritten: None,
            ..standing()
        };
        let shares = limits_use(&unlimited, now());
        assert_eq!(shares.messages, None);
        assert_eq!(shares.bytes, None);
        assert_eq!(shares.age, None, "the oldest event's time was not read");
        assert_eq!(shares.status(), None);
    }

    #[test]
    fn percent_rounds_down() {
        assert_eq!(percent(0.999), 99);
        assert_eq!(percent(1.0), 100);
        assert_eq!(percent(-0.5), 0);
        assert_eq!(percent(2.5), 250);
    }
}
