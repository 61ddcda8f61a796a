//! Pipeline step 1 (I/O): read the referenced AuditStream, insist that it is Ready, and read
//! the Secrets of its connection (as the AuditStream controller does, through
//! [`crate::connection`], so both resolve it identically and share its pooled NATS client).

use k8s_openapi::api::core::v1::Secret;
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
/// thousand AuditConsumers reconciled at once do not make a thousand reads.
pub async fn dereference(
    consumer: &AuditConsumer,
    streams: &Store<DeserializeGuard<AuditStream>>,
    secrets: &Api<Secret>,
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
        None => return Err(Error::StreamNotFound { name: name.clone() }),
    };
    ready(&stream)?;
    let connection = connection::dereference(secrets, &stream.spec.connection).await?;
    Ok(Referenced {
        stream_name: stream.stream_name(),
        stream,
        connection,
        signing_key: None,
    })
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
    fn not_ready_carries_the_streams_reason() {
        let failing = READY_AT_2
            .replace("'True'", "'False'")
            .replace("StreamReady, message: ok", "NatsUnreachable, message: down");
        let err = ready(&stream(&failing)).unwrap_err();
        assert!(err.to_string().contains("NatsUnreachable: down"), "{err}");
        assert!(!err.needs_user_action());
    }
}
