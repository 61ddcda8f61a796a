//! audit-consumer --integrity against a real nats-server: two pods write hash-chained lines
//! and publish signed heads to an append-only witness stream; `audit-consumer verify` finds
//! a clean log complete, and locates a deleted line, an edited character, two swapped lines,
//! a cut tail and a dropped pod; a head signed by another key is rejected; a killed pod's
//! lines after its last head are unwitnessed, not a problem, and its replacement starts a
//! chain of its own.

mod consumer_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use audit_tests::cargo_bin;
use audit_tests::nats::NatsServer;
use consumer_support::*;
use nkeys::KeyPair;
use tokio::io::AsyncWriteExt;

const WITNESS: &str = "AUDIT_INTEGRITY";

/// The witness stream as the operator creates it: nothing in it can be deleted or purged.
async fn create_witness_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    js.create_stream(stream::Config {
        name: WITNESS.into(),
        subjects: vec!["audit-integrity.>".into()],
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// A signing key and the file holding its seed, as a mounted Secret would.
struct SigningKey {
    key: KeyPair,
    seed_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl SigningKey {
    fn new() -> anyhow::Result<Self> {
        let key = KeyPair::new_account();
        let dir = tempfile::tempdir()?;
        let seed_file = dir.path().join("seed.nk");
        std::fs::write(&seed_file, format!("{}\n", key.seed()?))?;
        Ok(Self {
            key,
            seed_file,
            _dir: dir,
        })
    }
}

/// A head every 50 lines or `interval`.
fn integrity_options<'a>(key: &'a SigningKey, pod: &'a str, interval: &'a str) -> Vec<&'a str> {
    vec![
        "--integrity",
        "--integrity-key-file",
        key.seed_file.to_str().expect("a UTF-8 temp path"),
        "--integrity-pod",
        pod,
        "--integrity-checkpoint-lines",
        "50",
        "--integrity-checkpoint-interval",
        interval,
        "--batch",
        "10",
    ]
}

/// Every line of a consumer that ran until drained and was then stopped with SIGTERM.
async fn lines_until_stopped(mut consumer: ConsumerProcess) -> anyhow::Result<Vec<String>> {
    consumer.terminate()?;
    let status = consumer.wait_exit(Duration::from_secs(30)).await?;
    anyhow::ensure!(status.success(), "exit {status}: {}", consumer.stderr());
    let mut lines = consumer.lines_so_far();
    lines.extend(consumer.remaining_lines(Duration::from_secs(5)).await?);
    Ok(lines)
}

/// `audit-consumer verify` on `files` (standard input `stdin` when none): exit code, report.
async fn verify(
    server: &NatsServer,
    public_keys: &str,
    files: &[&Path],
    stdin: Option<&str>,
) -> anyhow::Result<(i32, String)> {
    let mut child = tokio::process::Command::new(cargo_bin("audit-consumer"))
        .arg("verify")
        .args(["--nats-url", &server.url(), "--public-key", public_keys])
        .args(files)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??;
    let report = String::from_utf8(output.stdout)?;
    let code = output.status.code().unwrap_or(-1);
    anyhow::ensure!(
        code != 2,
        "verify could not check: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((code, report))
}

fn chain_of(line: &str) -> String {
    parse_json_line(line)["chain"]
        .as_str()
        .unwrap_or_else(|| panic!("no chain in {line}"))
        .to_owned()
}

fn seq_of(line: &str) -> u64 {
    parse_json_line(line)["seq"].as_u64().unwrap()
}

/// The index in `lines` of chain `chain`'s position `seq`.
fn index_of(lines: &[String], chain: &str, seq: u64) -> usize {
    lines
        .iter()
        .position(|line| chain_of(line) == chain && seq_of(line) == seq)
        .unwrap_or_else(|| panic!("no position {seq} of {chain}"))
}

/// Runs `verify` on `lines` written to a file; returns the exit code and report.
async fn verify_lines(
    server: &NatsServer,
    key: &SigningKey,
    lines: &[String],
) -> anyhow::Result<(i32, String, PathBuf, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("audit.log");
    std::fs::write(&path, lines.join("\n") + "\n")?;
    let (code, report) = verify(server, &key.key.public_key(), &[&path], None).await?;
    Ok((code, report, path, dir))
}

#[tokio::test]
async fn a_clean_log_verifies_and_each_tampering_is_located() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "logger", Duration::from_secs(30)).await?;
    create_witness_stream(&js).await?;
    let key = SigningKey::new()?;

    let pod_a = ConsumerProcess::start(
        &server.url(),
        "logger",
        &integrity_options(&key, "pod-a", "1s"),
    )?;
    let pod_b = ConsumerProcess::start(
        &server.url(),
        "logger",
        &integrity_options(&key, "pod-b", "1s"),
    )?;
    pod_a.wait_ready(true, Duration::from_secs(30)).await?;
    pod_b.wait_ready(true, Duration::from_secs(30)).await?;
    publish_events(&js, "evt", 600).await?;
    wait_until_drained(&js, "logger").await?;
    let a = lines_until_stopped(pod_a).await?;
    let b = lines_until_stopped(pod_b).await?;
    assert_eq!(a.len() + b.len(), 600, "every event once");
    assert!(
        a.len() >= 100 && b.len() >= 100,
        "both pods wrote: {} and {}",
        a.len(),
        b.len()
    );
    let (chain_a, chain_b) = (chain_of(&a[0]), chain_of(&b[0]));
    assert!(chain_a.starts_with("logger/pod-a/"), "{chain_a}");
    assert_eq!(parse_json_line(&a[0])["prev"], "start");
    // The pods' output interleaved, as a log store returns it.
    let mut log = Vec::with_capacity(600);
    let (mut rest_a, mut rest_b) = (a.iter(), b.iter());
    loop {
        match (rest_a.next(), rest_b.next()) {
            (None, None) => break,
            (x, y) => log.extend(x.into_iter().chain(y).cloned()),
        }
    }
    let last_a = a.len() as u64;

    let (code, report, _, _dir) = verify_lines(&server, &key, &log).await?;
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains(&format!(
            "chain={chain_a} status=complete lines={last_a} witnessed={last_a}"
        )),
        "{report}"
    );
    assert!(report.contains("summary chains=2 complete=2"), "{report}");

    // One line deleted.
    let mut deleted = log.clone();
    deleted.remove(index_of(&log, &chain_a, 40));
    let (code, report, _, _dir) = verify_lines(&server, &key, &deleted).await?;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!("chain={chain_a} finding=missing positions=40\n")),
        "{report}"
    );
    assert!(report.contains(&format!("chain={chain_b} status=complete")));

    // One character edited.
    let mut edited = log.clone();
    let at = index_of(&log, &chain_a, 60);
    edited[at] = edited[at].replacen("\"evt-", "\"evu-", 1);
    assert_ne!(edited[at], log[at]);
    let (code, report, path, _dir) = verify_lines(&server, &key, &edited).await?;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!(
            "chain={chain_a} finding=altered position=60 at={}:{}\n",
            path.display(),
            at + 1
        )),
        "{report}"
    );

    // Two lines swapped.
    let mut swapped = log.clone();
    swapped.swap(index_of(&log, &chain_a, 70), index_of(&log, &chain_a, 71));
    let (code, report, _, _dir) = verify_lines(&server, &key, &swapped).await?;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!(
            "chain={chain_a} finding=reordered position=70 after=71"
        )),
        "{report}"
    );

    // The tail cut: chain A's last ten lines gone.
    let cut = last_a - 10;
    let truncated: Vec<String> = log
        .iter()
        .filter(|line| chain_of(line) != chain_a || seq_of(line) <= cut)
        .cloned()
        .collect();
    let (code, report, _, _dir) = verify_lines(&server, &key, &truncated).await?;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!(
            "chain={chain_a} finding=truncated positions={}-{last_a}\n",
            cut + 1
        )),
        "{report}"
    );

    // A whole pod's output dropped.
    let (code, report, _, _dir) = verify_lines(&server, &key, &a).await?;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!(
            "chain={chain_b} finding=absent positions=1-{}\n",
            b.len()
        )),
        "{report}"
    );
    assert!(report.contains(&format!("chain={chain_a} status=complete")));

    // Heads on the way, not only the final ones (a pod faster than its publishes coalesces
    // several into the newest), and the witness stream keeps them all.
    let mut witness = js.get_stream(WITNESS).await?;
    let heads = witness.info().await?.state.messages;
    assert!(
        heads > 2,
        "{heads} heads for {} and {} lines",
        a.len(),
        b.len()
    );
    assert!(
        witness.purge().await.is_err(),
        "the witness stream denies purge"
    );
    assert!(
        witness.delete_message(1).await.is_err(),
        "the witness stream denies delete"
    );
    Ok(())
}

#[tokio::test]
async fn a_head_signed_with_another_key_is_rejected() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "texts", Duration::from_secs(30)).await?;
    create_witness_stream(&js).await?;
    let key = SigningKey::new()?;
    let mut options = integrity_options(&key, "pod-t", "1s");
    options.extend(["--format", "text"]);
    let pod = ConsumerProcess::start(&server.url(), "texts", &options)?;
    publish_events(&js, "txt", 120).await?;
    wait_until_drained(&js, "texts").await?;
    let lines = lines_until_stopped(pod).await?;
    assert_eq!(lines.len(), 120);
    let chain = lines[0]
        .rsplit_once(" chain=")
        .and_then(|(_, rest)| rest.split(' ').next())
        .expect("a chained text line")
        .to_owned();
    let log = lines.join("\n") + "\n";

    // Clean, read from standard input.
    let public = key.key.public_key();
    let (code, report) = verify(&server, &public, &[], Some(&log)).await?;
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains(&format!(
            "chain={chain} status=complete lines=120 witnessed=120"
        )),
        "{report}"
    );

    // The tail cut and covered with a head that vouches for the cut log, signed by a key
    // that is not the pods': the head is rejected and the cut still found.
    let forger = KeyPair::new_account();
    let kept = &lines[..100];
    let last_kept = kept.last().unwrap();
    let forged = serde_json::json!({
        "chain": chain, "seq": 100,
        "hash": blake3_hex(last_kept), "time": "2026-11-28T11:00:00.000000000Z",
        "signer": public,
    })
    .to_string();
    let signature = base64_url(&forger.sign(forged.as_bytes())?);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Audit-Signature", signature.as_str());
    js.publish_with_headers("audit-integrity.AUDIT.texts", headers, forged.into())
        .await?
        .await?;
    let (code, report) = verify(&server, &public, &[], Some(&(kept.join("\n") + "\n"))).await?;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(
            "finding=rejected reason=\"the signature does not verify with any trusted public key\""
        ),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "chain={chain} finding=truncated positions=101-120\n"
        )),
        "{report}"
    );

    // Checked with the forger's key alone, every real head is rejected.
    let (code, report) = verify(&server, &forger.public_key(), &[], Some(&log)).await?;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!("chain={chain} status=unwitnessed")),
        "{report}"
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_pod_leaves_an_unwitnessed_tail_and_its_replacement_a_new_chain()
-> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "restarts", Duration::from_secs(30)).await?;
    create_witness_stream(&js).await?;
    let key = SigningKey::new()?;
    // Heads by count only, every 100 lines, so that the last lines stay unwitnessed: the one
    // head due in 190 lines comes at the first write reaching 100 (a write may carry several
    // batches), and covers at most the 170 lines written before the late ones; the next
    // would need 200.
    let mut options = integrity_options(&key, "pod-r", "1h");
    let lines_at = options
        .iter()
        .position(|option| *option == "--integrity-checkpoint-lines")
        .expect("set by integrity_options")
        + 1;
    options[lines_at] = "100";

    publish_events(&js, "first", 170).await?;
    let mut killed = ConsumerProcess::start(&server.url(), "restarts", &options)?;
    let mut lines = killed.read_lines(170, Duration::from_secs(60)).await?;
    wait_until_drained(&js, "restarts").await?;
    // The head due at 100 lines is published beside the worker: stored before going on.
    let mut witness = js.get_stream(WITNESS).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while witness.info().await?.state.messages == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no head within 30 s: {}",
            killed.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 20 more: no head will cover them before the kill.
    publish_events(&js, "late", 20).await?;
    lines.extend(killed.read_lines(20, Duration::from_secs(60)).await?);
    wait_until_drained(&js, "restarts").await?;
    killed.kill()?;
    killed.wait_exit(Duration::from_secs(10)).await?;
    lines.extend(killed.remaining_lines(Duration::from_secs(5)).await?);
    assert_eq!(lines.len(), 190);

    // The same pod name, restarted.
    let replacement = ConsumerProcess::start(&server.url(), "restarts", &options)?;
    publish_events(&js, "second", 30).await?;
    wait_until_drained(&js, "restarts").await?;
    let second = lines_until_stopped(replacement).await?;
    assert_eq!(second.len(), 30);
    let (first_chain, second_chain) = (chain_of(&lines[0]), chain_of(&second[0]));
    assert_ne!(first_chain, second_chain, "a restart starts a new chain");
    lines.extend(second);

    let (code, report, _, _dir) = verify_lines(&server, &key, &lines).await?;
    assert_eq!(code, 3, "unwitnessed lines, and no problem: {report}");
    assert!(report.contains("problems=0 rejected_heads=0"), "{report}");
    let summary = report
        .lines()
        .find(|line| line.starts_with(&format!("chain={first_chain} status=unwitnessed")))
        .unwrap_or_else(|| panic!("{report}"));
    let witnessed: u64 = summary.rsplit_once("witnessed=").unwrap().1.parse()?;
    assert!((100..=170).contains(&witnessed), "{summary}");
    assert!(
        report.contains(&format!(
            "chain={first_chain} finding=unwitnessed positions={}-190\n",
            witnessed + 1
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "chain={second_chain} status=complete lines=30 witnessed=30"
        )),
        "{report}"
    );
    Ok(())
}

/// The hash of a line as docs/integrity.md defines it (BLAKE3 of the line without its newline),
/// in the heads' lowercase hex.
fn blake3_hex(line: &str) -> String {
    blake3::hash(line.as_bytes()).to_hex().to_string()
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
