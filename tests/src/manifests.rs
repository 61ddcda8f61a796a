//! The Kustomize manifests are generated from the Helm chart, so that the two ways to install
//! the operator cannot drift apart: the chart is the one source, and `make kustomize-base`
//! writes the base's objects and the production overlay's PodDisruptionBudget from it (a test
//! fails when the committed files differ, as for the CRDs).
//!
//! The chart is rendered with `helm template` as the release `audit-operator` in
//! `audit-system` (one replica for the base, two for the budget), and then only what belongs
//! to a Helm release goes: the labels naming the release, chart and version (the selector of
//! an existing installation is immutable, and the kustomization adds
//! `app.kubernetes.io/part-of` itself) and each object's namespace (the kustomizations set it,
//! and an overlay's patch finds only objects whose file names none). The kustomizations, the
//! Namespace and the overlays' patches stay written by hand: they have no counterpart in the
//! chart.

use std::process::Command;

use anyhow::Context as _;

use crate::testenv::{testenv_bin, workspace_root};

/// The chart the base is rendered from.
pub const CHART: &str = "deploy/helm/audit-operator";
/// The directory of the Kustomize manifests; generated files are named relative to it.
pub const KUSTOMIZE_DIR: &str = "deploy/kustomize";
/// The release the chart is rendered as.
const RELEASE: &str = "audit-operator";
const NAMESPACE: &str = "audit-system";
/// The chart's values for the base: one replica (the overlays set theirs), and the image
/// under the name the kustomization's `images:` replaces.
const BASE_VALUES: &[&str] = &["replicaCount=1", "image.repository=audit-operator"];
/// The chart's values with which it renders a PodDisruptionBudget, as production runs.
const BUDGET_VALUES: &[&str] = &["replicaCount=2"];

/// Labels a Helm release puts on its objects that the Kustomize base does not carry.
const RELEASE_LABELS: &[&str] = &[
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
];

/// The first lines of every generated file.
const HEADER: &str = "# Generated from the Helm chart (deploy/helm/audit-operator) by `make kustomize-base`;\n\
                      # edit the chart's templates, not this file. tests/src/manifests.rs says how.\n";

/// Each generated file (its path in [`KUSTOMIZE_DIR`]) with its content.
pub fn generated() -> anyhow::Result<Vec<(&'static str, String)>> {
    let base = helm_template(BASE_VALUES)?;
    let mut files = vec![
        (
            "base/serviceaccount.yaml",
            objects(&base, &["ServiceAccount"])?,
        ),
        (
            "base/rbac.yaml",
            objects(
                &base,
                &["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"],
            )?,
        ),
        ("base/deployment.yaml", objects(&base, &["Deployment"])?),
        ("base/service.yaml", objects(&base, &["Service"])?),
    ];
    let placed: usize = files.iter().map(|(_, objects)| objects.len()).sum();
    anyhow::ensure!(
        placed == objects(&base, &[])?.len(),
        "the chart renders a kind no file of the base holds"
    );
    let budget = helm_template(BUDGET_VALUES)?;
    files.push((
        "overlays/production/pdb.yaml",
        objects(&budget, &["PodDisruptionBudget"])?,
    ));
    files
        .into_iter()
        .map(|(path, objects)| {
            anyhow::ensure!(!objects.is_empty(), "the chart renders nothing for {path}");
            let documents = objects
                .iter()
                .map(serde_yaml::to_string)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((path, format!("{HEADER}{}", documents.join("---\n"))))
        })
        .collect()
}

/// The objects of `kinds` (every object, when empty) in `rendered`, without what only a Helm
/// release has.
fn objects(rendered: &str, kinds: &[&str]) -> anyhow::Result<Vec<serde_yaml::Value>> {
    let mut found = Vec::new();
    for document in serde_yaml::Deserializer::from_str(rendered) {
        let mut object = <serde_yaml::Value as serde::Deserialize>::deserialize(document)?;
        let kind = object["kind"].as_str().unwrap_or_default();
        if object.is_null() || !(kinds.is_empty() || kinds.contains(&kind)) {
            continue;
        }
        without_release(&mut object);
        found.push(object);
    }
    Ok(found)
}

/// `helm template` of the chart with `values`.
fn helm_template(values: &[&str]) -> anyhow::Result<String> {
    let scratch = tempfile::tempdir()?;
    let mut command = Command::new(testenv_bin("helm"));
    command
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(["--kube-version", &kubernetes_version()?])
        .current_dir(workspace_root())
        // helm keeps caches and configuration in the home directory; keep them private.
        .env("HELM_CACHE_HOME", scratch.path().join("cache"))
        .env("HELM_CONFIG_HOME", scratch.path().join("config"))
        .env("HELM_DATA_HOME", scratch.path().join("data"));
    for value in values {
        command.args(["--set", value]);
    }
    let output = command.output().context("running helm template")?;
    anyhow::ensure!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The Kubernetes version the tests run (`KUBERNETES` in hack/testenv.versions): the chart
/// states the versions it supports, and helm renders for an old default without it.
fn kubernetes_version() -> anyhow::Result<String> {
    let versions = std::fs::read_to_string(workspace_root().join("hack/testenv.versions"))?;
    versions
        .lines()
        .find_map(|line| line.strip_prefix("KUBERNETES=v"))
        .map(str::to_owned)
        .context("hack/testenv.versions names no KUBERNETES version")
}

/// Removes what only a Helm release has from `object`: its namespace, and the release's
/// labels wherever labels stand (metadata, selectors, the pod template, affinity terms).
fn without_release(object: &mut serde_yaml::Value) {
    if let Some(metadata) = object
        .get_mut("metadata")
        .and_then(serde_yaml::Value::as_mapping_mut)
    {
        metadata.remove("namespace");
    }
    strip_release_labels(object);
}

fn strip_release_labels(value: &mut serde_yaml::Value) {
    match value {
        serde_yaml::Value::Mapping(mapping) => {
            for (key, child) in mapping.iter_mut() {
                let holds_labels =
                    matches!(key.as_str(), Some("labels" | "matchLabels" | "selector"));
                if holds_labels && let Some(labels) = child.as_mapping_mut() {
                    for label in RELEASE_LABELS {
                        labels.remove(*label);
                    }
                }
                strip_release_labels(child);
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(strip_release_labels),
        _ => {}
    }
}

/// The committed file at `path` in [`KUSTOMIZE_DIR`].
pub fn committed(path: &str) -> anyhow::Result<String> {
    let path = workspace_root().join(KUSTOMIZE_DIR).join(path);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Writes the generated files into [`KUSTOMIZE_DIR`].
pub fn write(files: &[(&str, String)]) -> anyhow::Result<()> {
    let dir = workspace_root().join(KUSTOMIZE_DIR);
    for (path, content) in files {
        std::fs::write(dir.join(path), content)?;
    }
    Ok(())
}
