//! The container images built from the shipped Dockerfile by `hack/images.sh`: what each one
//! promises, checked on the OCI archives the test node imports (numeric non-root user, no
//! shell or package manager, the CA bundle, a bounded size), its entrypoint run by podman, and
//! hadolint on the Dockerfiles. That containerd imports the archives under the names pod specs
//! use is checked by the test node at every start (`tests/src/node`).
//!
//! The archives come from [`audit_tests::images::images_dir`]: `hack/images.sh` runs once per
//! test binary (it rebuilds only what changed) unless `AUDIT_IMAGES_DIR` names the directory
//! it printed. Like the test node, this needs root and podman.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use audit_tests::images::{
    CONSUMER_IMAGE as CONSUMER, OPERATOR_IMAGE as OPERATOR, PAUSE_IMAGE as PAUSE, images_dir,
};
use audit_tests::testenv::workspace_root;
use serde_json::Value;

/// A regression guard, not a target: the larger image is about two thirds of this today.
const MAX_APPLICATION_IMAGE_BYTES: u64 = 60_000_000;
const MAX_PAUSE_IMAGE_BYTES: u64 = 2_000_000;

/// The archive of the image `name`, as listed in `images.list`.
fn archive(name: &str) -> PathBuf {
    let list_path = images_dir().join("images.list");
    let list = fs::read_to_string(&list_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", list_path.display()));
    let file = list
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('\t'))
        .unwrap_or_else(|| panic!("{name} is not in {}:\n{list}", list_path.display()));
    images_dir().join(file)
}

/// One image of an OCI archive, unpacked into a temporary directory.
struct OciImage {
    name: String,
    /// Holds the blobs that `layers` points into, until the image is dropped.
    _unpacked: tempfile::TempDir,
    config: Value,
    layers: Vec<(PathBuf, u64)>,
}

impl OciImage {
    fn open(name: &str) -> anyhow::Result<Self> {
        let archive = archive(name);
        let dir = tempfile::tempdir()?;
        run(Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(dir.path()))?;
        let index = read_json(&dir.path().join("index.json"))?;
        let manifests = index["manifests"]
            .as_array()
            .context("index.json: manifests")?;
        ensure!(
            manifests.len() == 1,
            "{}: one image expected, index.json lists {}",
            archive.display(),
            manifests.len()
        );
        let manifest = read_json(&blob(dir.path(), &manifests[0])?)?;
        let config = read_json(&blob(dir.path(), &manifest["config"])?)?;
        let layers = manifest["layers"]
            .as_array()
            .context("manifest: layers")?
            .iter()
            .map(|layer| {
                let size = layer["size"].as_u64().context("layer size")?;
                Ok((blob(dir.path(), layer)?, size))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            name: name.to_owned(),
            _unpacked: dir,
            config,
            layers,
        })
    }

    /// The layers' size as transferred (compressed blobs) and as stored after import
    /// (uncompressed tar streams).
    fn sizes(&self) -> anyhow::Result<(u64, u64)> {
        let mut compressed = 0;
        let mut uncompressed = 0;
        for (layer, size) in &self.layers {
            compressed += size;
            let tar = run(Command::new("gzip").arg("-dcf").arg(layer))?;
            uncompressed += u64::try_from(tar.stdout.len())?;
        }
        Ok((compressed, uncompressed))
    }

    /// Every path in the image's filesystem that is not a directory (no leading `/` or
    /// `./`), after applying the layers' whiteouts in order.
    fn files(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut files = BTreeSet::new();
        for (layer, _) in &self.layers {
            let listing = run(Command::new("tar").arg("-tvf").arg(layer))?;
            for line in String::from_utf8(listing.stdout)?.lines() {
                let (kind, name) = tar_verbose_entry(line);
                let path = name.trim_start_matches("./").trim_end_matches('/');
                let (parent, file) = path.rsplit_once('/').unwrap_or(("", path));
                if let Some(hidden) = file.strip_prefix(".wh.") {
                    let gone = if parent.is_empty() {
                        hidden.to_owned()
                    } else {
                        format!("{parent}/{hidden}")
                    };
                    files.retain(|f: &String| f != &gone && !f.starts_with(&format!("{gone}/")));
                } else if kind != 'd' && !path.is_empty() {
                    files.insert(path.to_owned());
                }
            }
        }
        Ok(files)
    }

    /// The content of the regular file `path` (as in [`Self::files`]) from the last layer
    /// that has it.
    fn read_file(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        for (layer, _) in self.layers.iter().rev() {
            let listing = run(Command::new("tar").arg("-tf").arg(layer))?;
            let listing = String::from_utf8(listing.stdout)?;
            if let Some(entry) = listing
                .lines()
                .find(|entry| entry.trim_start_matches("./") == path)
            {
                let content = run(Command::new("tar").arg("-xOf").arg(layer).arg(entry))?;
                return Ok(content.stdout);
            }
        }
        bail!("{}: no layer has {path}", self.name)
    }

    fn config_str(&self, key: &str) -> &str {
        self.config["config"][key].as_str().unwrap_or_default()
    }

    fn config_strings(&self, key: &str) -> Vec<&str> {
        self.config["config"][key]
            .as_array()
            .map(|values| values.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

/// The type letter (`-`, `d`, `l`, ...) and the entry name of a `tar -tv` line:
/// `lrwxrwxrwx 0/0 0 2024-01-01 00:00 bin -> usr/bin` gives `('l', "bin")`.
fn tar_verbose_entry(line: &str) -> (char, &str) {
    let kind = line.chars().next().unwrap_or('?');
    // The name follows five fields: mode, owner/group, size, date, time.
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
    }
    let name = rest.trim_start();
    let name = match kind {
        'l' => name.split(" -> ").next().unwrap_or(name),
        'h' => name.split(" link to ").next().unwrap_or(name),
        _ => name,
    };
    (kind, name)
}

fn blob(dir: &Path, descriptor: &Value) -> anyhow::Result<PathBuf> {
    let digest = descriptor["digest"]
        .as_str()
        .context("descriptor without a digest")?;
    let (algorithm, hex) = digest
        .split_once(':')
        .with_context(|| format!("malformed digest {digest}"))?;
    Ok(dir.join("blobs").join(algorithm).join(hex))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Runs `command`, failing with its output unless it exits 0.
fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// `podman run` as restricted as a hardened pod: no network, read-only root filesystem, no
/// capabilities, no privilege escalation.
fn podman_run() -> Command {
    let mut command = Command::new("podman");
    command.args([
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--read-only",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        // podman's default limits (1048576 open files, 32768 processes) are above the hard
        // limits root has on this machine, which lacks CAP_SYS_RESOURCE to raise them, and
        // runc then fails to start the container. Lowering a limit needs no privilege.
        "--ulimit=nofile=1024:1024",
        "--ulimit=nproc=1024:1024",
    ]);
    command
}

#[test]
fn the_dockerfiles_pass_hadolint() -> anyhow::Result<()> {
    let script = workspace_root().join("hack/images/hadolint.sh");
    run(Command::new("bash").arg(&script))?;
    Ok(())
}

#[test]
fn the_programs_run_as_a_numeric_non_root_user() -> anyhow::Result<()> {
    for (name, user) in [
        (OPERATOR, "65532:65532"),
        (CONSUMER, "65532:65532"),
        // The user registry.k8s.io/pause runs as.
        (PAUSE, "65535:65535"),
    ] {
        let image = OciImage::open(name)?;
        // Numeric, so that the kubelet can enforce runAsNonRoot without an /etc/passwd lookup.
        assert_eq!(image.config_str("User"), user, "{name}: User");
    }
    Ok(())
}

/// Nothing in the images can run a command line or install software, and the only program
/// on the usual paths is the image's own.
#[test]
fn no_image_has_a_shell_or_a_package_manager() -> anyhow::Result<()> {
    const FORBIDDEN: [&str; 14] = [
        "sh", "bash", "dash", "ash", "zsh", "ksh", "busybox", "toybox", "dpkg", "apt", "apt-get",
        "perl", "python3", "env",
    ];
    for (name, program) in [
        (OPERATOR, "usr/local/bin/audit-operator"),
        (CONSUMER, "usr/local/bin/audit-consumer"),
        (PAUSE, "pause"),
    ] {
        let files = OciImage::open(name)?.files()?;
        let found: Vec<&String> = files
            .iter()
            .filter(|path| FORBIDDEN.contains(&path.rsplit('/').next().unwrap_or(path)))
            .collect();
        assert!(found.is_empty(), "{name} contains {found:?}");
        // bin, sbin and lib are symlinks into usr in the runtime base.
        let programs: Vec<&str> = files
            .iter()
            .map(String::as_str)
            .filter(|path| {
                [
                    "bin/",
                    "sbin/",
                    "usr/bin/",
                    "usr/sbin/",
                    "usr/local/bin/",
                    "usr/local/sbin/",
                ]
                .iter()
                .any(|dir| path.starts_with(dir))
                    || !path.contains('/') && *path == program
            })
            .collect();
        assert_eq!(programs, [program], "{name}: programs on the PATH");
    }
    Ok(())
}

#[test]
fn the_entrypoint_prints_the_crate_version() -> anyhow::Result<()> {
    for (name, program) in [(OPERATOR, "audit-operator"), (CONSUMER, "audit-consumer")] {
        let image = OciImage::open(name)?;
        assert_eq!(
            image.config_strings("Entrypoint"),
            [format!("/usr/local/bin/{program}")],
            "{name}: Entrypoint"
        );
        let output = run(podman_run().args([name, "--version"]))?;
        let stdout = String::from_utf8(output.stdout)?;
        assert_eq!(
            stdout.trim(),
            format!("{program} {}", env!("CARGO_PKG_VERSION")),
            "{name} --version"
        );
    }
    Ok(())
}

/// The kubelet's sandbox process: it stays up until the runtime stops the sandbox, and then
/// exits 0 at once instead of waiting for SIGKILL.
#[test]
fn the_pause_program_blocks_until_sigterm_and_exits_0() -> anyhow::Result<()> {
    let name = format!("audit-images-test-pause-{}", std::process::id());
    let mut pause = podman_run()
        .args(["--name", &name, PAUSE])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = Command::new("podman")
                .args([
                    "container",
                    "inspect",
                    "--format",
                    "{{.State.Status}}",
                    &name,
                ])
                .output()?;
            if String::from_utf8_lossy(&state.stdout).trim() == "running" {
                break;
            }
            ensure!(
                pause.try_wait()?.is_none(),
                "{PAUSE} exited before it was stopped"
            );
            ensure!(
                Instant::now() < deadline,
                "{PAUSE} did not start within 30s"
            );
            thread::sleep(Duration::from_millis(100));
        }
        // Still running a moment later: it blocks, it does not exit on its own.
        thread::sleep(Duration::from_millis(500));
        ensure!(pause.try_wait()?.is_none(), "{PAUSE} exited on its own");
        run(Command::new("podman").args(["kill", "--signal", "TERM", &name]))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = pause.try_wait()? {
                ensure!(status.success(), "{PAUSE} ended with {status} on SIGTERM");
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{PAUSE} still runs 10s after SIGTERM"
            );
            thread::sleep(Duration::from_millis(50));
        }
    })();
    if result.is_err() {
        let _ = Command::new("podman")
            .args(["rm", "--force", &name])
            .output();
        let _ = pause.kill();
        let _ = pause.wait();
    }
    result
}

#[test]
fn the_images_are_small() -> anyhow::Result<()> {
    for (name, limit) in [
        (OPERATOR, MAX_APPLICATION_IMAGE_BYTES),
        (CONSUMER, MAX_APPLICATION_IMAGE_BYTES),
        (PAUSE, MAX_PAUSE_IMAGE_BYTES),
    ] {
        let image = OciImage::open(name)?;
        let (compressed, uncompressed) = image.sizes()?;
        println!(
            "{name}: {:.1} MB ({:.1} MB compressed) in {} layers",
            uncompressed as f64 / 1e6,
            compressed as f64 / 1e6,
            image.layers.len()
        );
        assert!(
            uncompressed < limit,
            "{name} is {uncompressed} bytes, over the guard of {limit}: what grew?"
        );
    }
    Ok(())
}

#[test]
fn the_application_images_carry_the_ca_bundle() -> anyhow::Result<()> {
    for name in [OPERATOR, CONSUMER] {
        let image = OciImage::open(name)?;
        let bundle = image.read_file("etc/ssl/certs/ca-certificates.crt")?;
        let certificates = String::from_utf8(bundle)?
            .matches("-----BEGIN CERTIFICATE-----")
            .count();
        assert!(
            certificates > 100,
            "{name}: {certificates} certificates in the CA bundle"
        );
        assert!(
            image
                .config_strings("Env")
                .contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
            "{name}: Env {:?}",
            image.config_strings("Env")
        );
    }
    Ok(())
}
