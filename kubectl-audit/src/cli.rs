//! The command line: `kubectl audit <command>`, with kubectl's own connection flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// kubectl plugin for audit-operator: the state of AuditStreams and AuditConsumers on one
/// screen, whether the operator is up, an archive verification run now, and the consumer
/// pods' lines in stream order.
#[derive(Debug, Parser)]
#[command(name = "kubectl-audit", bin_name = "kubectl audit", version)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Which cluster and namespace, as kubectl takes them. KUBECONFIG is read as kubectl does.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Path of the kubeconfig file to use (instead of KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,

    /// Namespace of the resources; the context's namespace when omitted.
    #[arg(short = 'n', long, global = true, env = "KUBECTL_AUDIT_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ready and why, the stream against its limits, pending events, pods, integrity
    /// checkpoints, the last archive verification and recent Warning Events.
    Status(StatusArgs),
    /// Waits until the CRDs are established and an operator replica leads and is ready.
    Check(CheckArgs),
    /// Runs the archive verification of an AuditConsumer now, as a Job from its CronJob, and
    /// exits with its verdict: 0 complete, 1 problems, 3 unwitnessed lines, 2 failure.
    Verify(VerifyArgs),
    /// The consumer pods' lines, previous containers' included, merged in stream order.
    Logs(LogsArgs),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// A stable JSON document, for scripts.
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// An AuditStream (shown with the AuditConsumers that read it) or an AuditConsumer (shown
    /// with its AuditStream). Every one of the namespace when omitted.
    pub name: Option<String>,

    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,

    /// How far back Warning Events are shown.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub events_since: Duration,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// How long to wait for everything to be ready (0s: look once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Namespace of the operator (its leader Lease and pods); searched in every namespace when
    /// omitted.
    #[arg(long, env = "KUBECTL_AUDIT_OPERATOR_NAMESPACE")]
    pub operator_namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The AuditConsumer whose archive to verify.
    pub name: String,

    /// How long to follow the Job before giving up on it (it keeps running).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Output format of the report.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The AuditConsumer whose pods' lines to show.
    pub name: String,

    /// Keep following the running pods' new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Only lines newer than this (e.g. `10m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
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
    fn flags_go_before_or_after_the_command() {
        let cli =
            Cli::try_parse_from(["kubectl-audit", "status", "-n", "ns", "-o", "json"]).unwrap();
        assert_eq!(cli.connection.namespace.as_deref(), Some("ns"));
        let Command::Status(status) = cli.command else {
            panic!("status")
        };
        assert_eq!(status.output, Output::Json);
        assert!(Cli::try_parse_from(["kubectl-audit", "status", "x", "-A"]).is_err());
    }
}
