//! Why a consumer's pods do not become ready, as Kubernetes reports it on the pods: the
//! scheduler's reason for not placing one, or a container stuck in a state that will not end
//! without a change (crash loop, image pull, configuration). The Deployment's status only
//! counts ready pods; without this, the AuditConsumer said "0 of 1 pod(s) ready" and the user
//! had to find the pods to learn why.
//!
//! Read only while the workload is not available, with one list call scoped to the consumer's
//! pods: no pod watch, so that the operator's memory and its reconciliations do not grow
//! with every probe flip of every consumer pod in the cluster.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::{Api, ResourceExt, api::ListParams};

use super::build::{deployment::TERMINATION_MESSAGE_POLICY, selector_string};

/// The scheduler cannot place a pod (not enough CPU or memory, taints, affinity, quota).
pub const PODS_UNSCHEDULABLE: &str = "PodsUnschedulable";
/// A container cannot start or keeps exiting.
pub const CONTAINERS_FAILING: &str = "ContainersFailing";

/// The kubelet's waiting reasons that persist until something changes: the image, the
/// configuration, or whatever makes the process exit. `ContainerCreating` and
/// `PodInitializing` are progress, not trouble.
const STUCK_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "PreStartHookError",
    "PostStartHookError",
];

/// Longest piece of a kubelet or scheduler message quoted in the status.
const QUOTE_LIMIT: usize = 300;

/// Why the pods are not ready, for the `WorkloadAvailable` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTrouble {
    pub reason: &'static str,
    /// The first troubled pod (in name order, so that the message is stable) and what is
    /// wrong with it, and how many more pods are in trouble.
    pub message: String,
}

/// The consumer's pods, or none when they cannot be listed: the status then says only what
/// the Deployment says, as before this step existed (for example while an upgraded chart's
/// RBAC is not in place yet).
pub async fn list(pods: &Api<Pod>, consumer_name: &str) -> Vec<Pod> {
    let selector = selector_string(consumer_name);
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(err) => {
            tracing::debug!(%err, %selector, "cannot list the consumer's pods; the status will not say why they are not ready");
            Vec::new()
        }
    }
}

/// Why `pods` are not ready, if any of them says so. Pods being deleted are left out: a
/// rollout's old pods are on their way out.
pub fn trouble(pods: &[Pod]) -> Option<PodTrouble> {
    let mut troubled: Vec<(String, &'static str, String)> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let (reason, what) = unschedulable(pod).or_else(|| stuck_container(pod))?;
            Some((pod.name_any(), reason, what))
        })
        .collect();
    troubled.sort();
    let more = troubled.len().saturating_sub(1);
    let (pod, reason, what) = troubled.into_iter().next()?;
    let mut message = format!("pod {pod} {what}");
    if more > 0 {
        message.push_str(&format!(" ({more} more pod(s) not running either)"));
    }
    Some(PodTrouble { reason, message })
}

fn unschedulable(pod: &Pod) -> Option<(&'static str, String)> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    if condition.reason.as_deref() != Some("Unschedulable") {
        return None;
    }
    let why = condition.message.as_deref().unwrap_or("no reason given");
    Some((
        PODS_UNSCHEDULABLE,
        format!("cannot be scheduled: {}", quote(why)),
    ))
}

fn stuck_container(pod: &Pod) -> Option<(&'static str, String)> {
    let status = pod.status.as_ref()?;
    let mut containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers.find_map(|container| {
        let waiting = container.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        STUCK_WAITING_REASONS.contains(&reason).then(|| {
            (
                CONTAINERS_FAILING,
                describe_waiting(
                    &pod.name_any(),
                    container,
                    reason,
                    waiting.message.as_deref(),
                    writes_own_message(pod, &container.name),
                ),
            )
        })
    })
}

/// Whether `container`'s termination message can only be what the process wrote itself (the
/// consumer writes its fatal error): policy `File`, the default. Under
/// `FallbackToLogsOnError`, which pods made before that policy still have, it can be the
/// log's tail, audit events included, and is never quoted.
fn writes_own_message(pod: &Pod, container: &str) -> bool {
    pod.spec
        .iter()
        .flat_map(|spec| {
            spec.init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
        })
        .find(|c| c.name == container)
        .is_some_and(|c| {
            c.termination_message_policy
                .as_deref()
                .is_none_or(|policy| policy == TERMINATION_MESSAGE_POLICY)
        })
}

/// A crash loop is told by how the container last ended: exit code and, when only the
/// process can have written it, its termination message (the consumer's fatal error). Other
/// states carry the kubelet's own message (which image, which missing key).
fn describe_waiting(
    pod: &str,
    container: &ContainerStatus,
    reason: &str,
    message: Option<&str>,
    own_message: bool,
) -> String {
    let name = &container.name;
    if reason == "CrashLoopBackOff" {
        let last = container
            .last_state
            .as_ref()
            .and_then(|state| state.terminated.as_ref());
        let ended = match last {
            Some(terminated) => format!(
                ", last exit code {}{}{}",
                terminated.exit_code,
                terminated
                    .reason
                    .as_deref()
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default(),
                terminated
                    .message
                    .as_deref()
                    .filter(|message| own_message && !message.trim().is_empty())
                    .map(|message| format!(": {}", quote(message)))
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        return format!(
            "container {name}: CrashLoopBackOff after {} restart(s){ended}; see kubectl logs {pod} -c {name} --previous",
            container.restart_count
        );
    }
    match message.filter(|m| !m.is_empty()) {
        Some(message) => format!("container {name}: {reason}: {}", quote(message)),
        None => format!("container {name}: {reason}"),
    }
}

/// `text` up to [`QUOTE_LIMIT`] bytes, cut at a character boundary.
fn quote(text: &str) -> String {
    let text = text.trim();
    if text.len() <= QUOTE_LIMIT {
        return text.to_owned();
    }
    let mut end = QUOTE_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "status": status,
        }))
        .unwrap()
    }

    fn unschedulable_pod(name: &str) -> Pod {
        pod(
            name,
            serde_json::json!({
                "phase": "Pending",
                "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient cpu.",
                }],
            }),
        )
    }

    fn waiting_pod(name: &str, reason: &str, message: &str) -> Pod {
        pod(
            name,
            serde_json::json!({
                "phase": "Pending",
                "conditions": [{ "type": "PodScheduled", "status": "True" }],
                "containerStatuses": [{
                    "name": "audit-consumer", "image": "audit-consumer:dev", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": { "waiting": { "reason": reason, "message": message } },
                }],
            }),
        )
    }

    #[test]
    fn an_unschedulable_pod_gives_the_schedulers_reason() {
        let trouble = trouble(&[unschedulable_pod("orders-reader-7d9-abc")]).unwrap();
        assert_eq!(trouble.reason, PODS_UNSCHEDULABLE);
        assert_eq!(
            trouble.message,
            "pod orders-reader-7d9-abc cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu."
        );
    }

    #[test]
    fn an_image_that_cannot_be_pulled_is_quoted() {
        let trouble = trouble(&[waiting_pod(
            "p",
            "ImagePullBackOff",
            "Back-off pulling image \"registry.example/audit-consumer:9\"",
        )])
        .unwrap();
        assert_eq!(trouble.reason, CONTAINERS_FAILING);
        assert_eq!(
            trouble.message,
            "pod p container audit-consumer: ImagePullBackOff: Back-off pulling image \"registry.example/audit-consumer:9\""
        );
    }

    /// A crash-looping consumer container whose last run ended with `message`, under
    /// `policy`.
    fn crashing(policy: &str, message: &str) -> Pod {
        let mut pod = pod(
            "p",
            serde_json::json!({
                "containerStatuses": [{
                    "name": "audit-consumer", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 4,
                    "state": { "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off 1m20s restarting failed container=audit-consumer",
                    } },
                    "lastState": { "terminated": {
                        "exitCode": 1, "reason": "Error", "message": message,
                    } },
                }],
            }),
        );
        pod.spec = Some(
            serde_json::from_value(serde_json::json!({
                "containers": [{ "name": "audit-consumer", "terminationMessagePolicy": policy }],
            }))
            .unwrap(),
        );
        pod
    }

    #[test]
    fn a_crash_loop_quotes_the_consumers_own_error_never_a_log_tail() {
        let own = trouble(&[crashing(
            "File",
            "consumer ORDERS/reader does not exist and was not recreated within 5m",
        )])
        .unwrap();
        assert_eq!(
            own.message,
            "pod p container audit-consumer: CrashLoopBackOff after 4 restart(s), last exit code 1 (Error): consumer ORDERS/reader does not exist and was not recreated within 5m; see kubectl logs p -c audit-consumer --previous"
        );
        // A pod from before the policy: its message may be the log's tail.
        let tail = trouble(&[crashing(
            "FallbackToLogsOnError",
            "{\"user\":\"alice\",\"action\":\"login\"}",
        )])
        .unwrap();
        assert!(!tail.message.contains("alice"), "{}", tail.message);
        assert!(
            tail.message.contains("last exit code 1 (Error); see"),
            "{}",
            tail.message
        );
    }

    #[test]
    fn a_crash_loop_without_a_known_policy_gives_the_exit_code_only() {
        let mut unknown = crashing("File", "{\"user\":\"alice\",\"action\":\"login\"}");
        unknown.spec = None;
        let trouble = trouble(&[unknown]).unwrap();
        assert_eq!(trouble.reason, CONTAINERS_FAILING);
        assert_eq!(
            trouble.message,
            "pod p container audit-consumer: CrashLoopBackOff after 4 restart(s), last exit code 1 (Error); see kubectl logs p -c audit-consumer --previous"
        );
        // Stable across the back-off's growth, so that the status is not rewritten each time.
        assert!(!trouble.message.contains("1m20s"));
    }

    #[test]
    fn progress_and_pods_being_deleted_are_no_trouble() {
        let creating = waiting_pod("a", "ContainerCreating", "");
        let running_not_ready = pod(
            "b",
            serde_json::json!({
                "phase": "Running",
                "containerStatuses": [{
                    "name": "audit-consumer", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": { "running": {} },
                }],
            }),
        );
        let mut leaving = unschedulable_pod("c");
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(trouble(&[creating, running_not_ready, leaving]), None);
        assert_eq!(trouble(&[]), None);
    }

    #[test]
    fn the_first_pod_by_name_is_told_and_the_others_counted() {
        let trouble = trouble(&[
            unschedulable_pod("reader-z"),
            waiting_pod(
                "reader-b",
                "CreateContainerConfigError",
                "secret \"nats-creds\" not found",
            ),
            unschedulable_pod("reader-m"),
        ])
        .unwrap();
        assert_eq!(trouble.reason, CONTAINERS_FAILING);
        assert_eq!(
            trouble.message,
            "pod reader-b container audit-consumer: CreateContainerConfigError: secret \"nats-creds\" not found (2 more pod(s) not running either)"
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(400);
        let quoted = quote(&long);
        assert!(quoted.len() <= QUOTE_LIMIT + 3);
        assert!(quoted.ends_with("..."));
    }
}
