//! The Pod status the local kubelet reports, computed from what it observed of the pod's
//! container: phase, the four standard conditions, and the container's status.
//!
//! Pure: the same observation gives the same status, so the worker writes only on change.
//! Conditions keep their `lastTransitionTime` while their status stays the same.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub(super) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// What the kubelet knows about a pod it runs.
#[derive(Clone, Debug)]
pub(super) struct Observed {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub phase: &'static str,
    /// Why the pod ended, when the node ended it (e.g. a node shutdown).
    pub reason: Option<(&'static str, &'static str)>,
    pub start_time: Time,
    pub container: ContainerStatus,
    pub generation: Option<i64>,
}

/// The `lastTransitionTime` of each condition, kept while its status does not change.
#[derive(Debug, Default)]
pub(super) struct TransitionTimes(BTreeMap<&'static str, (bool, Time)>);

impl TransitionTimes {
    fn condition(
        &mut self,
        type_: &'static str,
        status: bool,
        reason: Option<&str>,
        message: Option<String>,
        generation: Option<i64>,
    ) -> PodCondition {
        let time = match self.0.get(type_) {
            Some((previous, time)) if *previous == status => time.clone(),
            _ => {
                let time = now();
                self.0.insert(type_, (status, time.clone()));
                time
            }
        };
        PodCondition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.map(str::to_owned),
            message,
            last_transition_time: Some(time),
            observed_generation: generation,
            ..PodCondition::default()
        }
    }
}

pub(super) fn pod_status(observed: &Observed, times: &mut TransitionTimes) -> PodStatus {
    let container = &observed.container;
    let terminal = matches!(observed.phase, "Succeeded" | "Failed");
    let (not_ready_reason, not_ready_message) = if terminal {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                container.name
            )),
        )
    };
    let ready = |times: &mut TransitionTimes, type_| {
        if container.ready {
            times.condition(type_, true, None, None, observed.generation)
        } else {
            times.condition(
                type_,
                false,
                not_ready_reason,
                not_ready_message.clone(),
                observed.generation,
            )
        }
    };
    let conditions = vec![
        times.condition("PodScheduled", true, None, None, observed.generation),
        times.condition("Initialized", true, None, None, observed.generation),
        ready(times, "ContainersReady"),
        ready(times, "Ready"),
    ];
    PodStatus {
        phase: Some(observed.phase.to_owned()),
        reason: observed.reason.map(|(reason, _)| reason.to_owned()),
        message: observed.reason.map(|(_, message)| message.to_owned()),
        conditions: Some(conditions),
        container_statuses: Some(vec![container.clone()]),
        start_time: Some(observed.start_time.clone()),
        observed_generation: observed.generation,
        ..PodStatus::default()
    }
}

/// A container status with the fields every state shares.
pub(super) fn container_status(
    name: &str,
    image: &str,
    image_id: &str,
    state: ContainerState,
    last_state: Option<ContainerState>,
    restart_count: i32,
    (started, ready): (bool, bool),
) -> ContainerStatus {
    ContainerStatus {
        name: name.to_owned(),
        image: image.to_owned(),
        image_id: image_id.to_owned(),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        restart_count,
        started: Some(started),
        ready,
        ..ContainerStatus::default()
    }
}
