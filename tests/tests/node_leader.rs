//! On a real node, the operator from the Helm chart with two replicas: a leader that loses its
//! Lease while its process keeps running stops writing before the new leader starts, and the
//! new leader lists nothing again, because it kept its caches current while standing by.
//!
//! Every instant compared here comes from one clock, the machine's: the kubelet's record of
//! when the old leader's container ended, the acquireTime the new leader wrote into the
//! Lease, the API server's audit log and the NATS server's record of connections.
//!
//! While the leader leads, it writes: the stream's status follows a publisher's traffic (a
//! status write and NATS requests every requeue, 2 s here).

use std::net::Ipv4Addr;
use std::process::Command;
mod operator_support;

use std::time::Duration;

use audit_tests::http;
use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsServer;
use audit_tests::node::{Node, layout};
use audit_tests::operator::ChartRelease;
use audit_tests::wait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use operator_support::{AUDIT_STREAM, is_ready};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);
const LEASE: &str = "audit-operator-leader";
/// The operator's leader-election timing (operator/src/leader.rs).
const RENEW_DEADLINE: SignedDuration = SignedDuration::from_secs(10);
const RETRY_PERIOD: SignedDuration = SignedDuration::from_secs(2);
const LEASE_DURATION: SignedDuration = SignedDuration::from_secs(15);
/// A container's `finishedAt` is cut to the second: the process ended before this much later.
const FINISHED_AT_PRECISION: SignedDuration = SignedDuration::from_secs(1);
/// What the operator watches: a new leader must list none of them again.
const WATCHED: [&str; 8] = [
    "auditstreams",
    "auditconsumers",
    "secrets",
    "deployments",
    "serviceaccounts",
    "poddisruptionbudgets",
    "networkpolicies",
    "cronjobs",
];

/// The tests share the operator, and their failovers are timed to the second: one at a time.
static ONE_FAILOVER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The operator of this test binary: two replicas from the chart.
fn operator() -> &'static ChartRelease {
    operator_support::chart_operator(2, &["requeueInterval=2s"])
}

/// The operator, a NATS server its pods reach, and an AuditStream in a namespace of this
/// test whose status the leader keeps writing.
struct Setup {
    control_plane: &'static ControlPlane,
    client: kube::Client,
    release: &'static ChartRelease,
    pods: Api<Pod>,
    leases: Api<Lease>,
    nats: NatsServer,
    streams: Api<DynamicObject>,
    _publisher: tokio::task::JoinHandle<()>,
}

/// A replica of the operator: its pod, address and container.
#[derive(Clone, Debug)]
struct Replica {
    pod: String,
    ip: String,
    container_id: String,
    /// When its running container started (to the second).
    started: Timestamp,
}

impl Setup {
    async fn start() -> anyhow::Result<Setup> {
        let node = Node::shared();
        let control_plane = ControlPlane::shared();
        let client = control_plane.admin_client().await?;
        let release = operator();
        let namespace = &release.namespace;
        let nats = NatsServer::start_on(node.ip()).await?;
        let tenant = control_plane.create_namespace("tenant").await?;
        let streams = operator_support::api(&client, &tenant, AUDIT_STREAM);
        let setup = Setup {
            control_plane,
            pods: Api::namespaced(client.clone(), namespace),
            leases: Api::namespaced(client.clone(), namespace),
            client,
            release,
            streams,
            _publisher: publish_forever(nats.client().await?),
            nats,
        };
        setup.apply_stream("orders").await?;
        setup.wait_stream_ready("orders").await?;
        Ok(setup)
    }

    async fn apply_stream(&self, name: &str) -> anyhow::Result<()> {
        let spec = json!({
            "connection": { "servers": [self.nats.url()] },
            "subjects": [format!("{name}.>")],
            "storage": "Memory",
        });
        operator_support::apply(&self.streams, AUDIT_STREAM, name, spec).await?;
        Ok(())
    }

    async fn wait_stream_ready(&self, name: &str) -> anyhow::Result<()> {
        wait::until(&format!("AuditStream {name} Ready"), WAIT, POLL, || async {
            Ok(is_ready(&self.streams.get(name).await?).then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.release.logs()))
    }

    /// The stream's message count in its status: it grows only while a leader writes.
    async fn messages_in_status(&self, name: &str) -> anyhow::Result<u64> {
        let object = self.streams.get(name).await?;
        Ok(object.data["status"]["messages"].as_u64().unwrap_or(0))
    }

    async fn lease(&self) -> anyhow::Result<Lease> {
        Ok(self.leases.get(LEASE).await?)
    }

    /// The Lease's holder and the other replica, once the holder is one of the release's pods
    /// and both are Ready.
    async fn leader_and_standby(&self) -> anyhow::Result<(Replica, Replica)> {
        self.release.wait_ready(2).await?;
        wait::until("a leader among the operator's pods", WAIT, POLL, || async {
            let holder = self
                .lease()
                .await?
                .spec
                .and_then(|spec| spec.holder_identity);
            let replicas = self.replicas().await?;
            let (leaders, standbys): (Vec<_>, Vec<_>) = replicas
                .into_iter()
                .partition(|replica| Some(&replica.pod) == holder.as_ref());
            Ok(match (leaders.as_slice(), standbys.as_slice()) {
                ([leader], [standby]) => Some((leader.clone(), standby.clone())),
                _ => None,
            })
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.release.logs()))
    }

    /// The release's running pods.
    async fn replicas(&self) -> anyhow::Result<Vec<Replica>> {
        let selector = ListParams::default().labels(&self.release.selector());
        Ok(self
            .pods
            .list(&selector)
            .await?
            .items
            .into_iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .filter_map(|pod| {
                let status = pod.status?;
                let container = status.container_statuses?.into_iter().next()?;
                Some(Replica {
                    pod: pod.metadata.name?,
                    ip: status.pod_ip?,
                    container_id: container.container_id?,
                    started: container.state?.running?.started_at?.0,
                })
            })
            .collect())
    }

    /// When `replica`'s container ended, once the kubelet reports it, and its exit code.
    async fn ended(&self, replica: &Replica) -> anyhow::Result<(Timestamp, i32)> {
        wait::until(
            &format!("the container of {} to end", replica.pod),
            WAIT,
            POLL,
            || async {
                let pod = self.pods.get(&replica.pod).await?;
                let statuses = pod
                    .status
                    .and_then(|status| status.container_statuses)
                    .unwrap_or_default();
                let Some(status) = statuses.first() else {
                    return Ok(None);
                };
                let ended = [status.state.as_ref(), status.last_state.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter_map(|state| state.terminated.as_ref())
                    .find(|terminated| {
                        terminated.container_id.as_deref() == Some(&replica.container_id)
                    });
                Ok(ended.and_then(|terminated| {
                    terminated
                        .finished_at
                        .as_ref()
                        .map(|at| (at.0, terminated.exit_code))
                }))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.release.logs()))
    }

    /// Once a holder other than `previous` holds the Lease: who, and its acquireTime.
    async fn next_leader(&self, previous: &str) -> anyhow::Result<(String, Timestamp)> {
        wait::until("a new holder of the Lease", WAIT, POLL, || async {
            let spec = self.lease().await?.spec.unwrap_or_default();
            Ok(match (spec.holder_identity, spec.acquire_time) {
                (Some(holder), Some(acquired)) if holder != previous => Some((holder, acquired.0)),
                _ => None,
            })
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.release.logs()))
    }

    /// The output of the container that ended in `pod` (`kubectl logs --previous`).
    fn previous_logs(&self, pod: &str) -> anyhow::Result<String> {
        audit_tests::tools::run(
            "kubectl",
            &[
                "logs",
                "--namespace",
                &self.release.namespace,
                pod,
                "--previous",
            ],
            None,
        )
    }

    /// The NATS connections `ip` opened, open or closed: when each started and stopped.
    async fn nats_connections_from(
        &self,
        ip: &str,
    ) -> anyhow::Result<Vec<(Timestamp, Option<Timestamp>)>> {
        let connz = http::get(self.nats.monitor_port(), "/connz?state=all&limit=100000").await?;
        anyhow::ensure!(connz.status == 200, "/connz answered {}", connz.status);
        let connz: Value = serde_json::from_str(&connz.body)?;
        let time = |value: &Value| -> anyhow::Result<Option<Timestamp>> {
            value
                .as_str()
                .map(|text| text.parse::<Timestamp>())
                .transpose()
                .map_err(Into::into)
        };
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|connection| connection["ip"] == ip)
            .map(|connection| {
                let started = time(&connection["start"])?
                    .ok_or_else(|| anyhow::anyhow!("a connection without a start: {connection}"))?;
                Ok((started, time(&connection["stop"])?))
            })
            .collect()
    }

    /// The `list` requests the API server's audit log holds from `ip`, by resource and time.
    /// A list of ConfigMaps made first, and awaited in the log, makes sure the log is written
    /// up to now.
    async fn lists_from(&self, ip: &str) -> anyhow::Result<Vec<(String, Timestamp)>> {
        let marker = format!("audit-log-marker-{}", Timestamp::now().as_microsecond());
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), "default");
        config_maps
            .list(&ListParams::default().labels(&format!("marker={marker}")))
            .await?;
        let events = wait::until("the audit log to be written up to now", WAIT, POLL, || {
            let marker = marker.clone();
            async move {
                let events = self.control_plane.audit_events()?;
                let written = events.iter().any(|event| {
                    event["requestURI"]
                        .as_str()
                        .is_some_and(|uri| uri.contains(&marker))
                });
                Ok(written.then_some(events))
            }
        })
        .await?;
        events
            .iter()
            .filter(|event| event["verb"] == "list" && event["stage"] == "ResponseComplete")
            .filter(|event| {
                event["sourceIPs"]
                    .as_array()
                    .is_some_and(|ips| ips.iter().any(|source| source == ip))
            })
            .map(|event| {
                let resource = event["objectRef"]["resource"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let at = event["requestReceivedTimestamp"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("an audit event without a time: {event}"))?
                    .parse()?;
                Ok((resource, at))
            })
            .collect()
    }

    /// The new leader, which took the Lease at `acquired`, listed every watched resource
    /// while it stood by, and nothing since. Its requests are those from its pod's address
    /// since its container started (an address may have served a deleted pod before).
    async fn assert_no_list_after_takeover(
        &self,
        new_leader: &Replica,
        acquired: Timestamp,
    ) -> anyhow::Result<()> {
        let Replica {
            pod, ip, started, ..
        } = new_leader;
        let lists: Vec<_> = self
            .lists_from(ip)
            .await?
            .into_iter()
            .filter(|(_, at)| at >= started)
            .collect();
        let (before, after): (Vec<_>, Vec<_>) = lists.iter().partition(|(_, at)| *at < acquired);
        for resource in WATCHED {
            assert!(
                before.iter().any(|(listed, _)| listed == resource),
                "the new leader {pod} ({ip}, started at {started}) did not list {resource} while \
                 standing by (it took the Lease at {acquired}); its lists: {lists:?}"
            );
        }
        assert!(
            after.is_empty(),
            "the new leader {pod} ({ip}) listed again after taking the Lease at {acquired}: \
             {after:?}"
        );
        eprintln!(
            "new leader {pod} ({ip}): {} lists between its start at {started} and taking the \
             Lease at {acquired}, none after",
            before.len()
        );
        Ok(())
    }

    /// Every NATS connection `old` opened before it ended had closed before the new leader
    /// took the Lease.
    async fn assert_nats_closed_before(
        &self,
        old: &Replica,
        ended: Timestamp,
        acquired: Timestamp,
    ) -> anyhow::Result<()> {
        let connections = self.nats_connections_from(&old.ip).await?;
        let of_old_leader: Vec<_> = connections
            .iter()
            .filter(|(started, _)| *started < ended + FINISHED_AT_PRECISION)
            .collect();
        assert!(
            !of_old_leader.is_empty(),
            "the old leader {} never connected to NATS: nothing was measured",
            old.pod
        );
        for (started, stopped) in of_old_leader {
            let stopped = stopped.unwrap_or_else(|| {
                panic!(
                    "the old leader's NATS connection opened at {started} is still open after \
                     the new leader took the Lease at {acquired}"
                )
            });
            assert!(
                stopped < acquired,
                "the old leader's NATS connection closed at {stopped}, after the new leader \
                 took the Lease at {acquired}"
            );
        }
        Ok(())
    }

    /// The new leader reconciles: the stream's status moves again, and a new stream turns
    /// Ready.
    async fn assert_new_leader_writes(&self) -> anyhow::Result<()> {
        let before = self.messages_in_status("orders").await?;
        wait::until(
            "the new leader to write the status again",
            WAIT,
            POLL,
            || async { Ok((self.messages_in_status("orders").await? > before).then_some(())) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.release.logs()))?;
        self.apply_stream("after-failover").await?;
        self.wait_stream_ready("after-failover").await
    }
}

/// Publishes to the stream every 100 ms, so that every reconciliation has a new message count
/// to write into the status.
fn publish_forever(nats: async_nats::Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Published before the stream exists, or while the server is busy: lost, and that
            // is fine, the next one counts.
            let _ = nats.publish("orders.event", "{}".into()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Runs `iptables` in the network namespace of the process `pid`.
fn iptables_in(pid: u32, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("iptables")
        .arg("-w")
        .args(args)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "iptables {} in the network of {pid}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Drops every packet the container `container_id` sends to the API server, by the
/// `kubernetes` Service and by the node's address, and nothing else: NATS and the kubelet's
/// probes still reach it.
fn cut_off_from_the_api_server(container_id: &str) -> anyhow::Result<()> {
    let node = Node::shared();
    let pid = node.container_pid(container_id)?;
    let api_port = ControlPlane::shared()
        .api_url()
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned())
        .ok_or_else(|| anyhow::anyhow!("no port in the API server's URL"))?;
    let service_ip: Ipv4Addr = layout().kubernetes_service_ip;
    for (ip, port) in [
        (service_ip.to_string(), "443".to_owned()),
        (node.ip().to_string(), api_port),
    ] {
        iptables_in(
            pid,
            &[
                "-I", "OUTPUT", "-d", &ip, "-p", "tcp", "--dport", &port, "-j", "DROP",
            ],
        )?;
    }
    Ok(())
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_a_standby_takes_over()
-> anyhow::Result<()> {
    let _one_at_a_time = ONE_FAILOVER_AT_A_TIME.lock().await;
    let setup = Setup::start().await?;
    let (leader, standby) = setup.leader_and_standby().await?;

    cut_off_from_the_api_server(&leader.container_id)?;
    let cut_at = Timestamp::now();
    eprintln!("cut {} off from the API server at {cut_at}", leader.pod);

    let (new_leader, acquired) = setup.next_leader(&leader.pod).await?;
    assert_eq!(new_leader, standby.pod, "the standby takes over");
    let (ended, exit_code) = setup.ended(&leader).await?;
    eprintln!(
        "old leader ended at {ended} (to the second; {:.1} s after the cut), new leader took the Lease at \
         {acquired} ({:.1} s after the cut)",
        ended.duration_since(cut_at).as_secs_f64(),
        acquired.duration_since(cut_at).as_secs_f64()
    );
    let logs = setup.previous_logs(&leader.pod)?;
    // Within the renew deadline, counted from its last renewal before the cut.
    assert!(
        ended <= cut_at + RENEW_DEADLINE,
        "the old leader ended at {ended}, later than {RENEW_DEADLINE:?} after the cut at \
         {cut_at}; its log:\n{logs}"
    );
    assert!(
        ended + FINISHED_AT_PRECISION <= acquired,
        "the old leader ended at {ended} (to the second), not before the new leader took the \
         Lease at {acquired}; its log:\n{logs}"
    );
    setup
        .assert_nats_closed_before(&leader, ended, acquired)
        .await?;
    setup.assert_new_leader_writes().await?;
    setup
        .assert_no_list_after_takeover(&standby, acquired)
        .await?;
    assert_eq!(exit_code, 1, "the old leader exits with an error:\n{logs}");
    assert!(
        logs.contains("lost the leader Lease") && logs.contains("could not be renewed"),
        "the old leader says why it stopped:\n{logs}"
    );

    // The old pod stays cut off: delete it, and its Deployment replaces it.
    setup
        .pods
        .delete(&leader.pod, &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_at_its_next_renewal() -> anyhow::Result<()> {
    let _one_at_a_time = ONE_FAILOVER_AT_A_TIME.lock().await;
    let setup = Setup::start().await?;
    let (leader, _standby) = setup.leader_and_standby().await?;

    // Someone else writes itself into the Lease, as a standby with a wrong view of time
    // would, and then never renews it.
    let taken_at = wait::until("the Lease to be overwritten", WAIT, POLL, || async {
        let mut lease = setup.lease().await?;
        let now = Timestamp::now();
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some("intruder".to_owned());
        spec.acquire_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            now,
        ));
        spec.renew_time = spec.acquire_time.clone();
        match setup
            .leases
            .replace(LEASE, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Some(Timestamp::now())),
            // The leader renewed meanwhile: read again.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(error) => Err(error.into()),
        }
    })
    .await?;
    eprintln!("wrote holder intruder into the Lease at {taken_at}");

    let (ended, exit_code) = setup.ended(&leader).await?;
    let (new_leader, acquired) = setup.next_leader("intruder").await?;
    eprintln!(
        "old leader ended at {ended} (to the second; {:.1} s after the Lease was taken), {new_leader} took the \
         Lease at {acquired} ({:.1} s after)",
        ended.duration_since(taken_at).as_secs_f64(),
        acquired.duration_since(taken_at).as_secs_f64()
    );
    let logs = setup.previous_logs(&leader.pod)?;
    // At its next renewal, a retry period later, and a second for the answer.
    assert!(
        ended <= taken_at + RETRY_PERIOD + SignedDuration::from_secs(1),
        "the old leader ended at {ended}, later than its next renewal after the Lease was \
         taken at {taken_at}; its log:\n{logs}"
    );
    // No replica takes a Lease someone else renewed until it has run out.
    assert!(
        acquired >= taken_at + LEASE_DURATION,
        "{new_leader} took the Lease at {acquired}, before the intruder's, written at \
         {taken_at}, ran out"
    );
    setup
        .assert_nats_closed_before(&leader, ended, acquired)
        .await?;
    setup.assert_new_leader_writes().await?;
    let new_leader = setup
        .replicas()
        .await?
        .into_iter()
        .find(|replica| replica.pod == new_leader)
        .ok_or_else(|| {
            anyhow::anyhow!("the new leader {new_leader} is not a running pod of the release")
        })?;
    setup
        .assert_no_list_after_takeover(&new_leader, acquired)
        .await?;
    assert_eq!(exit_code, 1, "the old leader exits with an error:\n{logs}");
    assert!(
        logs.contains("lost the leader Lease") && logs.contains("another holder took the Lease"),
        "the old leader says why it stopped:\n{logs}"
    );
    Ok(())
}
