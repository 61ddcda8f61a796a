//! audit-consumer under failure, against a real nats-server: a failing output (and an event
//! NATS gives up on because of it), SIGTERM in the middle of a backlog, a NATS outage, and a
//! consumer deleted under it.

mod consumer_support;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use audit_tests::nats::NatsServer;
use consumer_support::*;
use futures::StreamExt;

#[tokio::test]
async fn output_failure_naks_and_the_events_are_written_later() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "flaky", Duration::from_secs(5)).await?;
    publish_events(&js, "sink", 50).await?;

    // Standard output opened read-only: every write fails (EBADF), as a full or broken log
    // device would, without the test losing lines that a real pipe had already accepted.
    let dir = tempfile::tempdir()?;
    let read_only = dir.path().join("stdout");
    std::fs::write(&read_only, "")?;
    let mut failing = ConsumerProcess::start_with_stdout(
        &server.url(),
        "flaky",
        &["--nak-delay", "100ms"],
        Stdio::from(std::fs::File::open(&read_only)?),
    )?;
    let waited = audit_tests::wait::until(
        "events to be naked",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let naked = failing
                .metric(r#"audit_consumer_events_total{outcome="naked",kind="structured"}"#)
                .await?;
            Ok((naked >= 1.0).then_some(()))
        },
    )
    .await;
    if let Err(err) = waited {
        let status = failing.wait_exit(Duration::from_secs(1)).await;
        anyhow::bail!("{err}; status {status:?}; stderr:\n{}", failing.stderr());
    }
    let (status, body) = failing.http_get("/readyz").await?;
    assert_eq!(status, 503, "a failing output makes the pod unready");
    assert!(body.contains("standard output"), "{body}");
    assert_eq!(
        failing
            .metric(r#"audit_consumer_events_total{outcome="acked",kind="structured"}"#)
            .await?,
        0.0,
        "nothing unwritten is acked"
    );
    failing.terminate()?;
    drop(failing);

    let mut healthy = ConsumerProcess::start(&server.url(), "flaky", &[])?;
    let lines = healthy.read_lines(50, Duration::from_secs(60)).await?;
    let lines: Vec<_> = lines.iter().map(|line| parse_json_line(line)).collect();
    let ids: HashSet<String> = lines.iter().map(event_id).collect();
    assert_eq!(ids.len(), 50, "every event is written after all");
    assert!(
        lines
            .iter()
            .any(|line| line["delivered"].as_u64().unwrap() >= 2),
        "the naked events come back as redeliveries"
    );
    wait_until_drained(&js, "flaky").await?;
    Ok(())
}

#[tokio::test]
async fn an_event_nats_gives_up_on_is_counted_as_terminated_by_its_pod() -> anyhow::Result<()> {
    const MAX_DELIVER: i64 = 2;
    let server = NatsServer::start().await?;
    let client = server.client().await?;
    let js = jetstream::new(client.clone());
    create_stream_and_limited_consumer(&js, "limited", Duration::from_secs(30), MAX_DELIVER)
        .await?;
    // NATS's own word that it gave up on the event, to hold the pod's count against.
    let mut advisories = client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.limited"
        ))
        .await?;
    client.flush().await?;
    let sequences = publish_events(&js, "doomed", 1).await?;

    // Every write fails (standard output opened read-only), so each delivery is naked.
    let dir = tempfile::tempdir()?;
    let read_only = dir.path().join("stdout");
    std::fs::write(&read_only, "")?;
    let failing = ConsumerProcess::start_with_stdout(
        &server.url(),
        "limited",
        &["--nak-delay", "100ms"],
        Stdio::from(std::fs::File::open(&read_only)?),
    )?;
    let terminated = r#"audit_consumer_events_total{outcome="terminated",kind="structured"}"#;
    audit_tests::wait::until(
        "the pod to count the event as terminated",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { Ok((failing.metric(terminated).await? >= 1.0).then_some(())) },
    )
    .await
    .map_err(|err| anyhow::anyhow!("{err}; stderr:\n{}", failing.stderr()))?;

    let advisory = tokio::time::timeout(Duration::from_secs(30), advisories.next())
        .await
        .map_err(|_| anyhow::anyhow!("no max-deliveries advisory from NATS"))?
        .ok_or_else(|| anyhow::anyhow!("advisory subscription ended"))?;
    let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload)?;
    assert_eq!(advisory["stream_seq"], sequences["doomed-0"], "{advisory}");
    assert_eq!(advisory["deliveries"], MAX_DELIVER, "{advisory}");
    // The first delivery was handed back for another try; only the final one was given up.
    let naked = r#"audit_consumer_events_total{outcome="naked",kind="structured"}"#;
    assert_eq!(failing.metric(naked).await?, 1.0);
    assert_eq!(failing.metric(terminated).await?, 1.0);
    let stderr = failing.stderr();
    assert!(
        stderr.contains("final delivery")
            && stderr.contains(&format!("stream_sequence={}", sequences["doomed-0"])),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_mid_backlog_loses_nothing_across_a_restart() -> anyhow::Result<()> {
    const EVENTS: usize = 20_000;
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    // A short ack wait: anything the first run received but never acked comes back quickly.
    create_stream_and_consumer(&js, "restarting", Duration::from_secs(3)).await?;
    publish_events(&js, "backlog", EVENTS).await?;

    let mut first = ConsumerProcess::start(&server.url(), "restarting", &[])?;
    let mut first_lines = first.read_lines(2_000, Duration::from_secs(60)).await?;
    first.terminate()?;
    let status = first.wait_exit(Duration::from_secs(20)).await?;
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    first_lines.extend(first.remaining_lines(Duration::from_secs(5)).await?);

    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in &first_lines {
        *counts.entry(event_id(&parse_json_line(line))).or_default() += 1;
    }
    let mut second = ConsumerProcess::start(&server.url(), "restarting", &[])?;
    let mut second_lines = 0;
    while counts.len() < EVENTS {
        let batch = second
            .read_lines(1, Duration::from_secs(60))
            .await
            .map_err(|err| {
                anyhow::anyhow!("{} of {EVENTS} distinct events seen: {err}", counts.len())
            })?;
        second_lines += 1;
        *counts
            .entry(event_id(&parse_json_line(&batch[0])))
            .or_default() += 1;
    }
    wait_until_drained(&js, "restarting").await?;
    second_lines += second.lines_so_far().len();
    let duplicates: usize = counts.values().map(|count| count - 1).sum();
    println!(
        "first run: {} lines, second run: {second_lines} lines, duplicates: {duplicates}",
        first_lines.len()
    );
    assert_eq!(counts.len(), EVENTS, "every event appears at least once");
    Ok(())
}

#[tokio::test]
async fn recovers_by_itself_from_a_nats_outage() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "outage", Duration::from_secs(30)).await?;
    publish_events(&js, "before", 100).await?;

    let mut consumer = ConsumerProcess::start(
        &server.url(),
        "outage",
        &["--heartbeat", "1s", "--expires", "5s"],
    )?;
    let mut lines = consumer.read_lines(100, Duration::from_secs(60)).await?;
    consumer.wait_ready(true, Duration::from_secs(10)).await?;

    server.stop().await;
    consumer.wait_ready(false, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, _) = consumer.http_get("/livez").await?;
    assert_eq!(status, 200, "an outage must not fail liveness");
    server.start_again().await?;

    consumer.wait_ready(true, Duration::from_secs(60)).await?;
    let js = jetstream::new(server.client().await?);
    publish_events(&js, "after", 100).await?;
    lines.extend(consumer.read_lines(100, Duration::from_secs(60)).await?);
    let ids: HashSet<String> = lines
        .iter()
        .map(|line| event_id(&parse_json_line(line)))
        .collect();
    for prefix in ["before", "after"] {
        for n in 0..100 {
            assert!(
                ids.contains(&format!("{prefix}-{n}")),
                "{prefix}-{n} missing"
            );
        }
    }
    wait_until_drained(&js, "outage").await?;
    Ok(())
}

#[tokio::test]
async fn a_deleted_consumer_is_reported_and_exits_non_zero() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "doomed", Duration::from_secs(30)).await?;

    // Where Kubernetes reads a container's termination message from.
    let termination_log =
        std::env::temp_dir().join(format!("audit-consumer-termination-{}", std::process::id()));
    let termination_flag = format!("--termination-log={}", termination_log.display());
    let mut consumer = ConsumerProcess::start(&server.url(), "doomed", &[&termination_flag])?;
    consumer.wait_ready(true, Duration::from_secs(30)).await?;
    js.get_stream(STREAM)
        .await?
        .delete_consumer("doomed")
        .await?;

    let status = consumer.wait_exit(Duration::from_secs(30)).await?;
    assert!(
        !status.success(),
        "a deleted consumer must fail, got {status}"
    );
    let stderr = consumer.stderr();
    assert!(stderr.contains("consumer was deleted"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    // The fatal error alone, one line, as logged last.
    let message = std::fs::read_to_string(&termination_log)?;
    std::fs::remove_file(&termination_log)?;
    assert!(message.contains("does not exist"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .is_some_and(|line| line.contains(&message)),
        "the last log line carries the same error:\n{stderr}"
    );
    // Standard error is a file here, as under a log collector: no colour codes.
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in:\n{stderr}"
    );
    Ok(())
}
