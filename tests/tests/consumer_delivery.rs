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

#[tokio::test]
async fn tls_and_user_password_from_files_only() -> anyhow::Result<()> {
    let secrets = tempfile::tempdir()?;
    let ca = audit_tests::certs::TestCa::new("consumer-test-ca")?;
    let serving = ca.loopback_server("nats-server")?;
    let write = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = secrets.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let (cert, key) = (
        write("server.crt", &serving.cert_pem)?,
        write("server.key", &serving.key_pem)?,
    );
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {cert:?}, key_file: {key:?} }}\n\
         authorization {{ users: [ {{ user: auditor, password: \"pa ss\" }} ] }}\n"
    ))
    .await?;
    let url = format!("tls://127.0.0.1:{}", server.port());
    let ca_file = write("ca.crt", &ca.cert_pem())?;
    let client =
        async_nats::ConnectOptions::with_user_and_password("auditor".into(), "pa ss".into())
            .add_root_certificates(ca_file.clone().into())
            .require_tls(true)
            .connect(&url)
            .await?;
    let js = jetstream::new(client);
    create_stream_and_consumer(&js, "tls_reader", Duration::from_secs(30)).await?;
    publish_events(&js, "tls", 20).await?;

    // Files as a mounted Secret has them (a trailing newline is common and must not count).
    let user_file = write("username", "auditor\n")?;
    let password_file = write("password", "pa ss\n")?;
    let mut consumer = ConsumerProcess::start(
        &url,
        "tls_reader",
        &[
            "--tls-ca-file",
            &ca_file,
            "--user-file",
            &user_file,
            "--password-file",
            &password_file,
        ],
    )?;
    let lines = consumer.read_lines(20, Duration::from_secs(30)).await?;
    assert_eq!(lines.len(), 20);
    wait_until_drained(&js, "tls_reader").await?;
    consumer.terminate()?;
    assert!(consumer.wait_exit(Duration::from_secs(20)).await?.success());
    Ok(())
}

/// NATS as production runs it: a server in operator mode that requires a client certificate
/// (`verify`), and a consumer that logs in with a creds file (a user JWT of the account) and
/// presents its certificate, all from files.
#[tokio::test]
async fn creds_file_and_client_certificate_against_an_operator_mode_server() -> anyhow::Result<()> {
    let secrets = tempfile::tempdir()?;
    let write = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = secrets.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let ca = audit_tests::certs::TestCa::new("consumer-mtls-ca")?;
    let serving = ca.loopback_server("nats-server")?;
    let client_cert = ca.client("audit-consumer")?;
    let (cert, key, ca_file) = (
        write("server.crt", &serving.cert_pem)?,
        write("server.key", &serving.key_pem)?,
        write("ca.crt", &ca.cert_pem())?,
    );
    let accounts = audit_tests::nats_accounts::Accounts::new();
    let user = accounts.user("consumer", None)?;
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {cert:?}, key_file: {key:?}, ca_file: {ca_file:?}, verify: true }}\n{}",
        accounts.server_config()?
    ))
    .await?;
    let url = format!("tls://127.0.0.1:{}", server.port());
    let (client_cert_file, client_key_file, creds_file) = (
        write("tls.crt", &client_cert.cert_pem)?,
        write("tls.key", &client_cert.key_pem)?,
        write("user.creds", &user.creds)?,
    );
    let client = async_nats::ConnectOptions::with_credentials(&user.creds)?
        .add_root_certificates(ca_file.clone().into())
        .add_client_certificate(
            client_cert_file.clone().into(),
            client_key_file.clone().into(),
        )
        .require_tls(true)
        .connect(&url)
        .await?;
    let js = jetstream::new(client);
    create_stream_and_consumer(&js, "jwt_reader", Duration::from_secs(30)).await?;
    publish_events(&js, "jwt", 20).await?;

    let mut consumer = ConsumerProcess::start(
        &url,
        "jwt_reader",
        &[
            "--tls-ca-file",
            &ca_file,
            "--tls-cert-file",
            &client_cert_file,
            "--tls-key-file",
            &client_key_file,
            "--creds-file",
            &creds_file,
        ],
    )?;
    let lines = consumer.read_lines(20, Duration::from_secs(30)).await?;
    assert_eq!(lines.len(), 20);
    wait_until_drained(&js, "jwt_reader").await?;
    consumer.terminate()?;
    assert!(consumer.wait_exit(Duration::from_secs(20)).await?.success());
    Ok(())
}
