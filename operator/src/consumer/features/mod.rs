//! The AuditConsumer's optional features, in one shape. After the pipeline ran, each feature
//! observes what it needs ([`observe`], I/O, from what the pipeline [`Seen`]) and then
//! contributes through [`Feature`] (pure): its condition(s) and status fields, its notices
//! (Events, each once per transition) and how soon it wants the consumer looked at again.
//! `reconcile::apply` calls them in a loop; a new feature is a module here and one line in
//! [`observe`]. Every feature is registered for every consumer: one the spec does not ask for
//! removes what it left in the status.
//!
//! The features' conditions are not part of `Ready`: each reports on something the consumer
//! keeps working without. (The pods' trouble is not a feature: it explains
//! `WorkloadAvailable`, which is part of `Ready`, so it stays in the workload stage.)

pub mod autoscaling;
pub mod checkpoints;
pub mod discards;
pub mod limits;
pub mod max_deliveries;
pub mod verification;

use std::time::Duration;

use async_nats::jetstream;
use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};

use super::{Context, validate::ValidConsumer};
use crate::{
    conditions::{self, Status, Value},
    crd::consumer::{AuditConsumer, AuditConsumerStatus},
    metrics::Metrics,
    report::Notice,
};

/// What the pipeline got to see before it ended (or stopped at a failure): what the features
/// observe from.
#[derive(Default)]
pub struct Seen {
    /// The consumer, once it validated.
    pub valid: Option<ValidConsumer>,
    /// The stream's name on NATS, once the AuditStream was read.
    pub stream_name: Option<String>,
    /// The connection the durable consumer was applied through, once it was.
    pub client: Option<async_nats::Client>,
    pub jetstream: Option<jetstream::Context>,
    /// The Deployment as applied, once the whole workload was.
    pub deployment: Option<Deployment>,
    /// The autoscaler's decision, when autoscaled and the lag was read.
    pub scaling: Option<autoscaling::Scaled>,
}

/// One feature's contribution to a reconciliation's outcome.
pub trait Feature: Send + Sync {
    /// Writes its condition(s) and status fields into `status`, the status about to be
    /// written; `previous` is the status as the reconciliation found it.
    fn contribute(
        &self,
        previous: &AuditConsumerStatus,
        status: &mut AuditConsumerStatus,
        now: &Time,
    );

    /// The Events to publish now that `status` is the status: once per transition.
    fn notices(&self, previous: &AuditConsumerStatus, status: &AuditConsumerStatus) -> Vec<Notice>;

    /// How soon it wants the consumer reconciled again, if sooner than usual.
    fn requeue(&self) -> Option<Duration> {
        None
    }

    /// Its metrics, from the status just computed.
    fn record(&self, _metrics: &Metrics, _consumer: &AuditConsumer, _status: &AuditConsumerStatus) {
    }

    /// After the status write was attempted: what the feature keeps in the operator's memory
    /// about what the status now says.
    fn written(&self, _ctx: &Context, _status: &AuditConsumerStatus) {}
}

/// The features one reconciliation observed.
pub struct Features(Vec<Box<dyn Feature>>);

/// What each feature observed; every feature is here, in the order of its conditions.
pub async fn observe(consumer: &AuditConsumer, seen: &Seen, ctx: &Context) -> Features {
    let observed = discards::read(seen).await;
    Features(vec![
        Box::new(max_deliveries::observe(consumer, seen, ctx).await),
        Box::new(checkpoints::observe(consumer, seen).await),
        Box::new(verification::observe(consumer, ctx).await),
        Box::new(discards::observe(observed.as_ref())),
        Box::new(limits::observe(observed.as_ref()).await),
        Box::new(autoscaling::observe(consumer, seen, ctx)),
    ])
}

impl Features {
    /// Every feature's contribution to `status`.
    pub fn contribute(
        &self,
        previous: &AuditConsumerStatus,
        status: &mut AuditConsumerStatus,
        now: &Time,
    ) {
        for feature in &self.0 {
            feature.contribute(previous, status, now);
        }
    }

    /// The Events every feature wants published, now that `status` is the status.
    pub fn notices(
        &self,
        previous: &AuditConsumerStatus,
        status: &AuditConsumerStatus,
    ) -> Vec<Notice> {
        self.0
            .iter()
            .flat_map(|f| f.notices(previous, status))
            .collect()
    }

    /// The soonest requeue any feature wishes, if any does.
    pub fn requeue(&self) -> Option<Duration> {
        self.0.iter().filter_map(|f| f.requeue()).min()
    }

    pub fn record(
        &self,
        metrics: &Metrics,
        consumer: &AuditConsumer,
        status: &AuditConsumerStatus,
    ) {
        for feature in &self.0 {
            feature.record(metrics, consumer, status);
        }
    }

    pub fn written(&self, ctx: &Context, status: &AuditConsumerStatus) {
        for feature in &self.0 {
            feature.written(ctx, status);
        }
    }
}

/// Sets condition `type_` to `value` in `status`, after every other condition, keeping the
/// transition time of `previous`'s while its status stays the same. Always last: the order
/// stays stable, so an unchanged outcome compares equal and is not written.
pub fn set_condition(
    previous: &AuditConsumerStatus,
    status: &mut AuditConsumerStatus,
    type_: &str,
    value: Value,
    now: &Time,
) {
    status.conditions.retain(|c| c.type_ != type_);
    let generation = status.observed_generation;
    let condition = conditions::condition(&previous.conditions, type_, value, generation, now);
    status.conditions.push(condition);
}

/// Keeps condition `type_` exactly as `previous` has it (after every other condition), or none
/// if it has none: the feature could not observe this time.
pub fn keep_condition(
    previous: &AuditConsumerStatus,
    status: &mut AuditConsumerStatus,
    type_: &str,
) {
    status.conditions.retain(|c| c.type_ != type_);
    let kept = previous.conditions.iter().find(|c| c.type_ == type_);
    status.conditions.extend(kept.cloned());
}

/// Removes condition `type_`: the feature was turned off.
pub fn remove_condition(status: &mut AuditConsumerStatus, type_: &str) {
    status.conditions.retain(|c| c.type_ != type_);
}

/// The reason of condition `type_` when it is False in `status` but was not, or was False
/// for another reason, in `previous`: the moment for one Warning.
pub fn turned_false(
    previous: &AuditConsumerStatus,
    status: &AuditConsumerStatus,
    type_: &str,
) -> Option<Condition> {
    let false_one = |conditions: &[Condition]| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && Status::False.of(c))
            .cloned()
    };
    let now = false_one(&status.conditions)?;
    let before = false_one(&previous.conditions);
    (before.map(|c| c.reason) != Some(now.reason.clone())).then_some(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn a_condition_keeps_its_place_and_time_while_unchanged() {
        let mut previous = AuditConsumerStatus::default();
        let value = || Value::new(Status::True, "Verified", "fine");
        set_condition(
            &AuditConsumerStatus::default(),
            &mut previous,
            "X",
            value(),
            &at(1),
        );
        let mut status = previous.clone();
        status.conditions.insert(
            0,
            Condition {
                type_: "Ready".into(),
                ..previous.conditions[0].clone()
            },
        );
        set_condition(&previous, &mut status, "X", value(), &at(2));
        assert_eq!(status.conditions.last().unwrap().type_, "X");
        assert_eq!(
            status.conditions.last().unwrap().last_transition_time,
            at(1)
        );
    }

    #[test]
    fn a_warning_once_per_turn_to_false() {
        let with = |status: Status, reason: &str| {
            let mut s = AuditConsumerStatus::default();
            set_condition(
                &AuditConsumerStatus::default(),
                &mut s,
                "X",
                Value::new(status, reason, ""),
                &at(1),
            );
            s
        };
        let ok = with(Status::True, "Verified");
        let bad = with(Status::False, "Problems");
        let other = with(Status::False, "Failed");
        assert!(turned_false(&ok, &bad, "X").is_some());
        assert!(turned_false(&bad, &bad, "X").is_none());
        assert!(turned_false(&bad, &other, "X").is_some());
        assert!(turned_false(&bad, &ok, "X").is_none());
        assert!(turned_false(&AuditConsumerStatus::default(), &bad, "X").is_some());
    }
}
