//! The AuditStream controller: reconciles each AuditStream through the pipeline
//! dereference ([`crate::connection`]) -> [`validate`] -> [`build`] -> [`apply`] (with
//! [`drift`]) -> [`status`], run by `reconcile`, and handles deletion per `deletionPolicy`
//! behind a finalizer (`cleanup`). It wakes for a user's change of an AuditStream, a change of
//! a Secret one reads, and its NATS connection coming back.

pub mod apply;
pub mod build;
mod cleanup;
pub mod drift;
mod reconcile;
pub mod sources;
pub mod status;
pub mod validate;

use std::sync::Arc;

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

use crate::{
    controller::{self, Reconciler, Shared},
    crd::stream::AuditStream,
    error::Result,
    watches::Watches,
};

/// Finalizer that keeps an AuditStream until its stream was deleted or retained.
pub const FINALIZER: &str = "audit.eventsaudit.io/stream-cleanup";

type Guarded = DeserializeGuard<AuditStream>;

/// What the AuditStream controller keeps beyond the shared context.
pub struct Streams {
    /// The controller's cache of AuditStreams: answers "which streams use this Secret" and
    /// "does the owner named on a stream still exist" without API calls.
    store: Store<Guarded>,
}

type Context = controller::Context<Streams>;

impl Reconciler for Streams {
    type Resource = AuditStream;
    const FINALIZER: &'static str = FINALIZER;

    async fn apply(ctx: &Context, stream: &AuditStream) -> Result<Action> {
        reconcile::apply(stream, ctx).await
    }

    async fn cleanup(ctx: &Context, stream: &AuditStream) -> Result<Action> {
        cleanup::cleanup(stream, ctx).await
    }
}

/// Runs the AuditStream controller, fed by `watches`, until `shutdown` completes.
pub async fn run(
    shared: Shared,
    watches: &Watches,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let store = watches.streams.clone();
    let reconnected = crate::triggers::reconnected::<AuditStream>(&shared.pool);
    let ctx = Arc::new(Context::new(
        shared,
        Streams {
            store: store.clone(),
        },
    ));
    let controller = Controller::for_stream(watches.stream_changes.listen(), store.clone())
        .watches_stream(watches.secret_changes.listen(), move |secret| {
            streams_using_secret(&store, &secret)
        })
        .watches_stream(reconnected, |stream| {
            Some(ObjectRef::new(&stream.name_any()).within(&stream.namespace().unwrap_or_default()))
        });
    controller::run(controller, ctx, shutdown).await;
}

/// The AuditStreams in the Secret's namespace whose connection reads it.
fn streams_using_secret(
    store: &Store<Guarded>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<Guarded>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    store
        .state()
        .iter()
        .filter_map(|guarded| guarded.0.as_ref().ok())
        .filter(|stream| stream.namespace() == namespace)
        .filter(|stream| stream.spec.connection.secret_names().any(|n| n == name))
        .map(|stream| {
            ObjectRef::new(&stream.name_any()).within(&stream.namespace().unwrap_or_default())
        })
        .collect()
}
