//! audit-operator: runs NATS JetStream audit streams and the consumers that drain them as
//! Kubernetes custom resources.
//!
//! [`run`] starts the watches and, while this replica leads, every controller on a given
//! `kube::Client`, so the binary and the integration tests run exactly the same code.
//!
//! Both controllers ([`stream`], [`consumer`]) run in one shell ([`controller`]) through the
//! pipeline dereference -> validate -> build -> apply -> status, and reach NATS through
//! [`connection`]; docs/development.md's Architecture section maps every
//! module.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod conditions;
pub mod connection;
pub mod consumer;
pub mod controller;
pub mod crd;
pub mod duration;
pub mod error;
pub mod finalizer;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod options;
pub mod ownership;
pub mod report;
pub mod stream;
pub mod triggers;
pub mod watches;

use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};

use crate::watches::Watches;

pub use options::Options;

/// Name under which the operator reports Events.
pub const CONTROLLER_NAME: &str = "audit-operator";

/// What the controllers share with the health listener.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub metrics: Arc<metrics::Metrics>,
    pub readiness: health::Readiness,
}

/// How a run of the operator ended other than by the shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("lost the leader Lease {lease} ({why}); stopping so that only the new leader writes")]
    LeadershipLost { lease: String, why: leader::Loss },
}

/// Runs the operator until `shutdown` completes: the watches from the start, the controllers
/// while this replica leads (always, without leader election). Readiness turns true once every
/// watch has synced, leader or standby: a standby is as ready to take over as the leader is
/// to lead. With leader election, a lost Lease ends the run at once with an error.
pub async fn run(
    client: kube::Client,
    options: Options,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let (watches, watching) = Watches::start(&client, options.namespace.as_deref());
    let serve = async {
        tokio::select! {
            () = watches.synced() => {}
            () = shutdown.clone() => return Ok(()),
        }
        tracing::info!("every watch has synced; ready");
        telemetry.readiness.set_ready(true);
        let result = lead(&client, &options, &telemetry, &watches, shutdown).await;
        telemetry.readiness.set_ready(false);
        result
    };
    tokio::select! {
        result = serve => result,
        () = watching => Ok(()),
    }
}

/// Runs the controllers while this replica may write: at once without leader election,
/// otherwise from the moment it holds the Lease until `shutdown` or until the Lease is lost.
async fn lead(
    client: &kube::Client,
    options: &Options,
    telemetry: &Telemetry,
    watches: &Watches,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) -> Result<(), RunError> {
    let Some(lease) = &options.leader_election else {
        telemetry.metrics.set_leader(true);
        run_controllers(client, options, telemetry, watches, shutdown).await;
        return Ok(());
    };
    let renewed_at = tokio::select! {
        renewed_at = leader::acquire(client.clone(), lease) => renewed_at,
        () = shutdown.clone() => return Ok(()),
    };
    telemetry.metrics.set_leader(true);
    // On losing the Lease the controllers are dropped at once rather than shut down
    // gracefully: a graceful shutdown waits for in-flight reconciliations, which could still
    // be writing after a standby has taken over. Dropping them aborts their tasks, and the
    // binary exits right after.
    tokio::select! {
        () = run_controllers(client, options, telemetry, watches, shutdown) => {
            leader::release(client.clone(), lease).await;
            telemetry.metrics.set_leader(false);
            Ok(())
        }
        why = leader::hold_until_lost(client.clone(), lease, renewed_at) => {
            telemetry.metrics.set_leader(false);
            Err(RunError::LeadershipLost { lease: lease.name.clone(), why })
        }
    }
}

/// Runs both controllers until `shutdown`. They share one NATS connection pool, so a stream
/// and the consumers reading it use one connection; it lives as long as this leadership term.
async fn run_controllers(
    client: &kube::Client,
    options: &Options,
    telemetry: &Telemetry,
    watches: &Watches,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let shared = controller::Shared {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_owned(),
                instance: options.instance.clone(),
            },
        ),
        pool: Arc::new(connection::NatsPool::new(options.nats_timeout)),
        options: options.clone(),
        metrics: telemetry.metrics.clone(),
    };
    tokio::join!(
        stream::run(shared.clone(), watches, shutdown.clone()),
        consumer::run(shared, watches, shutdown),
    );
}
