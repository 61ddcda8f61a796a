//! The local kubelet against the real control plane, with pods made by hand: restart policies,
//! crash-loop back-off, graceful and forced-by-timeout deletion, and a pod it must refuse.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::Kubelet;
use crate::kube_env::ControlPlane;
use crate::wait;

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

fn shell_pod(name: &str, restart_policy: &str, script: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 1,
            // The token volume would be a projected volume, which the kubelet refuses.
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "main",
                "image": "busybox",
                "command": ["/bin/sh", "-c", script],
            }],
        },
    }))?)
}

async fn wait_status(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    check: impl Fn(&PodStatus) -> bool,
) -> anyhow::Result<PodStatus> {
    wait::until(&format!("pod {name}: {what}"), WAIT, POLL, || async {
        let status = pods.get(name).await?.status.unwrap_or_default();
        Ok(check(&status).then_some(status))
    })
    .await
}

#[tokio::test]
async fn restart_policies_deletion_and_refusals() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.admin_client().await?;
    let namespace = control_plane.create_namespace("kubelet").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut kubelet = Kubelet::builder(&client, &namespace)
        .node_name("kubelet-test")
        .binary("/bin/sh", "/bin/sh")
        .start()
        .await?;

    let create = |pod: Pod| {
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &pod).await }
    };
    create(shell_pod("crasher", "Always", "echo started; exit 3")?).await?;
    create(shell_pod("once", "Never", "exit 0")?).await?;
    create(shell_pod("on-failure", "OnFailure", "exit 0")?).await?;
    create(shell_pod("broken", "Never", "exit 2")?).await?;
    create(shell_pod(
        "graceful",
        "Always",
        "trap 'exit 0' TERM; while :; do sleep 0.1; done",
    )?)
    .await?;
    create(shell_pod(
        "stubborn",
        "Always",
        "trap '' TERM; while :; do sleep 0.1; done",
    )?)
    .await?;
    let mut refused = shell_pod("refused", "Always", "exit 0")?;
    refused.spec.as_mut().unwrap().volumes = Some(vec![serde_json::from_value(
        json!({ "name": "scratch", "emptyDir": {} }),
    )?]);
    refused.spec.as_mut().unwrap().containers[0].volume_mounts =
        Some(vec![serde_json::from_value(
            json!({ "name": "scratch", "mountPath": "/scratch" }),
        )?]);
    create(refused).await?;

    // Always: restarted after each exit, first at once, then with a back-off.
    let crasher = wait_status(&pods, "crasher", "restarted and backing off", |s| {
        let Some(container) = s.container_statuses.as_ref().and_then(|c| c.first()) else {
            return false;
        };
        let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
        container.restart_count >= 1
            && waiting.and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff")
    })
    .await?;
    assert_eq!(crasher.phase.as_deref(), Some("Running"));
    let container = &crasher.container_statuses.as_ref().unwrap()[0];
    let last = container.last_state.as_ref().unwrap().terminated.as_ref();
    assert_eq!(last.map(|t| t.exit_code), Some(3), "{container:?}");
    assert!(!container.ready);

    // Never and OnFailure: the pod ends with its container.
    for (name, phase) in [
        ("once", "Succeeded"),
        ("on-failure", "Succeeded"),
        ("broken", "Failed"),
    ] {
        let status = wait_status(&pods, name, phase, |s| s.phase.as_deref() == Some(phase)).await?;
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(container.restart_count, 0, "{name}: {container:?}");
    }

    // A pod that cannot run here is refused with the reason, in the API and to the test.
    let refused = wait_status(&pods, "refused", "refused", |s| {
        s.container_statuses
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .as_deref()
            == Some("CreateContainerConfigError")
    })
    .await?;
    assert_eq!(refused.phase.as_deref(), Some("Pending"));
    let local = kubelet
        .pods()
        .into_iter()
        .find(|p| p.name == "refused")
        .unwrap();
    assert!(
        local
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not a Secret volume")),
        "{local:?}"
    );
    let failed = kubelet
        .wait_ready(100, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        format!("{failed:#}").contains("refused cannot start"),
        "{failed:#}"
    );

    // Deletion: SIGTERM, and SIGKILL for a container still running after the grace period;
    // then the kubelet removes the pod.
    for name in ["graceful", "stubborn"] {
        wait_status(&pods, name, "ready", |s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .await?;
        pods.delete(name, &DeleteParams::default()).await?;
    }
    for name in ["graceful", "stubborn"] {
        wait::until(&format!("pod {name} removed"), WAIT, POLL, || async {
            Ok(pods.get_opt(name).await?.is_none().then_some(()))
        })
        .await?;
    }
    let local = |name: &str| kubelet.pods().into_iter().find(|p| p.name == name).unwrap();
    let graceful = local("graceful");
    assert!(
        graceful.finished && graceful.exits.len() == 1 && graceful.exits[0].success(),
        "{graceful:?}"
    );
    let stubborn = local("stubborn");
    assert_eq!(stubborn.exits.len(), 1, "{stubborn:?}");
    assert_eq!(
        stubborn.exits[0].signal(),
        Some(libc::SIGKILL),
        "{stubborn:?}"
    );

    // A node shutdown ends what still runs, and the pods say why.
    for pod in kubelet.shutdown().await {
        assert_eq!(pod.api_error, None, "every API write succeeded: {pod:?}");
    }
    let crasher = pods.get("crasher").await?.status.unwrap_or_default();
    assert_eq!(crasher.phase.as_deref(), Some("Failed"));
    assert_eq!(crasher.reason.as_deref(), Some("Terminated"));
    Ok(())
}
