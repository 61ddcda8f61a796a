//! A connection's material: [`dereference`] (I/O) reads the Secrets a `connection` references
//! and [`resolve`] (pure, unit-tested) pulls out what the NATS client needs. Both controllers'
//! pipelines start here (dereference), and the consumer pods mount the same Secrets.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::{
    crd::connection::{AuthSecret, NatsConnection, SecretKeyRef},
    error::{Error, Result},
};

/// Credentials for one NATS user, from a Secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Creds(String),
    NKeySeed(String),
    UserPassword { user: String, password: String },
    Token(String),
}

// Credentials never reach a log line: Debug names the kind only.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Credentials::Creds(_) => "Creds",
            Credentials::NKeySeed(_) => "NKeySeed",
            Credentials::UserPassword { .. } => "UserPassword",
            Credentials::Token(_) => "Token",
        };
        write!(f, "Credentials::{kind}(<redacted>)")
    }
}

/// PEM material for TLS, from Secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_pem: Option<Vec<u8>>,
    /// Certificate chain and private key, both PEM.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

/// Everything needed to open a NATS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedConnection {
    pub servers: Vec<String>,
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsMaterial>,
    pub js_domain: Option<String>,
    /// `namespace/name@resourceVersion` of every Secret read, sorted: together with the spec
    /// it identifies a connection in the pool, so a rotated Secret yields a new connection.
    pub secret_versions: Vec<String>,
}

/// Reads every Secret `connection` references from `secrets` (an Api scoped to the resource's
/// namespace) and resolves the connection.
pub async fn dereference(
    secrets: &Api<Secret>,
    connection: &NatsConnection,
) -> Result<ResolvedConnection> {
    let mut fetched = BTreeMap::new();
    for name in connection.secret_names() {
        if fetched.contains_key(name) {
            continue;
        }
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(Error::Kube)?
            .ok_or_else(|| Error::SecretNotFound {
                name: name.to_owned(),
            })?;
        fetched.insert(name.to_owned(), secret);
    }
    let resolved = resolve(connection, &fetched)?;
    ensure_credentials_current(connection, &resolved, k8s_openapi::jiff::Timestamp::now())?;
    Ok(resolved)
}

/// A user JWT past its expiry would only be refused by the server as an "authorization
/// violation"; said here, the condition tells when it expired and what to do.
pub fn ensure_credentials_current(
    connection: &NatsConnection,
    resolved: &ResolvedConnection,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<()> {
    let Some(Credentials::Creds(creds)) = &resolved.credentials else {
        return Ok(());
    };
    let expiry = super::creds::user_jwt_expiry(creds).map_err(Error::CredsInvalid)?;
    match expiry {
        Some(expiry) if expiry <= now.as_second() => Err(Error::CredsExpired {
            secret: connection
                .auth_secret()
                .map(|secret| secret.secret_name().to_owned())
                .unwrap_or_default(),
            expired_at: k8s_openapi::jiff::Timestamp::from_second(expiry)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| expiry.to_string()),
        }),
        _ => Ok(()),
    }
}

/// Pulls the referenced keys out of already-fetched Secrets, keyed by name.
pub fn resolve(
    connection: &NatsConnection,
    secrets: &BTreeMap<String, Secret>,
) -> Result<ResolvedConnection> {
    let credentials = match &connection.auth {
        None => None,
        Some(auth) => Some(match auth.secret() {
            Some(AuthSecret::Creds(r)) => Credentials::Creds(text(secrets, r)?),
            Some(AuthSecret::NKey(r)) => Credentials::NKeySeed(text(secrets, r)?.trim().to_owned()),
            Some(AuthSecret::UserPassword(r)) => {
                let key = |key: &str| SecretKeyRef {
                    name: r.name.clone(),
                    key: key.to_owned(),
                };
                Credentials::UserPassword {
                    user: text(secrets, &key(&r.username_key))?,
                    password: text(secrets, &key(&r.password_key))?,
                }
            }
            Some(AuthSecret::Token(r)) => Credentials::Token(text(secrets, r)?.trim().to_owned()),
            None => {
                return Err(Error::InvalidSpec(
                    "connection.auth must set exactly one of credsSecretRef, nkeySecretRef, userPasswordSecretRef, tokenSecretRef".into(),
                ));
            }
        }),
    };

    let tls = match &connection.tls {
        None => None,
        Some(tls) => {
            let client_cert = match &tls.client_cert_secret_ref {
                None => None,
                Some(r) => {
                    let key = |key: &str| SecretKeyRef {
                        name: r.name.clone(),
                        key: key.to_owned(),
                    };
                    Some((
                        bytes(secrets, &key("tls.crt"))?,
                        bytes(secrets, &key("tls.key"))?,
                    ))
                }
            };
            let ca_pem = match (&tls.ca_secret_ref, &tls.client_cert_secret_ref) {
                (Some(r), _) => Some(bytes(secrets, r)?),
                (None, Some(r)) => optional_bytes(secrets, &r.name, "ca.crt"),
                (None, None) => None,
            };
            Some(TlsMaterial {
                ca_pem,
                client_cert,
            })
        }
    };

    let mut secret_versions: Vec<String> = secrets
        .values()
        .map(|s| {
            format!(
                "{}/{}@{}",
                s.namespace().unwrap_or_default(),
                s.name_any(),
                s.resource_version().unwrap_or_default()
            )
        })
        .collect();
    secret_versions.sort();

    Ok(ResolvedConnection {
        servers: connection.servers.clone(),
        credentials,
        tls,
        js_domain: connection.js_domain.clone(),
        secret_versions,
    })
}

fn optional_bytes(secrets: &BTreeMap<String, Secret>, name: &str, key: &str) -> Option<Vec<u8>> {
    let data = secrets.get(name)?.data.as_ref()?;
    data.get(key).map(|b| b.0.clone())
}

fn bytes(secrets: &BTreeMap<String, Secret>, r: &SecretKeyRef) -> Result<Vec<u8>> {
    if !secrets.contains_key(&r.name) {
        return Err(Error::SecretNotFound {
            name: r.name.clone(),
        });
    }
    optional_bytes(secrets, &r.name, &r.key).ok_or_else(|| Error::SecretKeyMissing {
        name: r.name.clone(),
        key: r.key.clone(),
    })
}

/// The text under `r` of the already-fetched Secrets, neither missing nor empty.
pub fn text(secrets: &BTreeMap<String, Secret>, r: &SecretKeyRef) -> Result<String> {
    let value = String::from_utf8(bytes(secrets, r)?).map_err(|_| Error::SecretInvalid {
        name: r.name.clone(),
        key: r.key.clone(),
        problem: "not UTF-8 text".into(),
    })?;
    if value.trim().is_empty() {
        return Err(Error::SecretInvalid {
            name: r.name.clone(),
            key: r.key.clone(),
            problem: "empty".into(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(yaml: &str) -> NatsConnection {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn secrets(yaml: &str) -> BTreeMap<String, Secret> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|doc| {
                let secret: Secret = serde::Deserialize::deserialize(doc).unwrap();
                (secret.name_any(), secret)
            })
            .collect()
    }

    const SECRETS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: basic, namespace: ns, resourceVersion: "7"}
type: kubernetes.io/basic-auth
data: {username: YXVkaXRvcg==, password: czNjcjN0}
---
apiVersion: v1
kind: Secret
metadata: {name: token, namespace: ns, resourceVersion: "3"}
data: {token: IHRvay0xMjMK}
---
apiVersion: v1
kind: Secret
metadata: {name: client-tls, namespace: ns, resourceVersion: "9"}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ, ca.crt: Q0E=}
"#;

    #[test]
    fn user_password_with_default_keys() {
        let conn = connection(
            "servers: [nats://127.0.0.1:4222]\nauth: {userPasswordSecretRef: {name: basic}}",
        );
        let resolved = resolve(&conn, &secrets(SECRETS)).unwrap();
        assert_eq!(
            resolved.credentials,
            Some(Credentials::UserPassword {
                user: "auditor".into(),
                password: "s3cr3t".into()
            })
        );
        assert_eq!(
            resolved.secret_versions,
            ["ns/basic@7", "ns/client-tls@9", "ns/token@3"]
        );
    }

    #[test]
    fn token_is_trimmed() {
        let conn = connection(
            "servers: [nats://127.0.0.1:4222]\nauth: {tokenSecretRef: {name: token, key: token}}",
        );
        let resolved = resolve(&conn, &secrets(SECRETS)).unwrap();
        assert_eq!(
            resolved.credentials,
            Some(Credentials::Token("tok-123".into()))
        );
    }

    #[test]
    fn missing_secret_and_missing_key_are_distinct_errors() {
        let conn = connection(
            "servers: [nats://127.0.0.1:4222]\nauth: {tokenSecretRef: {name: absent, key: token}}",
        );
        assert!(matches!(
            resolve(&conn, &secrets(SECRETS)),
            Err(Error::SecretNotFound { name }) if name == "absent"
        ));
        let conn = connection(
            "servers: [nats://127.0.0.1:4222]\nauth: {tokenSecretRef: {name: token, key: nope}}",
        );
        assert!(matches!(
            resolve(&conn, &secrets(SECRETS)),
            Err(Error::SecretKeyMissing { name, key }) if name == "token" && key == "nope"
        ));
    }

    #[test]
    fn tls_ca_falls_back_to_the_client_certificate_secret() {
        let conn = connection(
            "servers: [tls://127.0.0.1:4222]\ntls: {clientCertSecretRef: {name: client-tls}}",
        );
        let tls = resolve(&conn, &secrets(SECRETS)).unwrap().tls.unwrap();
        assert_eq!(tls.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert_eq!(tls.client_cert, Some((b"CERT".to_vec(), b"KEY".to_vec())));
    }

    #[test]
    fn debug_output_hides_credentials() {
        let printed = format!("{:?}", Credentials::Token("tok-123".into()));
        assert!(!printed.contains("tok-123"));
    }

    #[test]
    fn an_expired_user_jwt_says_when_and_names_the_secret() {
        use base64::Engine as _;
        let encode =
            |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text.as_bytes());
        let creds = |exp: i64| {
            format!(
                "-----BEGIN NATS USER JWT-----\n{}.{}.c2ln\n------END NATS USER JWT------\n",
                encode("{}"),
                encode(&format!(r#"{{"sub":"UA","exp":{exp}}}"#))
            )
        };
        let conn = connection(
            "servers: [nats://127.0.0.1:4222]\nauth: {credsSecretRef: {name: user-creds, key: user.creds}}",
        );
        let resolved = |creds: String| ResolvedConnection {
            servers: conn.servers.clone(),
            credentials: Some(Credentials::Creds(creds)),
            tls: None,
            js_domain: None,
            secret_versions: Vec::new(),
        };
        let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
        assert!(ensure_credentials_current(&conn, &resolved(creds(1_800_000_001)), now).is_ok());
        let expired =
            ensure_credentials_current(&conn, &resolved(creds(1_799_999_000)), now).unwrap_err();
        assert_eq!(expired.reason(), "NatsCredentialsExpired");
        assert!(expired.needs_user_action());
        let message = expired.to_string();
        assert!(message.contains("\"user-creds\""), "{message}");
        assert!(message.contains("2027-01-15T07:43:20Z"), "{message}");
        assert!(message.contains("nsc generate creds"), "{message}");
    }
}
