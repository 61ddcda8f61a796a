//! Pipeline step 1 (I/O): read the referenced AuditStream, insist that it is Ready, and read
//! the Secrets of its connection (as the AuditStream controller does, through
//! [`crate::connection`], so both resolve it identically and share its pooled NATS client).

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Secret,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, ResourceExt,
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};

use super::integrity::SigningKey;
use crate::{
    conditions::{READY, Status},
    connection::{self, ResolvedConnection},
    crd::{consumer::AuditConsumer, stream::AuditStream},
    error::{Error, Result},
};

/// What an AuditConsumer references, resolved.
#[derive(Clone, Debug)]
pub struct Referenced {
    pub stream: AuditStream,
    /// The stream's name on NATS.
    pub stream_name: String,
    pub connection: ResolvedConnection,
    /// With integrity on, the signing key's public half (read after the stream: see
    /// [`super::integrity::read_signing_key`]).
    pub signing_key: Option<SigningKey>,
    /// With an archive, the versions of the Secrets its pods mount (see
    /// [`super::archive::read_secrets`]).
    pub archive_secret_versions: Vec<String>,
}

impl Referenced {
    /// Whether the pods get their CA from the client certificate Secret's `ca.crt`.
    pub fn client_cert_has_ca(&self) -> bool {
        let spec_tls = self.stream.spec.connection.tls.as_ref();
        spec_tls
            .is_some_and(|tls| tls.ca_secret_ref.is_none() && tls.client_cert_secret_ref.is_some())
            && self
                .connection
                .tls
                .as_ref()
                .is_some_and(|tls| tls.ca_pem.is_some())
    }
}

/// Takes the AuditStream `consumer` references from the watch's cache, and reads its
/// connection's Secrets. The cache, not a read: it is what the trigger that wakes an
/// AuditConsumer when its AuditStream turns Ready sees, so the two always agree, and a
/// thousand AuditConsumers reconciled at once do not make a thousand reads. Only a stream
/// missing from the cache is read from `stream_api`: in a bulk apply the watch can lag a
/// moment behind a stream created just before its consumer.
pub async fn dereference(
    consumer: &AuditConsumer,
    streams: &Store<DeserializeGuard<AuditStream>>,
    stream_api: &Api<AuditStream>,
    secrets: &Api<Secret>,
    grace: Duration,
) -> Result<Referenced> {
    let name = &consumer.spec.stream_ref.name;
    let namespace = consumer.namespace().unwrap_or_default();
    let cached = streams.get(&ObjectRef::new(name).within(&namespace));
    let stream = match cached.as_deref() {
        Some(DeserializeGuard(Ok(stream))) => stream.clone(),
        // Unreadable: its own controller reports why; for this one it is not Ready.
        Some(DeserializeGuard(Err(_))) => {
            return Err(Error::StreamNotReady {
                name: name.clone(),
                reason: "it cannot be read (see its own Events)".into(),
            });
        }
        None => match stream_api.get_opt(name).await.map_err(Error::Kube)? {
            Some(stream) => stream,
            None => {
                let created = consumer.metadata.creation_timestamp.as_ref().map(|t| t.0);
                return Err(missing_stream(name, created, grace, Timestamp::now()));
            }
        },
    };
    ready(&stream)?;
    let connection = connection::dereference(secrets, &stream.spec.connection).await?;
    Ok(Referenced {
        stream_name: stream.stream_name(),
        stream,
        connection,
        signing_key: None,
        archive_secret_versions: Vec::new(),
    })
}

/// A referenced AuditStream that does not exist (pure): waited for during `grace` after the
/// consumer's creation (`--missing-stream-grace`: a GitOps tool or `kubectl apply -f <dir>`
/// creates both at once, in any order, and the consumer must not look failed for that
/// moment), missing (`Stalled`, with a Warning) after that.
pub fn missing_stream(
    name: &str,
    created: Option<Timestamp>,
    grace: Duration,
    now: Timestamp,
) -> Error {
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    let young = created
        .and_then(|created| created.checked_add(grace).ok())
        .is_some_and(|deadline| now < deadline);
    if young {
        Error::StreamNotReady {
            name: name.to_owned(),
            reason: "it does not exist yet".into(),
        }
    } else {
        Error::StreamNotFound {
            name: name.to_owned(),
        }
    }
}

/// The referenced AuditStream, whether Ready or not.
pub async fn referenced_stream(
    consumer: &AuditConsumer,
    streams: &Api<AuditStream>,
) -> Result<AuditStream> {
    let name = &consumer.spec.stream_ref.name;
    streams
        .get_opt(name)
        .await
        .map_err(Error::Kube)?
        .ok_or_else(|| Error::StreamNotFound { name: name.clone() })
}

/// Fails unless the AuditStream reports Ready for its current generation (pure).
pub fn ready(stream: &AuditStream) -> Result<()> {
    let name = stream.name_any();
    if stream.metadata.deletion_timestamp.is_some() {
        return Err(Error::StreamNotReady {
            name,
            reason: "it is being deleted".into(),
        });
    }
    let status = stream.status.as_ref();
    let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    match ready {
        Some(condition)
            if Status::True.of(condition)
                && status.and_then(|s| s.observed_generation) == stream.metadata.generation =>
        {
            Ok(())
        }
        Some(condition) if !Status::True.of(condition) => Err(Error::StreamNotReady {
            name,
            reason: format!("{}: {}", condition.reason, condition.message),
        }),
        _ => Err(Error::StreamNotReady {
            name,
            reason: "the operator has not reconciled its current spec yet".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(status_yaml: &str) -> AuditStream {
        let mut stream = AuditStream::new(
            "orders",
            serde_yaml::from_str(
                "connection: {servers: [nats://127.0.0.1:4222]}\nsubjects: [audit.>]\n",
            )
            .unwrap(),
        );
        stream.metadata.generation = Some(2);
        stream.status = serde_yaml::from_str(status_yaml).unwrap();
        stream
    }

    const READY_AT_2: &str = "observedGeneration: 2\nconditions:\n- {type: Ready, status: 'True', reason: StreamReady, message: ok, lastTransitionTime: '2026-11-22T00:00:00Z'}\n";

    #[test]
    fn ready_only_for_the_current_generation() {
        assert!(ready(&stream(READY_AT_2)).is_ok());
        let stale = READY_AT_2.replace("observedGeneration: 2", "observedGeneration: 1");
        assert!(matches!(
            ready(&stream(&stale)),
            Err(Error::StreamNotReady { .. })
        ));
        assert!(ready(&stream("{}")).is_err());
    }

    #[test]
    fn a_missing_stream_is_waited_for_while_the_consumer_is_new() {
        let created = Timestamp::from_second(1_000).unwrap();
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let grace = Duration::from_secs(60);
        let young = missing_stream("orders", Some(created), grace, at(1_030));
        assert!(matches!(young, Error::StreamNotReady { .. }), "{young}");
        assert!(!young.needs_user_action());
        assert!(young.to_string().contains("does not exist yet"), "{young}");
        let old = missing_stream("orders", Some(created), grace, at(1_060));
        assert!(matches!(old, Error::StreamNotFound { .. }), "{old}");
        assert!(old.needs_user_action());
        assert!(matches!(
            missing_stream("orders", None, grace, at(1_000)),
            Error::StreamNotFound { .. }
        ));
    }

    #[test]
    fn not_ready_carries_the_streams_reason() {
        let failing = READY_AT_2
            .replace("'True'", "'False'")
            .replace("StreamReady, message: ok", "NatsUnreachable, message: down");
        let err = ready(&stream(&failing)).unwrap_err();
        assert!(err.to_string().contains("NatsUnreachable: down"), "{err}");
        assert!(!err.needs_user_action());
    }
}
