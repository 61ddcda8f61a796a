//! Periodic consumer info polls: the pending and ack-pending gauges, the consumer's current
//! `max_deliver`, and a sign of life for readiness while no events flow. One request per
//! interval, never one per message.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::delivery_limit::DeliveryLimit;
use crate::health::Health;
use crate::metrics::Metrics;

/// Polls whichever consumer the worker is bound to; runs until aborted.
pub async fn run(
    bound: watch::Receiver<Option<PullConsumer>>,
    interval: Duration,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    delivery_limit: Arc<DeliveryLimit>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(mut consumer) = bound.borrow().clone() else {
            continue;
        };
        match consumer.info().await {
            Ok(info) => {
                metrics.set_consumer_counts(info.num_pending, info.num_ack_pending);
                delivery_limit.set(info.config.max_deliver);
                health.contact();
            }
            Err(err) => tracing::debug!(%err, "consumer info poll failed"),
        }
    }
}
