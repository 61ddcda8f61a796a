//! Starts the real test node with its control plane and one pod, prints `ready` and the
//! kubeconfig path on standard output, and runs until killed: a node to look at by hand
//! (`KUBECONFIG=... kubectl get pods -A -o wide`), and the crashed run that
//! `tests/tests/node_teardown.rs` kills to prove that teardown removes what it left.

use std::time::Duration;

use audit_tests::images::PAUSE_IMAGE;
use audit_tests::kube_env::ControlPlane;
use audit_tests::node::Node;
use audit_tests::wait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(Node::shared).await?;
    let control_plane = ControlPlane::shared();
    let namespace = control_plane
        .create_namespace_labelled(
            "testnode",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(control_plane.admin_client().await?, &namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "pause" },
        "spec": {
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65535,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "containers": [{
                "name": "pause",
                "image": PAUSE_IMAGE,
                "imagePullPolicy": "Never",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait::until(
        "the pod to run",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let phase = pods.get("pause").await?.status.and_then(|s| s.phase);
            Ok((phase.as_deref() == Some("Running")).then_some(()))
        },
    )
    .await?;
    println!("ready {}", control_plane.kubeconfig_path().display());
    std::future::pending::<()>().await;
    Ok(())
}
