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
//! - The finalizer is added with a server-side apply of its list entry, which cannot fail
//!   against a cached copy that is behind, as the helper's JSON patch testing the list does.

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
    added: &RecentlyAdded,
    object: Arc<K>,
    reconcile: impl FnOnce(Event<K>) -> Fut,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    Fut: Future<Output = Result<Action>>,
{
    let name = object.name_any();
    let has_finalizer = object.finalizers().iter().any(|f| f == finalizer);
    let deleting = object.meta().deletion_timestamp.is_some();
    match (has_finalizer, deleting) {
        (true, false) => {
            added.seen(&object.uid().unwrap_or_default());
            reconcile(Event::Apply(object)).await
        }
        (false, false) => {
            let uid = object.uid().unwrap_or_default();
            let version = object.resource_version().unwrap_or_default();
            // Added already, from this very copy: the watch has not delivered it yet.
            if !added.first_time(&uid, &version) {
                return Ok(Action::await_change());
            }
            if let Err(error) = apply_finalizer(api, &object, finalizer).await {
                added.forget(&uid);
                return Err(Error::Kube(error));
            }
            // The apply is a watched change: the Apply follows in its own reconciliation.
            Ok(Action::await_change())
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

/// The objects whose finalizer was just added, by uid, with the version of the copy it was
/// added from: a reconciliation woken again before the watch delivers the finalizer (by the
/// object's own stream of changes, or an owned object's) starts from a copy without it, and
/// would apply it again. Measured in `make bench-operator`: 0.15 needless finalizer writes per
/// AuditConsumer of a bulk apply.
#[derive(Default)]
pub struct RecentlyAdded(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl RecentlyAdded {
    /// Whether the finalizer is to be added from the copy at `version` of `uid`: not when it
    /// was added from that same copy already. A newer copy replaces the memory.
    fn first_time(&self, uid: &str, version: &str) -> bool {
        let mut added = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if added.get(uid).is_some_and(|from| from == version) {
            return false;
        }
        added.insert(uid.to_owned(), version.to_owned());
        true
    }

    fn forget(&self, uid: &str) {
        let mut added = self.0.lock().unwrap_or_else(|e| e.into_inner());
        added.remove(uid);
    }

    /// Drops the memory of `uid`, whose finalizer the cache now shows.
    fn seen(&self, uid: &str) {
        let mut added = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !added.is_empty() {
            added.remove(uid);
        }
    }
}

/// Adds `finalizer` with a server-side apply of that one list entry. `metadata.finalizers` is
/// a set to the API server: the entry is added once whatever the list holds now, so the apply
/// needs no copy of the list and cannot fail against a cached copy that is behind (a JSON
/// patch testing the list did, in one AuditConsumer of five in a bulk apply, each failure a
/// read and a second reconciliation). Forced: the entry is this operator's even where a
/// manifest lists it too. The uid makes it about this object only: one deleted and created
/// again under its name meanwhile rejects it (and an apply to a name that no longer exists
/// cannot create anything, both kinds requiring a spec).
async fn apply_finalizer<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name, "uid": object.uid(), "finalizers": [finalizer] },
    });
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
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
    fn a_finalizer_is_added_once_per_copy_of_the_object() {
        let added = RecentlyAdded::default();
        assert!(added.first_time("uid", "7"));
        assert!(!added.first_time("uid", "7"), "the cache is still at 7");
        assert!(added.first_time("uid", "8"), "a newer copy without it");
        added.forget("uid");
        assert!(added.first_time("uid", "8"), "the apply failed: again");
        added.seen("uid");
        assert!(added.first_time("uid", "8"));
        assert!(added.first_time("other", "8"));
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
    fn the_operations_are_a_valid_json_patch() {
        let patch: Result<Patch<()>, _> =
            serde_json::from_value(remove_operations(0, "a/b")).map(Patch::<()>::Json);
        assert!(patch.is_ok());
    }
}
