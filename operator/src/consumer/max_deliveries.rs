//! Events NATS gave up on. For each AuditConsumer with a `maxDeliver` limit, a core-NATS
//! subscription to its durable consumer's max-deliveries advisory counts the events that
//! reached the limit; a reconciliation folds the count into the status and warns in an Event.
//!
//! NATS publishes `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>` once per
//! event, and only while someone listens: advisories published while no operator subscribed
//! are lost, which the status field's description says.
//!
//! Each advisory also wakes the AuditConsumer's reconciliation (through the stream returned by
//! [`MaxDeliveries::new`], fed to the controller), so the status and the Event follow within
//! moments instead of at the next `--requeue-interval`. The controller merges wake-ups of one
//! object, so a burst of advisories costs one or two reconciliations. The stream carries the
//! AuditConsumer's name as object metadata because the controller takes a stream of objects
//! with its stable API; a stream of references needs a kube-runtime feature marked unstable.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use async_nats::{Client, Statistics, Subscriber};
use futures::{
    Stream, StreamExt,
    channel::mpsc::{UnboundedSender, unbounded},
};
use kube::{
    api::{ObjectMeta, PartialObjectMeta, PartialObjectMetaExt},
    runtime::reflector::ObjectRef,
};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::Guarded;
use crate::{
    crd::consumer::{AuditConsumer, AuditConsumerStatus},
    error::{Error, Result},
};

/// The subject NATS publishes on when an event of `durable` on `stream` reaches max deliver.
pub fn advisory_subject(stream: &str, durable: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}")
}

/// The part of `io.nats.jetstream.advisory.v1.max_deliver` the operator uses.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Advisory {
    /// Where the event stays in the stream.
    pub stream_seq: u64,
    /// How often it was delivered.
    pub deliveries: u64,
}

pub fn parse_advisory(payload: &[u8]) -> serde_json::Result<Advisory> {
    serde_json::from_slice(payload)
}

/// Advisories counted by one subscription (and its replacements) since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    /// Stream sequence of the most recent advisory.
    pub last_sequence: Option<u64>,
}

impl Tally {
    fn record(&mut self, advisory: &Advisory) {
        self.count += 1;
        self.last_sequence = Some(advisory.stream_seq);
    }
}

/// The status fields this module owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub total: u64,
    pub last_sequence: Option<u64>,
}

impl Recorded {
    pub fn of(status: &AuditConsumerStatus) -> Self {
        Self {
            total: status.max_deliveries_reached.unwrap_or(0),
            last_sequence: status.last_max_delivered_sequence,
        }
    }
}

/// Advisories not yet in a written status, with what this process last wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unreported {
    /// Only the advisories counted since the last written status.
    pub new: Tally,
    /// The subscription's whole count, to mark as reported once the status is written.
    counted: u64,
    /// What this process last wrote. The cached object a reconciliation reads can lag behind
    /// the operator's own write by a watch event; adding to that stale value would lose counts.
    written: Option<Recorded>,
}

/// The status fields after adding `unreported` to what `previous` (the status as read) holds.
/// Counts only grow, so the larger of the read and the written total is the current one.
pub fn fold(previous: Recorded, unreported: &Unreported) -> Recorded {
    let base = match unreported.written {
        Some(written) if written.total > previous.total => written,
        _ => previous,
    };
    Recorded {
        total: base.total + unreported.new.count,
        last_sequence: unreported.new.last_sequence.or(base.last_sequence),
    }
}

/// Adds `unreported` to the counts in `status` (as built from the status read); returns them.
pub fn fold_into(status: &mut AuditConsumerStatus, unreported: &Unreported) -> Recorded {
    let recorded = fold(Recorded::of(status), unreported);
    status.max_deliveries_reached = Some(recorded.total);
    status.last_max_delivered_sequence = recorded.last_sequence;
    recorded
}

/// The Warning Event's message after `new` more events reached `max_deliver`.
pub fn warning(new: u64, recorded: Recorded, max_deliver: i64, stream: &str) -> String {
    let last = recorded.last_sequence.map_or_else(String::new, |seq| {
        format!(", the last at stream sequence {seq}")
    });
    format!(
        "{new} more event(s) reached maxDeliver ({max_deliver}) and will not be redelivered ({} in all{last}). \
         They remain in stream {stream}: fix the sink (see the consumer pods' logs) or raise or remove spec.maxDeliver, \
         then replay them with a new AuditConsumer using deliverPolicy: ByStartSequence from their sequence",
        recorded.total
    )
}

/// One AuditConsumer's subscription and counts.
struct Watch {
    subject: String,
    /// Identifies the pooled connection subscribed on: the pool replaces a client (rotated
    /// credentials, a lost connection) with a new one, which has new statistics. The old
    /// subscription would keep the old connection open, so it is replaced too.
    connection: Arc<Statistics>,
    task: JoinHandle<()>,
    tally: Arc<Mutex<Tally>>,
    /// How much of `tally.count` is in a written status.
    reported: u64,
    written: Option<Recorded>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Names the AuditConsumer an advisory was about.
pub type Advised = PartialObjectMeta<AuditConsumer>;

/// The subscriptions of every AuditConsumer with a `maxDeliver`, keyed by namespace/name.
pub struct MaxDeliveries {
    watches: Mutex<HashMap<ObjectRef<Guarded>, Watch>>,
    wake: UnboundedSender<Advised>,
}

impl MaxDeliveries {
    /// The registry, and the stream of AuditConsumers to reconcile because advisories arrived.
    pub fn new() -> (Self, impl Stream<Item = Advised> + Send + 'static) {
        let (wake, woken) = unbounded();
        let registry = Self {
            watches: Mutex::default(),
            wake,
        };
        (registry, woken)
    }

    /// Makes sure `key` listens to `subject` on `client`'s connection: subscribes unless a
    /// subscription exists there whose task still runs. Counts carry over a re-subscription.
    pub async fn watch(
        &self,
        key: &ObjectRef<Guarded>,
        client: &Client,
        subject: String,
    ) -> Result<()> {
        let connection = client.statistics();
        let tally = {
            let watches = self.lock();
            match watches.get(key) {
                Some(watch)
                    if watch.subject == subject
                        && Arc::ptr_eq(&watch.connection, &connection)
                        && !watch.task.is_finished() =>
                {
                    return Ok(());
                }
                Some(watch) => watch.tally.clone(),
                None => Arc::default(),
            }
        };
        let failed = |e: &dyn std::fmt::Display| {
            Error::JetStreamRequest(format!(
                "cannot subscribe to the max-deliveries advisories ({subject}): {e}"
            ))
        };
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| failed(&e))?;
        // Out on the wire before the reconciliation reports the consumer ready, rather than
        // whenever the connection's writer gets to it.
        client.flush().await.map_err(|e| failed(&e))?;
        debug!(%subject, object = %key, "listening for max-deliveries advisories");
        let advised = ObjectMeta {
            name: Some(key.name.clone()),
            namespace: key.namespace.clone(),
            ..ObjectMeta::default()
        }
        .into_request_partial();
        let task = tokio::spawn(count(subscriber, tally.clone(), self.wake.clone(), advised));
        let mut watches = self.lock();
        let previous = watches.remove(key);
        watches.insert(
            key.clone(),
            Watch {
                subject,
                connection,
                task,
                tally,
                reported: previous.as_ref().map_or(0, |w| w.reported),
                written: previous.as_ref().and_then(|w| w.written),
            },
        );
        Ok(())
    }

    /// Stops listening for `key` (its `maxDeliver` was removed, or it is being deleted).
    pub fn forget(&self, key: &ObjectRef<Guarded>) {
        self.lock().remove(key);
    }

    /// What `key`'s subscription counted that no written status holds yet; `None` without a
    /// subscription.
    pub fn unreported(&self, key: &ObjectRef<Guarded>) -> Option<Unreported> {
        let watches = self.lock();
        let watch = watches.get(key)?;
        let tally = *lock(&watch.tally);
        let count = tally.count - watch.reported;
        Some(Unreported {
            new: Tally {
                count,
                last_sequence: tally.last_sequence.filter(|_| count > 0),
            },
            counted: tally.count,
            written: watch.written,
        })
    }

    /// Records that a status holding `unreported`, as `recorded`, was written.
    pub fn reported(&self, key: &ObjectRef<Guarded>, unreported: &Unreported, recorded: Recorded) {
        if let Some(watch) = self.lock().get_mut(key) {
            watch.reported = unreported.counted;
            watch.written = Some(recorded);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectRef<Guarded>, Watch>> {
        lock(&self.watches)
    }
}

/// Counts advisories until the subscription ends (its connection closed).
async fn count(
    mut subscriber: Subscriber,
    tally: Arc<Mutex<Tally>>,
    wake: UnboundedSender<Advised>,
    advised: Advised,
) {
    let key = format!(
        "{}/{}",
        advised.metadata.namespace.as_deref().unwrap_or_default(),
        advised.metadata.name.as_deref().unwrap_or_default()
    );
    while let Some(message) = subscriber.next().await {
        match parse_advisory(&message.payload) {
            Ok(advisory) => {
                debug!(object = %key, stream_sequence = advisory.stream_seq, deliveries = advisory.deliveries, "an event reached maxDeliver");
                lock(&tally).record(&advisory);
                // Only fails once the controller is gone, when nothing is left to wake.
                let _ = wake.unbounded_send(advised.clone());
            }
            Err(error) => {
                warn!(object = %key, subject = %message.subject, %error, "ignoring an unreadable max-deliveries advisory");
            }
        }
    }
    debug!(object = %key, "max-deliveries subscription ended");
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind; keep using them.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As nats-server 2.12 publishes it.
    const ADVISORY: &str = r#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x1","timestamp":"2026-11-22T00:00:00Z","stream":"ORDERS","consumer":"orders_reader","stream_seq":42,"deliveries":3}"#;

    #[test]
    fn reads_the_servers_advisory() {
        assert_eq!(
            parse_advisory(ADVISORY.as_bytes()).unwrap(),
            Advisory {
                stream_seq: 42,
                deliveries: 3
            }
        );
        assert!(parse_advisory(b"{\"stream\":\"ORDERS\"}").is_err());
        assert_eq!(
            advisory_subject("ORDERS", "orders_reader"),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.orders_reader"
        );
    }

    fn unreported(count: u64, last_sequence: Option<u64>, written: Option<Recorded>) -> Unreported {
        Unreported {
            new: Tally {
                count,
                last_sequence,
            },
            counted: count,
            written,
        }
    }

    #[test]
    fn new_advisories_add_to_the_status_so_counts_survive_restarts() {
        let previous = Recorded {
            total: 5,
            last_sequence: Some(10),
        };
        assert_eq!(
            fold(previous, &unreported(2, Some(17), None)),
            Recorded {
                total: 7,
                last_sequence: Some(17)
            }
        );
        assert_eq!(fold(previous, &unreported(0, None, None)), previous);
        assert_eq!(
            fold(Recorded::default(), &unreported(0, None, None)),
            Recorded::default()
        );
    }

    #[test]
    fn a_status_read_before_the_last_write_arrived_loses_nothing() {
        let written = Recorded {
            total: 3,
            last_sequence: Some(9),
        };
        let stale = Recorded {
            total: 1,
            last_sequence: Some(4),
        };
        assert_eq!(
            fold(stale, &unreported(1, Some(12), Some(written))),
            Recorded {
                total: 4,
                last_sequence: Some(12)
            }
        );
        assert_eq!(fold(stale, &unreported(0, None, Some(written))), written);
    }

    #[test]
    fn a_limit_without_advisories_shows_zero_in_the_status() {
        let mut status = AuditConsumerStatus::default();
        let recorded = fold_into(&mut status, &unreported(0, None, None));
        assert_eq!(recorded, Recorded::default());
        assert_eq!(status.max_deliveries_reached, Some(0));
        assert_eq!(status.last_max_delivered_sequence, None);
        fold_into(&mut status, &unreported(1, Some(6), None));
        assert_eq!(
            (
                status.max_deliveries_reached,
                status.last_max_delivered_sequence
            ),
            (Some(1), Some(6))
        );
    }

    #[test]
    fn recording_keeps_the_latest_sequence() {
        let mut tally = Tally::default();
        for stream_seq in [3, 8] {
            tally.record(&Advisory {
                stream_seq,
                deliveries: 1,
            });
        }
        assert_eq!(
            tally,
            Tally {
                count: 2,
                last_sequence: Some(8)
            }
        );
    }

    #[test]
    fn the_warning_says_how_many_where_and_what_to_do() {
        let text = warning(
            2,
            Recorded {
                total: 7,
                last_sequence: Some(17),
            },
            3,
            "ORDERS",
        );
        for part in [
            "2 more event(s)",
            "maxDeliver (3)",
            "7 in all",
            "stream sequence 17",
            "stream ORDERS",
            "spec.maxDeliver",
            "ByStartSequence",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
    }
}
