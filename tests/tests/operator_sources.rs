//! Many clusters, one trail, against real servers: a hub nats-server and two leaf nodes, each
//! with a JetStream domain of its own, linked as leaf nodes (real leafnode connections, the
//! leaves authenticating to the hub's account), the committed CRDs on the test control plane,
//! the operator, and an `audit-consumer` process draining the hub.
//!
//! An AuditStream on the hub sources a stream on each leaf: events published on the leaves are
//! written by the hub's consumer, each line naming its origin; a re-apply and the server's
//! own spelling of the sources are no drift; one leaf's link is cut for 30 s while its
//! publisher goes on: the source shows inactive in status, condition and metrics, and after
//! the link is back everything arrives, nothing lost and nothing twice; a leaf and then the
//! hub restarted lose nothing either; a mirror of the hub in a third leaf's domain holds it all.

mod consumer_support;
mod operator_support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use audit_tests::nats::LeafTopology;
use audit_tests::operator::OperatorProcess;
use audit_tests::wait;
use consumer_support::{ConsumerProcess, STREAM, event_id, parse_json_line, publish_events};
use kube::api::{Api, DynamicObject};
use operator_support::{AUDIT_STREAM, condition, events_about, occurrences};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);
const LEAVES: [&str; 2] = ["spoke-a", "spoke-b"];
/// A third leaf node, in the disaster-recovery cluster, whose AuditStream mirrors the hub.
const DR: &str = "dr";
/// The stream each leaf keeps its cluster's events in (the same name in every cluster, as
/// one set of manifests gives).
const LEAF_STREAM: &str = "EVENTS";

async fn status_of(streams: &Api<DynamicObject>) -> anyhow::Result<Value> {
    Ok(streams.get("trail").await?.data["status"].clone())
}

/// Waits until `check` accepts the AuditStream's status.
async fn wait_status(
    streams: &Api<DynamicObject>,
    operator: &OperatorProcess,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let result = wait::until(what, WAIT, POLL, || async {
        let status = status_of(streams).await?;
        Ok(check(&status).then_some(status))
    })
    .await;
    match result {
        Ok(status) => Ok(status),
        Err(e) => Err(anyhow::anyhow!(
            "{e:#}\nlast status: {}\noperator log:\n{}",
            status_of(streams).await.unwrap_or_default(),
            operator.log_tail()
        )),
    }
}

fn source_states(status: &Value) -> Vec<(String, bool)> {
    status["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["origin"].as_str().unwrap_or_default().to_owned(),
                s["active"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

fn sources_active(status: &Value) -> Option<String> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "SourcesActive")
        .and_then(|c| {
            Some(format!(
                "{} {}",
                c["status"].as_str()?,
                c["reason"].as_str()?
            ))
        })
}

#[tokio::test]
async fn a_hub_sources_every_leaf_domain_and_catches_up_after_a_cut_link() -> anyhow::Result<()> {
    let mut topology = LeafTopology::start("hub", &[LEAVES[0], LEAVES[1], DR]).await?;
    let mut leaf_js = Vec::new();
    for leaf in &topology.leaves[..LEAVES.len()] {
        let js = jetstream::new(leaf.client().await?);
        js.create_stream(stream::Config {
            name: LEAF_STREAM.into(),
            subjects: vec!["audit.>".into()],
            ..Default::default()
        })
        .await?;
        leaf_js.push(js);
    }

    let (client, namespace) = operator_support::namespace("ast-hub", &[]).await?;
    let operator = OperatorProcess::start(&["--namespace", &namespace])?;
    let streams = operator_support::api(&client, &namespace, AUDIT_STREAM);
    let spec = json!({
        "connection": { "servers": [topology.hub.url()] },
        "name": STREAM,
        "sources": LEAVES.iter().map(|domain| json!({ "name": LEAF_STREAM, "domain": domain })).collect::<Vec<_>>(),
        "sourceInactiveAfter": "10s",
    });
    operator_support::apply(&streams, AUDIT_STREAM, "trail", spec.clone()).await?;
    let status = wait_status(&streams, &operator, "both sources active", |status| {
        source_states(status)
            == [
                ("domain spoke-a".to_owned(), true),
                ("domain spoke-b".to_owned(), true),
            ]
            && sources_active(status).as_deref() == Some("True SourcesActive")
    })
    .await?;
    println!("status with both sources: {status}");
    assert_eq!(
        condition(&streams.get("trail").await?, "Ready").map(|c| c["status"].clone()),
        Some(json!("True"))
    );
    let active = format!(
        r#"audit_operator_stream_source_active{{namespace="{namespace}",name="trail",source="{LEAF_STREAM}",origin="domain spoke-a"}}"#
    );
    assert_eq!(
        operator_support::operator_metric(&operator, &active).await?,
        1.0
    );

    // A mirror of the hub in the disaster-recovery cluster, from the start: it follows the
    // hub through every fault below.
    let copies = operator_support::api(&client, &namespace, AUDIT_STREAM);
    operator_support::apply(
        &copies,
        AUDIT_STREAM,
        "copy",
        json!({
            "connection": { "servers": [topology.leaves[2].url()] },
            "name": "AUDIT_COPY",
            "mirror": { "name": STREAM, "domain": "hub" },
        }),
    )
    .await?;
    // The hub's consumer, draining what every leaf sends.
    let hub_js = jetstream::new(topology.hub.client().await?);
    hub_js
        .get_stream(STREAM)
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("hub-writer".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut writer = ConsumerProcess::start(&topology.hub.url(), "hub-writer", &[])?;
    let mut published: HashMap<String, u64> = HashMap::new();
    for (index, js) in leaf_js.iter().enumerate() {
        published.extend(publish_events(js, LEAVES[index], 100).await?);
    }
    let lines = writer.read_lines(200, WAIT).await?;

    // A re-apply, and the server's own spelling of the sources (a domain is stored as its API
    // prefix), are no drift.
    operator_support::apply(&streams, AUDIT_STREAM, "trail", spec).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events = events_about(&client, &namespace, "trail").await?;
    assert_eq!(occurrences(&events, "DriftCorrected"), 0, "{events:?}");
    assert_eq!(occurrences(&events, "Updated"), 0, "{events:?}");

    // One leaf's link cut for 30 s while its publisher goes on: the leaf keeps its events.
    topology.links[0].cut();
    let cut_at = tokio::time::Instant::now();
    let during = publish_events(&leaf_js[0], "spoke-a-during-cut", 100).await?;
    published.extend(during);
    let status = wait_status(&streams, &operator, "spoke-a inactive", |status| {
        source_states(status).contains(&("domain spoke-a".to_owned(), false))
            && sources_active(status).as_deref() == Some("False SourceInactive")
    })
    .await?;
    println!("status during the cut: {status}");
    assert_eq!(
        operator_support::operator_metric(&operator, &active).await?,
        0.0
    );
    let message = condition(&streams.get("trail").await?, "SourcesActive")
        .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains("source EVENTS (domain spoke-a) inactive since"),
        "{message}"
    );
    tokio::time::sleep_until(cut_at + Duration::from_secs(30)).await;
    topology.links[0].restore();
    topology.wait_linked().await?;
    let mut lines = lines;
    lines.extend(writer.read_lines(100, WAIT).await?);
    wait_status(&streams, &operator, "both sources active again", |status| {
        source_states(status).iter().all(|(_, active)| *active)
            && sources_active(status).as_deref() == Some("True SourcesActive")
    })
    .await?;

    // A leaf restarted, then the hub: the sources resume where they were, and what a leaf
    // stored while the hub was down arrives.
    topology.leaves[1].stop().await;
    topology.leaves[1].start_again().await?;
    topology.wait_linked().await?;
    published.extend(publish_events(&leaf_js[1], "spoke-b-after-restart", 50).await?);
    lines.extend(writer.read_lines(50, WAIT).await?);
    topology.hub.stop().await;
    published.extend(publish_events(&leaf_js[0], "spoke-a-hub-down", 50).await?);
    topology.hub.start_again().await?;
    topology.wait_linked().await?;
    lines.extend(writer.read_lines(50, WAIT).await?);
    wait_status(
        &streams,
        &operator,
        "both sources active after the restarts",
        |status| {
            source_states(status).iter().all(|(_, active)| *active)
                && sources_active(status).as_deref() == Some("True SourcesActive")
        },
    )
    .await?;

    let total = published.len() as u64;
    // The mirror, through the cut, the restarts of a leaf and of the hub, holds every event.
    let copy = wait::until("the mirror to hold every event", WAIT, POLL, || async {
        let status = copies.get("copy").await?.data["status"].clone();
        let mirrored = status["sources"][0]["mirror"] == true
            && status["sources"][0]["active"] == true
            && status["messages"].as_u64() == Some(total);
        Ok(mirrored.then_some(status))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", operator.log_tail()))?;
    assert_eq!(copy["sources"][0]["origin"], "domain hub", "{copy}");

    // Every event once on the hub (nothing hidden by the duplicate window either), each line
    // naming the source it came through.
    let stored = hub_js
        .get_stream(STREAM)
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(
        stored,
        published.len() as u64,
        "the hub holds other than what was published"
    );
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    for line in &lines {
        let value = parse_json_line(line);
        let id = event_id(&value);
        *seen.entry(id.clone()).or_default() += 1;
        let origin = value["headers"]["Nats-Stream-Source"]
            .as_str()
            .unwrap_or_else(|| panic!("no Nats-Stream-Source header in {line}"))
            .to_owned();
        origins.insert(id, origin);
    }
    assert_eq!(seen.len(), published.len(), "lost events");
    assert!(
        seen.values().all(|count| *count == 1),
        "duplicates: {seen:?}"
    );
    let origin_of = |prefix: &str| -> Vec<String> {
        let mut found: Vec<String> = origins
            .iter()
            .filter(|(id, _)| id.starts_with(prefix) && !id.contains("during"))
            .map(|(_, origin)| origin.split(' ').next().unwrap_or_default().to_owned())
            .collect();
        found.dedup();
        found
    };
    let (a, b) = (origin_of("spoke-a-"), origin_of("spoke-b-"));
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
    assert_ne!(a, b, "the two leaves' events name the same origin");
    assert!(a[0].starts_with(LEAF_STREAM), "{a:?}");
    drop(writer.terminate());
    Ok(())
}
