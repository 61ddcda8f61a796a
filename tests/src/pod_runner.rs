//! Runs what a Deployment's pods would run, on a machine with no kubelet.
//!
//! For each replica the runner starts exactly the container's `command`, `args` and `env`
//! (literal values only), as the pod's non-root user when the runner itself is root, with
//! a clean environment and a read-only working directory. Only what a container runtime would
//! change is changed, and each change is the local equivalent of the container's view:
//!
//! - **Image filesystem**: `command[0]` is looked up in a table of image paths to local
//!   binaries (e.g. `/usr/local/bin/audit-consumer` -> `target/debug/audit-consumer`). A
//!   container without `command` fails: the image's entrypoint is not known here.
//! - **Secret volumes**: each mounted Secret is read from the API server and its items are
//!   written, with the volume's file modes, into a directory of the replica; every argument
//!   and environment value naming a path under the mount is rewritten to that directory.
//! - **Pod network**: each replica has its own IP in a cluster; here all replicas share
//!   127.0.0.1, so a listen address `0.0.0.0:<containerPort>` in an argument is rewritten to
//!   `127.0.0.1:<free port>`, and the probes use that port.
//!
//! Anything else a pod could need (other volume types, `valueFrom`, init containers) is
//! refused with an error rather than approximated.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};
use kube::api::Api;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ports::free_port;

/// Starts the pods of Deployments as local processes.
#[derive(Clone, Debug, Default)]
pub struct PodRunner {
    /// Image path -> local binary.
    binaries: BTreeMap<String, PathBuf>,
}

impl PodRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares that the image's `image_path` is the local file `local`.
    pub fn binary(mut self, image_path: &str, local: impl Into<PathBuf>) -> Self {
        self.binaries.insert(image_path.to_owned(), local.into());
        self
    }

    /// Starts `spec.replicas` pods of `deployment` (which must carry its namespace), reading
    /// the Secrets its volumes mount through `client`.
    pub async fn start(
        &self,
        client: &kube::Client,
        deployment: &Deployment,
    ) -> anyhow::Result<Pods> {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let namespace = deployment
            .metadata
            .namespace
            .clone()
            .context("the Deployment has no namespace")?;
        let spec = deployment
            .spec
            .as_ref()
            .context("the Deployment has no spec")?;
        let pod = spec
            .template
            .spec
            .as_ref()
            .context("the Deployment has no pod template spec")?;
        if pod.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            bail!("init containers are not supported by the pod runner");
        }
        let [container] = pod.containers.as_slice() else {
            bail!("the pod runner runs pods of exactly one container");
        };
        let grace = Duration::from_secs(
            pod.termination_grace_period_seconds
                .unwrap_or(30)
                .try_into()
                .unwrap_or(30),
        );
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let dir = tempfile::Builder::new()
            .prefix(&format!("audit-pods-{name}-"))
            .tempdir()?;
        // Traversable by the pod's user, as a kubelet's volume directories are.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let replicas = spec.replicas.unwrap_or(1);
        let mut pods = Pods {
            replicas: Vec::new(),
            grace,
            dir,
        };
        for index in 0..replicas {
            let replica_dir = pods.dir.path().join(format!("{name}-{index}"));
            let replica = self
                .start_replica(
                    &secrets,
                    pod,
                    container,
                    &replica_dir,
                    &format!("{name}-{index}"),
                )
                .await?;
            pods.replicas.push(replica);
        }
        Ok(pods)
    }

    async fn start_replica(
        &self,
        secrets: &Api<Secret>,
        pod: &PodSpec,
        container: &Container,
        dir: &Path,
        pod_name: &str,
    ) -> anyhow::Result<Replica> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        let (uid, gid) = run_as(pod, container);
        let owner = (unsafe { libc::geteuid() } == 0).then_some((uid, gid));

        let mut rewrites: Vec<(String, String)> = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .with_context(|| format!("volume {} is mounted but not declared", mount.name))?;
            let Some(source) = &volume.secret else {
                bail!(
                    "volume {} is not a Secret volume; the pod runner materialises only Secrets",
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
                    bail!(
                        "Secret {secret_name} has no key {key}: a kubelet would not start the pod"
                    );
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
            let mount_path = mount.mount_path.trim_end_matches('/').to_owned();
            rewrites.push((mount_path, local.display().to_string()));
        }

        let mut health_ports = BTreeMap::new();
        for port in container.ports.iter().flatten() {
            health_ports.insert(port.container_port, free_port());
        }
        let rewrite = |value: &str| -> String {
            let mut value = value.to_owned();
            for (container_path, local) in &rewrites {
                value = value.replace(&format!("{container_path}/"), &format!("{local}/"));
                if value.ends_with(container_path.as_str()) {
                    value = format!("{}{local}", &value[..value.len() - container_path.len()]);
                }
            }
            for (container_port, local_port) in &health_ports {
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
                "the container sets no command; the image's entrypoint is unknown to the pod runner"
            );
        };
        let binary = self.binaries.get(entrypoint).with_context(|| {
            format!("no local binary stands for {entrypoint} of the image: add it with PodRunner::binary")
        })?;
        let mut process = Command::new(binary);
        process.args(command[1..].iter().map(|a| rewrite(a)));
        process.args(container.args.iter().flatten().map(|a| rewrite(a)));
        process.env_clear();
        process.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        process.env("HOSTNAME", pod_name);
        for var in container.env.iter().flatten() {
            if var.value_from.is_some() {
                bail!(
                    "env {} uses valueFrom, which the pod runner does not support",
                    var.name
                );
            }
            process.env(&var.name, rewrite(var.value.as_deref().unwrap_or_default()));
        }
        // A read-only root filesystem, as far as a working directory can say so.
        let root = dir.join("root");
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o555))?;
        process.current_dir(&root);
        if let Some((uid, gid)) = owner {
            process.uid(uid).gid(gid);
        }
        let stdout = dir.join("stdout.log");
        let stderr = dir.join("stderr.log");
        process
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        // SAFETY: prctl is async-signal-safe and touches no other state. The pod dies with the
        // thread that started it (a test's runtime), never outliving the test.
        unsafe {
            process.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = process
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|get| {
                    let port = match &get.port {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port) => {
                            Some(*port)
                        }
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                            container
                                .ports
                                .iter()
                                .flatten()
                                .find(|p| p.name.as_deref() == Some(name))
                                .map(|p| p.container_port)
                        }
                    }?;
                    Some((
                        health_ports.get(&port).copied()?,
                        get.path.clone().unwrap_or("/".into()),
                    ))
                })
        };
        Ok(Replica {
            name: pod_name.to_owned(),
            child: Some(child),
            stdout,
            stderr,
            readiness: probe(&container.readiness_probe),
        })
    }
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

/// The running pods of one Deployment. Dropping them stops them.
pub struct Pods {
    replicas: Vec<Replica>,
    grace: Duration,
    // Last: removed after the processes reading from it have stopped.
    dir: TempDir,
}

/// One pod: its process, its standard output (the events) and error (diagnostics).
pub struct Replica {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Local port and path of the readiness probe.
    readiness: Option<(u16, String)>,
}

impl Pods {
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    pub fn replicas_mut(&mut self) -> &mut [Replica] {
        &mut self.replicas
    }

    /// The directory holding every replica's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every replica's standard output lines.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.replicas
            .iter()
            .flat_map(Replica::stdout_lines)
            .collect()
    }

    /// Waits until every replica's readiness probe answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        for replica in &mut self.replicas {
            crate::wait::until(
                &format!("pod {} to become ready", replica.name),
                timeout,
                Duration::from_millis(200),
                || {
                    let running = replica.ensure_running();
                    let probe = replica.readiness.clone();
                    async move {
                        running?;
                        Ok(match probe {
                            None => Some(()),
                            Some((port, path)) => http_ok(port, &path).await.then_some(()),
                        })
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Stops every replica as a kubelet would: SIGTERM, then SIGKILL after the pod's
    /// termination grace period. Returns each replica's exit status.
    pub fn stop(&mut self) -> Vec<ExitStatus> {
        for replica in &self.replicas {
            replica.signal(libc::SIGTERM);
        }
        let grace = self.grace;
        self.replicas
            .iter_mut()
            .filter_map(|replica| replica.wait_or_kill(grace))
            .collect()
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Replica {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The diagnostics the process wrote (its standard error).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Path of the file receiving the process's standard output.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// Fails with the diagnostics if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let status = match self.child.as_mut() {
            None => bail!("pod {} was stopped", self.name),
            Some(child) => child.try_wait()?,
        };
        match status {
            None => Ok(()),
            Some(status) => bail!(
                "pod {} exited ({status}); its standard error:\n{}",
                self.name,
                tail(&self.stderr(), 30)
            ),
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child
            && let Ok(pid) = i32::try_from(child.id())
        {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, signal) };
        }
    }

    fn wait_or_kill(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `GET http://127.0.0.1:<port><path>` answers 200, as a kubelet's HTTP probe asks.
async fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.starts_with("HTTP/1.") && text.split(' ').nth(1) == Some("200")
}
