//! `--pods`: M AuditStreams and M AuditConsumers with one replica each, whose pods run on the
//! project's real node (see the binary's header): how many consumer pods the node holds, and
//! what the operator, the scheduler and the kubelet make of a bulk apply that fills it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use audit_tests::kube_env::ControlPlane;
use audit_tests::node::{self, Node};
use audit_tests::{http, wait};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as NodeObject, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::Value;

use super::{
    Bench, BurstRun, CONVERGE_TIMEOUT, Counters, PROBE_NAMESPACE, Readiness, Report, Wording,
    baseline_apply, burst_apply, burst_figures, idle_phase, mib, peak_rss_kib, progress,
    ready_for_generation, secs,
};

/// A consumer pod's requests when its AuditConsumer sets none: the operator's default
/// (`operator/src/consumer/build/deployment.rs`), which the scheduler places pods by.
const POD_CPU_MILLIS: u64 = 50;
const POD_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

const WITH_PODS: Wording = Wording {
    apply: "bulk apply",
    operator: "operator ",
    nats: " (operator and pods)",
    log: "bench-operator-pods",
};

pub(super) async fn run(
    count: Option<usize>,
    concurrency: u16,
    idle: Duration,
) -> anyhow::Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg")?;
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ");
    progress(
        "starting the real node (containerd, kubelet, kube-scheduler, kube-proxy) and its control plane",
    );
    let started = Instant::now();
    let node = tokio::task::spawn_blocking(Node::shared).await?;
    let node_started = started.elapsed();
    let client = ControlPlane::shared().admin_client().await?;
    let capacity = Capacity::read(&client, node.name()).await?;
    let count = count.unwrap_or(capacity.holds);
    anyhow::ensure!(count > 0, "the node holds no consumer pod: {capacity:?}");

    let bench = Bench::start(count, Some(node)).await?;
    let mut report = Report::new(
        &format!("M = {count}, replicas 1, on the real node"),
        concurrency,
    );
    report.set("load average before the run (1, 5, 15 min)", load);
    report.set("node and control plane started (s)", secs(node_started));
    report.set("node allocatable", capacity.allocatable());
    report.set(
        &format!(
            "consumer pods the node holds ({POD_CPU_MILLIS}m CPU / {}Mi each)",
            POD_MEMORY_BYTES >> 20
        ),
        format!("{} (bound by {})", capacity.holds, capacity.bound_by),
    );

    baseline_apply(&bench, &mut report, count, "bulk apply, no operator (s)").await?;

    progress("starting the operator");
    let mut operator = bench.start_operator(concurrency)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        operator.ensure_running()?;
        let ready = http::get(operator.health_port(), "/readyz")
            .await
            .is_ok_and(|response| response.status == 200);
        if ready {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the operator was not ready within 60 s:\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let watch = Readiness::start(&bench.client);
    let pods = PodWatch::start(&bench.client);

    let before = Counters::take(&bench, &operator).await?;
    let (started, applied) = burst_apply(&bench, &watch, &mut report, count, &WITH_PODS).await?;
    let placed = pods.wait_placed(count).await?;
    let pods_done = started.elapsed().saturating_sub(applied);
    if placed.unschedulable == 0 {
        report.set(
            "every consumer pod Running and Ready after the apply's end (s)",
            secs(pods_done),
        );
        watch
            .wait_until(|ready| ready.all_ready(count), CONVERGE_TIMEOUT)
            .await?;
        report.set(
            "every AuditConsumer Ready after the apply's end (s)",
            secs(started.elapsed().saturating_sub(applied)),
        );
    } else {
        report.set(
            "consumer pods Ready, the others unschedulable, after the apply's end (s)",
            secs(pods_done),
        );
        report.set(
            "consumer pods Ready / unschedulable",
            format!(
                "{} / {} ({})",
                placed.ready, placed.unschedulable, placed.reason
            ),
        );
        watch
            .wait_until(
                |ready| ready.consumers_ready() >= placed.ready,
                CONVERGE_TIMEOUT,
            )
            .await?;
        report.set(
            "AuditConsumers Ready after the apply's end (s)",
            format!(
                "{} of {count} after {}; the others: {}",
                watch.consumers_ready(),
                secs(started.elapsed().saturating_sub(applied)),
                watch.a_consumer_not_ready()
            ),
        );
    }
    // Taken before the check below, which opens a connection of its own.
    let (operator_connections, pod_connections) = bench.nats_connections_by_origin().await?;
    let burst = BurstRun {
        count,
        concurrency,
        held: Some((
            "NATS connections held: operator / consumer pods",
            format!("{operator_connections} / {pod_connections}"),
        )),
    };
    let requests_burst =
        burst_figures(&bench, &operator, &mut report, &before, &burst, &WITH_PODS).await?;

    idle_phase(&bench, &mut report, idle, &requests_burst).await?;
    report.set(
        "operator peak RSS, whole run (MiB)",
        mib(peak_rss_kib(&operator)?),
    );
    report.set(
        "memory of the pods' processes / their containerd shims, together (PSS, MiB)",
        pods_memory().map_or_else(
            |e| format!("unknown: {e:#}"),
            |(pods, shims)| format!("{} / {}", mib(pods), mib(shims)),
        ),
    );
    operator.stop();

    print!("{}", report.markdown());
    Ok(())
}

/// What the scheduler places pods by: the Node's allocatable resources, less what the pods
/// already bound to it request.
#[derive(Debug)]
struct Capacity {
    cpu_millis: u64,
    memory_bytes: u64,
    pods: u64,
    requested_cpu_millis: u64,
    requested_memory_bytes: u64,
    bound_pods: u64,
    /// Consumer pods that fit beside them.
    holds: usize,
    /// The resource that runs out first.
    bound_by: &'static str,
}

impl Capacity {
    async fn read(client: &kube::Client, node_name: &str) -> anyhow::Result<Self> {
        let node = Api::<NodeObject>::all(client.clone())
            .get(node_name)
            .await?;
        let allocatable = node
            .status
            .and_then(|status| status.allocatable)
            .ok_or_else(|| anyhow::anyhow!("Node {node_name} reports no allocatable resources"))?;
        let get = |resource: &str, scale: f64| {
            allocatable
                .get(resource)
                .and_then(|quantity| quantity_value(quantity, scale))
                .ok_or_else(|| {
                    anyhow::anyhow!("Node {node_name} allocatable {resource} unreadable")
                })
        };
        let (cpu_millis, memory_bytes, pods) =
            (get("cpu", 1000.0)?, get("memory", 1.0)?, get("pods", 1.0)?);
        let bound = Api::<Pod>::all(client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node_name}")))
            .await?
            .items
            .into_iter()
            .filter(|pod| {
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|status| status.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .collect::<Vec<_>>();
        let requested = |resource: &str, scale: f64| -> u64 {
            bound
                .iter()
                .flat_map(|pod| pod.spec.iter().flat_map(|spec| &spec.containers))
                .filter_map(|container| container.resources.as_ref()?.requests.as_ref())
                .filter_map(|requests| quantity_value(requests.get(resource)?, scale))
                .sum()
        };
        let requested_cpu_millis = requested("cpu", 1000.0);
        let requested_memory_bytes = requested("memory", 1.0);
        let bound_pods = bound.len() as u64;
        let fits = [
            (
                "CPU",
                cpu_millis.saturating_sub(requested_cpu_millis) / POD_CPU_MILLIS,
            ),
            (
                "memory",
                memory_bytes.saturating_sub(requested_memory_bytes) / POD_MEMORY_BYTES,
            ),
            ("the pod limit", pods.saturating_sub(bound_pods)),
        ];
        let (bound_by, holds) = fits
            .into_iter()
            .min_by_key(|(_, fit)| *fit)
            .expect("three resources");
        Ok(Self {
            cpu_millis,
            memory_bytes,
            pods,
            requested_cpu_millis,
            requested_memory_bytes,
            bound_pods,
            holds: usize::try_from(holds)?,
            bound_by,
        })
    }

    fn allocatable(&self) -> String {
        format!(
            "CPU {}m, memory {} MiB, pods {}; already requested by {} pod(s): CPU {}m, memory {} MiB",
            self.cpu_millis,
            self.memory_bytes >> 20,
            self.pods,
            self.bound_pods,
            self.requested_cpu_millis,
            self.requested_memory_bytes >> 20
        )
    }
}

/// A Kubernetes quantity (`2`, `1500m`, `24502696Ki`, `1Gi`, `110`) times `scale`, rounded
/// down; `None` for a form this benchmark does not expect (exponents).
fn quantity_value(quantity: &Quantity, scale: f64) -> Option<u64> {
    let text = quantity.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let value = number.parse::<f64>().ok()? * multiplier * scale;
    Some(value.floor() as u64)
}

/// The consumer pods as a watch sees them (the operator labels every pod it makes).
struct PodWatch {
    pods: reflector::Store<Pod>,
}

/// Where the consumer pods ended up.
struct Placed {
    ready: usize,
    unschedulable: usize,
    /// The scheduler's message for an unschedulable pod.
    reason: String,
}

impl PodWatch {
    fn start(client: &kube::Client) -> Self {
        let (pods, writer) = reflector::store();
        let consumers = watcher::Config::default().labels("app.kubernetes.io/name=audit-consumer");
        tokio::spawn(
            reflector(writer, watcher(Api::<Pod>::all(client.clone()), consumers))
                .applied_objects()
                .for_each(|_| async {}),
        );
        Self { pods }
    }

    /// Waits until there are `count` consumer pods and each is either Running and Ready or
    /// one the scheduler reported it cannot place; on time-out, says what the pods were doing.
    async fn wait_placed(&self, count: usize) -> anyhow::Result<Placed> {
        let placed = wait::until(
            "every consumer pod Ready or unschedulable",
            CONVERGE_TIMEOUT,
            Duration::from_millis(50),
            || std::future::ready(Ok(self.placed(count))),
        )
        .await;
        placed.map_err(|e| anyhow::anyhow!("{e:#}; consumer pods: {}", self.summary()))
    }

    fn placed(&self, count: usize) -> Option<Placed> {
        let pods = self.pods.state();
        if pods.len() < count {
            return None;
        }
        let mut placed = Placed {
            ready: 0,
            unschedulable: 0,
            reason: String::new(),
        };
        for pod in &pods {
            if condition(pod, "Ready").is_some_and(|c| c.0 == "True") && phase(pod) == "Running" {
                placed.ready += 1;
            } else if let Some((status, reason, message)) = condition(pod, "PodScheduled")
                && status == "False"
                && reason == "Unschedulable"
            {
                placed.unschedulable += 1;
                placed.reason = message;
            } else {
                return None;
            }
        }
        Some(placed)
    }

    /// How many consumer pods are in which phase, for a failure message.
    fn summary(&self) -> String {
        let mut phases: BTreeMap<String, usize> = BTreeMap::new();
        for pod in self.pods.state() {
            let ready = condition(&pod, "Ready").is_some_and(|c| c.0 == "True");
            *phases
                .entry(format!(
                    "{}{}",
                    phase(&pod),
                    if ready { " ready" } else { "" }
                ))
                .or_default() += 1;
        }
        format!("{phases:?}")
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or("Unknown")
}

/// A pod condition's status, reason and message.
fn condition(pod: &Pod, type_: &str) -> Option<(String, String, String)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

impl Bench {
    /// The NATS connections held now: those from outside the pod network (the operator: it
    /// runs on the host, and the benchmark holds none at this point) and those from the pods.
    async fn nats_connections_by_origin(&self) -> anyhow::Result<(usize, usize)> {
        let connz: Value = serde_json::from_str(
            &http::get(self.nats.monitor_port(), "/connz?limit=100000")
                .await?
                .body,
        )?;
        let (network, prefix) = node::layout()
            .pod_cidr
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("the pod network is not a CIDR"))?;
        let network = u32::from(network.parse::<Ipv4Addr>()?);
        let mask = u32::MAX << (32 - prefix.parse::<u32>()?);
        let from_pods = |ip: &str| {
            ip.parse::<Ipv4Addr>()
                .is_ok_and(|ip| u32::from(ip) & mask == network & mask)
        };
        let connections = connz["connections"].as_array().cloned().unwrap_or_default();
        let pods = connections
            .iter()
            .filter(|c| c["ip"].as_str().is_some_and(from_pods))
            .count();
        Ok((connections.len() - pods, pods))
    }
}

/// The proportional set size (shared pages divided among the processes sharing them) of
/// every process in the node's pod cgroup (cgroup v1, as on this host: the consumers and
/// the pause containers) and of the containerd shims beside them (one per pod, outside the
/// pod cgroup), in KiB.
fn pods_memory() -> anyhow::Result<(u64, u64)> {
    let root = PathBuf::from(format!(
        "/sys/fs/cgroup/memory{}",
        node::layout().cgroup_root
    ));
    let mut in_pods = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        in_pods.extend(
            std::fs::read_to_string(dir.join("cgroup.procs"))?
                .lines()
                .filter_map(|pid| pid.trim().parse::<u32>().ok()),
        );
    }
    let mut shims = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let command = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if command.starts_with("containerd-shim") {
            shims.push(pid);
        }
    }
    let total = |pids: &[u32]| pids.iter().filter_map(|pid| pss_kib(*pid)).sum();
    Ok((total(&in_pods), total(&shims)))
}

/// A process's proportional set size in KiB; `None` if it has exited.
fn pss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

impl Readiness {
    /// How many AuditConsumers of the bulk apply are Ready for their generation.
    fn consumers_ready(&self) -> usize {
        self.consumers
            .state()
            .iter()
            .filter(|object| object.metadata.namespace.as_deref() != Some(PROBE_NAMESPACE))
            .filter(|object| ready_for_generation(object))
            .count()
    }

    /// The conditions of one AuditConsumer that is not Ready, as `type=status reason: message`.
    fn a_consumer_not_ready(&self) -> String {
        let consumers = self.consumers.state();
        let Some(consumer) = consumers
            .iter()
            .find(|object| !ready_for_generation(object))
        else {
            return "none".to_owned();
        };
        consumer.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["type"] == "Ready" || c["type"] == "Reconciling" || c["type"] == "Stalled"
            })
            .map(|c| {
                format!(
                    "{}={} {}: {}",
                    c["type"].as_str().unwrap_or("?"),
                    c["status"].as_str().unwrap_or("?"),
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}
