//! audit-operator: runs NATS JetStream audit streams (and, later, their consumers) as
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
pub mod health;
pub mod leader;
pub mod metrics;
pub mod nats_pool;
pub mod options;
pub mod stream;

use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};

pub use options::Options;

/// Name under which the operator reports Events.
pub const CONTROLLER_NAME: &str = "audit-operator";

/// Runs every controller until `shutdown` completes. The controllers share one NATS
/// connection pool, so a stream and the consumers reading it use one connection.
pub async fn run(
    client: kube::Client,
    options: Options,
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
    // Both controllers stop on the same signal.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    tokio::join!(
        stream::run(
            client.clone(),
            options.clone(),
            pool.clone(),
            recorder.clone(),
            shutdown.clone()
        ),
        consumer::run(client, options, pool, recorder, shutdown),
    );
}
