//! The operator under test: its CRDs installed from `crds/` (the committed manifests users
//! apply), and the real `audit-operator` binary run against the shared control plane.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use tempfile::TempDir;

use crate::kube_env::ControlPlane;
use crate::ports::free_port;
use crate::process::ServerProcess;
use crate::testenv::{cargo_bin, workspace_root};
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

/// A running `audit-operator` binary with admin credentials, its health listener on a free
/// loopback port, and its log in a private directory.
pub struct OperatorProcess {
    process: ServerProcess,
    health_port: u16,
    log_path: PathBuf,
    _dir: TempDir,
}

impl OperatorProcess {
    /// Starts `audit-operator run` with `args` (e.g. `--namespace`), fast requeues and retries
    /// suited to tests, and debug logs.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("audit-operator-")
            .tempdir()?;
        let health_port = free_port();
        let mut command = Command::new(cargo_bin("audit-operator"));
        command
            .arg("run")
            .args(["--health-listen", &format!("127.0.0.1:{health_port}")])
            .args(["--requeue-interval", "2s"])
            .args(["--retry-base-delay", "200ms", "--retry-max-delay", "2s"])
            .args(["--nats-timeout", "2s"])
            .args(args)
            .current_dir(dir.path())
            .env("KUBECONFIG", ControlPlane::shared().kubeconfig_path())
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
