//! Cleaning up after a deleted AuditStream, per its `deletionPolicy`: the stream stays, or is
//! deleted from NATS if it carries this resource's mark.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt, runtime::controller::Action};
use tracing::info;

use super::{Context, apply};
use crate::{
    connection::{self, ForCleanup, PoolUser},
    crd::stream::{AuditStream, DeletionPolicy},
    error::Result,
    ownership::{self, Deletion},
    report::{self, CleanupEnd},
};

pub(super) async fn cleanup(stream: &AuditStream, ctx: &Context) -> Result<Action> {
    let name = stream.stream_name();
    let namespace = stream.namespace().unwrap_or_default();
    let user = PoolUser::of(stream);
    let ended = match stream.spec.deletion_policy {
        DeletionPolicy::Retain => Ok(CleanupEnd::Done {
            reason: "Retained",
            note: format!("deletionPolicy is Retain: stream {name} and its data stay on NATS"),
        }),
        DeletionPolicy::Delete => match delete_from_nats(stream, ctx).await {
            Ok(Some(deletion)) => {
                let note = match deletion {
                    Deletion::Deleted => format!("deleted stream {name} and its data from NATS"),
                    Deletion::Absent => format!("stream {name} was already gone from NATS"),
                    Deletion::NotOurs => format!(
                        "stream {name} was not created or adopted by this resource; left it on NATS"
                    ),
                };
                Ok(CleanupEnd::Done {
                    reason: deletion.reason(),
                    note,
                })
            }
            Ok(None) => {
                // Holding the resource would hold its namespace forever: the credentials
                // cannot come back into a namespace being deleted. The log line and the
                // metric say what remains.
                ctx.metrics
                    .record_stream_left_on_nats(&namespace, &stream.name_any(), &name);
                Ok(CleanupEnd::LeftOnNats {
                    note: format!(
                        "the namespace is being deleted and the credentials for NATS were deleted first: stream {name} is left on NATS (deletionPolicy Delete not carried out); delete it there by hand if it should go"
                    ),
                    event: false,
                })
            }
            Err(error) => Err(error),
        },
    };
    let action = report::cleanup_ended(&ctx.recorder, stream, "stream", &name, ended).await?;
    ctx.pool.release(&user);
    Ok(action)
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
