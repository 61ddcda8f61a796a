//! The Node the local kubelet registers: named, labelled and addressed as a kubelet would,
//! with this machine's CPUs and memory as capacity, and its `Ready` condition.
//!
//! No heartbeat is kept up: the test control plane runs no node lifecycle controller, so
//! nothing would read one.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Creates node `name` unless it exists, and reports it Ready.
pub(super) async fn register(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch(),
            },
        },
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let resources = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", memory_kib()),
        "pods": "110",
    });
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = json!({
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                { "type": "InternalIP", "address": "127.0.0.1" },
                { "type": "Hostname", "address": name },
            ],
            "conditions": [ready_condition("True", "KubeletReady", "kubelet is posting ready status", &now)],
            "nodeInfo": {
                "operatingSystem": "linux",
                "architecture": arch(),
                "kubeletVersion": "audit-tests-local-kubelet",
                "containerRuntimeVersion": "local-process://",
            },
        },
    });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Reports node `name` not ready, as a kubelet does when it shuts down.
pub(super) async fn report_stopped(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = json!({
        "status": {
            "conditions": [ready_condition("False", "KubeletNotReady", "the local kubelet stopped", &now)],
        },
    });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

fn ready_condition(status: &str, reason: &str, message: &str, now: &Time) -> serde_json::Value {
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    })
}

/// The architecture as Kubernetes names it.
pub(super) fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `MemTotal` from /proc/meminfo, in KiB (a nominal 4 GiB if it cannot be read).
fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(4 * 1024 * 1024)
}
