//! Events NATS gave up on (`spec.maxDeliver`), as a [`Feature`]: the operator listens to the
//! durable consumer's max-deliveries advisories (the subscriptions and their counts are
//! [`crate::consumer::max_deliveries`]); this folds the counts into
//! `status.maxDeliveriesReached`, says in `MaxDeliveriesCounted` whether the operator hears
//! them, and warns once per new count and once when the subscription is refused. Not part of
//! `Ready`: without the advisories the consumer and its pods work all the same; only the
//! operator's count is blind, which the condition says, with what to grant.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use tracing::warn;

use super::{Feature, Seen, keep_condition, remove_condition, set_condition, turned_false};
use crate::{
    conditions::{Status, Value},
    consumer::{
        Context, Guarded,
        max_deliveries::{Listening, Recorded, Unreported, advisory_subject, fold_into},
        object_ref,
    },
    crd::consumer::{AuditConsumer, AuditConsumerStatus},
    metrics::Metrics,
    report::Notice,
};

pub const MAX_DELIVERIES_COUNTED: &str = "MaxDeliveriesCounted";
/// Reason of the `MaxDeliveriesCounted` condition and of the Warning Event when NATS refused
/// the subscription.
pub const SUBSCRIPTION_DENIED: &str = "AdvisorySubscriptionDenied";
const SUBSCRIBE_FAILED: &str = "SubscribeFailed";
/// How soon a consumer whose advisory subscription could not be sent is looked at again.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(10);

/// What a reconciliation knows of the advisories of one AuditConsumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advisories {
    key: ObjectRef<Guarded>,
    hearing: Hearing,
    /// Counted since the last written status, while a subscription exists.
    unreported: Option<Unreported>,
    max_deliver: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hearing {
    /// No `maxDeliver`: nothing to listen for, and no condition.
    NotWanted,
    /// Not known this time (not subscribed yet): the condition stays as it was.
    Unknown,
    /// The subscription could not be sent, for this reason.
    Failed(String),
    /// What the subscription's server said.
    Known(Listening),
}

/// Listens to the advisories once the durable consumer exists (NATS advises only while
/// someone listens), or stops listening without a `maxDeliver` (I/O).
pub async fn observe(consumer: &AuditConsumer, seen: &Seen, ctx: &Context) -> Advisories {
    let key = object_ref(consumer);
    let registry = &ctx.state.max_deliveries;
    let max_deliver = consumer.spec.max_deliver.unwrap_or_default();
    let mut hearing = if consumer.spec.max_deliver.is_none() {
        Hearing::NotWanted
    } else {
        Hearing::Unknown
    };
    match (&seen.valid, &seen.stream_name, &seen.client) {
        (Some(valid), Some(stream), Some(client)) if valid.max_deliver > 0 => {
            let subject = advisory_subject(stream, &valid.durable_name);
            if let Err(error) = registry.watch(&key, client, subject).await {
                warn!(%error, "cannot subscribe to the max-deliveries advisories");
                hearing = Hearing::Failed(error.to_string());
            }
        }
        (Some(_), _, _) => registry.forget(&key),
        _ => {}
    }
    if hearing == Hearing::Unknown
        && let Some(listening) = registry.listening(&key)
    {
        hearing = Hearing::Known(listening);
    }
    Advisories {
        unreported: registry.unreported(&key),
        key,
        hearing,
        max_deliver,
    }
}

impl Feature for Advisories {
    fn contribute(
        &self,
        previous: &AuditConsumerStatus,
        status: &mut AuditConsumerStatus,
        now: &Time,
    ) {
        match &self.hearing {
            Hearing::NotWanted => remove_condition(status, MAX_DELIVERIES_COUNTED),
            Hearing::Unknown => keep_condition(previous, status, MAX_DELIVERIES_COUNTED),
            Hearing::Failed(reason) => {
                let value = Value::new(
                    Status::Unknown,
                    SUBSCRIBE_FAILED,
                    format!(
                        "cannot subscribe to the max-deliveries advisories ({reason}); trying again shortly"
                    ),
                );
                set_condition(previous, status, MAX_DELIVERIES_COUNTED, value, now);
            }
            Hearing::Known(listening) => {
                let value = counting_condition(listening);
                set_condition(previous, status, MAX_DELIVERIES_COUNTED, value, now);
            }
        }
        if let Some(unreported) = &self.unreported {
            fold_into(status, unreported);
        }
    }

    fn notices(&self, previous: &AuditConsumerStatus, status: &AuditConsumerStatus) -> Vec<Notice> {
        let mut notices = Vec::new();
        if let Some(refused) = turned_false(previous, status, MAX_DELIVERIES_COUNTED) {
            notices.push(Notice::warning(SUBSCRIPTION_DENIED, refused.message));
        }
        if let Some(unreported) = self.unreported.filter(|u| u.new.count > 0) {
            let stream = status.stream_name.as_deref().unwrap_or_default();
            let recorded = Recorded::of(status);
            let note = warning(unreported.new.count, recorded, self.max_deliver, stream);
            notices.push(Notice::warning("MaxDeliveriesReached", note));
        }
        notices
    }

    fn requeue(&self) -> Option<Duration> {
        matches!(self.hearing, Hearing::Failed(_)).then_some(SUBSCRIBE_RETRY)
    }

    fn record(&self, metrics: &Metrics, consumer: &AuditConsumer, _status: &AuditConsumerStatus) {
        if let Some(unreported) = self.unreported.filter(|u| u.new.count > 0) {
            metrics.record_max_deliveries(
                &consumer.namespace().unwrap_or_default(),
                &consumer.name_any(),
                unreported.new.count,
            );
        }
    }

    /// The counts folded into the status are reported: the next status adds only newer ones.
    fn written(&self, ctx: &Context, status: &AuditConsumerStatus) {
        if let Some(unreported) = &self.unreported {
            let registry = &ctx.state.max_deliveries;
            registry.reported(&self.key, unreported, Recorded::of(status));
        }
    }
}

/// The `MaxDeliveriesCounted` condition.
pub fn counting_condition(listening: &Listening) -> Value {
    match listening {
        Listening::Subscribed { subject } => Value::new(
            Status::True,
            "AdvisoriesSubscribed",
            format!(
                "counting the events that reach maxDeliver from NATS's advisories on {subject}"
            ),
        ),
        Listening::Refused { subject, message } => Value::new(
            Status::False,
            SUBSCRIPTION_DENIED,
            format!(
                "NATS refused the operator's subscription to the max-deliveries advisories ({message}), \
                 so events that reach maxDeliver are not counted in status.maxDeliveriesReached nor reported \
                 in MaxDeliveriesReached Events; the consumer itself works. Grant the operator's NATS user \
                 permission to subscribe to $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.> (or to {subject}); \
                 the operator subscribes again at its next periodic check"
            ),
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::max_deliveries::Tally;

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

    #[test]
    fn a_refusal_says_which_permission_to_grant_and_that_the_consumer_works() {
        let subject = advisory_subject("ORDERS", "reader");
        let Value {
            status,
            reason,
            message,
        } = counting_condition(&Listening::Refused {
            subject: subject.clone(),
            message: format!("Permissions Violation for Subscription to \"{subject}\""),
        });
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "AdvisorySubscriptionDenied")
        );
        for part in [
            "Permissions Violation for Subscription",
            "subscribe to $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
            "not counted in status.maxDeliveriesReached",
            "the consumer itself works",
        ] {
            assert!(message.contains(part), "{part:?} missing from {message}");
        }
        let Value {
            status,
            reason,
            message,
        } = counting_condition(&Listening::Subscribed {
            subject: subject.clone(),
        });
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "AdvisoriesSubscribed")
        );
        assert!(message.contains(&subject), "{message}");
    }

    fn advisories(hearing: Hearing) -> Advisories {
        Advisories {
            key: ObjectRef::new("reader").within("audit"),
            hearing,
            unreported: None,
            max_deliver: 5,
        }
    }

    #[test]
    fn a_refused_subscription_warns_once_and_goes_with_max_deliver() {
        let subject = advisory_subject("orders_audit", "orders_reader");
        let refused = advisories(Hearing::Known(Listening::Refused {
            subject: subject.clone(),
            message: "Permissions Violation".into(),
        }));
        let initial = AuditConsumerStatus::default();
        let mut status = initial.clone();
        refused.contribute(
            &initial,
            &mut status,
            &Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        );
        let condition = status.conditions.last().unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", SUBSCRIPTION_DENIED)
        );
        assert_eq!(refused.notices(&initial, &status).len(), 1);
        assert!(refused.notices(&status, &status).is_empty(), "once");

        let mut kept = AuditConsumerStatus::default();
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        advisories(Hearing::Unknown).contribute(&status, &mut kept, &now);
        assert_eq!(kept.conditions, status.conditions, "kept as it was");
        let mut removed = status.clone();
        advisories(Hearing::NotWanted).contribute(&status, &mut removed, &now);
        assert!(removed.conditions.is_empty(), "maxDeliver was removed");
    }

    #[test]
    fn given_up_events_are_folded_in_and_warned_about() {
        let mut feature = advisories(Hearing::Known(Listening::Subscribed {
            subject: advisory_subject("orders_audit", "orders_reader"),
        }));
        let new = Tally {
            count: 3,
            last_sequence: Some(42),
        };
        feature.unreported = Some(Unreported::new_for_tests(new, 3, None));
        let previous = AuditConsumerStatus {
            stream_name: Some("orders_audit".into()),
            max_deliveries_reached: Some(2),
            ..AuditConsumerStatus::default()
        };
        let mut status = previous.clone();
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        feature.contribute(&previous, &mut status, &now);
        assert_eq!(status.max_deliveries_reached, Some(5));
        assert_eq!(status.last_max_delivered_sequence, Some(42));
        let notices = feature.notices(&previous, &status);
        assert_eq!(notices.len(), 1);
        assert!(
            notices[0].note.contains("3 more event(s)"),
            "{}",
            notices[0].note
        );
        assert!(notices[0].note.contains("(5 in all"), "{}", notices[0].note);
    }
}
