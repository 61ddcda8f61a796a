//! audit-operator: runs NATS JetStream audit streams and the consumers that drain them as
//! Kubernetes custom resources.
//!
//! [`run`] starts every controller on a given `kube::Client`, so the binary and the
//! integration tests run exactly the same code.

pub mod backoff;
pub mod cli;
pub mod conditions;
pub mod consumer;
pub mod crd;
pub mod duration;
pub mod error;
pub mod finalizer;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod nats_pool;
pub mod options;
pub mod report;
pub mod stream;
pub mod triggers;

use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};

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

/// Runs every controller until `shutdown` completes, or, with leader election, from the
/// moment this replica holds the Lease until `shutdown` or until the Lease is lost.
pub async fn run(
    client: kube::Client,
    options: Options,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let Some(lease) = options.leader_election.clone() else {
        telemetry.metrics.set_leader(true);
        run_controllers(client, options, telemetry, shutdown).await;
        return Ok(());
    };
    // A standby is healthy and able to take over: ready, so that a rolling update of the
    // operator can proceed while another replica leads.
    telemetry.readiness.set_ready(true);
    let renewed_at = tokio::select! {
        renewed_at = leader::acquire(client.clone(), &lease) => renewed_at,
        () = shutdown.clone() => return Ok(()),
    };
    telemetry.metrics.set_leader(true);
    telemetry.readiness.set_ready(false);
    // On losing the Lease the controllers are dropped at once rather than shut down
    // gracefully: a graceful shutdown waits for in-flight reconciliations, which could still
    // be writing after a standby has taken over. Dropping them aborts their tasks, and the
    // binary exits right after. A graceful shutdown, once every reconciliation is done,
    // releases the Lease for a standby to take at once.
    tokio::select! {
        () = run_controllers(client.clone(), options, telemetry.clone(), shutdown) => {
            leader::release(client, &lease).await;
            telemetry.metrics.set_leader(false);
            Ok(())
        }
        why = leader::hold_until_lost(client.clone(), &lease, renewed_at) => {
            telemetry.metrics.set_leader(false);
            telemetry.readiness.set_ready(false);
            Err(RunError::LeadershipLost { lease: lease.name, why })
        }
    }
}

/// What each controller gets from the operator around it: where to count its reconciliations,
/// and whom to tell once its watch has delivered the first full list.
pub struct ControllerHooks {
    pub metrics: Arc<metrics::Metrics>,
    synced: tokio::sync::oneshot::Sender<()>,
}

impl ControllerHooks {
    /// Reports the controller synced once `store` holds the first complete list.
    pub fn report_synced_when_ready<K>(self, store: kube::runtime::reflector::Store<K>)
    where
        K: kube::runtime::reflector::Lookup + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        tokio::spawn(async move {
            // The store's readiness signal wakes only the latest of several waiters, and the
            // controller itself waits on it too; polling again after a short timeout sees the
            // value once it is set instead of sleeping forever.
            loop {
                let wait = store.wait_until_ready();
                match tokio::time::timeout(std::time::Duration::from_millis(250), wait).await {
                    Ok(Ok(())) => {
                        let _ = self.synced.send(());
                        return;
                    }
                    Ok(Err(_writer_dropped)) => return,
                    Err(_timed_out) => {}
                }
            }
        });
    }
}

/// Runs both controllers until `shutdown`. They share one NATS connection pool, so a stream
/// and the consumers reading it use one connection. Readiness turns true once both watches
/// have synced.
async fn run_controllers(
    client: kube::Client,
    options: Options,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let pool = Arc::new(nats_pool::NatsPool::new(options.nats_timeout));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.to_owned(),
            instance: options.instance.clone(),
        },
    );
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let (stream_synced, stream_synced_rx) = tokio::sync::oneshot::channel();
    let (consumer_synced, consumer_synced_rx) = tokio::sync::oneshot::channel();
    let readiness = telemetry.readiness.clone();
    let report_ready = tokio::spawn(async move {
        if stream_synced_rx.await.is_ok() && consumer_synced_rx.await.is_ok() {
            tracing::info!("every watch has synced; ready");
            readiness.set_ready(true);
        }
    });
    let hooks = |synced| ControllerHooks {
        metrics: telemetry.metrics.clone(),
        synced,
    };
    tokio::join!(
        stream::run(
            client.clone(),
            options.clone(),
            pool.clone(),
            recorder.clone(),
            hooks(stream_synced),
            shutdown.clone()
        ),
        consumer::run(
            client,
            options,
            pool,
            recorder,
            hooks(consumer_synced),
            shutdown
        ),
    );
    report_ready.abort();
    telemetry.readiness.set_ready(false);
}
