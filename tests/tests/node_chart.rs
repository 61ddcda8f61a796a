//! On a real node: the operator installed from the Helm chart with the images the Dockerfile
//! builds runs in pods, in-cluster, with its ServiceAccount token and only the chart's RBAC;
//! its pods turn Ready through their real probes; one holds the Lease and reconciles, and
//! deleting that pod hands leadership to the other.

mod operator_support;

use std::time::Duration;

use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsServer;
use audit_tests::node::Node;
use audit_tests::operator::ChartRelease;
use audit_tests::wait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use operator_support::{AUDIT_STREAM, is_ready, lease_holder};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);

/// An AuditStream `name` on `nats_url`, capturing `<name>.>`, deleted from NATS with it.
async fn apply_stream(api: &Api<DynamicObject>, name: &str, nats_url: &str) -> anyhow::Result<()> {
    let spec = json!({
        "connection": { "servers": [nats_url] },
        "subjects": [format!("{name}.>")],
        "deletionPolicy": "Delete",
    });
    operator_support::apply(api, AUDIT_STREAM, name, spec).await?;
    Ok(())
}

async fn wait_stream_ready(
    api: &Api<DynamicObject>,
    name: &str,
    release: &ChartRelease,
) -> anyhow::Result<()> {
    wait::until(&format!("AuditStream {name} Ready"), WAIT, POLL, || async {
        Ok(is_ready(&api.get(name).await?).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", release.logs()))
}

#[tokio::test]
async fn the_chart_runs_the_operator_in_cluster_and_leadership_follows_the_pods()
-> anyhow::Result<()> {
    let node = Node::shared();
    let control_plane = ControlPlane::shared();
    let client = control_plane.admin_client().await?;
    let namespace = control_plane
        .create_namespace_labelled(
            "audit-system",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await?;
    let release = ChartRelease::install(&namespace, 2, &[]).await?;

    // Both pods run on the node, in containers, with pod IPs from the node's pod network.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = ListParams::default().labels(&release.selector());
    let listed = pods.list(&selector).await?.items;
    assert_eq!(listed.len(), 2);
    for pod in &listed {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(node.name()));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some(release.name.as_str())
        );
        let status = pod.status.as_ref().unwrap();
        let pod_ip: std::net::Ipv4Addr = status.pod_ip.as_deref().unwrap().parse()?;
        assert_eq!(pod_ip.octets()[..3], [198, 18, 1], "{pod_ip}");
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert!(container.ready, "{container:?}");
        assert!(
            container
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("containerd://")),
            "{container:?}"
        );
    }
    let pod_names: Vec<String> = listed
        .iter()
        .filter_map(|pod| pod.metadata.name.clone())
        .collect();

    // One of them leads: the Lease names it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let leader = wait::until("a leader in the Lease", WAIT, POLL, || async {
        Ok(lease_holder(&leases)
            .await?
            .filter(|holder| pod_names.contains(holder)))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", release.logs()))?;

    // The leader reconciles, in-cluster, against a NATS server it reaches over the pod
    // network.
    let nats = NatsServer::start_on(node.ip()).await?;
    let tenant = control_plane.create_namespace("tenant").await?;
    let streams = operator_support::api(&client, &tenant, AUDIT_STREAM);
    apply_stream(&streams, "first", &nats.url()).await?;
    wait_stream_ready(&streams, "first", &release).await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    js.get_stream("first").await?;

    // Deleting the leader's pod hands over: the other pod (or the Deployment's replacement)
    // takes the Lease and reconciles what is applied next.
    pods.delete(&leader, &DeleteParams::default()).await?;
    let new_leader = wait::until("another pod to take the Lease", WAIT, POLL, || async {
        Ok(lease_holder(&leases)
            .await?
            .filter(|holder| *holder != leader))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", release.logs()))?;
    assert!(
        pods.get_opt(&new_leader).await?.is_some(),
        "the new leader {new_leader} is a pod of the release"
    );
    apply_stream(&streams, "second", &nats.url()).await?;
    wait_stream_ready(&streams, "second", &release).await?;
    js.get_stream("second").await?;
    release.wait_ready(2).await?;
    Ok(())
}
