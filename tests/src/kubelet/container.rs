//! The container runtime of the local kubelet: a pod's one container becomes a local process.
//!
//! The process runs exactly the container's `command`, `args` and `env` (literal values only),
//! as the pod's non-root user when the kubelet itself is root, with a clean environment, a
//! read-only working directory and a session of its own (a Ctrl-C at the terminal does not
//! reach it, as it would not reach a container). Only what a container runtime would change is
//! changed, and each change is the local equivalent of the container's view:
//!
//! - **Image filesystem**: `command[0]` is looked up in a table of image paths to local
//!   binaries (e.g. `/usr/local/bin/audit-consumer` -> `target/debug/audit-consumer`). A
//!   container without `command` is refused: the image's entrypoint is not known here.
//! - **Secret volumes**: each mounted Secret is read from the API server and its items are
//!   written, with the volume's file modes, into the pod's directory; every argument and
//!   environment value naming a path under the mount is rewritten to that directory.
//! - **Pod network**: each pod has its own IP in a cluster; here all pods share 127.0.0.1, so
//!   a listen address `0.0.0.0:<containerPort>` in an argument or environment value is
//!   rewritten to `127.0.0.1:<free port>`, and the probes use that port.
//!
//! Anything else a pod could need (other volume types, `valueFrom`, init containers, probes
//! other than HTTP GET) is refused with an error rather than approximated.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;

use crate::ports::free_port;

/// Everything needed to (re)start a pod's container; prepared once per pod, as a kubelet
/// mounts a pod's volumes once and keeps its network across container restarts.
#[derive(Debug)]
pub(super) struct PreparedContainer {
    pub name: String,
    pub image: String,
    pub binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    hostname: String,
    root: PathBuf,
    owner: Option<(u32, u32)>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub startup: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
}

/// An HTTP GET probe, on the rewritten local port, with the pod's timing.
#[derive(Clone, Debug)]
pub(super) struct ProbeSpec {
    pub port: u16,
    pub path: String,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// Materialises `pod`'s volumes under `dir` and works out its container's local command.
/// Errors say what the kubelet cannot honour; a kubelet would not start such a pod either.
pub(super) async fn prepare(
    binaries: &BTreeMap<String, PathBuf>,
    secrets: &Api<Secret>,
    pod: &Pod,
    dir: &Path,
) -> anyhow::Result<PreparedContainer> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().context("the pod has no spec")?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        bail!("init containers are not supported by the local kubelet");
    }
    let [container] = spec.containers.as_slice() else {
        bail!("the local kubelet runs pods of exactly one container");
    };
    fs::create_dir_all(dir)?;
    // Traversable by the pod's user, as a kubelet's volume directories are.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let (uid, gid) = run_as(spec, container);
    let owner = (unsafe { libc::geteuid() } == 0).then_some((uid, gid));

    let mut rewrites: Vec<(String, String)> = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let local = mount_secret_volume(secrets, spec, &mount.name, dir, owner).await?;
        let mount_path = mount.mount_path.trim_end_matches('/').to_owned();
        rewrites.push((mount_path, local.display().to_string()));
    }

    let mut local_ports = BTreeMap::new();
    for port in container.ports.iter().flatten() {
        local_ports.insert(port.container_port, free_port());
    }
    let rewrite = |value: &str| -> String {
        let mut value = value.to_owned();
        for (container_path, local) in &rewrites {
            value = value.replace(&format!("{container_path}/"), &format!("{local}/"));
            if value.ends_with(container_path.as_str()) {
                value = format!("{}{local}", &value[..value.len() - container_path.len()]);
            }
        }
        for (container_port, local_port) in &local_ports {
            value = value.replace(
                &format!("0.0.0.0:{container_port}"),
                &format!("127.0.0.1:{local_port}"),
            );
        }
        value
    };

    let command = container.command.as_deref().unwrap_or_default();
    let Some(entrypoint) = command.first() else {
        bail!(
            "container {} sets no command; the image's entrypoint is unknown to the local kubelet",
            container.name
        );
    };
    let binary = binaries.get(entrypoint).with_context(|| {
        format!(
            "no local binary stands for {entrypoint} of the image: declare it with KubeletBuilder::binary"
        )
    })?;
    let mut args: Vec<String> = command[1..].iter().map(|a| rewrite(a)).collect();
    args.extend(container.args.iter().flatten().map(|a| rewrite(a)));
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        if var.value_from.is_some() {
            bail!(
                "env {} uses valueFrom, which the local kubelet does not support",
                var.name
            );
        }
        env.push((
            var.name.clone(),
            rewrite(var.value.as_deref().unwrap_or_default()),
        ));
    }
    let probe = |kind: &str, probe: &Option<Probe>| -> anyhow::Result<Option<ProbeSpec>> {
        probe
            .as_ref()
            .map(|p| probe_spec(kind, p, container, &local_ports))
            .transpose()
    };
    // A read-only root filesystem, as far as a working directory can say so.
    let root = dir.join("root");
    fs::create_dir_all(&root)?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o555))?;
    Ok(PreparedContainer {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        binary: binary.clone(),
        args,
        env,
        hostname: pod_name,
        root,
        owner,
        stdout: dir.join("stdout.log"),
        stderr: dir.join("stderr.log"),
        startup: probe("startup", &container.startup_probe)?,
        liveness: probe("liveness", &container.liveness_probe)?,
        readiness: probe("readiness", &container.readiness_probe)?,
    })
}

impl PreparedContainer {
    /// Starts the container's process. Its output is appended to the pod's log files, so the
    /// lines of an earlier run stay readable after a restart, as `kubectl logs --previous` can.
    pub fn spawn(&self) -> anyhow::Result<Child> {
        let mut process = Command::new(&self.binary);
        process.args(&self.args);
        process.env_clear();
        process.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        process.env("HOSTNAME", &self.hostname);
        process.envs(self.env.iter().map(|(k, v)| (k, v)));
        process.current_dir(&self.root);
        if let Some((uid, gid)) = self.owner {
            process.uid(uid).gid(gid);
        }
        let log = |path: &Path| OpenOptions::new().create(true).append(true).open(path);
        process
            .stdin(Stdio::null())
            .stdout(log(&self.stdout)?)
            .stderr(log(&self.stderr)?);
        // SAFETY: setsid and prctl are async-signal-safe and touch no other state. The
        // container dies with the thread that started it (a test's runtime), never outliving
        // the test.
        unsafe {
            process.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        process
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))
    }
}

/// Writes the items of the Secret behind volume `volume_name` into the pod's directory, with
/// the volume's modes and the pod user as owner; returns the directory standing for the mount.
async fn mount_secret_volume(
    secrets: &Api<Secret>,
    spec: &PodSpec,
    volume_name: &str,
    dir: &Path,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<PathBuf> {
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume_name)
        .with_context(|| format!("volume {volume_name} is mounted but not declared"))?;
    let Some(source) = &volume.secret else {
        bail!(
            "volume {} is not a Secret volume; the local kubelet materialises only Secrets",
            volume.name
        );
    };
    let local = dir.join("volumes").join(&volume.name);
    fs::create_dir_all(&local)?;
    fs::set_permissions(&local, fs::Permissions::from_mode(0o755))?;
    let secret_name = source.secret_name.clone().unwrap_or_default();
    let secret = secrets.get_opt(&secret_name).await?;
    let data = match (secret, source.optional.unwrap_or(false)) {
        (Some(secret), _) => secret.data.unwrap_or_default(),
        (None, true) => BTreeMap::new(),
        (None, false) => bail!(
            "Secret {secret_name} of volume {} does not exist: a kubelet would not start the pod",
            volume.name
        ),
    };
    let default_mode = source.default_mode.unwrap_or(0o644);
    let items: Vec<(String, String, i32)> = match &source.items {
        Some(items) => items
            .iter()
            .map(|i| {
                (
                    i.key.clone(),
                    i.path.clone(),
                    i.mode.unwrap_or(default_mode),
                )
            })
            .collect(),
        None => data
            .keys()
            .map(|k| (k.clone(), k.clone(), default_mode))
            .collect(),
    };
    for (key, path, mode) in items {
        let Some(value) = data.get(&key) else {
            bail!("Secret {secret_name} has no key {key}: a kubelet would not start the pod");
        };
        let file = local.join(&path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&file, &value.0)?;
        fs::set_permissions(&file, fs::Permissions::from_mode(u32::try_from(mode)?))?;
        if let Some((uid, gid)) = owner {
            chown(&file, Some(uid), Some(gid))?;
        }
    }
    Ok(local)
}

fn probe_spec(
    kind: &str,
    probe: &Probe,
    container: &Container,
    local_ports: &BTreeMap<i32, u16>,
) -> anyhow::Result<ProbeSpec> {
    let Some(get) = &probe.http_get else {
        bail!("the {kind} probe is not an HTTP GET, the only kind the local kubelet runs");
    };
    let container_port = match &get.port {
        IntOrString::Int(port) => *port,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .with_context(|| {
                format!("the {kind} probe names port {name}, which is not declared")
            })?,
    };
    let port = *local_ports.get(&container_port).with_context(|| {
        format!(
            "the {kind} probe uses port {container_port}, which is not declared in the container's ports"
        )
    })?;
    let seconds = |value: Option<i32>, default: u64| {
        Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
    };
    let count = |value: Option<i32>| value.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    Ok(ProbeSpec {
        port,
        path: get.path.clone().unwrap_or_else(|| "/".to_owned()),
        initial_delay: seconds(probe.initial_delay_seconds, 0),
        period: seconds(probe.period_seconds, 10),
        timeout: seconds(probe.timeout_seconds, 1),
        success_threshold: count(probe.success_threshold).max(1),
        failure_threshold: match count(probe.failure_threshold) {
            0 => 3,
            n => n,
        },
    })
}

/// The user and group a pod's container runs as: the container's security context, else the
/// pod's; the image's `nonroot` user (65532) when neither says.
fn run_as(pod: &PodSpec, container: &Container) -> (u32, u32) {
    let from_container = container.security_context.as_ref();
    let from_pod = pod.security_context.as_ref();
    let uid = from_container
        .and_then(|s| s.run_as_user)
        .or_else(|| from_pod.and_then(|s| s.run_as_user))
        .unwrap_or(65532);
    let gid = from_container
        .and_then(|s| s.run_as_group)
        .or_else(|| from_pod.and_then(|s| s.run_as_group))
        .unwrap_or(uid);
    (
        u32::try_from(uid).unwrap_or(65532),
        u32::try_from(gid).unwrap_or(65532),
    )
}
