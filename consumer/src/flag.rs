//! The command line of a consumer that another program starts: one typed value per option
//! ([`Flag`]), written as `--name=value` exactly as [`Args`](crate::config::Args) reads it
//! back. The operator builds its consumer pods' arguments from these, so an option renamed or
//! retyped in `config` fails the build or the tests below, not a pod at run time. Only the
//! options the operator sets are here; everything else keeps its default.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use crate::config::{Compression, LockMode, OutputKind};
use crate::format::Format;

/// One option of `audit-consumer`, with its value in the type `Args` parses it into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flag {
    NatsUrl(Vec<String>),
    CredsFile(PathBuf),
    NkeySeedFile(PathBuf),
    UserFile(PathBuf),
    PasswordFile(PathBuf),
    TokenFile(PathBuf),
    TlsCaFile(PathBuf),
    TlsCertFile(PathBuf),
    TlsKeyFile(PathBuf),
    JsDomain(String),
    Stream(String),
    Consumer(String),
    Batch(u32),
    MaxBytes(usize),
    Expires(Duration),
    Heartbeat(Duration),
    Format(Format),
    RedactKeys(Vec<String>),
    HealthListen(SocketAddr),
    /// `--integrity`, a switch without a value.
    Integrity,
    IntegrityKeyFile(PathBuf),
    IntegrityStream(String),
    IntegritySubject(String),
    IntegrityCheckpointLines(u64),
    IntegrityCheckpointInterval(Duration),
    Output(OutputKind),
    ArchiveEndpoint(String),
    ArchiveRegion(String),
    ArchiveBucket(String),
    ArchivePrefix(String),
    /// `--archive-path-style`, a switch without a value.
    ArchivePathStyle,
    ArchiveAccessKeyIdFile(PathBuf),
    ArchiveSecretAccessKeyFile(PathBuf),
    ArchiveCaFile(PathBuf),
    ArchiveSegmentLines(u64),
    ArchiveSegmentBytes(usize),
    ArchiveSegmentAge(Duration),
    ArchiveCompression(Compression),
    ArchiveLockMode(LockMode),
    ArchiveRetention(Duration),
    TerminationLog(PathBuf),
}

impl Flag {
    /// The option's long name, as `Args` declares it.
    pub fn name(&self) -> &'static str {
        match self {
            Flag::NatsUrl(_) => "nats-url",
            Flag::CredsFile(_) => "creds-file",
            Flag::NkeySeedFile(_) => "nkey-seed-file",
            Flag::UserFile(_) => "user-file",
            Flag::PasswordFile(_) => "password-file",
            Flag::TokenFile(_) => "token-file",
            Flag::TlsCaFile(_) => "tls-ca-file",
            Flag::TlsCertFile(_) => "tls-cert-file",
            Flag::TlsKeyFile(_) => "tls-key-file",
            Flag::JsDomain(_) => "js-domain",
            Flag::Stream(_) => "stream",
            Flag::Consumer(_) => "consumer",
            Flag::Batch(_) => "batch",
            Flag::MaxBytes(_) => "max-bytes",
            Flag::Expires(_) => "expires",
            Flag::Heartbeat(_) => "heartbeat",
            Flag::Format(_) => "format",
            Flag::RedactKeys(_) => "redact-keys",
            Flag::HealthListen(_) => "health-listen",
            Flag::Integrity => "integrity",
            Flag::IntegrityKeyFile(_) => "integrity-key-file",
            Flag::IntegrityStream(_) => "integrity-stream",
            Flag::IntegritySubject(_) => "integrity-subject",
            Flag::IntegrityCheckpointLines(_) => "integrity-checkpoint-lines",
            Flag::IntegrityCheckpointInterval(_) => "integrity-checkpoint-interval",
            Flag::Output(_) => "output",
            Flag::ArchiveEndpoint(_) => "archive-endpoint",
            Flag::ArchiveRegion(_) => "archive-region",
            Flag::ArchiveBucket(_) => "archive-bucket",
            Flag::ArchivePrefix(_) => "archive-prefix",
            Flag::ArchivePathStyle => "archive-path-style",
            Flag::ArchiveAccessKeyIdFile(_) => "archive-access-key-id-file",
            Flag::ArchiveSecretAccessKeyFile(_) => "archive-secret-access-key-file",
            Flag::ArchiveCaFile(_) => "archive-ca-file",
            Flag::ArchiveSegmentLines(_) => "archive-segment-lines",
            Flag::ArchiveSegmentBytes(_) => "archive-segment-bytes",
            Flag::ArchiveSegmentAge(_) => "archive-segment-age",
            Flag::ArchiveCompression(_) => "archive-compression",
            Flag::ArchiveLockMode(_) => "archive-lock-mode",
            Flag::ArchiveRetention(_) => "archive-retention",
            Flag::TerminationLog(_) => "termination-log",
        }
    }

    /// The value as `Args` parses it: lists comma-separated, durations as humantime writes
    /// them; none for a switch.
    fn value(&self) -> Option<String> {
        Some(match self {
            Flag::Integrity | Flag::ArchivePathStyle => return None,
            Flag::NatsUrl(list) | Flag::RedactKeys(list) => list.join(","),
            Flag::CredsFile(path)
            | Flag::NkeySeedFile(path)
            | Flag::UserFile(path)
            | Flag::PasswordFile(path)
            | Flag::TokenFile(path)
            | Flag::TlsCaFile(path)
            | Flag::TlsCertFile(path)
            | Flag::TlsKeyFile(path)
            | Flag::IntegrityKeyFile(path)
            | Flag::ArchiveAccessKeyIdFile(path)
            | Flag::ArchiveSecretAccessKeyFile(path)
            | Flag::ArchiveCaFile(path)
            | Flag::TerminationLog(path) => path.display().to_string(),
            Flag::JsDomain(text)
            | Flag::Stream(text)
            | Flag::Consumer(text)
            | Flag::IntegrityStream(text)
            | Flag::IntegritySubject(text)
            | Flag::ArchiveEndpoint(text)
            | Flag::ArchiveRegion(text)
            | Flag::ArchiveBucket(text)
            | Flag::ArchivePrefix(text) => text.clone(),
            Flag::Batch(count) => count.to_string(),
            Flag::MaxBytes(bytes) | Flag::ArchiveSegmentBytes(bytes) => bytes.to_string(),
            Flag::IntegrityCheckpointLines(count) | Flag::ArchiveSegmentLines(count) => {
                count.to_string()
            }
            // In the syntax the consumer parses durations with.
            Flag::Expires(duration)
            | Flag::Heartbeat(duration)
            | Flag::IntegrityCheckpointInterval(duration)
            | Flag::ArchiveSegmentAge(duration) => {
                humantime::format_duration(*duration).to_string()
            }
            // In days, as retention is stated: humantime would write months of 30.44 days.
            Flag::ArchiveRetention(duration) if duration.as_secs() % 86_400 == 0 => {
                format!("{}d", duration.as_secs() / 86_400)
            }
            Flag::ArchiveRetention(duration) => humantime::format_duration(*duration).to_string(),
            Flag::Format(format) => value_name(format),
            Flag::Output(kind) => value_name(kind),
            Flag::ArchiveCompression(compression) => value_name(compression),
            Flag::ArchiveLockMode(mode) => value_name(mode),
            Flag::HealthListen(address) => address.to_string(),
        })
    }
}

/// The name clap parses a value of `T` from.
fn value_name<T: clap::ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .expect("every value has a name")
        .get_name()
        .to_owned()
}

/// `--name=value`: one argument, so that no value can be read as another option.
impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value() {
            Some(value) => write!(f, "--{}={value}", self.name()),
            None => write!(f, "--{}", self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::Args;

    const REQUIRED: [&str; 3] = ["--nats-url=nats://a:4222", "--stream=S", "--consumer=C"];

    /// The real parser's reading of `flags` beside the required options they do not set.
    fn parsed(flags: &[&Flag]) -> Args {
        let arguments: Vec<String> = flags.iter().map(ToString::to_string).collect();
        let required = REQUIRED.into_iter().filter(|required| {
            !flags
                .iter()
                .any(|flag| required.starts_with(&format!("--{}=", flag.name())))
        });
        Args::try_parse_from(
            ["audit-consumer"]
                .into_iter()
                .chain(required)
                .chain(arguments.iter().map(String::as_str)),
        )
        .unwrap_or_else(|e| panic!("{arguments:?} do not parse: {e}"))
    }

    /// What `args` holds for `flag`'s option, as a flag.
    fn read_back(flag: &Flag, args: &Args) -> Flag {
        let path = |path: &Option<PathBuf>| path.clone().expect("the option is set");
        match flag {
            Flag::NatsUrl(_) => Flag::NatsUrl(args.nats.nats_url.clone()),
            Flag::CredsFile(_) => Flag::CredsFile(path(&args.nats.creds_file)),
            Flag::NkeySeedFile(_) => Flag::NkeySeedFile(path(&args.nats.nkey_seed_file)),
            Flag::UserFile(_) => Flag::UserFile(path(&args.nats.user_file)),
            Flag::PasswordFile(_) => Flag::PasswordFile(path(&args.nats.password_file)),
            Flag::TokenFile(_) => Flag::TokenFile(path(&args.nats.token_file)),
            Flag::TlsCaFile(_) => Flag::TlsCaFile(path(&args.nats.tls_ca_file)),
            Flag::TlsCertFile(_) => Flag::TlsCertFile(path(&args.nats.tls_cert_file)),
            Flag::TlsKeyFile(_) => Flag::TlsKeyFile(path(&args.nats.tls_key_file)),
            Flag::JsDomain(_) => Flag::JsDomain(args.nats.js_domain.clone().unwrap_or_default()),
            Flag::Stream(_) => Flag::Stream(args.binding.stream.clone()),
            Flag::Consumer(_) => Flag::Consumer(args.binding.consumer.clone()),
            Flag::Batch(_) => Flag::Batch(args.pull.batch),
            Flag::MaxBytes(_) => Flag::MaxBytes(args.pull.max_bytes),
            Flag::Expires(_) => Flag::Expires(args.pull.expires),
            Flag::Heartbeat(_) => Flag::Heartbeat(args.pull.heartbeat.unwrap_or_default()),
            Flag::Format(_) => Flag::Format(args.output.format),
            Flag::RedactKeys(_) => Flag::RedactKeys(args.output.redact_keys.clone()),
            Flag::HealthListen(_) => Flag::HealthListen(args.runtime.health_listen),
            Flag::Integrity => {
                assert!(args.integrity.integrity);
                Flag::Integrity
            }
            Flag::IntegrityKeyFile(_) => {
                Flag::IntegrityKeyFile(path(&args.integrity.integrity_key_file))
            }
            Flag::IntegrityStream(_) => {
                Flag::IntegrityStream(args.integrity.integrity_stream.clone())
            }
            Flag::IntegritySubject(_) => {
                Flag::IntegritySubject(args.integrity.integrity_subject.clone().unwrap_or_default())
            }
            Flag::IntegrityCheckpointLines(_) => {
                Flag::IntegrityCheckpointLines(args.integrity.integrity_checkpoint_lines)
            }
            Flag::IntegrityCheckpointInterval(_) => {
                Flag::IntegrityCheckpointInterval(args.integrity.integrity_checkpoint_interval)
            }
            Flag::Output(_) => Flag::Output(args.archive.output),
            Flag::ArchiveEndpoint(_) => Flag::ArchiveEndpoint(
                args.archive
                    .store
                    .archive_endpoint
                    .clone()
                    .unwrap_or_default(),
            ),
            Flag::ArchiveRegion(_) => Flag::ArchiveRegion(
                args.archive
                    .store
                    .archive_region
                    .clone()
                    .unwrap_or_default(),
            ),
            Flag::ArchiveBucket(_) => {
                Flag::ArchiveBucket(args.archive.archive_bucket.clone().unwrap_or_default())
            }
            Flag::ArchivePrefix(_) => Flag::ArchivePrefix(args.archive.archive_prefix.clone()),
            Flag::ArchivePathStyle => {
                assert!(args.archive.store.archive_path_style);
                Flag::ArchivePathStyle
            }
            Flag::ArchiveAccessKeyIdFile(_) => {
                Flag::ArchiveAccessKeyIdFile(path(&args.archive.store.archive_access_key_id_file))
            }
            Flag::ArchiveSecretAccessKeyFile(_) => Flag::ArchiveSecretAccessKeyFile(path(
                &args.archive.store.archive_secret_access_key_file,
            )),
            Flag::ArchiveCaFile(_) => {
                Flag::ArchiveCaFile(path(&args.archive.store.archive_ca_file))
            }
            Flag::ArchiveSegmentLines(_) => {
                Flag::ArchiveSegmentLines(args.archive.archive_segment_lines)
            }
            Flag::ArchiveSegmentBytes(_) => {
                Flag::ArchiveSegmentBytes(args.archive.archive_segment_bytes)
            }
            Flag::ArchiveSegmentAge(_) => Flag::ArchiveSegmentAge(args.archive.archive_segment_age),
            Flag::ArchiveCompression(_) => {
                Flag::ArchiveCompression(args.archive.archive_compression)
            }
            Flag::ArchiveLockMode(_) => Flag::ArchiveLockMode(args.archive.archive_lock_mode),
            Flag::ArchiveRetention(_) => {
                Flag::ArchiveRetention(args.archive.archive_retention.unwrap_or_default())
            }
            Flag::TerminationLog(_) => Flag::TerminationLog(path(&args.runtime.termination_log)),
        }
    }

    #[test]
    fn every_flag_reads_back_as_written() {
        let path = |p: &str| PathBuf::from(p);
        // Each option alone beside the required ones; the options that need a partner are
        // parsed in pairs below.
        for flag in [
            Flag::NatsUrl(vec!["nats://x:4222".into(), "tls://y:7422".into()]),
            Flag::CredsFile(path("/s/creds/user.creds")),
            Flag::NkeySeedFile(path("/s/nkey/seed.nk")),
            Flag::TokenFile(path("/s/token/token")),
            Flag::TlsCaFile(path("/s/tls-ca/ca.crt")),
            Flag::JsDomain("hub".into()),
            Flag::Stream("ORDERS".into()),
            Flag::Consumer("orders_reader".into()),
            Flag::Batch(100),
            Flag::MaxBytes(1 << 20),
            Flag::Expires(Duration::from_secs(90)),
            Flag::Expires(Duration::from_millis(1500)),
            Flag::Heartbeat(Duration::from_secs(5)),
            Flag::Format(Format::Json),
            Flag::Format(Format::Text),
            Flag::RedactKeys(vec!["password".into(), "token".into()]),
            Flag::HealthListen("0.0.0.0:8080".parse().unwrap()),
            Flag::Integrity,
            Flag::IntegrityKeyFile(path("/s/integrity/seed.nk")),
            Flag::IntegrityStream("AUDIT_WITNESS".into()),
            Flag::IntegritySubject("witness.orders.reader".into()),
            Flag::IntegrityCheckpointLines(500),
            Flag::IntegrityCheckpointInterval(Duration::from_secs(30)),
            Flag::Output(OutputKind::Stdout),
            Flag::ArchiveEndpoint("https://minio.storage:9000".into()),
            Flag::ArchiveRegion("eu-central-1".into()),
            Flag::ArchiveBucket("audit-trail".into()),
            Flag::ArchivePrefix("audit/".into()),
            Flag::ArchivePathStyle,
            Flag::ArchiveCaFile(path("/s/archive-ca/ca.crt")),
            Flag::ArchiveSegmentLines(100_000),
            Flag::ArchiveSegmentBytes(64 << 20),
            Flag::ArchiveSegmentAge(Duration::from_secs(300)),
            Flag::ArchiveCompression(Compression::Gzip),
            Flag::ArchiveCompression(Compression::None),
            Flag::TerminationLog(path("/dev/termination-log")),
        ] {
            assert_eq!(read_back(&flag, &parsed(&[&flag])), flag, "{flag}");
        }
        for (first, second) in [
            (
                Flag::UserFile(path("/s/password/username")),
                Flag::PasswordFile(path("/s/password/password")),
            ),
            (
                Flag::TlsCertFile(path("/s/tls-client/tls.crt")),
                Flag::TlsKeyFile(path("/s/tls-client/tls.key")),
            ),
            (
                Flag::ArchiveAccessKeyIdFile(path("/s/archive-credentials/access-key-id")),
                Flag::ArchiveSecretAccessKeyFile(path("/s/archive-credentials/secret-access-key")),
            ),
            (
                Flag::ArchiveLockMode(LockMode::Compliance),
                Flag::ArchiveRetention(Duration::from_secs(400 * 86_400)),
            ),
            (
                Flag::ArchiveLockMode(LockMode::Governance),
                Flag::ArchiveRetention(Duration::from_secs(86_400)),
            ),
        ] {
            let args = parsed(&[&first, &second]);
            assert_eq!(read_back(&first, &args), first);
            assert_eq!(read_back(&second, &args), second);
        }
    }

    #[test]
    fn whole_seconds_and_minutes_are_written_as_a_person_would() {
        let written = |duration| Flag::Expires(duration).to_string();
        assert_eq!(written(Duration::from_secs(30)), "--expires=30s");
        assert_eq!(written(Duration::from_secs(300)), "--expires=5m");
    }
}
