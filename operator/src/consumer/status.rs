//! Pipeline step 5 (pure): the status an AuditConsumer should have after a reconciliation:
//! kstatus conditions, one detail condition per stage (stream, consumer, workload) and, with a
//! `maxDeliver`, whether the operator hears NATS's max-deliveries advisories; replicas for the
//! scale subresource, and the durable consumer's live state. The caller writes it only
//! when it differs from the current status, and unchanged conditions keep their timestamps.

use std::time::Duration;

use async_nats::jetstream::consumer::Info;
use k8s_openapi::{
    api::apps::v1::{Deployment, DeploymentStatus},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::ResourceExt;

use super::{
    build::selector_string,
    integrity::Checkpoints,
    max_deliveries::{Listening, counting_condition},
    pods::PodTrouble,
};
use crate::{
    conditions::{self, Outcome, Phase, Status, Value},
    crd::consumer::{AuditConsumer, AuditConsumerStatus},
    error::Error,
};

pub const STREAM_READY: &str = "StreamReady";
pub const CONSUMER_READY: &str = "ConsumerReady";
pub const WORKLOAD_AVAILABLE: &str = "WorkloadAvailable";
/// Whether events that reach `maxDeliver` are counted. Not part of `Ready`: without it the
/// consumer and its pods work all the same; only the operator's count of the events NATS gave
/// up on is blind, which this condition and a Warning Event say, with what to grant.
pub const MAX_DELIVERIES_COUNTED: &str = "MaxDeliveriesCounted";
/// With integrity on, whether the pods' checkpoints keep up with the events they write. Not
/// part of `Ready` either: events keep flowing and stay verifiable up to the last witnessed
/// checkpoint; a Warning Event says what to check.
pub const CHECKPOINTS_WITNESSED: &str = "CheckpointsWitnessed";
pub const CHECKPOINTS_STALLED: &str = "CheckpointsStalled";
pub const CHECKPOINTS_REJECTED: &str = "CheckpointsRejected";
/// Beyond the checkpoint interval, what a checkpoint may take to be published and stored.
const CHECKPOINT_GRACE: Duration = Duration::from_secs(15);
/// How long after the checkpoint covering it a line may still be acknowledged (the pod acks
/// after handing the head over, and the two race).
const ACK_AFTER_CHECKPOINT: Duration = Duration::from_secs(5);
/// Reason of `Ready` when every stage is.
pub const READY_REASON: &str = "Ready";
/// Reason of a stage's condition while an earlier stage is not ready.
const WAITING: &str = "Waiting";
/// The Deployment controller's reason for a rollout that stopped progressing; the consumer
/// then needs a user's attention (`Stalled`).
const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// What a reconciliation knows of the max-deliveries advisories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Advisories {
    /// No `maxDeliver`: nothing to listen for, and no condition.
    NotWanted,
    /// Not known this time (not subscribed yet): the condition stays as it was.
    #[default]
    Unknown,
    /// What the subscription's server said.
    Known(Listening),
}

/// What a reconciliation knows of the pods' checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Witnessing<'a> {
    /// Integrity off: no integrity status, no condition.
    NotWanted,
    /// Not observed this time (the pipeline stopped earlier): both stay as they were.
    #[default]
    Unknown,
    Observed(&'a Checkpoints),
}

/// The pipeline stage a reconciliation reached or failed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Stream,
    Consumer,
    Workload,
}

/// Where a reconciliation stopped, and why.
#[derive(Debug)]
pub struct Failure {
    pub stage: Stage,
    /// The stream's name on NATS, when the AuditStream was read before the failure.
    pub stream_name: Option<String>,
    pub error: Error,
}

/// What one reconciliation observed.
#[derive(Debug, Default)]
pub struct Report<'a> {
    /// The stream's name on NATS, once the AuditStream was read.
    pub stream_name: Option<String>,
    /// The durable consumer as NATS reported it, once applied.
    pub consumer: Option<&'a Info>,
    /// The Deployment as applied (its generation tells whether its status is current).
    pub workload: Option<&'a Deployment>,
    /// Where and why the reconciliation stopped, if it did.
    pub failure: Option<&'a Failure>,
    pub advisories: Advisories,
    pub witnessing: Witnessing<'a>,
    /// Why the pods are not ready, when the workload is not available and a pod says why.
    pub pods: Option<&'a PodTrouble>,
}

pub fn desired_status(
    consumer: &AuditConsumer,
    report: &Report<'_>,
    now: &Time,
) -> AuditConsumerStatus {
    let previous = consumer.status.clone().unwrap_or_default();
    let generation = consumer.metadata.generation;
    let desired_replicas = consumer.spec.replicas;
    let stream_ref = &consumer.spec.stream_ref.name;
    let durable = consumer.durable_name();

    // A stage's condition: False where the reconciliation failed, Unknown after that, and
    // `ready` before.
    let detail = |stage: Stage, ready: Value| match report.failure {
        Some(failure) if failure.stage == stage => Value::failed(&failure.error),
        Some(failure) if failure.stage < stage => {
            Value::new(Status::Unknown, WAITING, "an earlier stage is not ready")
        }
        _ => ready,
    };
    let stream = detail(
        Stage::Stream,
        Value::new(
            Status::True,
            STREAM_READY,
            format!("AuditStream {stream_ref} is Ready"),
        ),
    );
    let durable_detail = detail(
        Stage::Consumer,
        Value::new(
            Status::True,
            CONSUMER_READY,
            format!("durable consumer {durable} exists on NATS as declared"),
        ),
    );
    let workload = match (report.failure, report.workload) {
        (None, Some(deployment)) => workload_condition(consumer, deployment, report.pods),
        _ => detail(
            Stage::Workload,
            Value::new(Status::True, WORKLOAD_AVAILABLE, ""),
        ),
    };

    let outcome = match report.failure {
        Some(failure) => Outcome::failed(&failure.error),
        None if workload.status == Status::True => Outcome {
            phase: Phase::Ready,
            reason: READY_REASON.into(),
            message: format!(
                "consuming stream {} as {durable} with {desired_replicas} ready pod(s)",
                report.stream_name.as_deref().unwrap_or(stream_ref)
            ),
        },
        None => Outcome {
            phase: if workload.reason == PROGRESS_DEADLINE_EXCEEDED {
                Phase::Stalled
            } else {
                Phase::Reconciling
            },
            reason: workload.reason.clone(),
            message: workload.message.clone(),
        },
    };

    const DETAILS: [&str; 3] = [STREAM_READY, CONSUMER_READY, WORKLOAD_AVAILABLE];
    // The kstatus conditions first, then the details in stage order: a stable list, so an
    // unchanged outcome compares equal.
    let others: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| {
            !DETAILS.contains(&c.type_.as_str())
                && c.type_ != MAX_DELIVERIES_COUNTED
                && c.type_ != CHECKPOINTS_WITNESSED
        })
        .cloned()
        .collect();
    let mut conditions = conditions::kstatus(&others, generation, &outcome, now);
    for (type_, value) in DETAILS.into_iter().zip([stream, durable_detail, workload]) {
        conditions.push(conditions::condition(
            &previous.conditions,
            type_,
            value,
            generation,
            now,
        ));
    }
    match &report.advisories {
        Advisories::NotWanted => {}
        Advisories::Unknown => conditions.extend(
            previous
                .conditions
                .iter()
                .find(|c| c.type_ == MAX_DELIVERIES_COUNTED)
                .cloned(),
        ),
        Advisories::Known(listening) => conditions.push(conditions::condition(
            &previous.conditions,
            MAX_DELIVERIES_COUNTED,
            counting_condition(listening),
            generation,
            now,
        )),
    }

    let last_ack_time = report
        .consumer
        .and_then(|info| info.ack_floor.last_active)
        .and_then(|time| Timestamp::from_nanosecond(time.unix_timestamp_nanos()).ok());
    let integrity = match &report.witnessing {
        Witnessing::NotWanted => None,
        Witnessing::Unknown => {
            conditions.extend(
                previous
                    .conditions
                    .iter()
                    .find(|c| c.type_ == CHECKPOINTS_WITNESSED)
                    .cloned(),
            );
            previous.integrity.clone()
        }
        Witnessing::Observed(seen) => {
            // The acknowledgement seen last time as well as now's: under steady traffic the
            // newest is always just now, too recent to tell whether its checkpoint is late.
            let acked: Vec<Timestamp> = previous
                .last_ack_time
                .as_deref()
                .and_then(|time| time.parse().ok())
                .into_iter()
                .chain(last_ack_time)
                .collect();
            // Acknowledgements from before the last rollout finished may be old pods', which
            // published no checkpoints (when integrity was just turned on).
            let rolled_out = report.workload.and_then(rollout_finished);
            let acked: Vec<Timestamp> = acked
                .into_iter()
                .filter(|ack| rolled_out.is_some_and(|done| *ack > done))
                .collect();
            conditions.push(conditions::condition(
                &previous.conditions,
                CHECKPOINTS_WITNESSED,
                checkpoint_condition(seen, &acked, now.0),
                generation,
                now,
            ));
            Some(seen.status.clone())
        }
    };

    let mut status = AuditConsumerStatus {
        observed_generation: generation,
        integrity,
        conditions,
        stream_name: report.stream_name.clone().or(previous.stream_name.clone()),
        consumer_name: Some(durable),
        selector: Some(selector_string(&consumer.name_any())),
        ..previous
    };
    if let Some(workload) = report.workload.and_then(|d| d.status.as_ref()) {
        status.replicas = Some(workload.replicas.unwrap_or(0));
        status.ready_replicas = Some(workload.ready_replicas.unwrap_or(0));
    }
    if let Some(info) = report.consumer {
        status.pending = Some(info.num_pending);
        status.ack_pending = Some(info.num_ack_pending as u64);
        status.redelivered = Some(info.num_redelivered as u64);
        status.ack_floor = Some(info.ack_floor.stream_sequence);
        status.delivered = Some(info.delivered.stream_sequence);
        status.last_ack_time = last_ack_time.map(|time| time.to_string());
    }
    status
}

/// When the Deployment's current rollout finished (its new ReplicaSet available), if it has.
fn rollout_finished(deployment: &Deployment) -> Option<Timestamp> {
    let status = deployment.status.as_ref()?;
    if deployment.metadata.generation.is_none()
        || status.observed_generation < deployment.metadata.generation
    {
        return None;
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_ == "Progressing"
                && c.status == "True"
                && c.reason.as_deref() == Some("NewReplicaSetAvailable")
        })
        .and_then(|c| c.last_update_time.as_ref())
        .map(|time| time.0)
}

/// `CheckpointsWitnessed` from what the witness stream showed (pure). A checkpoint is late
/// when an event was acknowledged (so its line written) after the newest checkpoint, and the
/// checkpoint interval and a grace period have passed since: each pod publishes a checkpoint
/// at the latest one interval after it wrote a line.
pub fn checkpoint_condition(seen: &Checkpoints, acked: &[Timestamp], now: Timestamp) -> Value {
    let status = &seen.status;
    if let Some(reason) = &seen.unread {
        return Value::new(
            Status::Unknown,
            "CheckpointsUnread",
            format!(
                "cannot read witness stream {}: {reason}",
                status.witness_stream
            ),
        );
    }
    if status.rejected_checkpoints > 0 {
        return Value::new(
            Status::False,
            CHECKPOINTS_REJECTED,
            format!(
                "{} message(s) on {} since {} are not checkpoints signed by {}: forged, or signed by a key since rotated; find out who can publish there, and check the logs with audit-consumer verify",
                status.rejected_checkpoints, status.subject, seen.since, status.public_key
            ),
        );
    }
    let due = SignedDuration::try_from(seen.interval + CHECKPOINT_GRACE).unwrap_or_default();
    let covered_until = seen
        .newest
        .unwrap_or(seen.since)
        .max(seen.since)
        .checked_add(SignedDuration::try_from(ACK_AFTER_CHECKPOINT).unwrap_or_default())
        .unwrap_or(now);
    let overdue = acked.iter().find(|&&ack| {
        ack > covered_until && ack.checked_add(due).is_ok_and(|deadline| now >= deadline)
    });
    if let Some(ack) = overdue {
        let newest = seen
            .newest
            .map_or_else(|| format!("none since {}", seen.since), |t| t.to_string());
        return Value::new(
            Status::False,
            CHECKPOINTS_STALLED,
            format!(
                "an event was acknowledged at {ack}, but the newest checkpoint on {} is {newest}: the pods cannot publish to witness stream {}; check their logs (audit_consumer_integrity_checkpoints_total{{outcome=\"failed\"}}) and that their NATS user may publish to {}",
                status.subject, status.witness_stream, status.subject
            ),
        );
    }
    Value::new(
        Status::True,
        "Witnessed",
        format!(
            "every line acknowledged is covered by a checkpoint in {} on {}, or will be within the checkpoint interval",
            status.witness_stream, status.subject
        ),
    )
}

/// `WorkloadAvailable` from the Deployment's status: every desired pod updated and ready, no
/// old pod left, and the status describing the Deployment's current generation. Right after a
/// spec change the Deployment's status still describes the previous template, which must not
/// read as a finished rollout.
///
/// While it is not available, `pods` says why when a pod does: the condition's reason becomes
/// the pods' trouble (unschedulable, containers failing) and its message names the pod.
fn workload_condition(
    consumer: &AuditConsumer,
    deployment: &Deployment,
    pods: Option<&PodTrouble>,
) -> Value {
    let default_status = DeploymentStatus::default();
    let status = deployment.status.as_ref().unwrap_or(&default_status);
    let desired = consumer.spec.replicas;
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)
    });
    if workload_available(consumer, deployment) {
        Value::new(
            Status::True,
            WORKLOAD_AVAILABLE,
            format!("{ready} of {desired} pod(s) ready"),
        )
    } else if deadline_exceeded {
        let why = pods.map_or_else(String::new, |trouble| format!("; {}", trouble.message));
        Value::new(
            Status::False,
            PROGRESS_DEADLINE_EXCEEDED,
            format!(
                "{ready} of {desired} pod(s) ready and the rollout stopped progressing{why}: see the pods' events and logs (kubectl describe pods -l {})",
                selector_string(&consumer.name_any())
            ),
        )
    } else if let Some(trouble) = pods {
        Value::new(
            Status::False,
            trouble.reason,
            format!(
                "{ready} of {desired} pod(s) ready, {updated} up to date; {}",
                trouble.message
            ),
        )
    } else {
        Value::new(
            Status::False,
            "WorkloadProgressing",
            format!("{ready} of {desired} pod(s) ready, {updated} up to date"),
        )
    }
}

/// Whether the Deployment has every desired pod updated and ready, no old pod left, and a
/// status that describes its current generation.
pub fn workload_available(consumer: &AuditConsumer, deployment: &Deployment) -> bool {
    let Some(status) = deployment.status.as_ref() else {
        return false;
    };
    let desired = consumer.spec.replicas;
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let current = deployment.metadata.generation.is_some()
        && status.observed_generation >= deployment.metadata.generation;
    current && ready >= desired && updated >= desired && total <= updated
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::{
        conditions::{READY, STALLED},
        consumer::validate::tests::{MINIMAL, consumer},
    };

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn info(pending: u64, ack_pending: usize) -> Info {
        serde_json::from_value(serde_json::json!({
            "stream_name": "orders_audit", "name": "orders_reader",
            "created": "2026-11-22T00:00:00Z",
            "config": {"durable_name": "orders_reader", "deliver_policy": "all", "ack_policy": "explicit", "replay_policy": "instant"},
            "delivered": {"consumer_seq": 10, "stream_seq": 10},
            "ack_floor": {"consumer_seq": 8, "stream_seq": 8},
            "num_ack_pending": ack_pending, "num_redelivered": 1, "num_waiting": 1,
            "num_pending": pending,
        }))
        .unwrap()
    }

    fn deployment(ready: i32) -> Deployment {
        Deployment {
            metadata: kube::api::ObjectMeta {
                generation: Some(1),
                ..kube::api::ObjectMeta::default()
            },
            status: Some(DeploymentStatus {
                replicas: Some(1),
                ready_replicas: Some(ready),
                updated_replicas: Some(1),
                observed_generation: Some(1),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    #[test]
    fn a_rollout_the_deployment_controller_has_not_seen_yet_is_not_ready() {
        let info = info(0, 0);
        let mut workload = deployment(1);
        workload.metadata.generation = Some(2);
        let report = Report {
            stream_name: Some("orders_audit".into()),
            consumer: Some(&info),
            workload: Some(&workload),
            failure: None,
            advisories: Advisories::NotWanted,
            witnessing: Witnessing::NotWanted,
            pods: None,
        };
        let status = desired_status(&consumer(MINIMAL), &report, &at(1));
        assert_eq!(find(&status, READY).reason, "WorkloadProgressing");
    }

    #[test]
    fn old_pods_still_running_is_not_ready() {
        let info = info(0, 0);
        let mut workload = deployment(1);
        workload.status.as_mut().unwrap().replicas = Some(2);
        let report = Report {
            stream_name: Some("orders_audit".into()),
            consumer: Some(&info),
            workload: Some(&workload),
            failure: None,
            advisories: Advisories::NotWanted,
            witnessing: Witnessing::NotWanted,
            pods: None,
        };
        let status = desired_status(&consumer(MINIMAL), &report, &at(1));
        assert_eq!(find(&status, READY).reason, "WorkloadProgressing");
    }

    #[test]
    fn a_refused_advisory_subscription_shows_without_touching_ready() {
        let info = info(0, 0);
        let workload = deployment(1);
        let subject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.orders_audit.orders_reader";
        let report = |advisories| Report {
            stream_name: Some("orders_audit".into()),
            consumer: Some(&info),
            workload: Some(&workload),
            failure: None,
            advisories,
            witnessing: Witnessing::NotWanted,
            pods: None,
        };
        let refused = Advisories::Known(Listening::Refused {
            subject: subject.into(),
            message: format!("Permissions Violation for Subscription to \"{subject}\""),
        });
        let mut resource = consumer(MINIMAL);
        let status = desired_status(&resource, &report(refused.clone()), &at(1));
        assert_eq!(find(&status, READY).status, "True");
        let counted = find(&status, MAX_DELIVERIES_COUNTED);
        assert_eq!(
            (counted.status.as_str(), counted.reason.as_str()),
            ("False", "AdvisorySubscriptionDenied")
        );
        resource.status = Some(status);

        let unknown = desired_status(&resource, &report(Advisories::Unknown), &at(2));
        assert_eq!(Some(&unknown), resource.status.as_ref(), "kept as it was");
        let again = desired_status(&resource, &report(refused), &at(3));
        assert_eq!(
            Some(&again),
            resource.status.as_ref(),
            "no change, no write"
        );

        let granted = Advisories::Known(Listening::Subscribed {
            subject: subject.into(),
        });
        let status = desired_status(&resource, &report(granted), &at(4));
        let counted = find(&status, MAX_DELIVERIES_COUNTED);
        assert_eq!(counted.status, "True");
        assert_eq!(counted.last_transition_time, at(4));
        resource.status = Some(status);

        let removed = desired_status(&resource, &report(Advisories::NotWanted), &at(5));
        assert!(
            removed
                .conditions
                .iter()
                .all(|c| c.type_ != MAX_DELIVERIES_COUNTED),
            "maxDeliver was removed: {removed:?}"
        );
    }

    fn find<'a>(status: &'a AuditConsumerStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_when_every_stage_is() {
        let info = info(0, 2);
        let workload = deployment(1);
        let report = Report {
            stream_name: Some("orders_audit".into()),
            consumer: Some(&info),
            workload: Some(&workload),
            failure: None,
            advisories: Advisories::NotWanted,
            witnessing: Witnessing::NotWanted,
            pods: None,
        };
        let status = desired_status(&consumer(MINIMAL), &report, &at(1));
        assert_eq!(find(&status, READY).status, "True");
        assert_eq!(find(&status, WORKLOAD_AVAILABLE).status, "True");
        assert_eq!(status.pending, Some(0));
        assert_eq!(status.ack_pending, Some(2));
        assert_eq!(status.ack_floor, Some(8));
        assert_eq!((status.replicas, status.ready_replicas), (Some(1), Some(1)));
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/instance=orders.reader,app.kubernetes.io/name=audit-consumer")
        );
    }

    #[test]
    fn pods_not_ready_is_reconciling_not_stalled() {
        let info = info(5, 0);
        let workload = deployment(0);
        let report = Report {
            stream_name: Some("orders_audit".into()),
            consumer: Some(&info),
            workload: Some(&workload),
            failure: None,
            advisories: Advisories::NotWanted,
            witnessing: Witnessing::NotWanted,
            pods: None,
        };
        let status = desired_status(&consumer(MINIMAL), &report, &at(1));
        assert_eq!(find(&status, READY).status, "False");
        assert_eq!(find(&status, READY).reason, "WorkloadProgressing");
        assert_eq!(find(&status, "Reconciling").status, "True");
        assert_eq!(find(&status, CONSUMER_READY).status, "True");
    }

    #[test]
    fn a_pod_that_cannot_run_names_itself_and_why_while_the_rollout_lasts() {
        let info = info(5, 0);
        let workload = deployment(0);
        let trouble = PodTrouble {
            reason: crate::consumer::pods::PODS_UNSCHEDULABLE,
            message: "pod r-1 cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu."
                .into(),
        };
        let report = Report {
            stream_name: Some("orders_audit".into()),
            consumer: Some(&info),
            workload: Some(&workload),
            pods: Some(&trouble),
            ..Report::default()
        };
        let status = desired_status(&consumer(MINIMAL), &report, &at(1));
        let workload_condition = find(&status, WORKLOAD_AVAILABLE);
        assert_eq!(workload_condition.reason, "PodsUnschedulable");
        assert_eq!(
            workload_condition.message,
            "0 of 1 pod(s) ready, 1 up to date; pod r-1 cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu."
        );
        // Ready carries it too; a scheduler may still place the pod (a node added, another
        // pod gone), so it is Reconciling until the Deployment's own deadline says Stalled.
        assert_eq!(find(&status, READY).reason, "PodsUnschedulable");
        assert_eq!(find(&status, "Reconciling").status, "True");
        assert_eq!(find(&status, STALLED).status, "False");

        let mut stuck = deployment(0);
        stuck.status.as_mut().unwrap().conditions =
            Some(vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..Default::default()
            }]);
        let report = Report {
            workload: Some(&stuck),
            ..report
        };
        let status = desired_status(&consumer(MINIMAL), &report, &at(2));
        assert_eq!(find(&status, STALLED).status, "True");
        assert!(
            find(&status, WORKLOAD_AVAILABLE)
                .message
                .contains("stopped progressing; pod r-1 cannot be scheduled"),
        );
    }

    #[test]
    fn missing_stream_stalls_and_later_stages_wait() {
        let failure = Failure {
            stage: Stage::Stream,
            stream_name: None,
            error: Error::StreamNotFound {
                name: "orders".into(),
            },
        };
        let report = Report {
            failure: Some(&failure),
            ..Report::default()
        };
        let status = desired_status(&consumer(MINIMAL), &report, &at(1));
        assert_eq!(find(&status, STALLED).status, "True");
        assert_eq!(find(&status, STREAM_READY).reason, "StreamNotFound");
        assert!(find(&status, READY).message.contains("spec.streamRef"));
        assert_eq!(find(&status, CONSUMER_READY).status, "Unknown");
        assert_eq!(find(&status, WORKLOAD_AVAILABLE).status, "Unknown");
    }

    #[test]
    fn unchanged_state_gives_an_identical_status_later() {
        let info = info(3, 1);
        let workload = deployment(1);
        let report = Report {
            stream_name: Some("orders_audit".into()),
            consumer: Some(&info),
            workload: Some(&workload),
            failure: None,
            advisories: Advisories::NotWanted,
            witnessing: Witnessing::NotWanted,
            pods: None,
        };
        let mut resource = consumer(MINIMAL);
        resource.status = Some(desired_status(&resource, &report, &at(1)));
        let again = desired_status(&resource, &report, &at(900));
        assert_eq!(Some(again), resource.status);
    }

    #[test]
    fn failure_keeps_the_last_observed_live_state() {
        let info = info(3, 1);
        let workload = deployment(1);
        let ok = Report {
            stream_name: Some("orders_audit".into()),
            consumer: Some(&info),
            workload: Some(&workload),
            failure: None,
            advisories: Advisories::NotWanted,
            witnessing: Witnessing::NotWanted,
            pods: None,
        };
        let mut resource = consumer(MINIMAL);
        resource.status = Some(desired_status(&resource, &ok, &at(1)));
        let failure = Failure {
            stage: Stage::Consumer,
            stream_name: Some("orders_audit".into()),
            error: Error::JetStreamRequest("timed out".into()),
        };
        let failed = Report {
            stream_name: Some("orders_audit".into()),
            failure: Some(&failure),
            ..Report::default()
        };
        let status = desired_status(&resource, &failed, &at(2));
        assert_eq!(status.pending, Some(3));
        assert_eq!(find(&status, "Reconciling").status, "True");
        assert_eq!(find(&status, STREAM_READY).status, "True");
        assert_eq!(find(&status, STREAM_READY).last_transition_time, at(1));
    }

    fn seen(newest: Option<i64>, rejected: u64) -> Checkpoints {
        Checkpoints {
            status: crate::crd::consumer::IntegrityStatus {
                witness_stream: "AUDIT_INTEGRITY".into(),
                subject: "audit-integrity.orders_audit.orders_reader".into(),
                public_key: "APUBLIC".into(),
                checkpoints: Vec::new(),
                rejected_checkpoints: rejected,
            },
            interval: Duration::from_secs(10),
            newest: newest.map(|s| Timestamp::from_second(s).unwrap()),
            since: Timestamp::from_second(1_000).unwrap(),
            unread: None,
        }
    }

    fn second(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn checkpoints_are_late_only_when_a_line_acked_after_the_newest_went_unwitnessed_too_long() {
        let reason = |seen: &Checkpoints, acked: &[i64], now: i64| {
            let acked: Vec<Timestamp> = acked.iter().map(|s| second(*s)).collect();
            checkpoint_condition(seen, &acked, second(now)).reason
        };
        // Steady traffic, a checkpoint every 10 s: the newest ack is always just now.
        assert_eq!(
            reason(&seen(Some(1_095), 0), &[1_040, 1_100], 1_100),
            "Witnessed"
        );
        // Acked after the newest checkpoint, but within interval + grace (25 s).
        assert_eq!(reason(&seen(Some(1_050), 0), &[1_060], 1_080), "Witnessed");
        // ... and beyond it: stalled, by the ack seen at the previous reconciliation.
        assert_eq!(
            reason(&seen(Some(1_050), 0), &[1_060, 1_100], 1_100),
            CHECKPOINTS_STALLED
        );
        // Traffic stopped: the last line was acked just after its checkpoint; quiet since.
        assert_eq!(reason(&seen(Some(1_050), 0), &[1_052], 1_500), "Witnessed");
        // No checkpoint in the lookback at all, and lines acked in it long ago.
        assert_eq!(reason(&seen(None, 0), &[1_030], 1_100), CHECKPOINTS_STALLED);
        // No checkpoint, and no ack in the lookback either: an idle consumer.
        assert_eq!(reason(&seen(None, 0), &[900], 1_100), "Witnessed");
        assert_eq!(reason(&seen(None, 0), &[], 1_100), "Witnessed");
        // A forged checkpoint outweighs all that; an unreadable stream says so.
        assert_eq!(reason(&seen(Some(1_095), 0), &[], 1_100), "Witnessed");
        assert_eq!(
            reason(&seen(Some(1_095), 1), &[], 1_100),
            CHECKPOINTS_REJECTED
        );
        let unread = Checkpoints {
            unread: Some("stream not found".into()),
            ..seen(None, 0)
        };
        let value = checkpoint_condition(&unread, &[], second(1_100));
        assert_eq!(value.status, Status::Unknown);
        assert!(value.message.contains("stream not found"));
    }

    #[test]
    fn acks_from_before_the_rollout_with_integrity_are_not_judged() {
        let info = info(0, 0);
        let mut workload = deployment(1);
        let integrity =
            "integrity: {enabled: true, signingKeySecretRef: {name: signer, key: seed}}\n";
        let mut resource = consumer(&format!("{MINIMAL}{integrity}"));
        let checkpoints = Checkpoints {
            since: second(900),
            ..seen(None, 0)
        };
        let report = |workload| Report {
            stream_name: Some("orders_audit".into()),
            consumer: Some(&info),
            workload: Some(workload),
            failure: None,
            advisories: Advisories::NotWanted,
            witnessing: Witnessing::Observed(&checkpoints),
            pods: None,
        };
        // An old pod acked at 1,000 (previous status), before any checkpoint could exist.
        resource.status = Some(AuditConsumerStatus {
            last_ack_time: Some(second(1_000).to_string()),
            ..AuditConsumerStatus::default()
        });
        let rolled_out_at = |s: i64| {
            vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: Some("NewReplicaSetAvailable".into()),
                last_update_time: Some(at(s)),
                ..Default::default()
            }]
        };
        let mut early = workload.clone();
        workload.status.as_mut().unwrap().conditions = Some(rolled_out_at(1_010));
        early.status.as_mut().unwrap().conditions = Some(rolled_out_at(990));
        let status = desired_status(&resource, &report(&workload), &at(1_100));
        assert_eq!(find(&status, CHECKPOINTS_WITNESSED).reason, "Witnessed");
        assert_eq!(find(&status, READY).status, "True", "not part of Ready");
        assert_eq!(status.integrity.as_ref().unwrap().public_key, "APUBLIC");
        // Rolled out before that ack: it was a pod with integrity, and nothing witnessed it.
        let status = desired_status(&resource, &report(&early), &at(1_100));
        let condition = find(&status, CHECKPOINTS_WITNESSED);
        assert_eq!(condition.reason, CHECKPOINTS_STALLED);
        assert!(
            condition
                .message
                .contains("audit-integrity.orders_audit.orders_reader")
        );
        assert_eq!(find(&status, READY).status, "True", "not part of Ready");
    }
}
