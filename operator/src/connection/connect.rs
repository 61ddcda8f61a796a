//! Opening one NATS connection from resolved material: the credentials, a TLS configuration
//! built in memory from the Secrets' PEM (nothing is written to disk), and what a failure
//! means for the user (unreachable, credentials rejected, TLS refused, a malformed URL).

use std::{sync::Arc, time::Duration};

use async_nats::ConnectErrorKind;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::resolve::{Credentials, ResolvedConnection, TlsMaterial};
use crate::error::{Error, Result};

/// Connects with `connection`'s material; `on_event` hears every event of the client
/// (reconnections, server errors) for as long as it lives.
pub async fn connect(
    connection: &ResolvedConnection,
    timeout: Duration,
    on_event: impl Fn(async_nats::Event) + Send + Sync + 'static,
) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("audit-operator")
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .event_callback(move |event| {
            on_event(event);
            std::future::ready(())
        });
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
                Error::NatsAuthRejected {
                    servers,
                    source,
                    advice: auth_advice(connection.credentials.as_ref()),
                }
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

/// What to check when the server rejected a login: a user JWT the server's accounts do not
/// trust, or that its account revoked, needs new credentials; anything else, the Secret or the
/// server's users. (The server says only "Authorization Violation" either way.)
fn auth_advice(credentials: Option<&Credentials>) -> &'static str {
    match credentials {
        Some(Credentials::Creds(_)) => {
            "the server's operator does not trust the user's account, or the account revoked \
             the user's JWT: issue new credentials (`nsc generate creds`) and store them in the \
             Secret, or fix the server's accounts"
        }
        None => "the server requires credentials: set connection.auth",
        Some(_) => "fix the referenced Secret or the server's users",
    }
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
