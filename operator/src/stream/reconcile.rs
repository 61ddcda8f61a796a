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
    build, drift, sources, status, validate,
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
    let now = Timestamp::now();
    let result = pipeline(stream, ctx, now).await;
    let mut status = status::desired_status(
        stream,
        result.as_ref().map(|(applied, _)| &applied.info.state),
        &Time(now),
    );
    if let Ok((_, seen)) = &result {
        let previous = stream.status.clone().unwrap_or_default();
        let observed = seen.as_ref().map(|seen| seen.statuses.clone());
        let inactive_after = seen.as_ref().map(|seen| seen.inactive_after);
        sources::set_sources(
            &previous,
            &mut status,
            observed,
            inactive_after.unwrap_or_default(),
            &Time(now),
        );
        let exported: Vec<(&str, &str, u64, bool)> = status
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s.origin.as_str(), s.lag, s.active))
            .collect();
        ctx.metrics.set_sources(
            &stream.namespace().unwrap_or_default(),
            &stream.name_any(),
            &exported,
        );
    }
    let result = result.map(|(applied, _)| applied);
    ctx.metrics.set_ready(
        AuditStream::kind(&()),
        &stream.namespace().unwrap_or_default(),
        &stream.name_any(),
        &status.conditions,
    );
    // The Events go out even when the status write fails, so that failure cannot hide them.
    let status_written = report::apply_status_if_changed(
        &ctx.client,
        &ctx.statuses,
        stream,
        stream.status.as_ref(),
        &status,
    )
    .await;
    let reference = stream.object_ref(&());
    let name = stream.stream_name();
    let namespace = stream.namespace().unwrap_or_default();
    match result {
        Ok(applied) => {
            if let Some(notice) = change_event(stream, &name, &applied.change) {
                info!(stream = %name, %namespace, reason = notice.reason, "{}", notice.note);
                report::publish(&ctx.recorder, &reference, "Apply", notice).await;
            } else if applied.change == Change::Created {
                info!(stream = %name, %namespace, "created stream {name} on NATS");
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

/// What was seen of a stream's sources and mirror.
struct SourcesSeen {
    /// Their states, or why they could not be read.
    statuses: std::result::Result<Vec<crate::crd::stream::SourceStatus>, String>,
    inactive_after: std::time::Duration,
}

/// The pipeline up to NATS: Secrets, validation, desired config, and the stream on the server;
/// then, for a stream with sources or a mirror, their state.
async fn pipeline(
    stream: &AuditStream,
    ctx: &Context,
    now: Timestamp,
) -> Result<(Applied, Option<SourcesSeen>)> {
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
    let applied = apply::apply(&js, &desired, &valid.mark, stream.spec.adopt, owner_exists).await?;
    if valid.sources.is_empty() && valid.mirror.is_none() {
        return Ok((applied, None));
    }
    let previous = stream
        .status
        .as_ref()
        .map(|s| s.sources.clone())
        .unwrap_or_default();
    let statuses = sources::observe(&js, &valid.name).await.map(|observed| {
        sources::source_statuses(&observed, &previous, valid.source_inactive_after, now)
    });
    if let Err(error) = &statuses {
        warn!(stream = %valid.name, %error, "cannot read the state of the stream's sources; their status stays as it was");
    }
    let seen = SourcesSeen {
        statuses,
        inactive_after: valid.source_inactive_after,
    };
    Ok((applied, Some(seen)))
}

/// The Event for a change, if it deserves one: none for a first creation. An update is drift when the current generation
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
        // A first creation is what the user asked for, and the status says it is done (Ready,
        // with its transition time); an Event for each object would double the writes of a
        // bulk apply. The log line stays.
        Change::Created => return None,
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
