//! audit-consumer in the normal path, against a real nats-server: every event exactly once
//! with the right metadata, acked on the server; redaction; a missing consumer.

mod consumer_support;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use audit_tests::nats::NatsServer;
use consumer_support::*;

#[tokio::test]
async fn every_event_is_logged_once_with_its_metadata_and_acked() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "logger", Duration::from_secs(30)).await?;
    let sequences = publish_events(&js, "evt", 500).await?;

    let mut consumer = ConsumerProcess::start(&server.url(), "logger", &[])?;
    let lines = consumer.read_lines(500, Duration::from_secs(60)).await?;
    wait_until_drained(&js, "logger").await?;
    consumer.wait_ready(true, Duration::from_secs(10)).await?;

    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in &lines {
        let line = parse_json_line(line);
        let id = event_id(&line);
        *seen.entry(id.clone()).or_default() += 1;
        assert_eq!(line["kind"], "structured");
        assert_eq!(line["stream"], STREAM);
        assert_eq!(line["consumer"], "logger");
        assert_eq!(line["delivered"], 1);
        assert_eq!(line["stream_seq"], sequences[&id], "{line}");
        assert_eq!(
            line["consumer_seq"], line["stream_seq"],
            "a fresh consumer delivers in order"
        );
        let n = line["event"]["data"]["n"].as_u64().unwrap();
        assert_eq!(line["subject"], format!("audit.{}", n % 3));
        assert_eq!(line["headers"]["Nats-Msg-Id"], id);
        assert!(line["published"].as_str().unwrap().ends_with('Z'));
        assert!(line["pending"].as_u64().unwrap() < 500);
    }
    assert_eq!(seen.len(), 500, "every published id appears");
    assert!(
        seen.values().all(|count| *count == 1),
        "no id appears twice"
    );
    assert_eq!(
        consumer
            .metric(r#"audit_consumer_events_total{outcome="acked",kind="structured"}"#)
            .await?,
        500.0
    );

    consumer.terminate()?;
    let status = consumer.wait_exit(Duration::from_secs(20)).await?;
    assert!(status.success(), "clean shutdown exits 0, got {status}");
    assert!(
        consumer
            .remaining_lines(Duration::from_secs(5))
            .await?
            .is_empty(),
        "nothing is logged twice"
    );
    Ok(())
}

#[tokio::test]
async fn redaction_replaces_named_keys_at_any_depth_and_nothing_else() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "redacting", Duration::from_secs(30)).await?;
    let event = serde_json::json!({
        "id": "r-1", "type": "login", "source": "/iam", "password": "top-level",
        "data": {
            "user": "alice", "Authorization": "Bearer abc",
            "sessions": [{"token": {"nested": "object"}, "tokens": 2}, {"note": "password"}],
        },
    });
    js.publish("audit.redact", event.to_string().into())
        .await?
        .await?;

    let mut consumer = ConsumerProcess::start(
        &server.url(),
        "redacting",
        &["--redact-keys", "password,token,authorization"],
    )?;
    let line = parse_json_line(&consumer.read_lines(1, Duration::from_secs(30)).await?[0]);
    assert_eq!(
        line["event"],
        serde_json::json!({
            "id": "r-1", "type": "login", "source": "/iam", "password": "[REDACTED]",
            "data": {
                "user": "alice", "Authorization": "[REDACTED]",
                "sessions": [{"token": "[REDACTED]", "tokens": 2}, {"note": "password"}],
            },
        })
    );
    assert!(!line.to_string().contains("Bearer abc"));
    assert!(!line.to_string().contains("top-level"));
    Ok(())
}

#[tokio::test]
async fn a_missing_consumer_is_reported_and_exits_non_zero() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "someone-else", Duration::from_secs(30)).await?;

    let mut consumer = ConsumerProcess::start(&server.url(), "never-created", &[])?;
    let status = consumer.wait_exit(Duration::from_secs(30)).await?;
    assert!(
        !status.success(),
        "a missing consumer must fail, got {status}"
    );
    let stderr = consumer.stderr();
    assert!(
        stderr.contains(r#"consumer "never-created" on stream "AUDIT" does not exist"#),
        "stderr must say what is wrong:\n{stderr}"
    );
    assert!(
        stderr.contains("--create"),
        "stderr must say what to do:\n{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn standalone_mode_creates_stream_and_consumer() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let mut consumer = ConsumerProcess::start(
        &server.url(),
        "standalone",
        &["--create", "--subjects", "audit.>", "--format", "text"],
    )?;
    consumer.wait_ready(true, Duration::from_secs(30)).await?;
    let js = jetstream::new(server.client().await?);
    js.publish("audit.x", "hello".into()).await?.await?;
    let line = consumer
        .read_lines(1, Duration::from_secs(30))
        .await?
        .remove(0);
    assert!(
        line.starts_with("kind=raw subject=audit.x stream=AUDIT consumer=standalone "),
        "{line}"
    );
    assert!(line.ends_with(" raw=hello"), "{line}");
    Ok(())
}
