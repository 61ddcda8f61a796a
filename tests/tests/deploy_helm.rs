//! The chart as a platform team runs it, with the real helm, kubectl and kube-score: values
//! checked by `values.schema.json`, `helm lint --strict` clean with every option on, the
//! rendered chart and the Kustomize overlays free of kube-score findings (accepted ones are
//! annotated, with the reason, on the objects themselves), and an upgrade from the previous
//! chart layout that follows docs/installing-and-upgrading.md: CRDs first, then `helm upgrade`.

use std::process::{Command, Stdio};

use audit_tests::kube_env::ControlPlane;
use audit_tests::testenv::{testenv_bin, workspace_root};
use audit_tests::tools;

const CHART: &str = "deploy/helm/audit-operator";
const KUBERNETES_VERSION: &str = "1.36.3";
/// The chart as released before monitoring and the values schema (0.1.0, commit a3a91d9):
/// what an existing installation runs. A copy in the repository, so that the test does not
/// depend on the clone's history (CI may clone shallow).
const PREVIOUS_CHART: &str = "tests/fixtures/previous-chart/audit-operator";

fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    tools::run(tool, args, stdin).unwrap_or_else(|e| panic!("{e:#}"))
}

fn template_args<'a>(chart: &'a str, values: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "template",
        "audit",
        chart,
        "--namespace",
        "audit-system",
        "--kube-version",
        KUBERNETES_VERSION,
    ];
    for value in values {
        args.extend(["--set", value]);
    }
    args
}

#[test]
fn the_values_schema_rejects_wrong_types_and_unknown_keys_with_a_clear_message() {
    for (value, message) in [
        (
            "replicaCount=two",
            "at '/replicaCount': got string, want integer",
        ),
        (
            "replicaCont=2",
            "at '': additional properties 'replicaCont' not allowed",
        ),
        (
            "monitoring.podMonitor.enable=true",
            "at '/monitoring/podMonitor': additional properties 'enable' not allowed",
        ),
        (
            "logFormat=xml",
            "at '/logFormat': value must be one of 'text', 'json'",
        ),
        ("requeueInterval=1 minute", "at '/requeueInterval': "),
    ] {
        let output = tools::output("helm", &template_args(CHART, &[value]), None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "helm template accepted {value}");
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(message),
            "helm's message for {value} does not say {message:?}:\n{stderr}"
        );
    }
    // What the docs and the tests set must still pass.
    run(
        "helm",
        &template_args(
            CHART,
            &[
                "replicaCount=1",
                "image.pullPolicy=Never",
                "logLevel=info\\,audit_operator=debug",
                "watchNamespace=shop",
                "podDisruptionBudget.minAvailable=50%",
            ],
        ),
        None,
    );
}

#[test]
fn helm_lint_strict_is_clean_with_every_option_on() {
    for values in [
        &[][..],
        &[
            "monitoring.serviceMonitor.enabled=true",
            "monitoring.podMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true",
            "watchNamespace=shop",
            "leaderElection.enabled=false",
            "replicaCount=1",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        for value in values {
            args.extend(["--set", value]);
        }
        let output = run("helm", &args, None);
        assert!(
            !output.contains("[WARNING]") && !output.contains("[ERROR]"),
            "{output}"
        );
    }
}

/// kube-score on manifests; warnings fail too. Its CRITICAL and WARNING lines are the message.
fn assert_kube_score_clean(what: &str, manifests: &str) {
    let mut child = Command::new(testenv_bin("kube-score"))
        .args([
            "score",
            "--exit-one-on-warning",
            "--kubernetes-version",
            "v1.36",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kube-score");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin is piped"),
        manifests.as_bytes(),
    )
    .expect("writing the manifests");
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("waiting for kube-score");
    assert!(
        output.status.success(),
        "kube-score finds problems in {what}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn kube_score_finds_nothing_in_the_chart_and_the_overlays() {
    let chart = run(
        "helm",
        &template_args(
            CHART,
            &[
                "monitoring.serviceMonitor.enabled=true",
                "monitoring.podMonitor.enabled=true",
                "monitoring.prometheusRule.enabled=true",
            ],
        ),
        None,
    );
    assert_kube_score_clean("the chart", &chart);
    for overlay in ["development", "production"] {
        let built = run(
            "kubectl",
            &["kustomize", &format!("deploy/kustomize/overlays/{overlay}")],
            None,
        );
        assert_kube_score_clean(&format!("overlays/{overlay}"), &built);
    }
}

/// `kubectl diff --server-side` of `manifests` against the cluster: whether anything differs.
fn differs(manifests: &str) -> bool {
    let output = tools::output(
        "kubectl",
        // Helm created these objects: without forcing, the dry run stops at its fields.
        &["diff", "--server-side", "--force-conflicts", "-f", "-"],
        Some(manifests),
    );
    match output.status.code() {
        Some(0) => false,
        Some(1) => true,
        _ => panic!(
            "kubectl diff failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[tokio::test]
async fn an_installation_of_the_previous_chart_upgrades_as_documented() -> anyhow::Result<()> {
    let previous_chart = PREVIOUS_CHART;
    let namespace = ControlPlane::shared().create_namespace("upgrade").await?;

    run(
        "helm",
        &[
            "install",
            "audit",
            previous_chart,
            "--namespace",
            &namespace,
        ],
        None,
    );
    let current_crds = run("helm", &["show", "crds", CHART], None);
    assert!(
        differs(&current_crds),
        "the previous chart's CRDs are the current ones: the test proves nothing"
    );

    // The upgrade path of docs/installing-and-upgrading.md: Helm never upgrades a chart's crds/, so they go first.
    run(
        "kubectl",
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&current_crds),
    );
    run(
        "helm",
        &["upgrade", "audit", CHART, "--namespace", &namespace],
        None,
    );

    assert!(
        !differs(&current_crds),
        "the CRDs on the server are not the chart's after the upgrade"
    );
    let mut args = template_args(CHART, &[]);
    args[4] = &namespace;
    args.extend(["--show-only", "templates/deployment.yaml"]);
    let deployment = run("helm", &args, None);
    assert!(
        !differs(&deployment),
        "the operator Deployment is not the current chart's after the upgrade"
    );
    let chart_label = run(
        "kubectl",
        &[
            "-n",
            &namespace,
            "get",
            "deployment",
            "audit-audit-operator",
            "-o",
            "jsonpath={.metadata.labels.helm\\.sh/chart}",
        ],
        None,
    );
    let version = std::fs::read_to_string(workspace_root().join(CHART).join("Chart.yaml"))?
        .lines()
        .find_map(|line| line.strip_prefix("version: ").map(str::to_owned))
        .expect("Chart.yaml has a version");
    assert_eq!(chart_label, format!("audit-operator-{version}"));
    Ok(())
}
