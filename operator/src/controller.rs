//! The shell both controllers reconcile in, after controller-rs: around each reconciliation a
//! metrics record, the object read through its [`DeserializeGuard`] (an unreadable one is
//! reported, not fatal to the watch), the finalizer (apply, or clean up and let go), the retry
//! count reset by a success, and after a failure a retry with exponential, jittered backoff
//! that never gives up. A controller says only what applying and cleaning up mean
//! ([`Reconciler`]) and what wakes it (the [`Controller`] it hands to [`run`]).

use std::{fmt::Debug, sync::Arc, time::Instant};

use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{DeserializeGuard, NamespaceResourceScope},
    runtime::{Controller, controller::Action, events::Recorder, reflector::ObjectRef},
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::info;

use crate::{
    backoff::Retries,
    connection::NatsPool,
    error::{Error, Result},
    finalizer::{Event, finalizer},
    metrics::Metrics,
    options::Options,
    report,
};

/// What one controller does with an object of its kind; `Self` is what it keeps beyond the
/// [`Context`] both controllers have (a cache, a registry of subscriptions).
pub trait Reconciler: Sized + Send + Sync + 'static {
    type Resource: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Serialize
        + Send
        + Sync
        + 'static;

    /// Holds a deleted object until [`cleanup`](Self::cleanup) succeeded.
    const FINALIZER: &'static str;

    /// Makes the object's desired state true (the finalizer is in place).
    fn apply(
        ctx: &Context<Self>,
        object: &Self::Resource,
    ) -> impl Future<Output = Result<Action>> + Send;

    /// Deals with what the object made, per its `deletionPolicy`; the finalizer goes once
    /// this succeeds.
    fn cleanup(
        ctx: &Context<Self>,
        object: &Self::Resource,
    ) -> impl Future<Output = Result<Action>> + Send;
}

/// What both controllers of one leadership term share.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    /// One recorder per operator replica, naming it in every Event.
    pub recorder: Recorder,
    /// One pool: a stream and the consumers reading it use one connection.
    pub pool: Arc<NatsPool>,
    pub options: Options,
    pub metrics: Arc<Metrics>,
}

/// What every reconciliation of one controller has.
pub struct Context<R: Reconciler> {
    pub client: Client,
    pub recorder: Recorder,
    pub pool: Arc<NatsPool>,
    pub options: Options,
    pub metrics: Arc<Metrics>,
    /// What this controller keeps beyond the shared context.
    pub state: R,
    /// The statuses just written, until the watch delivers them.
    pub statuses: report::RecentStatuses,
    /// The finalizers just added, until the watch delivers them.
    finalizers: crate::finalizer::RecentlyAdded,
    retries: Retries<ObjectRef<DeserializeGuard<R::Resource>>>,
}

impl<R: Reconciler> Context<R> {
    pub fn new(shared: Shared, state: R) -> Self {
        let Shared {
            client,
            recorder,
            pool,
            options,
            metrics,
        } = shared;
        Self {
            retries: Retries::new(options.retry),
            client,
            recorder,
            pool,
            options,
            metrics,
            state,
            statuses: report::RecentStatuses::default(),
            finalizers: crate::finalizer::RecentlyAdded::default(),
        }
    }
}

/// Runs `controller` with `ctx` until `shutdown` completes, starting with a pass over every
/// object in its cache: what changed while this replica stood by reached the cache, but no
/// controller.
pub async fn run<R: Reconciler>(
    controller: Controller<DeserializeGuard<R::Resource>>,
    ctx: Arc<Context<R>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let config = kube::runtime::controller::Config::default().concurrency(ctx.options.concurrency);
    controller
        .with_config(config)
        .reconcile_all_on(futures::stream::once(std::future::ready(())))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|outcome| async move { report::log_outcome(outcome) })
        .await;
}

async fn reconcile<R: Reconciler>(
    guarded: Arc<DeserializeGuard<R::Resource>>,
    ctx: Arc<Context<R>>,
) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_readable(&guarded, &ctx).await;
    ctx.metrics.record_reconcile(
        R::Resource::kind(&()),
        started.elapsed(),
        result.as_ref().err().map(Error::reason),
    );
    result
}

async fn reconcile_readable<R: Reconciler>(
    guarded: &Arc<DeserializeGuard<R::Resource>>,
    ctx: &Context<R>,
) -> Result<Action> {
    let Some(object) = report::readable(guarded, &ctx.recorder).await else {
        return Ok(Action::await_change());
    };
    let api: Api<R::Resource> =
        Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let result = finalizer(&api, R::FINALIZER, &ctx.finalizers, object, |event| async {
        match event {
            Event::Apply(object) => R::apply(ctx, &object).await,
            Event::Cleanup(object) => {
                let cleaned = R::cleanup(ctx, &object).await;
                if cleaned.is_ok() {
                    // The finalizer goes next, and the object with it.
                    ctx.metrics.forget_ready(
                        R::Resource::kind(&()),
                        &object.namespace().unwrap_or_default(),
                        &object.name_any(),
                    );
                }
                cleaned
            }
        }
    })
    .await;
    if result.is_ok() {
        ctx.retries.reset(&ObjectRef::from_obj(guarded.as_ref()));
    }
    result
}

fn error_policy<R: Reconciler>(
    guarded: Arc<DeserializeGuard<R::Resource>>,
    error: &Error,
    ctx: Arc<Context<R>>,
) -> Action {
    let delay = ctx
        .retries
        .next_delay(ObjectRef::from_obj(guarded.as_ref()));
    info!(name = %guarded.name_any(), namespace = guarded.namespace().unwrap_or_default(), %error, retry_in = ?delay, "will retry");
    Action::requeue(delay)
}
