//! Command-line and environment configuration.
//!
//! Every option is a long flag with an `AUDIT_CONSUMER_<NAME>` environment variable; the
//! operator writes its pods' command lines with [`crate::flag::Flag`], which is tested to parse
//! back here. Secrets are only ever paths to files (a
//! mounted Secret): a value on the command line or in the environment is visible in the pod
//! spec and in `/proc`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser};

use crate::format::Format;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "audit-consumer",
    version,
    about = "Drains a durable NATS JetStream pull consumer: one log line per audit event on \
             standard output, each event acked only after its line has been written.",
    after_help = "Every option can also be set through the environment variable shown with it. \
                  Diagnostics go to standard error; standard output carries only events. \
                  `audit-consumer verify --help` tells how to check a log written with \
                  --integrity."
)]
pub struct Args {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub binding: BindingArgs,
    #[command(flatten)]
    pub pull: PullArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[command(flatten)]
    pub integrity: IntegrityArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "Connection")]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated for a cluster.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_NATS_URL",
        value_delimiter = ',',
        required = true
    )]
    pub nats_url: Vec<String>,

    /// NATS credentials file (JWT and NKey seed), e.g. from `nsc`.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_CREDS_FILE",
        value_name = "PATH",
        group = "auth"
    )]
    pub creds_file: Option<PathBuf>,

    /// File holding an NKey user seed (`SU...`).
    #[arg(
        long,
        env = "AUDIT_CONSUMER_NKEY_SEED_FILE",
        value_name = "PATH",
        group = "auth"
    )]
    pub nkey_seed_file: Option<PathBuf>,

    /// User name for user/password authentication; the password comes from --password-file.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_USER",
        groups = ["auth", "user_name"],
        requires = "password_file"
    )]
    pub user: Option<String>,

    /// File holding the user name, instead of --user: a name kept in a Secret stays out of
    /// the pod's arguments (the operator uses this).
    #[arg(
        long,
        env = "AUDIT_CONSUMER_USER_FILE",
        value_name = "PATH",
        groups = ["auth", "user_name"],
        requires = "password_file"
    )]
    pub user_file: Option<PathBuf>,

    /// File holding the password for --user or --user-file.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_PASSWORD_FILE",
        value_name = "PATH",
        requires = "user_name"
    )]
    pub password_file: Option<PathBuf>,

    /// File holding an authentication token.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_TOKEN_FILE",
        value_name = "PATH",
        group = "auth"
    )]
    pub token_file: Option<PathBuf>,

    /// PEM file with the CA certificate(s) that sign the server's certificate; enables TLS.
    #[arg(long, env = "AUDIT_CONSUMER_TLS_CA_FILE", value_name = "PATH")]
    pub tls_ca_file: Option<PathBuf>,

    /// PEM client certificate for mutual TLS; needs --tls-key-file.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_TLS_CERT_FILE",
        value_name = "PATH",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_TLS_KEY_FILE",
        value_name = "PATH",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// Start TLS before the NATS protocol (server `handshake_first`); implies TLS.
    #[arg(long, env = "AUDIT_CONSUMER_TLS_FIRST")]
    pub tls_first: bool,

    /// JetStream domain to bind to (leaf-node setups).
    #[arg(
        long,
        env = "AUDIT_CONSUMER_JS_DOMAIN",
        conflicts_with = "js_api_prefix"
    )]
    pub js_domain: Option<String>,

    /// JetStream API prefix (cross-account imports), instead of `$JS.API`.
    #[arg(long, env = "AUDIT_CONSUMER_JS_API_PREFIX")]
    pub js_api_prefix: Option<String>,
}

#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "Binding")]
pub struct BindingArgs {
    /// Name of the JetStream stream.
    #[arg(long, env = "AUDIT_CONSUMER_STREAM")]
    pub stream: String,

    /// Name of the durable pull consumer on --stream.
    #[arg(long, env = "AUDIT_CONSUMER_CONSUMER")]
    pub consumer: String,

    /// Standalone mode: create the stream and the consumer if they are missing. Without it
    /// both must already exist (the operator creates them).
    // Checked in `validate`: clap's `requires` would also fire for AUDIT_CONSUMER_CREATE=false.
    #[arg(long, env = "AUDIT_CONSUMER_CREATE")]
    pub create: bool,

    /// With --create: subjects the stream captures, comma-separated.
    #[arg(long, env = "AUDIT_CONSUMER_SUBJECTS", value_delimiter = ',')]
    pub subjects: Vec<String>,

    /// With --create: maximum age of messages in the stream (0 = unlimited).
    #[arg(long, env = "AUDIT_CONSUMER_STREAM_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub stream_max_age: Duration,

    /// With --create: maximum size of the stream in bytes (-1 = unlimited).
    #[arg(long, env = "AUDIT_CONSUMER_STREAM_MAX_BYTES", default_value_t = 1 << 30, allow_negative_numbers = true)]
    pub stream_max_bytes: i64,

    /// With --create: maximum number of messages in the stream (-1 = unlimited).
    #[arg(
        long,
        env = "AUDIT_CONSUMER_STREAM_MAX_MSGS",
        default_value_t = 1_000_000,
        allow_negative_numbers = true
    )]
    pub stream_max_msgs: i64,

    /// With --create: stream replicas.
    #[arg(long, env = "AUDIT_CONSUMER_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// With --create: deliveries of one message before the server gives up (-1 = unlimited).
    #[arg(long, env = "AUDIT_CONSUMER_MAX_DELIVER", default_value_t = -1, allow_negative_numbers = true)]
    pub max_deliver: i64,

    /// With --create: how long the server waits for an ack before redelivering.
    #[arg(long, env = "AUDIT_CONSUMER_ACK_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,

    /// How long a missing or deleted consumer is tolerated before the process exits non-zero.
    #[arg(long, env = "AUDIT_CONSUMER_MISSING_CONSUMER_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub missing_consumer_grace: Duration,
}

#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "Pull tuning")]
pub struct PullArgs {
    /// Messages per pull request; also the most lines written and acked together.
    #[arg(long, env = "AUDIT_CONSUMER_BATCH", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,

    /// Bytes per pull request (0 = no limit); bounds memory when payloads are large.
    #[arg(long, env = "AUDIT_CONSUMER_MAX_BYTES", default_value_t = 4 << 20)]
    pub max_bytes: usize,

    /// How long one pull request waits on the server.
    #[arg(long, env = "AUDIT_CONSUMER_EXPIRES", default_value = "30s", value_parser = humantime::parse_duration)]
    pub expires: Duration,

    /// Idle heartbeat the server sends while a pull request waits; at most half of --expires.
    /// Default: 5s, or half of --expires when that is shorter.
    #[arg(long, env = "AUDIT_CONSUMER_HEARTBEAT", value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,

    /// Redelivery delay asked for when an event could not be written.
    #[arg(long, env = "AUDIT_CONSUMER_NAK_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub nak_delay: Duration,
}

impl PullArgs {
    /// The idle heartbeat asked of the server: --heartbeat, else 5s or half of --expires,
    /// whichever is shorter, so that a short expiry needs no heartbeat of its own.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
            .unwrap_or_else(|| Duration::from_secs(5).min(self.expires / 2))
    }
}

#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Line format on standard output.
    #[arg(long, env = "AUDIT_CONSUMER_FORMAT", value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// Keys whose values are replaced by "[REDACTED]" at any depth of structured events, and
    /// NATS headers of the same names (e.g. Authorization); comma-separated, matched ASCII
    /// case-insensitively.
    #[arg(long, env = "AUDIT_CONSUMER_REDACT_KEYS", value_delimiter = ',')]
    pub redact_keys: Vec<String>,
}

/// Where the lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputKind {
    /// Standard output, one write per batch; acked once written.
    Stdout,
    /// An S3 bucket, in create-only objects of many lines (segments); acked once stored.
    Archive,
}

/// How segments are compressed before they are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    /// gzip (RFC 1952): `zcat` and every log tool read it.
    Gzip,
}

/// The S3 Object Lock retention mode put on every segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LockMode {
    /// No retention: the bucket's default retention, if any, applies.
    None,
    /// Users with s3:BypassGovernanceRetention can still delete a segment early.
    Governance,
    /// Nobody, the account's root included, can delete a segment or shorten its retention
    /// before it expires.
    Compliance,
}

/// How to reach the S3 store: shared by the archive output and `verify --archive`.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct StoreArgs {
    /// S3 endpoint URL, e.g. https://minio.example:9000; default: AWS S3 for --archive-region.
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_ENDPOINT")]
    pub archive_endpoint: Option<String>,

    /// Region to sign requests for; default: the SDK's (AWS_REGION, the profile, ...).
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_REGION")]
    pub archive_region: Option<String>,

    /// Path-style requests (`endpoint/bucket/key`), as MinIO, Ceph RGW and most
    /// self-hosted stores need.
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_PATH_STYLE")]
    pub archive_path_style: bool,

    /// File holding the access key id; without it, the SDK's default credential chain
    /// (web identity, pod identity, instance metadata, ...) is used.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_ARCHIVE_ACCESS_KEY_ID_FILE",
        value_name = "PATH",
        requires = "archive_secret_access_key_file"
    )]
    pub archive_access_key_id_file: Option<PathBuf>,

    /// File holding the secret access key of --archive-access-key-id-file.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_ARCHIVE_SECRET_ACCESS_KEY_FILE",
        value_name = "PATH",
        requires = "archive_access_key_id_file"
    )]
    pub archive_secret_access_key_file: Option<PathBuf>,

    /// PEM file with the CA certificate(s) that sign the endpoint's certificate (instead of
    /// the system's roots).
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_CA_FILE", value_name = "PATH")]
    pub archive_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "Archive output (S3)")]
pub struct ArchiveArgs {
    /// Where the lines go: standard output, or an S3 bucket (--archive-*).
    #[arg(long, env = "AUDIT_CONSUMER_OUTPUT", value_enum, default_value_t = OutputKind::Stdout)]
    pub output: OutputKind,

    #[command(flatten)]
    pub store: StoreArgs,

    /// The bucket segments are written to; with --archive-lock-mode it must have Object Lock.
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_BUCKET")]
    pub archive_bucket: Option<String>,

    /// Key prefix of every segment (e.g. `audit/`); keys continue with
    /// `<stream>/<consumer>/<yyyy>/<mm>/<dd>/...`.
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_PREFIX", default_value = "")]
    pub archive_prefix: String,

    /// A segment is stored after this many lines...
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_SEGMENT_LINES", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub archive_segment_lines: u64,

    /// ...or this many bytes of lines (before compression)...
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub archive_segment_bytes: usize,

    /// ...or this long after its first line, whichever comes first; and at shutdown.
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_SEGMENT_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub archive_segment_age: Duration,

    /// Compression of the stored segments.
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_COMPRESSION", value_enum, default_value_t = Compression::None)]
    pub archive_compression: Compression,

    /// Object Lock retention put on every segment (needs --archive-retention).
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_LOCK_MODE", value_enum, default_value_t = LockMode::None)]
    pub archive_lock_mode: LockMode,

    /// How long each segment is retained under --archive-lock-mode, e.g. `365d`.
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_RETENTION", value_parser = humantime::parse_duration)]
    pub archive_retention: Option<Duration>,

    /// At shutdown, how long storing the last segment is retried before its events are
    /// handed back (naked) for another pod to write.
    #[arg(long, env = "AUDIT_CONSUMER_ARCHIVE_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub archive_shutdown_timeout: Duration,
}

impl ArchiveArgs {
    fn validate(&self) -> Result<(), String> {
        if self.output != OutputKind::Archive {
            return Ok(());
        }
        match &self.archive_bucket {
            Some(bucket) if !bucket.trim().is_empty() => {}
            _ => return Err("--output archive needs --archive-bucket".into()),
        }
        if self.archive_segment_bytes == 0 || self.archive_segment_age.is_zero() {
            return Err(
                "--archive-segment-bytes and --archive-segment-age must be non-zero".into(),
            );
        }
        match (self.archive_lock_mode, self.archive_retention) {
            (LockMode::None, Some(_)) => {
                Err("--archive-retention needs --archive-lock-mode governance or compliance".into())
            }
            (LockMode::Governance | LockMode::Compliance, None) => Err(
                "--archive-lock-mode needs --archive-retention (how long each segment is kept)"
                    .into(),
            ),
            (_, Some(retention)) if retention < Duration::from_secs(86_400) => Err(format!(
                "--archive-retention ({}) must be at least one day: S3 counts retention in days",
                humantime::format_duration(retention)
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "Integrity (tamper-evident output)")]
pub struct IntegrityArgs {
    /// Hash-chain the output: every line carries its chain, its position and the hash of the
    /// chain's previous line, and the chain's head is published, signed, to --integrity-stream.
    #[arg(long, env = "AUDIT_CONSUMER_INTEGRITY")]
    pub integrity: bool,

    /// File holding the NKey seed (`S...`, any NKey type) whose Ed25519 key signs the chain
    /// heads; `audit-consumer verify` checks them with its public key.
    #[arg(long, env = "AUDIT_CONSUMER_INTEGRITY_KEY_FILE", value_name = "PATH")]
    pub integrity_key_file: Option<PathBuf>,

    /// The witness stream: append-only (deny delete and purge), created beforehand.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_INTEGRITY_STREAM",
        default_value = "AUDIT_INTEGRITY"
    )]
    pub integrity_stream: String,

    /// The subject chain heads are published on; the witness stream must capture it.
    /// Default: `audit-integrity.<stream>.<consumer>`.
    #[arg(long, env = "AUDIT_CONSUMER_INTEGRITY_SUBJECT")]
    pub integrity_subject: Option<String>,

    /// A chain head is published after at most this many lines...
    #[arg(long, env = "AUDIT_CONSUMER_INTEGRITY_CHECKPOINT_LINES", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub integrity_checkpoint_lines: u64,

    /// ...or this long after the previous one, whichever comes first; and at shutdown.
    #[arg(long, env = "AUDIT_CONSUMER_INTEGRITY_CHECKPOINT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub integrity_checkpoint_interval: Duration,

    /// The name of this pod in chain ids. Default: the HOSTNAME environment variable, which
    /// Kubernetes sets to the pod's name.
    #[arg(long, env = "AUDIT_CONSUMER_INTEGRITY_POD")]
    pub integrity_pod: Option<String>,
}

impl IntegrityArgs {
    /// --integrity-subject, or its default for the consumer bound by `binding`.
    pub fn subject(&self, binding: &BindingArgs) -> String {
        self.integrity_subject.clone().unwrap_or_else(|| {
            crate::integrity::witness::default_subject(&binding.stream, &binding.consumer)
        })
    }

    /// --integrity-pod, else HOSTNAME, else the kernel's host name (a pod's name too).
    pub fn pod_name(&self) -> String {
        self.integrity_pod
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }
}

#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "Health and diagnostics")]
pub struct RuntimeArgs {
    /// Address of the HTTP listener serving /livez, /readyz and /metrics.
    #[arg(
        long,
        env = "AUDIT_CONSUMER_HEALTH_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub health_listen: SocketAddr,

    /// How often the consumer's pending counts are polled for metrics and readiness.
    #[arg(long, env = "AUDIT_CONSUMER_INFO_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub info_interval: Duration,

    /// Diagnostics filter for standard error (tracing syntax, e.g. `info` or
    /// `audit_consumer=debug,async_nats=warn`).
    #[arg(long, env = "AUDIT_CONSUMER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// File to write the fatal error to when the consumer exits with one: Kubernetes shows it
    /// as the container's termination message (its `terminationMessagePath`, which the
    /// operator sets to /dev/termination-log). Only the error, as logged; never event content.
    #[arg(long, env = "AUDIT_CONSUMER_TERMINATION_LOG")]
    pub termination_log: Option<PathBuf>,
}

impl Args {
    /// Checks what clap's attributes cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.nats.nats_url.iter().all(|url| url.trim().is_empty()) {
            return Err("--nats-url needs at least one server URL".into());
        }
        if self.binding.stream.is_empty() || self.binding.consumer.is_empty() {
            return Err("--stream and --consumer must not be empty".into());
        }
        if let Some(heartbeat) = self.pull.heartbeat
            && (heartbeat.is_zero() || heartbeat * 2 > self.pull.expires)
        {
            return Err(format!(
                "--heartbeat ({}) must be non-zero and at most half of --expires ({})",
                humantime::format_duration(heartbeat),
                humantime::format_duration(self.pull.expires)
            ));
        }
        if self.pull.expires < Duration::from_millis(2) {
            return Err("--expires must leave room for a heartbeat (at least 2ms)".into());
        }
        if self.binding.create
            && self
                .binding
                .subjects
                .iter()
                .all(|subject| subject.is_empty())
        {
            return Err("--create needs --subjects (the subjects the stream captures)".into());
        }
        if self.integrity.integrity {
            if self.integrity.integrity_key_file.is_none() {
                return Err(
                    "--integrity needs --integrity-key-file (the NKey seed that signs \
                            the chain heads)"
                        .into(),
                );
            }
            if self.integrity.integrity_checkpoint_interval.is_zero() {
                return Err("--integrity-checkpoint-interval must be non-zero".into());
            }
        }
        if self.runtime.info_interval.is_zero() {
            return Err("--info-interval must be non-zero".into());
        }
        self.archive.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(["audit-consumer"].iter().chain(args))
    }

    const REQUIRED: [&str; 6] = [
        "--nats-url",
        "nats://a:4222,nats://b:4222",
        "--stream",
        "S",
        "--consumer",
        "C",
    ];

    #[test]
    fn defaults_match_the_documented_contract() {
        let args = parse(&REQUIRED).unwrap();
        assert_eq!(args.nats.nats_url, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(args.output.format, Format::Json);
        assert_eq!(args.runtime.health_listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(args.pull.batch, 256);
        assert_eq!(args.pull.expires, Duration::from_secs(30));
        assert_eq!(args.pull.heartbeat(), Duration::from_secs(5));
        assert!(!args.binding.create);
        assert!(args.output.redact_keys.is_empty());
        args.validate().unwrap();
    }

    #[test]
    fn options_map_to_fields() {
        let mut all = REQUIRED.to_vec();
        all.extend([
            "--format",
            "text",
            "--redact-keys",
            "password,Token",
            "--batch",
            "64",
            "--max-bytes",
            "1024",
            "--expires",
            "10s",
            "--heartbeat",
            "2s",
            "--user",
            "u",
            "--password-file",
            "/s/p",
            "--tls-ca-file",
            "/s/ca.pem",
            "--tls-first",
            "--js-domain",
            "hub",
            "--health-listen",
            "127.0.0.1:9000",
            "--create",
            "--subjects",
            "audit.>,other",
        ]);
        let args = parse(&all).unwrap();
        assert_eq!(args.output.format, Format::Text);
        assert_eq!(args.output.redact_keys, ["password", "Token"]);
        assert_eq!(args.pull.batch, 64);
        assert_eq!(args.pull.max_bytes, 1024);
        assert_eq!(args.pull.expires, Duration::from_secs(10));
        assert_eq!(args.nats.user.as_deref(), Some("u"));
        assert_eq!(args.nats.password_file, Some(PathBuf::from("/s/p")));
        assert!(args.nats.tls_first);
        assert_eq!(args.nats.js_domain.as_deref(), Some("hub"));
        assert_eq!(args.binding.subjects, ["audit.>", "other"]);
        args.validate().unwrap();
    }

    #[test]
    fn conflicting_or_incomplete_options_are_rejected() {
        for extra in [
            &["--token-file", "/t", "--creds-file", "/c"][..],
            &["--user", "u"],
            &["--user-file", "/u"],
            &["--password-file", "/p"],
            &["--user", "u", "--user-file", "/u", "--password-file", "/p"],
            &["--tls-cert-file", "/c"],
            &["--js-domain", "d", "--js-api-prefix", "p"],
            &["--batch", "0"],
            &["--format", "yaml"],
        ] {
            let mut args = REQUIRED.to_vec();
            args.extend(extra);
            assert!(parse(&args).is_err(), "{extra:?} must be rejected");
        }
        assert!(parse(&["--stream", "S", "--consumer", "C"]).is_err());
    }

    #[test]
    fn the_user_name_can_come_from_a_file() {
        let mut args = REQUIRED.to_vec();
        args.extend([
            "--user-file",
            "/s/username",
            "--password-file",
            "/s/password",
        ]);
        let args = parse(&args).unwrap();
        assert_eq!(args.nats.user_file, Some(PathBuf::from("/s/username")));
        assert_eq!(args.nats.user, None);
    }

    #[test]
    fn integrity_needs_a_signing_key() {
        let mut args = REQUIRED.to_vec();
        args.push("--integrity");
        assert!(parse(&args).unwrap().validate().is_err());
        args.extend(["--integrity-key-file", "/s/seed"]);
        let args = parse(&args).unwrap();
        args.validate().unwrap();
        assert_eq!(args.integrity.integrity_stream, "AUDIT_INTEGRITY");
        assert_eq!(args.integrity.integrity_checkpoint_lines, 10_000);
        assert_eq!(args.integrity.subject(&args.binding), "audit-integrity.S.C");
    }

    #[test]
    fn create_needs_subjects() {
        let mut args = REQUIRED.to_vec();
        args.push("--create");
        assert!(parse(&args).unwrap().validate().is_err());
    }

    #[test]
    fn the_default_heartbeat_fits_a_short_expiry() {
        let mut args = REQUIRED.to_vec();
        args.extend(["--expires", "4s"]);
        let args = parse(&args).unwrap();
        args.validate().unwrap();
        assert_eq!(args.pull.heartbeat(), Duration::from_secs(2));
    }

    #[test]
    fn heartbeat_must_fit_in_expiry() {
        let mut args = REQUIRED.to_vec();
        args.extend(["--expires", "4s", "--heartbeat", "3s"]);
        assert!(parse(&args).unwrap().validate().is_err());
    }
}
