//! The audit-consumer binary: arguments, diagnostics on standard error, exit status; and its
//! one subcommand, `verify`.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use audit_consumer::config::Args;
use audit_consumer::integrity::verify_command::{self, VerifyArgs};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // A subcommand by hand: the consumer's own options stay a flat list that the operator's
    // `Flag`s are tested against, with its required options required.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| first == "verify")
    {
        return verify(VerifyArgs::parse_from(std::env::args_os().skip(1)));
    }
    let args = Args::parse();
    let filter = match EnvFilter::try_new(&args.runtime.log_level) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!(
                "error: invalid --log-level {:?}: {err}",
                args.runtime.log_level
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    // Two workers: one for the pull/write loop, one for probes, pings and the NATS connection.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(%err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let termination_log = args.runtime.termination_log.clone();
    let result = runtime.block_on(audit_consumer::run(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = err.describe();
            tracing::error!("{message}");
            if let Some(path) = termination_log {
                audit_consumer::termination::record(&path, &message);
            }
            ExitCode::from(err.exit_code())
        }
    }
}

/// The report on standard output, warnings and errors on standard error.
fn verify(args: VerifyArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(%err, "cannot start the async runtime");
            return ExitCode::from(2);
        }
    };
    let unwitnessed_ok = args.unwitnessed_ok;
    let result = runtime.block_on(verify_command::run(args, &mut std::io::stdout().lock()));
    match result {
        Ok(verdict) => ExitCode::from(verdict.exit_code(unwitnessed_ok)),
        // Whatever stopped the check, the log was not shown to be complete.
        Err(err) => {
            tracing::error!("{}", err.describe());
            ExitCode::from(2)
        }
    }
}
