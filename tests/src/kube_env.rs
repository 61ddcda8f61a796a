//! A real Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager, started
//! once per test binary and stopped when it exits. Each test gets a namespace of its own.
//!
//! Alone ([`ControlPlane::shared`]) it listens on 127.0.0.1 and no container runs; everything
//! else is the real thing: schema validation and CEL rules, RBAC, Pod Security admission,
//! garbage collection, the Deployment, ReplicaSet, CronJob and Job controllers. With a real
//! node ([`crate::node::Node::shared`]) the API server listens on the node's address instead, where
//! the kubelet and the pods (through the `kubernetes` Service) reach it, authorizes kubelets
//! with the Node authorizer and reaches them for `kubectl logs` and `exec`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

use crate::certs::{TestCa, service_account_key};
use crate::ports::{free_ports, retry_lost_port_race};
use crate::process::ServerProcess;
use crate::testenv::testenv_bin;
use crate::{node, wait};

/// A loaded 2-core machine can take most of a minute to bring kube-apiserver to ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The bearer token of the `system:masters` user the harness uses.
const ADMIN_TOKEN: &str = "audit-tests-admin-token";
/// The bearer token of the operator under test, authenticated as the ServiceAccount the
/// chart gives it ([`crate::operator::OPERATOR_SERVICE_ACCOUNT`]), in its groups.
const OPERATOR_TOKEN: &str = "audit-tests-operator-token";
const OPERATOR_USER: &str = crate::operator::OPERATOR_SERVICE_ACCOUNT;
const OPERATOR_GROUPS: &str = "system:serviceaccounts,system:serviceaccounts:audit-system";

static SHARED: OnceLock<ControlPlane> = OnceLock::new();

/// Where the API server listens, and whom it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// 127.0.0.1, for the test binary and the processes it starts.
    Loopback,
    /// The real node's address (hack/testnode.env), for the node's kubelet and pods as well.
    Node,
}

/// The shared control plane of one test binary.
pub struct ControlPlane {
    placement: Placement,
    api_url: String,
    kubeconfig_path: PathBuf,
    ca_pem: String,
    ca: TestCa,
    /// How kube-apiserver was started, to start it again the same way.
    apiserver_args: Vec<String>,
    processes: Mutex<Vec<ServerProcess>>,
    dir: Mutex<Option<TempDir>>,
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use.
    ///
    /// It runs on its own thread and runtime so that no test's runtime owns it, and it is
    /// stopped (processes killed, files removed) when the test binary exits, panicking tests
    /// included; if the binary is killed outright, the kernel kills the servers.
    ///
    /// In a test binary that runs a real node, this is the node's control plane.
    pub fn shared() -> &'static ControlPlane {
        Self::shared_placed(Placement::Loopback)
    }

    /// The control plane of this test binary, listening where a real node's kubelet and pods
    /// reach it. Called by [`crate::node::Node::shared`] after it set up the node's network.
    pub(crate) fn shared_placed(placement: Placement) -> &'static ControlPlane {
        let control_plane = SHARED.get_or_init(|| {
            let control_plane = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for starting the control plane")
                    .block_on(ControlPlane::start(placement))
            })
            .join()
            .expect("starting the control plane does not panic")
            .unwrap_or_else(|e| panic!("the test control plane did not start: {e:#}"));
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe { libc::atexit(stop_shared_control_plane) };
            control_plane
        });
        assert!(
            placement == Placement::Loopback || control_plane.placement == placement,
            "this test binary started its control plane without the real node: a test binary \
             that uses the node calls Node::shared() before anything else"
        );
        control_plane
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager in a new directory, each once
    /// the one before it is ready.
    async fn start(placement: Placement) -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new().prefix("audit-kube-").tempdir()?;
        let path = |name: &str| dir.path().join(name);
        let ca = write_certificates(dir.path())?;
        let etcd = retry_lost_port_race("etcd", || start_etcd(dir.path())).await?;

        let listen_ip = match placement {
            Placement::Loopback => std::net::Ipv4Addr::LOCALHOST,
            Placement::Node => node::layout().node_ip,
        };
        std::fs::write(path("audit-policy.yaml"), audit_policy())?;
        let (apiserver, apiserver_args, api_url) = retry_lost_port_race("kube-apiserver", || {
            start_apiserver(dir.path(), placement, &etcd.url, listen_ip)
        })
        .await?;

        let kubeconfig_path = path("admin.kubeconfig");
        std::fs::write(
            &kubeconfig_path,
            kubeconfig_yaml(&api_url, &ca.cert_pem(), &format!("token: {ADMIN_TOKEN}")),
        )?;
        let control_plane = ControlPlane {
            placement,
            api_url,
            kubeconfig_path,
            ca_pem: ca.cert_pem(),
            ca,
            apiserver_args,
            processes: Mutex::new(vec![etcd.process, apiserver]),
            dir: Mutex::new(None),
        };
        control_plane.wait_api_ready().await?;
        control_plane.start_controller_manager(dir.path()).await?;
        *control_plane
            .dir
            .lock()
            .expect("no panic while holding the dir") = Some(dir);
        Ok(control_plane)
    }

    /// Starts kube-controller-manager with the controllers the tests rely on, and waits until
    /// it works: its service-account controller has filled in the `default` namespace.
    async fn start_controller_manager(&self, dir: &Path) -> anyhow::Result<()> {
        let mut controller_manager = Command::new(testenv_bin("kube-controller-manager"));
        controller_manager
            .arg(format!("--kubeconfig={}", self.kubeconfig_path.display()))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg("--secure-port=0")
            .arg("--use-service-account-credentials=false")
            .arg(format!(
                "--service-account-private-key-file={}",
                dir.join("sa.key").display()
            ))
            .arg(format!("--root-ca-file={}", dir.join("ca.crt").display()))
            .arg(format!("--controllers={}", controllers(self.placement)))
            .arg("--concurrent-gc-syncs=5")
            .arg("--v=0");
        self.processes
            .lock()
            .expect("no panic while holding the process list")
            .push(ServerProcess::spawn(
                "kube-controller-manager",
                controller_manager,
                &dir.join("kube-controller-manager.log"),
            )?);
        let service_accounts: Api<ServiceAccount> =
            Api::namespaced(self.admin_client().await?, "default");
        let working = wait::until(
            "kube-controller-manager to create the default ServiceAccount",
            READY_TIMEOUT,
            Duration::from_millis(250),
            || {
                let service_accounts = service_accounts.clone();
                let processes = &self.processes;
                async move {
                    ensure_all_running(processes)?;
                    Ok(service_accounts.get_opt("default").await?.map(|_| ()))
                }
            },
        )
        .await;
        working.map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\nkube-controller-manager log:\n{}",
                self.log_tail("kube-controller-manager")
            )
        })
    }

    async fn wait_api_ready(&self) -> anyhow::Result<()> {
        let admin = self.admin_client().await?;
        let readiness = wait::until(
            "kube-apiserver /readyz to answer ok",
            READY_TIMEOUT,
            Duration::from_millis(250),
            || {
                let admin = admin.clone();
                async move {
                    ensure_all_running(&self.processes)?;
                    let request = http::Request::get("/readyz").body(Vec::new())?;
                    Ok(admin.request_text(request).await.ok().map(|_| ()))
                }
            },
        )
        .await;
        readiness.map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\nkube-apiserver log:\n{}",
                self.log_tail("kube-apiserver")
            )
        })
    }

    /// Stops kube-apiserver (SIGTERM, as a rolling control-plane upgrade does) and starts it
    /// again with the same flags, port and storage; returns once it is ready again.
    pub async fn restart_api_server(&self) -> anyhow::Result<()> {
        let log_path = self.dir_path().join("kube-apiserver.log");
        let mut stopped = {
            let mut processes = self
                .processes
                .lock()
                .map_err(|_| anyhow::anyhow!("process list poisoned"))?;
            let index = processes
                .iter()
                .position(|p| p.name() == "kube-apiserver")
                .ok_or_else(|| anyhow::anyhow!("kube-apiserver is not running"))?;
            processes.remove(index)
        };
        tokio::task::spawn_blocking(move || stopped.stop()).await?;
        let restarted = spawn_apiserver(&self.apiserver_args, &log_path)?;
        self.processes
            .lock()
            .map_err(|_| anyhow::anyhow!("process list poisoned"))?
            .push(restarted);
        self.wait_api_ready().await
    }

    /// The API server's audit events so far: every list and watch request, and every
    /// request of the operator's ServiceAccount (who, from where, what), one JSON object each.
    pub fn audit_events(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(self.dir_path().join("audit.log"))?;
        text.lines()
            .map(|line| Ok(serde_json::from_str(line)?))
            .collect()
    }

    /// `https://127.0.0.1:<port>`, or the node's address with a real node.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// A kubeconfig file with admin credentials, for child processes (the operator binary,
    /// kubectl, helm).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// A kubeconfig file that authenticates with a client certificate for `user` (in
    /// `group`), signed by the cluster's CA: the identity of a node's components (a kubelet
    /// is `system:node:<name>` in `system:nodes`).
    pub(crate) fn kubeconfig_with_certificate(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> anyhow::Result<PathBuf> {
        let certificate = match group {
            Some(group) => self.ca.client_in_group(user, group)?,
            None => self.ca.client(user)?,
        };
        let file_name = file_name_for(user);
        let dir = self.dir_path();
        let cert_path = dir.join(format!("{file_name}.crt"));
        let key_path = dir.join(format!("{file_name}.key"));
        std::fs::write(&cert_path, &certificate.cert_pem)?;
        std::fs::write(&key_path, &certificate.key_pem)?;
        let path = dir.join(format!("{file_name}.kubeconfig"));
        let auth = format!(
            "client-certificate: {}\n    client-key: {}",
            cert_path.display(),
            key_path.display()
        );
        std::fs::write(&path, kubeconfig_yaml(&self.api_url, &self.ca_pem, &auth))?;
        Ok(path)
    }

    /// The directory of the control plane's files (certificates, kubeconfigs, logs), removed
    /// when the test binary exits.
    pub fn dir_path(&self) -> &Path {
        self.kubeconfig_path
            .parent()
            .expect("the kubeconfig lives in the control plane's directory")
    }

    /// A kubeconfig file that authenticates as the operator's ServiceAccount (with its
    /// groups) by a token of its own: a child process using it (the operator binary) has
    /// exactly the rights RBAC gives the operator, and the audit log names it as the user,
    /// as it would a pod's ServiceAccount token.
    pub fn operator_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir_path().join("operator.kubeconfig");
        std::fs::write(
            &path,
            kubeconfig_yaml(
                &self.api_url,
                &self.ca_pem,
                &format!("token: {OPERATOR_TOKEN}"),
            ),
        )?;
        Ok(path)
    }

    /// The PEM of the CA that signed the API server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client with `system:masters` rights. Each call builds a new client, because a client
    /// belongs to the tokio runtime it was made on and every test has its own.
    pub async fn admin_client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.admin_config().await?)?)
    }

    /// A client acting as `user` in `groups` (plus `system:authenticated`), whose rights come
    /// only from the RBAC objects a test applies. Made by impersonation, which the API server
    /// authorizes exactly as it would that user's own credentials.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> anyhow::Result<kube::Client> {
        let mut config = self.admin_config().await?;
        config.auth_info.impersonate = Some(user.to_owned());
        let mut all_groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        all_groups.push("system:authenticated".to_owned());
        config.auth_info.impersonate_groups = Some(all_groups);
        Ok(kube::Client::try_from(config)?)
    }

    async fn admin_config(&self) -> anyhow::Result<kube::Config> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig_path)?;
        Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// Creates a namespace with a unique name starting with `prefix` and waits until its
    /// `default` ServiceAccount exists, since admission rejects pods in a namespace that lacks it.
    pub async fn create_namespace(&self, prefix: &str) -> anyhow::Result<String> {
        self.create_namespace_labelled(prefix, &[]).await
    }

    /// Like [`create_namespace`](Self::create_namespace), with labels (e.g. a Pod Security
    /// level).
    pub async fn create_namespace_labelled(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let client = self.admin_client().await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "generateName": format!("{prefix}-") }
        }))?;
        if !labels.is_empty() {
            namespace.metadata.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
        }
        let created = namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        let name = created
            .metadata
            .name
            .expect("the server names a generated namespace");
        let service_accounts: Api<ServiceAccount> = Api::namespaced(client, &name);
        wait::until(
            &format!("the default ServiceAccount in namespace {name}"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async { Ok(service_accounts.get_opt("default").await?.map(|_| ())) },
        )
        .await?;
        Ok(name)
    }

    /// The last lines of one server's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`), for failure messages.
    pub fn log_tail(&self, server: &str) -> String {
        crate::process::log_tail(&self.dir_path().join(format!("{server}.log")), 40)
    }

    fn stop(&self) {
        if let Ok(mut processes) = self.processes.lock() {
            // Reverse start order: the controller manager, then the API server, then etcd.
            while let Some(mut process) = processes.pop() {
                process.stop();
            }
        }
        if let Ok(mut dir) = self.dir.lock() {
            dir.take();
        }
    }
}

extern "C" fn stop_shared_control_plane() {
    if let Some(control_plane) = SHARED.get() {
        control_plane.stop();
    }
}

/// Writes the cluster's certificates and keys into `dir`: a CA, the API server's serving
/// certificate (for its names and the node's and the `kubernetes` Service's addresses), its
/// client certificate towards kubelets, the service-account key pair and the admin token.
fn write_certificates(dir: &Path) -> anyhow::Result<TestCa> {
    let layout = node::layout();
    let ca = TestCa::new("audit-tests-ca")?;
    let serving = ca.server(
        "kube-apiserver",
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        &[layout.node_ip.into(), layout.kubernetes_service_ip.into()],
    )?;
    // The API server's identity towards kubelets (logs, exec, port-forward).
    let kubelet_client = ca.client_in_group("kube-apiserver-kubelet-client", "system:masters")?;
    let (sa_private, sa_public) = service_account_key()?;
    for (name, content) in [
        ("kubelet-client.crt", kubelet_client.cert_pem.as_str()),
        ("kubelet-client.key", kubelet_client.key_pem.as_str()),
        ("ca.crt", ca.cert_pem().as_str()),
        ("apiserver.crt", serving.cert_pem.as_str()),
        ("apiserver.key", serving.key_pem.as_str()),
        ("sa.key", sa_private.as_str()),
        ("sa.pub", sa_public.as_str()),
    ] {
        std::fs::write(dir.join(name), content)?;
    }
    std::fs::write(
        dir.join("tokens.csv"),
        format!(
            "{ADMIN_TOKEN},audit-tests-admin,1000,\"system:masters\"\n\
             {OPERATOR_TOKEN},{OPERATOR_USER},1001,\"{OPERATOR_GROUPS}\"\n"
        ),
    )?;
    Ok(ca)
}

/// A running etcd and its client URL.
struct Etcd {
    process: ServerProcess,
    url: String,
}

/// Starts etcd with its data in `dir`, and waits until it reports healthy.
async fn start_etcd(dir: &Path) -> anyhow::Result<Etcd> {
    let [port, peer_port] = free_ports(2)[..] else {
        unreachable!("free_ports(2) returns two ports")
    };
    let url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    // A retry after a lost port starts from an empty data directory.
    let data_dir = dir.join("etcd");
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)?;
    }
    let mut etcd = Command::new(testenv_bin("etcd"));
    etcd.arg("--name=default")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .arg("--unsafe-no-fsync=true")
        .arg("--log-level=warn");
    let log_path = dir.join("etcd.log");
    // A retry's log starts empty, so that the tail it fails with is its own.
    let _ = std::fs::remove_file(&log_path);
    let mut process = ServerProcess::spawn("etcd", etcd, &log_path)?;
    process
        .wait_listening(std::net::Ipv4Addr::LOCALHOST, port, READY_TIMEOUT)
        .await?;
    wait::until(
        "etcd to report healthy",
        READY_TIMEOUT,
        Duration::from_millis(100),
        || async { Ok(etcd_healthy(port).await.then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\netcd log:\n{}", process.log_tail(30)))?;
    Ok(Etcd { process, url })
}

/// kube-apiserver's flags: storage in etcd at `etcd_url`, files from `dir`, listening on
/// `listen_ip:port`; token and certificate authentication, Node and RBAC authorization, and
/// an audit log of lists and watches and of the operator's requests.
fn apiserver_args(
    dir: &Path,
    placement: Placement,
    etcd_url: &str,
    listen_ip: std::net::Ipv4Addr,
    port: u16,
) -> Vec<String> {
    let path = |name: &str| dir.join(name).display().to_string();
    let mut args = vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--cert-dir={}", path("apiserver-certs")),
        format!("--tls-cert-file={}", path("apiserver.crt")),
        format!("--tls-private-key-file={}", path("apiserver.key")),
        format!("--secure-port={port}"),
        format!("--bind-address={listen_ip}"),
        format!("--advertise-address={listen_ip}"),
        format!("--service-cluster-ip-range={}", node::layout().service_cidr),
        "--allow-privileged=true".to_owned(),
        "--authorization-mode=Node,RBAC".to_owned(),
        "--enable-admission-plugins=NodeRestriction".to_owned(),
        format!(
            "--kubelet-client-certificate={}",
            path("kubelet-client.crt")
        ),
        format!("--kubelet-client-key={}", path("kubelet-client.key")),
        // The node's name does not resolve; its InternalIP is the address to dial.
        "--kubelet-preferred-address-types=InternalIP".to_owned(),
        format!("--token-auth-file={}", path("tokens.csv")),
        format!("--client-ca-file={}", path("ca.crt")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        format!("--service-account-key-file={}", path("sa.pub")),
        format!("--service-account-signing-key-file={}", path("sa.key")),
        // Who listed and watched what, for tests of the operator's API traffic.
        format!("--audit-policy-file={}", path("audit-policy.yaml")),
        format!("--audit-log-path={}", path("audit.log")),
        "--enable-priority-and-fairness=false".to_owned(),
        "--v=0".to_owned(),
    ];
    if placement == Placement::Loopback {
        // The lease reconciler would publish 127.0.0.1 as the `kubernetes` Service's
        // endpoint, which the API rejects as a loopback address, every few seconds. On
        // the node it publishes the node's address, which pods reach.
        args.push("--endpoint-reconciler-type=none".to_owned());
    }
    args
}

/// The controllers of kube-controller-manager: what the tests rely on, and no more.
fn controllers(placement: Placement) -> String {
    let mut controllers = vec![
        "garbagecollector",
        "namespace",
        "deployment",
        "replicaset",
        "serviceaccount",
        "serviceaccount-token",
        "disruption",
        // The kube-root-ca.crt ConfigMap that every pod's service account token volume needs.
        "root-ca-cert-publisher",
        // The EndpointSlices kube-proxy programs Services from.
        "endpointslice",
        // The archive's scheduled verification: a CronJob, and the Jobs it starts.
        "cronjob",
        "job",
    ];
    if placement == Placement::Node {
        // Lifts the not-ready taint the kubelet registers its Node with, once it is Ready, and
        // judges the node's health from its Lease, as in a cluster.
        controllers.push("nodelifecycle");
    }
    controllers.join(",")
}

fn ensure_all_running(processes: &Mutex<Vec<ServerProcess>>) -> anyhow::Result<()> {
    let mut processes = processes
        .lock()
        .map_err(|_| anyhow::anyhow!("process list poisoned"))?;
    for process in processes.iter_mut() {
        process.ensure_running()?;
    }
    Ok(())
}

async fn etcd_healthy(port: u16) -> bool {
    crate::http::get(port, "/health")
        .await
        .is_ok_and(|response| {
            response.status == 200 && response.body.contains("\"health\":\"true\"")
        })
}

/// What the API server's audit log records, without bodies: every request of the operator's
/// ServiceAccount (the scale benchmark counts them by verb), and every list and watch
/// request (the leader tests look for re-lists).
fn audit_policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [{OPERATOR_USER}]
- level: Metadata
  verbs: [list, watch]
- level: None
"
    )
}

/// Starts kube-apiserver on a new port of `listen_ip` and waits until it listens there;
/// returns the process, its flags (for restarts) and its URL.
async fn start_apiserver(
    dir: &Path,
    placement: Placement,
    etcd_url: &str,
    listen_ip: std::net::Ipv4Addr,
) -> anyhow::Result<(ServerProcess, Vec<String>, String)> {
    let port = free_ports(1)[0];
    let args = apiserver_args(dir, placement, etcd_url, listen_ip, port);
    let log_path = dir.join("kube-apiserver.log");
    // A retry's log starts empty, so that the tail it fails with is its own.
    let _ = std::fs::remove_file(&log_path);
    let mut process = spawn_apiserver(&args, &log_path)?;
    process
        .wait_listening(listen_ip, port, READY_TIMEOUT)
        .await?;
    Ok((process, args, format!("https://{listen_ip}:{port}")))
}

fn spawn_apiserver(args: &[String], log_path: &Path) -> anyhow::Result<ServerProcess> {
    let mut apiserver = Command::new(testenv_bin("kube-apiserver"));
    apiserver.args(args);
    ServerProcess::spawn("kube-apiserver", apiserver, log_path)
}

/// `user` reduced to characters safe in a file name.
fn file_name_for(user: &str) -> String {
    user.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// A kubeconfig for the cluster; `auth` is the user's YAML (e.g. `token: ...`), indented
/// under `user:`.
fn kubeconfig_yaml(api_url: &str, ca_pem: &str, auth: &str) -> String {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: audit-tests
  cluster:
    server: {api_url}
    certificate-authority-data: {ca_data}
users:
- name: admin
  user:
    {auth}
contexts:
- name: audit-tests
  context:
    cluster: audit-tests
    user: admin
    namespace: default
current-context: audit-tests
"
    )
}
