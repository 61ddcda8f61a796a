//! Every way a reconciliation can fail, with what a user should do about it.
//!
//! Each variant knows its Condition/Event reason and whether it needs a change from the user
//! (kstatus `Stalled`) or is retried until it clears on its own (kstatus `Reconciling`). The
//! messages name Secrets and keys but never their contents.

use std::sync::Arc;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Secret {name:?} not found in the resource's namespace: create it, or fix the reference"
    )]
    SecretNotFound { name: String },

    #[error("Secret {name:?} has no key {key:?}: add the key, or fix the reference")]
    SecretKeyMissing { name: String, key: String },

    #[error("Secret {name:?} key {key:?} is unusable: {problem}")]
    SecretInvalid {
        name: String,
        key: String,
        problem: String,
    },

    #[error(
        "the Secret referenced by connection.auth.credsSecretRef is not a NATS credentials file ({0}): store the output of `nsc generate creds` there"
    )]
    CredsInvalid(String),

    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    #[error("cannot reach NATS at {servers}: {source}; the operator keeps retrying")]
    NatsUnreachable {
        servers: String,
        #[source]
        source: async_nats::ConnectError,
    },

    #[error("NATS at {servers} rejected the credentials ({source}): {advice}")]
    NatsAuthRejected {
        servers: String,
        #[source]
        source: async_nats::ConnectError,
        /// What to check, which depends on the kind of credentials.
        advice: &'static str,
    },

    #[error(
        "the user JWT in Secret {secret:?} expired at {expired_at}: issue new credentials (`nsc generate creds`) and store them in the Secret"
    )]
    CredsExpired { secret: String, expired_at: String },

    #[error("NATS TLS setup failed: {0}")]
    NatsTls(String),

    #[error("JetStream request failed: {0}; the operator keeps retrying")]
    JetStreamRequest(String),

    /// Carries the server's text, which includes its error code.
    #[error("NATS rejected the stream configuration: {0}: change the spec accordingly")]
    StreamConfigRejected(String),

    #[error(
        "a stream named {stream:?} already exists on the server and was not created by this resource: set spec.adopt: true to take it over, or choose another spec.name"
    )]
    StreamNotAdopted { stream: String },

    #[error(
        "stream {stream:?} belongs to AuditStream {owner}: two resources cannot manage one stream; choose another spec.name"
    )]
    StreamOwnedByOther { stream: String, owner: String },

    #[error(
        "AuditStream {name:?} does not exist in the AuditConsumer's namespace: create it, or fix spec.streamRef"
    )]
    StreamNotFound { name: String },

    #[error("AuditStream {name:?} is not Ready yet ({reason}); waiting for it")]
    StreamNotReady { name: String, reason: String },

    #[error(
        "stream {stream:?} does not exist on NATS: its AuditStream recreates it (it was deleted outside the operator, or a memory stream was lost in a restart); waiting for it"
    )]
    StreamMissingOnNats { stream: String },

    /// Carries the server's text, which includes its error code.
    #[error(
        "NATS rejected the consumer configuration: {0}; deliverPolicy, startSequence and startTime cannot change on a durable consumer: to change them, create a new AuditConsumer (or set a new durableName)"
    )]
    ConsumerConfigRejected(String),

    #[error(
        "a consumer named {consumer:?} already exists on stream {stream:?} and is not managed by this AuditConsumer: delete it on NATS, or choose another spec.durableName"
    )]
    ConsumerNotOurs { stream: String, consumer: String },

    #[error(
        "witness stream {stream:?} cannot hold the checkpoints: {problem}; fix it on NATS (the operator never changes an existing stream), or name another spec.integrity.witnessStream"
    )]
    WitnessStreamUnfit { stream: String, problem: String },

    #[error(
        "a {kind} named {name:?} already exists and is not controlled by this AuditConsumer: delete or rename it"
    )]
    ObjectNotOurs { kind: String, name: String },

    /// Said instead of a Secret problem in a namespace being deleted: no Secret can be created
    /// there any more, so the usual advice would be impossible to follow.
    #[error(
        "the namespace is being deleted and the credentials for NATS went first: this resource goes with the namespace; nothing to do"
    )]
    NamespaceTerminating,

    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),

    /// A failed connection attempt that several reconciliations waited for together (the
    /// pool makes one attempt per connection at a time); each of them reports it.
    #[error(transparent)]
    SharedConnectFailure(Arc<Error>),
}

impl Error {
    /// The reason used in the `Ready` condition and in the Warning event, in CamelCase.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::SecretNotFound { .. } => "SecretNotFound",
            Error::SecretKeyMissing { .. } => "SecretKeyMissing",
            Error::SecretInvalid { .. } | Error::CredsInvalid(_) => "SecretInvalid",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::NatsUnreachable { .. } => "NatsUnreachable",
            Error::NatsAuthRejected { .. } => "NatsAuthenticationFailed",
            Error::CredsExpired { .. } => "NatsCredentialsExpired",
            Error::NatsTls(_) => "NatsTlsFailed",
            Error::JetStreamRequest(_) => "JetStreamRequestFailed",
            Error::StreamConfigRejected(_) => "StreamConfigRejected",
            Error::StreamNotAdopted { .. } => "StreamExists",
            Error::StreamOwnedByOther { .. } => "StreamOwnedByAnotherResource",
            Error::StreamNotFound { .. } => "StreamNotFound",
            Error::StreamNotReady { .. } => "StreamNotReady",
            Error::ConsumerConfigRejected(_) => "ConsumerConfigRejected",
            Error::ConsumerNotOurs { .. } => "ConsumerExists",
            Error::ObjectNotOurs { .. } => "ObjectExists",
            Error::WitnessStreamUnfit { .. } => "WitnessStreamUnfit",
            Error::StreamMissingOnNats { .. } => "StreamMissingOnNats",
            Error::NamespaceTerminating => "NamespaceTerminating",
            Error::Kube(_) => "KubernetesApiFailed",
            Error::SharedConnectFailure(inner) => inner.reason(),
        }
    }

    /// Whether the failure lasts until a user changes the spec, a Secret or the NATS server
    /// (kstatus `Stalled`), rather than clearing by itself on a retry.
    pub fn needs_user_action(&self) -> bool {
        match self {
            Error::SecretNotFound { .. }
            | Error::SecretKeyMissing { .. }
            | Error::SecretInvalid { .. }
            | Error::CredsInvalid(_)
            | Error::InvalidSpec(_)
            | Error::NatsAuthRejected { .. }
            | Error::CredsExpired { .. }
            | Error::NatsTls(_)
            | Error::StreamConfigRejected(_)
            | Error::StreamNotAdopted { .. }
            | Error::StreamOwnedByOther { .. }
            | Error::StreamNotFound { .. }
            | Error::ConsumerConfigRejected(_)
            | Error::ConsumerNotOurs { .. }
            | Error::ObjectNotOurs { .. }
            | Error::WitnessStreamUnfit { .. } => true,
            Error::NatsUnreachable { .. }
            | Error::JetStreamRequest(_)
            | Error::Kube(_)
            | Error::StreamNotReady { .. }
            | Error::StreamMissingOnNats { .. }
            | Error::NamespaceTerminating => false,
            Error::SharedConnectFailure(inner) => inner.needs_user_action(),
        }
    }

    /// Whether the credentials could not be taken from the referenced Secrets: missing,
    /// incomplete or unusable (an expired user JWT included). A deletion can then still use
    /// the credentials last connected with.
    pub fn is_unusable_secret(&self) -> bool {
        match self {
            Error::SecretNotFound { .. }
            | Error::SecretKeyMissing { .. }
            | Error::SecretInvalid { .. }
            | Error::CredsInvalid(_)
            | Error::CredsExpired { .. } => true,
            Error::SharedConnectFailure(inner) => inner.is_unusable_secret(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_connect_failure_reports_as_the_failure_it_wraps() {
        let shared = Error::SharedConnectFailure(Arc::new(Error::CredsInvalid("bad".into())));
        assert_eq!(shared.reason(), "SecretInvalid");
        assert!(shared.needs_user_action());
        assert!(shared.is_unusable_secret());
        assert_eq!(
            shared.to_string(),
            Error::CredsInvalid("bad".into()).to_string()
        );
    }

    #[test]
    fn in_a_namespace_being_deleted_nothing_is_asked_of_the_user() {
        let terminating = Error::NamespaceTerminating;
        assert!(!terminating.needs_user_action());
        assert!(!terminating.to_string().contains("create"), "{terminating}");
    }

    #[test]
    fn a_stream_missing_on_nats_is_a_wait() {
        let missing = Error::StreamMissingOnNats {
            stream: "ORDERS".into(),
        };
        assert_eq!(missing.reason(), "StreamMissingOnNats");
        assert!(!missing.needs_user_action());
    }
}
