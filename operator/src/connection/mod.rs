//! How a resource reaches NATS, shared by both controllers: an AuditStream's `connection` and
//! every AuditConsumer reading that stream go through here, so that both resolve it alike and
//! share one pooled client.
//!
//! - [`resolve`] (pipeline step "dereference"): read the Secrets a connection references and
//!   take out the servers, credentials and TLS material, refusing an expired user JWT
//!   ([`creds`] reads its expiry).
//! - [`pool`]: one client per distinct connection, shared by every resource using it; the
//!   connection each resource last connected with, for a cleanup after its Secrets went; a
//!   reconnection or a refused subscription announced to whoever uses the connection.
//! - [`connect`]: opening one connection, and what a failure to do so means for the user.

pub mod connect;
pub mod creds;
pub mod pool;
pub mod resolve;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

pub use self::{
    pool::{JetStream, NatsPool, PoolUser, SubscriptionRefused},
    resolve::{Credentials, ResolvedConnection, TlsMaterial, dereference},
};
use crate::{crd::connection::NatsConnection, error::Result};

/// The connection a cleanup (a finalizer) can use.
pub enum ForCleanup {
    /// Resolved from the Secrets, as for any reconciliation.
    Current(ResolvedConnection),
    /// The Secrets are unusable (`why`), but the resource connected with this before.
    LastUsed {
        connection: ResolvedConnection,
        why: crate::error::Error,
    },
    /// The Secrets are unusable (the error), and the resource never connected since the
    /// operator started.
    Unusable(crate::error::Error),
}

/// The connection for cleaning up after `user`: from the Secrets `connection` references or,
/// when those are missing, incomplete or hold an expired JWT, the one `user` last connected
/// with (a namespace deletion may delete the Secrets first). Other failures are errors.
pub async fn for_cleanup(
    secrets: &Api<Secret>,
    connection: &NatsConnection,
    pool: &NatsPool,
    user: &PoolUser,
) -> Result<ForCleanup> {
    match dereference(secrets, connection).await {
        Ok(current) => Ok(ForCleanup::Current(current)),
        Err(why) if why.is_unusable_secret() => Ok(match pool.last_connected(user) {
            Some(connection) => ForCleanup::LastUsed { connection, why },
            None => ForCleanup::Unusable(why),
        }),
        Err(error) => Err(error),
    }
}
