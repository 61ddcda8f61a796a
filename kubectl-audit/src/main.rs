//! `kubectl audit`: a kubectl plugin for audit-operator. Installed by putting this binary on
//! PATH (kubectl finds `kubectl-audit`), or with krew (deploy/krew/audit.yaml); see
//! docs/kubectl-audit.md.

#![forbid(unsafe_code)]

mod check;
mod cli;
mod client;
mod error;
mod logs;
mod status;
mod verify;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::error::Result;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Output is for people and scripts; diagnostics only on request (RUST_LOG=debug).
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Runs the command; `Ok` carries the exit status (`verify` passes on the verifier's).
async fn run(cli: Cli) -> Result<u8> {
    let connection = client::connect(&cli.connection).await?;
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Status(args) => status::run(&connection, args, &mut out).await.map(|()| 0),
        Command::Check(args) => check::run(&connection, args, &mut out).await.map(|()| 0),
        Command::Verify(args) => verify::run(&connection, args, &mut out).await,
        Command::Logs(args) => logs::run(&connection, args, &mut out).await.map(|()| 0),
    }
}
