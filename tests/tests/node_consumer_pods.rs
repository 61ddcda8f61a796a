//! On a real node: AuditConsumer pods run the consumer image the Dockerfile builds in real
//! containers, turn Ready through their real probes, write one line per event that
//! `kubectl logs` shows, run hardened (proven from the container's own process), and drain
//! under the kubelet's SIGTERM on a rollout and a scale-down without losing an event.
//!
//! The operator runs in-cluster, installed once per test binary from the Helm chart.

mod operator_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsServer;
use audit_tests::node::Node;
use audit_tests::operator::ChartRelease;
use audit_tests::pod_logs::PodLogs;
use audit_tests::s3::ObjectStore;
use audit_tests::{tools, wait};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use operator_support::{AUDIT_CONSUMER, RESTRICTED, create_token_secret};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(250);
const TOKEN: &str = "real-node-token-52c1";

/// The operator of this test binary: one replica from the chart.
fn operator() -> &'static ChartRelease {
    operator_support::chart_operator(1, &["requeueInterval=5s", "autoscalingInterval=2s"])
}

/// One test's world: a namespace enforcing the `restricted` Pod Security level, a
/// nats-server on the node's address requiring a token, and the token in a Secret.
struct Env {
    node: &'static Node,
    operator: &'static ChartRelease,
    client: kube::Client,
    namespace: String,
    consumers: Api<DynamicObject>,
    nats: NatsServer,
}

impl Env {
    async fn start(prefix: &str) -> anyhow::Result<Self> {
        let node = Node::shared();
        let operator = operator();
        let control_plane = ControlPlane::shared();
        let client = control_plane.admin_client().await?;
        let namespace = control_plane
            .create_namespace_labelled(prefix, &[RESTRICTED])
            .await?;
        let nats = NatsServer::start_on_with_config(
            node.ip(),
            &format!("authorization {{ token: \"{TOKEN}\" }}"),
        )
        .await?;
        create_token_secret(&client, &namespace, "nats-token", TOKEN).await?;
        Ok(Self {
            node,
            operator,
            consumers: operator_support::api(&client, &namespace, AUDIT_CONSUMER),
            client,
            namespace,
            nats,
        })
    }

    async fn jetstream(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::ConnectOptions::with_token(TOKEN.into())
            .connect(self.nats.url())
            .await?;
        Ok(jetstream::new(client))
    }

    /// `kubectl apply` of a manifest, as a user would.
    fn kubectl_apply(&self, manifest: &str) -> anyhow::Result<()> {
        tools::run(
            "kubectl",
            &["apply", "--namespace", &self.namespace, "-f", "-"],
            Some(manifest),
        )?;
        Ok(())
    }

    /// The sample AuditStream, pointed at this test's server with the token Secret.
    fn apply_sample_stream(&self) -> anyhow::Result<()> {
        let sample = std::fs::read_to_string(
            audit_tests::testenv::workspace_root().join("deploy/samples/auditstream.yaml"),
        )?;
        let mut stream: Value = serde_yaml::from_str(&sample)?;
        stream["spec"]["connection"] = json!({
            "servers": [self.nats.url()],
            "auth": { "tokenSecretRef": { "name": "nats-token", "key": "token" } },
        });
        self.kubectl_apply(&serde_json::to_string(&stream)?)
    }

    fn apply_consumer(&self, name: &str, spec: Value) -> anyhow::Result<()> {
        let mut full = json!({ "streamRef": { "name": "audit-events" } });
        if let (Some(full), Value::Object(spec)) = (full.as_object_mut(), spec) {
            full.extend(spec);
        }
        self.kubectl_apply(&serde_json::to_string(&json!({
            "apiVersion": "audit.eventsaudit.io/v1alpha1",
            "kind": "AuditConsumer",
            "metadata": { "name": name },
            "spec": full,
        }))?)
    }

    async fn consumer_status(&self, name: &str) -> anyhow::Result<Value> {
        Ok(self.consumers.get(name).await?.data["status"].clone())
    }

    /// Waits until the AuditConsumer is Ready for its current generation.
    async fn wait_ready(&self, name: &str) -> anyhow::Result<Value> {
        wait::until(
            &format!("AuditConsumer {name} Ready"),
            WAIT,
            POLL,
            || async {
                let object = self.consumers.get(name).await?;
                let status = &object.data["status"];
                let current = status["observedGeneration"].as_i64() == object.metadata.generation;
                let ready = status["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Ready" && c["status"] == "True")
                    .cloned();
                Ok(ready.filter(|_| current))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.operator.logs()))
    }

    async fn pods(&self, name: &str) -> anyhow::Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
            .await?
            .items)
    }

    /// Waits until the durable consumer has nothing pending and nothing unacknowledged,
    /// as the AuditConsumer's status reports it.
    async fn wait_all_acknowledged(&self, name: &str, last_sequence: u64) -> anyhow::Result<()> {
        wait::until(
            &format!("{name}: pending 0, ack pending 0, ack floor {last_sequence}"),
            WAIT,
            POLL,
            || async {
                let status = self.consumer_status(name).await?;
                Ok((status["pending"] == 0
                    && status["ackPending"] == 0
                    && status["ackFloor"] == last_sequence)
                    .then_some(()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.operator.logs()))
    }
}

/// An event of one of the three kinds the consumer writes, carrying `id`.
fn event(n: usize, id: &str) -> String {
    match n % 3 {
        0 => json!({ "id": id, "type": "order.created", "source": "shop", "data": { "n": n, "password": "hunter2" } })
            .to_string(),
        1 => json!({ "specversion": "1.0", "id": id, "type": "order.paid", "source": "/shop", "data": { "n": n } })
            .to_string(),
        _ => format!("raw event {id}"),
    }
}

/// The event id a line of the consumer's JSON output carries, and its delivery count; `None`
/// for the consumer's own diagnostics, which go to standard error and so into the same
/// container log (a log agent tells them apart by stream).
fn audit_event(line: &str) -> anyhow::Result<Option<(String, u64)>> {
    let Ok(line) = serde_json::from_str::<Value>(line) else {
        return Ok(None);
    };
    if line.get("kind").is_none() {
        return Ok(None);
    }
    let id = match line["kind"].as_str() {
        Some("raw") => line["raw"]
            .as_str()
            .and_then(|raw| raw.strip_prefix("raw event "))
            .map(str::to_owned),
        _ => line["event"]["id"].as_str().map(str::to_owned),
    }
    .ok_or_else(|| anyhow::anyhow!("no event id in {line}"))?;
    let delivered = line["delivered"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no delivery count in {line}"))?;
    Ok(Some((id, delivered)))
}

/// The audit event lines among `lines`, each with its event id and delivery count.
fn audit_events(lines: &[String]) -> anyhow::Result<Vec<(&str, String, u64)>> {
    let mut events = Vec::new();
    for line in lines {
        if let Some((id, delivered)) = audit_event(line)? {
            events.push((line.as_str(), id, delivered));
        }
    }
    Ok(events)
}

#[tokio::test]
async fn the_samples_run_in_real_containers_and_kubectl_logs_shows_every_event_once()
-> anyhow::Result<()> {
    let env = Env::start("samples").await?;
    env.apply_sample_stream()?;
    let sample = std::fs::read_to_string(
        audit_tests::testenv::workspace_root().join("deploy/samples/auditconsumer.yaml"),
    )?;
    env.kubectl_apply(&sample)?;
    let ready = env.wait_ready("audit-log").await?;
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 ready pod(s)")),
        "{ready}"
    );

    let pods = env.pods("audit-log").await?;
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some(env.node.name())
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert!(
            container.ready && container.started == Some(true),
            "{container:?}"
        );
        assert_eq!(container.restart_count, 0, "{container:?}");
        assert!(
            container
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("containerd://")),
            "{container:?}"
        );
    }

    let js = env.jetstream().await?;
    let total = 300;
    for n in 0..total {
        js.publish(
            format!("audit.orders.{n}"),
            event(n, &format!("evt-{n}")).into(),
        )
        .await?
        .await?;
    }

    // What the sample's own comment tells a user to run (with every line, not the last 10
    // that a label selector defaults to).
    let lines = wait::until("kubectl logs to show every event", WAIT, POLL, || async {
        let logs = tools::run(
            "kubectl",
            &[
                "logs",
                "--namespace",
                &env.namespace,
                "-l",
                "app.kubernetes.io/instance=audit-log",
                "--tail=-1",
            ],
            None,
        )?;
        let lines: Vec<String> = logs.lines().map(str::to_owned).collect();
        let events = audit_events(&lines)?.len();
        Ok((events >= total).then_some(lines))
    })
    .await?;
    let events = audit_events(&lines)?;
    assert_eq!(events.len(), total, "one line per event");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, id, _) in &events {
        assert!(!line.contains("hunter2"), "redacted: {line}");
        let parsed: Value = serde_json::from_str(line)?;
        assert_eq!(parsed["stream"], "AUDIT_EVENTS");
        assert_eq!(parsed["consumer"], "audit-log");
        *seen.entry(id.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), total, "every event appears");
    assert!(seen.values().all(|&count| count == 1), "each exactly once");

    env.wait_all_acknowledged("audit-log", total as u64).await?;

    // The plugin merges both pods' lines into the stream's order: every sequence once.
    let merged = kubectl_audit_exits(&env, &["logs", "audit-log"], 0);
    let sequences: Vec<u64> = merged
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| line["stream_seq"].as_u64())
        .collect();
    assert_eq!(
        sequences,
        (1..=total as u64).collect::<Vec<_>>(),
        "in stream order"
    );
    // The chart's operator pod leads and is Ready, as `kubectl audit check` sees it; the
    // Lease is found without being told where.
    let check = kubectl_audit_exits(&env, &["check", "--timeout", "60s"], 0);
    assert!(
        check.contains(&format!("Leader: pod {}/", env.operator.namespace))
            && check.ends_with("The audit-operator is ready.\n"),
        "{check}"
    );
    let status = kubectl_audit_exits(&env, &["status", "audit-log"], 0);
    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        assert!(
            status.contains(&format!(
                "    {name} Running, ready, restarts 0 (node {})",
                env.node.name()
            )),
            "{status}"
        );
    }
    let json: Value = serde_json::from_str(&kubectl_audit_exits(
        &env,
        &["status", "audit-log", "-o", "json"],
        0,
    ))?;
    assert_eq!(
        json["consumers"][0]["pods"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );
    assert_eq!(json["consumers"][0]["pending"], 0, "{json}");

    // A container killed and restarted: its lines before the kill are in its previous
    // container's log, which `kubectl audit logs` reads too, also while following.
    let killed = pods[0].metadata.name.clone().unwrap_or_default();
    let container = pods[0]
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses[0].container_id.clone())
        .ok_or_else(|| anyhow::anyhow!("{killed} has no container id"))?;
    let before_kill = tools::run(
        "kubectl",
        &["logs", "--namespace", &env.namespace, &killed, "--tail=-1"],
        None,
    )?;
    let before_kill: Vec<String> = before_kill.lines().map(str::to_owned).collect();
    assert!(
        !audit_events(&before_kill)?.is_empty(),
        "{killed} wrote events before the kill, which only its previous container's log holds after"
    );
    env.node.kill_container(&container)?;
    let pods_api: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    wait::until(
        &format!("{killed} restarted and ready"),
        WAIT,
        POLL,
        || async {
            let pod = pods_api.get(&killed).await?;
            let status = pod
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default();
            Ok(status
                .first()
                .filter(|c| c.restart_count == 1 && c.ready)
                .map(|_| ()))
        },
    )
    .await?;
    let follow = FollowedLogs::start(&env, "audit-log")?;
    let more = 30;
    for n in total..total + more {
        js.publish(
            format!("audit.orders.{n}"),
            event(n, &format!("evt-{n}")).into(),
        )
        .await?
        .await?;
    }
    let all = (total + more) as u64;
    env.wait_all_acknowledged("audit-log", all).await?;
    let followed = follow.until_sequence(all)?;
    let merged = kubectl_audit_exits(&env, &["logs", "audit-log"], 0);
    let sequences = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|line| line["stream_seq"].as_u64())
            .collect()
    };
    let after_restart = sequences(&merged);
    assert!(
        after_restart.windows(2).all(|pair| pair[0] <= pair[1]),
        "in stream order: {after_restart:?}"
    );
    // A line written but not acknowledged before the kill is delivered, and written, again.
    let distinct: std::collections::BTreeSet<u64> = after_restart.iter().copied().collect();
    assert_eq!(
        distinct,
        (1..=all).collect(),
        "every line, the killed container's included"
    );
    let distinct_followed: std::collections::BTreeSet<u64> =
        sequences(&followed.join("\n")).into_iter().collect();
    assert_eq!(
        distinct_followed,
        (1..=all).collect(),
        "followed: every line"
    );
    Ok(())
}

/// `kubectl audit logs -f` running in the background, its lines collected by a thread.
struct FollowedLogs {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl FollowedLogs {
    fn start(env: &Env, consumer: &str) -> anyhow::Result<Self> {
        let mut child = std::process::Command::new(audit_tests::cargo_bin("kubectl-audit"))
            .args(["logs", "-f", consumer, "--namespace", &env.namespace])
            .env("KUBECONFIG", ControlPlane::shared().kubeconfig_path())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// The lines printed until one with stream sequence `last` and a few seconds after; then
    /// stops the plugin.
    fn until_sequence(mut self, last: u64) -> anyhow::Result<Vec<String>> {
        let deadline = std::time::Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|e| {
                anyhow::anyhow!(
                    "kubectl audit logs -f: no line with stream_seq {last} ({e}); got:\n{}",
                    lines.join("\n")
                )
            })?;
            let done = serde_json::from_str::<Value>(&line)
                .is_ok_and(|parsed| parsed["stream_seq"].as_u64() == Some(last));
            lines.push(line);
            if done {
                // Lines of other pods held back for their order may still follow it.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(3)) {
                    lines.push(line);
                }
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok(lines);
            }
        }
    }
}

impl Drop for FollowedLogs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of `/proc/<pid>/status`, e.g. `Uid`.
fn proc_status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc status:\n{status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn consumer_containers_are_hardened_as_their_own_process_sees_it() -> anyhow::Result<()> {
    let env = Env::start("hardening").await?;
    env.apply_sample_stream()?;
    env.apply_consumer("hardened", json!({ "replicas": 1 }))?;
    env.wait_ready("hardened").await?;
    let pods = env.pods("hardened").await?;
    let container_id = pods[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    let pid = env.node.container_pid(&container_id)?;
    let proc = |file: &str| std::fs::read(format!("/proc/{pid}/{file}"));

    let status = String::from_utf8(proc("status")?)?;
    assert_eq!(proc_status_field(&status, "Uid"), "65532 65532 65532 65532");
    assert_eq!(proc_status_field(&status, "Gid"), "65532 65532 65532 65532");
    for capabilities in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            proc_status_field(&status, capabilities),
            "0000000000000000",
            "{capabilities}"
        );
    }
    assert_eq!(proc_status_field(&status, "NoNewPrivs"), "1");
    // 2: a seccomp filter (RuntimeDefault) is active.
    assert_eq!(proc_status_field(&status, "Seccomp"), "2");

    // The root filesystem is mounted read-only, and a write through it fails.
    let mountinfo = String::from_utf8(proc("mountinfo")?)?;
    let root_mount = mountinfo
        .lines()
        .find(|line| line.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    let options = root_mount.split_whitespace().nth(5).unwrap();
    assert!(options.split(',').any(|o| o == "ro"), "{root_mount}");
    let written = std::fs::write(format!("/proc/{pid}/root/written-by-the-test"), b"x");
    assert_eq!(
        written.as_ref().map_err(std::io::Error::raw_os_error),
        Err(Some(libc::EROFS)),
        "a write to the container's root filesystem fails as read-only"
    );

    // The one file it may write: its termination message, which the kubelet mounts
    // writable over the read-only root.
    let termination_mount = mountinfo
        .lines()
        .find(|line| line.split_whitespace().nth(4) == Some("/dev/termination-log"))
        .expect("a termination-log mount");
    let options = termination_mount.split_whitespace().nth(5).unwrap();
    assert!(options.split(',').any(|o| o == "rw"), "{termination_mount}");
    let termination_log = std::fs::metadata(format!("/proc/{pid}/root/dev/termination-log"))?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&termination_log.permissions());
    assert!(
        mode & 0o002 != 0 || std::os::unix::fs::MetadataExt::uid(&termination_log) == 65532,
        "user 65532 can write its termination message (mode {mode:o})"
    );

    // The credential is a file, never an argument or an environment value.
    let cmdline = String::from_utf8_lossy(&proc("cmdline")?).replace('\0', " ");
    let environ = String::from_utf8_lossy(&proc("environ")?).replace('\0', "\n");
    assert!(!cmdline.contains(TOKEN), "{cmdline}");
    assert!(!environ.contains(TOKEN), "{environ}");
    assert!(
        cmdline.contains("--token-file"),
        "the consumer reads the token from a file: {cmdline}"
    );
    assert!(
        cmdline.contains("--termination-log=/dev/termination-log"),
        "{cmdline}"
    );
    assert_eq!(
        pods[0]
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .restart_count,
        0
    );
    Ok(())
}

/// A pod the node's real scheduler cannot place: the AuditConsumer's status names the pod and
/// gives the scheduler's reason, stays Reconciling (not Stalled), and a fitting spec turns it
/// Ready.
#[tokio::test]
async fn a_pod_that_cannot_be_scheduled_is_named_in_the_status_with_the_schedulers_reason()
-> anyhow::Result<()> {
    let env = Env::start("unschedulable").await?;
    env.apply_sample_stream()?;
    let resources = |cpu: &str| {
        json!({ "pod": { "resources": {
            "requests": { "cpu": cpu, "memory": "64Mi" },
            "limits": { "cpu": cpu, "memory": "256Mi" },
        } } })
    };
    // The node has two CPUs.
    env.apply_consumer("greedy", resources("64"))?;
    let object = wait::until(
        "WorkloadAvailable reason PodsUnschedulable",
        WAIT,
        POLL,
        || async {
            let object = env.consumers.get("greedy").await?;
            let unschedulable = operator_support::condition(&object, "WorkloadAvailable")
                .is_some_and(|c| c["reason"] == "PodsUnschedulable");
            Ok(unschedulable.then_some(object))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.operator.logs()))?;
    let pods = env.pods("greedy").await?;
    assert_eq!(pods.len(), 1);
    let pod = pods[0].metadata.name.as_deref().unwrap_or_default();
    let workload = operator_support::condition(&object, "WorkloadAvailable").unwrap();
    let message = workload["message"].as_str().unwrap_or_default();
    // The Deployment's own counts may still lag behind its pod ("0 up to date").
    assert!(message.starts_with("0 of 1 pod(s) ready, "), "{message}");
    assert!(
        message.contains(&format!(
            " up to date; pod {pod} cannot be scheduled: 0/1 nodes are available"
        )),
        "{message}"
    );
    assert!(message.contains("Insufficient cpu"), "{message}");
    let ready = operator_support::condition(&object, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "PodsUnschedulable");
    assert_eq!(
        operator_support::condition_status(&object, "Reconciling"),
        "True"
    );
    assert_eq!(
        operator_support::condition_status(&object, "Stalled"),
        "False"
    );

    env.apply_consumer("greedy", resources("100m"))?;
    let ready = env.wait_ready("greedy").await?;
    assert_eq!(ready["reason"], "Ready", "{ready}");
    let object = env.consumers.get("greedy").await?;
    let workload = operator_support::condition(&object, "WorkloadAvailable").unwrap();
    assert_eq!(workload["reason"], "WorkloadAvailable", "{workload}");
    Ok(())
}

#[tokio::test]
async fn a_rollout_and_a_scale_down_drain_under_sigterm_and_lose_nothing() -> anyhow::Result<()> {
    let env = Env::start("drain").await?;
    env.apply_sample_stream()?;
    let spec = |replicas: u32, batch: u32| json!({ "replicas": replicas, "batch": batch, "expires": "2s", "deliverPolicy": "All" });
    env.apply_consumer("drained", spec(2, 20))?;
    env.wait_ready("drained").await?;
    let logs = PodLogs::follow(
        &env.client,
        &env.namespace,
        "app.kubernetes.io/instance=drained",
    );

    // A steady stream of events throughout, each acknowledged by the stream.
    let js = env.jetstream().await?;
    let (stop_publishing, mut stopped) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut n = 0;
        while !*stopped.borrow() {
            let id = format!("evt-{n}");
            js.publish(format!("audit.drain.{n}"), event(n, &id).into())
                .await?
                .await?;
            acknowledged.push(id);
            n += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stopped.changed() => {}
            }
        }
        anyhow::Ok(acknowledged)
    });

    // A spec change rolls every pod; then a scale-down stops one more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.apply_consumer("drained", spec(2, 50))?;
    env.wait_ready("drained").await?;
    wait::until("the rollout to replace both pods", WAIT, POLL, || async {
        let exits: usize = logs.exit_codes().values().map(Vec::len).sum();
        Ok((exits >= 2).then_some(()))
    })
    .await?;
    env.apply_consumer("drained", spec(1, 50))?;
    wait::until("the scale-down to stop a third pod", WAIT, POLL, || async {
        let exits: usize = logs.exit_codes().values().map(Vec::len).sum();
        Ok((exits >= 3).then_some(()))
    })
    .await?;
    env.wait_ready("drained").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_publishing.send(true)?;
    let acknowledged = publisher.await??;

    // Every event the stream acknowledged was written, by some pod.
    let wanted: HashSet<&String> = acknowledged.iter().collect();
    wait::until(
        "every acknowledged event in some pod's log",
        WAIT,
        POLL,
        || async {
            let lines = logs.lines();
            let written: HashSet<String> = audit_events(&lines)?
                .into_iter()
                .map(|(_, id, _)| id)
                .collect();
            let missing = wanted.iter().filter(|id| !written.contains(**id)).count();
            Ok((missing == 0).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\nfollow errors: {:?}", logs.errors()))?;

    // At least once: an event written twice was delivered again (its later line says so).
    let mut deliveries: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, id, delivered) in audit_events(&logs.lines())? {
        deliveries.entry(id).or_default().push(delivered);
    }
    let duplicates: Vec<_> = deliveries
        .iter()
        .filter(|(_, counts)| counts.len() > 1)
        .collect();
    for (id, counts) in &duplicates {
        assert!(
            counts.iter().any(|&delivered| delivered > 1),
            "{id} written twice without a redelivery: {counts:?}"
        );
    }
    eprintln!(
        "{} events, {} written more than once, log lines per pod {:?}",
        acknowledged.len(),
        duplicates.len(),
        logs.lines_per_pod()
    );

    // Each stopped container drained and exited 0 under the kubelet's SIGTERM.
    let exits = logs.exit_codes();
    assert!(
        exits.values().flatten().all(|&code| code == 0),
        "every stopped consumer exits 0: {exits:?}"
    );
    env.wait_all_acknowledged("drained", acknowledged.len() as u64)
        .await?;
    Ok(())
}

/// `audit-consumer verify` against this test's server, as an auditor runs it: exit code and
/// report.
fn verify(
    env: &Env,
    status: &Value,
    files: &[std::path::PathBuf],
) -> anyhow::Result<(i32, String)> {
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN)?;
    let output = std::process::Command::new(audit_tests::cargo_bin("audit-consumer"))
        .arg("verify")
        .args(["--nats-url", &env.nats.url()])
        .arg(format!("--token-file={}", token.display()))
        .args([
            "--public-key",
            status["integrity"]["publicKey"]
                .as_str()
                .unwrap_or_default(),
            "--integrity-subject",
            status["integrity"]["subject"].as_str().unwrap_or_default(),
        ])
        .args(files)
        .output()?;
    let code = output.status.code().unwrap_or(-1);
    anyhow::ensure!(
        code != 2,
        "verify could not check: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((code, String::from_utf8(output.stdout)?))
}

#[tokio::test]
async fn real_pods_witness_their_lines_and_verify_locates_each_tampering() -> anyhow::Result<()> {
    let env = Env::start("integrity").await?;
    env.apply_sample_stream()?;
    let key = nkeys::KeyPair::new_account();
    env.kubectl_apply(&serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "audit-signer" },
        "stringData": { "seed": key.seed()? },
    }))?)?;
    let logs = PodLogs::follow(
        &env.client,
        &env.namespace,
        "app.kubernetes.io/instance=trail",
    );
    env.apply_consumer(
        "trail",
        json!({ "replicas": 2, "batch": 20, "expires": "2s", "integrity": {
            "enabled": true,
            "signingKeySecretRef": { "name": "audit-signer", "key": "seed" },
            "checkpointInterval": "1s",
        }}),
    )?;
    env.wait_ready("trail").await?;

    let js = env.jetstream().await?;
    let total = 300;
    for n in 0..total {
        js.publish(
            format!("audit.trail.{n}"),
            event(n, &format!("evt-{n}")).into(),
        )
        .await?
        .await?;
    }
    env.wait_all_acknowledged("trail", total as u64).await?;

    // The status names the key, the subject and each pod's newest checkpoint; once the
    // checkpoints cover every line, the pods' logs verify as complete.
    let status = wait::until("checkpoints covering every line", WAIT, POLL, || async {
        let status = env.consumer_status("trail").await?;
        let covered: u64 = status["integrity"]["checkpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["position"].as_u64())
            .sum();
        Ok((covered >= total as u64).then_some(status))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.operator.logs()))?;
    assert_eq!(status["integrity"]["publicKey"], key.public_key());
    assert_eq!(
        status["integrity"]["subject"],
        "audit-integrity.AUDIT_EVENTS.trail"
    );
    let pods: HashSet<String> = env
        .pods("trail")
        .await?
        .iter()
        .filter_map(|pod| pod.metadata.name.clone())
        .collect();
    for checkpoint in status["integrity"]["checkpoints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let pod = checkpoint["pod"].as_str().unwrap_or_default();
        assert!(pods.contains(pod), "{pod} is one of {pods:?}");
    }
    let witnessed = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "CheckpointsWitnessed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(witnessed["status"], "True", "{witnessed}");

    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    let mut chained = 0;
    for (pod, lines) in logs.lines_by_pod() {
        let path = dir.path().join(format!("{pod}.log"));
        for line in &lines {
            if audit_event(line)?.is_some() {
                let parsed: Value = serde_json::from_str(line)?;
                assert!(
                    parsed["chain"].as_str().is_some_and(|c| c.contains(&pod)),
                    "{line}"
                );
                chained += 1;
            }
        }
        std::fs::write(&path, lines.join("\n") + "\n")?;
        files.push((lines.len(), path));
    }
    assert_eq!(chained, total, "every event line is chained, once");
    // The busiest pod's log is the one tampered with below.
    files.sort();
    let files: Vec<std::path::PathBuf> = files.into_iter().rev().map(|(_, path)| path).collect();
    let (code, report) = verify(&env, &status, &files)?;
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("problems=0 rejected_heads=0"), "{report}");

    // What a log store could do to the busiest pod's log, each found and located: the lines
    // of that log, the positions of its chained lines, and the report on the changed copy.
    let victim = &files[0];
    let pristine = std::fs::read_to_string(victim)?;
    let lines: Vec<String> = pristine.lines().map(str::to_owned).collect();
    let chained_at: Vec<usize> = (0..lines.len())
        .filter(|&i| matches!(audit_event(&lines[i]), Ok(Some(_))))
        .collect();
    assert!(chained_at.len() >= 10, "{} chained lines", chained_at.len());
    let seq_at = |index: usize| -> u64 {
        serde_json::from_str::<Value>(&lines[index])
            .map_or(0, |line| line["seq"].as_u64().unwrap_or(0))
    };
    let middle = chained_at[chained_at.len() / 2];
    let next = chained_at[chained_at.len() / 2 + 1];
    let last = chained_at[chained_at.len() - 1];
    let cut_from = chained_at[chained_at.len() - 3];
    let tamperings: Vec<(&str, Vec<String>, String)> = vec![
        (
            "a line deleted",
            lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != middle)
                .map(|(_, l)| l.clone())
                .collect(),
            format!("finding=missing positions={}", seq_at(middle)),
        ),
        (
            "one character edited",
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if i == middle {
                        l.replacen("evt-", "evt_", 1)
                            .replacen("raw event", "raw-event", 1)
                    } else {
                        l.clone()
                    }
                })
                .collect(),
            format!("finding=altered position={}", seq_at(middle)),
        ),
        (
            "two lines swapped",
            {
                let mut swapped = lines.clone();
                swapped.swap(middle, next);
                swapped
            },
            format!(
                "finding=reordered position={} after={}",
                seq_at(middle),
                seq_at(next)
            ),
        ),
        (
            "the tail cut off",
            lines[..cut_from].to_vec(),
            format!(
                "finding=truncated positions={}-{}",
                seq_at(cut_from),
                seq_at(last)
            ),
        ),
        (
            "the pod's whole output dropped",
            Vec::new(),
            format!("finding=absent positions=1-{}", seq_at(last)),
        ),
    ];
    for (what, changed, finding) in tamperings {
        assert_ne!(changed, lines, "{what} changes the log");
        std::fs::write(victim, changed.join("\n") + "\n")?;
        let (code, report) = verify(&env, &status, &files)?;
        assert_eq!(code, 1, "{what}: {report}");
        assert!(report.contains(&finding), "{what}: {finding} in\n{report}");
    }
    std::fs::write(victim, pristine)?;
    assert_eq!(verify(&env, &status, &files)?.0, 0, "restored");
    Ok(())
}

/// The condition `type_` of AuditConsumer `name` once its status is `status`.
async fn wait_condition(env: &Env, name: &str, type_: &str, status: &str) -> anyhow::Result<Value> {
    wait::until(
        &format!("AuditConsumer {name} {type_}={status}"),
        WAIT,
        POLL,
        || async {
            let object = env.consumer_status(name).await?;
            Ok(object["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == type_ && c["status"] == status)
                .cloned())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.operator.logs()))
}

/// The verification runs' Jobs and pods, their states and logs: for a failure message.
fn verification_runs(env: &Env) -> String {
    let selector = "app.kubernetes.io/name=audit-verify";
    let get =
        |args: &[&str]| tools::run("kubectl", args, None).unwrap_or_else(|e| format!("{e:#}"));
    format!(
        "{}\n{}\n{}",
        get(&[
            "get",
            "jobs,pods",
            "-o",
            "wide",
            "--namespace",
            &env.namespace,
            "-l",
            selector
        ]),
        get(&[
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].status}",
            "--namespace",
            &env.namespace,
            "-l",
            selector
        ]),
        get(&[
            "logs",
            "--namespace",
            &env.namespace,
            "-l",
            selector,
            "--tail",
            "40"
        ]),
    )
}

/// The `kubectl-audit` plugin as the administrator, in this test's namespace.
fn kubectl_audit(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(audit_tests::cargo_bin("kubectl-audit"))
        .args(args)
        .args(["--namespace", &env.namespace])
        .env("KUBECONFIG", ControlPlane::shared().kubeconfig_path())
        .output()
        .expect("running kubectl-audit")
}

/// The plugin's standard output, failing with both streams unless it exited with `code`.
fn kubectl_audit_exits(env: &Env, args: &[&str], code: i32) -> String {
    let output = kubectl_audit(env, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "kubectl audit {}:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Waits until the archiver's verification CronJob holds `text` (an argument).
async fn wait_verification_args(env: &Env, what: &str, text: &str) -> anyhow::Result<()> {
    wait::until(what, WAIT, POLL, || async {
        let out = tools::run(
            "kubectl",
            &[
                "get",
                "cronjob",
                "archiver-audit-verify",
                "--namespace",
                &env.namespace,
                "-o",
                "json",
            ],
            None,
        )?;
        Ok(out.contains(text).then_some(()))
    })
    .await
}

/// One run of the verification CronJob now, as `kubectl create job --from` starts one.
fn run_verification(env: &Env, consumer: &str, run: &str) -> anyhow::Result<()> {
    tools::run(
        "kubectl",
        &[
            "create",
            "job",
            "--namespace",
            &env.namespace,
            &format!("{consumer}-verify-{run}"),
            &format!("--from=cronjob/{consumer}-audit-verify"),
        ],
        None,
    )?;
    Ok(())
}

#[tokio::test]
async fn archiving_pods_store_their_lines_and_the_scheduled_verification_finds_a_deleted_segment()
-> anyhow::Result<()> {
    let env = Env::start("archive").await?;
    let store = ObjectStore::start_on(env.node.ip()).await?;
    // Without Object Lock, so that the test can delete a segment as an intruder would.
    store.create_bucket("trail").await?;
    env.apply_sample_stream()?;
    // The verifier's key pair is the store's reader: allowed to list and read the bucket,
    // nothing else (consumer_archive proves the store refuses it a write and a delete).
    store.grant_read_only("trail").await?;
    let key = nkeys::KeyPair::new_account();
    let key_pair = |name: &str, (access, secret): (&str, &str)| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": name },
            "stringData": { "accessKeyId": access, "secretAccessKey": secret },
        })
    };
    env.kubectl_apply(&serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            { "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "audit-signer" },
              "stringData": { "seed": key.seed()? } },
            key_pair("archive-writer", (store.access_key(), store.secret_key())),
            key_pair("archive-reader", store.reader_keys()),
        ],
    }))?)?;
    let mut spec = json!({
            "replicas": 1, "batch": 50, "expires": "2s",
            "integrity": {
                "enabled": true,
                "signingKeySecretRef": { "name": "audit-signer", "key": "seed" },
                "checkpointInterval": "1s",
            },
            "archive": {
                "bucket": "trail",
                "region": audit_tests::s3::REGION,
                "endpoint": store.endpoint(),
                "forcePathStyle": true,
                "credentialsSecretRef": { "name": "archive-writer" },
                "segment": { "maxLines": 100, "maxAge": "2s" },
                // Once a year: the test starts its runs itself.
                "verification": {
                    "schedule": "0 0 1 1 *",
                    "credentialsSecretRef": { "name": "archive-reader" },
                },
            },
    });
    env.apply_consumer("archiver", spec.clone())?;
    env.wait_ready("archiver").await?;
    let pending = wait_condition(&env, "archiver", "ArchiveVerified", "Unknown").await?;
    assert_eq!(pending["reason"], "NotVerifiedYet", "{pending}");

    let js = env.jetstream().await?;
    let total = 500;
    for n in 0..total {
        js.publish(
            format!("audit.archive.{n}"),
            event(n, &format!("evt-{n}")).into(),
        )
        .await?
        .await?;
    }
    // Acknowledged only once stored: every event is in a segment when this returns.
    env.wait_all_acknowledged("archiver", total as u64).await?;
    let keys = store.keys("trail", "AUDIT-EVENTS/archiver/").await?;
    assert!(keys.len() >= 5, "at most 100 lines per segment: {keys:?}");
    let mut stored = 0;
    for key in &keys {
        let body = store.get("trail", key).await?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(&body[..]),
            &mut text,
        )?;
        stored += text
            .lines()
            .filter(|line| line.contains("\"chain\""))
            .count();
    }
    assert!(
        stored >= total,
        "{stored} chained lines stored for {total} events"
    );

    // A run in a real container, with the reader's key pair: the archive is whole.
    let covered = wait::until("checkpoints covering every line", WAIT, POLL, || async {
        let status = env.consumer_status("archiver").await?;
        let covered: u64 = status["integrity"]["checkpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["position"].as_u64())
            .sum();
        Ok((covered >= total as u64).then_some(covered))
    })
    .await?;
    assert!(covered >= total as u64);
    run_verification(&env, "archiver", "1")?;
    let verified = wait_condition(&env, "archiver", "ArchiveVerified", "True")
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", verification_runs(&env)))?;
    let status = env.consumer_status("archiver").await?;
    let last = &status["archive"]["verification"];
    assert_eq!(last["result"], "Complete", "{verified}\n{last}");
    assert!(
        last["segments"].as_u64() >= Some(keys.len() as u64),
        "{last}"
    );
    let through = last["verifiedThrough"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!through.is_empty(), "{last}");

    // An intruder deletes the second segment; the next run, whose window holds nothing of
    // it, finds the gap in the listing.
    let second = keys
        .iter()
        .find(|key| key.contains("_000002_"))
        .ok_or_else(|| anyhow::anyhow!("no second segment in {keys:?}"))?;
    store
        .client()
        .delete_object()
        .bucket("trail")
        .key(second)
        .send()
        .await?;
    wait_verification_args(
        &env,
        "the next run starting where the last ended",
        &format!("--since={through}"),
    )
    .await?;
    // `kubectl audit verify` runs it now, follows it and exits with its verdict.
    let report = kubectl_audit_exits(&env, &["verify", "archiver"], 1);
    assert!(
        report.contains(": problems\n") && report.contains("missing_segments numbers=2"),
        "{report}\n{}",
        verification_runs(&env)
    );
    let found = wait_condition(&env, "archiver", "ArchiveVerified", "False")
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", verification_runs(&env)))?;
    assert_eq!(found["reason"], "ArchiveProblems", "{found}");
    assert!(
        found["message"]
            .as_str()
            .unwrap_or_default()
            .contains("missing_segments numbers=2"),
        "{found}"
    );
    let last = env.consumer_status("archiver").await?["archive"]["verification"].clone();
    assert_eq!(last["verifiedThrough"], through.as_str(), "held: {last}");

    // The same report as JSON, for scripts; and status shows the run and the checkpoints.
    let json: Value = serde_json::from_str(&kubectl_audit_exits(
        &env,
        &["verify", "archiver", "-o", "json"],
        1,
    ))?;
    assert_eq!(json["verdict"], "problems", "{json}");
    assert!(json["missingSegments"].as_u64() >= Some(1), "{json}");
    let status = kubectl_audit_exits(&env, &["status", "archiver"], 0);
    assert!(status.contains("  Verification     Problems "), "{status}");
    assert!(status.contains("missing_segments numbers=2"), "{status}");
    assert!(status.contains(" witnessed line "), "{status}");

    // Each pod's newest checkpoint names the object it ends.
    let checkpoints = env.consumer_status("archiver").await?["integrity"]["checkpoints"].clone();
    assert!(
        checkpoints.as_array().into_iter().flatten().all(|c| {
            c["segment"]
                .as_str()
                .is_some_and(|key| keys.iter().any(|k| k == key))
                && c["segmentBytes"].as_u64() > Some(0)
        }),
        "{checkpoints}"
    );

    // The loss investigated and accepted in the spec: the next run passes again.
    let finding = last["findings"][0].as_str().unwrap_or_default().to_owned();
    assert!(finding.contains("missing_segments numbers=2"), "{last}");
    spec["archive"]["verification"]["acceptedFindings"] =
        json!([{ "finding": finding, "reason": "the test deleted it" }]);
    env.apply_consumer("archiver", spec)?;
    wait_verification_args(&env, "the runs accepting the finding", "--accept-finding=").await?;
    let report = kubectl_audit_exits(&env, &["verify", "archiver"], 0);
    assert!(report.contains("accepted findings 1 "), "{report}");
    let accepted = wait_condition(&env, "archiver", "ArchiveVerified", "True")
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", verification_runs(&env)))?;
    assert!(
        accepted["message"]
            .as_str()
            .unwrap_or_default()
            .contains("1 finding(s) accepted"),
        "{accepted}"
    );
    Ok(())
}

/// The Deployment's `spec.replicas`, sampled while an autoscaled consumer works: what the
/// autoscaler asked for, over time.
struct ReplicaSamples {
    samples: std::sync::Arc<std::sync::Mutex<Vec<i32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplicaSamples {
    fn start(env: &Env, consumer: &str) -> Self {
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(env.client.clone(), &env.namespace);
        let name = format!("{consumer}-audit-consumer");
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(Some(d)) = deployments.get_opt(&name).await
                    && let Some(replicas) = d.spec.and_then(|s| s.replicas)
                {
                    let mut samples = recorded.lock().unwrap();
                    if samples.last() != Some(&replicas) {
                        samples.push(replicas);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { samples, task }
    }

    /// The distinct values in order.
    fn changes(&self) -> Vec<i32> {
        self.samples.lock().unwrap().clone()
    }
}

impl Drop for ReplicaSamples {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `status.desiredReplicas` once it is `wanted`.
async fn wait_desired(env: &Env, name: &str, wanted: i64) -> anyhow::Result<Value> {
    wait::until(
        &format!("AuditConsumer {name} desiredReplicas {wanted}"),
        WAIT,
        POLL,
        || async {
            let status = env.consumer_status(name).await?;
            Ok((status["desiredReplicas"] == wanted).then_some(status))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.operator.logs()))
}

/// Publishes `count` events numbered from `from`, each acknowledged by the stream; returns
/// their ids.
async fn publish_events(
    js: &jetstream::Context,
    prefix: &str,
    from: usize,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut acks = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    for n in from..from + count {
        let id = format!("{prefix}-{n}");
        acks.push(
            js.publish(format!("audit.{prefix}.{n}"), event(n, &id).into())
                .await?,
        );
        ids.push(id);
    }
    for ack in acks {
        ack.await?;
    }
    Ok(ids)
}

#[tokio::test]
async fn autoscaled_pods_follow_a_burst_down_to_zero_and_back_and_lose_nothing()
-> anyhow::Result<()> {
    let env = Env::start("elastic").await?;
    env.apply_sample_stream()?;
    let key = nkeys::KeyPair::new_account();
    env.kubectl_apply(&serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "audit-signer" },
        "stringData": { "seed": key.seed()? },
    }))?)?;
    let logs = PodLogs::follow(
        &env.client,
        &env.namespace,
        "app.kubernetes.io/instance=elastic",
    );
    env.apply_consumer(
        "elastic",
        json!({
            "batch": 20, "expires": "2s",
            "autoscaling": {
                "minReplicas": 0, "maxReplicas": 3, "targetLagPerReplica": 200,
                "scaleDown": { "stabilizationWindow": "15s" },
            },
            "integrity": {
                "enabled": true,
                "signingKeySecretRef": { "name": "audit-signer", "key": "seed" },
                "checkpointInterval": "1s",
            },
        }),
    )?;
    let replicas = ReplicaSamples::start(&env, "elastic");
    // Nothing pending: no pod, and Ready (nothing is missing).
    wait_desired(&env, "elastic", 0).await?;
    env.wait_ready("elastic").await?;
    assert!(env.pods("elastic").await?.is_empty());

    // From zero: one event brings a pod, which writes it.
    let js = env.jetstream().await?;
    let published = std::time::Instant::now();
    let mut ids = publish_events(&js, "first", 0, 1).await?;
    wait::until("the first event written", WAIT, POLL, || async {
        let lines = logs.lines();
        Ok(audit_events(&lines)?
            .iter()
            .any(|(_, id, _)| id == "first-0")
            .then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.operator.logs()))?;
    eprintln!(
        "from zero: the first event written {:.1} s after its publish",
        published.elapsed().as_secs_f64()
    );

    // Back to zero once nothing was pending for the 15 s window.
    wait_desired(&env, "elastic", 0).await?;
    wait::until("the first pod gone", WAIT, POLL, || async {
        Ok(env.pods("elastic").await?.is_empty().then_some(()))
    })
    .await?;

    // A burst while the operator is down: the new one starts from the decision in the
    // status (0), reads 3,000 pending (15 pods' worth at 200 each) and scales to the
    // maximum of 3 in one step.
    let scale_operator = |replicas: &str| {
        tools::run(
            "kubectl",
            &[
                "scale",
                "deployment",
                &env.operator.name,
                "--namespace",
                &env.operator.namespace,
                &format!("--replicas={replicas}"),
            ],
            None,
        )
    };
    scale_operator("0")?;
    let operator_pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.operator.namespace);
    let selector = ListParams::default().labels(&env.operator.selector());
    wait::until("no operator pod left", WAIT, POLL, || async {
        Ok(operator_pods
            .list(&selector)
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    ids.extend(publish_events(&js, "burst", 1, 3000).await?);
    // Before the new process starts: it must not scale down within 15 s of this.
    let restarted = std::time::Instant::now();
    scale_operator("1")?;
    env.operator.wait_ready(1).await?;
    let status = wait_desired(&env, "elastic", 3).await?;
    assert_eq!(
        status["autoscaling"]["lastScaleDirection"], "ScaledUp",
        "{status}"
    );
    ids.extend(publish_events(&js, "more", 3001, 600).await?);
    env.wait_all_acknowledged("elastic", ids.len() as u64)
        .await?;

    // Drained: after the 15 s window of an empty lag, back to zero, each pod draining
    // under SIGTERM and exiting 0.
    wait_desired(&env, "elastic", 0).await?;
    wait::until("every consumer pod gone", WAIT, POLL, || async {
        Ok(env.pods("elastic").await?.is_empty().then_some(()))
    })
    .await?;
    let down = restarted.elapsed();
    assert!(
        down >= Duration::from_secs(15),
        "scaled to zero {down:?} after the operator started, inside the window it must watch first"
    );
    let changes = replicas.changes();
    // 0 -> 1 for the first event, back to 0, up to 3 for the burst and down from there: no
    // flapping, also across the restart.
    let peak = changes.iter().position(|&r| r == 3).expect("reached 3");
    assert!(
        changes[peak..].windows(2).all(|w| w[1] < w[0]),
        "after the peak only down: {changes:?}"
    );
    assert!(
        changes[..=peak].windows(2).filter(|w| w[1] < w[0]).count() <= 1,
        "before the peak only the first pod's scale-down: {changes:?}"
    );
    let exits = logs.exit_codes();
    assert!(
        exits.values().flatten().all(|&code| code == 0),
        "every stopped consumer exits 0: {exits:?}"
    );
    eprintln!("replicas over time: {changes:?}, pods' exit codes {exits:?}");

    // Every event written, and the pods' logs verify complete: each chain ends with a
    // witnessed head, also those of the pods the scale-downs stopped.
    let lines = logs.lines();
    let written: HashSet<String> = audit_events(&lines)?
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !written.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} never written: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let status = env.consumer_status("elastic").await?;
    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    for (pod, lines) in logs.lines_by_pod() {
        let path = dir.path().join(format!("{pod}.log"));
        std::fs::write(&path, lines.join("\n") + "\n")?;
        files.push(path);
    }
    assert!(files.len() >= 3, "{} pods' logs", files.len());
    let (code, report) = verify(&env, &status, &files)?;
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("problems=0 rejected_heads=0"), "{report}");
    Ok(())
}
