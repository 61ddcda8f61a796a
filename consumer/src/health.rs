//! Liveness, readiness and the metrics endpoint.
//!
//! Liveness only proves that the runtime answers: a NATS outage must make the pod unready, not
//! restart it in a loop. Readiness is true only while the client is connected, the consumer is
//! bound, the server has been heard from recently (a delivered batch or a successful consumer
//! info poll), the last write to standard output succeeded, and no shutdown has begun.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::connection::State;
use axum::Router;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

pub struct Health {
    started: Instant,
    client: OnceLock<Client>,
    bound: AtomicBool,
    output_ok: AtomicBool,
    shutting_down: AtomicBool,
    /// Milliseconds after `started` of the last sign of life from the server.
    last_contact: AtomicU64,
    stale_after: Duration,
}

impl Health {
    /// `stale_after`: how long without any word from the server before the pod turns unready.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            client: OnceLock::new(),
            bound: AtomicBool::new(false),
            output_ok: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
            last_contact: AtomicU64::new(0),
            stale_after,
        }
    }

    pub fn set_client(&self, client: Client) {
        let _ = self.client.set(client);
    }

    pub fn set_bound(&self, bound: bool) {
        self.bound.store(bound, Ordering::Relaxed);
    }

    pub fn set_output_ok(&self, ok: bool) {
        self.output_ok.store(ok, Ordering::Relaxed);
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Records that the server answered: a batch arrived or a consumer info poll succeeded.
    pub fn contact(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_contact.store(millis, Ordering::Relaxed);
    }

    /// `Ok` when ready, otherwise the reason, for the probe's response body.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        match self.client.get().map(Client::connection_state) {
            Some(State::Connected) => {}
            _ => return Err("not connected to NATS"),
        }
        if !self.output_ok.load(Ordering::Relaxed) {
            return Err("writing to standard output failed");
        }
        if !self.bound.load(Ordering::Relaxed) {
            return Err("consumer not bound");
        }
        let last = Duration::from_millis(self.last_contact.load(Ordering::Relaxed));
        if self.started.elapsed().saturating_sub(last) > self.stale_after {
            return Err("no word from the NATS server recently");
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Serves until the process exits; probes must keep answering during shutdown.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Arc<Metrics>) {
    let router = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Shared { health, metrics });
    if let Err(err) = axum::serve(listener, router).await {
        tracing::error!(%err, "health listener failed");
    }
}

async fn readyz(Extract(shared): Extract<Shared>) -> (StatusCode, String) {
    match shared.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_text(Extract(shared): Extract<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_without_a_connection_or_during_shutdown() {
        let health = Health::new(Duration::from_secs(15));
        health.set_bound(true);
        health.contact();
        assert_eq!(health.readiness(), Err("not connected to NATS"));
        health.begin_shutdown();
        assert_eq!(health.readiness(), Err("shutting down"));
    }
}
