//! audit-consumer --output archive against a real nats-server and a real S3 store (versitygw,
//! Object Lock on): the segments hold exactly the lines the standard output writes, each
//! stored once under compliance retention, and the trail in the bucket verifies; events held
//! longer than `ack_wait` in an open segment are kept alive, not redelivered; a store outage
//! loses nothing (events stay held and unacked, the pod turns unready, the upload is retried);
//! a pod stopped while the store is down hands its events back for the next pod; a bucket
//! without Object Lock is refused at start-up with a message that says what to do; an
//! incremental verify reads only what was stored since, plus each run's segment before, and
//! still finds a segment deleted outside its window from the gap in the run's numbers.

mod consumer_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, stream};
use audit_tests::cargo_bin;
use audit_tests::nats::NatsServer;
use audit_tests::s3::{ObjectStore, REGION};
use aws_sdk_s3::types::ObjectLockMode;
use consumer_support::*;
use nkeys::KeyPair;

const BUCKET: &str = "audit-archive";
const PREFIX: &str = "trail/";
const WITNESS: &str = "AUDIT_INTEGRITY";

/// The store's credentials as a mounted Secret holds them.
struct CredentialFiles {
    access_key_id: PathBuf,
    secret_access_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl CredentialFiles {
    fn new(store: &ObjectStore) -> anyhow::Result<Self> {
        Self::of(store.access_key(), store.secret_key())
    }

    /// The store's reader: a user with only what a bucket policy grants.
    fn reader(store: &ObjectStore) -> anyhow::Result<Self> {
        let (access_key, secret_key) = store.reader_keys();
        Self::of(access_key, secret_key)
    }

    fn of(access_key: &str, secret_key: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let access_key_id = dir.path().join("access-key-id");
        let secret_access_key = dir.path().join("secret-access-key");
        std::fs::write(&access_key_id, format!("{access_key}\n"))?;
        std::fs::write(&secret_access_key, format!("{secret_key}\n"))?;
        Ok(Self {
            access_key_id,
            secret_access_key,
            _dir: dir,
        })
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 temp path").to_owned()
}

/// The archive options every test uses, plus `extra`.
fn archive_options(
    store: &ObjectStore,
    credentials: &CredentialFiles,
    extra: &[&str],
) -> Vec<String> {
    let mut options: Vec<String> = [
        "--output",
        "archive",
        "--archive-endpoint",
        &store.endpoint(),
        "--archive-region",
        REGION,
        "--archive-bucket",
        BUCKET,
        "--archive-prefix",
        PREFIX,
        "--archive-path-style",
        "--archive-access-key-id-file",
        &path_arg(&credentials.access_key_id),
        "--archive-secret-access-key-file",
        &path_arg(&credentials.secret_access_key),
        "--batch",
        "50",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    options.extend(extra.iter().map(|s| s.to_string()));
    options
}

fn start_archiver(
    server: &NatsServer,
    consumer: &str,
    options: &[String],
) -> anyhow::Result<ConsumerProcess> {
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    ConsumerProcess::start(&server.url(), consumer, &options)
}

/// Every segment under the prefix: key -> its lines (gzip undone).
async fn segments(store: &ObjectStore) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut segments = BTreeMap::new();
    for key in store.keys(BUCKET, PREFIX).await? {
        let body = store.get(BUCKET, &key).await?;
        let text = if key.ends_with(".gz") {
            let mut text = String::new();
            flate2::read::GzDecoder::new(body.as_slice()).read_to_string(&mut text)?;
            text
        } else {
            String::from_utf8(body)?
        };
        anyhow::ensure!(
            text.ends_with('\n'),
            "segment {key} does not end with a newline"
        );
        segments.insert(key, text.lines().map(str::to_owned).collect());
    }
    Ok(segments)
}

fn all_lines(segments: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    segments.values().flatten().cloned().collect()
}

/// The ids of the events in `lines`, counted.
fn id_counts(lines: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        *counts.entry(event_id(&parse_json_line(line))).or_default() += 1;
    }
    counts
}

fn assert_every_event_once_at_least(
    lines: &[String],
    published: &HashMap<String, u64>,
) -> anyhow::Result<()> {
    let counts = id_counts(lines);
    let missing: BTreeSet<_> = published
        .keys()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} of {} events missing from the archive, e.g. {:?}",
        missing.len(),
        published.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}

/// A line without what depends on which durable consumer wrote it.
fn consumer_independent(line: &str) -> String {
    let mut value = parse_json_line(line);
    let object = value.as_object_mut().expect("a JSON object line");
    for field in ["consumer", "consumer_seq", "delivered", "pending"] {
        object.remove(field);
    }
    value.to_string()
}

async fn wait_stopped(mut consumer: ConsumerProcess) -> anyhow::Result<()> {
    consumer.terminate()?;
    let status = consumer.wait_exit(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "exit {status}: {}", consumer.stderr());
    Ok(())
}

/// The store refused the request for want of rights (not for any other reason).
fn assert_access_denied<E>(outcome: Result<(), aws_sdk_s3::error::SdkError<E>>, what: &str)
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
{
    match outcome {
        Ok(()) => panic!("{what}"),
        Err(err) => assert_eq!(
            err.as_service_error().and_then(|e| e.code()),
            Some("AccessDenied"),
            "{what}: refused, but not for want of rights: {err:?}"
        ),
    }
}

/// `audit-consumer verify --archive` over the whole prefix, read-only, plus `extra`.
fn verify_archive(
    server: &NatsServer,
    store: &ObjectStore,
    credentials: &CredentialFiles,
    key: &KeyPair,
    extra: &[&str],
) -> tokio::process::Command {
    let location = format!("s3://{BUCKET}/{PREFIX}");
    verify_location(server, store, credentials, key, &location, extra)
}

/// Checks each segment on its own (`--archive s3://<bucket>/<key>`); returns the exit
/// status and the printed report of each.
async fn verify_each_object(
    server: &NatsServer,
    store: &ObjectStore,
    credentials: &CredentialFiles,
    key: &KeyPair,
    objects: &[&String],
) -> anyhow::Result<Vec<(Option<i32>, String)>> {
    let mut outcomes = Vec::new();
    for object in objects {
        let location = format!("s3://{BUCKET}/{object}");
        let output = verify_location(server, store, credentials, key, &location, &[])
            .output()
            .await?;
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        println!("{object}:\n{printed}");
        outcomes.push((output.status.code(), printed));
    }
    Ok(outcomes)
}

fn verify_location(
    server: &NatsServer,
    store: &ObjectStore,
    credentials: &CredentialFiles,
    key: &KeyPair,
    location: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(cargo_bin("audit-consumer"));
    command
        .arg("verify")
        .args([
            "--nats-url",
            &server.url(),
            "--public-key",
            &key.public_key(),
        ])
        .args([
            "--archive",
            location,
            "--archive-endpoint",
            &store.endpoint(),
        ])
        .args(["--archive-region", REGION, "--archive-path-style"])
        .arg("--archive-access-key-id-file")
        .arg(&credentials.access_key_id)
        .arg("--archive-secret-access-key-file")
        .arg(&credentials.secret_access_key)
        .args(extra)
        .stdin(Stdio::null());
    command
}

#[tokio::test]
async fn segments_hold_the_stdout_lines_under_retention_and_the_trail_verifies()
-> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    // An ack wait far shorter than a segment stays open: without in-progress acks every
    // held event would be redelivered.
    create_stream_and_consumer(&js, "archiver", Duration::from_secs(2)).await?;
    create_stream_and_consumer(&js, "logger", Duration::from_secs(30)).await?;
    js.create_stream(stream::Config {
        name: WITNESS.into(),
        subjects: vec!["audit-integrity.>".into()],
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    })
    .await?;
    let store = ObjectStore::start().await?;
    store.create_bucket_with_object_lock(BUCKET).await?;
    let credentials = CredentialFiles::new(&store)?;
    let key = KeyPair::new_account();
    let key_dir = tempfile::tempdir()?;
    let seed_file = key_dir.path().join("seed.nk");
    std::fs::write(&seed_file, key.seed()?)?;

    let archiver = start_archiver(
        &server,
        "archiver",
        &archive_options(
            &store,
            &credentials,
            &[
                "--archive-segment-lines",
                "300",
                "--archive-segment-age",
                "6s",
                "--archive-compression",
                "gzip",
                "--archive-lock-mode",
                "compliance",
                "--archive-retention",
                "400d",
                "--integrity",
                "--integrity-key-file",
                &path_arg(&seed_file),
                "--integrity-pod",
                "archiver-0",
            ],
        ),
    )?;
    archiver.wait_ready(true, Duration::from_secs(30)).await?;
    let mut logger = ConsumerProcess::start(&server.url(), "logger", &["--batch", "50"])?;

    let published = publish_events(&js, "a", 1000).await?;
    let stdout_lines = logger.read_lines(1000, Duration::from_secs(60)).await?;
    // 300 + 300 + 300 by count, the last 100 by age, 6 s after its first line.
    wait_until_drained(&js, "archiver").await?;
    assert_eq!(
        archiver.metric("audit_consumer_redeliveries_total").await?,
        0.0,
        "held events were redelivered: the in-progress acks did not keep them alive"
    );
    assert_eq!(
        archiver
            .metric(r#"audit_consumer_archive_segments_total{closed_by="lines"}"#)
            .await?,
        3.0
    );
    assert_eq!(
        archiver
            .metric(r#"audit_consumer_archive_segments_total{closed_by="age"}"#)
            .await?,
        1.0
    );
    wait_stopped(archiver).await?;

    let segments = segments(&store).await?;
    assert_eq!(
        segments.len(),
        4,
        "{:?}",
        segments.keys().collect::<Vec<_>>()
    );
    let lines = all_lines(&segments);
    assert_eq!(lines.len(), 1000);
    assert_every_event_once_at_least(&lines, &published)?;
    assert!(id_counts(&lines).values().all(|count| *count == 1));

    // Exactly what the standard output writes, integrity fields aside.
    let without_chain = |line: &String| {
        let mut value = parse_json_line(&consumer_independent(line));
        let object = value.as_object_mut().expect("an object");
        for field in ["chain", "seq", "prev"] {
            object.remove(field);
        }
        value.to_string()
    };
    let archived: BTreeSet<String> = lines.iter().map(without_chain).collect();
    let printed: BTreeSet<String> = stdout_lines.iter().map(without_chain).collect();
    assert_eq!(
        archived, printed,
        "the archive's lines differ from standard output's"
    );

    let day = time::OffsetDateTime::now_utc();
    let day_prefix = format!(
        "{PREFIX}AUDIT/archiver/{:04}/{:02}/",
        day.year(),
        u8::from(day.month())
    );
    let client = store.client();
    let year_from_now = SystemTime::now() + Duration::from_secs(399 * 86_400);
    for key in segments.keys() {
        assert!(
            key.starts_with(&day_prefix),
            "{key} is not under {day_prefix}"
        );
        assert!(
            key.contains("_archiver-0_") && key.ends_with(".jsonl.gz"),
            "{key}"
        );
        let head = client.head_object().bucket(BUCKET).key(key).send().await?;
        assert_eq!(
            head.object_lock_mode(),
            Some(&ObjectLockMode::Compliance),
            "{key}"
        );
        let until = head
            .object_lock_retain_until_date()
            .expect("a retain-until date");
        assert!(
            SystemTime::try_from(*until)? > year_from_now,
            "{key} is retained only until {until}"
        );
        // Deleting the stored version itself must fail.
        let removed = client
            .delete_object()
            .bucket(BUCKET)
            .key(key)
            .set_version_id(head.version_id().map(str::to_owned))
            .send()
            .await;
        assert!(
            removed.is_err(),
            "{key} under compliance retention was deleted"
        );
    }

    // The trail as the bucket holds it verifies against the witness stream, read straight
    // from the bucket by a user allowed to list and read it and nothing else: the store
    // refuses that user a write and a delete.
    store.grant_read_only(BUCKET).await?;
    let reader = CredentialFiles::reader(&store)?;
    let reader_client = store.reader_client();
    let some_key = segments.keys().next().expect("segments");
    let overwrite = reader_client
        .put_object()
        .bucket(BUCKET)
        .key(some_key)
        .body(b"forged\n".to_vec().into())
        .send()
        .await;
    assert_access_denied(
        overwrite.map(|_| ()),
        &format!("the reader could write {some_key}"),
    );
    let new_object = reader_client
        .put_object()
        .bucket(BUCKET)
        .key(format!("{PREFIX}forged.jsonl"))
        .body(b"forged\n".to_vec().into())
        .send()
        .await;
    assert_access_denied(new_object.map(|_| ()), "the reader could add an object");
    let hide = reader_client
        .delete_object()
        .bucket(BUCKET)
        .key(some_key)
        .send()
        .await;
    assert_access_denied(
        hide.map(|_| ()),
        &format!("the reader could delete {some_key}"),
    );
    assert_eq!(store.keys(BUCKET, PREFIX).await?.len(), segments.len());
    let verify = || verify_archive(&server, &store, &reader, &key, &[]);
    let output = verify().output().await?;
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "verify: {report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("complete=1"), "{report}");

    // Every segment ends at a witnessed head, so each object checks on its own: from the
    // head before its first line to the head that names it.
    let objects: Vec<&String> = segments.keys().collect();
    for (status, printed) in verify_each_object(&server, &store, &reader, &key, &objects).await? {
        assert_eq!(status, Some(0), "{printed}");
        assert!(printed.contains("complete=1 "), "{printed}");
    }

    // A segment hidden by a delete marker (what a plain delete does under Object Lock: the
    // locked version stays, listings no longer show it) is found and located.
    let hidden = segments.keys().nth(1).expect("four segments");
    client
        .delete_object()
        .bucket(BUCKET)
        .key(hidden)
        .send()
        .await?;
    let output = verify().output().await?;
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "verify: {report}");
    assert!(
        report.contains("finding=missing positions=301-600"),
        "the hidden segment's lines are not reported missing: {report}"
    );
    drop(logger.terminate());
    Ok(())
}

/// Runs an incremental `verify --archive --since <since> --unwitnessed-ok --report-file`;
/// returns the exit status, the printed report and the report file's object (printed as
/// written, for the test's log).
async fn verify_since(
    verify: tokio::process::Command,
    report_file: &Path,
) -> anyhow::Result<(Option<i32>, String, serde_json::Value)> {
    let mut verify = verify;
    let output = verify.output().await?;
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let text = std::fs::read_to_string(report_file)?;
    anyhow::ensure!(text.len() <= 4096, "the report has {} bytes", text.len());
    println!("report file: {text}");
    let report = serde_json::from_str(&text)
        .map_err(|err| anyhow::anyhow!("the report file is not JSON ({err}): {text}"))?;
    Ok((output.status.code(), printed, report))
}

#[tokio::test]
async fn an_incremental_verify_reads_what_was_stored_since_and_the_listing_finds_a_deleted_segment()
-> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "archiver", Duration::from_secs(30)).await?;
    js.create_stream(stream::Config {
        name: WITNESS.into(),
        subjects: vec!["audit-integrity.>".into()],
        ..Default::default()
    })
    .await?;
    // Without Object Lock, so that a segment can really be deleted.
    let store = ObjectStore::start().await?;
    store.create_bucket(BUCKET).await?;
    let credentials = CredentialFiles::new(&store)?;
    let key = KeyPair::new_account();
    let dir = tempfile::tempdir()?;
    let seed_file = dir.path().join("seed.nk");
    std::fs::write(&seed_file, key.seed()?)?;
    let report_file = dir.path().join("report.json");

    let archiver = start_archiver(
        &server,
        "archiver",
        &archive_options(
            &store,
            &credentials,
            &[
                "--archive-segment-lines",
                "100",
                "--archive-segment-age",
                "2s",
                "--integrity",
                "--integrity-key-file",
                &path_arg(&seed_file),
                "--integrity-pod",
                "archiver-0",
                "--integrity-checkpoint-interval",
                "1s",
            ],
        ),
    )?;
    archiver.wait_ready(true, Duration::from_secs(30)).await?;
    publish_events(&js, "first", 300).await?;
    wait_until_drained(&js, "archiver").await?;
    let first: Vec<String> = store.keys(BUCKET, PREFIX).await?;
    anyhow::ensure!(first.len() >= 3, "{first:?}");

    // `since` on a whole second after the first batch was stored, and the second batch
    // stored after it: stores list their objects' times in whole seconds.
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
    let since_at = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs() + 1);
    tokio::time::sleep(since_at.duration_since(SystemTime::now())? + Duration::from_millis(100))
        .await;
    let since = {
        let at = time::OffsetDateTime::from(since_at);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        )
    };
    publish_events(&js, "second", 300).await?;
    wait_until_drained(&js, "archiver").await?;
    let all = store.keys(BUCKET, PREFIX).await?;
    let new = all.len() - first.len();
    anyhow::ensure!(new >= 3, "{all:?}");

    let incremental = || {
        verify_archive(
            &server,
            &store,
            &credentials,
            &key,
            &[
                "--since",
                &since,
                "--unwitnessed-ok",
                "--report-file",
                &path_arg(&report_file),
            ],
        )
    };
    // While the archiver runs, the newest lines may wait for their head: not a failure.
    let (status, printed, report) = verify_since(incremental(), &report_file).await?;
    assert_eq!(status, Some(0), "{printed}");
    assert!(
        ["complete", "unwitnessed"].contains(&report["verdict"].as_str().unwrap_or_default()),
        "{report}"
    );
    // The new segments and the one before them.
    assert_eq!(report["segments"], new + 1, "{report}");
    assert_eq!(report["since"], since.as_str(), "{report}");
    wait_stopped(archiver).await?;

    let (status, printed, report) = verify_since(incremental(), &report_file).await?;
    assert_eq!(status, Some(0), "{printed}");
    assert_eq!(report["verdict"], "complete", "{report}");
    assert_eq!(
        (&report["chains"], &report["complete"], &report["problems"]),
        (&1.into(), &1.into(), &0.into()),
        "{report}"
    );
    assert_eq!(report["missingSegments"], 0, "{report}");
    assert!(report["verifiedThrough"].as_str().is_some(), "{report}");

    let mut full = verify_archive(&server, &store, &credentials, &key, &[]);
    let output = full.output().await?;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{printed}");
    assert!(printed.contains("complete=1"), "{printed}");

    // A middle segment of the first batch deleted: outside the window, yet a gap in the
    // run's numbers.
    store
        .client()
        .delete_object()
        .bucket(BUCKET)
        .key(&first[1])
        .send()
        .await?;
    let (status, printed, report) = verify_since(incremental(), &report_file).await?;
    assert_eq!(status, Some(1), "{printed}");
    let finding = format!("finding=missing_segments numbers=2 after={}", first[0]);
    assert!(printed.contains(&finding), "{printed}");
    assert_eq!(report["verdict"], "problems", "{report}");
    assert_eq!(report["missingSegments"], 1, "{report}");
    assert_eq!(report["segments"], new + 1, "{report}");
    let findings = report["findings"].as_array().expect("findings");
    assert!(
        findings.len() == 1 && findings[0].as_str().is_some_and(|f| f.ends_with(&finding)),
        "{report}"
    );

    // Accepted after an investigation, exactly as reported: the check passes again, and
    // still says what it accepted.
    let accepted = findings[0].as_str().unwrap_or_default().to_owned();
    let mut accepting = incremental();
    accepting.args(["--accept-finding", &accepted]);
    let (status, printed, report) = verify_since(accepting, &report_file).await?;
    assert_eq!(status, Some(0), "{printed}");
    assert!(
        printed.contains(&format!("{accepted} accepted=true")),
        "{printed}"
    );
    assert!(printed.contains(" accepted=1"), "{printed}");
    assert_eq!(report["verdict"], "complete", "{report}");
    assert_eq!(report["accepted"], 1, "{report}");
    assert_eq!(report["missingSegments"], 0, "{report}");

    // One object checked on its own: intact, it is complete; cut by its last line and put
    // back in place, the check of it alone finds the cut.
    let objects = segments(&store).await?;
    let (cut_key, cut_lines) = objects.iter().nth(2).expect("segments");
    let intact: Vec<&String> = objects.keys().take(2).collect();
    for (status, printed) in
        verify_each_object(&server, &store, &credentials, &key, &intact).await?
    {
        assert_eq!(status, Some(0), "{printed}");
        assert!(printed.contains("complete=1 "), "{printed}");
    }
    let kept = cut_lines[..cut_lines.len() - 1].join("\n") + "\n";
    let body = if cut_key.ends_with(".gz") {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gzip, kept.as_bytes())?;
        gzip.finish()?
    } else {
        kept.into_bytes()
    };
    store
        .client()
        .put_object()
        .bucket(BUCKET)
        .key(cut_key)
        .body(body.into())
        .send()
        .await?;
    let outcome = verify_each_object(&server, &store, &credentials, &key, &[cut_key]).await?;
    let (status, printed) = &outcome[0];
    assert_eq!(*status, Some(1), "{printed}");
    assert!(
        printed.contains("finding=truncated positions="),
        "{printed}"
    );
    Ok(())
}

#[tokio::test]
async fn a_store_outage_holds_the_events_unacked_and_loses_nothing() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "archiver", Duration::from_secs(2)).await?;
    let mut store = ObjectStore::start().await?;
    store.create_bucket_with_object_lock(BUCKET).await?;
    let credentials = CredentialFiles::new(&store)?;
    let options = archive_options(
        &store,
        &credentials,
        &[
            "--archive-segment-lines",
            "100",
            "--archive-segment-age",
            "3s",
        ],
    );
    let archiver = start_archiver(&server, "archiver", &options)?;
    archiver.wait_ready(true, Duration::from_secs(30)).await?;

    let mut published = publish_events(&js, "before", 200).await?;
    wait_until_drained(&js, "archiver").await?;
    assert_eq!(segments(&store).await?.len(), 2);

    store.stop().await;
    published.extend(publish_events(&js, "during", 300).await?);
    archiver.wait_ready(false, Duration::from_secs(30)).await?;
    // Longer than the ack wait several times over: held, kept alive, never acked.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let info = js
        .get_stream(STREAM)
        .await?
        .consumer_info("archiver")
        .await?;
    assert!(
        info.num_ack_pending > 0,
        "events were acked while the store was down: {info:?}"
    );
    assert!(
        archiver
            .metric("audit_consumer_archive_upload_failures_total")
            .await?
            > 0.0
    );

    store.start_again().await?;
    archiver.wait_ready(true, Duration::from_secs(60)).await?;
    wait_until_drained(&js, "archiver").await?;
    assert_eq!(
        archiver.metric("audit_consumer_redeliveries_total").await?,
        0.0,
        "held events were redelivered during the outage"
    );
    wait_stopped(archiver).await?;

    let segments = segments(&store).await?;
    let lines = all_lines(&segments);
    assert_every_event_once_at_least(&lines, &published)?;
    assert_eq!(
        lines.len(),
        500,
        "no event stored twice: {:?}",
        segments.keys()
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_stopped_during_an_outage_hands_its_events_to_the_next() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    // An ack wait of an hour: the next pod gets the events only if the stopped one handed
    // them back.
    create_stream_and_consumer(&js, "archiver", Duration::from_secs(3600)).await?;
    let mut store = ObjectStore::start().await?;
    store.create_bucket_with_object_lock(BUCKET).await?;
    let credentials = CredentialFiles::new(&store)?;
    let options = archive_options(
        &store,
        &credentials,
        &[
            "--archive-segment-age",
            "1h",
            "--archive-shutdown-timeout",
            "2s",
        ],
    );
    let first = start_archiver(&server, "archiver", &options)?;
    first.wait_ready(true, Duration::from_secs(30)).await?;
    let published = publish_events(&js, "held", 120).await?;
    audit_tests::wait::until(
        "the pod to hold every event",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let held = first.metric("audit_consumer_archive_held_events").await?;
            Ok((held == 120.0).then_some(()))
        },
    )
    .await?;
    store.stop().await;
    // Stopped with the segment unstored: after the shutdown timeout the events are naked,
    // not left to the hour's ack wait.
    wait_stopped(first).await?;

    store.start_again().await?;
    let second = start_archiver(&server, "archiver", &options)?;
    second.wait_ready(true, Duration::from_secs(30)).await?;
    audit_tests::wait::until(
        "the next pod to hold the handed-back events",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let held = second.metric("audit_consumer_archive_held_events").await?;
            Ok((held == 120.0).then_some(()))
        },
    )
    .await?;
    // Its shutdown stores the last segment.
    wait_stopped(second).await?;
    let lines = all_lines(&segments(&store).await?);
    assert_every_event_once_at_least(&lines, &published)?;
    assert_eq!(lines.len(), 120);
    Ok(())
}

#[tokio::test]
async fn a_bucket_without_object_lock_is_refused_with_what_to_do() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "archiver", Duration::from_secs(30)).await?;
    let store = ObjectStore::start().await?;
    store.create_bucket(BUCKET).await?;
    let credentials = CredentialFiles::new(&store)?;
    let options = archive_options(
        &store,
        &credentials,
        &[
            "--archive-lock-mode",
            "compliance",
            "--archive-retention",
            "365d",
        ],
    );
    let mut archiver = start_archiver(&server, "archiver", &options)?;
    let status = archiver.wait_exit(Duration::from_secs(30)).await?;
    let stderr = archiver.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has no Object Lock"), "{stderr}");
    assert!(
        !stderr.contains(store.secret_key()),
        "the secret key reached the log"
    );
    Ok(())
}
