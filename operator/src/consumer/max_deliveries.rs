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
//!
//! A subscription can be refused: NATS then answers the `SUB` only with an asynchronous
//! permissions violation, and no advisory ever arrives. The pool passes those refusals on; the
//! registry marks the watch, wakes the AuditConsumer so that its status and a Warning Event
//! say what permission to grant, and subscribes again now and then (a granted permission does
//! not revive a refused subscription). A refusal stands until a later subscription has gone
//! unanswered for [`ANSWER_WITHIN`]: the server's refusal follows a `SUB` within a round trip,
//! and nothing ever confirms a subscription that was accepted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
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
use tokio::{sync::oneshot, task::JoinHandle};
use tracing::{debug, warn};

use super::Guarded;
use crate::{
    connection::SubscriptionRefused,
    crd::consumer::{AuditConsumer, AuditConsumerStatus},
    error::{Error, Result},
};

/// How long after a `SUB` a refusal is still to be expected; ample for one round trip.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How often a refused subscription is tried again: at the reconciliations (every
/// `--requeue-interval`, or sooner when woken) at least this long after the last try. It
/// bounds the retries when reconciliations come often; the refusal itself wakes one.
pub const RETRY_REFUSED_AFTER: Duration = Duration::from_secs(10);

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

#[cfg(test)]
impl Unreported {
    pub fn new_for_tests(new: Tally, counted: u64, written: Option<Recorded>) -> Self {
        Self {
            new,
            counted,
            written,
        }
    }
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

/// The server's refusal of one of a watch's subscriptions.
#[derive(Clone, Debug)]
struct Refusal {
    message: String,
    received_at: Instant,
}

/// The refusal that still stands for a subscription sent at `subscribed_at`: one received
/// since, or an earlier one while the new subscription may still be refused.
fn standing(subscribed_at: Instant, refusal: Option<&Refusal>, now: Instant) -> Option<&Refusal> {
    refusal.filter(|refusal| {
        refusal.received_at >= subscribed_at
            || now.saturating_duration_since(subscribed_at) < ANSWER_WITHIN
    })
}

/// Whether the operator hears an AuditConsumer's advisories, as far as the server said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listening {
    /// Subscribed to `subject`, and not refused.
    Subscribed { subject: String },
    /// The server refused the subscription to `subject`, in `message`.
    Refused { subject: String, message: String },
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
    /// When the current subscription was sent.
    subscribed_at: Instant,
    /// The latest refusal of one of this watch's subscriptions.
    refusal: Option<Refusal>,
    /// The AuditConsumer to wake.
    advised: Advised,
}

impl Watch {
    fn standing_refusal(&self, now: Instant) -> Option<&Refusal> {
        standing(self.subscribed_at, self.refusal.as_ref(), now)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Names the AuditConsumer an advisory was about.
pub type Advised = PartialObjectMeta<AuditConsumer>;

type Watches = Mutex<HashMap<ObjectRef<Guarded>, Watch>>;

/// The subscriptions of every AuditConsumer with a `maxDeliver`, keyed by namespace/name.
pub struct MaxDeliveries {
    watches: Arc<Watches>,
    wake: UnboundedSender<Advised>,
    /// Marks the watches whose subscriptions the servers refuse.
    refusals: JoinHandle<()>,
}

impl Drop for MaxDeliveries {
    fn drop(&mut self) {
        self.refusals.abort();
    }
}

impl MaxDeliveries {
    /// The registry, taking note of `refusals`, and the stream of AuditConsumers to reconcile
    /// because advisories or refusals arrived.
    pub fn new(
        refusals: impl Stream<Item = SubscriptionRefused> + Send + 'static,
    ) -> (Self, impl Stream<Item = Advised> + Send + 'static) {
        let (wake, woken) = unbounded();
        let watches = Arc::<Watches>::default();
        let refusals = tokio::spawn(mark_refusals(
            refusals,
            Arc::downgrade(&watches),
            wake.clone(),
        ));
        let registry = Self {
            watches,
            wake,
            refusals,
        };
        (registry, woken)
    }

    /// Makes sure `key` listens to `subject` on `client`'s connection: subscribes unless a
    /// subscription exists there whose task still runs and that was not refused lately.
    /// Counts, and a refusal until a new subscription proves it stale, carry over.
    pub async fn watch(
        &self,
        key: &ObjectRef<Guarded>,
        client: &Client,
        subject: String,
    ) -> Result<()> {
        let connection = client.statistics();
        let now = Instant::now();
        let advised = ObjectMeta {
            name: Some(key.name.clone()),
            namespace: key.namespace.clone(),
            ..ObjectMeta::default()
        }
        .into_request_partial();
        let (handover, subscribed) = oneshot::channel();
        let retrying = {
            let mut watches = self.lock();
            let previous = watches.get(key);
            if let Some(watch) = previous
                && watch.subject == subject
                && Arc::ptr_eq(&watch.connection, &connection)
                && !watch.task.is_finished()
                && !watch.standing_refusal(now).is_some_and(|_| {
                    now.saturating_duration_since(watch.subscribed_at) >= RETRY_REFUSED_AFTER
                })
            {
                return Ok(());
            }
            let refusal = previous.and_then(|watch| {
                watch
                    .standing_refusal(now)
                    .filter(|_| watch.subject == subject)
                    .cloned()
            });
            let tally = previous.map_or_else(Arc::default, |watch| watch.tally.clone());
            let watch = Watch {
                subject: subject.clone(),
                connection,
                task: tokio::spawn(count(
                    subscribed,
                    tally.clone(),
                    self.wake.clone(),
                    advised.clone(),
                )),
                tally,
                reported: previous.map_or(0, |watch| watch.reported),
                written: previous.and_then(|watch| watch.written),
                subscribed_at: now,
                refusal,
                advised: advised.clone(),
            };
            let retrying = watch.refusal.is_some();
            // Registered before the `SUB` goes out, so that a refusal, however quick, finds
            // it. This drops the previous watch, whose subscription ends.
            watches.insert(key.clone(), watch);
            retrying
        };
        let failed = |e: &dyn std::fmt::Display| {
            Error::JetStreamRequest(format!(
                "cannot subscribe to the max-deliveries advisories ({subject}): {e}"
            ))
        };
        // On failure the counting task ends without a subscription, which the next
        // reconciliation sees and subscribes again.
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| failed(&e))?;
        // Out on the wire before the reconciliation reports the consumer ready, rather than
        // whenever the connection's writer gets to it.
        client.flush().await.map_err(|e| failed(&e))?;
        let _ = handover.send(subscriber);
        debug!(%subject, object = %key, "listening for max-deliveries advisories");
        if retrying {
            // Look again once the server had time to refuse this try, so that a granted
            // permission shows without waiting for the next periodic check.
            let wake = self.wake.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ANSWER_WITHIN).await;
                let _ = wake.unbounded_send(advised);
            });
        }
        Ok(())
    }

    /// Whether `key`'s advisories are heard; `None` without a subscription.
    pub fn listening(&self, key: &ObjectRef<Guarded>) -> Option<Listening> {
        let watches = self.lock();
        let watch = watches.get(key)?;
        let subject = watch.subject.clone();
        Some(match watch.standing_refusal(Instant::now()) {
            Some(refusal) => Listening::Refused {
                subject,
                message: refusal.message.clone(),
            },
            None => Listening::Subscribed { subject },
        })
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

/// Marks the watches whose subscription a server refused, and wakes their AuditConsumers.
async fn mark_refusals(
    refusals: impl Stream<Item = SubscriptionRefused>,
    watches: Weak<Watches>,
    wake: UnboundedSender<Advised>,
) {
    let mut refusals = std::pin::pin!(refusals);
    while let Some(refusal) = refusals.next().await {
        let Some(watches) = watches.upgrade() else {
            return;
        };
        let mut watches = lock(&watches);
        let refused = watches.iter_mut().filter(|(_, watch)| {
            watch.subject == refusal.subject && Arc::ptr_eq(&watch.connection, &refusal.connection)
        });
        for (key, watch) in refused {
            // Every retry is refused again until the permission is granted: say it once.
            if watch.standing_refusal(Instant::now()).is_none() {
                warn!(object = %key, subject = %refusal.subject, message = %refusal.message, "NATS refused the subscription to the max-deliveries advisories");
            } else {
                debug!(object = %key, subject = %refusal.subject, "NATS refused the subscription to the max-deliveries advisories again");
            }
            watch.refusal = Some(Refusal {
                message: refusal.message.clone(),
                received_at: Instant::now(),
            });
            let _ = wake.unbounded_send(watch.advised.clone());
        }
    }
}

/// Counts advisories once subscribed, until the subscription ends (its connection closed).
async fn count(
    subscribed: oneshot::Receiver<Subscriber>,
    tally: Arc<Mutex<Tally>>,
    wake: UnboundedSender<Advised>,
    advised: Advised,
) {
    let Ok(mut subscriber) = subscribed.await else {
        return;
    };
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
    fn a_refusal_stands_until_a_later_subscription_goes_unanswered() {
        let subscribed = Instant::now();
        let later = |seconds: u64| subscribed + Duration::from_secs(seconds);
        let refusal = |received_at| Refusal {
            message: "Permissions Violation".into(),
            received_at,
        };
        let answer = refusal(later(0));
        assert!(
            standing(subscribed, Some(&answer), later(3600)).is_some(),
            "a refusal of the current subscription stands however old"
        );
        let earlier = refusal(subscribed - Duration::from_secs(60));
        assert!(
            standing(subscribed, Some(&earlier), later(1)).is_some(),
            "the new subscription may still be refused"
        );
        assert!(
            standing(subscribed, Some(&earlier), subscribed + ANSWER_WITHIN).is_none(),
            "no refusal of the new subscription came: the permission was granted"
        );
        assert!(standing(subscribed, None, later(1)).is_none());
    }
}
