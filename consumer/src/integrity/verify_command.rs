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
//! run=<pod>_<start> finding=missing_segments numbers=3-4 after=<key>
//! summary chains=2 complete=1 unwitnessed=0 problems=1 rejected_heads=1 missing_segments=2
//! ```
//!
//! Exit status: 0 when every chain is complete, 1 when anything is missing, altered,
//! reordered or truncated or a head is rejected, 3 when there is no problem but some lines are
//! not witnessed yet (0 with `--unwitnessed-ok`), 2 when the check could not be made.
//!
//! With `--archive`, a check covers a window of store time, `[--since, --until)`: see
//! [`crate::archive::listing`] for what is read, and `docs/archive.md` for what an
//! incremental check cannot see. A location that is one segment's whole key checks that
//! object on its own, between the head before its first line and the head that ends it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::DeliverPolicy;
use clap::Parser;
use nkeys::KeyPair;

use super::head::{self, Rejected, StoredHead};
use super::report::{self, Report};
use super::verify::{ChainReport, Finding, Location, Status, Verifier};
use crate::archive::listing::{self, Gap, Listed, Run, Window};
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
    after_help = "Exit status: 0 every chain complete; 1 a problem found (a head rejected, \
                  a segment missing); 3 no problem, but lines after the last witnessed head \
                  (0 with --unwitnessed-ok); 2 the check could not be made."
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
    /// With --archive, an incremental check: the segments the store took at or after it,
    /// plus each of their runs' newest segment from before it; the previous check's
    /// `verifiedThrough`.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub since: Option<SystemTime>,

    /// With --archive: only the segments the store took, and the heads published, before this
    /// time (RFC 3339). Default: when the check starts, rounded up to the whole second (the
    /// check waits for it).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak, requires = "archive")]
    pub until: Option<SystemTime>,

    /// Check the segments of an archive instead of files: `s3://<bucket>/<prefix>`, where the
    /// prefix is the AuditConsumer's `archive.prefix`, optionally followed by
    /// `<stream>/<consumer>/`. Every run's segment numbers are checked for gaps over the
    /// whole listing. Read-only credentials (list and get) suffice.
    #[arg(long, value_name = "S3_URL", conflicts_with = "files")]
    pub archive: Option<String>,

    /// A problem accepted after an investigation, exactly as a check printed it (e.g.
    /// `run=<pod>_<start> finding=missing_segments numbers=3 after=<key>`); repeatable. It is
    /// printed again followed by `accepted=true` and no longer counts as a problem, so that
    /// a scheduled check passes again while everything else is still checked.
    #[arg(long = "accept-finding", value_name = "LINE")]
    pub accept_finding: Vec<String>,

    /// Exit 0, not 3, when nothing is wrong but the newest lines are not witnessed yet: what
    /// a scheduled check expects, as the next one reads them again with their heads.
    #[arg(long, env = "AUDIT_CONSUMER_VERIFY_UNWITNESSED_OK")]
    pub unwitnessed_ok: bool,

    /// Also write the outcome to this file as one JSON object of at most 4096 bytes (a
    /// container's termination message): the verdict, the window, the counts and the
    /// problem findings that fit.
    #[arg(long, value_name = "PATH", env = "AUDIT_CONSUMER_VERIFY_REPORT_FILE")]
    pub report_file: Option<PathBuf>,

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
    pub fn exit_code(self, unwitnessed_ok: bool) -> u8 {
        match self {
            Verdict::Complete => 0,
            Verdict::Problems => 1,
            Verdict::Unwitnessed if unwitnessed_ok => 0,
            Verdict::Unwitnessed => 3,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Complete => "complete",
            Verdict::Unwitnessed => "unwitnessed",
            Verdict::Problems => "problems",
        }
    }
}

/// Checks, prints the findings to `out`, and writes the report file if asked for, also
/// when the check could not be made.
pub async fn run(args: VerifyArgs, out: &mut impl Write) -> Result<Verdict> {
    let until = match args.until {
        Some(until) => until,
        None => default_until(args.archive.is_some()).await,
    };
    let checked = check(&args, until, out).await;
    let Some(path) = &args.report_file else {
        return checked.map(|report| report.verdict);
    };
    let text = match &checked {
        Ok(checked) => checked.report(args.since, until).to_json(report::LIMIT),
        Err(err) => report::failed(&err.describe(), report::LIMIT),
    };
    let written = std::fs::write(path, text).map_err(|source| Error::WriteReport {
        path: path.clone(),
        source,
    });
    match (checked, written) {
        (Ok(checked), Ok(())) => Ok(checked.verdict),
        (Err(err), _) | (Ok(_), Err(err)) => Err(err),
    }
}

/// What a check found, beyond the lines printed.
struct Checked {
    verdict: Verdict,
    sources: usize,
    chains: usize,
    complete: usize,
    unwitnessed: usize,
    problems: usize,
    rejected_heads: usize,
    missing_segments: u64,
    /// Problems found that the command line accepted.
    accepted: usize,
    problem_lines: Vec<String>,
}

impl Checked {
    fn new(reports: &[ChainReport], rejected_heads: usize, gaps: &[Gap], sources: usize) -> Self {
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
        let verdict = if problems > 0 || rejected_heads > 0 || !gaps.is_empty() {
            Verdict::Problems
        } else if unwitnessed > 0 {
            Verdict::Unwitnessed
        } else {
            Verdict::Complete
        };
        Self {
            verdict,
            sources,
            chains: reports.len(),
            complete,
            unwitnessed,
            problems,
            rejected_heads,
            missing_segments: gaps.iter().map(Gap::numbers).sum(),
            accepted: 0,
            problem_lines: Vec::new(),
        }
    }

    fn summary_line(&self, archive: bool) -> String {
        let mut line = format!(
            "summary chains={} complete={} unwitnessed={} problems={} rejected_heads={}",
            self.chains, self.complete, self.unwitnessed, self.problems, self.rejected_heads
        );
        if archive {
            line.push_str(&format!(" missing_segments={}", self.missing_segments));
        }
        if self.accepted > 0 {
            line.push_str(&format!(" accepted={}", self.accepted));
        }
        line
    }

    fn report(&self, since: Option<SystemTime>, until: SystemTime) -> Report {
        Report {
            verdict: self.verdict.label(),
            since: since.map(report::rfc3339),
            verified_through: report::rfc3339(until),
            segments: self.sources,
            chains: self.chains,
            complete: self.complete,
            unwitnessed: self.unwitnessed,
            problems: self.problems,
            rejected_heads: self.rejected_heads,
            missing_segments: self.missing_segments,
            accepted: self.accepted,
            findings: self.problem_lines.clone(),
            findings_omitted: None,
        }
    }
}

async fn check(args: &VerifyArgs, until: SystemTime, out: &mut impl Write) -> Result<Checked> {
    let trusted = trusted_keys(&args.public_key)?;
    let mut verifier = Verifier::default();
    // Without an archive the logs' heads may still be coming: no end to the heads.
    let heads = read_heads(args, args.archive.is_some().then_some(until)).await?;
    let opened = add_heads(&heads, &trusted, &mut verifier);
    let rejected = &opened.rejected;
    let (sources, gaps) = match &args.archive {
        Some(location) => {
            let window = Window {
                since: args.since,
                until,
            };
            read_archive(location, args, &window, &opened, &mut verifier).await?
        }
        None => (read_logs(&args.files, &mut verifier)?, Vec::new()),
    };
    let mut reports = verifier.reports();
    let mut accepting = Accepting::new(&args.accept_finding);
    for report in &mut reports {
        let chain = report.chain.clone();
        report.findings.retain(|finding| {
            !finding.is_problem() || !accepting.takes(finding_line(&chain, finding, &sources))
        });
    }
    let rejected: Vec<_> = rejected
        .iter()
        .filter(|(stored, reason)| !accepting.takes(rejected_line(stored, reason)))
        .collect();
    let gaps: Vec<Gap> = gaps
        .into_iter()
        .filter(|gap| !accepting.takes(gap_line(gap)))
        .collect();
    let mut checked = Checked::new(&reports, rejected.len(), &gaps, sources.len());
    checked.accepted = accepting.taken.len();
    let mut printer = Printer {
        out,
        problem_lines: Vec::new(),
    };
    for report in &reports {
        printer.line(summary_line(report), false)?;
        for finding in &report.findings {
            let line = finding_line(&report.chain, finding, &sources);
            printer.line(line, finding.is_problem())?;
        }
    }
    for (stored, reason) in rejected {
        printer.line(rejected_line(stored, reason), true)?;
    }
    for gap in &gaps {
        printer.line(gap_line(gap), true)?;
    }
    for line in &accepting.taken {
        printer.line(format!("{line} accepted=true"), false)?;
    }
    printer.line(checked.summary_line(args.archive.is_some()), false)?;
    checked.problem_lines = printer.problem_lines;
    Ok(checked)
}

/// The findings accepted on the command line, and those of this check they matched.
struct Accepting {
    accepted: BTreeSet<String>,
    taken: Vec<String>,
}

impl Accepting {
    fn new(lines: &[String]) -> Self {
        Self {
            accepted: lines.iter().map(|line| line.trim().to_owned()).collect(),
            taken: Vec::new(),
        }
    }

    /// Whether the problem `line` was accepted; if so it is kept to be printed as such.
    fn takes(&mut self, line: String) -> bool {
        let accepted = self.accepted.contains(&line);
        if accepted {
            self.taken.push(line);
        }
        accepted
    }
}

/// What the heads read say, beyond the positions the verifier takes.
struct Opened<'a> {
    /// The heads that do not open with a trusted key, with why.
    rejected: Vec<(&'a StoredHead, Rejected)>,
    /// The chains witnessed.
    witnessed: BTreeSet<String>,
    /// Archive object key -> the position of the head that ends it.
    segment_ends: BTreeMap<String, u64>,
}

/// Gives the verifier the heads that open with a trusted key.
fn add_heads<'a>(
    heads: &'a [StoredHead],
    trusted: &[KeyPair],
    verifier: &mut Verifier,
) -> Opened<'a> {
    let mut opened = Opened {
        rejected: Vec::new(),
        witnessed: BTreeSet::new(),
        segment_ends: BTreeMap::new(),
    };
    for stored in heads {
        match head::open(&stored.payload, stored.signature.as_deref(), trusted) {
            Ok(checkpoint) => {
                verifier.add_checkpoint(&checkpoint);
                if let Some(segment) = &checkpoint.segment {
                    opened
                        .segment_ends
                        .insert(segment.key.clone(), checkpoint.seq);
                }
                opened.witnessed.insert(checkpoint.chain);
            }
            Err(reason) => opened.rejected.push((stored, reason)),
        }
    }
    opened
}

/// Writes the report's lines and keeps the problem lines for the report file.
struct Printer<'a, W> {
    out: &'a mut W,
    problem_lines: Vec<String>,
}

impl<W: Write> Printer<'_, W> {
    fn line(&mut self, text: String, is_problem: bool) -> Result<()> {
        writeln!(self.out, "{text}").map_err(Error::OutputClosed)?;
        if is_problem {
            self.problem_lines.push(text);
        }
        Ok(())
    }
}

fn trusted_keys(public_keys: &[String]) -> Result<Vec<KeyPair>> {
    public_keys
        .iter()
        .map(|key| {
            KeyPair::from_public_key(key.trim()).map_err(|_| {
                Error::Config(format!("--public-key {key:?} is not an NKey public key"))
            })
        })
        .collect()
}

/// The default end of the window: now, rounded up to a whole second, which `wait`s for.
/// Stores list `LastModified` in whole seconds: with the end on one and the listing after
/// it, a segment listed before the end was stored before it, and one stored later, even
/// in the same second as the listing, falls in the next window.
async fn default_until(wait: bool) -> SystemTime {
    let now = SystemTime::now();
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let end = SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs() + 1);
    if wait {
        tokio::time::sleep(end.duration_since(now).unwrap_or_default()).await;
    }
    end
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

/// Feeds the segments of the window under an `s3://bucket/prefix` location to the verifier,
/// in key order (time order within a run); returns the segments' URLs as the sources'
/// names, and the gaps in every run's numbers over the whole listing.
async fn read_archive(
    location: &str,
    args: &VerifyArgs,
    window: &Window,
    opened: &Opened<'_>,
    verifier: &mut Verifier,
) -> Result<(Vec<String>, Vec<Gap>)> {
    let (bucket, prefix) = parse_archive_location(location)?;
    let reader = ArchiveReader::connect(&args.store, bucket).await?;
    if listing::is_segment(prefix) {
        let url = read_one_segment(&reader, bucket, prefix, opened, verifier).await?;
        return Ok((vec![url], Vec::new()));
    }
    let listing: Vec<Listed> = reader
        .list(prefix)
        .await?
        .into_iter()
        .filter(|listed| listing::is_segment(&listed.key))
        .collect();
    if listing.is_empty() {
        tracing::warn!(location, "no archive segment found under this location");
    }
    let runs: BTreeSet<Run> = opened
        .witnessed
        .iter()
        .filter_map(|chain| Run::of_chain(chain))
        .collect();
    let selected = listing::select(&listing, window, &runs);
    let mut names = Vec::with_capacity(selected.len());
    for (source, segment) in selected.iter().enumerate() {
        let url = format!("s3://{bucket}/{}", segment.key);
        let body = reader.read(segment.key).await?;
        let first =
            add_segment(segment.key, &body, source, verifier).map_err(|err| Error::ReadLog {
                path: PathBuf::from(&url),
                source: err,
            })?;
        if let (true, Some((chain, position))) = (segment.continues_run, first) {
            verifier.set_floor(&chain, position);
        }
        names.push(url);
    }
    Ok((names, listing::gaps(&listing)))
}

/// Feeds the object at `key` alone to the verifier and confines the check to it: from its
/// first line, which must follow the head before it, to the head that names it as its end
/// (to its last line when none does, whose tail is then unwitnessed). Returns its URL.
async fn read_one_segment(
    reader: &ArchiveReader,
    bucket: &str,
    key: &str,
    opened: &Opened<'_>,
    verifier: &mut Verifier,
) -> Result<String> {
    let url = format!("s3://{bucket}/{key}");
    let body = reader.read(key).await?;
    add_segment(key, &body, 0, verifier).map_err(|err| Error::ReadLog {
        path: PathBuf::from(&url),
        source: err,
    })?;
    let end = opened.segment_ends.get(key).copied();
    verifier.confine_to_source(0, |_| end);
    Ok(url)
}

/// Feeds one segment's lines to the verifier; returns its first line's chain and position.
fn add_segment(
    key: &str,
    body: &[u8],
    source: usize,
    verifier: &mut Verifier,
) -> std::io::Result<Option<(String, u64)>> {
    if key.ends_with(".gz") {
        let gunzip = BufReader::new(flate2::read::MultiGzDecoder::new(body));
        add_lines(gunzip, source, verifier)
    } else {
        add_lines(body, source, verifier)
    }
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

/// Feeds every line of `reader` to the verifier, numbered from 1 within `source`; returns
/// the first chained line's chain and position.
fn add_lines(
    mut reader: impl BufRead,
    source: usize,
    verifier: &mut Verifier,
) -> std::io::Result<Option<(String, u64)>> {
    let mut line = Vec::new();
    let mut number = 0;
    let mut first = None;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(first);
        }
        number += 1;
        // The newline is not hashed; a carriage return before it was added on the way
        // (a chained line never contains one unescaped).
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let chained = verifier.add_line(
            text,
            Location {
                source,
                line: number,
            },
        );
        if chained && first.is_none() {
            first = super::chain::parse(text).map(|link| (link.chain.to_owned(), link.seq));
        }
    }
}

/// The heads published in `[--since, until)`.
async fn read_heads(args: &VerifyArgs, until: Option<SystemTime>) -> Result<Vec<StoredHead>> {
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
    let until = until.map(|until| {
        until
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i128)
    });
    Ok(heads
        .into_iter()
        .filter(|head| until.is_none_or(|until| head.stored_nanos < until))
        .collect())
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

fn rejected_line(stored: &StoredHead, reason: &Rejected) -> String {
    format!(
        "head stream_seq={} subject={} finding=rejected reason={}",
        stored.stream_sequence,
        stored.subject,
        quoted(&reason.to_string())
    )
}

fn gap_line(gap: &Gap) -> String {
    let numbers = if gap.from == gap.to {
        gap.from.to_string()
    } else {
        format!("{}-{}", gap.from, gap.to)
    };
    let mut line = format!("run={} finding=missing_segments numbers={numbers}", gap.run);
    if let Some(after) = &gap.after {
        line.push_str(&format!(" after={}", quoted(after)));
    }
    line
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
        Finding::Unlinked { seq } => format!("unlinked position={seq}"),
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
        assert!(!args.unwitnessed_ok && args.report_file.is_none());
        assert!(VerifyArgs::try_parse_from(["verify", "--nats-url", "nats://a:4222"]).is_err());
    }

    #[test]
    fn an_unwitnessed_tail_may_pass() {
        assert_eq!(Verdict::Unwitnessed.exit_code(false), 3);
        assert_eq!(Verdict::Unwitnessed.exit_code(true), 0);
        assert_eq!(Verdict::Problems.exit_code(true), 1);
    }

    #[test]
    fn a_gap_names_its_run_the_numbers_and_the_segment_before() {
        let gap = |from, to, after: Option<&str>| Gap {
            run: Run {
                consumer: "c".into(),
                pod: "pod-0".into(),
                start: "20261204T100000.000000001Z".into(),
            },
            from,
            to,
            after: after.map(str::to_owned),
        };
        assert_eq!(
            gap_line(&gap(3, 4, Some("p/AUDIT/c/2026/12/04/k.jsonl"))),
            "run=pod-0_20261204T100000.000000001Z finding=missing_segments numbers=3-4 \
             after=p/AUDIT/c/2026/12/04/k.jsonl"
        );
        assert_eq!(
            gap_line(&gap(1, 1, None)),
            "run=pod-0_20261204T100000.000000001Z finding=missing_segments numbers=1"
        );
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
