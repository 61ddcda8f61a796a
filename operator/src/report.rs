//! How both controllers write back what they did: status by server-side apply under the
//! operator's field manager, Events, and log lines for what the controller runtime reports.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::{DeserializeGuard, NamespaceResourceScope},
    runtime::{
        controller::{self, Action},
        events::{Event, EventType, Recorder},
        reflector::ObjectRef,
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

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

/// Publishes an Event; a failure to do so is logged, never fatal to the reconciliation.
pub async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, reference).await {
        tracing::warn!(%error, reason, "cannot publish event");
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
                EventType::Warning,
                "InvalidObject",
                "Reconcile",
                invalid.error.clone(),
            )
            .await;
            None
        }
    }
}
