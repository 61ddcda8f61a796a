//! Applying an AuditStream: the pipeline up to NATS (dereference -> validate -> build ->
//! apply), then its status and an Event for what changed or failed.

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{controller::Action, reflector::ObjectRef},
};
use tracing::{info, warn};

use super::{
    Context,
    apply::{self, Applied, Change},
    build, drift, status, validate,
};
use crate::{
    conditions::{READY, held_at_generation},
    connection::{self, PoolUser},
    crd::stream::AuditStream,
    error::Result,
    report::{self, Notice},
};

/// Applies `stream` and reports the outcome: status, an Event, a log line.
pub(super) async fn apply(stream: &AuditStream, ctx: &Context) -> Result<Action> {
    let result = pipeline(stream, ctx).await;
    let status = status::desired_status(
        stream,
        result.as_ref().map(|applied| &applied.info.state),
        &Time(Timestamp::now()),
    );
    ctx.metrics.set_ready(
        AuditStream::kind(&()),
        &stream.namespace().unwrap_or_default(),
        &stream.name_any(),
        &status.conditions,
    );
    // The Events go out even when the status write fails, so that failure cannot hide them.
    let status_written =
        report::apply_status_if_changed(&ctx.client, stream, stream.status.as_ref(), &status).await;
    let reference = stream.object_ref(&());
    let name = stream.stream_name();
    let namespace = stream.namespace().unwrap_or_default();
    match result {
        Ok(applied) => {
            if let Some(notice) = change_event(stream, &name, &applied.change) {
                info!(stream = %name, %namespace, reason = notice.reason, "{}", notice.note);
                report::publish(&ctx.recorder, &reference, "Apply", notice).await;
            }
        }
        Err(error) => {
            warn!(stream = %name, %namespace, reason = error.reason(), %error, "stream not ready");
            let notice = Notice::warning(error.reason(), error.to_string());
            report::publish(&ctx.recorder, &reference, "Apply", notice).await;
            return Err(error);
        }
    }
    status_written?;
    Ok(Action::requeue(ctx.options.requeue_interval))
}

/// The pipeline up to NATS: Secrets, validation, desired config, and the stream on the server.
async fn pipeline(stream: &AuditStream, ctx: &Context) -> Result<Applied> {
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

/// The Event for a change, if it deserves one. An update is drift when the current generation
/// had already been applied (Ready at it); otherwise it is the user's spec change. A stream
/// created after one had been observed was lost. Both of those are Warnings: something other
/// than the operator touched an audit trail.
fn change_event(stream: &AuditStream, name: &str, change: &Change) -> Option<Notice> {
    let previous = stream.status.as_ref();
    let listed = |differences: &[drift::Difference]| {
        differences
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let drift = previous.is_some_and(|s| {
        held_at_generation(
            &s.conditions,
            READY,
            s.observed_generation,
            stream.metadata.generation,
        )
    });
    Some(match change {
        Change::Unchanged => return None,
        Change::Created if previous.and_then(|s| s.last_seq).is_some() => Notice::warning(
            "Recreated",
            format!(
                "stream {name} was missing on NATS (deleted out of band, or a memory stream lost in a restart); recreated it"
            ),
        ),
        Change::Created => Notice::normal("Created", format!("created stream {name} on NATS")),
        Change::Adopted(differences) if differences.is_empty() => {
            Notice::normal("Adopted", format!("adopted existing stream {name}"))
        }
        Change::Adopted(differences) => Notice::normal(
            "Adopted",
            format!(
                "adopted existing stream {name}; changed {}",
                listed(differences)
            ),
        ),
        Change::Updated(differences) if drift => Notice::warning(
            "DriftCorrected",
            format!(
                "stream {name} was changed outside the operator; restored {}",
                listed(differences)
            ),
        ),
        Change::Updated(differences) => Notice::normal(
            "Updated",
            format!("updated stream {name}: {}", listed(differences)),
        ),
    })
}
