//! How both controllers write back what they did: status by server-side apply under the
//! operator's field manager, Events, and log lines for what the controller runtime reports.
//! Also whether a namespace still accepts new objects, which decides what a message may ask of
//! a user.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as EventObject},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    core::{DeserializeGuard, NamespaceResourceScope},
    runtime::{
        controller::{self, Action},
        events::{Event, EventType, Recorder},
        reflector::ObjectRef,
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::debug;

use crate::{
    CONTROLLER_NAME,
    error::{Error, Result},
};

/// Field manager of everything the operator applies: status, workload objects.
pub const FIELD_MANAGER: &str = "audit-operator";

/// Applies `status` as the object's whole status. Only status: the operator never writes spec.
pub async fn apply_status<K>(client: &Client, object: &K, status: &impl Serialize) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

/// The status each object was last given, and the version of the object it was computed
/// from, until the watch delivers a newer copy. A reconciliation can start from a cached copy
/// that does not have this operator's last status write yet (the write itself, or an owned
/// object's change, wakes it before the watch catches up); comparing with that copy, it would
/// write the same status again. Measured in `make bench-operator`: 0.59 redundant status
/// writes per AuditConsumer of a bulk apply.
#[derive(Default)]
pub struct RecentStatuses(std::sync::Mutex<HashMap<String, (String, serde_json::Value)>>);

impl RecentStatuses {
    /// Whether `desired` is what `uid` was last given, from the copy at `version` the cache
    /// still holds. A newer copy ends the memory: from then on the cache tells.
    fn already_written(&self, uid: &str, version: &str, desired: &serde_json::Value) -> bool {
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match recent.get(uid) {
            Some((from, written)) if from == version => written == desired,
            Some(_) => {
                recent.remove(uid);
                false
            }
            None => false,
        }
    }

    fn record(&self, uid: &str, version: &str, written: serde_json::Value) {
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        recent.insert(uid.to_owned(), (version.to_owned(), written));
    }

    fn forget(&self, uid: &str) {
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        recent.remove(uid);
    }
}

/// Writes `desired` as `object`'s status unless `current` (the status read) already is that,
/// or `recent` says it was just written on top of this very copy, so that a reconciliation
/// that changed nothing writes nothing.
pub async fn apply_status_if_changed<K, S>(
    client: &Client,
    recent: &RecentStatuses,
    object: &K,
    current: Option<&S>,
    desired: &S,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: PartialEq + Serialize,
{
    let uid = object.uid().unwrap_or_default();
    let version = object.resource_version().unwrap_or_default();
    if current == Some(desired) {
        recent.forget(&uid);
        return Ok(());
    }
    let written = serde_json::to_value(desired).ok();
    if written
        .as_ref()
        .is_some_and(|written| recent.already_written(&uid, &version, written))
    {
        return Ok(());
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        debug!(object = %object.name_any(), changed = %changed_fields(current, desired), "writing status");
    }
    let result = apply_status(client, object, desired).await;
    match (&result, written) {
        (Ok(()), Some(written)) => recent.record(&uid, &version, written),
        _ => recent.forget(&uid),
    }
    result
}

/// The status fields that differ between `current` and `desired`, for the debug log that
/// says why a status is written.
fn changed_fields<S: Serialize>(current: Option<&S>, desired: &S) -> String {
    let fields = |status: Option<&S>| match status.map(serde_json::to_value) {
        Some(Ok(serde_json::Value::Object(map))) => map,
        _ => serde_json::Map::new(),
    };
    let (before, after) = (fields(current), fields(Some(desired)));
    let mut changed: Vec<&str> = after
        .iter()
        .filter(|(key, value)| before.get(*key) != Some(value))
        .map(|(key, _)| key.as_str())
        .chain(
            before
                .keys()
                .filter(|key| !after.contains_key(*key))
                .map(String::as_str),
        )
        .collect();
    changed.sort_unstable();
    changed.dedup();
    changed.join(",")
}

/// What an Event says: its type, reason (CamelCase) and note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

impl Notice {
    pub fn normal(reason: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason,
            note: note.into(),
        }
    }

    pub fn warning(reason: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            reason,
            note: note.into(),
        }
    }
}

/// How the cleanup after a deleted resource ended, short of an error.
pub enum CleanupEnd {
    /// Retained, deleted, already gone, or not this resource's: the Event's reason and note.
    Done { reason: &'static str, note: String },
    /// Nothing can reach the object on NATS any more, and waiting would not change that: it
    /// is left there, as `note` says, and the resource goes. A Warning Event only with
    /// `event`: a namespace being deleted accepts none.
    LeftOnNats { note: String, event: bool },
}

/// The ending both cleanups share, once the deletion of `what` (`stream`, `durable consumer`)
/// named `name` on NATS ended: a log line and a `Delete` Event about `object`, the reason and
/// note of a deletion done (or retained), or of what is left on NATS, or the error and how to
/// let the resource go without it (returned, so that the finalizer stays and the cleanup is
/// tried again).
pub async fn cleanup_ended<K>(
    recorder: &Recorder,
    object: &K,
    what: &str,
    name: &str,
    ended: Result<CleanupEnd>,
) -> Result<Action>
where
    K: Resource<DynamicType = ()>,
{
    let reference = object.object_ref(&());
    let namespace = object.meta().namespace.as_deref().unwrap_or_default();
    match ended {
        Ok(CleanupEnd::Done { reason, note }) => {
            tracing::info!(%what, %name, %namespace, reason, "{note}");
            publish(recorder, &reference, "Delete", Notice::normal(reason, note)).await;
            Ok(Action::await_change())
        }
        Ok(CleanupEnd::LeftOnNats { note, event }) => {
            tracing::warn!(%what, %name, %namespace, "{note}");
            if event {
                let reason = crate::ownership::Deletion::NotOurs.reason();
                publish(
                    recorder,
                    &reference,
                    "Delete",
                    Notice::warning(reason, note),
                )
                .await;
            }
            Ok(Action::await_change())
        }
        Err(error) => {
            tracing::warn!(%what, %name, %namespace, %error, "cannot delete the {what}; set deletionPolicy: Retain to let the resource go without deleting it");
            let notice = Notice::warning(
                error.reason(),
                format!(
                    "{error}; to let the resource go without deleting the {what}, set deletionPolicy: Retain"
                ),
            );
            publish(recorder, &reference, "Delete", notice).await;
            Err(error)
        }
    }
}

/// Publishes `notice` about `action` (`Apply`, `Delete`, ...) as an Event; a failure to do so
/// is logged, never fatal to the reconciliation.
pub async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    action: &str,
    notice: Notice,
) {
    let Notice {
        type_,
        reason,
        note,
    } = notice;
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    match recorder.publish(&event, reference).await {
        Ok(()) => {}
        // Expected while a namespace is deleted: the log line of the same outcome remains.
        Err(error) if refused_as_namespace_terminating(&error) => {
            tracing::debug!(%error, reason, "event not recorded: the namespace is being deleted");
        }
        Err(error) => tracing::warn!(%error, reason, "cannot publish event"),
    }
}

/// Whether the API server refused to create an object because its namespace is being
/// deleted (namespace lifecycle admission, cause `NamespaceTerminating`).
pub fn refused_as_namespace_terminating(error: &kube::Error) -> bool {
    let kube::Error::Api(status) = error else {
        return false;
    };
    status.code == 403
        && status.details.as_ref().is_some_and(|details| {
            details
                .causes
                .iter()
                .any(|cause| cause.reason == "NamespaceTerminating")
        })
}

/// Whether `object`'s namespace is being deleted, so that nothing can be created in it any
/// more: not a Secret a message might ask for, not an Event. The API server answers it
/// directly: a dry-run create of an Event about `object` (which the operator may create
/// anyway, so no further right is needed) is refused in a terminating namespace, and a dry run
/// leaves nothing behind.
pub async fn namespace_is_terminating<K>(
    client: &Client,
    object: &K,
    instance: Option<&str>,
) -> Result<bool>
where
    K: Resource<DynamicType = ()>,
{
    let namespace = object.namespace().unwrap_or_default();
    let events: Api<EventObject> = Api::namespaced(client.clone(), &namespace);
    let probe = EventObject {
        metadata: ObjectMeta {
            generate_name: Some(format!("{CONTROLLER_NAME}-probe-")),
            namespace: Some(namespace),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(Timestamp::now())),
        type_: Some("Normal".into()),
        reason: Some("NamespaceProbe".into()),
        action: Some("Delete".into()),
        note: Some("dry run: does the namespace still accept new objects?".into()),
        regarding: Some(object.object_ref(&())),
        reporting_controller: Some(CONTROLLER_NAME.into()),
        reporting_instance: Some(instance.unwrap_or(CONTROLLER_NAME).into()),
        ..EventObject::default()
    };
    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match events.create(&dry_run, &probe).await {
        Ok(_) => Ok(false),
        Err(error) if refused_as_namespace_terminating(&error) => Ok(true),
        Err(error) => Err(Error::Kube(error)),
    }
}

/// `error`, unless it is about unusable Secrets in a namespace being deleted: there no
/// Secret can be created any more, so the error's advice would be impossible to follow, and
/// [`Error::NamespaceTerminating`] says what is really going on.
pub async fn unless_namespace_terminating<K>(
    client: &Client,
    object: &K,
    instance: Option<&str>,
    error: Error,
) -> Error
where
    K: Resource<DynamicType = ()>,
{
    if !error.is_unusable_secret() {
        return error;
    }
    match namespace_is_terminating(client, object, instance).await {
        Ok(true) => Error::NamespaceTerminating,
        // Not terminating, or unknown: the Secret's own error and advice stand.
        Ok(false) | Err(_) => error,
    }
}

/// Logs what the controller runtime reports after each reconciliation. A reconciliation that
/// was queued for an object deleted meanwhile is expected after every deletion: debug only.
pub fn log_outcome<K>(
    outcome: Result<(ObjectRef<K>, Action), controller::Error<Error, watcher::Error>>,
) where
    K: kube::runtime::reflector::Lookup,
    ObjectRef<K>: std::fmt::Display,
{
    match outcome {
        Ok((object, _)) => tracing::debug!(%object, "reconciled"),
        Err(controller::Error::ObjectNotFound(object)) => {
            tracing::debug!(%object, "not reconciled: deleted meanwhile");
        }
        Err(error) => tracing::warn!(%error, "reconciliation failed"),
    }
}

/// The object, or `None` once it was reported (log line and Warning Event) as unreadable. A
/// malformed object, which the schema makes rare (one stored under an older CRD), then waits
/// for an edit instead of stopping the watch of every other object of its kind.
pub async fn readable<K>(guarded: &DeserializeGuard<K>, recorder: &Recorder) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    match &guarded.0 {
        Ok(object) => Some(Arc::new(object.clone())),
        Err(invalid) => {
            tracing::warn!(
                kind = %K::kind(&()),
                name = invalid.metadata.name.as_deref().unwrap_or_default(),
                namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
                error = %invalid.error,
                "object cannot be read"
            );
            publish(
                recorder,
                &guarded.object_ref(&()),
                "Reconcile",
                Notice::warning("InvalidObject", invalid.error.clone()),
            )
            .await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_just_written_is_not_written_again_from_the_copy_it_was_computed_from() {
        let recent = RecentStatuses::default();
        let ready = serde_json::json!({ "phase": "Ready" });
        assert!(
            !recent.already_written("uid", "7", &ready),
            "nothing written yet"
        );
        recent.record("uid", "7", ready.clone());
        assert!(
            recent.already_written("uid", "7", &ready),
            "the cache is still at 7"
        );
        assert!(
            !recent.already_written("uid", "7", &serde_json::json!({ "phase": "Stalled" })),
            "a different outcome is written"
        );
        assert!(
            !recent.already_written("uid", "8", &ready),
            "a newer copy: the cache tells"
        );
        assert!(
            !recent.already_written("uid", "7", &ready),
            "and the memory is gone"
        );
        assert!(!recent.already_written("other", "7", &ready));
    }

    fn api_error(status: serde_json::Value) -> kube::Error {
        kube::Error::Api(Box::new(serde_json::from_value(status).unwrap()))
    }

    #[test]
    fn a_terminating_namespace_is_told_by_the_cause_of_the_refusal() {
        // As the API server's namespace lifecycle admission answers.
        let terminating = api_error(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "events.events.k8s.io \"x\" is forbidden: unable to create new content in namespace shop because it is being terminated",
            "details": { "name": "x", "kind": "events", "causes": [
                { "reason": "NamespaceTerminating", "message": "namespace shop is being terminated", "field": "metadata.namespace" },
            ] },
        }));
        assert!(refused_as_namespace_terminating(&terminating));
        let forbidden = api_error(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden", "message": "RBAC says no",
        }));
        assert!(!refused_as_namespace_terminating(&forbidden));
    }
}
