//! The AuditConsumer controller: reconciles each AuditConsumer through the pipeline
//! [`dereference`] (AuditStream, Secrets) -> [`validate`] -> [`build`] (durable consumer,
//! workload objects) -> [`apply`] (NATS, server-side apply) -> [`status`], then the optional
//! [`features`] (max-deliveries advisories, witnessed checkpoints, the archive's verification)
//! in one loop, run by `reconcile`, and deletes the durable consumer per `deletionPolicy`
//! behind a finalizer (`cleanup`).
//!
//! Besides AuditConsumers it watches the objects it owns (a deleted or hand-edited Deployment
//! is put back at once), the AuditStreams (a stream turning Ready requeues its consumers) and
//! Secrets (a rotated credential or integrity signing key rolls the pods that mount it). An
//! AuditConsumer with a `maxDeliver` is also woken by NATS's advisories about events that reached it, and by the
//! server refusing the operator's subscription to them.

pub mod apply;
pub mod archive;
pub mod autoscale;
pub mod build;
mod cleanup;
pub mod dereference;
pub mod features;
pub mod integrity;
pub mod max_deliveries;
pub mod pods;
mod reconcile;
pub mod status;
pub mod validate;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};

use self::max_deliveries::MaxDeliveries;
use crate::{
    controller::{self, Reconciler, Shared},
    crd::{consumer::AuditConsumer, stream::AuditStream},
    error::Result,
    watches::{Watches, WorkloadCaches},
};

/// Finalizer that keeps an AuditConsumer until its durable consumer was deleted or retained.
pub const FINALIZER: &str = "audit.eventsaudit.io/consumer-cleanup";

type Guarded = DeserializeGuard<AuditConsumer>;
type GuardedStream = DeserializeGuard<AuditStream>;

/// What the AuditConsumer controller keeps beyond the shared context.
pub struct Consumers {
    /// The subscriptions to the max-deliveries advisories, and their counts.
    max_deliveries: MaxDeliveries,
    /// The workload objects as the watches last saw them.
    workloads: WorkloadCaches,
    /// The AuditStreams as the watch last saw them.
    streams: Store<GuardedStream>,
    /// The autoscaled consumers' recent recommendations, for the stabilization windows.
    scaling: autoscale::Histories,
}

type Context = controller::Context<Consumers>;

impl Reconciler for Consumers {
    type Resource = AuditConsumer;
    const FINALIZER: &'static str = FINALIZER;

    async fn apply(ctx: &Context, consumer: &AuditConsumer) -> Result<Action> {
        reconcile::apply(consumer, ctx).await
    }

    async fn cleanup(ctx: &Context, consumer: &AuditConsumer) -> Result<Action> {
        cleanup::cleanup(consumer, ctx).await
    }
}

/// Runs the AuditConsumer controller, fed by `watches`, until `shutdown` completes.
pub async fn run(
    shared: Shared,
    watches: &Watches,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let by_stream = watches.consumers.clone();
    let by_secret = watches.consumers.clone();
    let streams = watches.streams.clone();
    let (max_deliveries, advised) = MaxDeliveries::new(shared.pool.subscription_refusals());
    let reconnected = crate::triggers::reconnected::<AuditConsumer>(&shared.pool);
    let ctx = Arc::new(Context::new(
        shared,
        Consumers {
            max_deliveries,
            workloads: watches.workloads.clone(),
            streams: watches.streams.clone(),
            scaling: autoscale::Histories::default(),
        },
    ));
    let controller =
        Controller::for_stream(watches.consumer_changes.listen(), watches.consumers.clone())
            .owns_stream(watches.deployments.listen())
            .owns_stream(watches.service_accounts.listen())
            .owns_stream(watches.disruption_budgets.listen())
            .owns_stream(watches.network_policies.listen())
            .owns_stream(watches.cron_jobs.listen())
            .watches_stream(watches.stream_readiness_changes.listen(), move |stream| {
                consumers_of_stream(&by_stream, &stream.name_any(), stream.namespace())
            })
            .watches_stream(watches.secret_changes.listen(), move |secret| {
                consumers_using_secret(&by_secret, &streams, &secret)
            })
            .watches_stream(advised.map(Ok), |advised| {
                Some(
                    ObjectRef::new(&advised.name_any())
                        .within(&advised.namespace().unwrap_or_default()),
                )
            })
            .watches_stream(reconnected, |consumer| {
                Some(
                    ObjectRef::new(&consumer.name_any())
                        .within(&consumer.namespace().unwrap_or_default()),
                )
            });
    controller::run(controller, ctx, shutdown).await;
}

/// The AuditConsumers in `namespace` that read AuditStream `stream`.
fn consumers_of_stream(
    consumers: &Store<Guarded>,
    stream: &str,
    namespace: Option<String>,
) -> Vec<ObjectRef<Guarded>> {
    consumers
        .state()
        .iter()
        .filter_map(|guarded| guarded.0.as_ref().ok())
        .filter(|c| c.namespace() == namespace && c.spec.stream_ref.name == stream)
        .map(|c| ObjectRef::new(&c.name_any()).within(&c.namespace().unwrap_or_default()))
        .collect()
}

/// The AuditConsumers whose pods mount `secret`: their AuditStream's connection reads it, or
/// it holds their integrity signing key or their archive's credentials or CA.
fn consumers_using_secret(
    consumers: &Store<Guarded>,
    streams: &Store<GuardedStream>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<Guarded>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    let signing = consumers
        .state()
        .into_iter()
        .filter_map(|guarded| guarded.0.as_ref().ok().cloned())
        .filter(|c| c.namespace() == namespace)
        .filter(|c| {
            integrity::wanted_key(c).is_some_and(|key| key.name == name)
                || archive::secret_names(c).any(|secret| secret == name)
        })
        .map(|c| object_ref(&c));
    streams
        .state()
        .iter()
        .filter_map(|guarded| guarded.0.as_ref().ok())
        .filter(|s| s.namespace() == namespace)
        .filter(|s| s.spec.connection.secret_names().any(|n| n == name))
        .flat_map(|s| consumers_of_stream(consumers, &s.name_any(), namespace.clone()))
        .chain(signing)
        .collect()
}

/// The controller's reference to `consumer`.
fn object_ref(consumer: &AuditConsumer) -> ObjectRef<Guarded> {
    ObjectRef::new(&consumer.name_any()).within(&consumer.namespace().unwrap_or_default())
}
