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
};
use serde::{Serialize, de::DeserializeOwned};

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

/// Server-side applies `object` (which names its namespace) as the operator's field manager,
/// unless an object of that name exists that `owner_uid` does not control: a hand-made object
/// is never taken over.
pub async fn apply_owned<K>(client: &Client, object: &K, owner_uid: &str) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    let name = object.name_any();
    if let Some(existing) = api.get_opt(&name).await.map_err(Error::Kube)?
        && !controlled_by(&existing, owner_uid)
    {
        return Err(Error::ObjectNotOurs {
            kind: K::kind(&()).into_owned(),
            name,
        });
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(Error::Kube)
}

/// Deletes the object `name` in `namespace` if `owner_uid` controls it (a workload object the
/// spec no longer asks for, e.g. the budget after scaling to one replica).
pub async fn remove_owned<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    owner_uid: &str,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await.map_err(Error::Kube)? {
        Some(existing) if controlled_by(&existing, owner_uid) => {
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(e) => Err(Error::Kube(e)),
            }
        }
        _ => Ok(()),
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
