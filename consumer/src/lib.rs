//! audit-consumer: drains a durable NATS JetStream pull consumer, writes one log line per audit
//! event to standard output (or into create-only objects of an S3 archive), and acks each event
//! only after its line has been written (or its object stored).
//!
//! `run` wires the parts together; `main.rs` only parses arguments and sets up diagnostics.

#![forbid(unsafe_code)]

pub mod archive;
pub mod backoff;
pub mod bind;
pub mod config;
pub mod connect;
pub mod delivery_limit;
pub mod error;
pub mod escape;
pub mod event;
pub mod flag;
pub mod format;
pub mod health;
pub mod integrity;
pub mod json;
pub mod metrics;
pub mod monitor;
pub mod redact;
pub mod shutdown;
pub mod sink;
mod swar;
pub mod termination;
pub mod worker;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::archive::Archive;
use crate::config::Args;
use crate::delivery_limit::DeliveryLimit;
use crate::error::{Error, Result};
use crate::format::LineRenderer;
use crate::health::Health;
use crate::integrity::Integrity;
use crate::integrity::witness::{self, WitnessConfig};
use crate::metrics::Metrics;
use crate::redact::RedactKeys;
use crate::sink::Sink;
use crate::worker::Worker;

/// How long the final flush of acks may take before the connection is closed anyway.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(args: Args) -> Result<()> {
    args.validate().map_err(Error::Config)?;
    let metrics = Arc::new(Metrics::new());
    // Readiness tolerates a few missed info polls and one missed heartbeat before it turns false.
    let stale_after = (args.runtime.info_interval * 3).max(args.pull.heartbeat() * 3);
    let health = Arc::new(Health::new(stale_after));

    let address = args.runtime.health_listen;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| Error::HealthListen { address, source })?;
    tokio::spawn(health::serve(listener, health.clone(), metrics.clone()));
    let shutdown = shutdown::listen(health.clone())
        .map_err(|err| Error::Config(format!("cannot handle signals: {err}")))?;

    // Read before connecting: a missing or wrong key is a configuration error, found at once.
    let integrity_key = match (
        &args.integrity.integrity,
        &args.integrity.integrity_key_file,
    ) {
        (true, Some(path)) => Some(integrity::read_key(path).await?),
        _ => None,
    };

    // One start for the archive's run and the chain: `verify --archive` finds a chain's
    // segments by it.
    let started_unix_nanos = integrity::now_nanos();
    // The bucket is checked before NATS: a wrong bucket or missing Object Lock is a
    // configuration error the pod reports at once.
    let archive = match args.archive.output {
        config::OutputKind::Archive => Some(Box::new(
            Archive::start(&args, started_unix_nanos, metrics.clone()).await?,
        )),
        config::OutputKind::Stdout => None,
    };

    let client = connect::connect(&args.nats, metrics.clone()).await?;
    health.set_client(client.clone());
    let (bound, bound_rx) = watch::channel(None);
    let delivery_limit = Arc::new(DeliveryLimit::default());
    let monitor = tokio::spawn(monitor::run(
        bound_rx,
        args.runtime.info_interval,
        health.clone(),
        metrics.clone(),
        delivery_limit.clone(),
    ));

    // Our own unbuffered handle on fd 1: the sink does the buffering, one write per batch.
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(Error::OutputClosed)?;
    let js = connect::jetstream(client.clone(), &args.nats);
    let (integrity, witness_task) = match integrity_key {
        Some(key) => {
            let config = WitnessConfig {
                stream: args.integrity.integrity_stream.clone(),
                subject: args.integrity.subject(&args.binding),
                every_lines: args.integrity.integrity_checkpoint_lines,
                interval: args.integrity.integrity_checkpoint_interval,
            };
            let (witness, task) = witness::start(js.clone(), key, config, metrics.clone());
            let integrity = Integrity::new(
                args.output.format,
                &args.binding.consumer,
                &args.integrity.pod_name(),
                started_unix_nanos,
                witness,
            );
            (Some(integrity), Some(task))
        }
        None => (None, None),
    };
    let worker = Worker {
        js,
        renderer: LineRenderer::new(
            args.output.format,
            RedactKeys::new(&args.output.redact_keys),
        ),
        sink: Sink::new(stdout),
        archive,
        keep_alive_due: None,
        waiting: Default::default(),
        integrity,
        binding: args.binding,
        pull: args.pull,
        health: health.clone(),
        metrics,
        delivery_limit,
        shutdown,
        bound,
    };
    let result = worker.run().await;
    health.begin_shutdown();
    monitor.abort();
    // Everything written is flushed: its head goes out before the connection closes.
    if let Some(task) = witness_task {
        task.finish(FINAL_FLUSH_TIMEOUT).await;
    }

    // Acks and naks are pipelined publishes; make sure they reached the server before closing.
    match tokio::time::timeout(FINAL_FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(%err, "final flush failed; unacked events will be redelivered")
        }
        Err(_) => tracing::warn!("final flush timed out; unacked events will be redelivered"),
    }
    if let Err(err) = client.drain().await {
        tracing::debug!(%err, "drain failed");
    }
    tracing::info!("stopped");
    result
}
