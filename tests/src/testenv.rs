//! Where the test environment's binaries are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
}

/// The directory holding nats-server, etcd, kube-apiserver, kube-controller-manager and helm.
///
/// `AUDIT_TESTENV_BIN` (set by `make test`) names it directly; otherwise `hack/testenv.sh`
/// is run once per test binary (it only builds what its cache lacks) and its last line is
/// the directory.
pub fn bin_dir() -> &'static Path {
    static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();
    BIN_DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("AUDIT_TESTENV_BIN") {
            return PathBuf::from(dir);
        }
        let script = workspace_root().join("hack/testenv.sh");
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
        let last_line = stdout.lines().last().unwrap_or_default().trim();
        PathBuf::from(last_line)
    })
}

/// The path of a test environment binary, e.g. `testenv_bin("nats-server")`.
pub fn testenv_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make testenv`",
        path.display()
    );
    path
}

/// The path of one of the workspace's own binaries (`audit-operator`, `audit-consumer`),
/// built with the same profile as the tests.
///
/// Cargo builds another package's binaries only when asked, so `make test` runs
/// `cargo build --bins` before the tests; a missing binary fails with that instruction
/// instead of testing a stale or absent build.
pub fn cargo_bin(name: &str) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target_dir.join(profile).join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` (make test does) before the tests",
        path.display()
    );
    path
}
