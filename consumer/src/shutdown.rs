//! SIGTERM / SIGINT handling. The first signal turns readiness false at once and tells the
//! worker to stop pulling; a second one exits immediately, for a human at a terminal.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::health::Health;

/// Starts listening; the receiver turns `true` when shutdown begins.
pub fn listen(health: Arc<Health>) -> std::io::Result<watch::Receiver<bool>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        health.begin_shutdown();
        tracing::info!(signal = name, "shutting down: finishing in-flight events");
        sender.send_replace(true);
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::warn!("second signal: exiting without finishing in-flight events");
        std::process::exit(130);
    });
    Ok(receiver)
}
