//! `audit-consumer verify`: reads log lines from files or standard input and the chain heads
//! from the witness stream, checks the heads' signatures, and prints one line per chain and
//! one per finding, in the text format's `key=value` style:
//!
//! ```text
//! chain=<id> status=complete lines=500 witnessed=500
//! chain=<id> status=problems lines=498 witnessed=500
//! chain=<id> finding=missing positions=17-18
//! chain=<id> finding=altered position=42 at=pod-a.log:45
//! head stream_seq=12 subject=<subject> finding=rejected reason="..."
//! summary chains=2 complete=1 unwitnessed=0 problems=1 rejected_heads=1
//! ```
//!
//! Exit status: 0 when every chain is complete, 1 when anything is missing, altered,
//! reordered or truncated or a head is rejected, 3 when there is no problem but some lines are
//! not witnessed yet, 2 when the check could not be made.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::DeliverPolicy;
use clap::Parser;
use nkeys::KeyPair;

use super::head::{self, StoredHead};
use super::verify::{ChainReport, Finding, Location, Status, Verifier};
use crate::archive::store::ArchiveReader;
use crate::config::{NatsArgs, StoreArgs};
use crate::error::{Error, Result};

/// How long the witness stream may take to deliver its next head.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "audit-consumer verify",
    version,
    about = "Checks audit-consumer output written with --integrity against the chain heads \
             witnessed on NATS: per chain, complete, or which positions are missing, altered, \
             reordered or truncated.",
    after_help = "Exit status: 0 every chain complete; 1 a problem found (or a head rejected); \
                  3 no problem, but lines after the last witnessed head; 2 the check could \
                  not be made."
)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Public key(s) of the key that signs the chain heads (NKey public keys, `A...`, `U...`
    /// etc.), comma-separated; a head signed by any other key is rejected.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_INTEGRITY_PUBLIC_KEY",
        value_delimiter = ',',
        required = true
    )]
    pub public_key: Vec<String>,

    /// The witness stream the consumers publish their chain heads to.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_INTEGRITY_STREAM",
        default_value = "AUDIT_INTEGRITY"
    )]
    pub integrity_stream: String,

    /// Only the heads published on this subject (wildcards allowed), e.g. one AuditConsumer's
    /// `audit-integrity.<stream>.<consumer>`; a chain with heads but no line is reported
    /// absent, so this is how the check is limited to the logs at hand.
    #[arg(long)]
    pub integrity_subject: Option<String>,

    /// Only the heads published at or after this time (RFC 3339, e.g. 2026-11-28T00:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub since: Option<SystemTime>,

    /// Only the archive segments opened before this time (RFC 3339; with --archive).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak, requires = "archive")]
    pub until: Option<SystemTime>,

    /// Check the segments of an archive instead of files: `s3://<bucket>/<prefix>`, where the
    /// prefix is the AuditConsumer's `archive.prefix`, optionally followed by
    /// `<stream>/<consumer>/` or a date (`<yyyy>/<mm>/`). With --since and --until, only the
    /// segments opened in that range. Read-only credentials suffice.
    #[arg(long, value_name = "S3_URL", conflicts_with = "files")]
    pub archive: Option<String>,

    #[command(flatten)]
    pub store: StoreArgs,

    /// Log files to check, in any order; none, or `-`, reads standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Complete,
    Unwitnessed,
    Problems,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Complete => 0,
            Verdict::Problems => 1,
            Verdict::Unwitnessed => 3,
        }
    }
}

pub async fn run(args: VerifyArgs, out: &mut impl Write) -> Result<Verdict> {
    let trusted = args
        .public_key
        .iter()
        .map(|key| {
            KeyPair::from_public_key(key.trim()).map_err(|_| {
                Error::Config(format!("--public-key {key:?} is not an NKey public key"))
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let mut verifier = Verifier::default();
    let sources = match &args.archive {
        Some(location) => read_archive(location, &args, &mut verifier).await?,
        None => read_logs(&args.files, &mut verifier)?,
    };
    let mut rejected = Vec::new();
    let heads = read_heads(&args).await?;
    for stored in &heads {
        match head::open(&stored.payload, stored.signature.as_deref(), &trusted) {
            Ok(checkpoint) => verifier.add_checkpoint(&checkpoint),
            Err(reason) => rejected.push((stored, reason)),
        }
    }

    let reports = verifier.reports();
    let write =
        |out: &mut dyn Write, text: String| writeln!(out, "{text}").map_err(Error::OutputClosed);
    for report in &reports {
        write(out, summary_line(report))?;
        for finding in &report.findings {
            write(out, finding_line(&report.chain, finding, &sources))?;
        }
    }
    for (stored, reason) in &rejected {
        write(
            out,
            format!(
                "head stream_seq={} subject={} finding=rejected reason={}",
                stored.stream_sequence,
                stored.subject,
                quoted(&reason.to_string())
            ),
        )?;
    }
    let count = |status| {
        reports
            .iter()
            .filter(|report| report.status() == status)
            .count()
    };
    let (complete, unwitnessed, problems) = (
        count(Status::Complete),
        count(Status::Unwitnessed),
        count(Status::Problems),
    );
    write(
        out,
        format!(
            "summary chains={} complete={complete} unwitnessed={unwitnessed} \
             problems={problems} rejected_heads={}",
            reports.len(),
            rejected.len()
        ),
    )?;
    Ok(if problems > 0 || !rejected.is_empty() {
        Verdict::Problems
    } else if unwitnessed > 0 {
        Verdict::Unwitnessed
    } else {
        Verdict::Complete
    })
}

/// Feeds every line of `files` (standard input for none or `-`) to the verifier; returns the
/// sources' names, which [`Location::source`] indexes.
fn read_logs(files: &[PathBuf], verifier: &mut Verifier) -> Result<Vec<String>> {
    let stdin = [PathBuf::from("-")];
    let files = if files.is_empty() { &stdin[..] } else { files };
    let mut names = Vec::with_capacity(files.len());
    for (source, path) in files.iter().enumerate() {
        let read_error = |source| Error::ReadLog {
            path: path.clone(),
            source,
        };
        let reader: Box<dyn Read> = if path.as_os_str() == "-" {
            names.push("stdin".to_owned());
            Box::new(std::io::stdin().lock())
        } else {
            names.push(path.display().to_string());
            Box::new(std::fs::File::open(path).map_err(read_error)?)
        };
        let reader = BufReader::with_capacity(1 << 20, reader);
        add_lines(reader, source, verifier).map_err(read_error)?;
    }
    Ok(names)
}

/// Feeds every segment under an `s3://bucket/prefix` location to the verifier, in key order
/// (which is time order within a day); returns the segments' URLs as the sources' names.
async fn read_archive(
    location: &str,
    args: &VerifyArgs,
    verifier: &mut Verifier,
) -> Result<Vec<String>> {
    let (bucket, prefix) = parse_archive_location(location)?;
    let reader = ArchiveReader::connect(&args.store, bucket).await?;
    let since = args.since.map(opened_at);
    let until = args.until.map(opened_at);
    let keys: Vec<String> = reader
        .keys(prefix)
        .await?
        .into_iter()
        .filter(|key| is_segment_in(key, since.as_deref(), until.as_deref()))
        .collect();
    if keys.is_empty() {
        tracing::warn!(location, "no archive segment found under this location");
    }
    let mut names = Vec::with_capacity(keys.len());
    for (source, key) in keys.iter().enumerate() {
        let url = format!("s3://{bucket}/{key}");
        let body = reader.read(key).await?;
        let read_error = |err| Error::ReadLog {
            path: PathBuf::from(&url),
            source: err,
        };
        if key.ends_with(".gz") {
            let gunzip = BufReader::new(flate2::read::MultiGzDecoder::new(&body[..]));
            add_lines(gunzip, source, verifier).map_err(read_error)?;
        } else {
            add_lines(&body[..], source, verifier).map_err(read_error)?;
        }
        names.push(url);
    }
    Ok(names)
}

/// `s3://bucket/prefix` into the bucket and the prefix.
fn parse_archive_location(location: &str) -> Result<(&str, &str)> {
    location
        .strip_prefix("s3://")
        .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
        .filter(|(bucket, _)| !bucket.is_empty())
        .ok_or_else(|| {
            Error::Config(format!(
                "--archive {location:?} is not an s3://<bucket>/<prefix> location"
            ))
        })
}

/// A time as segment names start with it (`20261204T023015Z`), which sorts as text.
fn opened_at(at: SystemTime) -> String {
    let nanos = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i128);
    crate::archive::segment::basic_timestamp(nanos, false)
}

/// Whether a key names a segment opened in `[since, until)`.
fn is_segment_in(key: &str, since: Option<&str>, until: Option<&str>) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    let is_segment = [".jsonl", ".jsonl.gz", ".log", ".log.gz"]
        .iter()
        .any(|extension| name.ends_with(extension));
    let opened = name.split('_').next().unwrap_or_default();
    is_segment
        && since.is_none_or(|since| opened >= since)
        && until.is_none_or(|until| opened < until)
}

/// Feeds every line of `reader` to the verifier, numbered from 1 within `source`.
fn add_lines(
    mut reader: impl BufRead,
    source: usize,
    verifier: &mut Verifier,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        // The newline is not hashed; a carriage return before it was added on the way
        // (a chained line never contains one unescaped).
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        verifier.add_line(
            text,
            Location {
                source,
                line: number,
            },
        );
    }
}

async fn read_heads(args: &VerifyArgs) -> Result<Vec<StoredHead>> {
    let failed = |reason: String| Error::Witness {
        stream: args.integrity_stream.clone(),
        reason,
    };
    let client = crate::connect::connect_once(&args.nats).await?;
    let js = crate::connect::jetstream(client.clone(), &args.nats);
    let stream = js
        .get_stream(&args.integrity_stream)
        .await
        .map_err(|err| failed(err.to_string()))?;
    let deliver_policy = match args.since {
        Some(since) => DeliverPolicy::ByStartTime {
            start_time: since.into(),
        },
        None => DeliverPolicy::All,
    };
    let heads = head::read_stored(
        &stream,
        args.integrity_subject.as_deref(),
        deliver_policy,
        READ_TIMEOUT,
    )
    .await
    .map_err(failed)?;
    let _ = client.drain().await;
    Ok(heads)
}

fn summary_line(report: &ChainReport) -> String {
    format!(
        "chain={} status={} lines={} witnessed={}",
        report.chain,
        report.status(),
        report.lines,
        report.witnessed
    )
}

fn finding_line(chain: &str, finding: &Finding, sources: &[String]) -> String {
    let at =
        |location: &Location| quoted(&format!("{}:{}", sources[location.source], location.line));
    let range = |from: u64, to: u64| {
        if from == to {
            from.to_string()
        } else {
            format!("{from}-{to}")
        }
    };
    let what = match finding {
        Finding::Missing { from, to } => format!("missing positions={}", range(*from, *to)),
        Finding::Altered { seq, at: location } => {
            format!("altered position={seq} at={}", at(location))
        }
        Finding::Reordered {
            seq,
            after,
            at: location,
        } => format!("reordered position={seq} after={after} at={}", at(location)),
        Finding::Conflict { seq, at: location } => {
            format!("conflict position={seq} at={}", at(location))
        }
        Finding::Truncated { from, to } => format!("truncated positions={}", range(*from, *to)),
        Finding::Absent { to } => format!("absent positions={}", range(1, *to)),
        Finding::ConflictingHeads { seq } => format!("conflicting_heads position={seq}"),
        Finding::Unwitnessed { from, to } => {
            format!("unwitnessed positions={}", range(*from, *to))
        }
        Finding::Duplicate { seq, at: location } => {
            format!("duplicate position={seq} at={}", at(location))
        }
    };
    format!("chain={chain} finding={what}")
}

/// A value bare when it is plain printable ASCII without quotes or spaces, else a JSON string.
fn quoted(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b'"' | b'=' | b'\\'))
    {
        value.to_owned()
    } else {
        serde_json::to_string(value).expect("a string always serializes")
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn an_archive_location_is_a_bucket_and_a_prefix() {
        assert_eq!(
            parse_archive_location("s3://trail/prod/AUDIT/").unwrap(),
            ("trail", "prod/AUDIT/")
        );
        assert_eq!(parse_archive_location("s3://trail").unwrap(), ("trail", ""));
        for wrong in ["trail/prod", "s3:///prod", "https://trail/prod"] {
            assert!(parse_archive_location(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn segments_are_chosen_by_their_opening_time() {
        let key = "p/AUDIT/c/2026/12/04/20261204T101500Z_pod-0_20261204T100000.000000001Z_000002_00000000000000000001-00000000000000000300.jsonl.gz";
        assert!(is_segment_in(key, None, None));
        assert!(is_segment_in(
            key,
            Some("20261204T101500Z"),
            Some("20261204T101501Z")
        ));
        assert!(!is_segment_in(key, Some("20261204T101501Z"), None));
        assert!(!is_segment_in(key, None, Some("20261204T101500Z")));
        assert!(!is_segment_in("p/AUDIT/c/notes.txt", None, None));
        assert_eq!(
            opened_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_379_300)),
            "20261204T101500Z"
        );
    }

    #[test]
    fn the_command_line_reads_keys_files_and_connection_options() {
        VerifyArgs::command().debug_assert();
        let args = VerifyArgs::try_parse_from([
            "verify",
            "--nats-url",
            "nats://a:4222",
            "--creds-file",
            "/s/auditor.creds",
            "--public-key",
            "AOLD,ANEW",
            "--since",
            "2026-11-28T00:00:00Z",
            "pod-a.log",
            "-",
        ])
        .unwrap();
        assert_eq!(args.public_key, ["AOLD", "ANEW"]);
        assert_eq!(args.integrity_stream, "AUDIT_INTEGRITY");
        assert_eq!(args.files, [PathBuf::from("pod-a.log"), PathBuf::from("-")]);
        assert!(args.since.is_some());
        assert!(VerifyArgs::try_parse_from(["verify", "--nats-url", "nats://a:4222"]).is_err());
    }

    #[test]
    fn findings_are_key_value_lines_with_their_location() {
        let sources = ["logs/pod a.log".to_owned()];
        let at = Location {
            source: 0,
            line: 61,
        };
        assert_eq!(
            finding_line("c/p/t", &Finding::Altered { seq: 60, at }, &sources),
            r#"chain=c/p/t finding=altered position=60 at="logs/pod a.log:61""#
        );
        assert_eq!(
            finding_line("c/p/t", &Finding::Missing { from: 4, to: 4 }, &sources),
            "chain=c/p/t finding=missing positions=4"
        );
        assert_eq!(
            finding_line("c/p/t", &Finding::Truncated { from: 8, to: 10 }, &sources),
            "chain=c/p/t finding=truncated positions=8-10"
        );
    }
}
