//! What the autoscaler decided, as a [`Feature`]: `status.desiredReplicas` (for every
//! consumer: `kubectl get` shows it), `status.autoscaling` (the lag the decision used, the
//! last change, when and why), condition `ScalingActive`, an Event per change and the
//! metrics. The decision itself is made in the pipeline (`autoscale`), before the workload is
//! applied with it; this only reports it. While autoscaling is on, the consumer is looked at
//! every `--autoscaling-interval`.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;

use super::{Feature, Seen, remove_condition, set_condition, turned_false};
use crate::{
    conditions::{Status, Value},
    consumer::{
        Context,
        autoscale::{Decision, Hold, Policy},
    },
    crd::consumer::{AuditConsumer, AuditConsumerStatus, DEFAULT_REPLICAS},
    metrics::Metrics,
    report::Notice,
};

/// Whether the autoscaler acts on the lag, and why not.
pub const SCALING_ACTIVE: &str = "ScalingActive";
/// Reasons of `ScalingActive`.
pub const FOLLOWING_LAG: &str = "FollowingLag";
pub const AT_MAXIMUM: &str = "AtMaximum";
pub const LAG_UNKNOWN: &str = "LagUnknown";
pub const CONSUMER_RECREATED: &str = "ConsumerRecreated";

/// One pass's decision, made in the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Scaled {
    pub decision: Decision,
    /// When the durable consumer whose lag was read was created on NATS.
    pub consumer_created: Timestamp,
}

pub struct Autoscaling {
    uid: String,
    /// The fixed number of pods, when not autoscaled.
    fixed: i32,
    /// The policy, when autoscaled (and valid).
    policy: Option<Policy>,
    /// This pass's decision; `None` when the pipeline stopped before the lag was read.
    scaled: Option<Scaled>,
    interval: Duration,
}

pub fn observe(consumer: &AuditConsumer, seen: &Seen, ctx: &Context) -> Autoscaling {
    Autoscaling {
        uid: consumer.uid().unwrap_or_default(),
        fixed: consumer.spec.replicas.unwrap_or(DEFAULT_REPLICAS),
        policy: consumer
            .spec
            .autoscaling
            .as_ref()
            .and_then(|spec| Policy::new(spec).ok()),
        scaled: seen.scaling.clone(),
        interval: ctx.options.autoscaling_interval,
    }
}

impl Feature for Autoscaling {
    fn contribute(
        &self,
        previous: &AuditConsumerStatus,
        status: &mut AuditConsumerStatus,
        now: &Time,
    ) {
        let Some(policy) = &self.policy else {
            status.desired_replicas = Some(self.fixed);
            status.autoscaling = None;
            remove_condition(status, SCALING_ACTIVE);
            return;
        };
        let Some(Scaled {
            decision,
            consumer_created,
        }) = &self.scaled
        else {
            // The lag was not read: the workload was not touched, the last decision holds.
            status.desired_replicas = previous.desired_replicas;
            status.autoscaling = previous.autoscaling.clone();
            let held = previous
                .desired_replicas
                .map_or_else(String::new, |n| format!(": holding {n} pod(s)"));
            let value = Value::new(
                Status::False,
                LAG_UNKNOWN,
                format!(
                    "the durable consumer's lag could not be read (the Ready condition says why){held}"
                ),
            );
            set_condition(previous, status, SCALING_ACTIVE, value, now);
            return;
        };
        status.desired_replicas = Some(decision.replicas);
        let mut scaling = previous.autoscaling.clone().unwrap_or_default();
        if decision.hold.is_none() {
            scaling.lag = Some(decision.lag);
            scaling.consumer_created = Some(consumer_created.to_string());
        }
        if let Some(direction) = decision.direction() {
            scaling.last_scale_time = Some(now.0.to_string());
            scaling.last_scale_direction = Some(direction.reason().to_owned());
            scaling.last_scale_reason = Some(decision.explanation(policy));
        }
        status.autoscaling = Some(scaling);
        let value = match &decision.hold {
            Some(Hold::ConsumerRecreated {
                created,
                trusted,
                until,
            }) => Value::new(
                Status::False,
                CONSUMER_RECREATED,
                format!(
                    "the durable consumer was created again on NATS at {created} (the one scaled on was created at {trusted}): its lag counts the stream again from its deliver policy, not a backlog; holding {} pod(s) until {until} (scaleDown.stabilizationWindow)",
                    decision.replicas
                ),
            ),
            None if decision.at_maximum => Value::new(
                Status::True,
                AT_MAXIMUM,
                format!(
                    "the lag calls for more than maxReplicas ({}) pods at {} per pod; raise maxReplicas or targetLagPerReplica to drain faster",
                    policy.max, policy.target_lag
                ),
            ),
            None => Value::new(
                Status::True,
                FOLLOWING_LAG,
                format!(
                    "the number of pods follows the durable consumer's lag: {} per pod, between {} and {} pod(s)",
                    policy.target_lag, policy.min, policy.max
                ),
            ),
        };
        set_condition(previous, status, SCALING_ACTIVE, value, now);
    }

    fn notices(&self, previous: &AuditConsumerStatus, status: &AuditConsumerStatus) -> Vec<Notice> {
        let mut notices = Vec::new();
        if let (Some(policy), Some(scaled)) = (&self.policy, &self.scaled)
            && let Some(direction) = scaled.decision.direction()
            && previous.desired_replicas != status.desired_replicas
        {
            notices.push(Notice::normal(
                direction.reason(),
                scaled.decision.explanation(policy),
            ));
        }
        if let Some(held) = turned_false(previous, status, SCALING_ACTIVE)
            && held.reason == CONSUMER_RECREATED
        {
            notices.push(Notice::warning(CONSUMER_RECREATED, held.message));
        }
        notices
    }

    fn requeue(&self) -> Option<Duration> {
        self.policy.is_some().then_some(self.interval)
    }

    fn record(&self, metrics: &Metrics, consumer: &AuditConsumer, status: &AuditConsumerStatus) {
        let namespace = consumer.namespace().unwrap_or_default();
        let name = consumer.name_any();
        let lag = status
            .pending
            .zip(status.ack_pending)
            .map(|(pending, ack_pending)| pending + ack_pending);
        metrics.set_scaling(&namespace, &name, status.desired_replicas, lag);
        if let Some(direction) = self.scaled.as_ref().and_then(|s| s.decision.direction()) {
            metrics.record_scaled(
                &namespace,
                &name,
                direction == crate::consumer::autoscale::Direction::Up,
            );
        }
    }

    fn written(&self, ctx: &Context, _status: &AuditConsumerStatus) {
        if self.policy.is_none() {
            ctx.state.scaling.forget(&self.uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{consumer::autoscale::History, crd::consumer::AutoscalingStatus};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + second).unwrap()
    }

    fn policy() -> Policy {
        Policy::new(
            &serde_yaml::from_str("{minReplicas: 0, maxReplicas: 4, targetLagPerReplica: 100}")
                .unwrap(),
        )
        .unwrap()
    }

    fn autoscaling(scaled: Option<Scaled>) -> Autoscaling {
        Autoscaling {
            uid: "u".into(),
            fixed: 1,
            policy: Some(policy()),
            scaled,
            interval: Duration::from_secs(5),
        }
    }

    fn decided(current: i32, lag: u64, hold: Option<Hold>) -> Scaled {
        let mut history = History::new(at(-3600));
        Scaled {
            decision: crate::consumer::autoscale::decide(
                &policy(),
                current,
                lag,
                hold,
                &mut history,
                None,
                at(0),
            ),
            consumer_created: at(-100),
        }
    }

    #[test]
    fn a_change_is_in_the_status_an_event_and_the_condition() {
        let previous = AuditConsumerStatus {
            desired_replicas: Some(1),
            ..AuditConsumerStatus::default()
        };
        let mut status = previous.clone();
        let feature = autoscaling(Some(decided(1, 350, None)));
        feature.contribute(&previous, &mut status, &Time(at(0)));
        assert_eq!(status.desired_replicas, Some(4));
        let scaling = status.autoscaling.clone().unwrap();
        assert_eq!(scaling.lag, Some(350));
        assert_eq!(scaling.last_scale_direction.as_deref(), Some("ScaledUp"));
        assert_eq!(scaling.consumer_created, Some(at(-100).to_string()));
        let condition = status.conditions.last().unwrap();
        assert_eq!(
            (condition.type_.as_str(), condition.reason.as_str()),
            (SCALING_ACTIVE, FOLLOWING_LAG)
        );
        let notices = feature.notices(&previous, &status);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].reason, "ScaledUp");
        assert!(notices[0].note.contains("lag 350"), "{}", notices[0].note);
        assert_eq!(feature.requeue(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn an_unread_lag_holds_everything_and_says_so() {
        let previous = AuditConsumerStatus {
            desired_replicas: Some(3),
            autoscaling: Some(AutoscalingStatus {
                lag: Some(300),
                ..AutoscalingStatus::default()
            }),
            ..AuditConsumerStatus::default()
        };
        let mut status = AuditConsumerStatus::default();
        let feature = autoscaling(None);
        feature.contribute(&previous, &mut status, &Time(at(0)));
        assert_eq!(status.desired_replicas, Some(3));
        assert_eq!(status.autoscaling, previous.autoscaling);
        let condition = status.conditions.last().unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", LAG_UNKNOWN)
        );
        assert!(condition.message.contains("holding 3 pod(s)"));
        assert!(
            feature.notices(&previous, &status).is_empty(),
            "the failure has its own Event"
        );
    }

    #[test]
    fn a_recreated_consumer_is_held_with_a_warning() {
        let hold = Hold::ConsumerRecreated {
            created: at(-10),
            trusted: at(-1000),
            until: at(290),
        };
        let previous = AuditConsumerStatus {
            desired_replicas: Some(1),
            ..AuditConsumerStatus::default()
        };
        let mut status = previous.clone();
        let feature = autoscaling(Some(decided(1, 1_000_000, Some(hold))));
        feature.contribute(&previous, &mut status, &Time(at(0)));
        assert_eq!(status.desired_replicas, Some(1));
        assert_eq!(
            status.autoscaling.as_ref().unwrap().consumer_created,
            None,
            "not trusted yet"
        );
        let notices = feature.notices(&previous, &status);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].reason, CONSUMER_RECREATED);
    }

    #[test]
    fn a_fixed_consumer_reports_its_replicas_only() {
        let mut status = AuditConsumerStatus::default();
        let feature = Autoscaling {
            policy: None,
            fixed: 2,
            ..autoscaling(None)
        };
        feature.contribute(&AuditConsumerStatus::default(), &mut status, &Time(at(0)));
        assert_eq!(
            (status.desired_replicas, status.autoscaling),
            (Some(2), None)
        );
        assert!(status.conditions.is_empty());
        assert_eq!(feature.requeue(), None);
    }
}
