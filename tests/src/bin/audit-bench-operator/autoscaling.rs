//! `--autoscaling BURST`: what lag-driven autoscaling buys and costs, on the project's real
//! node with the images it holds (root), the operator outside the cluster (release build,
//! shipped timings: `--autoscaling-interval` 5 s). One AuditStream; per run a fresh
//! AuditConsumer on a subject of its own:
//!
//! 1. **drain, fixed**: `replicas: 1`; BURST events published as fast as the stream takes
//!    them; the time from the first publish until the durable consumer has nothing pending
//!    and nothing unacknowledged (read from NATS every 100 ms);
//! 2. **drain, autoscaled**: `autoscaling` from 1 to 4 pods at 5,000 lag per pod, the same
//!    burst, the same clock; and the most pods the Deployment asked for;
//! 3. **from zero**: `minReplicas: 0`, a 10 s scale-down window; three times: wait until no
//!    pod is left, publish one event, time until it is written and acknowledged;
//! 4. **cost at zero**: that consumer alone at zero for 60 s: the JetStream API requests
//!    nats-server counted and the operator's API requests (audit log).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use audit_tests::images::CONSUMER_IMAGE;
use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsServer;
use audit_tests::node::Node;
use audit_tests::operator::{OperatorProcess, install_crds};
use audit_tests::{http, tools, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use super::{GROUP, Report, VERSION, operator_requests, progress, secs, writes};

const NAMESPACE: &str = "bench-autoscaling";
const STREAM: &str = "BENCH_AUTOSCALING";
const IDLE: Duration = Duration::from_secs(60);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(900);

pub(super) async fn run(burst: usize) -> anyhow::Result<()> {
    progress("starting the real node (containerd, kubelet, kube-scheduler) and its control plane");
    let node = tokio::task::spawn_blocking(Node::shared).await?;
    let client = ControlPlane::shared().admin_client().await?;
    install_crds(&client).await?;
    let nats = NatsServer::start_on(node.ip()).await?;
    tools::run(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
        )),
    )?;
    apply(&json!({
        "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "AuditStream",
        "metadata": { "name": "bench", "namespace": NAMESPACE },
        "spec": {
            "connection": { "servers": [nats.url()] },
            "name": STREAM, "subjects": ["bench.>"], "storage": "File",
        },
    }))?;
    progress("starting the operator");
    let _operator = OperatorProcess::start(&[
        "--requeue-interval=60s",
        "--retry-base-delay=1s",
        "--retry-max-delay=5m",
        "--nats-timeout=5s",
        "--autoscaling-interval=5s",
        &format!("--consumer-image={CONSUMER_IMAGE}"),
        &format!("--namespace={NAMESPACE}"),
    ])?;
    let js = jetstream::new(nats.client().await?);
    let mut report = Report::new(&format!("burst of {burst} events, on the real node"), 8);

    let fixed = drain(&client, &js, "fixed", json!({ "replicas": 1 }), burst).await?;
    report.set("drain, fixed 1 pod (s)", secs(fixed.took));
    let scaled = drain(
        &client,
        &js,
        "scaled",
        json!({ "autoscaling": { "minReplicas": 1, "maxReplicas": 4, "targetLagPerReplica": 5000 } }),
        burst,
    )
    .await?;
    report.set(
        "drain, autoscaled 1-4 pods at 5,000 per pod (s)",
        secs(scaled.took),
    );
    report.set(
        "most pods the autoscaler asked for",
        scaled.most_pods.to_string(),
    );
    for name in ["fixed", "scaled"] {
        tools::run(
            "kubectl",
            &[
                "delete",
                "auditconsumer",
                name,
                "--namespace",
                NAMESPACE,
                "--wait=true",
            ],
            None,
        )?;
    }

    let zero_spec = json!({ "autoscaling": {
        "minReplicas": 0, "maxReplicas": 2,
        "scaleDown": { "stabilizationWindow": "10s" },
    }});
    apply_consumer("zero", "bench.zero.>", &zero_spec)?;
    let mut from_zero = Vec::new();
    for round in 0..3 {
        wait_no_pod(&client, "zero").await?;
        let published = Instant::now();
        let sequence = js
            .publish("bench.zero.event", format!("{{\"round\":{round}}}").into())
            .await?
            .await?
            .sequence;
        wait_acknowledged(&js, "zero", sequence).await?;
        let took = published.elapsed();
        progress(&format!(
            "from zero, round {round}: {:.1} s",
            took.as_secs_f64()
        ));
        from_zero.push(took);
    }
    report.set(
        "from zero: first event written and acknowledged (s, 3 rounds)",
        from_zero
            .iter()
            .map(|t| secs(*t))
            .collect::<Vec<_>>()
            .join(", "),
    );

    wait_no_pod(&client, "zero").await?;
    let api_before = jetstream_api_requests(&nats).await?;
    let requests_before = operator_requests(&client).await?;
    progress("at zero for 60 s");
    tokio::time::sleep(IDLE).await;
    let api = jetstream_api_requests(&nats).await? - api_before;
    let requests = super::diff(&operator_requests(&client).await?, &requests_before);
    report.set(
        "at zero, 60 s: JetStream API requests (all of the operator's)",
        api.to_string(),
    );
    report.set(
        "at zero, 60 s: operator API requests (writes)",
        format!(
            "{} ({}): {}",
            requests.values().sum::<u64>(),
            writes(&requests),
            super::by_verb(&requests)
        ),
    );
    println!("{}", report.markdown());
    Ok(())
}

struct Drained {
    took: Duration,
    most_pods: i32,
}

/// Publishes `burst` events to a new AuditConsumer `name` (`spec`, once its first pods are
/// ready) and times the drain.
async fn drain(
    client: &kube::Client,
    js: &jetstream::Context,
    name: &str,
    spec: Value,
    burst: usize,
) -> anyhow::Result<Drained> {
    let subject = format!("bench.{name}");
    apply_consumer(name, &format!("{subject}.>"), &spec)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deployment = format!("{name}-audit-consumer");
    wait::until(
        &format!("{name}: one ready pod"),
        Duration::from_secs(180),
        Duration::from_millis(250),
        || async {
            let d = deployments.get_opt(&deployment).await?;
            Ok(d.and_then(|d| d.status)
                .filter(|s| s.ready_replicas == Some(1))
                .map(drop))
        },
    )
    .await?;
    progress(&format!("{name}: publishing {burst} events"));
    let started = Instant::now();
    let mut acks = Vec::with_capacity(1000);
    let mut last = 0;
    for n in 0..burst {
        let event = json!({ "id": format!("{name}-{n}"), "type": "bench", "data": { "n": n } });
        acks.push(
            js.publish(format!("{subject}.{}", n % 16), event.to_string().into())
                .await?,
        );
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                last = ack.await?.sequence;
            }
        }
    }
    for ack in acks {
        last = ack.await?.sequence;
    }
    let most_pods = std::cell::Cell::new(0);
    wait::until(
        &format!("{name}: the burst drained"),
        DRAIN_TIMEOUT,
        Duration::from_millis(100),
        || async {
            if let Ok(Some(d)) = deployments.get_opt(&deployment).await {
                let pods = d.spec.and_then(|s| s.replicas).unwrap_or(0);
                most_pods.set(most_pods.get().max(pods));
            }
            let info = consumer_info(js, name).await?;
            Ok((info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence >= last)
                .then_some(()))
        },
    )
    .await?;
    let took = started.elapsed();
    let most_pods = most_pods.get();
    progress(&format!(
        "{name}: drained in {:.1} s, at most {most_pods} pod(s)",
        took.as_secs_f64()
    ));
    Ok(Drained { took, most_pods })
}

async fn consumer_info(
    js: &jetstream::Context,
    durable: &str,
) -> anyhow::Result<jetstream::consumer::Info> {
    let stream = js.get_stream_no_info(STREAM).await?;
    stream
        .consumer_info(durable)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Waits until `durable` has acknowledged up to `sequence`.
async fn wait_acknowledged(
    js: &jetstream::Context,
    durable: &str,
    sequence: u64,
) -> anyhow::Result<()> {
    wait::until(
        &format!("{durable}: sequence {sequence} acknowledged"),
        Duration::from_secs(180),
        Duration::from_millis(100),
        || async {
            let info = consumer_info(js, durable).await?;
            Ok((info.ack_floor.stream_sequence >= sequence).then_some(()))
        },
    )
    .await
}

async fn wait_no_pod(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"));
    wait::until(
        &format!("{name}: no pod left"),
        Duration::from_secs(300),
        Duration::from_millis(250),
        || async { Ok(pods.list(&selector).await?.items.is_empty().then_some(())) },
    )
    .await
}

async fn jetstream_api_requests(nats: &NatsServer) -> anyhow::Result<u64> {
    let jsz: Value = serde_json::from_str(&http::get(nats.monitor_port(), "/jsz").await?.body)?;
    Ok(jsz["api"]["total"].as_u64().unwrap_or_default())
}

fn apply_consumer(name: &str, filter: &str, spec: &Value) -> anyhow::Result<()> {
    let mut full = json!({ "streamRef": { "name": "bench" }, "filterSubjects": [filter] });
    if let (Some(full), Some(spec)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(spec.clone());
    }
    apply(&json!({
        "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "AuditConsumer",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": full,
    }))
}

fn apply(object: &Value) -> anyhow::Result<()> {
    tools::run(
        "kubectl",
        &["apply", "--server-side", "--field-manager=bench", "-f", "-"],
        Some(&serde_json::to_string(object)?),
    )?;
    Ok(())
}
