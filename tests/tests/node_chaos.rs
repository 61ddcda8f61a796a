//! Zero loss under faults: the whole pipeline on the real node (a 3-node NATS cluster, an
//! AuditStream with 3 replicas, an AuditConsumer with 3 pods, the operator from the chart
//! with 2 replicas and leader election) while a publisher sends events with unique ids and a
//! seeded schedule injects faults: consumer containers killed, pods deleted, NATS nodes
//! (the stream leader among them) stopped and restarted, the operator leader killed, the API
//! server restarted, rolling updates, scaling 3 -> 1 -> 3, output stalled for longer
//! than `ackWait`, and the object store unreachable for 30 s. A second AuditConsumer on the
//! same stream archives every event into a real S3 store (versitygw) on the node's address.
//!
//! At the end every event the stream acknowledged must appear in the pods' output (collected
//! from the container log files on the node, as a node-level log agent would), duplicates must be
//! redeliveries, every such event must also be in a segment of the archive, both durable
//! consumers must have acknowledged everything, every resource must be Ready, and deleting the resources must leave nothing behind on NATS or in Kubernetes.
//!
//! `make test` runs a short variant; `make chaos` the long one, which writes the figures to
//! `docs/reliability.md`. Settings (environment): `AUDIT_CHAOS_EVENTS` (at least this many
//! events, default 3000), `AUDIT_CHAOS_RATE` (events per second, default 100),
//! `AUDIT_CHAOS_ROUNDS` (injections of each fault kind, default 1), `AUDIT_CHAOS_SEED` (the
//! schedule; printed, so that a failing run can be replayed), `AUDIT_CHAOS_REPORT` (a file
//! to write the figures to).

mod operator_support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::Stream as JsStream};
use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsCluster;
use audit_tests::node::{LogLine, Node, NodeLogs};
use audit_tests::operator::ChartRelease;
use audit_tests::s3::ObjectStore;
use audit_tests::wait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams};
use kube::core::DynamicObject;
use operator_support::{AUDIT_CONSUMER, AUDIT_STREAM, RESTRICTED};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(250);
const STREAM: &str = "CHAOS";
const CONSUMER: &str = "sink";
/// The AuditConsumer writing to the archive, and its bucket.
const ARCHIVER: &str = "archive";
const BUCKET: &str = "chaos-trail";
/// How long the object store is unreachable.
const STORE_OUTAGE: Duration = Duration::from_secs(30);
/// Short, so that a stalled pod's events are redelivered to the others within the run.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long a pod's output stalls: its pipe (64 KiB) fills within seconds at the soak's rate,
/// and its writes then stay blocked for well over `ACK_WAIT`.
const STALL: Duration = Duration::from_secs(30);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value} is not a number"))
        })
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillConsumerContainer,
    DeleteConsumerPod,
    RestartNatsStreamLeader,
    RestartNatsFollower,
    KillOperatorLeader,
    RestartApiServer,
    RollingUpdate,
    ScaleDownAndUp,
    StallOutput,
    StopObjectStore,
}

impl Fault {
    const ALL: [Fault; 10] = [
        Fault::KillConsumerContainer,
        Fault::DeleteConsumerPod,
        Fault::RestartNatsStreamLeader,
        Fault::RestartNatsFollower,
        Fault::KillOperatorLeader,
        Fault::RestartApiServer,
        Fault::RollingUpdate,
        Fault::ScaleDownAndUp,
        Fault::StallOutput,
        Fault::StopObjectStore,
    ];

    fn describe(self) -> &'static str {
        match self {
            Fault::KillConsumerContainer => "SIGKILL of a consumer container",
            Fault::DeleteConsumerPod => "consumer pod deleted",
            Fault::RestartNatsStreamLeader => "NATS node stopped and restarted: the stream leader",
            Fault::RestartNatsFollower => "NATS node stopped and restarted: a follower",
            Fault::KillOperatorLeader => "SIGKILL of the operator leader",
            Fault::RestartApiServer => "API server restarted",
            Fault::RollingUpdate => "rolling update of the consumer (spec change)",
            Fault::ScaleDownAndUp => "consumer scaled 3 -> 1 -> 3",
            Fault::StallOutput => "a pod's output stalled for 30 s (ackWait 10 s)",
            Fault::StopObjectStore => "the object store unreachable for 30 s (archive output)",
        }
    }
}

/// One injected fault and how the pipeline came back.
#[derive(Debug, Clone)]
struct Injection {
    fault: Fault,
    at_wall: k8s_openapi::jiff::Timestamp,
    /// From the fault to the first line of an event the stream stored after it.
    writing_again: Duration,
    /// From the fault to every resource Ready again.
    ready_again: Duration,
}

/// What the publisher sent and the stream acknowledged.
#[derive(Debug, Default)]
struct Published {
    /// Event id -> stream sequence.
    acknowledged: BTreeMap<String, u64>,
    last_sequence: u64,
    retries: u64,
}

struct Soak {
    node: &'static Node,
    control_plane: &'static ControlPlane,
    client: kube::Client,
    operator: ChartRelease,
    namespace: String,
    nats: NatsCluster,
    js: jetstream::Context,
    streams: Api<DynamicObject>,
    consumers: Api<DynamicObject>,
    logs: NodeLogs,
    published: Arc<Mutex<Published>>,
    rng: fastrand::Rng,
    rollouts: u32,
    store: ObjectStore,
}

/// A consumer output line: its event id, delivery count and stream sequence.
fn audit_event(line: &str) -> Option<anyhow::Result<(String, u64, u64)>> {
    let value: Value = serde_json::from_str(line).ok()?;
    value.get("kind")?;
    Some((|| {
        for field in [
            "kind",
            "subject",
            "stream",
            "consumer",
            "stream_seq",
            "consumer_seq",
            "delivered",
            "published",
        ] {
            anyhow::ensure!(value.get(field).is_some(), "no {field} in {line}");
        }
        anyhow::ensure!(
            value["stream"] == STREAM && value["consumer"] == CONSUMER,
            "{line}"
        );
        let id = value["event"]["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no event id in {line}"))?
            .to_owned();
        let delivered = value["delivered"].as_u64().unwrap_or_default();
        let sequence = value["stream_seq"].as_u64().unwrap_or_default();
        Ok((id, delivered, sequence))
    })())
}

impl Soak {
    async fn start(seed: u64) -> anyhow::Result<Self> {
        let node = Node::shared();
        let control_plane = ControlPlane::shared();
        let client = control_plane.admin_client().await?;
        let restricted = [RESTRICTED];
        let operator_namespace = control_plane
            .create_namespace_labelled("audit-system", &restricted)
            .await?;
        let operator =
            ChartRelease::install(&operator_namespace, 2, &["requeueInterval=5s"]).await?;
        let namespace = control_plane
            .create_namespace_labelled("chaos", &restricted)
            .await?;
        let nats = NatsCluster::start_on(node.ip(), 3).await?;
        let js = jetstream::new(nats.client().await?);
        let streams = operator_support::api(&client, &namespace, AUDIT_STREAM);
        let consumers = operator_support::api(&client, &namespace, AUDIT_CONSUMER);
        let logs = node.tail_logs(&namespace);
        let store = ObjectStore::start_on(node.ip()).await?;
        store.create_bucket(BUCKET).await?;
        operator_support::put_key_pair(
            &client,
            &namespace,
            "archive-writer",
            store.access_key(),
            store.secret_key(),
        )
        .await?;
        let soak = Self {
            node,
            control_plane,
            client,
            operator,
            namespace,
            nats,
            js,
            streams,
            consumers,
            logs,
            published: Arc::default(),
            rng: fastrand::Rng::with_seed(seed),
            rollouts: 0,
            store,
        };
        soak.apply_stream().await?;
        soak.apply_consumer(3).await?;
        soak.apply_archiver().await?;
        soak.wait_all_ready(3).await?;
        Ok(soak)
    }

    async fn apply_stream(&self) -> anyhow::Result<()> {
        operator_support::apply(
            &self.streams,
            AUDIT_STREAM,
            "events",
            json!({
                "connection": { "servers": self.nats.urls() },
                "name": STREAM,
                "subjects": ["chaos.>"],
                "replicas": 3,
                "storage": "File",
                "deletionPolicy": "Delete",
            }),
        )
        .await?;
        Ok(())
    }

    async fn apply_consumer(&self, replicas: u32) -> anyhow::Result<()> {
        operator_support::apply(
            &self.consumers,
            AUDIT_CONSUMER,
            CONSUMER,
            json!({
                "streamRef": { "name": "events" },
                "replicas": replicas,
                "batch": 50,
                "expires": "2s",
                "ackWait": format!("{}s", ACK_WAIT.as_secs()),
                "deletionPolicy": "Delete",
                "pod": { "annotations": { "chaos/rollout": self.rollouts.to_string() } },
            }),
        )
        .await?;
        Ok(())
    }

    /// The second AuditConsumer: two pods archiving every event, small segments stored often.
    async fn apply_archiver(&self) -> anyhow::Result<()> {
        operator_support::apply(
            &self.consumers,
            AUDIT_CONSUMER,
            ARCHIVER,
            json!({
                "streamRef": { "name": "events" },
                "replicas": 2,
                "batch": 50,
                "expires": "2s",
                "ackWait": format!("{}s", ACK_WAIT.as_secs()),
                "deletionPolicy": "Delete",
                "archive": {
                    "bucket": BUCKET,
                    "region": audit_tests::s3::REGION,
                    "endpoint": self.store.endpoint(),
                    "forcePathStyle": true,
                    "credentialsSecretRef": { "name": "archive-writer" },
                    "segment": { "maxLines": 200, "maxAge": "2s" },
                },
            }),
        )
        .await?;
        Ok(())
    }

    /// Ready for the current generation, with `replicas` ready pods, and the operator's two
    /// replicas ready.
    async fn all_ready(&self, replicas: u32) -> anyhow::Result<bool> {
        let ready = |object: &DynamicObject| {
            let status = &object.data["status"];
            status["observedGeneration"].as_i64() == object.metadata.generation
                && status["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
        };
        let stream = self.streams.get("events").await?;
        let consumer = self.consumers.get(CONSUMER).await?;
        let consumer_pods =
            consumer.data["status"]["readyReplicas"].as_u64() == Some(replicas.into());
        let archiver = self.consumers.get(ARCHIVER).await?;
        let archiver_pods = archiver.data["status"]["readyReplicas"].as_u64() == Some(2);
        let operators: Api<Deployment> =
            Api::namespaced(self.client.clone(), &self.operator.namespace);
        let operator_status = operators
            .get(&self.operator.name)
            .await?
            .status
            .unwrap_or_default();
        Ok(ready(&stream)
            && ready(&consumer)
            && consumer_pods
            && ready(&archiver)
            && archiver_pods
            && operator_status.ready_replicas == Some(2)
            && operator_status.updated_replicas == Some(2))
    }

    async fn wait_all_ready(&self, replicas: u32) -> anyhow::Result<()> {
        wait::until("every resource Ready", WAIT, POLL, || async {
            Ok(self.all_ready(replicas).await?.then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.operator.logs()))
    }

    fn last_sequence(&self) -> u64 {
        self.published
            .lock()
            .expect("no panic while holding it")
            .last_sequence
    }

    /// Waits until some pod, at `since` or later, wrote an event the stream stored after
    /// `sequence`; returns how long after `since` it was written (by the container runtime's
    /// clock, which is this machine's).
    async fn wait_writing_after(
        &self,
        sequence: u64,
        since: k8s_openapi::jiff::Timestamp,
    ) -> anyhow::Result<Duration> {
        wait::until("the pipeline to write new events", WAIT, POLL, || async {
            let first = self
                .logs
                .stdout()
                .into_iter()
                .filter(|line| line.time >= since)
                .find(|line| {
                    matches!(audit_event(&line.text), Some(Ok((_, _, written))) if written > sequence)
                });
            Ok(first.map(|line| {
                Duration::try_from(line.time.duration_since(since)).unwrap_or_default()
            }))
        })
        .await
    }

    /// Waits until the archive's durable consumer acknowledged an event the stream stored
    /// after `sequence` (so its segment is stored); returns how long after `since` that was.
    async fn wait_archived_after(&self, sequence: u64, since: Instant) -> anyhow::Result<Duration> {
        wait::until("the archive storing again", WAIT, POLL, || async {
            let floor = self.ack_floor(ARCHIVER).await?;
            Ok((floor > sequence).then(|| since.elapsed()))
        })
        .await
    }

    /// The stream sequence up to which durable consumer `durable` acknowledged everything.
    async fn ack_floor(&self, durable: &str) -> anyhow::Result<u64> {
        let mut consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(STREAM)
            .await?
            .get_consumer(durable)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(consumer.info().await?.ack_floor.stream_sequence)
    }

    /// The event ids in every archive segment.
    async fn archived_ids(&self) -> anyhow::Result<std::collections::HashSet<String>> {
        let mut ids = std::collections::HashSet::new();
        for key in self.store.keys(BUCKET, "").await? {
            let body = self.store.get(BUCKET, &key).await?;
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::MultiGzDecoder::new(&body[..]),
                &mut text,
            )?;
            for line in text.lines() {
                let value: Value = serde_json::from_str(line)?;
                if let Some(id) = value["event"]["id"].as_str() {
                    ids.insert(id.to_owned());
                }
            }
        }
        Ok(ids)
    }

    async fn consumer_pods(&self) -> anyhow::Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let listed = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={CONSUMER}")))
            .await?;
        Ok(listed
            .items
            .into_iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .filter(|pod| running_container(pod).is_some())
            .collect())
    }

    async fn random_consumer_pod(&mut self) -> anyhow::Result<Pod> {
        let mut pods = self.consumer_pods().await?;
        anyhow::ensure!(!pods.is_empty(), "no running consumer pod");
        let index = self.rng.usize(..pods.len());
        Ok(pods.swap_remove(index))
    }

    /// SIGKILLs the pod's running container and waits until the kubelet has restarted it.
    async fn kill_and_wait_restart(&self, namespace: &str, pod: Pod) -> anyhow::Result<()> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let restarts = |pod: &Pod| -> i32 {
            pod.status
                .as_ref()
                .and_then(|status| status.container_statuses.as_ref())
                .map(|statuses| statuses.iter().map(|s| s.restart_count).sum())
                .unwrap_or(0)
        };
        let before = restarts(&pod);
        let container = running_container(&pod)
            .ok_or_else(|| anyhow::anyhow!("{name} has no running container"))?;
        self.node.kill_container(&container)?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        wait::until(&format!("{name} restarted"), WAIT, POLL, || async {
            Ok((restarts(&pods.get(&name).await?) > before).then_some(()))
        })
        .await
    }

    /// The index of the NATS node leading the stream.
    async fn stream_leader(&self) -> anyhow::Result<usize> {
        let mut stream: JsStream = self.js.get_stream(STREAM).await?;
        let leader = stream
            .info()
            .await?
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.leader.clone())
            .ok_or_else(|| anyhow::anyhow!("the stream has no leader"))?;
        (0..3)
            .find(|index| leader.starts_with(&format!("node{index}-")))
            .ok_or_else(|| anyhow::anyhow!("unknown stream leader {leader}"))
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::KillConsumerContainer => {
                let pod = self.random_consumer_pod().await?;
                self.kill_and_wait_restart(&self.namespace.clone(), pod)
                    .await?;
            }
            Fault::DeleteConsumerPod => {
                let pod = self.random_consumer_pod().await?;
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
                pods.delete(
                    &pod.metadata.name.unwrap_or_default(),
                    &DeleteParams::default(),
                )
                .await?;
            }
            Fault::RestartNatsStreamLeader | Fault::RestartNatsFollower => {
                let leader = self.stream_leader().await?;
                let index = if fault == Fault::RestartNatsStreamLeader {
                    leader
                } else {
                    (leader + 1 + self.rng.usize(..2)) % 3
                };
                let node = self.nats.node_mut(index);
                node.stop().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                node.start_again().await?;
            }
            Fault::KillOperatorLeader => {
                let leases: Api<Lease> =
                    Api::namespaced(self.client.clone(), &self.operator.namespace);
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator.namespace);
                // Right after another fault (an API server restart) the Lease may still name a
                // leader that stepped down and whose container is restarting: wait for a leader
                // that is running, as a real outage would find one.
                let pod = wait::until(
                    "an operator leader with a running container",
                    Duration::from_secs(120),
                    Duration::from_millis(500),
                    || {
                        let (leases, pods) = (leases.clone(), pods.clone());
                        async move {
                            let Some(leader) = leases
                                .get("audit-operator-leader")
                                .await?
                                .spec
                                .and_then(|spec| spec.holder_identity)
                            else {
                                return Ok(None);
                            };
                            let Some(pod) = pods.get_opt(&leader).await? else {
                                return Ok(None);
                            };
                            let running = pod.status.as_ref().is_some_and(|status| {
                                status.container_statuses.iter().flatten().any(|container| {
                                    container
                                        .state
                                        .as_ref()
                                        .is_some_and(|s| s.running.is_some())
                                })
                            });
                            Ok(running.then_some(pod))
                        }
                    },
                )
                .await?;
                self.kill_and_wait_restart(&self.operator.namespace.clone(), pod)
                    .await?;
            }
            Fault::RestartApiServer => self.control_plane.restart_api_server().await?,
            Fault::RollingUpdate => {
                self.rollouts += 1;
                self.apply_consumer(3).await?;
            }
            Fault::ScaleDownAndUp => {
                self.apply_consumer(1).await?;
                self.wait_all_ready(1).await?;
                self.apply_consumer(3).await?;
            }
            Fault::StallOutput => {
                let pod = self.random_consumer_pod().await?;
                let container = running_container(&pod).expect("a running pod");
                let stalled = self.node.stall_output(&container)?;
                tokio::time::sleep(STALL).await;
                drop(stalled);
            }
            Fault::StopObjectStore => {
                self.store.stop().await;
                tokio::time::sleep(STORE_OUTAGE).await;
                self.store.start_again().await?;
            }
        }
        Ok(())
    }
}

impl Soak {
    /// Which acknowledged events no pod wrote, and what NATS says of them: for a failure
    /// message that tells lost events from uncollected lines.
    fn missing(&self, published: &Published) -> String {
        let written: std::collections::HashSet<String> = self
            .logs
            .stdout()
            .iter()
            .filter_map(|line| audit_event(&line.text)?.ok().map(|(id, _, _)| id))
            .collect();
        let missing: Vec<(&String, &u64)> = published
            .acknowledged
            .iter()
            .filter(|(id, _)| !written.contains(*id))
            .collect();
        format!(
            "{} of {} acknowledged events in no pod's output, e.g. {:?}",
            missing.len(),
            published.acknowledged.len(),
            &missing[..missing.len().min(10)]
        )
    }
}

/// The container id of a pod's running consumer container.
fn running_container(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|status| status.state.as_ref().is_some_and(|s| s.running.is_some()))?
        .container_id
        .clone()
}

/// Publishes `chaos.<n>` events with unique ids at `rate` per second until `stop` is set and
/// at least `minimum` were acknowledged. A failed publish is retried with the same
/// `Nats-Msg-Id`, so the stream stores each id once.
async fn publish(
    js: jetstream::Context,
    rate: u64,
    minimum: u64,
    published: Arc<Mutex<Published>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        if *stop.borrow_and_update() && n >= minimum {
            return Ok(());
        }
        tick.tick().await;
        let id = format!("evt-{n:07}");
        let payload =
            json!({ "id": id, "type": "chaos.event", "source": "soak", "data": { "n": n } })
                .to_string();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let sequence = loop {
            let attempt = async {
                js.publish_with_headers(
                    format!("chaos.{n}"),
                    headers.clone(),
                    payload.clone().into(),
                )
                .await?
                .await
                .map_err(anyhow::Error::from)
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(ack)) => break ack.sequence,
                Ok(Err(_)) | Err(_) => {
                    published.lock().expect("no panic while holding it").retries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let mut published = published.lock().expect("no panic while holding it");
        published.acknowledged.insert(id, sequence);
        published.last_sequence = published.last_sequence.max(sequence);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_loses_no_event_under_faults() -> anyhow::Result<()> {
    let events = setting("AUDIT_CHAOS_EVENTS", 3000);
    let rate = setting("AUDIT_CHAOS_RATE", 100);
    let rounds = setting("AUDIT_CHAOS_ROUNDS", 1);
    let seed = setting(
        "AUDIT_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    );
    eprintln!(
        "chaos soak: AUDIT_CHAOS_SEED={seed} AUDIT_CHAOS_EVENTS={events} AUDIT_CHAOS_RATE={rate} AUDIT_CHAOS_ROUNDS={rounds}"
    );
    let mut soak = Soak::start(seed).await?;
    let started = Instant::now();

    let (stop_publishing, stopped) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn(publish(
        soak.js.clone(),
        rate,
        events,
        soak.published.clone(),
        stopped,
    ));
    soak.wait_writing_after(0, k8s_openapi::jiff::Timestamp::now())
        .await?;

    let repeats = usize::try_from(rounds)?.max(1);
    let mut schedule: Vec<Fault> = Fault::ALL
        .iter()
        .flat_map(|fault| std::iter::repeat_n(*fault, repeats))
        .collect();
    soak.rng.shuffle(&mut schedule);
    let mut injections = Vec::new();
    for fault in schedule {
        tokio::time::sleep(Duration::from_millis(soak.rng.u64(2_000..6_000))).await;
        let sequence_at_fault = soak.last_sequence();
        let at = Instant::now();
        let at_wall = k8s_openapi::jiff::Timestamp::now();
        eprintln!(
            "{:>6.1}s  {}",
            started.elapsed().as_secs_f64(),
            fault.describe()
        );
        soak.inject(fault)
            .await
            .map_err(|e| anyhow::anyhow!("injecting '{}': {e:#}", fault.describe()))?;
        // The object store's outage stops only the archive: it is back when the archive's
        // durable consumer acknowledges an event from after the fault.
        let writing_again = match fault {
            Fault::StopObjectStore => soak.wait_archived_after(sequence_at_fault, at).await,
            _ => soak.wait_writing_after(sequence_at_fault, at_wall).await,
        }
        .map_err(|e| anyhow::anyhow!("after '{}': {e:#}", fault.describe()))?;
        soak.wait_all_ready(3)
            .await
            .map_err(|e| anyhow::anyhow!("after '{}': {e:#}", fault.describe()))?;
        injections.push(Injection {
            fault,
            at_wall,
            writing_again,
            ready_again: at.elapsed(),
        });
    }
    stop_publishing.send(true)?;
    publisher.await??;
    let published = std::mem::take(&mut *soak.published.lock().expect("no panic"));
    eprintln!(
        "{} events acknowledged by the stream (last sequence {}, {} publish retries)",
        published.acknowledged.len(),
        published.last_sequence,
        published.retries
    );

    // Every acknowledged event is written by some pod.
    let written = wait::until(
        "every acknowledged event in the pods' output",
        WAIT,
        POLL,
        || async {
            let mut written: HashMap<String, Vec<u64>> = HashMap::new();
            for line in soak.logs.stdout() {
                if let Some(event) = audit_event(&line.text) {
                    let (id, delivered, _) = event?;
                    written.entry(id).or_default().push(delivered);
                }
            }
            let missing = published
                .acknowledged
                .keys()
                .filter(|id| !written.contains_key(*id))
                .count();
            Ok((missing == 0).then_some(written))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", soak.missing(&published)))?;
    assert_eq!(
        written.len(),
        published.acknowledged.len(),
        "nothing is written that was not published"
    );

    // At least once: an event written more than once was delivered again; at most one of its
    // lines is a first delivery.
    let duplicated: Vec<(&String, &Vec<u64>)> = written
        .iter()
        .filter(|(_, deliveries)| deliveries.len() > 1)
        .collect();
    for (id, deliveries) in &duplicated {
        assert!(
            deliveries
                .iter()
                .filter(|&&delivered| delivered == 1)
                .count()
                <= 1,
            "{id} written twice as a first delivery: {deliveries:?}"
        );
    }

    // Every acknowledged event is in the archive too, and its durable acknowledged all.
    wait::until("every acknowledged event archived", WAIT, POLL, || async {
        let archived = soak.archived_ids().await?;
        let missing = published
            .acknowledged
            .keys()
            .filter(|id| !archived.contains(*id))
            .count();
        let floor = soak.ack_floor(ARCHIVER).await?;
        Ok((missing == 0 && floor == published.last_sequence).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", soak.operator.logs()))?;

    // The durable consumer acknowledged everything, as NATS and the status say.
    wait::until(
        "the durable consumer to acknowledge everything",
        WAIT,
        POLL,
        || async {
            let mut consumer: jetstream::consumer::PullConsumer = soak
                .js
                .get_stream(STREAM)
                .await?
                .get_consumer(CONSUMER)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = consumer.info().await?;
            let status = soak.consumers.get(CONSUMER).await?.data["status"].clone();
            Ok((info.ack_floor.stream_sequence == published.last_sequence
                && info.num_pending == 0
                && info.num_ack_pending == 0
                && status["pending"] == 0
                && status["ackPending"] == 0)
                .then_some(()))
        },
    )
    .await?;
    soak.wait_all_ready(3).await?;

    // Nothing orphaned: exactly our stream and durable on NATS, one ReplicaSet with pods.
    let mut stream_names = soak.js.stream_names();
    let mut names = Vec::new();
    while let Some(name) = futures::StreamExt::next(&mut stream_names).await {
        names.push(name?);
    }
    assert_eq!(names, [STREAM]);
    let stream = soak.js.get_stream(STREAM).await?;
    let mut consumer_names = stream.consumer_names();
    let mut durables = Vec::new();
    while let Some(name) = futures::StreamExt::next(&mut consumer_names).await {
        durables.push(name?);
    }
    durables.sort();
    assert_eq!(durables, [ARCHIVER, CONSUMER]);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(soak.client.clone(), &soak.namespace);
    let active: Vec<String> = replica_sets
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0)
        .filter_map(|rs| rs.metadata.name)
        .collect();
    assert_eq!(
        active.len(),
        2,
        "one ReplicaSet per AuditConsumer runs pods: {active:?}"
    );
    assert_eq!(soak.consumer_pods().await?.len(), 3);

    let stdout = soak.logs.stdout();
    let stall_duplicates = duplicates_by_fault(&stdout, &injections)
        .0
        .get(&Fault::StallOutput)
        .copied()
        .unwrap_or(0);
    assert!(
        stall_duplicates > 0,
        "a pod whose output stalled past ackWait had its events redelivered to the others"
    );
    let report = report(seed, events, rate, rounds, &published, &injections, &stdout);
    println!("{report}");
    if let Ok(path) = std::env::var("AUDIT_CHAOS_REPORT") {
        std::fs::write(&path, &report)?;
    }

    // Deleting the resources leaves nothing behind (both have deletionPolicy Delete).
    for consumer in [CONSUMER, ARCHIVER] {
        soak.consumers
            .delete(consumer, &DeleteParams::default())
            .await?;
    }
    soak.streams
        .delete("events", &DeleteParams::default())
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(soak.client.clone(), &soak.namespace);
    let service_accounts: Api<ServiceAccount> =
        Api::namespaced(soak.client.clone(), &soak.namespace);
    wait::until("nothing left after deletion", WAIT, POLL, || async {
        let pods: Api<Pod> = Api::namespaced(soak.client.clone(), &soak.namespace);
        let left = soak.consumers.get_opt(CONSUMER).await?.is_some()
            || soak.consumers.get_opt(ARCHIVER).await?.is_some()
            || soak.streams.get_opt("events").await?.is_some()
            || !deployments
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
            || !pods.list(&ListParams::default()).await?.items.is_empty()
            || service_accounts
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .any(|sa| sa.metadata.name.as_deref() != Some("default"))
            || soak.js.get_stream(STREAM).await.is_ok();
        Ok((!left).then_some(()))
    })
    .await?;
    Ok(())
}

/// Lines that repeat an event already written, by the latest fault before each (and those
/// before the first fault).
fn duplicates_by_fault(lines: &[LogLine], injections: &[Injection]) -> (BTreeMap<Fault, u64>, u64) {
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut after: BTreeMap<Fault, u64> = BTreeMap::new();
    let mut before_faults = 0;
    for line in lines {
        let Some(Ok((id, _, _))) = audit_event(&line.text) else {
            continue;
        };
        if !seen.insert(id) {
            match injections.iter().rev().find(|i| i.at_wall <= line.time) {
                Some(injection) => *after.entry(injection.fault).or_default() += 1,
                None => before_faults += 1,
            }
        }
    }
    (after, before_faults)
}

/// The figures as a Markdown table: per fault kind, how many were injected, the events lost
/// (0, or the test failed before), duplicates written while that fault was the latest, and
/// the longest times to writing again and to every resource Ready.
fn report(
    seed: u64,
    events: u64,
    rate: u64,
    rounds: u64,
    published: &Published,
    injections: &[Injection],
    lines: &[LogLine],
) -> String {
    let (duplicates_after, duplicates_before_faults) = duplicates_by_fault(lines, injections);
    let mut by_fault: BTreeMap<Fault, Vec<&Injection>> = BTreeMap::new();
    for injection in injections {
        by_fault.entry(injection.fault).or_default().push(injection);
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "| fault | injected | events lost | duplicates | longest to writing again | longest to all Ready |\n|---|---|---|---|---|---|"
    );
    for (fault, list) in &by_fault {
        let longest = |f: fn(&Injection) -> Duration| {
            list.iter()
                .map(|i| f(i))
                .max()
                .unwrap_or_default()
                .as_secs_f64()
        };
        let _ = writeln!(
            text,
            "| {} | {} | 0 | {} | {:.1} s | {:.1} s |",
            fault.describe(),
            list.len(),
            duplicates_after.get(fault).copied().unwrap_or(0),
            longest(|i| i.writing_again),
            longest(|i| i.ready_again),
        );
    }
    let total_duplicates: u64 = duplicates_after.values().sum::<u64>() + duplicates_before_faults;
    let _ = writeln!(
        text,
        "\n{} events acknowledged by the stream and all written ({total_duplicates} written more than once, {duplicates_before_faults} of them before the first fault); {} publishes retried. Seed {seed}: `AUDIT_CHAOS_SEED={seed} AUDIT_CHAOS_EVENTS={events} AUDIT_CHAOS_RATE={rate} AUDIT_CHAOS_ROUNDS={rounds}`.",
        published.acknowledged.len(),
        published.retries,
    );
    text
}
