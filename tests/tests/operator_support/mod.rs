//! Shared by the `operator_*` and `node_*` tests: the operator's custom resources as a user's
//! kubectl sees them (dynamic objects, applied server-side), their conditions and Events, a
//! fresh namespace with the committed CRDs installed, the operator's metrics and Lease, and
//! the operator installed from the chart once per test binary on the real node.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::OnceLock;
use std::time::Duration;

use audit_tests::kube_env::ControlPlane;
use audit_tests::node::Node;
use audit_tests::operator::{ChartRelease, OperatorProcess, install_crds};
use audit_tests::wait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

pub const GROUP: &str = "audit.eventsaudit.io";
pub const VERSION: &str = "v1alpha1";
/// The Lease the operator's replicas elect their leader with.
pub const LEASE: &str = "audit-operator-leader";
/// The label that makes a namespace enforce the restricted Pod Security Standard.
pub const RESTRICTED: (&str, &str) = ("pod-security.kubernetes.io/enforce", "restricted");
/// The field manager of every object the tests apply.
const FIELD_MANAGER: &str = "audit-tests";

/// A kind of the operator's API.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    pub name: &'static str,
    pub plural: &'static str,
}

pub const AUDIT_STREAM: Kind = Kind {
    name: "AuditStream",
    plural: "auditstreams",
};
pub const AUDIT_CONSUMER: Kind = Kind {
    name: "AuditConsumer",
    plural: "auditconsumers",
};

/// The objects of `kind` in `namespace`.
pub fn api(client: &kube::Client, namespace: &str, kind: Kind) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, kind.name),
        kind.plural,
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Server-side applies the `kind` object `name` with `spec`, as a user's
/// `kubectl apply --server-side` would.
pub async fn apply(
    api: &Api<DynamicObject>,
    kind: Kind,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, kube::Error> {
    let object = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind.name,
        "metadata": { "name": name },
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
}

/// An admin client and a new namespace named after `prefix` (with `labels`), on the shared
/// control plane with the committed CRDs installed.
pub async fn namespace(
    prefix: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<(kube::Client, String)> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.admin_client().await?;
    install_crds(&client).await?;
    let namespace = control_plane
        .create_namespace_labelled(prefix, labels)
        .await?;
    Ok((client, namespace))
}

/// Creates the Secret `name` in `namespace` with `token` under the key `token`, for a
/// connection's `tokenSecretRef`.
pub async fn create_token_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    token: &str,
) -> anyhow::Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": name },
        "stringData": { "token": token },
    }))?;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// The condition `type_` in `object`'s status.
pub fn condition<'a>(object: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The status of condition `type_`, or `<absent>`.
pub fn condition_status(object: &DynamicObject, type_: &str) -> String {
    condition(object, type_)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("<absent>")
        .to_owned()
}

/// Whether `object` reports `Ready=True`.
pub fn is_ready(object: &DynamicObject) -> bool {
    condition_status(object, "Ready") == "True"
}

/// Waits up to `within` until object `name` reports `Ready=True`.
pub async fn wait_ready(
    api: &Api<DynamicObject>,
    name: &str,
    within: Duration,
) -> anyhow::Result<()> {
    wait::until(
        &format!("{name} to be Ready"),
        within,
        Duration::from_millis(200),
        || async { Ok(is_ready(&api.get(name).await?).then_some(())) },
    )
    .await
}

/// The Events in `namespace` about the object `name`.
pub async fn events_about(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<Event>> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    Ok(events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect())
}

/// How often an Event `reason` was reported about `name`, counting the repetitions an Event
/// series folds into one object.
pub fn occurrences(events: &[Event], reason: &str) -> i32 {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |series| series.count))
        .sum()
}

/// The value of one sample of the operator's `/metrics`, e.g.
/// `audit_operator_reconciliations_total{kind="AuditStream"}`; 0 while it is absent.
pub async fn operator_metric(operator: &OperatorProcess, sample: &str) -> anyhow::Result<f64> {
    let metrics = audit_tests::http::get(operator.health_port(), "/metrics").await?;
    Ok(metrics
        .body
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Who holds the operator's leader Lease in `leases`' namespace.
pub async fn lease_holder(leases: &Api<Lease>) -> anyhow::Result<Option<String>> {
    Ok(leases
        .get_opt(LEASE)
        .await?
        .and_then(|lease| lease.spec)
        .and_then(|spec| spec.holder_identity))
}

/// The operator of this test binary on the real node, installed from the chart on first use
/// into a restricted `audit-system-*` namespace with `replicas` pods and `values` (its RBAC is
/// cluster-wide: one release per control plane).
pub fn chart_operator(replicas: u32, values: &'static [&'static str]) -> &'static ChartRelease {
    static RELEASE: OnceLock<ChartRelease> = OnceLock::new();
    RELEASE.get_or_init(|| {
        Node::shared();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(async {
                    let namespace = ControlPlane::shared()
                        .create_namespace_labelled("audit-system", &[RESTRICTED])
                        .await?;
                    ChartRelease::install(&namespace, replicas, values).await
                })
        })
        .join()
        .expect("installing the chart does not panic")
        .unwrap_or_else(|e| panic!("the operator chart did not install: {e:#}"))
    })
}

/// A pod of AuditConsumer `consumer`'s archive verification that ended with `exit_code`,
/// leaving `report` as its termination message: what the kubelet reports when a run of the
/// CronJob finished. Bound to a node that does not exist, so that no kubelet touches it; its
/// status is written through the API server's `pods/status`, as a kubelet writes it.
pub async fn finished_verification_pod(
    client: &kube::Client,
    namespace: &str,
    consumer: &str,
    run: &str,
    exit_code: i32,
    report: &Value,
) -> anyhow::Result<()> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let name = format!("{consumer}-audit-verify-{run}");
    let pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "audit-verify",
                "app.kubernetes.io/instance": consumer,
            },
        },
        "spec": {
            "nodeName": "no-such-node",
            "restartPolicy": "Never",
            "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "audit-verify",
                "image": "audit-consumer:test",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({ "status": {
        "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": "audit-verify",
            "image": "audit-consumer:test",
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "state": { "terminated": {
                "exitCode": exit_code,
                "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "message": report.to_string(),
                "startedAt": now,
                "finishedAt": now,
            }},
        }],
    }});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// A Secret `name` with an access key pair under the archive's default keys, created or
/// replaced.
pub async fn put_key_pair(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    id: &str,
    secret: &str,
) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let object: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name },
        "stringData": { "accessKeyId": id, "secretAccessKey": secret },
    }))?;
    secrets
        .patch(
            name,
            &PatchParams::apply("archive-test").force(),
            &Patch::Apply(&object),
        )
        .await?;
    Ok(())
}
