//! Several operator replicas with leader election: exactly one reconciles, the standby is
//! ready and idle, and when the leader dies without a goodbye the standby takes the Lease
//! and carries on. Also checks the operator's health and metrics endpoints.

mod operator_support;

use std::time::Duration;

use audit_tests::http;
use audit_tests::nats::NatsServer;
use audit_tests::operator::{OPERATOR_NAMESPACE, OperatorProcess};
use audit_tests::wait;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject};
use operator_support::{AUDIT_STREAM, lease_holder, wait_ready};
use serde_json::json;

/// An AuditStream `name` on `nats_url`, capturing `<name>.>`.
async fn apply_stream(api: &Api<DynamicObject>, name: &str, nats_url: &str) -> anyhow::Result<()> {
    let spec = json!({
        "connection": { "servers": [nats_url] },
        "subjects": [format!("{name}.>")],
        "storage": "Memory",
    });
    operator_support::apply(api, AUDIT_STREAM, name, spec).await?;
    Ok(())
}

async fn leader_gauge(operator: &OperatorProcess) -> anyhow::Result<String> {
    let metrics = http::get(operator.health_port(), "/metrics").await?;
    anyhow::ensure!(
        metrics.status == 200,
        "/metrics answered {}",
        metrics.status
    );
    Ok(metrics
        .body
        .lines()
        .find(|line| line.starts_with("audit_operator_leader "))
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    let (client, namespace) = operator_support::namespace("leader", &[]).await?;
    let nats = NatsServer::start().await?;
    let leader_args = |identity: &'static str| {
        [
            "--namespace",
            namespace.as_str(),
            "--leader-election",
            "true",
            "--lease-namespace",
            OPERATOR_NAMESPACE,
            "--instance",
            identity,
        ]
        .map(str::to_owned)
    };
    let args_a = leader_args("replica-a");
    let args_b = leader_args("replica-b");
    let mut replicas = [
        OperatorProcess::start(&args_a.iter().map(String::as_str).collect::<Vec<_>>())?,
        OperatorProcess::start(&args_b.iter().map(String::as_str).collect::<Vec<_>>())?,
    ];

    // The Lease lives where the shipped RBAC lets the operator hold it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let first_leader = wait::until(
        "one replica to take the Lease",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { lease_holder(&leases).await },
    )
    .await?;
    let (leader, standby) = if first_leader == "replica-a" {
        (0, 1)
    } else {
        (1, 0)
    };

    // Both answer liveness; both are ready (a standby can take over at once); only the
    // leader says it leads.
    for replica in &replicas {
        wait::until(
            "/readyz to answer 200",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async {
                let live = http::get(replica.health_port(), "/livez").await?;
                let ready = http::get(replica.health_port(), "/readyz").await?;
                anyhow::ensure!(
                    live.status == 200 && ready.status == 200,
                    "/livez answered {}, /readyz {}: {}",
                    live.status,
                    ready.status,
                    ready.body
                );
                Ok(Some(()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", replica.log_tail()))?;
    }
    assert_eq!(
        leader_gauge(&replicas[leader]).await?,
        "audit_operator_leader 1"
    );
    assert_eq!(
        leader_gauge(&replicas[standby]).await?,
        "audit_operator_leader 0"
    );

    let api = operator_support::api(&client, &namespace, AUDIT_STREAM);
    apply_stream(&api, "before", &nats.url()).await?;
    wait_ready(&api, "before", Duration::from_secs(30)).await?;

    // The leader vanishes without releasing the Lease; the standby must wait out the lease
    // duration (15 s) and take over.
    replicas[leader].kill();
    apply_stream(&api, "after", &nats.url()).await?;
    let new_leader = wait::until(
        "the standby to take the Lease",
        Duration::from_secs(45),
        Duration::from_millis(250),
        || async { Ok(lease_holder(&leases).await?.filter(|h| *h != first_leader)) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\nstandby log:\n{}", replicas[standby].log_tail()))?;
    assert_ne!(new_leader, first_leader);
    wait_ready(&api, "after", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\nnew leader log:\n{}", replicas[standby].log_tail()))?;
    assert_eq!(
        leader_gauge(&replicas[standby]).await?,
        "audit_operator_leader 1"
    );
    replicas[standby].ensure_running()?;
    Ok(())
}
