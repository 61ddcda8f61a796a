//! Pipeline step 4 (I/O): make NATS and Kubernetes match what was built: the durable consumer
//! on the stream, and the workload objects by server-side apply.

use async_nats::jetstream::{
    self, ErrorCode,
    consumer::{Info, pull::Config},
    context::ConsumerInfoErrorKind,
    stream::{ConsumerCreateStrictErrorKind, ConsumerErrorKind, ConsumerUpdateErrorKind},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    core::NamespaceResourceScope,
    runtime::reflector::{ObjectRef, Store},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::build::nats_consumer::governed_differences;
use crate::{
    error::{Error, Result},
    ownership::{Claim, Deletion, OWNER_KEY, claim},
    report::FIELD_MANAGER,
};

/// What applying did to the durable consumer.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    /// Governed fields differed (named) and were rewritten.
    Updated(Vec<&'static str>),
    Unchanged,
}

/// Creates or updates the durable consumer `desired` on `stream`; returns what changed and the
/// consumer as NATS now reports it (with its live counts).
pub async fn apply_consumer(
    js: &jetstream::Context,
    stream: &str,
    desired: &Config,
) -> Result<(Change, Info)> {
    let durable = desired.durable_name.clone().unwrap_or_default();
    let stream_handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| Error::JetStreamRequest(e.to_string()))?;
    let Some(current) = consumer_info(&stream_handle, &durable).await? else {
        let created = stream_handle
            .create_consumer_strict(desired.clone())
            .await
            .map_err(|e| match e.kind() {
                ConsumerCreateStrictErrorKind::JetStream(server) => rejected(stream, &server),
                _ => Error::JetStreamRequest(e.to_string()),
            })?;
        return Ok((Change::Created, created.cached_info().clone()));
    };
    let owner = desired.metadata.get(OWNER_KEY).map_or("", String::as_str);
    if claim(&current.config.metadata, owner) != Claim::Ours {
        return Err(Error::ConsumerNotOurs {
            stream: stream.to_owned(),
            consumer: durable,
        });
    }
    let current_config = as_pull_config(&current)?;
    let differences = governed_differences(&current_config, desired);
    if differences.is_empty() {
        return Ok((Change::Unchanged, current));
    }
    let updated = stream_handle
        .update_consumer(desired.clone())
        .await
        .map_err(|e| match e.kind() {
            ConsumerUpdateErrorKind::JetStream(server) => rejected(stream, &server),
            _ => Error::JetStreamRequest(e.to_string()),
        })?;
    Ok((Change::Updated(differences), updated.cached_info().clone()))
}

/// What the server's refusal of a consumer means. A stream missing on NATS (deleted out of
/// band, or a memory stream lost in a restart) is not the consumer's configuration at fault:
/// its AuditStream recreates it, and the consumer waits for that.
fn rejected(stream: &str, server: &jetstream::Error) -> Error {
    if server.error_code() == ErrorCode::STREAM_NOT_FOUND {
        Error::StreamMissingOnNats {
            stream: stream.to_owned(),
        }
    } else {
        Error::ConsumerConfigRejected(server.to_string())
    }
}

/// Deletes the durable consumer if it is `owner`'s.
pub async fn delete_consumer(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    owner: &str,
) -> Result<Deletion> {
    let stream_handle = match js.get_stream_no_info(stream).await {
        Ok(handle) => handle,
        Err(e) => return Err(Error::JetStreamRequest(e.to_string())),
    };
    let Some(current) = consumer_info(&stream_handle, durable).await? else {
        return Ok(Deletion::Absent);
    };
    if claim(&current.config.metadata, owner) != Claim::Ours {
        return Ok(Deletion::NotOurs);
    }
    match stream_handle.delete_consumer(durable).await {
        Ok(_) => Ok(Deletion::Deleted),
        Err(e) if matches!(e.kind(), ConsumerErrorKind::JetStream(server) if server.error_code() == ErrorCode::CONSUMER_NOT_FOUND) => {
            Ok(Deletion::Absent)
        }
        Err(e) => Err(Error::JetStreamRequest(e.to_string())),
    }
}

/// The consumer's info, or `None` when it (or its stream) does not exist.
async fn consumer_info(
    stream: &jetstream::stream::Stream<()>,
    durable: &str,
) -> Result<Option<Info>> {
    match stream.consumer_info(durable).await {
        Ok(info) => Ok(Some(info)),
        Err(e) => match e.kind() {
            ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => Ok(None),
            ConsumerInfoErrorKind::JetStream(server)
                if server.error_code() == ErrorCode::CONSUMER_NOT_FOUND
                    || server.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(Error::JetStreamRequest(e.to_string())),
        },
    }
}

/// The pull-consumer view of a consumer's configuration as the server reports it.
fn as_pull_config(info: &Info) -> Result<Config> {
    // The server's consumer config holds the pull config's fields and more; reading it back
    // through serde keeps exactly the pull fields.
    serde_json::to_value(&info.config)
        .and_then(serde_json::from_value)
        .map_err(|e| Error::JetStreamRequest(format!("unreadable consumer config: {e}")))
}

/// Annotation on every workload object: a digest of what the operator last applied, so that
/// a field the operator stops setting (a pod annotation removed from the spec) still counts
/// as a change, which a comparison of the desired fields alone would not see.
pub const APPLIED_DIGEST_KEY: &str = "audit.eventsaudit.io/applied-digest";

/// Server-side applies `object` (which names its namespace) as the operator's field manager,
/// unless an object of that name exists that `owner_uid` does not control: a hand-made object
/// is never taken over. Nothing is sent when the `cache`d object already holds every field
/// of `object` with the same values and the same applied digest: a reconciliation that finds
/// nothing to change writes nothing, and reads nothing either (the watches keep the cache).
/// A stale cache only costs a redundant apply, never a missed one: every change to these
/// objects reaches the cache and wakes the AuditConsumer that owns them.
pub async fn apply_owned<K>(
    client: &Client,
    object: &K,
    owner_uid: &str,
    cache: &Store<K>,
) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let name = object.name_any();
    let desired = with_applied_digest(object);
    let not_ours = || Error::ObjectNotOurs {
        kind: K::kind(&()).into_owned(),
        name: name.clone(),
    };
    let apply = |force: bool| {
        let params = PatchParams::apply(FIELD_MANAGER);
        let params = if force { params.force() } else { params };
        let api = api.clone();
        let name = name.clone();
        let desired = desired.clone();
        async move { api.patch(&name, &params, &Patch::Apply(&desired)).await }
    };
    match cache.get(&ObjectRef::new(&name).within(&namespace)) {
        Some(cached) if !controlled_by(cached.as_ref(), owner_uid) => Err(not_ours()),
        Some(cached) if already_applied(cached.as_ref(), &desired) => Ok(cached.as_ref().clone()),
        Some(_) => apply(true).await.map_err(Error::Kube),
        // Not in the cache, which holds every object of the kind since before the
        // controllers started: so most likely not there, and an apply without force creates
        // it without a read first. Should it exist after all (made in the moment before the
        // watch delivered it), a field another manager set conflicts and the object is read
        // to tell whose it is; only an object made in that moment with no field in common
        // could be adopted.
        None => match apply(false).await {
            Err(kube::Error::Api(status)) if status.code == 409 => {
                match api.get_opt(&name).await.map_err(Error::Kube)? {
                    Some(existing) if !controlled_by(&existing, owner_uid) => Err(not_ours()),
                    _ => apply(true).await.map_err(Error::Kube),
                }
            }
            applied => applied.map_err(Error::Kube),
        },
    }
}

/// `object` with [`APPLIED_DIGEST_KEY`] set to (half of) the SHA-256 of its serialization.
// Serializing a k8s-openapi object cannot fail (string keys, no non-finite floats); were it
// to, the digest of nothing and an apply every time would be the harmless outcome.
fn with_applied_digest<K>(object: &K) -> K
where
    K: Resource + Serialize + Clone,
{
    let serialized = serde_json::to_vec(object).unwrap_or_default();
    let digest: String = Sha256::digest(&serialized)
        .iter()
        .take(16)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut object = object.clone();
    object
        .annotations_mut()
        .insert(APPLIED_DIGEST_KEY.to_owned(), digest);
    object
}

/// Whether `live` holds every field `desired` sets, with the same value.
fn already_applied<K: Serialize>(live: &K, desired: &K) -> bool {
    match (serde_json::to_value(live), serde_json::to_value(desired)) {
        (Ok(live), Ok(desired)) => contains(&live, &desired),
        _ => false,
    }
}

/// Whether `live` holds `desired`: every member of a desired object present with a value
/// that holds the desired one; lists of the same length holding each desired item in order;
/// anything else equal. Fields only the server or another controller sets (status,
/// defaults, other annotations) do not count.
fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired
            .iter()
            .all(|(key, wanted)| live.get(key).is_some_and(|have| contains(have, wanted))),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len()
                && live
                    .iter()
                    .zip(desired)
                    .all(|(have, wanted)| contains(have, wanted))
        }
        _ => live == desired,
    }
}

/// Deletes the object `name` in `namespace` if `owner_uid` controls it (a workload object the
/// spec no longer asks for, e.g. the budget after scaling to one replica). Only what the
/// `cache` holds is considered: the watches see every object the operator made.
pub async fn remove_owned<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    owner_uid: &str,
    cache: &Store<K>,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let Some(existing) = cache.get(&ObjectRef::new(name).within(namespace)) else {
        return Ok(());
    };
    if !controlled_by(existing.as_ref(), owner_uid) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

fn controlled_by<K: Resource>(object: &K, owner_uid: &str) -> bool {
    object
        .owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && owner.uid == owner_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(err_code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": err_code, "description": description,
        }))
        .unwrap()
    }

    #[test]
    fn a_live_object_holds_the_desired_one_whatever_the_server_added() {
        let desired = serde_json::json!({
            "metadata": { "name": "a", "labels": { "app": "x" } },
            "spec": { "replicas": 2, "ports": [{ "port": 80 }] },
        });
        let live = serde_json::json!({
            "metadata": { "name": "a", "labels": { "app": "x" }, "uid": "u", "generation": 3 },
            "spec": { "replicas": 2, "ports": [{ "port": 80, "protocol": "TCP" }], "paused": false },
            "status": { "replicas": 2 },
        });
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_missing_or_extra_desired_field_is_not_held() {
        let live = serde_json::json!({ "spec": { "replicas": 2, "args": ["a", "b"] } });
        for desired in [
            serde_json::json!({ "spec": { "replicas": 3 } }),
            serde_json::json!({ "spec": { "image": "x" } }),
            serde_json::json!({ "spec": { "args": ["a"] } }),
            serde_json::json!({ "spec": { "args": ["b", "a"] } }),
        ] {
            assert!(!contains(&live, &desired), "{desired}");
        }
    }

    #[test]
    fn the_applied_digest_changes_with_any_field_and_only_then() {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let account = |annotation: Option<&str>| {
            let mut account = ServiceAccount::default();
            account.metadata.name = Some("a".into());
            if let Some(value) = annotation {
                account
                    .annotations_mut()
                    .insert("note".into(), value.into());
            }
            account
        };
        let digest = |object: &ServiceAccount| {
            with_applied_digest(object).annotations()[APPLIED_DIGEST_KEY].clone()
        };
        assert_eq!(digest(&account(None)), digest(&account(None)));
        assert_ne!(digest(&account(None)), digest(&account(Some("x"))));
        // A field the operator stopped setting: the live object still holds everything the
        // new desired object sets, but not its digest.
        let live = with_applied_digest(&account(Some("x")));
        let desired = with_applied_digest(&account(None));
        assert!(!already_applied(&live, &desired));
        assert!(already_applied(
            &live,
            &with_applied_digest(&account(Some("x")))
        ));
    }

    #[test]
    fn a_stream_missing_on_the_server_is_a_wait_not_a_rejected_configuration() {
        let missing = rejected("ORDERS", &server_error(10059, "stream not found"));
        assert!(
            matches!(&missing, Error::StreamMissingOnNats { stream } if stream == "ORDERS"),
            "{missing}"
        );
        assert!(!missing.needs_user_action());
        let refused = rejected(
            "ORDERS",
            &server_error(10012, "deliver policy can not be updated"),
        );
        assert!(matches!(refused, Error::ConsumerConfigRejected(_)));
        assert!(refused.needs_user_action());
    }
}
