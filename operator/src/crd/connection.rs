//! How a custom resource reaches NATS: server URLs, authentication and TLS material taken from
//! Secrets in the resource's namespace, and the JetStream domain. Shared by every kind that
//! talks to NATS, so that a consumer can reuse the connection of the stream it reads.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Connection to a NATS server or cluster with JetStream enabled.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsConnection {
    /// NATS server URLs, e.g. `nats://nats.nats-system.svc:4222` or `tls://nats.example.com:4222`.
    /// Several URLs of one cluster let the client fail over between them. Credentials do not
    /// belong in a URL (`user:password@` is rejected): a URL is shown in status, Events, logs
    /// and the consumer pods' arguments; use `auth` with a Secret instead.
    #[schemars(
        length(min = 1, max = 16),
        inner(
            length(min = 1, max = 512),
            regex(pattern = r"^(nats|tls|ws|wss)://[^@\s]+$")
        )
    )]
    pub servers: Vec<String>,

    /// How to authenticate. Omit it for a server that accepts anonymous clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<NatsAuth>,

    /// TLS settings beyond the defaults: a private CA and/or a client certificate. A `tls://`
    /// URL without this block verifies the server against the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTls>,

    /// JetStream domain to address, for a leaf node or super-cluster deployment. Omit it to
    /// use the domain of the server the client connects to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub js_domain: Option<String>,
}

/// Client authentication: set exactly one of the references. Every Secret must be in the same
/// namespace as the resource; a change to it (a credential rotation) reconnects the operator
/// with the new credentials without an edit of this resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.credsSecretRef), has(self.nkeySecretRef), has(self.userPasswordSecretRef), has(self.tokenSecretRef)].filter(x, x).size() == 1").message("set exactly one of credsSecretRef, nkeySecretRef, userPasswordSecretRef, tokenSecretRef"))]
pub struct NatsAuth {
    /// A Secret key holding a NATS credentials file (user JWT and NKey seed), as written by
    /// `nsc generate creds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_secret_ref: Option<SecretKeyRef>,

    /// A Secret key holding an NKey user seed (a string starting with `SU`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_secret_ref: Option<SecretKeyRef>,

    /// A Secret holding a user name and a password, by default under the keys `username` and
    /// `password` of a `kubernetes.io/basic-auth` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_password_secret_ref: Option<UserPasswordSecretRef>,

    /// A Secret key holding an authentication token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A Secret holding a user name and a password.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPasswordSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the user name within the Secret's data.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub username_key: String,
    /// Key of the password within the Secret's data.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}

/// TLS material for the NATS connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsTls {
    /// A Secret key holding the PEM certificate(s) of the CA that signed the server
    /// certificate. When omitted, the `ca.crt` key of the client certificate Secret is used if
    /// present, otherwise the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// A `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`) with the client certificate
    /// for servers that require mutual TLS, as issued for example by cert-manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretRef>,
}

/// A Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The one Secret reference a [`NatsAuth`] sets, and so the kind of credentials it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthSecret<'a> {
    Creds(&'a SecretKeyRef),
    NKey(&'a SecretKeyRef),
    UserPassword(&'a UserPasswordSecretRef),
    Token(&'a SecretKeyRef),
}

impl<'a> AuthSecret<'a> {
    /// The name of the Secret holding the credentials.
    pub fn secret_name(self) -> &'a str {
        match self {
            AuthSecret::Creds(r) | AuthSecret::NKey(r) | AuthSecret::Token(r) => &r.name,
            AuthSecret::UserPassword(r) => &r.name,
        }
    }
}

impl NatsAuth {
    /// The Secret reference this sets, when it sets exactly one, as the schema requires; `None`
    /// for an object stored under an older CRD that sets none or several.
    pub fn secret(&self) -> Option<AuthSecret<'_>> {
        match (
            &self.creds_secret_ref,
            &self.nkey_secret_ref,
            &self.user_password_secret_ref,
            &self.token_secret_ref,
        ) {
            (Some(r), None, None, None) => Some(AuthSecret::Creds(r)),
            (None, Some(r), None, None) => Some(AuthSecret::NKey(r)),
            (None, None, Some(r), None) => Some(AuthSecret::UserPassword(r)),
            (None, None, None, Some(r)) => Some(AuthSecret::Token(r)),
            _ => None,
        }
    }
}

impl NatsConnection {
    /// Names of every Secret this connection reads, so a change to one of them can be mapped
    /// back to the resources that use it.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let auth = self
            .auth
            .as_ref()
            .and_then(NatsAuth::secret)
            .map(AuthSecret::secret_name);
        let tls = self.tls.iter().flat_map(|tls| {
            [
                tls.ca_secret_ref.as_ref().map(|r| r.name.as_str()),
                tls.client_cert_secret_ref.as_ref().map(|r| r.name.as_str()),
            ]
        });
        auth.into_iter().chain(tls.flatten())
    }

    /// The credentials Secret reference, when `auth` sets exactly one.
    pub fn auth_secret(&self) -> Option<AuthSecret<'_>> {
        self.auth.as_ref().and_then(NatsAuth::secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(yaml: &str) -> NatsAuth {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn exactly_one_reference_names_the_kind_of_credentials() {
        let token = auth("tokenSecretRef: {name: t, key: token}");
        assert!(matches!(token.secret(), Some(AuthSecret::Token(r)) if r.name == "t"));
        let basic = auth("userPasswordSecretRef: {name: b}");
        assert_eq!(
            basic.secret().map(|s| s.secret_name().to_owned()),
            Some("b".into())
        );
        assert_eq!(auth("{}").secret(), None, "none");
        let two = auth("tokenSecretRef: {name: t, key: k}\nnkeySecretRef: {name: n, key: k}");
        assert_eq!(two.secret(), None, "several");
    }
}
