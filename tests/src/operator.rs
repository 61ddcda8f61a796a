//! The operator under test: its CRDs installed from `crds/` (the committed manifests users
//! apply), and the real `audit-operator` binary run against the shared control plane with
//! the rights of its shipped RBAC, not as an administrator.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use tempfile::TempDir;

use crate::kube_env::ControlPlane;
use crate::ports::free_port;
use crate::process::ServerProcess;
use crate::testenv::{cargo_bin, testenv_bin, workspace_root};
use crate::wait;

/// Server-side applies every CRD in `crds/` and waits until each is Established.
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for entry in std::fs::read_dir(workspace_root().join("crds"))? {
        let path = entry?.path();
        if path.file_name().is_some_and(|f| f == "kustomization.yaml") {
            continue;
        }
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("audit-tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        wait::until(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let established = crds
                    .get(&name)
                    .await?
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// The identity the operator runs as in a cluster: the ServiceAccount of the Kustomize base
/// (the chart's ClusterRole has the same rules; a deploy test checks it).
pub const OPERATOR_SERVICE_ACCOUNT: &str = "system:serviceaccount:audit-system:audit-operator";
/// Namespace of the operator's leader-election Role in the Kustomize base.
pub const OPERATOR_NAMESPACE: &str = "audit-system";

/// Applies the RBAC objects of `deploy/kustomize/base` (and their namespace) once per test
/// binary, and returns a kubeconfig that acts as the operator's ServiceAccount. Every test
/// that runs the operator so proves that the shipped RBAC is enough for what it does.
fn operator_kubeconfig() -> anyhow::Result<PathBuf> {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = KUBECONFIG.get() {
        return Ok(path.clone());
    }
    let control_plane = ControlPlane::shared();
    let kubectl_as =
        |kubeconfig: &Path, args: &[&str], input: Option<&str>| -> anyhow::Result<String> {
            let mut child = Command::new(testenv_bin("kubectl"))
                .args(args)
                .current_dir(workspace_root())
                .env("KUBECONFIG", kubeconfig)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let Some(text) = input {
                child
                    .stdin
                    .take()
                    .expect("stdin is piped")
                    .write_all(text.as_bytes())?;
            }
            let output = child.wait_with_output()?;
            anyhow::ensure!(
                output.status.success(),
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(String::from_utf8(output.stdout)?)
        };
    let kubectl = |args: &[&str], input: Option<&str>| {
        kubectl_as(control_plane.kubeconfig_path(), args, input)
    };
    let base = kubectl(&["kustomize", "deploy/kustomize/base"], None)?;
    let rbac: Vec<String> = base
        .split("\n---\n")
        .filter(|document| {
            let kind = serde_yaml::from_str::<serde_yaml::Value>(document)
                .ok()
                .and_then(|value| {
                    value
                        .get("kind")
                        .and_then(|k| k.as_str())
                        .map(str::to_owned)
                });
            matches!(
                kind.as_deref(),
                Some("Namespace" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding")
            )
        })
        .map(str::to_owned)
        .collect();
    kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=audit-tests",
            "-f",
            "-",
        ],
        Some(&rbac.join("\n---\n")),
    )?;
    let path = control_plane.operator_kubeconfig()?;
    Ok(KUBECONFIG.get_or_init(|| path).clone())
}

/// A running `audit-operator` binary with the rights of its shipped RBAC, its health listener
/// on a free loopback port, and its log in a private directory.
pub struct OperatorProcess {
    process: ServerProcess,
    health_port: u16,
    log_path: PathBuf,
    _dir: TempDir,
}

impl OperatorProcess {
    /// Starts `audit-operator run` with `args` (e.g. `--namespace`), fast requeues and retries
    /// suited to tests, and debug logs. The test defaults are environment variables, so a flag
    /// in `args` overrides them.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("audit-operator-")
            .tempdir()?;
        let health_port = free_port();
        let mut command = Command::new(cargo_bin("audit-operator"));
        command
            .arg("run")
            .args(["--health-listen", &format!("127.0.0.1:{health_port}")])
            .args(args)
            .env("AUDIT_OPERATOR_REQUEUE_INTERVAL", "2s")
            .env("AUDIT_OPERATOR_RETRY_BASE_DELAY", "200ms")
            .env("AUDIT_OPERATOR_RETRY_MAX_DELAY", "2s")
            .env("AUDIT_OPERATOR_NATS_TIMEOUT", "2s")
            // A missing AuditStream is reported at once, as the tests of that expect; the
            // grace itself is tested with the flag.
            .env("AUDIT_OPERATOR_MISSING_STREAM_GRACE", "0s")
            .current_dir(dir.path())
            .env("KUBECONFIG", operator_kubeconfig()?)
            .env("RUST_LOG", "info,audit_operator=debug");
        let log_path = dir.path().join("operator.log");
        let process = ServerProcess::spawn("audit-operator", command, &log_path)?;
        Ok(Self {
            process,
            health_port,
            log_path,
            _dir: dir,
        })
    }

    /// The process id, for reading its memory and CPU time from /proc.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Port of `/livez`, `/readyz` and `/metrics`.
    pub fn health_port(&self) -> u16 {
        self.health_port
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail(60)
    }

    /// The operator's log file, for a human to follow.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the process has exited, with its log tail if so.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process.ensure_running()
    }

    /// SIGTERM, then SIGKILL after five seconds.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// SIGKILL: the replica vanishes without releasing anything, as a crashed pod would.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// The operator as users install it on a cluster: the Helm chart with the images the
/// Dockerfile builds, running in pods on the real node with its ServiceAccount token and
/// only the chart's RBAC.
pub struct ChartRelease {
    /// The release namespace (the operator's pods and its Lease).
    pub namespace: String,
    /// The release (and Deployment) name.
    pub name: String,
}

/// The label selector of the release's operator pods.
pub const CHART_RELEASE: &str = "audit-operator";

impl ChartRelease {
    /// `helm install` into `namespace` with `replicas` operator pods and the locally built
    /// images (`imagePullPolicy: Never`: there is no registry), then waits until every pod is
    /// Ready by its own readiness probe. `extra` are more `--set` values.
    pub async fn install(
        namespace: &str,
        replicas: u32,
        extra: &[&str],
    ) -> anyhow::Result<ChartRelease> {
        let (operator_repository, operator_tag) = crate::images::OPERATOR_IMAGE
            .rsplit_once(':')
            .expect("an image name with a tag");
        let (consumer_repository, consumer_tag) = crate::images::CONSUMER_IMAGE
            .rsplit_once(':')
            .expect("an image name with a tag");
        let mut values = vec![
            format!("image.repository={operator_repository}"),
            format!("image.tag={operator_tag}"),
            "image.pullPolicy=Never".to_owned(),
            format!("consumerImage.repository={consumer_repository}"),
            format!("consumerImage.tag={consumer_tag}"),
            format!("replicaCount={replicas}"),
            // Debug logs of the operator's own crate, in a failure message's log tail.
            "logLevel=info\\,audit_operator=debug".to_owned(),
        ];
        values.extend(extra.iter().map(|value| (*value).to_owned()));
        let mut args = vec![
            "install",
            CHART_RELEASE,
            "deploy/helm/audit-operator",
            "--namespace",
            namespace,
        ];
        for value in &values {
            args.extend(["--set", value]);
        }
        crate::tools::run("helm", &args, None)?;
        let release = ChartRelease {
            namespace: namespace.to_owned(),
            name: CHART_RELEASE.to_owned(),
        };
        release.wait_ready(replicas).await?;
        Ok(release)
    }

    /// Waits until the Deployment has `replicas` updated pods, all Ready.
    pub async fn wait_ready(&self, replicas: u32) -> anyhow::Result<()> {
        let client = ControlPlane::shared().admin_client().await?;
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(client, &self.namespace);
        let replicas = i32::try_from(replicas)?;
        wait::until(
            &format!("{replicas} ready operator pod(s)"),
            Duration::from_secs(180),
            Duration::from_millis(500),
            || async {
                let status = deployments
                    .get(&self.name)
                    .await?
                    .status
                    .unwrap_or_default();
                Ok((status.ready_replicas == Some(replicas)
                    && status.updated_replicas == Some(replicas)
                    && status.replicas == Some(replicas))
                .then_some(()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.logs()))
    }

    /// The label selector of the operator's pods.
    pub fn selector(&self) -> String {
        format!("app.kubernetes.io/instance={}", self.name)
    }

    /// The operator pods' recent logs (`kubectl logs`), for failure messages.
    pub fn logs(&self) -> String {
        let selector = self.selector();
        match crate::tools::run(
            "kubectl",
            &[
                "logs",
                "--namespace",
                &self.namespace,
                "--selector",
                &selector,
                "--prefix",
                "--tail=40",
            ],
            None,
        ) {
            Ok(logs) => format!("operator logs:\n{logs}"),
            Err(e) => format!("(no operator logs: {e:#})"),
        }
    }
}
