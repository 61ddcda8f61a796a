//! Real nats-server processes with JetStream: a single server a test can stop and restart
//! (same port, same store) to simulate an outage or reconfigure in place, and a 3-node cluster
//! for replicated streams.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::ports::{free_ports, retry_lost_port_race};
use crate::process::ServerProcess;
use crate::testenv::testenv_bin;

/// How long a server may take to report healthy; generous for a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one cluster node finds its peers.
#[derive(Debug, Clone)]
struct ClusterMembership {
    cluster_name: String,
    route_port: u16,
    peer_route_ports: Vec<u16>,
}

/// One nats-server with JetStream on 127.0.0.1, its file store in a private temp directory.
///
/// Dropping it stops the server and removes the directory.
pub struct NatsServer {
    name: String,
    /// 127.0.0.1, or a real node's address where pods reach it too.
    listen_ip: std::net::Ipv4Addr,
    port: u16,
    monitor_port: u16,
    extra_config: String,
    jetstream_domain: Option<String>,
    cluster: Option<ClusterMembership>,
    process: Option<ServerProcess>,
    // Last, so it is removed after the process that writes into it has stopped.
    dir: TempDir,
}

impl NatsServer {
    /// A standalone server with JetStream and no authentication.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_config("").await
    }

    /// A standalone server whose configuration ends with `extra_config`, e.g. an
    /// `authorization { ... }` or `accounts { ... }` block for credential tests.
    pub async fn start_with_config(extra_config: &str) -> anyhow::Result<Self> {
        Self::start_standalone(std::net::Ipv4Addr::LOCALHOST, extra_config, None).await
    }

    /// Starts a standalone server on new ports, again on other ports if another process took
    /// one first.
    async fn start_standalone(
        ip: std::net::Ipv4Addr,
        extra_config: &str,
        jetstream_domain: Option<&str>,
    ) -> anyhow::Result<Self> {
        retry_lost_port_race("nats-server", || async {
            let mut server = Self::prepare("nats", extra_config, None)?;
            server.listen_ip = ip;
            server.jetstream_domain = jetstream_domain.map(str::to_owned);
            server.start_again().await?;
            Ok(server)
        })
        .await
    }

    /// A standalone server listening on `ip`, e.g. a real node's address, where both the
    /// test and the node's pods reach it (its monitoring port stays on 127.0.0.1).
    pub async fn start_on(ip: std::net::Ipv4Addr) -> anyhow::Result<Self> {
        Self::start_on_with_config(ip, "").await
    }

    /// [`start_on`](Self::start_on) with a configuration ending in `extra_config`.
    pub async fn start_on_with_config(
        ip: std::net::Ipv4Addr,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        Self::start_standalone(ip, extra_config, None).await
    }

    /// A standalone server whose JetStream belongs to `domain` (as in leaf-node setups): its
    /// API answers under `$JS.<domain>.API`.
    pub async fn start_with_jetstream_domain(domain: &str) -> anyhow::Result<Self> {
        Self::start_standalone(std::net::Ipv4Addr::LOCALHOST, "", Some(domain)).await
    }

    /// [`start_with_jetstream_domain`](Self::start_with_jetstream_domain) with a
    /// configuration ending in `extra_config` (accounts, leaf nodes).
    pub async fn start_with_domain_and_config(
        domain: &str,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        Self::start_standalone(std::net::Ipv4Addr::LOCALHOST, extra_config, Some(domain)).await
    }

    fn prepare(
        name: &str,
        extra_config: &str,
        cluster: Option<ClusterMembership>,
    ) -> anyhow::Result<Self> {
        let [port, monitor_port] = free_ports(2)[..] else {
            unreachable!("free_ports(2) returns two ports")
        };
        Ok(Self {
            name: name.to_owned(),
            listen_ip: std::net::Ipv4Addr::LOCALHOST,
            port,
            monitor_port,
            extra_config: extra_config.to_owned(),
            jetstream_domain: None,
            cluster,
            process: None,
            dir: tempfile::Builder::new().prefix("audit-nats-").tempdir()?,
        })
    }

    /// `nats://127.0.0.1:<port>` (or the address given to [`start_on`](Self::start_on)).
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.listen_ip, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Port of the HTTP monitoring endpoint (`/healthz`, `/connz`, `/varz`, ...).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The JetStream store directory, which survives [`stop`](Self::stop).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// A client connected without credentials.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::connect(self.url()).await?)
    }

    /// Whether the process is up (it may still be starting).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s). The port and store stay reserved
    /// for [`start_again`](Self::start_again).
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            tokio::task::spawn_blocking(move || process.stop())
                .await
                .expect("stopping a server does not panic");
        }
    }

    /// Kills the server with SIGKILL, as a crash or a lost node would end.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server (again) on the same port with the same store, and waits until its
    /// health endpoint reports JetStream ready.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "{} is already running", self.name);
        let config_path = self.dir.path().join("nats.conf");
        std::fs::write(&config_path, self.config_text())?;
        let mut command = Command::new(testenv_bin("nats-server"));
        command.arg("--config").arg(&config_path);
        self.process = Some(ServerProcess::spawn(
            &self.name,
            command,
            &self.dir.path().join("nats.log"),
        )?);
        self.wait_until_healthy().await
    }

    /// Replaces the end of the configuration with `extra_config` and makes the running server
    /// reload it (SIGHUP), as an administrator changing permissions would: existing client
    /// connections stay open. Returns once the server reports the reload.
    pub async fn reload_with_config(&mut self, extra_config: &str) -> anyhow::Result<()> {
        let pid = self
            .process
            .as_ref()
            .and_then(ServerProcess::pid)
            .ok_or_else(|| anyhow::anyhow!("{} is not running", self.name))?;
        let loaded_at = || async {
            let varz = crate::http::get(self.monitor_port, "/varz").await?;
            let varz: serde_json::Value = serde_json::from_str(&varz.body)?;
            anyhow::Ok(varz["config_load_time"].clone())
        };
        let before = loaded_at().await?;
        self.extra_config = extra_config.to_owned();
        std::fs::write(self.dir.path().join("nats.conf"), self.config_text())?;
        // SAFETY: kill(2) on our own running child's pid.
        anyhow::ensure!(
            unsafe { libc::kill(i32::try_from(pid)?, libc::SIGHUP) } == 0,
            "cannot signal {}",
            self.name
        );
        crate::wait::until(
            &format!("{} to reload its configuration", self.name),
            READY_TIMEOUT,
            Duration::from_millis(50),
            || async { Ok((loaded_at().await? != before).then_some(())) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}; last lines of its log:\n{}", self.log_tail()))
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(&self.dir.path().join("nats.log"), 40)
    }

    fn config_text(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "server_name: {}-{}", self.name, self.port);
        let _ = writeln!(text, "listen: {}:{}", self.listen_ip, self.port);
        let _ = writeln!(text, "http: 127.0.0.1:{}", self.monitor_port);
        let domain = self
            .jetstream_domain
            .as_ref()
            .map(|domain| format!("  domain: {domain}\n"))
            .unwrap_or_default();
        let _ = writeln!(
            text,
            "jetstream {{\n  store_dir: {:?}\n  max_memory_store: 512MB\n  max_file_store: 4GB\n{domain}}}",
            self.store_dir().display().to_string()
        );
        if let Some(cluster) = &self.cluster {
            let routes = cluster
                .peer_route_ports
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                text,
                "cluster {{\n  name: {}\n  listen: 127.0.0.1:{}\n  routes: [{routes}]\n}}",
                cluster.cluster_name, cluster.route_port
            );
        }
        text.push_str(&self.extra_config);
        text.push('\n');
        text
    }

    async fn wait_until_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(process) = self.process.as_mut() {
                process.ensure_running()?;
            }
            let healthz = crate::http::get(self.monitor_port, "/healthz").await;
            if healthz.is_ok_and(|response| response.status == 200) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{} on port {} did not report healthy within {READY_TIMEOUT:?}; last lines of its log:\n{}",
                    self.name,
                    self.port,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A cluster of nats-server nodes with JetStream, routed to each other on loopback.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until each reports healthy, which in a cluster means
    /// JetStream has elected a meta leader and the node is current with it.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST, size).await
    }

    /// [`start`](Self::start) with the nodes' client ports on `ip`, e.g. a real node's
    /// address where pods reach them (routes stay on 127.0.0.1).
    pub async fn start_on(ip: std::net::Ipv4Addr, size: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(size >= 1, "a cluster has at least one node");
        // The nodes name each other's route ports, so a lost port restarts the whole set.
        retry_lost_port_race("nats-server cluster", || Self::start_once(ip, size)).await
    }

    async fn start_once(ip: std::net::Ipv4Addr, size: usize) -> anyhow::Result<Self> {
        let route_ports = free_ports(size);
        let mut nodes = Vec::with_capacity(size);
        for (index, route_port) in route_ports.iter().enumerate() {
            let membership = ClusterMembership {
                cluster_name: "audit-tests".to_owned(),
                route_port: *route_port,
                peer_route_ports: route_ports
                    .iter()
                    .filter(|port| *port != route_port)
                    .copied()
                    .collect(),
            };
            let mut node = NatsServer::prepare(&format!("node{index}"), "", Some(membership))?;
            node.listen_ip = ip;
            nodes.push(node);
        }
        // A clustered node is healthy only once a quorum exists, so start every process
        // before waiting for any of them.
        for node in &mut nodes {
            let config_path = node.dir.path().join("nats.conf");
            std::fs::write(&config_path, node.config_text())?;
            let mut command = Command::new(testenv_bin("nats-server"));
            command.arg("--config").arg(&config_path);
            node.process = Some(ServerProcess::spawn(
                &node.name,
                command,
                &node.dir.path().join("nats.log"),
            )?);
        }
        for node in &mut nodes {
            node.wait_until_healthy().await?;
        }
        Ok(Self { nodes })
    }

    /// Every node's URL, for a client that fails over between them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    pub fn node_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }

    /// A client that knows every node.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        let servers = self
            .urls()
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(async_nats::connect(servers).await?)
    }
}

/// The password of the hub's `leaf` user, with which the leaf nodes connect.
const LEAF_PASSWORD: &str = "leaf-link-secret";

/// One account, `AUDIT`, with JetStream, that clients without credentials land in, plus the
/// hub's `leaf` user for the leaf nodes' links: separate accounts from the server's own, as a
/// production hub and its spokes have.
fn audit_account(with_leaf_user: bool) -> String {
    let leaf_user = if with_leaf_user {
        format!(", {{user: leaf, password: {LEAF_PASSWORD}}}")
    } else {
        String::new()
    };
    format!(
        "accounts {{\n  AUDIT {{\n    jetstream: enabled\n    users: [{{user: audit, password: audit}}{leaf_user}]\n  }}\n}}\nno_auth_user: audit\n"
    )
}

/// A hub with a JetStream domain of its own and leaf nodes, each with its own domain, linked
/// to the hub's leaf node port through a [`TcpProxy`](crate::proxy::TcpProxy) each, so that
/// a test can cut one leaf's link: the hub-and-spoke shape of a multi-cluster audit trail.
/// Clients without credentials (the test's, the operator's) are in account `AUDIT` on every
/// server; a leaf authenticates to the hub as the hub's `leaf` user of that account.
pub struct LeafTopology {
    pub hub: NatsServer,
    /// The leaf node servers, in the order of their domains.
    pub leaves: Vec<NatsServer>,
    pub links: Vec<crate::proxy::TcpProxy>,
}

impl LeafTopology {
    pub async fn start(hub_domain: &str, leaf_domains: &[&str]) -> anyhow::Result<Self> {
        let leaf_port = crate::ports::free_port();
        // A hub tells its leaves its own leaf node address, which they add to the URLs they
        // reconnect to: a leaf whose link is cut would go around its relay. The address it
        // advertises instead is a free port where nothing listens.
        let nowhere = crate::ports::free_port();
        let hub_config = format!(
            "{}leafnodes {{\n  listen: 127.0.0.1:{leaf_port}\n  advertise: 127.0.0.1:{nowhere}\n}}\n",
            audit_account(true)
        );
        let hub = NatsServer::start_with_domain_and_config(hub_domain, &hub_config).await?;
        let target: std::net::SocketAddr = ([127, 0, 0, 1], leaf_port).into();
        let mut leaves = Vec::new();
        let mut links = Vec::new();
        for domain in leaf_domains {
            let link = crate::proxy::TcpProxy::start(target).await?;
            // The audit subjects stay in their cluster: only the JetStream API and the
            // sourcing traffic cross the link. Otherwise every spoke's stream would also
            // capture the other spokes' events.
            let config = format!(
                "{}leafnodes {{\n  reconnect: 1s\n  remotes: [{{url: \"nats-leaf://leaf:{LEAF_PASSWORD}@127.0.0.1:{}\", account: AUDIT, deny_imports: [\"audit.>\"], deny_exports: [\"audit.>\"]}}]\n}}\n",
                audit_account(false),
                link.port()
            );
            leaves.push(NatsServer::start_with_domain_and_config(domain, &config).await?);
            links.push(link);
        }
        let topology = Self { hub, leaves, links };
        topology.wait_linked().await?;
        Ok(topology)
    }

    /// Waits until the hub reports every leaf node connected.
    pub async fn wait_linked(&self) -> anyhow::Result<()> {
        let expected = self.leaves.len();
        crate::wait::until(
            "every leaf node linked to the hub",
            READY_TIMEOUT,
            Duration::from_millis(100),
            || async {
                let response = crate::http::get(self.hub.monitor_port(), "/leafz").await?;
                let leafz: serde_json::Value = serde_json::from_str(&response.body)?;
                let linked = leafz["leafnodes"].as_u64().unwrap_or_default();
                Ok((linked as usize >= expected).then_some(()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}; the hub's log:\n{}", self.hub.log_tail()))
    }
}
