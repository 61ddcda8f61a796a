//! A real Kubernetes node: containerd, the kubelet, kube-scheduler and kube-proxy, attached to
//! the test binary's control plane and running the images the Dockerfile builds.
//!
//! Started once per test binary by [`Node::shared`], and torn down when the binary exits
//! (or, if it was killed, by the next start). Its names and addresses are fixed by
//! `hack/testnode.env`; `hack/testnode.sh` sets up and removes what it changes on the host.
//! One node runs on a machine at a time: a lock serializes test binaries and the demo.
//!
//! What a pod sees is what it would see in a cluster: an IP on a bridge, the `kubernetes`
//! Service (kube-proxy's rules lead it to the API server on the node's address), its service
//! account token, Secret volumes, probes by the kubelet, SIGTERM and the grace period on
//! deletion, and `kubectl logs` / `exec` through the API server.

mod layout;
mod logs;

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::api::Api;
use tempfile::TempDir;

pub use layout::{Layout, layout};
pub use logs::{LogLine, NodeLogs};

use crate::images;
use crate::kube_env::{ControlPlane, Placement};
use crate::ports::free_port;
use crate::process::ServerProcess;
use crate::testenv::{testenv_bin, workspace_root};
use crate::wait;

/// From empty state to a Ready node takes seconds; a loaded 2-core machine may need more.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

static SHARED: OnceLock<Node> = OnceLock::new();

/// The running node of this test binary.
pub struct Node {
    layout: &'static Layout,
    containerd_socket: PathBuf,
    processes: Mutex<Vec<ServerProcess>>,
    /// The components' logs, outside the state directory so that a failure message can
    /// still show them while teardown runs.
    log_dir: Mutex<Option<TempDir>>,
    log_dir_path: PathBuf,
    /// Held for the node's whole life (`flock` on `<state dir>.lock`).
    lock: Mutex<Option<File>>,
}

impl Node {
    /// The node of this test binary, with its control plane, started on first use.
    ///
    /// A test binary that uses the node calls this before anything else that touches the
    /// control plane: the API server must listen where pods reach it.
    pub fn shared() -> &'static Node {
        SHARED.get_or_init(|| {
            let node = std::thread::spawn(Node::start)
                .join()
                .expect("starting the node does not panic")
                .unwrap_or_else(|e| panic!("the test node did not start: {e:#}"));
            // SAFETY: registering a plain extern "C" function with no captured state. It was
            // registered after the control plane's, so it runs first at exit.
            unsafe { libc::atexit(stop_shared_node) };
            node
        })
    }

    /// Whether a node can run on this machine; if not, why (root, Debian packages).
    pub fn runnable() -> anyhow::Result<()> {
        ensure_runnable()
    }

    fn start() -> anyhow::Result<Node> {
        let layout = layout();
        ensure_runnable()?;
        let lock = take_lock(layout)?;
        run_setup_script("up")?;
        let control_plane = ControlPlane::shared_placed(Placement::Node);

        let log_dir = tempfile::Builder::new().prefix("audit-node-").tempdir()?;
        let node = Node {
            layout,
            containerd_socket: layout.state_dir.join("containerd/containerd.sock"),
            processes: Mutex::new(Vec::new()),
            log_dir_path: log_dir.path().to_owned(),
            log_dir: Mutex::new(Some(log_dir)),
            lock: Mutex::new(Some(lock)),
        };
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(node.start_components(control_plane));
        if let Err(e) = started {
            node.stop();
            return Err(e);
        }
        Ok(node)
    }

    async fn start_components(&self, control_plane: &ControlPlane) -> anyhow::Result<()> {
        self.start_containerd().await?;
        self.import_images()?;
        self.start_kubelet(control_plane)?;
        self.start_scheduler(control_plane)?;
        self.start_kube_proxy(control_plane)?;
        self.wait_ready(control_plane).await
    }

    /// The Node object's name.
    pub fn name(&self) -> &str {
        &self.layout.name
    }

    /// The node's address: where the API server and the NATS servers of tests listen, so
    /// that both the test binary and the pods reach them.
    pub fn ip(&self) -> std::net::Ipv4Addr {
        self.layout.node_ip
    }

    /// The last lines of a component's log (`containerd`, `kubelet`, `kube-scheduler`,
    /// `kube-proxy`), for failure messages.
    pub fn log_tail(&self, component: &str) -> String {
        crate::process::log_tail(&self.log_dir_path.join(format!("{component}.log")), 40)
    }

    /// The host PID of a running container's first process, from the `containerID` a pod's
    /// status reports (`containerd://<id>`): the runc shim records it.
    pub fn container_pid(&self, container_id: &str) -> anyhow::Result<u32> {
        let id = container_id
            .strip_prefix("containerd://")
            .ok_or_else(|| anyhow::anyhow!("not a containerd container id: {container_id}"))?;
        let pid_file = self
            .layout
            .state_dir
            .join("containerd/state/io.containerd.runtime.v2.task/k8s.io")
            .join(id)
            .join("init.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", pid_file.display()))?;
        Ok(pid.trim().parse()?)
    }

    /// Tails the container log files of `namespace`'s pods on this node, as a node-level log
    /// agent does (see [`NodeLogs`]).
    pub fn tail_logs(&self, namespace: &str) -> NodeLogs {
        NodeLogs::tail(self.path("pod-logs"), namespace)
    }

    /// SIGKILLs a running container's first process, as an out-of-memory kill or a crash
    /// would end it; the kubelet restarts the container by the pod's restart policy.
    pub fn kill_container(&self, container_id: &str) -> anyhow::Result<()> {
        signal(self.container_pid(container_id)?, libc::SIGKILL)
    }

    /// Stops the runc shim that copies a container's output into its log (SIGSTOP): once the
    /// pipe is full, every write of the container to standard output or error blocks, as
    /// with a log backend that stalls. The shim continues when the returned guard is dropped.
    pub fn stall_output(&self, container_id: &str) -> anyhow::Result<StalledOutput> {
        let pid = self.container_pid(container_id)?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
        let shim: u32 = after_name
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("no parent in /proc/{pid}/stat"))?
            .parse()?;
        let command = std::fs::read_to_string(format!("/proc/{shim}/comm"))?;
        anyhow::ensure!(
            command.trim().starts_with("containerd-shim"),
            "the parent of container process {pid} is {command:?}, not its shim"
        );
        signal(shim, libc::SIGSTOP)?;
        Ok(StalledOutput { shim })
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.layout.state_dir.join(relative)
    }

    fn spawn(&self, name: &str, command: Command) -> anyhow::Result<()> {
        let process = ServerProcess::spawn(
            name,
            command,
            &self.log_dir_path.join(format!("{name}.log")),
        )?;
        self.processes
            .lock()
            .expect("no panic while holding the process list")
            .push(process);
        Ok(())
    }

    /// Polls `check` until it yields a value, failing at once (with the component's log tail)
    /// if a component exits meanwhile.
    async fn wait_for<T, F, Fut>(&self, what: &str, mut check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        wait::until(what, READY_TIMEOUT, Duration::from_millis(250), || {
            let running = self.ensure_all_running();
            let checked = check();
            async move {
                if let Err(exited) = running {
                    return Ok(Some(Err(exited)));
                }
                Ok(checked.await?.map(Ok))
            }
        })
        .await?
    }

    fn ensure_all_running(&self) -> anyhow::Result<()> {
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| anyhow::anyhow!("process list poisoned"))?;
        for process in processes.iter_mut() {
            process.ensure_running()?;
        }
        Ok(())
    }

    async fn start_containerd(&self) -> anyhow::Result<()> {
        let config_path = self.path("containerd/config.toml");
        std::fs::create_dir_all(self.path("containerd"))?;
        std::fs::write(&config_path, self.containerd_config())?;
        let mut containerd = Command::new("containerd");
        containerd.arg("--config").arg(&config_path);
        self.spawn("containerd", containerd)?;
        self.wait_for("containerd to answer on its socket", || async {
            let answered = self.socket_exists() && self.ctr(&["version"]).is_ok();
            Ok(answered.then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\ncontainerd log:\n{}", self.log_tail("containerd")))
    }

    fn socket_exists(&self) -> bool {
        self.containerd_socket.exists()
    }

    /// Everything containerd writes stays under the state directory: root, state, the runc
    /// root, the shims' opt directory and the pods' network namespaces.
    fn containerd_config(&self) -> String {
        let state = self.layout.state_dir.display();
        let socket = self.containerd_socket.display();
        let pause = images::PAUSE_IMAGE;
        format!(
            r#"version = 2
root = "{state}/containerd/root"
state = "{state}/containerd/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This VM's root lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state}/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{state}/cni/net.d"
"#
        )
    }

    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd_socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "ctr {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// No registry is reachable: every image a pod runs is imported here, under the names
    /// [`images`] declares.
    fn import_images(&self) -> anyhow::Result<()> {
        for archive in images::archives()? {
            let archive = archive.to_string_lossy();
            self.ctr(&["images", "import", &archive])?;
        }
        let listed = self.ctr(&["images", "list", "--quiet"])?;
        for image in [
            images::PAUSE_IMAGE,
            images::OPERATOR_IMAGE,
            images::CONSUMER_IMAGE,
        ] {
            anyhow::ensure!(
                listed.lines().any(|line| line == image),
                "image {image} missing after the import; containerd has:\n{listed}"
            );
        }
        Ok(())
    }

    fn start_kubelet(&self, control_plane: &ControlPlane) -> anyhow::Result<()> {
        let kubeconfig = control_plane.kubeconfig_with_certificate(
            &format!("system:node:{}", self.name()),
            Some("system:nodes"),
        )?;
        let ca_path = self.path("kubelet-ca.crt");
        std::fs::write(&ca_path, control_plane.ca_pem())?;
        // No cluster DNS: pods get an empty resolv.conf rather than the host's resolvers, so
        // nothing in a pod can resolve (and dial) a name outside the test network.
        let resolv_conf = self.path("resolv.conf");
        std::fs::write(&resolv_conf, "")?;
        let config_path = self.path("kubelet.yaml");
        std::fs::write(&config_path, self.kubelet_config(&ca_path, &resolv_conf))?;
        let mut kubelet = Command::new(testenv_bin("kubelet"));
        kubelet
            .arg(format!("--config={}", config_path.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--root-dir={}", self.path("kubelet").display()))
            .arg(format!("--cert-dir={}", self.path("kubelet/pki").display()))
            .arg(format!("--hostname-override={}", self.name()))
            .arg(format!("--node-ip={}", self.ip()))
            .arg("--v=1");
        self.spawn("kubelet", kubelet)
    }

    fn kubelet_config(&self, ca_path: &Path, resolv_conf: &Path) -> String {
        let socket = self.containerd_socket.display();
        let state = self.layout.state_dir.display();
        let ip = self.ip();
        let port = free_port();
        let healthz_port = free_port();
        let cgroup_root = &self.layout.cgroup_root;
        let ca = ca_path.display();
        let resolv_conf = resolv_conf.display();
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
address: {ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
# This host is cgroup v1 with no systemd: cgroupfs, under a cgroup of the node's own that
# teardown removes.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: {cgroup_root}
failSwapOn: false
podLogsDir: {state}/pod-logs
volumePluginDir: {state}/volume-plugins
resolvConf: {resolv_conf}
# The imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
serializeImagePulls: false
# Long soaks write tens of MB per pod; the logs are followed through the API, so keep them in
# one file rather than rotated away between two reads.
containerLogMaxSize: 200Mi
"#
        )
    }

    fn start_scheduler(&self, control_plane: &ControlPlane) -> anyhow::Result<()> {
        let kubeconfig =
            control_plane.kubeconfig_with_certificate("system:kube-scheduler", None)?;
        let mut scheduler = Command::new(testenv_bin("kube-scheduler"));
        scheduler
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg("--secure-port=0")
            .arg("--v=0");
        self.spawn("kube-scheduler", scheduler)
    }

    fn start_kube_proxy(&self, control_plane: &ControlPlane) -> anyhow::Result<()> {
        let kubeconfig = control_plane.kubeconfig_with_certificate("system:kube-proxy", None)?;
        let config_path = self.path("kube-proxy.yaml");
        let kubeconfig = kubeconfig.display();
        let name = self.name();
        let pod_cidr = &self.layout.pod_cidr;
        let ip = self.ip();
        let healthz_port = free_port();
        let metrics_port = free_port();
        // Conntrack limits and timeouts of 0 leave the host's as they are; oomScoreAdj 0 is
        // what the process has (lowering it needs CAP_SYS_RESOURCE, which this VM lacks);
        // no NodePorts on localhost (that would switch on route_localnet).
        std::fs::write(
            &config_path,
            format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {name}
mode: iptables
clusterCIDR: {pod_cidr}
bindAddress: {ip}
healthzBindAddress: 127.0.0.1:{healthz_port}
metricsBindAddress: 127.0.0.1:{metrics_port}
nodePortAddresses: ["{ip}/32"]
oomScoreAdj: 0
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#
            ),
        )?;
        let mut proxy = Command::new(testenv_bin("kube-proxy"));
        proxy
            .arg(format!("--config={}", config_path.display()))
            .arg("--v=0");
        self.spawn("kube-proxy", proxy)
    }

    /// The Node reports Ready (its runtime and network are up), and kube-proxy has programmed
    /// the `kubernetes` Service, so a pod can reach the API server.
    async fn wait_ready(&self, control_plane: &ControlPlane) -> anyhow::Result<()> {
        let nodes: Api<NodeObject> = Api::all(control_plane.admin_client().await?);
        let name = self.name();
        self.wait_for(&format!("Node {name} to be Ready"), || async {
            let ready = nodes.get_opt(name).await?.is_some_and(|node| {
                node.status
                    .and_then(|status| status.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            Ok(ready.then_some(()))
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\nkubelet log:\n{}\ncontainerd log:\n{}",
                self.log_tail("kubelet"),
                self.log_tail("containerd")
            )
        })?;
        let service_ip = format!("{}/32", self.layout.kubernetes_service_ip);
        self.wait_for("kube-proxy to program the kubernetes Service", || async {
            let rules = Command::new("iptables")
                .args(["-t", "nat", "-S", "KUBE-SERVICES"])
                .output()?;
            let programmed = String::from_utf8_lossy(&rules.stdout).contains(&service_ip);
            Ok(programmed.then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\nkube-proxy log:\n{}", self.log_tail("kube-proxy")))
    }

    /// Stops every component and removes what the node changed on the host.
    fn stop(&self) {
        if let Ok(mut processes) = self.processes.lock() {
            while let Some(mut process) = processes.pop() {
                process.kill();
            }
        }
        if let Err(e) = run_setup_script("down") {
            eprintln!("test node teardown: {e:#}");
        }
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
        if let Ok(mut log_dir) = self.log_dir.lock() {
            log_dir.take();
        }
    }
}

/// A container's output is stalled while this lives; see [`Node::stall_output`].
#[must_use = "the output continues when this is dropped"]
pub struct StalledOutput {
    shim: u32,
}

impl Drop for StalledOutput {
    fn drop(&mut self) {
        if let Err(e) = signal(self.shim, libc::SIGCONT) {
            eprintln!("cannot continue the shim {}: {e:#}", self.shim);
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) with a pid read from the runtime's state; no memory is involved.
    if unsafe { libc::kill(pid, signal) } != 0 {
        anyhow::bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn stop_shared_node() {
    if let Some(node) = SHARED.get() {
        node.stop();
    }
}

/// Root, and the Debian packages `make testenv` installs; a clear message otherwise.
fn ensure_runnable() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    anyhow::ensure!(
        euid == 0,
        "the real test node needs root: it creates network interfaces, cgroups and mounts \
         and runs containerd and the kubelet. Run the tests as root."
    );
    for (path, package) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("/usr/sbin/iptables", "iptables"),
    ] {
        anyhow::ensure!(
            Path::new(path).exists(),
            "{path} is missing: `make testenv` (as root) installs the Debian package {package}"
        );
    }
    Ok(())
}

/// One node at a time on a machine: its names and addresses are fixed.
fn take_lock(layout: &Layout) -> anyhow::Result<File> {
    let path = PathBuf::from(format!("{}.lock", layout.state_dir.display()));
    let file = File::create(&path)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        anyhow::ensure!(
            error.kind() == ErrorKind::WouldBlock,
            "cannot lock {}: {error}",
            path.display()
        );
        eprintln!(
            "waiting for the test node in use by another test binary or the demo ({})",
            path.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            anyhow::bail!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(file)
}

fn run_setup_script(subcommand: &str) -> anyhow::Result<()> {
    let script = workspace_root().join("hack/testnode.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(subcommand)
        .arg("--locked")
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{} {subcommand} failed ({}):\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
