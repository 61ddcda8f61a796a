//! NATS connections shared between resources: one client per distinct connection (servers,
//! domain, credentials and the resourceVersions of the Secrets they came from).
//!
//! - **One connect at a time per connection.** Reconciliations that need a connection the pool
//!   does not hold yet wait for a single attempt and share its outcome, so a restarted
//!   operator with many resources opens one connection, not one per resource.
//! - **Rotation.** A rotated Secret changes the key, so the next reconciliation opens a new
//!   connection with the new credentials; a connection no resource uses any more is dropped
//!   (which closes it).
//! - **Outages.** A cached client that is not connected is not handed out: a fresh attempt
//!   reports the failure as what it is now (unreachable, credentials rejected) rather than as
//!   timeouts of a client still retrying in the background. The cached client keeps
//!   reconnecting all the same, and when it is back, the resources using it are announced
//!   ([`NatsPool::reconnected`]) so that they are reconciled at once instead of at the end of
//!   their retry backoff.
//! - **Deletion after the Secrets went.** The pool remembers, per resource, the connection it
//!   last connected with, until the resource is released: a finalizer can still reach NATS
//!   when the Secrets were deleted first (as a namespace deletion may do).
//! - **Refused subscriptions.** NATS answers a `SUB` its user may not make only with an
//!   asynchronous `-ERR 'Permissions Violation for Subscription to "<subject>"'`, which the
//!   client reports as a connection event; the subscription itself looks fine to the caller.
//!   The pool passes each such refusal on ([`NatsPool::subscription_refusals`]), naming the
//!   connection, so that whoever subscribed there can report it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::{ServerError, Statistics, connection::State};
use futures::{
    FutureExt, Stream, StreamExt,
    future::{BoxFuture, Shared},
};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

use super::{connect::connect, resolve::ResolvedConnection};
use crate::error::{Error, Result};

/// Identity of a pooled connection. The material is compared in full rather than hashed so
/// that two connections can never be confused.
type PoolKey = ResolvedConnection;

/// A connection attempt that every caller wanting the same connection awaits.
type Attempt = Shared<BoxFuture<'static, Result<async_nats::Client, Arc<Error>>>>;

/// A resource using pooled connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolUser {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl PoolUser {
    pub fn of<K: Resource<DynamicType = ()>>(object: &K) -> Self {
        Self {
            kind: K::kind(&()).into_owned(),
            namespace: object.namespace().unwrap_or_default(),
            name: object.name_any(),
        }
    }
}

impl std::fmt::Display for PoolUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A pooled client and JetStream on it.
pub struct JetStream {
    /// For core NATS (subscriptions) on the same connection.
    pub client: async_nats::Client,
    pub context: async_nats::jetstream::Context,
}

/// One connection of the pool.
struct Pooled {
    key: PoolKey,
    /// The client of the last successful attempt; after an outage it reconnects by itself.
    client: Option<async_nats::Client>,
    /// The attempt in flight, if any.
    attempt: Option<Attempt>,
}

/// Which connections a user wants and last had.
#[derive(Clone)]
struct Usage {
    /// The connection of its latest request, successful or not.
    wanted: PoolKey,
    /// The connection it last connected with.
    connected: Option<PoolKey>,
}

#[derive(Default)]
struct PoolState {
    connections: Vec<Pooled>,
    users: HashMap<PoolUser, Usage>,
}

impl PoolState {
    fn pooled(&mut self, key: &PoolKey) -> &mut Pooled {
        let index = match self.connections.iter().position(|p| &p.key == key) {
            Some(index) => index,
            None => {
                self.connections.push(Pooled {
                    key: key.clone(),
                    client: None,
                    attempt: None,
                });
                self.connections.len() - 1
            }
        };
        &mut self.connections[index]
    }

    /// Drops the connections no user wants or last had, except those being connected.
    fn prune(&mut self) {
        let PoolState { connections, users } = self;
        connections.retain(|pooled| {
            pooled.attempt.is_some()
                || users.values().any(|usage| {
                    usage.wanted == pooled.key || usage.connected.as_ref() == Some(&pooled.key)
                })
        });
    }

    /// The users whose current or last connection is `key`.
    fn users_of(&self, key: &PoolKey) -> Vec<PoolUser> {
        self.users
            .iter()
            .filter(|(_, usage)| &usage.wanted == key || usage.connected.as_ref() == Some(key))
            .map(|(user, _)| user.clone())
            .collect()
    }
}

/// A subscription the server refused on one pooled connection.
#[derive(Clone, Debug)]
pub struct SubscriptionRefused {
    /// The statistics of the connection's client: they identify it, as
    /// [`async_nats::Client::statistics`] returns the same `Arc` for every clone of a client.
    pub connection: Arc<Statistics>,
    /// The subject the server refused.
    pub subject: String,
    /// The server's words, e.g. `Permissions Violation for Subscription to "..."`.
    pub message: String,
}

/// What the pool shares with the event callbacks of its clients.
#[derive(Default)]
struct Inner {
    state: Mutex<PoolState>,
    /// One sender per controller that wants to hear of reconnections.
    subscribers: Mutex<Vec<mpsc::UnboundedSender<PoolUser>>>,
    /// One sender per listener for refused subscriptions.
    refusal_listeners: Mutex<Vec<mpsc::UnboundedSender<SubscriptionRefused>>>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every subscriber which users the connection `key` serves, now that it is back.
    fn announce_reconnection(&self, key: &PoolKey) {
        let users = self.lock().users_of(key);
        tracing::info!(
            servers = %key.servers.join(","),
            resources = users.len(),
            "NATS connection is back; reconciling the resources that use it"
        );
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|subscriber| {
            users
                .iter()
                .all(|user| subscriber.send(user.clone()).is_ok())
        });
    }

    fn announce_refusal(&self, refusal: &SubscriptionRefused) {
        let mut listeners = self
            .refusal_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        listeners.retain(|listener| listener.send(refusal.clone()).is_ok());
    }
}

/// Shared NATS clients, keyed by connection material.
pub struct NatsPool {
    connect_timeout: Duration,
    inner: Arc<Inner>,
}

impl NatsPool {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            inner: Arc::default(),
        }
    }

    /// A connected client for `connection`, recorded as used by `user`. Concurrent callers
    /// for one connection share a single connection attempt and its outcome.
    pub async fn client(
        &self,
        user: &PoolUser,
        connection: &ResolvedConnection,
    ) -> Result<async_nats::Client> {
        let attempt = {
            let mut state = self.inner.lock();
            let usage = state.users.entry(user.clone()).or_insert_with(|| Usage {
                wanted: connection.clone(),
                connected: None,
            });
            usage.wanted = connection.clone();
            let pooled = state.pooled(connection);
            let connected = pooled
                .client
                .as_ref()
                .filter(|client| client.connection_state() == State::Connected)
                .cloned();
            if let Some(client) = connected {
                record_connected(&mut state, user, connection);
                return Ok(client);
            }
            let attempt = pooled
                .attempt
                .get_or_insert_with(|| self.attempt(connection))
                .clone();
            state.prune();
            attempt
        };
        let outcome = attempt.clone().await;
        let mut state = self.inner.lock();
        let pooled = state.pooled(connection);
        if pooled.attempt.as_ref().is_some_and(|a| a.ptr_eq(&attempt)) {
            pooled.attempt = None;
        }
        let result = match outcome {
            Ok(client) => {
                pooled.client = Some(client.clone());
                record_connected(&mut state, user, connection);
                Ok(client)
            }
            Err(error) => Err(error),
        };
        state.prune();
        drop(state);
        // The last of the callers sharing a failed attempt gets the error itself.
        drop(attempt);
        result.map_err(|error| Arc::try_unwrap(error).unwrap_or_else(Error::SharedConnectFailure))
    }

    /// JetStream on the pooled client for `connection` (its domain's API), used by `user`.
    pub async fn jetstream(
        &self,
        user: &PoolUser,
        connection: &ResolvedConnection,
    ) -> Result<JetStream> {
        let client = self.client(user, connection).await?;
        let context = match &connection.js_domain {
            Some(domain) => async_nats::jetstream::with_domain(client.clone(), domain),
            None => async_nats::jetstream::new(client.clone()),
        };
        Ok(JetStream { client, context })
    }

    /// The connection `user` last connected with, while it is not released: the credentials
    /// a finalizer can still use after the Secrets they came from were deleted.
    pub fn last_connected(&self, user: &PoolUser) -> Option<ResolvedConnection> {
        self.inner
            .lock()
            .users
            .get(user)
            .and_then(|usage| usage.connected.clone())
    }

    /// Forgets `user`; its connection closes when no other user holds it.
    pub fn release(&self, user: &PoolUser) {
        let mut state = self.inner.lock();
        state.users.remove(user);
        state.prune();
    }

    /// The users of a pooled connection, each time that connection comes back after it was
    /// lost; `kind` selects the users of one kind (`AuditStream`, `AuditConsumer`).
    pub fn reconnected(&self, kind: &str) -> impl Stream<Item = PoolUser> + Send + use<> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sender);
        let kind = kind.to_owned();
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|user| (user, receiver))
        })
        .filter(move |user| std::future::ready(user.kind == kind))
    }

    /// Every subscription a server refuses on a pooled connection, from now on.
    pub fn subscription_refusals(&self) -> impl Stream<Item = SubscriptionRefused> + Send + use<> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.inner
            .refusal_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sender);
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|refusal| (refusal, receiver))
        })
    }

    /// A connection attempt for `connection` whose client announces its reconnections and
    /// refused subscriptions.
    fn attempt(&self, connection: &ResolvedConnection) -> Attempt {
        let key = connection.clone();
        let timeout = self.connect_timeout;
        let pool = Arc::downgrade(&self.inner);
        async move {
            let events = ConnectionEvents::new(pool, key.clone());
            let on_event = {
                let events = events.clone();
                move |event: async_nats::Event| events.on_event(&event)
            };
            let client = connect(&key, timeout, on_event).await.map_err(Arc::new)?;
            // Before anyone can subscribe on it, so no refusal goes unattributed.
            events.identify(client.statistics());
            Ok(client)
        }
        .boxed()
        .shared()
    }
}

fn record_connected(state: &mut PoolState, user: &PoolUser, connection: &ResolvedConnection) {
    if let Some(usage) = state.users.get_mut(user) {
        usage.connected = Some(connection.clone());
    }
}

/// Called by a client on each connection event: every `Connected` after the first is a
/// reconnection, and a permissions violation for a subscription is a refused subscription;
/// the pool announces both.
struct ConnectionEvents {
    pool: Weak<Inner>,
    key: PoolKey,
    connected_before: AtomicBool,
    /// The client's statistics, once it is connected: its identity in refusals.
    connection: OnceLock<Arc<Statistics>>,
}

impl ConnectionEvents {
    fn new(pool: Weak<Inner>, key: PoolKey) -> Arc<Self> {
        Arc::new(Self {
            pool,
            key,
            connected_before: AtomicBool::new(false),
            connection: OnceLock::new(),
        })
    }

    fn identify(&self, connection: Arc<Statistics>) {
        let _ = self.connection.set(connection);
    }

    fn on_event(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                // The first `Connected` is the initial connection, which its callers already
                // have.
                if self.connected_before.swap(true, Ordering::SeqCst)
                    && let Some(pool) = self.pool.upgrade()
                {
                    pool.announce_reconnection(&self.key);
                }
            }
            async_nats::Event::ServerError(error) => {
                let servers = self.key.servers.join(",");
                tracing::warn!(%servers, %error, "the NATS server reported an error on a connection");
                if let ServerError::Other(text) = error
                    && let Some(subject) = refused_subscription(text)
                    && let (Some(connection), Some(pool)) =
                        (self.connection.get(), self.pool.upgrade())
                {
                    pool.announce_refusal(&SubscriptionRefused {
                        connection: connection.clone(),
                        subject: subject.to_owned(),
                        message: text.clone(),
                    });
                }
            }
            _ => {}
        }
    }
}

/// The subject of a refused subscription, from the server's `-ERR` text: `Permissions
/// Violation for Subscription to "<subject>"`, possibly followed by ` using queue "<q>"` or
/// ` (sid "<n>")` (a subscription removed when a configuration reload revoked it). The subject
/// is quoted Go-style; NATS subjects hold no quote or backslash to unescape.
fn refused_subscription(text: &str) -> Option<&str> {
    let quoted = text.strip_prefix("Permissions Violation for Subscription to \"")?;
    let (subject, _) = quoted.split_once('"')?;
    (!subject.is_empty()).then_some(subject)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Credentials;

    fn connection(server: &str) -> ResolvedConnection {
        ResolvedConnection {
            servers: vec![server.to_owned()],
            credentials: Some(Credentials::Token("t0ken".into())),
            tls: None,
            js_domain: None,
            secret_versions: vec!["ns/token@1".into()],
        }
    }

    fn user(name: &str) -> PoolUser {
        PoolUser {
            kind: "AuditStream".into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    /// A loopback address nothing listens on.
    fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("nats://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn callers_that_arrive_together_share_one_attempt_and_its_failure() {
        let pool = NatsPool::new(Duration::from_secs(2));
        let unreachable = connection(&closed_port_url());
        let users: Vec<PoolUser> = (0..8).map(|i| user(&format!("s{i}"))).collect();
        let outcomes =
            futures::future::join_all(users.iter().map(|u| pool.client(u, &unreachable))).await;
        for outcome in outcomes {
            let error = outcome.expect_err("nothing listens there");
            assert_eq!(error.reason(), "NatsUnreachable", "{error}");
        }
        // Nothing connected, so nothing is remembered for a later deletion.
        assert!(users.iter().all(|u| pool.last_connected(u).is_none()));
        let state = pool.inner.lock();
        assert_eq!(state.connections.len(), 1, "one entry for one connection");
        assert!(
            state.connections[0].attempt.is_none(),
            "the attempt is over"
        );
    }

    #[test]
    fn a_connection_is_kept_while_a_user_wants_it_or_last_had_it() {
        let (old, new) = (connection("nats://a:4222"), connection("nats://b:4222"));
        let mut state = PoolState::default();
        for key in [&old, &new] {
            state.pooled(key);
        }
        state.users.insert(
            user("s"),
            Usage {
                wanted: new.clone(),
                connected: Some(old.clone()),
            },
        );
        state.prune();
        assert_eq!(state.connections.len(), 2);
        assert_eq!(state.users_of(&old), [user("s")]);
        assert_eq!(state.users_of(&new), [user("s")]);
        state.users.remove(&user("s"));
        state.prune();
        assert!(state.connections.is_empty());
    }

    #[tokio::test]
    async fn only_a_reconnection_is_announced_to_the_users_of_that_connection() {
        let pool = NatsPool::new(Duration::from_secs(2));
        let (used, other) = (connection("nats://a:4222"), connection("nats://b:4222"));
        {
            let mut state = pool.inner.lock();
            for (name, key) in [("s1", &used), ("s2", &other)] {
                state.users.insert(
                    user(name),
                    Usage {
                        wanted: key.clone(),
                        connected: Some(key.clone()),
                    },
                );
            }
        }
        let mut streams = Box::pin(pool.reconnected("AuditStream"));
        let mut consumers = Box::pin(pool.reconnected("AuditConsumer"));
        let announcer = ConnectionEvents::new(Arc::downgrade(&pool.inner), used);
        announcer.on_event(&async_nats::Event::Connected);
        announcer.on_event(&async_nats::Event::Disconnected);
        announcer.on_event(&async_nats::Event::Connected);
        assert_eq!(streams.next().await, Some(user("s1")));
        let nothing_else = tokio::time::timeout(Duration::from_millis(50), streams.next()).await;
        assert!(
            nothing_else.is_err(),
            "the first connection is no reconnection"
        );
        let none = tokio::time::timeout(Duration::from_millis(50), consumers.next()).await;
        assert!(none.is_err(), "no AuditConsumer uses that connection");
    }

    #[test]
    fn reads_the_subject_of_a_refused_subscription() {
        let subject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.reader";
        for text in [
            format!("Permissions Violation for Subscription to \"{subject}\""),
            format!("Permissions Violation for Subscription to \"{subject}\" using queue \"q\""),
            format!("Permissions Violation for Subscription to \"{subject}\" (sid \"7\")"),
        ] {
            assert_eq!(refused_subscription(&text), Some(subject), "{text}");
        }
        for other in [
            "Permissions Violation for Publish to \"audit.x\"",
            "Permissions Violation for Subscription to \"",
            "Maximum Connections Exceeded",
        ] {
            assert_eq!(refused_subscription(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn a_refused_subscription_is_announced_with_its_connection() {
        let pool = NatsPool::new(Duration::from_secs(2));
        let mut refusals = Box::pin(pool.subscription_refusals());
        let events =
            ConnectionEvents::new(Arc::downgrade(&pool.inner), connection("nats://a:4222"));
        let statistics = Arc::new(Statistics::default());
        events.identify(statistics.clone());
        let violation = "Permissions Violation for Subscription to \"$JS.EVENT.ADVISORY.>\"";
        events.on_event(&async_nats::Event::ServerError(ServerError::Other(
            "Maximum Connections Exceeded".into(),
        )));
        events.on_event(&async_nats::Event::ServerError(ServerError::Other(
            violation.into(),
        )));
        let refusal = refusals.next().await.expect("the refusal");
        assert!(Arc::ptr_eq(&refusal.connection, &statistics));
        assert_eq!(refusal.subject, "$JS.EVENT.ADVISORY.>");
        assert_eq!(refusal.message, violation);
        let nothing_else = tokio::time::timeout(Duration::from_millis(50), refusals.next()).await;
        assert!(nothing_else.is_err(), "another server error is no refusal");
    }
}
