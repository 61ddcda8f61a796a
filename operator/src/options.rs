//! Settings of a running operator, independent of how they were given (flags, a test).

use std::time::Duration;

use crate::backoff::BackoffPolicy;
use crate::leader::LeaseSettings;

#[derive(Clone, Debug)]
pub struct Options {
    /// How often a healthy resource is checked again for drift and live state.
    pub requeue_interval: Duration,
    /// How often an autoscaled AuditConsumer's lag is read and acted on.
    pub autoscaling_interval: Duration,
    /// Delays between retries of a failing resource.
    pub retry: BackoffPolicy,
    /// Timeout of a NATS connection attempt and of each JetStream request.
    pub nats_timeout: Duration,
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Identity in the Events the operator writes (`reportingInstance`), e.g. the pod name.
    pub instance: Option<String>,
    /// Image of the consumer pods of an AuditConsumer that sets none.
    pub consumer_image: String,
    /// Reconcile only while holding this Lease; always when `None`.
    pub leader_election: Option<LeaseSettings>,
    /// Reconciliations one controller runs at a time; 0 means no limit.
    pub concurrency: u16,
    /// How long a new AuditConsumer waits for its AuditStream to appear.
    pub missing_stream_grace: Duration,
}

/// Reconciliations in flight per controller. A reconciliation mostly waits on the API server
/// and NATS, so a few in flight keep both busy; without a limit, a bulk apply of 1,000
/// resources started 1,000 at once, which competed with the API server for the CPU and made
/// the apply itself 3x slower (docs/benchmarks.md, "Operator at scale").
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// The consumer image matching this operator's version.
pub const DEFAULT_CONSUMER_IMAGE: &str = concat!(
    "ghcr.io/eventsaudit/audit-consumer:",
    env!("CARGO_PKG_VERSION")
);

impl Default for Options {
    fn default() -> Self {
        Self {
            requeue_interval: Duration::from_secs(60),
            autoscaling_interval: Duration::from_secs(5),
            retry: BackoffPolicy {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(300),
            },
            nats_timeout: Duration::from_secs(5),
            namespace: None,
            instance: None,
            consumer_image: DEFAULT_CONSUMER_IMAGE.to_owned(),
            leader_election: None,
            concurrency: DEFAULT_CONCURRENCY,
            missing_stream_grace: Duration::from_secs(60),
        }
    }
}
