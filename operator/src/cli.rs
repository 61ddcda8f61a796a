//! Command line: `audit-operator [run]` runs the controllers, `audit-operator crd` prints (or
//! writes) the CRD manifests. Every flag can also be given as an environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{backoff::BackoffPolicy, duration, leader::LeaseSettings, options::Options};

#[derive(Debug, Parser)]
#[command(
    name = "audit-operator",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for running the controllers when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
// Parsed once at start: the size of a variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the controllers (the default).
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crd(CrdArgs),
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Write `<crd name>.yaml` files into this directory instead of printing to stdout.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// How often a healthy resource is checked for drift and its live state refreshed.
    #[arg(long, env = "AUDIT_OPERATOR_REQUEUE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub requeue_interval: Duration,

    /// How often an autoscaled AuditConsumer's lag is read and acted on: at zero pods, the
    /// longest wait before the first pending event brings a pod back (plus its start). Each
    /// look is one consumer info request to NATS.
    #[arg(long, env = "AUDIT_OPERATOR_AUTOSCALING_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub autoscaling_interval: Duration,

    /// First delay before retrying a failing resource; it doubles per failure.
    #[arg(long, env = "AUDIT_OPERATOR_RETRY_BASE_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub retry_base_delay: Duration,

    /// Longest delay between retries of a failing resource (retries never stop).
    #[arg(long, env = "AUDIT_OPERATOR_RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub retry_max_delay: Duration,

    /// Timeout of a NATS connection attempt and of each JetStream request.
    #[arg(long, env = "AUDIT_OPERATOR_NATS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub nats_timeout: Duration,

    /// Watch only this namespace instead of all namespaces.
    #[arg(long, env = "AUDIT_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,

    /// Instance name in the Events the operator writes, usually the pod name.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    /// Image of the consumer pods of an AuditConsumer that sets no `spec.image`.
    #[arg(long, env = "AUDIT_OPERATOR_CONSUMER_IMAGE", default_value = crate::options::DEFAULT_CONSUMER_IMAGE)]
    pub consumer_image: String,

    /// Log line format.
    #[arg(long, env = "AUDIT_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the HTTP listener serving /livez, /readyz and /metrics.
    #[arg(
        long,
        env = "AUDIT_OPERATOR_HEALTH_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub health_listen: SocketAddr,

    /// Reconcile only while holding a coordination.k8s.io Lease, so several replicas can run
    /// with exactly one active. Needs --lease-namespace (the pod's namespace).
    #[arg(
        long,
        env = "AUDIT_OPERATOR_LEADER_ELECTION",
        default_value_t = false,
        action = clap::ArgAction::Set,
        requires = "lease_namespace"
    )]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease, usually the operator pod's own.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a new AuditConsumer waits for the AuditStream it references to appear before
    /// it is reported missing (Stalled, with a Warning): GitOps tools and `kubectl apply -f
    /// <dir>` create both at once, in any order.
    #[arg(long, env = "AUDIT_OPERATOR_MISSING_STREAM_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub missing_stream_grace: Duration,

    /// Reconciliations each controller runs at a time (0: no limit). Waiting ones queue; one
    /// object is never reconciled twice at once.
    #[arg(long, env = "AUDIT_OPERATOR_CONCURRENCY", default_value_t = crate::options::DEFAULT_CONCURRENCY)]
    pub concurrency: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text).map_err(|e| e.to_string())
}

impl RunArgs {
    pub fn options(&self) -> Options {
        Options {
            requeue_interval: self.requeue_interval,
            autoscaling_interval: self.autoscaling_interval,
            retry: BackoffPolicy {
                base: self.retry_base_delay,
                cap: self.retry_max_delay,
            },
            nats_timeout: self.nats_timeout,
            namespace: self.namespace.clone(),
            instance: self.instance.clone(),
            consumer_image: self.consumer_image.clone(),
            leader_election: self.lease_settings(),
            concurrency: self.concurrency,
            missing_stream_grace: self.missing_stream_grace,
        }
    }

    fn lease_settings(&self) -> Option<LeaseSettings> {
        if !self.leader_election {
            return None;
        }
        let namespace = self.lease_namespace.clone()?;
        // Two replicas must never share an identity; the pod name is unique, and the
        // fallback keeps a locally run operator distinct from any pod.
        let identity = self
            .instance
            .clone()
            .unwrap_or_else(|| format!("audit-operator-{}", std::process::id()));
        Some(LeaseSettings::new(namespace, identity))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default_and_flags_reach_the_options() {
        let cli = Cli::try_parse_from([
            "audit-operator",
            "--requeue-interval",
            "5s",
            "--namespace",
            "ns",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let options = cli.run.options();
        assert_eq!(options.requeue_interval, Duration::from_secs(5));
        assert_eq!(options.namespace.as_deref(), Some("ns"));
        assert_eq!(options.retry.cap, Duration::from_secs(300));
    }

    #[test]
    fn leader_election_takes_its_lease_namespace_and_pod_name() {
        let cli = Cli::try_parse_from([
            "audit-operator",
            "--leader-election",
            "true",
            "--lease-namespace",
            "audit-system",
            "--instance",
            "audit-operator-7d9f-abcde",
        ])
        .unwrap();
        let lease = cli
            .run
            .options()
            .leader_election
            .expect("leader election is on");
        assert_eq!(lease.namespace, "audit-system");
        assert_eq!(lease.identity, "audit-operator-7d9f-abcde");
        assert!(
            Cli::try_parse_from(["audit-operator", "--leader-election", "true"]).is_err(),
            "a Lease needs a namespace"
        );
        let default = Cli::try_parse_from(["audit-operator"]).unwrap();
        assert!(default.run.options().leader_election.is_none());
    }

    #[test]
    fn malformed_duration_is_refused() {
        assert!(
            Cli::try_parse_from(["audit-operator", "run", "--requeue-interval", "soon"]).is_err()
        );
    }
}
