//! Prometheus metrics of the operator: reconciliations by kind and outcome, their duration,
//! failures by reason, whether this replica leads, and what a deletion had to leave on NATS.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Mutex, atomic::AtomicU64},
    time::Duration,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    namespace: String,
    name: String,
}

/// An AuditConsumer and a direction its pods were scaled in (`up`, `down`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleLabels {
    namespace: String,
    name: String,
    direction: String,
}

/// An AuditConsumer and one limit of its stream (`messages`, `bytes`, `age`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    namespace: String,
    name: String,
    limit: String,
}

/// An AuditStream and the stream it names on NATS.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    namespace: String,
    name: String,
    stream: String,
}

/// An AuditConsumer and the durable consumer it names on NATS.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurableLabels {
    namespace: String,
    name: String,
    stream: String,
    consumer: String,
}

/// One source (or the mirror) of an AuditStream: its name and where it lives.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    namespace: String,
    name: String,
    source: String,
    origin: String,
}

/// One AuditStream or AuditConsumer and the reason of its `Ready` condition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    kind: Cow<'static, str>,
    namespace: String,
    name: String,
    reason: String,
}

/// An object whose readiness this replica exports: kind, namespace, name.
type ObjectKey = (Cow<'static, str>, String, String);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: Cow<'static, str>,
    reason: String,
}

pub struct Metrics {
    registry: Registry,
    reconciliations: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    leader: Gauge,
    max_deliveries: Family<ConsumerLabels, Counter>,
    streams_left_on_nats: Family<StreamLabels, Counter>,
    consumers_left_on_nats: Family<DurableLabels, Counter>,
    ready: Family<ReadyLabels, Gauge>,
    archive_problems: Family<ConsumerLabels, Gauge>,
    archive_verified_through: Family<ConsumerLabels, Gauge>,
    events_discarded: Family<ConsumerLabels, Gauge>,
    desired_replicas: Family<ConsumerLabels, Gauge>,
    consumer_lag: Family<ConsumerLabels, Gauge>,
    limit_use: Family<LimitLabels, Gauge<f64, AtomicU64>>,
    scaled: Family<ScaleLabels, Counter>,
    source_lag: Family<SourceLabels, Gauge>,
    source_active: Family<SourceLabels, Gauge>,
    /// The sources exported per AuditStream, to drop those that went away.
    exported_sources: Mutex<HashMap<(String, String), Vec<SourceLabels>>>,
    /// The reason each object's `ready` series carries now, so that a new reason replaces
    /// the series instead of adding one.
    ready_reasons: Mutex<HashMap<ObjectKey, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("audit_operator");
        let reconciliations = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconciliations",
            "Reconciliations started, by kind",
            reconciliations.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by kind and reason (the Condition reason)",
            failures.clone(),
        );
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took, by kind",
            duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without leader election)",
            leader.clone(),
        );
        let max_deliveries = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "max_deliveries_reached",
            "Events NATS stopped redelivering because they reached an AuditConsumer's maxDeliver, as counted by this replica",
            max_deliveries.clone(),
        );
        let streams_left_on_nats = Family::<StreamLabels, Counter>::default();
        registry.register(
            "streams_left_on_nats",
            "AuditStreams with deletionPolicy Delete let go without deleting their stream, because their namespace was being deleted and no credentials for NATS were left; the stream remains on NATS",
            streams_left_on_nats.clone(),
        );
        let consumers_left_on_nats = Family::<DurableLabels, Counter>::default();
        registry.register(
            "consumers_left_on_nats",
            "AuditConsumers with deletionPolicy Delete let go without deleting their durable consumer, because it could not be reached any more; it may remain on NATS",
            consumers_left_on_nats.clone(),
        );
        let ready = Family::<ReadyLabels, Gauge>::default();
        registry.register(
            "ready",
            "1 while an AuditStream's or AuditConsumer's Ready condition is True, else 0; reason is the condition's reason. Exported by the leader for the objects it reconciled, and dropped when one is deleted",
            ready.clone(),
        );
        let archive_problems = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "archive_verification_problems",
            "Problems the last finished verification of an AuditConsumer's archive found (missing, altered, reordered or truncated lines, missing segments, rejected heads); 0 when intact, -1 when the last run could not check",
            archive_problems.clone(),
        );
        let archive_verified_through = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "archive_verified_through_timestamp_seconds",
            "Unix time up to which every segment stored in an AuditConsumer's archive has been verified",
            archive_verified_through.clone(),
        );
        let events_discarded = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "events_discarded",
            "Events an AuditConsumer's stream removed by its limits before the consumer acknowledged them (status.eventsDiscarded): lost to its output",
            events_discarded.clone(),
        );
        let desired_replicas = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumer_desired_replicas",
            "Consumer pods an AuditConsumer wants (status.desiredReplicas): spec.replicas, or the autoscaler's decision",
            desired_replicas.clone(),
        );
        let consumer_lag = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Events pending plus acknowledgements pending of an AuditConsumer's durable consumer, as NATS last reported them: what the autoscaler acts on",
            consumer_lag.clone(),
        );
        let limit_use = Family::<LimitLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "consumer_limit_use_ratio",
            "Share of a limit of an AuditConsumer's stream (limit: messages, bytes, age) that the events the consumer has not written take (status.limitsUse): at 1 the stream removes them (discard Old) or refuses new ones (discard New)",
            limit_use.clone(),
        );
        let scaled = Family::<ScaleLabels, Counter>::default();
        registry.register(
            "consumer_scaled",
            "Times the autoscaler changed an AuditConsumer's number of pods, by direction (up, down)",
            scaled.clone(),
        );
        let source_lag = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "stream_source_lag",
            "Messages an AuditStream's source (or mirror) has not copied yet, as NATS last reported; origin is where the source lives (domain <name>, api <prefix>, local)",
            source_lag.clone(),
        );
        let source_active = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "stream_source_active",
            "1 while NATS heard from an AuditStream's source (or mirror) within its sourceInactiveAfter, else 0",
            source_active.clone(),
        );
        Self {
            events_discarded,
            desired_replicas,
            consumer_lag,
            limit_use,
            scaled,
            source_lag,
            source_active,
            exported_sources: Mutex::default(),
            archive_problems,
            archive_verified_through,
            ready,
            ready_reasons: Mutex::default(),
            streams_left_on_nats,
            consumers_left_on_nats,
            max_deliveries,
            registry,
            reconciliations,
            failures,
            duration,
            leader,
        }
    }
}

impl Metrics {
    /// Records one finished reconciliation of `kind`; `failure` is the reason when it failed.
    pub fn record_reconcile(
        &self,
        kind: impl Into<Cow<'static, str>>,
        took: Duration,
        failure: Option<&str>,
    ) {
        let kind = kind.into();
        let labels = KindLabels { kind: kind.clone() };
        self.reconciliations.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(reason) = failure {
            self.failures
                .get_or_create(&FailureLabels {
                    kind,
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    /// Counts `events` that reached the maxDeliver of AuditConsumer `namespace/name`.
    pub fn record_max_deliveries(&self, namespace: &str, name: &str, events: u64) {
        self.max_deliveries
            .get_or_create(&ConsumerLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .inc_by(events);
    }

    /// Counts AuditStream `namespace/name` let go while its `stream` stays on NATS.
    pub fn record_stream_left_on_nats(&self, namespace: &str, name: &str, stream: &str) {
        self.streams_left_on_nats
            .get_or_create(&StreamLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                stream: stream.to_owned(),
            })
            .inc();
    }

    /// Counts AuditConsumer `namespace/name` let go while its durable `consumer` on `stream`
    /// may stay on NATS.
    pub fn record_consumer_left_on_nats(
        &self,
        namespace: &str,
        name: &str,
        stream: &str,
        consumer: &str,
    ) {
        self.consumers_left_on_nats
            .get_or_create(&DurableLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                stream: stream.to_owned(),
                consumer: consumer.to_owned(),
            })
            .inc();
    }

    /// Exports whether `kind` `namespace/name` is Ready, from the conditions its status was
    /// just given; a status without `Ready` exports nothing.
    pub fn set_ready(
        &self,
        kind: Cow<'static, str>,
        namespace: &str,
        name: &str,
        conditions: &[Condition],
    ) {
        let Some(ready) = conditions.iter().find(|c| c.type_ == "Ready") else {
            return;
        };
        let key = (kind.clone(), namespace.to_owned(), name.to_owned());
        let labels = |reason: String| ReadyLabels {
            kind: kind.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            reason,
        };
        let mut reasons = self.ready_reasons.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = reasons.insert(key, ready.reason.clone())
            && previous != ready.reason
        {
            self.ready.remove(&labels(previous));
        }
        self.ready
            .get_or_create(&labels(ready.reason.clone()))
            .set(i64::from(ready.status == "True"));
    }

    /// Exports what the last verification of `namespace/name`'s archive found: its problems
    /// (-1 when it could not check), and up to when the archive is verified.
    pub fn set_archive_verification(
        &self,
        namespace: &str,
        name: &str,
        problems: i64,
        verified_through: Option<i64>,
    ) {
        let labels = ConsumerLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.archive_problems.get_or_create(&labels).set(problems);
        if let Some(seconds) = verified_through {
            self.archive_verified_through
                .get_or_create(&labels)
                .set(seconds);
        }
    }

    /// Exports how many events AuditConsumer `namespace/name` lost to its stream's limits.
    pub fn set_events_discarded(&self, namespace: &str, name: &str, events: u64) {
        self.events_discarded
            .get_or_create(&ConsumerLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    /// Exports the share of its stream's `limit` AuditConsumer `namespace/name` takes; `None`
    /// drops the series (the stream does not set that limit).
    pub fn set_limit_use(&self, namespace: &str, name: &str, limit: &str, share: Option<f64>) {
        let labels = LimitLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            limit: limit.to_owned(),
        };
        match share {
            Some(share) => {
                self.limit_use.get_or_create(&labels).set(share);
            }
            None => {
                self.limit_use.remove(&labels);
            }
        }
    }

    /// Exports AuditConsumer `namespace/name`'s wanted pods and lag, where known.
    pub fn set_scaling(&self, namespace: &str, name: &str, desired: Option<i32>, lag: Option<u64>) {
        let labels = ConsumerLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        if let Some(desired) = desired {
            self.desired_replicas
                .get_or_create(&labels)
                .set(i64::from(desired));
        }
        if let Some(lag) = lag {
            self.consumer_lag
                .get_or_create(&labels)
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }

    /// Counts one change of AuditConsumer `namespace/name`'s number of pods by the autoscaler.
    pub fn record_scaled(&self, namespace: &str, name: &str, up: bool) {
        self.scaled
            .get_or_create(&ScaleLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                direction: if up { "up" } else { "down" }.to_owned(),
            })
            .inc();
    }

    /// Exports the state of `namespace/name`'s sources, `(source, origin, lag, active)`, and
    /// drops those it no longer has.
    pub fn set_sources(&self, namespace: &str, name: &str, sources: &[(&str, &str, u64, bool)]) {
        let labels: Vec<SourceLabels> = sources
            .iter()
            .map(|(source, origin, _, _)| SourceLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: (*source).to_owned(),
                origin: (*origin).to_owned(),
            })
            .collect();
        for (label, (_, _, lag, active)) in labels.iter().zip(sources) {
            self.source_lag
                .get_or_create(label)
                .set(i64::try_from(*lag).unwrap_or(i64::MAX));
            self.source_active
                .get_or_create(label)
                .set(i64::from(*active));
        }
        let mut exported = self
            .exported_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_owned(), name.to_owned());
        for gone in exported
            .insert(key, labels.clone())
            .unwrap_or_default()
            .iter()
            .filter(|old| !labels.contains(old))
        {
            self.source_lag.remove(gone);
            self.source_active.remove(gone);
        }
    }

    /// Drops the readiness of `kind` `namespace/name`, which is gone.
    pub fn forget_ready(&self, kind: Cow<'static, str>, namespace: &str, name: &str) {
        if kind == "AuditStream" {
            self.set_sources(namespace, name, &[]);
        }
        if kind == "AuditConsumer" {
            let labels = ConsumerLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            };
            self.archive_problems.remove(&labels);
            self.events_discarded.remove(&labels);
            self.desired_replicas.remove(&labels);
            self.consumer_lag.remove(&labels);
            for limit in ["messages", "bytes", "age"] {
                self.set_limit_use(namespace, name, limit, None);
            }
            for direction in ["up", "down"] {
                self.scaled.remove(&ScaleLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    direction: direction.to_owned(),
                });
            }
            self.archive_verified_through.remove(&labels);
        }
        let key = (kind, namespace.to_owned(), name.to_owned());
        let mut reasons = self.ready_reasons.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = reasons.remove(&key) {
            self.ready.remove(&ReadyLabels {
                kind: key.0,
                namespace: key.1,
                name: key.2,
                reason,
            });
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: &str, reason: &str) -> Vec<Condition> {
        vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }]
    }

    #[test]
    fn readiness_is_one_series_per_object_that_follows_its_reason_and_goes_with_it() {
        let metrics = Metrics::default();
        let kind = || Cow::Borrowed("AuditConsumer");
        metrics.set_ready(
            kind(),
            "shop",
            "reader",
            &ready("False", "PodsUnschedulable"),
        );
        metrics.set_ready(kind(), "shop", "other", &ready("True", "Ready"));
        let text = metrics.render();
        assert!(
            text.contains(r#"audit_operator_ready{kind="AuditConsumer",namespace="shop",name="reader",reason="PodsUnschedulable"} 0"#),
            "{text}"
        );
        metrics.set_ready(kind(), "shop", "reader", &ready("True", "Ready"));
        let text = metrics.render();
        assert!(!text.contains("PodsUnschedulable"), "{text}");
        assert!(text.contains(
            r#"audit_operator_ready{kind="AuditConsumer",namespace="shop",name="reader",reason="Ready"} 1"#
        ));
        metrics.forget_ready(kind(), "shop", "reader");
        metrics.set_ready(kind(), "shop", "no-ready-yet", &[]);
        let text = metrics.render();
        assert!(!text.contains(r#"name="reader""#), "{text}");
        assert!(!text.contains(r#"name="no-ready-yet""#), "{text}");
        assert!(text.contains(r#"name="other",reason="Ready"} 1"#), "{text}");
    }

    #[test]
    fn reconciliations_and_failures_are_counted_by_kind_and_reason() {
        let metrics = Metrics::default();
        metrics.record_reconcile("AuditStream", Duration::from_millis(3), None);
        metrics.record_reconcile(
            "AuditStream",
            Duration::from_millis(3),
            Some("NatsUnreachable"),
        );
        metrics.set_leader(true);
        metrics.record_max_deliveries("shop", "reader", 2);
        let text = metrics.render();
        assert!(
            text.contains(
                "audit_operator_max_deliveries_reached_total{namespace=\"shop\",name=\"reader\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("audit_operator_reconciliations_total{kind=\"AuditStream\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "audit_operator_reconcile_failures_total{kind=\"AuditStream\",reason=\"NatsUnreachable\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("audit_operator_leader 1"), "{text}");
    }

    #[test]
    fn what_a_deletion_left_on_nats_is_named() {
        let metrics = Metrics::default();
        metrics.record_stream_left_on_nats("shop", "orders", "ORDERS");
        metrics.record_consumer_left_on_nats("shop", "reader", "ORDERS", "reader");
        let text = metrics.render();
        assert!(
            text.contains(
                "audit_operator_streams_left_on_nats_total{namespace=\"shop\",name=\"orders\",stream=\"ORDERS\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "audit_operator_consumers_left_on_nats_total{namespace=\"shop\",name=\"reader\",stream=\"ORDERS\",consumer=\"reader\"} 1"
            ),
            "{text}"
        );
    }
}
