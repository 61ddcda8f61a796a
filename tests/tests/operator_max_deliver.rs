//! An AuditConsumer with a `maxDeliver` limit against the real servers: when NATS gives up
//! on an event, the operator counts it in the status and warns in an Event. The test plays a
//! sink that fails: it pulls an event from the durable consumer and never acknowledges it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsServer;
use audit_tests::operator::{OperatorProcess, install_crds};
use audit_tests::wait;
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

async fn apply(
    api: &Api<DynamicObject>,
    kind: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<()> {
    let object = json!({
        "apiVersion": "audit.eventsaudit.io/v1alpha1",
        "kind": kind,
        "metadata": { "name": name },
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply("max-deliver-tests").force(),
        &Patch::Apply(&object),
    )
    .await?;
    Ok(())
}

fn api(client: &kube::Client, namespace: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("audit.eventsaudit.io", "v1alpha1", kind),
        plural,
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

#[tokio::test]
async fn an_event_that_reaches_max_deliver_is_counted_and_reported() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.admin_client().await?;
    install_crds(&client).await?;
    let namespace = control_plane.create_namespace("max-deliver").await?;
    let nats = NatsServer::start().await?;
    let operator = OperatorProcess::start(&[
        "--namespace",
        &namespace,
        "--consumer-image",
        "audit-consumer:test",
    ])?;
    let with_log = |e: anyhow::Error| {
        anyhow::anyhow!(
            "{e:#}\noperator log:\n{}\nnats log:\n{}",
            operator.log_tail(),
            nats.log_tail()
        )
    };

    let streams = api(&client, &namespace, "AuditStream", "auditstreams");
    let consumers = api(&client, &namespace, "AuditConsumer", "auditconsumers");
    apply(
        &streams,
        "AuditStream",
        "orders",
        json!({
            "connection": { "servers": [nats.url()] },
            "name": "ORDERS",
            "subjects": ["audit.>"],
            "storage": "Memory",
        }),
    )
    .await?;
    apply(
        &consumers,
        "AuditConsumer",
        "reader",
        json!({ "streamRef": { "name": "orders" }, "maxDeliver": 1, "ackWait": "1s" }),
    )
    .await?;

    // A zero count in the status means the operator listens for the advisories.
    let status = |object: DynamicObject| object.data["status"].clone();
    wait::until(
        "the durable consumer, and the operator listening for its advisories",
        WAIT,
        POLL,
        || async {
            let status = status(consumers.get("reader").await?);
            Ok((status["maxDeliveriesReached"] == 0).then_some(()))
        },
    )
    .await
    .map_err(with_log)?;

    let js = jetstream::new(nats.client().await?);
    let sequence = js
        .publish("audit.orders", "{}".into())
        .await?
        .await?
        .sequence;
    let durable: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream("ORDERS")
        .await?
        .get_consumer("reader")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The failing sink: it takes the event and never acknowledges it.
    let mut batch = durable.fetch().max_messages(1).messages().await?;
    let unacked = batch
        .next()
        .await
        .expect("the published event")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = unacked.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(info.stream_sequence, sequence);

    let status = wait::until(
        "status.maxDeliveriesReached to count the event NATS gave up on",
        WAIT,
        POLL,
        || async {
            let status = status(consumers.get("reader").await?);
            Ok((status["maxDeliveriesReached"] == 1).then_some(status))
        },
    )
    .await
    .map_err(with_log)?;
    assert_eq!(status["lastMaxDeliveredSequence"], sequence);

    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let warning = wait::until("the MaxDeliveriesReached Event", WAIT, POLL, || async {
        Ok(events
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("MaxDeliveriesReached")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("reader")
            }))
    })
    .await
    .map_err(with_log)?;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.note.unwrap_or_default();
    for part in [
        "1 more event(s)".to_owned(),
        format!("stream sequence {sequence}"),
        "spec.maxDeliver".to_owned(),
    ] {
        assert!(note.contains(&part), "{part:?} missing from {note}");
    }
    Ok(())
}
