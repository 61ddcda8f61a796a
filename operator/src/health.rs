//! The operator's HTTP listener: `/livez`, `/readyz` and `/metrics` for probes and scrapers.
//!
//! Liveness says only that the process and its runtime answer: an unreachable NATS server or
//! API server must not turn into a restart loop. Readiness turns true once every watch has
//! delivered its first list, standbys included (they watch too), so a rolling update of the
//! operator waits for a replica that could take over at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Whether the operator is ready to serve: set once its watches are synced.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct HealthState {
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

/// Serves the health and metrics endpoints on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving /livez, /readyz and /metrics");
    }
    axum::serve(listener, router(readiness, metrics)).await
}

fn router(readiness: Readiness, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(HealthState { readiness, metrics })
}

async fn ready(State(state): State<HealthState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "watches not synced yet")
    }
}

async fn render_metrics(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
