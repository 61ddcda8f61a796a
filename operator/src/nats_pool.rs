//! NATS connections shared between resources: one client per distinct connection (servers,
//! domain, credentials and the resourceVersions of the Secrets they came from).
//!
//! A rotated Secret changes the key, so the next reconciliation opens a new connection with
//! the new credentials; a connection no resource uses any more is dropped (which closes it).
//! A cached client that is not connected is replaced by a fresh connection attempt, so a
//! failure is reported as what it is now (unreachable, credentials rejected) rather than as
//! timeouts of a client still retrying in the background.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{ConnectErrorKind, connection::State};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{
    error::{Error, Result},
    stream::dereference::{Credentials, ResolvedConnection, TlsMaterial},
};

/// Identity of a pooled connection. The material is compared in full rather than hashed so
/// that two connections can never be confused.
type PoolKey = ResolvedConnection;

#[derive(Default)]
struct PoolState {
    clients: Vec<(PoolKey, async_nats::Client)>,
    /// Which connection each user (a resource, e.g. `AuditStream/ns/name`) currently holds.
    users: HashMap<String, PoolKey>,
}

/// Shared NATS clients, keyed by connection material.
pub struct NatsPool {
    connect_timeout: Duration,
    state: Mutex<PoolState>,
}

impl NatsPool {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            state: Mutex::default(),
        }
    }

    /// A connected client for `connection`, recorded as used by `user`.
    pub async fn client(
        &self,
        user: &str,
        connection: &ResolvedConnection,
    ) -> Result<async_nats::Client> {
        let cached = {
            let mut state = self.lock();
            state.users.insert(user.to_owned(), connection.clone());
            prune(&mut state);
            state
                .clients
                .iter()
                .find(|(key, _)| key == connection)
                .map(|(_, client)| client.clone())
        };
        if let Some(client) = cached
            && client.connection_state() == State::Connected
        {
            return Ok(client);
        }
        let client = connect(connection, self.connect_timeout).await?;
        let mut state = self.lock();
        state.clients.retain(|(key, _)| key != connection);
        state.clients.push((connection.clone(), client.clone()));
        Ok(client)
    }

    /// Forgets `user`; its connection closes when no other user holds it.
    pub fn release(&self, user: &str) {
        let mut state = self.lock();
        state.users.remove(user);
        prune(&mut state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn prune(state: &mut PoolState) {
    let PoolState { clients, users } = state;
    clients.retain(|(key, _)| users.values().any(|used| used == key));
}

async fn connect(connection: &ResolvedConnection, timeout: Duration) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("audit-operator")
        .connection_timeout(timeout)
        .request_timeout(Some(timeout));
    options = match &connection.credentials {
        None => options,
        Some(Credentials::Creds(creds)) => options
            .credentials(creds)
            .map_err(|e| Error::CredsInvalid(e.to_string()))?,
        Some(Credentials::NKeySeed(seed)) => options.nkey(seed.clone()),
        Some(Credentials::UserPassword { user, password }) => {
            options.user_and_password(user.clone(), password.clone())
        }
        Some(Credentials::Token(token)) => options.token(token.clone()),
    };
    if let Some(tls) = &connection.tls {
        options = options.tls_client_config(tls_config(tls)?);
    }
    let servers = connection.servers.join(",");
    let addresses: Vec<async_nats::ServerAddr> = connection
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::InvalidSpec(format!("connection.servers: {e}")))?;
    options
        .connect(addresses)
        .await
        .map_err(|source| match source.kind() {
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                Error::NatsAuthRejected { servers, source }
            }
            ConnectErrorKind::Tls => Error::NatsTls(format!("{servers}: {source}")),
            ConnectErrorKind::Io if is_tls_rejection(&source) => {
                Error::NatsTls(format!("{servers}: {source}"))
            }
            ConnectErrorKind::ServerParse => {
                Error::InvalidSpec(format!("connection.servers: {source}"))
            }
            _ => Error::NatsUnreachable { servers, source },
        })
}

/// async-nats reports a refused TLS handshake (a certificate the configured CA did not sign,
/// a name mismatch) as an I/O error. Only the rustls error inside tells it apart from an
/// unreachable server: that one the user must fix, so it stalls instead of retrying quietly.
fn is_tls_rejection(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        // io::Error's source() skips the error it wraps; get_ref() is the way in.
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if error.downcast_ref::<rustls::Error>().is_some()
            || wrapped.is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        current = wrapped.or_else(|| error.source());
    }
    false
}

/// A rustls client configuration from PEM material: the CA given, else the system roots; the
/// client certificate when given.
fn tls_config(material: &TlsMaterial) -> Result<rustls::ClientConfig> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| Error::NatsTls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    match &material.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| invalid("CA certificate is not valid PEM", &e))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid("CA certificate rejected", &e))?;
            }
            if roots.is_empty() {
                return Err(Error::NatsTls(
                    "CA Secret key holds no PEM certificate".into(),
                ));
            }
        }
        None => {
            let (added, _ignored) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err(Error::NatsTls(
                    "no CA given and no system trust roots found: set connection.tls.caSecretRef"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS setup", &e))?
        .with_root_certificates(roots);
    match &material.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid("client certificate (tls.crt) is not valid PEM", &e))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| invalid("client key (tls.key) is not valid PEM", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid("client certificate rejected", &e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> TlsMaterial {
        let ca = rcgen::CertifiedIssuer::self_signed(
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        TlsMaterial {
            ca_pem: Some(ca.pem().into_bytes()),
            client_cert: Some((cert.pem().into_bytes(), key.serialize_pem().into_bytes())),
        }
    }

    #[test]
    fn builds_mutual_tls_config_from_pem() {
        tls_config(&material()).unwrap();
    }

    #[test]
    fn rejects_a_ca_secret_without_certificates() {
        let mut bad = material();
        bad.ca_pem = Some(b"not pem".to_vec());
        assert!(matches!(tls_config(&bad), Err(Error::NatsTls(_))));
    }

    #[test]
    fn a_rejected_certificate_inside_an_io_error_is_a_tls_failure() {
        let rejected = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature),
        );
        assert!(is_tls_rejection(&rejected));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_tls_rejection(&refused));
    }
}
