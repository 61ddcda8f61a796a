//! The audit-consumer binary: arguments, diagnostics on standard error, exit status.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use audit_consumer::config::Args;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
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
    let result = runtime.block_on(audit_consumer::run(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            tracing::error!("{message}");
            ExitCode::from(err.exit_code())
        }
    }
}
