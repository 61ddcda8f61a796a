//! The one error type of the consumer. Each variant is fatal for the process and says what the
//! user can do about it; transient trouble (an outage, a failed write) is retried inside the
//! worker and never becomes an `Error`.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("cannot read the {what} file {path}: {source}")]
    ReadSecret {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid NATS connection settings: {0}")]
    Connect(#[source] async_nats::ConnectError),

    #[error("cannot serve health checks on {address}: {source}")]
    HealthListen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "consumer {consumer:?} on stream {stream:?} does not exist (still missing after {}); \
         create it (the operator does this for an AuditConsumer resource) or run with --create",
        humantime::format_duration(*grace)
    )]
    ConsumerMissing {
        stream: String,
        consumer: String,
        grace: Duration,
    },

    #[error("consumer {consumer:?} on stream {stream:?} cannot be used: {reason}")]
    ConsumerUnusable {
        stream: String,
        consumer: String,
        reason: String,
    },

    #[error("standard output is closed ({0}); events are no longer being written")]
    OutputClosed(#[source] std::io::Error),

    #[error("the archive cannot be used: {0}")]
    Archive(String),

    #[error("cannot read the log {path}: {source}")]
    ReadLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot read the chain heads from the witness stream {stream:?}: {reason}; check \
         --integrity-stream and the connection options"
    )]
    Witness { stream: String, reason: String },

    #[error("cannot write the report to {path}: {source}")]
    WriteReport {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Process exit status: 2 for a configuration the user must fix, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_)
            | Error::ReadSecret { .. }
            | Error::Connect(_)
            | Error::ReadLog { .. }
            | Error::Archive(_)
            | Error::Witness { .. }
            | Error::WriteReport { .. } => 2,
            _ => 1,
        }
    }

    /// The error with its causes, as one line.
    pub fn describe(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }
}
