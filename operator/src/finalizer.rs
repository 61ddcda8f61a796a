//! The finalizer protocol both controllers follow: kube-runtime's `finalizer` helper, with
//! four differences.
//!
//! - The finalizer is written under the operator's field manager, as its status is; the
//!   helper leaves the manager unnamed, and the API server records `unknown`.
//! - A cleanup runs only for an object the API server still has, still being deleted and still
//!   carrying the finalizer. Reconciliations queued with the cached copy from before the
//!   finalizer was removed (the watch reports the removal a moment later) would otherwise
//!   clean up a second time, publish a second Event and fail to remove a finalizer that is
//!   gone.
//! - An object that disappeared between its cleanup and the removal of the finalizer is done,
//!   not a failure.
//! - A finalizer added while the cached copy was behind (the test of the list fails) waits for
//!   the watch instead of failing into a retry with backoff.

use std::sync::Arc;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    report::FIELD_MANAGER,
};

/// What a reconciliation is asked to do.
pub enum Event<K> {
    /// Make the object's desired state true; the finalizer is in place.
    Apply(Arc<K>),
    /// The object is being deleted: clean up; the finalizer goes once this succeeds.
    Cleanup(Arc<K>),
}

/// Adds `finalizer` before the first [`Event::Apply`], and runs [`Event::Cleanup`] then removes
/// it once `object` is being deleted.
pub async fn finalizer<K, Fut>(
    api: &Api<K>,
    finalizer: &str,
    object: Arc<K>,
    reconcile: impl FnOnce(Event<K>) -> Fut,
) -> Result<Action>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    Fut: Future<Output = Result<Action>>,
{
    let name = object.name_any();
    let has_finalizer = object.finalizers().iter().any(|f| f == finalizer);
    let deleting = object.meta().deletion_timestamp.is_some();
    match (has_finalizer, deleting) {
        (true, false) => reconcile(Event::Apply(object)).await,
        (false, false) => {
            match json_patch(api, &name, add_operations(object.finalizers(), finalizer)).await {
                // The patch is a watched change: the Apply follows in its own reconciliation.
                Ok(()) => Ok(Action::await_change()),
                // The list's test failed: the cached copy is behind the server. That is the
                // common case of a reconciliation another trigger started (its AuditStream
                // turned Ready) before the watch delivered the finalizer this operator had
                // just added. The watch delivers the change and wakes this object again; a
                // failure here would instead back off for a second or more.
                Err(kube::Error::Api(status)) if status.code == 422 => {
                    let current = api.get_opt(&name).await.map_err(Error::Kube)?;
                    if current.is_some_and(|current| current.finalizers() != object.finalizers()) {
                        Ok(Action::await_change())
                    } else {
                        Err(Error::Kube(kube::Error::Api(status)))
                    }
                }
                Err(error) => Err(Error::Kube(error)),
            }
        }
        (true, true) => {
            let current = api.get_opt(&name).await.map_err(Error::Kube)?;
            let Some((current, index)) = current.and_then(|current| {
                let still_ours =
                    current.uid() == object.uid() && current.meta().deletion_timestamp.is_some();
                let index = current.finalizers().iter().position(|f| f == finalizer)?;
                still_ours.then_some((current, index))
            }) else {
                // Cleaned up already (or gone, or replaced by a new object of that name).
                return Ok(Action::await_change());
            };
            let action = reconcile(Event::Cleanup(Arc::new(current))).await?;
            match json_patch(api, &name, remove_operations(index, finalizer)).await {
                Ok(()) => Ok(action),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(action),
                Err(error) => Err(Error::Kube(error)),
            }
        }
        (false, true) => Ok(Action::await_change()),
    }
}

/// JSON patch operations adding `finalizer` to `current`. They test the list first: the API
/// server does not deduplicate finalizers, so a list changed meanwhile must fail the patch
/// (and the reconciliation retries) rather than receive the finalizer twice.
fn add_operations(current: &[String], finalizer: &str) -> Value {
    if current.is_empty() {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [finalizer] },
        ])
    } else {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": current },
            { "op": "add", "path": "/metadata/finalizers/-", "value": finalizer },
        ])
    }
}

/// JSON patch operations removing `finalizer` at `index`, tested first so that a list changed
/// meanwhile never loses another controller's finalizer.
fn remove_operations(index: usize, finalizer: &str) -> Value {
    let path = format!("/metadata/finalizers/{index}");
    json!([
        { "op": "test", "path": path, "value": finalizer },
        { "op": "remove", "path": path },
    ])
}

async fn json_patch<K>(api: &Api<K>, name: &str, operations: Value) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let patch = serde_json::from_value(operations).map_err(kube::Error::SerdeError)?;
    api.patch(name, &params, &Patch::<()>::Json(patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_tests_the_list_it_extends() {
        assert_eq!(
            add_operations(&[], "a/b"),
            json!([
                { "op": "test", "path": "/metadata/finalizers", "value": null },
                { "op": "add", "path": "/metadata/finalizers", "value": ["a/b"] },
            ])
        );
        assert_eq!(
            add_operations(&["other".to_owned()], "a/b"),
            json!([
                { "op": "test", "path": "/metadata/finalizers", "value": ["other"] },
                { "op": "add", "path": "/metadata/finalizers/-", "value": "a/b" },
            ])
        );
    }

    #[test]
    fn removing_tests_the_entry_it_removes() {
        assert_eq!(
            remove_operations(1, "a/b"),
            json!([
                { "op": "test", "path": "/metadata/finalizers/1", "value": "a/b" },
                { "op": "remove", "path": "/metadata/finalizers/1" },
            ])
        );
    }

    #[test]
    fn the_operations_are_valid_json_patches() {
        for operations in [add_operations(&[], "a/b"), remove_operations(0, "a/b")] {
            let patch: Result<Patch<()>, _> =
                serde_json::from_value(operations).map(Patch::<()>::Json);
            assert!(patch.is_ok());
        }
    }
}
