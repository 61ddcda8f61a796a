//! The operator at scale (`make bench-operator`, `make bench-operator-pods`, figures in
//! docs/benchmarks.md). Two modes:
//!
//!   audit-bench-operator N CONCURRENCY [IDLE_SECONDS]
//!   audit-bench-operator --pods M|max CONCURRENCY [IDLE_SECONDS]
//!
//! The first: N AuditStreams and N AuditConsumers (replicas 0) over 50 namespaces, applied
//! in one bulk server-side apply as a GitOps tool does, on a fresh control plane (with
//! kube-controller-manager) and one nats-server started by this process; no pod runs.
//!
//! CONCURRENCY is the operator's `--concurrency` (0: no limit, the behaviour before the
//! limit existed), so a run of each, back to back, compares the two under the same load.
//! Phases, each measured:
//! 1. baseline: the same bulk apply with no operator running, then deleted;
//! 2. burst: the operator (release build, default settings but CONCURRENCY) runs with one
//!    Ready AuditStream (the probe); the bulk apply; during it, a spec change to the probe,
//!    whose latency shows whether the burst starves it; until every resource is Ready;
//! 3. idle: one requeue interval to settle, then IDLE_SECONDS (default 60, one requeue
//!    interval; 0 skips both) with nothing changing;
//! 4. restart: SIGTERM, a new operator process, until it has reconciled every resource.
//!
//! `--pods`: the same with real pods. It starts the project's real node (containerd, the
//! kubelet, kube-scheduler, kube-proxy; `audit_tests::node`, as root, images from
//! `AUDIT_IMAGES_DIR`) and its control plane, a nats-server on the node's address, and
//! reads from the Node object how many consumer pods it holds: its allocatable CPU, memory
//! and pods, less what pods already on it request, divided by a consumer pod's default
//! requests (50m CPU, 64Mi). `max` takes that number as M. M AuditStreams and M
//! AuditConsumers with `replicas: 1`, in namespaces enforcing the `restricted` Pod Security
//! level: the baseline as above, then the bulk apply with the operator running (release
//! build, outside the cluster as above, the consumer image the node holds): until the
//! operator converged, until every consumer pod is Running and Ready on the kubelet, until
//! every AuditConsumer is Ready. A pod the scheduler cannot place (an M above what the node
//! holds) is a result, not an error: the run reports how many, the scheduler's reason and
//! what the AuditConsumers say. Then the idle phase as above, with the pods running, and
//! the memory the pods and their containerd shims take; no probe, no restart.
//!
//! Counted: wall times, the operator's peak RSS (VmHWM) and CPU seconds from /proc, its API
//! requests by verb from the API server's audit log (every request of the operator's
//! ServiceAccount is logged), NATS connections and JetStream API requests from nats-server's
//! monitoring endpoint, reconcile durations from the operator's own histogram. Prints a
//! Markdown table on standard output, progress on standard error.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use audit_tests::images::CONSUMER_IMAGE;
use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsServer;
use audit_tests::node::Node;
use audit_tests::operator::{OPERATOR_SERVICE_ACCOUNT, OperatorProcess, install_crds};
use audit_tests::{http, tools, wait};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};

#[path = "audit-bench-operator/autoscaling.rs"]
mod autoscaling;
#[path = "audit-bench-operator/pods.rs"]
mod pods;

const GROUP: &str = "audit.eventsaudit.io";
const VERSION: &str = "v1alpha1";
const NAMESPACES: usize = 50;
const PROBE_NAMESPACE: &str = "bench-probe";
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(600);
const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: audit-bench-operator N CONCURRENCY [IDLE_SECONDS]\n       \
                 audit-bench-operator --pods M|max CONCURRENCY [IDLE_SECONDS]\n       \
                 audit-bench-operator --autoscaling [BURST]";
    if args.first().is_some_and(|arg| arg == "--autoscaling") {
        let burst = args.get(1).map_or(Ok(200_000), |s| s.parse())?;
        return autoscaling::run(burst).await;
    }
    let with_pods = args.first().is_some_and(|arg| arg == "--pods");
    if with_pods {
        args.remove(0);
    }
    let count = args.first().ok_or_else(|| anyhow::anyhow!(usage))?;
    let concurrency: u16 = args.get(1).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let idle = Duration::from_secs(args.get(2).map_or(Ok(60), |s| s.parse())?);
    if with_pods {
        let count = match count.as_str() {
            "max" => None,
            count => Some(count.parse()?),
        };
        return pods::run(count, concurrency, idle).await;
    }
    let count: usize = count.parse()?;

    let bench = Bench::start(count, None).await?;
    let mut report = Report::new(&format!("N = {count}"), concurrency);

    baseline_apply(&bench, &mut report, count, "apply, no operator (s)").await?;

    progress("starting the operator and its probe AuditStream");
    let mut operator = bench.start_operator(concurrency)?;
    bench.create_probe().await?;
    let watch = Readiness::start(&bench.client);
    watch
        .wait_until(
            |ready| ready.is_ready(PROBE_NAMESPACE, "probe", 1),
            Duration::from_secs(60),
        )
        .await?;

    let before = Counters::take(&bench, &operator).await?;
    let probe = {
        let client = bench.client.clone();
        let watch = watch.clone();
        tokio::spawn(async move { change_probe_during_burst(client, watch).await })
    };
    let (started, applied) = burst_apply(&bench, &watch, &mut report, count, &WITHOUT_PODS).await?;
    watch
        .wait_until(|ready| ready.all_ready(count), CONVERGE_TIMEOUT)
        .await?;
    report.set(
        "every AuditConsumer Ready after the apply's end (s)",
        secs(started.elapsed().saturating_sub(applied)),
    );
    report.set(
        "spec change latency during the burst (s)",
        secs(probe.await??),
    );
    let burst = BurstRun {
        count,
        concurrency,
        held: None,
    };
    let requests_burst = burst_figures(
        &bench,
        &operator,
        &mut report,
        &before,
        &burst,
        &WITHOUT_PODS,
    )
    .await?;

    let (requests_idle, nats_idle) = idle_phase(&bench, &mut report, idle, &requests_burst).await?;

    progress("restart");
    operator.stop();
    let restarted = Instant::now();
    let operator = bench.start_operator(concurrency)?;
    let reconciled = wait::until(
        "the restarted operator to reconcile every resource",
        CONVERGE_TIMEOUT,
        Duration::from_millis(100),
        || async {
            let metrics = match http::get(operator.health_port(), "/metrics").await {
                Ok(response) => response.body,
                Err(_) => return Ok(None),
            };
            let done = ["AuditStream", "AuditConsumer"].iter().all(|kind| {
                counter(
                    &metrics,
                    &format!("audit_operator_reconciliations_total{{kind=\"{kind}\"}}"),
                ) >= count as f64
            });
            Ok(done.then(Instant::now))
        },
    )
    .await?;
    // The last reconciliations started; let them finish before counting what they did.
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.set(
        "restart: every resource checked (s)",
        secs(reconciled - restarted),
    );
    let requests_restart = bench.operator_requests().await?;
    let nats_restart = bench.nats_counters().await?;
    report.set(
        "restart: API writes",
        writes(&diff(&requests_restart, &requests_idle)).to_string(),
    );
    report.set(
        "restart: API requests",
        by_verb(&diff(&requests_restart, &requests_idle)),
    );
    report.set(
        "restart: NATS connections opened",
        (nats_restart.total_connections - nats_idle.total_connections).to_string(),
    );
    report.set("restart: peak RSS (MiB)", mib(peak_rss_kib(&operator)?));
    watch
        .wait_until(|ready| ready.all_ready(count), Duration::from_secs(60))
        .await?;

    print!("{}", report.markdown());
    Ok(())
}

/// How a mode's report names the burst's figures: with pods on the node, whose figure it is
/// needs saying.
struct Wording {
    apply: &'static str,
    operator: &'static str,
    nats: &'static str,
    log: &'static str,
}

const WITHOUT_PODS: Wording = Wording {
    apply: "apply",
    operator: "",
    nats: "",
    log: "bench-operator",
};

/// What the counters said before the burst, to tell what the burst did.
struct Counters {
    requests: BTreeMap<String, u64>,
    nats: NatsCounters,
    cpu: f64,
}

impl Counters {
    async fn take(bench: &Bench, operator: &OperatorProcess) -> anyhow::Result<Self> {
        Ok(Self {
            requests: bench.operator_requests().await?,
            nats: bench.nats_counters().await?,
            cpu: cpu_seconds(operator)?,
        })
    }
}

/// The baseline, both modes': the same bulk apply with no operator running, timed (the
/// objects then deleted again); `row` names its figure.
async fn baseline_apply(
    bench: &Bench,
    report: &mut Report,
    count: usize,
    row: &str,
) -> anyhow::Result<()> {
    progress(&format!(
        "baseline: bulk apply of {count} + {count} with no operator"
    ));
    report.set(row, secs(bench.bulk_apply()?));
    bench.delete_all().await
}

/// The burst, both modes': the bulk apply with the operator running, timed, until every
/// resource converged. Returns when the apply started and how long it ran.
async fn burst_apply(
    bench: &Bench,
    watch: &Readiness,
    report: &mut Report,
    count: usize,
    wording: &Wording,
) -> anyhow::Result<(Instant, Duration)> {
    progress(&format!(
        "burst: bulk apply of {count} AuditStreams + {count} AuditConsumers"
    ));
    let started = Instant::now();
    let apply = tokio::task::spawn_blocking({
        let yaml = bench.objects_yaml.clone();
        move || bulk_apply(&yaml)
    })
    .await??;
    let applied = started.elapsed();
    report.set(
        &format!("{}, operator running (s)", wording.apply),
        secs(apply),
    );
    watch
        .wait_until(|ready| ready.converged(count), CONVERGE_TIMEOUT)
        .await?;
    report.set(
        &format!("{}converged after the apply's end (s)", wording.operator),
        secs(started.elapsed().saturating_sub(applied)),
    );
    Ok((started, applied))
}

/// The run a burst's figures are of.
struct BurstRun {
    count: usize,
    concurrency: u16,
    /// The row of the NATS connections held, when the mode tells them apart; otherwise the
    /// server's count.
    held: Option<(&'static str, String)>,
}

/// The burst's figures, both modes', from the counters `before` it to now; keeps the
/// operator's log of it. The counts are taken before the check that every object exists,
/// which opens a NATS connection of its own. Returns the API requests counted at its end.
async fn burst_figures(
    bench: &Bench,
    operator: &OperatorProcess,
    report: &mut Report,
    before: &Counters,
    run: &BurstRun,
    wording: &Wording,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let requests = bench.operator_requests().await?;
    let nats = bench.nats_counters().await?;
    bench.check_objects_exist(run.count).await?;
    let (held, connections) = run
        .held
        .clone()
        .unwrap_or(("NATS connections held", nats.connections.to_string()));
    report.set(held, connections);
    let operator_figure = |what: &str| format!("{}{what}", wording.operator);
    report.set(
        &operator_figure("peak RSS, burst (MiB)"),
        mib(peak_rss_kib(operator)?),
    );
    report.set(
        &operator_figure("CPU, burst (s)"),
        format!("{:.1}", cpu_seconds(operator)? - before.cpu),
    );
    report.set(
        &operator_figure("API requests, burst"),
        by_verb(&diff(&requests, &before.requests)),
    );
    report.set(
        &operator_figure("API writes per object, burst"),
        per_object(&diff(&requests, &before.requests), run.count),
    );
    report.set(
        &format!("NATS connections opened, burst{}", wording.nats),
        (nats.total_connections - before.nats.total_connections).to_string(),
    );
    report.set(
        &format!("JetStream API requests, burst{}", wording.nats),
        (nats.api_requests - before.nats.api_requests).to_string(),
    );
    let metrics = http::get(operator.health_port(), "/metrics").await?.body;
    report.set("failed reconciliations, burst", failures(&metrics));
    for kind in ["AuditStream", "AuditConsumer"] {
        report.set(
            &format!("reconcile p50 / p99, {kind} (s, bucket bound)"),
            format!(
                "{} / {}",
                histogram_quantile(&metrics, kind, 0.5),
                histogram_quantile(&metrics, kind, 0.99)
            ),
        );
    }
    // The operator's log goes with its temporary directory; keep the burst's for a reader.
    let kept_log = std::env::temp_dir().join(format!(
        "{}-{}-{}.log",
        wording.log, run.count, run.concurrency
    ));
    std::fs::copy(operator.log_path(), &kept_log)?;
    progress(&format!(
        "the operator's log of the burst: {}",
        kept_log.display()
    ));
    Ok(requests)
}

/// One requeue interval to settle, then `idle` with nothing changing (both skipped when
/// `idle` is zero): the operator's writes and requests in each. Returns the counts at its end.
async fn idle_phase(
    bench: &Bench,
    report: &mut Report,
    idle: Duration,
    requests_burst: &BTreeMap<String, u64>,
) -> anyhow::Result<(BTreeMap<String, u64>, NatsCounters)> {
    // The first requeue after the burst may still write: live state that changed after a
    // stream was Ready (its consumer count, once its AuditConsumer made the durable) is
    // written then. The idle period starts after it.
    if !idle.is_zero() {
        progress("settling for one requeue interval (60s)");
        tokio::time::sleep(Duration::from_secs(65)).await;
    }
    let requests_settled = bench.operator_requests().await?;
    let nats_settled = bench.nats_counters().await?;
    report.set(
        "API writes, first requeue after the burst",
        writes(&diff(&requests_settled, requests_burst)).to_string(),
    );
    report.set(
        "API requests, first requeue after the burst",
        by_verb(&diff(&requests_settled, requests_burst)),
    );
    progress(&format!("idle for {}s", idle.as_secs()));
    tokio::time::sleep(idle).await;
    let requests_idle = bench.operator_requests().await?;
    let nats_idle = bench.nats_counters().await?;
    report.set(
        "API writes, idle",
        writes(&diff(&requests_idle, &requests_settled)).to_string(),
    );
    report.set(
        "API requests, idle",
        by_verb(&diff(&requests_idle, &requests_settled)),
    );
    if !idle.is_zero() {
        report.set(
            "JetStream API requests per minute, idle",
            format!(
                "{:.0}",
                (nats_idle.api_requests - nats_settled.api_requests) as f64 * 60.0
                    / idle.as_secs_f64()
            ),
        );
    }
    Ok((requests_idle, nats_idle))
}

fn progress(message: &str) {
    eprintln!("bench-operator: {message}");
}

fn secs(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

/// The control plane, the nats-server and the objects of one run.
struct Bench {
    client: kube::Client,
    nats: NatsServer,
    objects_yaml: String,
    /// Whether the consumers' pods run on the real node.
    on_node: bool,
}

impl Bench {
    /// Without `node`, a control plane on 127.0.0.1 and AuditConsumers with no replica. With
    /// it (already started, with its control plane), NATS on the node's address where pods
    /// reach it, namespaces enforcing the `restricted` Pod Security level, and AuditConsumers
    /// with one replica each.
    async fn start(count: usize, node: Option<&Node>) -> anyhow::Result<Self> {
        progress("starting etcd, kube-apiserver, kube-controller-manager and nats-server");
        let control_plane = ControlPlane::shared();
        let client = control_plane.admin_client().await?;
        install_crds(&client).await?;
        let nats = match node {
            Some(node) => NatsServer::start_on(node.ip()).await?,
            None => NatsServer::start().await?,
        };
        let labels = match node {
            Some(_) => "\n  labels:\n    pod-security.kubernetes.io/enforce: restricted",
            None => "",
        };
        let mut namespaces = String::new();
        for namespace in (0..NAMESPACES)
            .map(namespace_name)
            .chain([PROBE_NAMESPACE.to_owned()])
        {
            writeln!(
                namespaces,
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}{labels}"
            )?;
        }
        tools::run("kubectl", &["apply", "-f", "-"], Some(&namespaces))?;
        let replicas = if node.is_some() { 1 } else { 0 };
        let objects_yaml = objects_yaml(count, replicas, &nats.url())?;
        Ok(Self {
            client,
            nats,
            objects_yaml,
            on_node: node.is_some(),
        })
    }

    fn bulk_apply(&self) -> anyhow::Result<Duration> {
        bulk_apply(&self.objects_yaml)
    }

    /// Deletes every AuditStream and AuditConsumer of the baseline (no operator ran, so no
    /// finalizer holds them), one collection per namespace and kind, and waits until they are
    /// gone: `kubectl delete --all` deletes one object per request, client-side throttled.
    async fn delete_all(&self) -> anyhow::Result<()> {
        for namespace in (0..NAMESPACES).map(namespace_name) {
            for (kind, plural) in [
                ("AuditConsumer", "auditconsumers"),
                ("AuditStream", "auditstreams"),
            ] {
                dynamic_api(&self.client, &namespace, kind, plural)
                    .delete_collection(&Default::default(), &ListParams::default())
                    .await?;
            }
        }
        wait::until(
            "the baseline's objects to be gone",
            CONVERGE_TIMEOUT,
            Duration::from_millis(250),
            || async {
                let mut left = 0;
                for (kind, plural) in [
                    ("AuditConsumer", "auditconsumers"),
                    ("AuditStream", "auditstreams"),
                ] {
                    let resource = ApiResource::from_gvk_with_plural(
                        &GroupVersionKind::gvk(GROUP, VERSION, kind),
                        plural,
                    );
                    left += Api::<DynamicObject>::all_with(self.client.clone(), &resource)
                        .list_metadata(&ListParams::default().limit(1))
                        .await?
                        .items
                        .len();
                }
                Ok((left == 0).then_some(()))
            },
        )
        .await
    }

    fn start_operator(&self, concurrency: u16) -> anyhow::Result<OperatorProcess> {
        // The shipped defaults (OperatorProcess sets fast test timings), but the
        // concurrency under test, and on the node the consumer image it holds (there is no
        // registry to pull the default from).
        let mut args = vec![
            "--requeue-interval=60s".to_owned(),
            "--retry-base-delay=1s".to_owned(),
            "--retry-max-delay=5m".to_owned(),
            "--nats-timeout=5s".to_owned(),
            format!("--concurrency={concurrency}"),
        ];
        if self.on_node {
            args.push(format!("--consumer-image={CONSUMER_IMAGE}"));
        }
        OperatorProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    async fn create_probe(&self) -> anyhow::Result<()> {
        let probe = stream_object(PROBE_NAMESPACE, "probe", "bench.probe.>", &self.nats.url());
        tools::run(
            "kubectl",
            &["apply", "--server-side", "--field-manager=bench", "-f", "-"],
            Some(&serde_yaml::to_string(&probe)?),
        )?;
        Ok(())
    }

    /// What the bulk apply asked for exists beside the Ready conditions: a durable consumer
    /// on NATS, a ServiceAccount and a Deployment per AuditConsumer (with replicas 0 there
    /// is no PodDisruptionBudget; the operator makes one from 2 replicas on).
    async fn check_objects_exist(&self, count: usize) -> anyhow::Result<()> {
        let workload = ListParams::default().labels("app.kubernetes.io/name=audit-consumer");
        let deployments = Api::<Deployment>::all(self.client.clone())
            .list_metadata(&workload)
            .await?
            .items
            .len();
        let accounts = Api::<ServiceAccount>::all(self.client.clone())
            .list_metadata(&workload)
            .await?
            .items
            .len();
        anyhow::ensure!(
            deployments == count && accounts == count,
            "{count} AuditConsumers are Ready but there are {deployments} consumer Deployments \
             and {accounts} consumer ServiceAccounts"
        );
        let jetstream = async_nats::jetstream::new(self.nats.client().await?);
        let mut durables = 0;
        for index in 0..count {
            let stream = jetstream.get_stream(stream_name(index)).await?;
            let mut names = stream.consumer_names();
            while let Some(name) = names.next().await {
                name?;
                durables += 1;
            }
        }
        anyhow::ensure!(
            durables == count,
            "{count} AuditConsumers are Ready but NATS holds {durables} durable consumers"
        );
        Ok(())
    }

    /// The operator's API requests so far, by verb and resource, from the API server's audit
    /// log. A list
    /// made and found in the log first makes sure the log is written up to now.
    async fn operator_requests(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        operator_requests(&self.client).await
    }

    async fn nats_counters(&self) -> anyhow::Result<NatsCounters> {
        let varz: Value =
            serde_json::from_str(&http::get(self.nats.monitor_port(), "/varz").await?.body)?;
        let jsz: Value =
            serde_json::from_str(&http::get(self.nats.monitor_port(), "/jsz").await?.body)?;
        Ok(NatsCounters {
            connections: varz["connections"].as_u64().unwrap_or_default(),
            total_connections: varz["total_connections"].as_u64().unwrap_or_default(),
            api_requests: jsz["api"]["total"].as_u64().unwrap_or_default(),
        })
    }
}

/// The operator's API requests so far, by verb and resource, from the API server's audit
/// log. A list made and found in the log first makes sure the log is written up to now.
async fn operator_requests(client: &kube::Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let marker = format!("bench-marker-{}", fastrand::u64(..));
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .list_metadata(&ListParams::default().labels(&format!("marker={marker}")))
        .await?;
    let control_plane = ControlPlane::shared();
    let events = wait::until(
        "the audit log to be written up to now",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let events = control_plane.audit_events()?;
            let written = events.iter().rev().any(|event| {
                event["requestURI"]
                    .as_str()
                    .is_some_and(|uri| uri.contains(&marker))
            });
            Ok(written.then_some(events))
        },
    )
    .await?;
    let mut requests = BTreeMap::new();
    for event in &events {
        if event["user"]["username"] == OPERATOR_SERVICE_ACCOUNT
            && event["stage"] == "ResponseComplete"
            && let Some(verb) = event["verb"].as_str()
        {
            let object = &event["objectRef"];
            let resource = match object["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", object["resource"].as_str().unwrap_or("?")),
                None => object["resource"].as_str().unwrap_or("?").to_owned(),
            };
            *requests.entry(format!("{verb} {resource}")).or_default() += 1;
        }
    }
    Ok(requests)
}

struct NatsCounters {
    connections: u64,
    total_connections: u64,
    api_requests: u64,
}

fn namespace_name(index: usize) -> String {
    format!("bench-{index:02}")
}

fn stream_name(index: usize) -> String {
    format!("BENCH_{index:04}")
}

fn stream_object(namespace: &str, name: &str, subject: &str, server: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "AuditStream",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "connection": { "servers": [server] },
            "subjects": [subject],
            "storage": "File",
            "deletionPolicy": "Delete",
        },
    })
}

/// N AuditStreams with distinct subjects and one AuditConsumer (`replicas` pods) reading
/// each, spread round-robin over the namespaces, as one multi-document YAML.
fn objects_yaml(count: usize, replicas: u32, server: &str) -> anyhow::Result<String> {
    let mut yaml = String::new();
    for index in 0..count {
        let namespace = namespace_name(index % NAMESPACES);
        let name = format!("audit-{index:04}");
        let mut stream = stream_object(&namespace, &name, &format!("bench.{index}.>"), server);
        stream["spec"]["name"] = json!(stream_name(index));
        let consumer = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": "AuditConsumer",
            "metadata": { "name": name, "namespace": namespace },
            "spec": {
                "streamRef": { "name": name },
                "replicas": replicas,
                "deletionPolicy": "Delete",
            },
        });
        for object in [stream, consumer] {
            yaml.push_str("---\n");
            yaml.push_str(&serde_yaml::to_string(&object)?);
        }
    }
    Ok(yaml)
}

/// One `kubectl apply --server-side` of every object, as a GitOps tool applies a
/// repository; returns how long it took.
fn bulk_apply(yaml: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    tools::run(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--field-manager=bench-gitops",
            "-f",
            "-",
        ],
        Some(yaml),
    )?;
    Ok(started.elapsed())
}

/// Changes the probe's spec shortly after the bulk apply started, when the creates are
/// queued, and returns how long until the operator reported the new generation Ready.
async fn change_probe_during_burst(
    client: kube::Client,
    watch: Readiness,
) -> anyhow::Result<Duration> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api = dynamic_api(&client, PROBE_NAMESPACE, "AuditStream", "auditstreams");
    let changed = Instant::now();
    // A field manager of its own: applying only the description as the manager that owns
    // the rest of the spec would remove the rest.
    let patched = api
        .patch(
            "probe",
            &PatchParams::apply("bench-change"),
            &Patch::Apply(json!({
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": "AuditStream",
                "metadata": { "name": "probe", "namespace": PROBE_NAMESPACE },
                "spec": { "description": "changed during the burst" },
            })),
        )
        .await?;
    let generation = patched.metadata.generation.unwrap_or_default();
    watch
        .wait_until(
            |ready| ready.is_ready(PROBE_NAMESPACE, "probe", generation),
            CONVERGE_TIMEOUT,
        )
        .await?;
    Ok(changed.elapsed())
}

fn dynamic_api(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural);
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Both kinds as the bench's own watches see them: one watch each, not a poll, so that
/// waiting costs the API server next to nothing.
#[derive(Clone)]
struct Readiness {
    streams: reflector::Store<DynamicObject>,
    consumers: reflector::Store<DynamicObject>,
    deployments: reflector::Store<Deployment>,
}

impl Readiness {
    fn start(client: &kube::Client) -> Self {
        let reflect = |kind: &str, plural: &str| {
            let resource = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(GROUP, VERSION, kind),
                plural,
            );
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let writer = reflector::store::Writer::new(resource);
            let store = writer.as_reader();
            let stream = reflector(writer, watcher(api, watcher::Config::default()))
                .applied_objects()
                .for_each(|_| async {});
            tokio::spawn(stream);
            store
        };
        let (deployments, writer) = reflector::store();
        let workload = watcher::Config::default().labels("app.kubernetes.io/name=audit-consumer");
        let api: Api<Deployment> = Api::all(client.clone());
        tokio::spawn(
            reflector(writer, watcher(api, workload))
                .applied_objects()
                .for_each(|_| async {}),
        );
        Self {
            streams: reflect("AuditStream", "auditstreams"),
            consumers: reflect("AuditConsumer", "auditconsumers"),
            deployments,
        }
    }

    async fn wait_until(
        &self,
        done: impl Fn(&Self) -> bool,
        within: Duration,
    ) -> anyhow::Result<()> {
        wait::until(
            "the benchmark's resources",
            within,
            Duration::from_millis(50),
            || std::future::ready(Ok(done(self).then_some(()))),
        )
        .await
    }

    fn is_ready(&self, namespace: &str, name: &str, generation: i64) -> bool {
        self.streams.state().iter().any(|object| {
            object.metadata.namespace.as_deref() == Some(namespace)
                && object.metadata.name.as_deref() == Some(name)
                && object.metadata.generation == Some(generation)
                && ready_for_generation(object)
        })
    }

    /// What the operator alone decides: every AuditStream of the bulk apply Ready, every
    /// AuditConsumer reconciled at its generation (its durable consumer made) and its
    /// Deployment created. Whether an AuditConsumer is Ready also waits for
    /// kube-controller-manager to report on the Deployment (see [`Self::all_ready`]).
    fn converged(&self, count: usize) -> bool {
        let bench = |object: &&std::sync::Arc<DynamicObject>| {
            object.metadata.namespace.as_deref() != Some(PROBE_NAMESPACE)
        };
        let streams_ready = self
            .streams
            .state()
            .iter()
            .filter(bench)
            .filter(|object| ready_for_generation(object))
            .count();
        let consumers_observed = self
            .consumers
            .state()
            .iter()
            .filter(bench)
            .filter(|object| {
                object.data["status"]["observedGeneration"].as_i64() == object.metadata.generation
            })
            .count();
        streams_ready >= count
            && consumers_observed >= count
            && self.deployments.state().len() >= count
    }

    /// Every AuditStream and AuditConsumer of the bulk apply Ready for its generation.
    fn all_ready(&self, count: usize) -> bool {
        let ready = |store: &reflector::Store<DynamicObject>| {
            store
                .state()
                .iter()
                .filter(|object| object.metadata.namespace.as_deref() != Some(PROBE_NAMESPACE))
                .filter(|object| ready_for_generation(object))
                .count()
        };
        ready(&self.streams) >= count && ready(&self.consumers) >= count
    }
}

fn ready_for_generation(object: &DynamicObject) -> bool {
    let status = &object.data["status"];
    status["observedGeneration"].as_i64() == object.metadata.generation
        && status["conditions"].as_array().is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The resident set high-water mark of the operator process, in KiB.
fn peak_rss_kib(operator: &OperatorProcess) -> anyhow::Result<u64> {
    let pid = operator
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the operator is not running"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// User and system CPU time of the operator process so far.
fn cpu_seconds(operator: &OperatorProcess) -> anyhow::Result<f64> {
    let pid = operator
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the operator is not running"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // In clock ticks of USER_HZ, which Linux fixes at 100 for what it shows user space.
    Ok(ticks as f64 / 100.0)
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(verb, count)| (verb.clone(), count - before.get(verb).copied().unwrap_or(0)))
        .filter(|(_, count)| *count > 0)
        .collect()
}

fn writes(requests: &BTreeMap<String, u64>) -> u64 {
    requests
        .iter()
        .filter(|(request, _)| {
            WRITE_VERBS.contains(
                &request
                    .split_once(' ')
                    .map_or(request.as_str(), |(verb, _)| verb),
            )
        })
        .map(|(_, count)| count)
        .sum()
}

/// The writes of `requests` per AuditStream, per AuditConsumer (its own and those of the
/// workload objects it owns) and in Events, over `count` of each, by request.
fn per_object(requests: &BTreeMap<String, u64>, count: usize) -> String {
    const CONSUMER_RESOURCES: [&str; 5] = [
        "auditconsumers",
        "serviceaccounts",
        "deployments",
        "poddisruptionbudgets",
        "networkpolicies",
    ];
    let of = |owner: &dyn Fn(&str) -> bool| {
        let requests: Vec<(&String, u64)> = requests
            .iter()
            .filter(|(request, _)| {
                request.split_once(' ').is_some_and(|(verb, resource)| {
                    WRITE_VERBS.contains(&verb)
                        && owner(resource.split('/').next().unwrap_or(resource))
                })
            })
            .map(|(request, n)| (request, *n))
            .collect();
        let total: u64 = requests.iter().map(|(_, n)| n).sum();
        let each = |n: u64| n as f64 / count.max(1) as f64;
        let parts: Vec<String> = requests
            .iter()
            .map(|(request, n)| format!("{request} {:.2}", each(*n)))
            .collect();
        format!("{:.2} ({})", each(total), parts.join(", "))
    };
    format!(
        "AuditStream {}; AuditConsumer {}; Events {}",
        of(&|resource| resource == "auditstreams"),
        of(&|resource| CONSUMER_RESOURCES.contains(&resource)),
        of(&|resource| resource == "events"),
    )
}

fn by_verb(requests: &BTreeMap<String, u64>) -> String {
    if requests.is_empty() {
        return "0".to_owned();
    }
    requests
        .iter()
        .map(|(verb, count)| format!("{verb} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The failed reconciliations by kind and reason, from the operator's counter.
fn failures(metrics: &str) -> String {
    let listed: Vec<String> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("audit_operator_reconcile_failures_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            Some(format!("{} {value}", labels.replace('"', "")))
        })
        .collect();
    if listed.is_empty() {
        "0".to_owned()
    } else {
        listed.join(", ")
    }
}

/// The value of a counter sample in Prometheus text, 0 when absent.
fn counter(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The upper bound of the histogram bucket holding quantile `q` of the reconcile durations
/// of `kind`: the histogram's resolution is its buckets, so that is what can be said.
fn histogram_quantile(metrics: &str, kind: &str, q: f64) -> String {
    let prefix = "audit_operator_reconcile_duration_seconds_bucket{";
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter(|rest| rest.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|rest| {
            let bound = rest.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            let count = rest.rsplit_once(' ')?.1.parse().ok()?;
            Some((bound, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return "-".to_owned();
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map_or("-".to_owned(), |(bound, _)| format!("≤ {bound}"))
}

/// The figures of one run, in the order they were taken.
struct Report {
    title: String,
    rows: Vec<(String, String)>,
}

impl Report {
    /// `subject` names the run in the table's head, e.g. `N = 100`.
    fn new(subject: &str, concurrency: u16) -> Self {
        let concurrency = if concurrency == 0 {
            "0 (no limit)".to_owned()
        } else {
            concurrency.to_string()
        };
        Self {
            title: format!("{subject}, --concurrency {concurrency}"),
            rows: Vec::new(),
        }
    }

    fn set(&mut self, what: &str, value: String) {
        progress(&format!("{what}: {value}"));
        self.rows.push((what.to_owned(), value));
    }

    fn markdown(&self) -> String {
        let mut text = format!("\n| {} | |\n|---|---|\n", self.title);
        for (what, value) in &self.rows {
            let _ = writeln!(text, "| {what} | {value} |");
        }
        text
    }
}
