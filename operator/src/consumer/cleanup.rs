//! Cleaning up after a deleted AuditConsumer, per its `deletionPolicy`: the pods stop, and the
//! durable consumer stays or is deleted from NATS if it carries this resource's mark, with
//! the AuditStream's credentials or the ones this resource last connected with.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt, runtime::controller::Action};
use tracing::info;

use super::{Context, apply, build::workload_name, dereference, object_ref};
use crate::{
    connection::{self, ForCleanup, PoolUser, ResolvedConnection},
    crd::{
        consumer::{AuditConsumer, ConsumerDeletionPolicy},
        stream::AuditStream,
    },
    error::{Error, Result},
    ownership::{self, Deletion},
    report::{self, CleanupEnd},
};

pub(super) async fn cleanup(consumer: &AuditConsumer, ctx: &Context) -> Result<Action> {
    let durable = consumer.durable_name();
    let namespace = consumer.namespace().unwrap_or_default();
    ctx.state
        .scaling
        .forget(&consumer.uid().unwrap_or_default());
    let ended = match consumer.spec.deletion_policy {
        ConsumerDeletionPolicy::Retain => Ok(CleanupEnd::Done {
            reason: "Retained",
            note: format!("deletionPolicy is Retain: durable consumer {durable} stays on NATS"),
        }),
        ConsumerDeletionPolicy::Delete => match delete_durable(consumer, ctx).await {
            Ok(Removal::Done { reason, note }) => Ok(CleanupEnd::Done { reason, note }),
            Ok(Removal::LeftOnNats { stream, why }) => {
                ctx.metrics.record_consumer_left_on_nats(
                    &namespace,
                    &consumer.name_any(),
                    &stream,
                    &durable,
                );
                Ok(CleanupEnd::LeftOnNats {
                    note: format!(
                        "{why}: durable consumer {durable} on stream {stream} is left on NATS (deletionPolicy Delete not carried out); if the stream still exists there, delete the consumer by hand"
                    ),
                    event: true,
                })
            }
            Err(error) => Err(error),
        },
    };
    let what = "durable consumer";
    report::cleanup_ended(&ctx.recorder, consumer, what, &durable, ended).await?;
    Ok(release(consumer, ctx))
}

/// Forgets what the operator held for a deleted AuditConsumer.
fn release(consumer: &AuditConsumer, ctx: &Context) -> Action {
    ctx.state.max_deliveries.forget(&object_ref(consumer));
    ctx.pool.release(&PoolUser::of(consumer));
    Action::await_change()
}

/// How the deletion of a durable consumer ended.
enum Removal {
    /// Deleted, already gone, or not this resource's: the Event's reason and note.
    Done { reason: &'static str, note: String },
    /// Nothing can reach the durable consumer any more, and waiting would not change that:
    /// `why`, and the `stream` it is on.
    LeftOnNats { stream: String, why: String },
}

/// Stops the pods, then deletes the durable consumer if it is this resource's.
async fn delete_durable(consumer: &AuditConsumer, ctx: &Context) -> Result<Removal> {
    let durable = consumer.durable_name();
    let namespace = consumer.namespace().unwrap_or_default();
    let uid = consumer.uid().unwrap_or_default();
    // Pods reading a deleted consumer would exit with an error until garbage collection
    // removes them; remove their Deployment first.
    apply::remove_owned(
        &ctx.client,
        &namespace,
        &workload_name(&consumer.name_any()),
        &uid,
        &ctx.state.workloads.deployments,
    )
    .await?;
    let (stream_name, connection) = match whereabouts(consumer, ctx).await? {
        Whereabouts::Reachable { stream, connection } => (stream, connection),
        Whereabouts::Unreachable { stream, why } => {
            return Ok(Removal::LeftOnNats { stream, why });
        }
    };
    let js = ctx
        .pool
        .jetstream(&PoolUser::of(consumer), &connection)
        .await?
        .context;
    let owner = ownership::owner_of(consumer);
    let deletion = apply::delete_consumer(&js, &stream_name, &durable, &owner).await?;
    let note = match deletion {
        Deletion::Deleted => {
            format!("deleted durable consumer {durable} from stream {stream_name}")
        }
        Deletion::Absent => {
            format!("durable consumer {durable} was already gone from stream {stream_name}")
        }
        Deletion::NotOurs => format!(
            "durable consumer {durable} on stream {stream_name} is not managed by this resource; left it on NATS"
        ),
    };
    Ok(Removal::Done {
        reason: deletion.reason(),
        note,
    })
}

/// Where a durable consumer to delete is, as far as the operator can tell.
enum Whereabouts {
    /// On `stream`, reachable through `connection`.
    Reachable {
        stream: String,
        connection: ResolvedConnection,
    },
    /// On `stream`, but nothing can reach it any more and waiting would not change that.
    Unreachable { stream: String, why: String },
}

/// The durable consumer's stream and the connection to it: the AuditStream's, with the
/// credentials from its Secrets or, when those are gone or unusable, the ones this resource
/// last connected with. Without either, it is unreachable once the AuditStream or the
/// namespace is being deleted (no Secret can come back into a terminating namespace) or the
/// AuditStream is gone; otherwise the Secret's error stands, and the deletion waits.
async fn whereabouts(consumer: &AuditConsumer, ctx: &Context) -> Result<Whereabouts> {
    let namespace = consumer.namespace().unwrap_or_default();
    let streams: Api<AuditStream> = Api::namespaced(ctx.client.clone(), &namespace);
    let stream = match dereference::referenced_stream(consumer, &streams).await {
        Ok(stream) => stream,
        Err(Error::StreamNotFound { name }) => {
            let last_stream_name = consumer.status.as_ref().and_then(|s| s.stream_name.clone());
            let remembered = ctx.pool.last_connected(&PoolUser::of(consumer));
            return Ok(match (last_stream_name, remembered) {
                (Some(stream), Some(connection)) => Whereabouts::Reachable { stream, connection },
                (stream, _) => Whereabouts::Unreachable {
                    stream: stream.unwrap_or_else(|| name.clone()),
                    why: format!(
                        "AuditStream {name} is gone, so its connection to NATS is unknown"
                    ),
                },
            });
        }
        Err(error) => return Err(error),
    };
    let stream_name = stream.stream_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let user = PoolUser::of(consumer);
    let error = match connection::for_cleanup(&secrets, &stream.spec.connection, &ctx.pool, &user)
        .await?
    {
        ForCleanup::Current(connection) => {
            return Ok(Whereabouts::Reachable {
                stream: stream_name,
                connection,
            });
        }
        ForCleanup::LastUsed { connection, why } => {
            info!(consumer = %consumer.durable_name(), %namespace, error = %why, "deleting with the credentials last connected with");
            return Ok(Whereabouts::Reachable {
                stream: stream_name,
                connection,
            });
        }
        ForCleanup::Unusable(error) => error,
    };
    let why = if stream.metadata.deletion_timestamp.is_some() {
        format!(
            "AuditStream {} is being deleted and its credentials are unusable ({error})",
            stream.name_any()
        )
    } else if report::namespace_is_terminating(
        &ctx.client,
        consumer,
        ctx.options.instance.as_deref(),
    )
    .await?
    {
        "the namespace is being deleted and the credentials for NATS were deleted first".to_owned()
    } else {
        return Err(error);
    };
    Ok(Whereabouts::Unreachable {
        stream: stream_name,
        why,
    })
}
