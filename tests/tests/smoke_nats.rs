//! Proves the NATS part of the test environment is real: JetStream file storage survives a
//! server restart, and a replicated stream on a 3-node cluster survives losing a node.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use audit_tests::nats::{NatsCluster, NatsServer};
use audit_tests::wait;

#[tokio::test]
async fn file_stream_survives_a_server_restart() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    js.create_stream(stream::Config {
        name: "SMOKE".into(),
        subjects: vec!["smoke.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    for i in 0..10 {
        js.publish(format!("smoke.{i}"), "persisted".into())
            .await?
            .await?;
    }

    server.stop().await;
    assert!(
        server.client().await.is_err(),
        "a stopped server must refuse connections"
    );
    server.start_again().await?;

    let js = jetstream::new(server.client().await?);
    let mut stream = js.get_stream("SMOKE").await?;
    assert_eq!(stream.info().await?.state.messages, 10);
    Ok(())
}

#[tokio::test]
async fn replicated_stream_accepts_publishes_with_one_node_down() -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start(3).await?;
    let js = jetstream::new(cluster.client().await?);
    js.create_stream(stream::Config {
        name: "SMOKE_R3".into(),
        subjects: vec!["replicated.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await?;
    // The stream's subjects reach every node's interest a moment after it was created:
    // until then a publish through another node finds no stream ("no responders").
    wait::until(
        "a first publish to the new R3 stream",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let js = js.clone();
            async move {
                let ack = js.publish("replicated.before", "one".into()).await?;
                Ok(Some(ack.await?))
            }
        },
    )
    .await?;

    // Kill the stream's leader, the hardest node to lose: the others must elect a new one.
    let mut replicated = js.get_stream("SMOKE_R3").await?;
    let leader = replicated
        .info()
        .await?
        .cluster
        .clone()
        .and_then(|cluster| cluster.leader)
        .expect("an R3 stream reports its leader");
    let leader_index = (0..3)
        .find(|i| leader.ends_with(&cluster.node(*i).port().to_string()))
        .expect("the leader is one of the three nodes");
    cluster.node_mut(leader_index).kill();

    let js = jetstream::new(cluster.node((leader_index + 1) % 3).client().await?);
    wait::until(
        "a publish to the R3 stream after losing its leader",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let js = js.clone();
            async move {
                let ack = js.publish("replicated.after", "two".into()).await?;
                Ok(Some(ack.await?))
            }
        },
    )
    .await?;
    let mut replicated = js.get_stream("SMOKE_R3").await?;
    assert_eq!(replicated.info().await?.state.messages, 2);
    Ok(())
}
