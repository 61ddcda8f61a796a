//! Pipeline step 5 (pure): the status an AuditConsumer should have after a reconciliation:
//! kstatus conditions, one detail condition per stage (stream, consumer, workload), replicas
//! for the scale subresource, and the durable consumer's live state. The optional features
//! (`features`) add theirs to it. The caller writes it only when it differs from the current
//! status, and unchanged conditions keep their timestamps.

use async_nats::jetstream::consumer::Info;
use k8s_openapi::{
    api::apps::v1::{Deployment, DeploymentStatus},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::ResourceExt;

use super::{build::selector_string, pods::PodTrouble};
use crate::{
    conditions::{self, Outcome, Phase, Status, Value},
    crd::consumer::{AuditConsumer, AuditConsumerStatus},
    error::Error,
};

pub const STREAM_READY: &str = "StreamReady";
pub const CONSUMER_READY: &str = "ConsumerReady";
pub const WORKLOAD_AVAILABLE: &str = "WorkloadAvailable";
/// Reason of `Ready` when every stage is.
pub const READY_REASON: &str = "Ready";
/// Reason of a stage's condition while an earlier stage is not ready.
const WAITING: &str = "Waiting";
/// The Deployment controller's reason for a rollout that stopped progressing; the consumer
/// then needs a user's attention (`Stalled`).
const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

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
    /// Why the pods are not ready, when the workload is not available and a pod says why.
    pub pods: Option<&'a PodTrouble>,
}

/// The status before the optional features add theirs (see `features`): kstatus conditions,
/// the stages' conditions, and the live state observed.
pub fn desired_status(
    consumer: &AuditConsumer,
    report: &Report<'_>,
    now: &Time,
) -> AuditConsumerStatus {
    let previous = consumer.status.clone().unwrap_or_default();
    let generation = consumer.metadata.generation;
    let [stream, durable, workload] = stage_values(consumer, report);
    let outcome = outcome(consumer, report, &workload);
    const DETAILS: [&str; 3] = [STREAM_READY, CONSUMER_READY, WORKLOAD_AVAILABLE];
    // The kstatus conditions first, then the details in stage order, then the features'
    // (which move theirs to the end): a stable list, so an unchanged outcome compares equal.
    let others: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| !DETAILS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    let mut conditions = conditions::kstatus(&others, generation, &outcome, now);
    for (type_, value) in DETAILS.into_iter().zip([stream, durable, workload]) {
        let condition = conditions::condition(&previous.conditions, type_, value, generation, now);
        conditions.push(condition);
    }
    let status = AuditConsumerStatus {
        observed_generation: generation,
        conditions,
        stream_name: report.stream_name.clone().or(previous.stream_name.clone()),
        consumer_name: Some(consumer.durable_name()),
        selector: Some(selector_string(&consumer.name_any())),
        ..previous
    };
    with_live_state(status, report)
}

/// The stages' conditions: False where the reconciliation failed, Unknown after that, and
/// ready before.
fn stage_values(consumer: &AuditConsumer, report: &Report<'_>) -> [Value; 3] {
    let detail = |stage: Stage, ready: Value| match report.failure {
        Some(failure) if failure.stage == stage => Value::failed(&failure.error),
        Some(failure) if failure.stage < stage => {
            Value::new(Status::Unknown, WAITING, "an earlier stage is not ready")
        }
        _ => ready,
    };
    let stream_ref = &consumer.spec.stream_ref.name;
    let stream = detail(
        Stage::Stream,
        Value::new(
            Status::True,
            STREAM_READY,
            format!("AuditStream {stream_ref} is Ready"),
        ),
    );
    let durable = detail(
        Stage::Consumer,
        Value::new(
            Status::True,
            CONSUMER_READY,
            format!(
                "durable consumer {} exists on NATS as declared",
                consumer.durable_name()
            ),
        ),
    );
    let workload = match (report.failure, report.workload) {
        (None, Some(deployment)) => workload_condition(consumer, deployment, report.pods),
        _ => detail(
            Stage::Workload,
            Value::new(Status::True, WORKLOAD_AVAILABLE, ""),
        ),
    };
    [stream, durable, workload]
}

/// The kstatus outcome: the failure, else Ready once the workload is available, else the
/// workload's reason (Stalled when its rollout stopped progressing).
fn outcome(consumer: &AuditConsumer, report: &Report<'_>, workload: &Value) -> Outcome {
    match report.failure {
        Some(failure) => Outcome::failed(&failure.error),
        None if workload.status == Status::True => Outcome {
            phase: Phase::Ready,
            reason: READY_REASON.into(),
            message: format!(
                "consuming stream {} as {} with {} ready pod(s)",
                report
                    .stream_name
                    .as_deref()
                    .unwrap_or(&consumer.spec.stream_ref.name),
                consumer.durable_name(),
                report.workload.map_or(0, desired_pods)
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
    }
}

/// The replicas for the scale subresource and the durable consumer's state, where observed;
/// otherwise the last observed stay.
fn with_live_state(mut status: AuditConsumerStatus, report: &Report<'_>) -> AuditConsumerStatus {
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
        status.last_ack_time = info
            .ack_floor
            .last_active
            .and_then(|time| Timestamp::from_nanosecond(time.unix_timestamp_nanos()).ok())
            .map(|time| time.to_string());
    }
    status
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
    let desired = desired_pods(deployment);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)
    });
    if workload_available(deployment) {
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

/// The pods the Deployment was applied with: `spec.replicas`, or the autoscaler's decision.
fn desired_pods(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
}

/// Whether the Deployment has every desired pod updated and ready, no old pod left, and a
/// status that describes its current generation. One the Deployment controller has not
/// observed yet (a new Deployment) has started no pod: asking for none, it has nothing to wait
/// for, and the consumer is Ready without a status write that says it waits for nothing.
pub fn workload_available(deployment: &Deployment) -> bool {
    let desired = desired_pods(deployment);
    let status = deployment.status.as_ref();
    let Some(status) = status.filter(|s| s.observed_generation.is_some()) else {
        return desired == 0;
    };
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
            pods: None,
        };
        let status = desired_status(&consumer(MINIMAL), &report, &at(1));
        assert_eq!(find(&status, READY).reason, "WorkloadProgressing");
    }

    #[test]
    fn a_new_deployment_is_available_only_when_it_asks_for_no_pod() {
        let new = |replicas: i32| Deployment {
            metadata: kube::api::ObjectMeta {
                generation: Some(1),
                ..kube::api::ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            // What the API server answers an apply that created it with.
            status: Some(DeploymentStatus::default()),
        };
        assert!(workload_available(&new(0)));
        assert!(!workload_available(&new(1)));
        let mut unanswered = new(0);
        unanswered.status = None;
        assert!(workload_available(&unanswered));
        // Observed and scaled to zero while an old pod still stops: not yet.
        let mut draining = new(0);
        draining.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            ..DeploymentStatus::default()
        });
        assert!(!workload_available(&draining));
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
            pods: None,
        };
        let status = desired_status(&consumer(MINIMAL), &report, &at(1));
        assert_eq!(find(&status, READY).reason, "WorkloadProgressing");
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
}
