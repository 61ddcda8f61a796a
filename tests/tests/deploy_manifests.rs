//! The delivery manifests (Helm chart, Kustomize overlays) install on a real API server with
//! the real helm and kubectl, produce no perpetual diff for a GitOps tool, run the operator
//! under the restricted Pod Security Standard, and grant the operator exactly the rights it
//! uses.

use std::process::Output;

use audit_tests::kube_env::ControlPlane;
use audit_tests::{manifests, tools};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

const CHART: &str = "deploy/helm/audit-operator";
const KUBERNETES_VERSION: &str = "1.36.3";

/// Runs a testenv tool against the shared control plane and returns its output, failing the
/// test with the tool's own error text when it fails.
fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    tools::run(tool, args, stdin).unwrap_or_else(|e| panic!("{e:#}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Creates a Pod from the Deployment's pod template with a server-side dry run in a namespace
/// that enforces the restricted Pod Security Standard: admission rejects anything weaker.
async fn assert_pod_template_passes_restricted(deployment: &Deployment) -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane
        .create_namespace_labelled(
            "restricted",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await?;
    let template = deployment
        .spec
        .as_ref()
        .expect("a Deployment has a spec")
        .template
        .clone();
    let mut pod_spec = template.spec.expect("a pod template has a spec");
    // The ServiceAccount lives in the operator's namespace, not in this scratch one.
    pod_spec.service_account_name = None;
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("operator-template".into()),
            labels: template.metadata.and_then(|m| m.labels),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    let pods: Api<Pod> = Api::namespaced(control_plane.admin_client().await?, &namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    pods.create(&dry_run, &pod).await?;
    Ok(())
}

fn rules_of(manifests: &str, kind: &str) -> serde_yaml::Value {
    serde_yaml::Deserializer::from_str(manifests)
        .filter_map(|document| serde_yaml::Value::deserialize(document).ok())
        .find(|value| value.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .and_then(|value| value.get("rules").cloned())
        .unwrap_or_else(|| panic!("the manifests contain a {kind} with rules"))
}

fn rendered_deployment(manifests: &str) -> Deployment {
    serde_yaml::Deserializer::from_str(manifests)
        .filter_map(|document| serde_yaml::Value::deserialize(document).ok())
        .find(|value| value.get("kind").and_then(|k| k.as_str()) == Some("Deployment"))
        .map(|value| serde_yaml::from_value(value).expect("the rendered Deployment is valid"))
        .expect("the manifests contain the operator Deployment")
}

use serde::Deserialize as _;

/// What the operator does on the API server; its ServiceAccount must be allowed each.
const OPERATOR_NEEDS: &[&str] = &[
    "list auditstreams.audit.eventsaudit.io",
    "watch auditconsumers.audit.eventsaudit.io",
    "patch auditstreams.audit.eventsaudit.io --subresource=status",
    "patch auditconsumers.audit.eventsaudit.io --subresource=status",
    "watch secrets",
    "create events.events.k8s.io",
    "patch deployments.apps",
    "create serviceaccounts",
    "delete poddisruptionbudgets.policy",
    "create networkpolicies.networking.k8s.io",
    "patch cronjobs.batch",
    "list pods",
];

/// What it never does; granting any of these would be a needless risk.
const OPERATOR_NEVER_NEEDS: &[&str] = &[
    "create secrets",
    "delete secrets",
    "create pods",
    "delete auditstreams.audit.eventsaudit.io",
    "create clusterrolebindings.rbac.authorization.k8s.io",
    "update deployments.apps",
    "update auditstreams.audit.eventsaudit.io",
    "patch leases.coordination.k8s.io",
];

fn can_i(service_account: &str, check: &str, namespace: &str) -> bool {
    let mut args: Vec<&str> = vec!["auth", "can-i"];
    args.extend(check.split_whitespace());
    args.extend(["--as", service_account, "-n", namespace]);
    let output = tools::output("kubectl", &args, None);
    stdout(&output).trim() == "yes"
}

fn assert_rbac_is_least_privilege(service_account: &str, namespace: &str) {
    for check in OPERATOR_NEEDS {
        assert!(
            can_i(service_account, check, namespace),
            "{service_account} may not `{check}`, which the operator does"
        );
    }
    for check in OPERATOR_NEVER_NEEDS {
        assert!(
            !can_i(service_account, check, namespace),
            "{service_account} may `{check}`, which the operator never needs"
        );
    }
}

#[tokio::test]
async fn helm_chart_installs_without_drift_and_runs_restricted() -> anyhow::Result<()> {
    run("helm", &["lint", "--strict", CHART], None);

    let namespace = ControlPlane::shared().create_namespace("helm").await?;
    run(
        "helm",
        &["install", "audit", CHART, "--namespace", &namespace],
        None,
    );
    let rendered = run(
        "helm",
        &[
            "template",
            "audit",
            CHART,
            "--namespace",
            &namespace,
            "--kube-version",
            KUBERNETES_VERSION,
        ],
        None,
    );

    // A GitOps tool applies the same manifests again and again: nothing may differ.
    let diff = tools::output(
        "kubectl",
        &["diff", "--server-side", "-f", "-"],
        Some(&rendered),
    );
    assert!(
        diff.status.success(),
        "re-applying the chart would change the cluster:\n{}{}",
        stdout(&diff),
        String::from_utf8_lossy(&diff.stderr)
    );
    // A second install of the same release is an upgrade with nothing to do.
    run(
        "helm",
        &["upgrade", "audit", CHART, "--namespace", &namespace],
        None,
    );

    assert_pod_template_passes_restricted(&rendered_deployment(&rendered)).await?;
    // The Kustomize base is generated from the chart; its rights are the chart's.
    let kustomized = run("kubectl", &["kustomize", "deploy/kustomize/base"], None);
    assert_eq!(
        rules_of(&rendered, "ClusterRole"),
        rules_of(&kustomized, "ClusterRole"),
        "the chart's ClusterRole differs from deploy/kustomize/base/rbac.yaml"
    );
    assert_rbac_is_least_privilege(
        &format!("system:serviceaccount:{namespace}:audit-audit-operator"),
        &namespace,
    );
    Ok(())
}

#[tokio::test]
async fn kustomize_overlays_apply_without_drift_and_run_restricted() -> anyhow::Result<()> {
    for overlay in [
        "deploy/kustomize/overlays/development",
        "deploy/kustomize/overlays/production",
    ] {
        let built = run("kubectl", &["kustomize", overlay], None);
        run(
            "kubectl",
            &["apply", "--server-side", "-f", "-"],
            Some(&built),
        );
        let diff = tools::output(
            "kubectl",
            &["diff", "--server-side", "-f", "-"],
            Some(&built),
        );
        assert!(
            diff.status.success(),
            "re-applying {overlay} would change the cluster:\n{}{}",
            stdout(&diff),
            String::from_utf8_lossy(&diff.stderr)
        );
        assert_pod_template_passes_restricted(&rendered_deployment(&built)).await?;
    }
    assert_rbac_is_least_privilege(
        "system:serviceaccount:audit-system:audit-operator",
        "some-tenant-namespace",
    );
    Ok(())
}

/// The Kustomize manifests are the chart rendered (tests/src/manifests.rs): what the committed
/// files say must be what the chart says. `make kustomize-base` rewrites them
/// (`AUDIT_UPDATE_FIXTURES=1`).
#[test]
fn the_kustomize_base_is_generated_from_the_chart() -> anyhow::Result<()> {
    let generated = manifests::generated()?;
    if std::env::var_os("AUDIT_UPDATE_FIXTURES").is_some() {
        return manifests::write(&generated);
    }
    for (path, content) in &generated {
        assert!(
            manifests::committed(path)? == *content,
            "{}/{path} differs from the chart it is generated from: run `make kustomize-base`",
            manifests::KUSTOMIZE_DIR
        );
    }
    Ok(())
}
