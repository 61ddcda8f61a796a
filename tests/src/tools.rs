//! The test environment's command-line tools (kubectl, helm), run against the shared control
//! plane as a user would run them.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::kube_env::ControlPlane;
use crate::testenv::{testenv_bin, workspace_root};

/// Runs `tool` (a test environment binary) in the workspace root with admin credentials and
/// returns its output, whatever its exit status.
pub fn output(tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(testenv_bin(tool))
        .args(args)
        .current_dir(workspace_root())
        .env("KUBECONFIG", ControlPlane::shared().kubeconfig_path())
        // kubectl and helm keep caches and configuration in the home directory; keep them
        // private to this test binary, and removed with its control plane.
        .env("KUBECACHEDIR", scratch_dir("kube-cache"))
        .env("HELM_CACHE_HOME", scratch_dir("helm-cache"))
        .env("HELM_CONFIG_HOME", scratch_dir("helm-config"))
        .env("HELM_DATA_HOME", scratch_dir("helm-data"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("writing the tool's input");
    }
    child.wait_with_output().expect("waiting for the tool")
}

/// Like [`output`], failing with the tool's own error text unless it succeeds; returns its
/// standard output.
pub fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let output = output(tool, args, stdin);
    anyhow::ensure!(
        output.status.success(),
        "{tool} {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A directory in the control plane's, removed with it.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = ControlPlane::shared().dir_path().join("tools").join(name);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}
