#![forbid(unsafe_code)]

use std::io::IsTerminal as _;

use anyhow::Context as _;
use audit_operator::cli::{Cli, Command, LogFormat, RunArgs};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd(args)) => write_crds(args.output_dir),
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    }
}

fn write_crds(output_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    match output_dir {
        None => print!("{}", audit_operator::crd::to_yaml()?),
        Some(dir) => {
            for (file, yaml) in audit_operator::crd::files()? {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal; a file or a log collector gets plain text.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let telemetry = audit_operator::Telemetry::default();
    // Bound before the controllers start, so a busy port fails the start, not a probe later.
    let listener = tokio::net::TcpListener::bind(args.health_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.health_listen))?;
    tokio::spawn(audit_operator::health::serve(
        listener,
        telemetry.readiness.clone(),
        telemetry.metrics.clone(),
    ));
    match audit_operator::run(client, args.options(), telemetry, shutdown_signal()).await {
        Ok(()) => Ok(()),
        Err(lost @ audit_operator::RunError::LeadershipLost { .. }) => {
            tracing::error!(error = %lost, "exiting");
            // At once, not through the runtime's shutdown, which waits for blocking tasks and
            // lets aborted ones run to their next await: nothing of this process may still
            // write once a standby takes over. The restarted container rejoins as a standby.
            std::process::exit(1);
        }
    }
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
