//! The container images the real node runs, built from the repository's Dockerfile by
//! `hack/images.sh`: the operator, the consumer and the node's pause image, saved as archives.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::testenv::workspace_root;

/// The operator image as pods name it (`imagePullPolicy: Never`: there is no registry).
pub const OPERATOR_IMAGE: &str = "localhost/audit-operator:dev";
/// The consumer image as pods name it.
pub const CONSUMER_IMAGE: &str = "localhost/audit-consumer:dev";
/// The kubelet's sandbox image.
pub const PAUSE_IMAGE: &str = "localhost/audit-pause:1";

/// The directory holding the image archives.
///
/// `AUDIT_IMAGES_DIR` (set by `make test`) names it directly; otherwise `hack/images.sh` is
/// run once per test binary (it rebuilds only what changed) and its last line is the
/// directory.
pub fn images_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("AUDIT_IMAGES_DIR") {
            return PathBuf::from(dir);
        }
        let script = workspace_root().join("hack/images.sh");
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
    })
}

/// Every image archive in [`images_dir`].
pub fn archives() -> anyhow::Result<Vec<PathBuf>> {
    let mut archives = Vec::new();
    for entry in std::fs::read_dir(images_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == "tar") {
            archives.push(path);
        }
    }
    anyhow::ensure!(
        !archives.is_empty(),
        "no image archives in {}: run hack/images.sh",
        images_dir().display()
    );
    archives.sort();
    Ok(archives)
}
