//! The AuditStream controller: reconciles each AuditStream through the pipeline
//! dereference -> validate -> build -> apply -> status, and handles deletion per
//! `deletionPolicy` behind a finalizer.

pub mod apply;
pub mod build;
pub mod drift;
pub mod status;
pub mod validate;

use std::sync::Arc;

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use tracing::{info, warn};

use self::apply::Change;
use crate::{
    connection::{self, ForCleanup, PoolUser},
    controller::{self, Reconciler, Shared},
    crd::stream::{AuditStream, DeletionPolicy},
    error::Result,
    ownership::{self, Deletion},
    report,
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
        apply_stream(stream, ctx).await
    }

    async fn cleanup(ctx: &Context, stream: &AuditStream) -> Result<Action> {
        cleanup(stream, ctx).await
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

/// The pipeline up to NATS: Secrets, validation, desired config, and the stream on the server.
async fn ensure_stream(stream: &AuditStream, ctx: &Context) -> Result<apply::Applied> {
    let namespace = stream.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let connection = match connection::dereference(&secrets, &stream.spec.connection).await {
        Ok(connection) => connection,
        Err(error) => {
            let instance = ctx.options.instance.as_deref();
            return Err(
                report::unless_namespace_terminating(&ctx.client, stream, instance, error).await,
            );
        }
    };
    let valid = validate::validate(stream)?;
    let desired = build::desired_config(&valid);
    let js = ctx
        .pool
        .jetstream(&PoolUser::of(stream), &connection)
        .await?
        .context;
    let owner_exists = |owner: &str| {
        owner.split_once('/').is_some_and(|(ns, name)| {
            ctx.state
                .store
                .get(&ObjectRef::new(name).within(ns))
                .is_some()
        })
    };
    apply::apply(&js, &desired, &valid.mark, stream.spec.adopt, owner_exists).await
}

async fn apply_stream(stream: &AuditStream, ctx: &Context) -> Result<Action> {
    let result = ensure_stream(stream, ctx).await;
    let now = Time(Timestamp::now());
    let status = status::desired_status(
        stream,
        result.as_ref().map(|applied| &applied.info.state),
        &now,
    );
    // The Events go out even when the status write fails, so that failure cannot hide them.
    let status_written = if stream.status.as_ref() != Some(&status) {
        report::apply_status(&ctx.client, stream, &status).await
    } else {
        Ok(())
    };
    let reference = stream.object_ref(&());
    let name = stream.stream_name();
    match &result {
        Ok(applied) => {
            if let Some((type_, reason, note)) = change_event(stream, &name, &applied.change) {
                info!(stream = %name, namespace = stream.namespace().unwrap_or_default(), reason, "{note}");
                report::publish(&ctx.recorder, &reference, type_, reason, "Apply", note).await;
            }
        }
        Err(error) => {
            warn!(stream = %name, namespace = stream.namespace().unwrap_or_default(), reason = error.reason(), %error, "stream not ready");
            report::publish(
                &ctx.recorder,
                &reference,
                EventType::Warning,
                error.reason(),
                "Apply",
                error.to_string(),
            )
            .await;
        }
    }
    let action = result.map(|_| Action::requeue(ctx.options.requeue_interval))?;
    status_written?;
    Ok(action)
}

/// The event for a change, if it deserves one. An update is drift when the current generation
/// had already been applied (Ready at it); otherwise it is the user's spec change. A stream created after one had been observed was lost. Both of those are
/// Warnings: something other than the operator touched an audit trail.
fn change_event(
    stream: &AuditStream,
    name: &str,
    change: &Change,
) -> Option<(EventType, &'static str, String)> {
    let previous = stream.status.as_ref();
    let listed = |differences: &[drift::Difference]| {
        differences
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match change {
        Change::Unchanged => None,
        Change::Created if previous.and_then(|s| s.last_seq).is_some() => Some((
            EventType::Warning,
            "Recreated",
            format!(
                "stream {name} was missing on NATS (deleted out of band, or a memory stream lost in a restart); recreated it"
            ),
        )),
        Change::Created => Some((
            EventType::Normal,
            "Created",
            format!("created stream {name} on NATS"),
        )),
        Change::Adopted(differences) if differences.is_empty() => Some((
            EventType::Normal,
            "Adopted",
            format!("adopted existing stream {name}"),
        )),
        Change::Adopted(differences) => Some((
            EventType::Normal,
            "Adopted",
            format!(
                "adopted existing stream {name}; changed {}",
                listed(differences)
            ),
        )),
        Change::Updated(differences)
            if previous.is_some_and(|s| {
                crate::conditions::held_at_generation(
                    &s.conditions,
                    crate::conditions::READY,
                    s.observed_generation,
                    stream.metadata.generation,
                )
            }) =>
        {
            Some((
                EventType::Warning,
                "DriftCorrected",
                format!(
                    "stream {name} was changed outside the operator; restored {}",
                    listed(differences)
                ),
            ))
        }
        Change::Updated(differences) => Some((
            EventType::Normal,
            "Updated",
            format!("updated stream {name}: {}", listed(differences)),
        )),
    }
}

async fn cleanup(stream: &AuditStream, ctx: &Context) -> Result<Action> {
    let reference = stream.object_ref(&());
    let name = stream.stream_name();
    let namespace = stream.namespace().unwrap_or_default();
    let user = PoolUser::of(stream);
    let (reason, note) = match stream.spec.deletion_policy {
        DeletionPolicy::Retain => (
            "Retained",
            format!("deletionPolicy is Retain: stream {name} and its data stay on NATS"),
        ),
        DeletionPolicy::Delete => match delete_from_nats(stream, ctx).await {
            Ok(Some(deletion)) => {
                let note = match deletion {
                    Deletion::Deleted => format!("deleted stream {name} and its data from NATS"),
                    Deletion::Absent => format!("stream {name} was already gone from NATS"),
                    Deletion::NotOurs => format!(
                        "stream {name} was not created or adopted by this resource; left it on NATS"
                    ),
                };
                (deletion.reason(), note)
            }
            Ok(None) => {
                // Holding the resource would hold its namespace forever: the credentials
                // cannot come back into a namespace being deleted. No Event either: the
                // namespace accepts none. The log line and the metric say what remains.
                warn!(
                    stream = %name,
                    %namespace,
                    resource = %stream.name_any(),
                    "the namespace is being deleted and the credentials for NATS were deleted first: stream {name} is left on NATS (deletionPolicy Delete not carried out); delete it there by hand if it should go"
                );
                ctx.metrics
                    .record_stream_left_on_nats(&namespace, &stream.name_any(), &name);
                ctx.pool.release(&user);
                return Ok(Action::await_change());
            }
            Err(error) => {
                warn!(stream = %name, %namespace, %error, "cannot delete stream; set deletionPolicy: Retain to let the resource go without deleting it");
                report::publish(&ctx.recorder, &reference, EventType::Warning, error.reason(), "Delete", format!("{error}; to let the resource go without deleting the stream, set deletionPolicy: Retain")).await;
                return Err(error);
            }
        },
    };
    info!(stream = %name, %namespace, reason, "{note}");
    report::publish(
        &ctx.recorder,
        &reference,
        EventType::Normal,
        reason,
        "Delete",
        note,
    )
    .await;
    ctx.pool.release(&user);
    Ok(Action::await_change())
}

/// Deletes the stream from NATS if it is this resource's. The credentials come from the
/// Secrets or, when those are gone or unusable, from the connection this resource last used.
/// `None` when neither is there and the namespace is being deleted, so that the Secrets cannot
/// come back.
async fn delete_from_nats(stream: &AuditStream, ctx: &Context) -> Result<Option<Deletion>> {
    let namespace = stream.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let user = PoolUser::of(stream);
    let connection = match connection::for_cleanup(
        &secrets,
        &stream.spec.connection,
        &ctx.pool,
        &user,
    )
    .await?
    {
        ForCleanup::Current(connection) => connection,
        ForCleanup::LastUsed { connection, why } => {
            info!(stream = %stream.stream_name(), %namespace, error = %why, "deleting with the credentials last connected with");
            connection
        }
        ForCleanup::Unusable(error) => {
            let instance = ctx.options.instance.as_deref();
            if report::namespace_is_terminating(&ctx.client, stream, instance).await? {
                return Ok(None);
            }
            return Err(error);
        }
    };
    let js = ctx.pool.jetstream(&user, &connection).await?.context;
    apply::delete(&js, &stream.stream_name(), &ownership::owner_of(stream))
        .await
        .map(Some)
}
