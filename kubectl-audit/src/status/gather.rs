//! Reads what the status shows (I/O), and turns objects into the report (pure).

use std::time::Duration;

use audit_operator::consumer::build::{deployment::CONTAINER_NAME, selector_string};
use audit_operator::crd::consumer::PodCheckpoint;
use audit_operator::crd::{AuditConsumer, AuditStream};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use super::model::{
    ArchiveReport, ConsumerReport, PodReport, Ready, Replicas, StatusReport, StreamLimits,
    StreamReport, Termination, WarningEvent,
};
use crate::error::{Error, Result};

/// What to show: one namespace or all, and optionally one name.
pub struct Selection<'a> {
    /// `None`: every namespace.
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub events_since: Duration,
}

pub async fn gather(client: &kube::Client, selection: &Selection<'_>) -> Result<StatusReport> {
    let (streams, consumers) = select_objects(client, selection).await?;
    let since =
        Timestamp::now() - SignedDuration::try_from(selection.events_since).unwrap_or_default();
    let events = warning_events_in(client, selection.namespace).await?;
    let mut report = StatusReport {
        format_version: 1,
        ..StatusReport::default()
    };
    for stream in &streams {
        report
            .streams
            .push(stream_report(stream, &events_about(&events, stream, since)));
    }
    for consumer in &consumers {
        let pods = consumer_pods(client, consumer).await?;
        report.consumers.push(consumer_report(
            consumer,
            &pods,
            &events_about(&events, consumer, since),
        ));
    }
    Ok(report)
}

/// With a name: the AuditStream of that name with the AuditConsumers reading it, and the
/// AuditConsumer of that name with its AuditStream. Without: everything selected.
async fn select_objects(
    client: &kube::Client,
    selection: &Selection<'_>,
) -> Result<(Vec<AuditStream>, Vec<AuditConsumer>)> {
    let (streams, consumers): (Api<AuditStream>, Api<AuditConsumer>) = match selection.namespace {
        Some(namespace) => (
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let where_ = selection.namespace.unwrap_or("every namespace");
    let all_consumers = consumers
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(format!("listing AuditConsumers in {where_}")))?
        .items;
    let Some(name) = selection.name else {
        let all_streams = streams
            .list(&ListParams::default())
            .await
            .map_err(Error::kube(format!("listing AuditStreams in {where_}")))?
            .items;
        return Ok((sorted(all_streams), sorted(all_consumers)));
    };
    let stream = streams
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading AuditStream {name}")))?;
    let named_consumer = all_consumers.iter().find(|c| c.name_any() == name).cloned();
    let mut selected_streams: Vec<AuditStream> = stream.into_iter().collect();
    let mut selected_consumers: Vec<AuditConsumer> = all_consumers
        .into_iter()
        .filter(|c| c.spec.stream_ref.name == name || c.name_any() == name)
        .collect();
    if let Some(consumer) = &named_consumer
        && !selected_streams
            .iter()
            .any(|s| s.name_any() == consumer.spec.stream_ref.name)
        && let Some(stream) = streams
            .get_opt(&consumer.spec.stream_ref.name)
            .await
            .map_err(Error::kube(format!(
                "reading AuditStream {}",
                consumer.spec.stream_ref.name
            )))?
    {
        selected_streams.push(stream);
    }
    if selected_streams.is_empty() && selected_consumers.is_empty() {
        return Err(Error::NotFound {
            name: name.to_owned(),
            namespace: selection.namespace.unwrap_or_default().to_owned(),
        });
    }
    selected_consumers = sorted(selected_consumers);
    Ok((sorted(selected_streams), selected_consumers))
}

fn sorted<K: Resource>(mut objects: Vec<K>) -> Vec<K> {
    objects.sort_by_key(|o| (o.namespace(), o.name_any()));
    objects
}

/// Every Warning Event of the namespace (or all), once for all objects shown.
async fn warning_events_in(client: &kube::Client, namespace: Option<&str>) -> Result<Vec<Event>> {
    let api: Api<Event> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    Ok(api
        .list(&ListParams::default().fields("type=Warning"))
        .await
        .map_err(Error::kube("listing Warning Events"))?
        .items)
}

async fn consumer_pods(client: &kube::Client, consumer: &AuditConsumer) -> Result<Vec<Pod>> {
    let namespace = consumer.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = consumer
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_else(|| selector_string(&consumer.name_any()));
    let mut pods = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!(
            "listing the pods of AuditConsumer {namespace}/{}",
            consumer.name_any()
        )))?
        .items;
    pods.sort_by_key(ResourceExt::name_any);
    Ok(pods)
}

/// The Warning Events about `object` last seen after `since`, newest first (pure).
pub fn events_about<K>(events: &[Event], object: &K, since: Timestamp) -> Vec<WarningEvent>
where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&());
    let mut about: Vec<(Option<Timestamp>, WarningEvent)> = events
        .iter()
        .filter(|event| {
            event.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some(kind.as_ref())
                    && r.name.as_deref() == object.meta().name.as_deref()
                    && r.namespace.as_deref() == object.meta().namespace.as_deref()
            })
        })
        .map(|event| (last_seen(event), event))
        .filter(|(seen, _)| seen.is_none_or(|seen| seen >= since))
        .map(|(seen, event)| {
            (
                seen,
                WarningEvent {
                    reason: event.reason.clone().unwrap_or_default(),
                    message: event.note.clone().unwrap_or_default(),
                    count: event.series.as_ref().map_or(1, |s| s.count),
                    last_seen: seen.map(|t| t.to_string()),
                },
            )
        })
        .collect();
    about.sort_by_key(|(seen, _)| std::cmp::Reverse(*seen));
    about.into_iter().map(|(_, event)| event).collect()
}

/// When an Event last happened: its series' last observation, else its time.
fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(event.event_time.as_ref().map(|t| t.0))
        .or(event.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or(event.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn ready(conditions: &[Condition]) -> Option<Ready> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| Ready {
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
}

pub fn stream_report(stream: &AuditStream, events: &[WarningEvent]) -> StreamReport {
    let status = stream.status.clone().unwrap_or_default();
    let spec = &stream.spec;
    StreamReport {
        namespace: stream.namespace().unwrap_or_default(),
        name: stream.name_any(),
        generation: stream.metadata.generation,
        observed_generation: status.observed_generation,
        ready: ready(&status.conditions),
        conditions: status.conditions,
        stream_name: status.stream_name,
        messages: status.messages,
        bytes: status.bytes,
        first_seq: status.first_seq,
        last_seq: status.last_seq,
        consumer_count: status.consumer_count,
        limits: StreamLimits {
            max_messages: spec.max_messages,
            max_bytes: spec.max_bytes,
            max_age: spec.max_age.clone().filter(|age| !is_zero_duration(age)),
            max_messages_per_subject: spec.max_messages_per_subject,
            discard: format!("{:?}", spec.discard),
        },
        warning_events: events.to_vec(),
    }
}

/// `0s`, `0m0s`...: the CRD's way of saying unlimited.
fn is_zero_duration(text: &str) -> bool {
    text.chars().all(|c| !c.is_ascii_digit() || c == '0')
}

pub fn consumer_report(
    consumer: &AuditConsumer,
    pods: &[Pod],
    events: &[WarningEvent],
) -> ConsumerReport {
    let status = consumer.status.clone().unwrap_or_default();
    let checkpoints = status
        .integrity
        .as_ref()
        .map(|i| i.checkpoints.as_slice())
        .unwrap_or_default();
    let archive = consumer.spec.archive.as_ref().map(|archive| ArchiveReport {
        bucket: archive.bucket.clone(),
        verification_schedule: archive.verification.as_ref().map(|v| v.schedule.clone()),
        verification: status.archive.as_ref().and_then(|a| a.verification.clone()),
    });
    ConsumerReport {
        namespace: consumer.namespace().unwrap_or_default(),
        name: consumer.name_any(),
        stream_ref: consumer.spec.stream_ref.name.clone(),
        generation: consumer.metadata.generation,
        observed_generation: status.observed_generation,
        ready: ready(&status.conditions),
        pods: pods
            .iter()
            .map(|pod| pod_report(pod, checkpoints))
            .collect(),
        conditions: status.conditions,
        stream_name: status.stream_name,
        consumer_name: status.consumer_name,
        replicas: Replicas {
            // The autoscaler's decision when autoscaled; the spec's number otherwise.
            desired: status.desired_replicas.unwrap_or_else(|| {
                consumer
                    .spec
                    .replicas
                    .unwrap_or(audit_operator::crd::consumer::DEFAULT_REPLICAS)
            }),
            current: status.replicas,
            ready: status.ready_replicas,
        },
        pending: status.pending,
        ack_pending: status.ack_pending,
        ack_floor: status.ack_floor,
        delivered: status.delivered,
        redelivered: status.redelivered,
        max_deliver: consumer.spec.max_deliver,
        max_deliveries_reached: status.max_deliveries_reached,
        last_max_delivered_sequence: status.last_max_delivered_sequence,
        last_ack_time: status.last_ack_time,
        integrity: status.integrity,
        archive,
        warning_events: events.to_vec(),
    }
}

pub fn pod_report(pod: &Pod, checkpoints: &[PodCheckpoint]) -> PodReport {
    let name = pod.name_any();
    let status = pod.status.clone().unwrap_or_default();
    let container = status
        .container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.name == CONTAINER_NAME)
        .cloned();
    let (state, reason, message) = match &container {
        Some(container) => container_state(container),
        // Not started: the scheduler's condition says why, if it has said anything.
        None => {
            let unscheduled = status
                .conditions
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .cloned();
            (
                "Pending".to_owned(),
                unscheduled.as_ref().and_then(|c| c.reason.clone()),
                unscheduled.and_then(|c| c.message),
            )
        }
    };
    let last_termination = container
        .as_ref()
        .and_then(|c| c.last_state.as_ref()?.terminated.clone())
        .map(|t| Termination {
            reason: t.reason,
            exit_code: t.exit_code,
            message: t.message.filter(|m| !m.trim().is_empty()),
            finished_at: t.finished_at.map(|time| time.0.to_string()),
        });
    PodReport {
        checkpoint: checkpoints.iter().find(|c| c.pod == name).cloned(),
        name,
        phase: status.phase.clone(),
        ready: container.as_ref().is_some_and(|c| c.ready),
        restarts: container.as_ref().map_or(0, |c| c.restart_count),
        state,
        reason,
        message,
        last_termination,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
    }
}

fn container_state(container: &ContainerStatus) -> (String, Option<String>, Option<String>) {
    let state = container.state.clone().unwrap_or_default();
    if let Some(waiting) = state.waiting {
        ("Waiting".to_owned(), waiting.reason, waiting.message)
    } else if let Some(terminated) = state.terminated {
        (
            "Terminated".to_owned(),
            terminated.reason,
            terminated.message,
        )
    } else {
        ("Running".to_owned(), None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer() -> AuditConsumer {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "audit.eventsaudit.io/v1alpha1",
            "kind": "AuditConsumer",
            "metadata": { "name": "reader", "namespace": "ns", "generation": 2 },
            "spec": { "streamRef": { "name": "orders" }, "replicas": 2 },
            "status": {
                "observedGeneration": 1,
                "integrity": {
                    "witnessStream": "AUDIT_INTEGRITY", "subject": "audit-integrity.ORDERS.reader",
                    "publicKey": "A...", "checkpoints": [
                        { "pod": "reader-a", "chain": "reader/reader-a/t0", "position": 7, "time": "2026-01-01T00:00:00Z" },
                    ],
                },
            },
        }))
        .unwrap()
    }

    fn event(kind: &str, name: &str, last: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("{name}.1"), "namespace": "ns" },
            "eventTime": last,
            "type": "Warning",
            "reason": "Stalled",
            "note": "a long message\nwith a second line",
            "regarding": { "kind": kind, "name": name, "namespace": "ns" },
        }))
        .unwrap()
    }

    #[test]
    fn only_recent_events_about_the_object_itself_are_shown() {
        let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let events = [
            event("AuditConsumer", "reader", "2026-01-01T00:30:00.000000Z"),
            event("AuditConsumer", "reader", "2025-12-31T23:00:00.000000Z"),
            event("AuditStream", "reader", "2026-01-01T00:30:00.000000Z"),
            event("AuditConsumer", "writer", "2026-01-01T00:30:00.000000Z"),
        ];
        let shown = events_about(&events, &consumer(), since);
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(shown[0].message, "a long message\nwith a second line");
    }

    #[test]
    fn a_pod_shows_its_checkpoint_why_it_waits_and_how_it_last_ended() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "reader-a" },
            "spec": { "nodeName": "n1", "containers": [] },
            "status": {
                "phase": "Running",
                "containerStatuses": [{
                    "name": "audit-consumer", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                    "state": { "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 40s" } },
                    "lastState": { "terminated": { "exitCode": 78, "reason": "Error", "message": "cannot reach NATS" } },
                }],
            },
        }))
        .unwrap();
        let status = consumer().status.unwrap();
        let report = pod_report(&pod, &status.integrity.unwrap().checkpoints);
        assert_eq!(report.state, "Waiting");
        assert_eq!(report.reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!((report.ready, report.restarts), (false, 3));
        let last = report.last_termination.unwrap();
        assert_eq!(
            (last.exit_code, last.message.as_deref()),
            (78, Some("cannot reach NATS"))
        );
        assert_eq!(report.checkpoint.unwrap().position, 7);
        assert_eq!(report.node.as_deref(), Some("n1"));
    }

    #[test]
    fn an_unscheduled_pod_says_why() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "reader-b" },
            "status": {
                "phase": "Pending",
                "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/1 nodes are available: 1 Insufficient cpu." }],
            },
        }))
        .unwrap();
        let report = pod_report(&pod, &[]);
        assert_eq!(report.state, "Pending");
        assert_eq!(report.reason.as_deref(), Some("Unschedulable"));
        assert_eq!(
            report.message.as_deref(),
            Some("0/1 nodes are available: 1 Insufficient cpu.")
        );
        assert!(report.checkpoint.is_none());
    }

    #[test]
    fn a_consumer_without_a_ready_condition_has_no_ready_and_keeps_its_generations() {
        let report = consumer_report(&consumer(), &[], &[]);
        assert!(report.ready.is_none());
        assert_eq!(
            (report.generation, report.observed_generation),
            (Some(2), Some(1))
        );
        assert_eq!(report.replicas.desired, 2);
        assert!(report.archive.is_none());
    }
}
