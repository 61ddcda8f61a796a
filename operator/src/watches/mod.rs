//! The operator's watches. They start with the process and run whether this replica leads or
//! stands by, so that a standby's caches are as current as the leader's: taking over lists
//! nothing again, it reconciles what the caches hold.
//!
//! One watch per kind, shared by both controllers:
//! - AuditStreams and AuditConsumers, each into a cache (the controllers' stores);
//! - Secrets, as metadata only: a change is all the controllers need to know (they read a
//!   referenced Secret when they reconcile), so no Secret's data is held in memory for
//!   watching's sake;
//! - the kinds the AuditConsumer controller owns (Deployments, ServiceAccounts,
//!   PodDisruptionBudgets, NetworkPolicies, the archive verifications' CronJobs), with no cache: only their changes matter, which
//!   wake their owner.
//!
//! Changes go out through [`Relay`]s, filtered as [`crate::triggers`] says, to the controllers
//! of the current leadership term, if any. [`Watches::synced`] completes once every watch has
//! delivered its first complete list: the operator is ready from then on, leader or standby,
//! and only then may it lead, because a new leader's first pass reconciles what the caches
//! hold.

pub mod changes;
pub mod relay;

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::CronJob,
    core::v1::{Secret, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{DeserializeGuard, NamespaceResourceScope, PartialObjectMeta},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher::{self, Event, watcher},
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use self::changes::ChangeFilter;
pub use self::relay::Relay;
use crate::crd::{consumer::AuditConsumer, stream::AuditStream};

pub type GuardedStream = DeserializeGuard<AuditStream>;
pub type GuardedConsumer = DeserializeGuard<AuditConsumer>;

/// The caches and the outlets of every watch.
pub struct Watches {
    /// Every AuditStream in scope.
    pub streams: Store<GuardedStream>,
    /// Every AuditConsumer in scope.
    pub consumers: Store<GuardedConsumer>,
    /// AuditStreams a user changed: the AuditStream controller's trigger.
    pub stream_changes: Relay<GuardedStream>,
    /// AuditStreams whose spec or readiness changed: what the consumers reading them wait for.
    pub stream_readiness_changes: Relay<GuardedStream>,
    /// AuditConsumers a user changed: the AuditConsumer controller's trigger.
    pub consumer_changes: Relay<GuardedConsumer>,
    /// Every change of a Secret, as its metadata.
    pub secret_changes: Relay<PartialObjectMeta<Secret>>,
    pub deployments: Relay<Deployment>,
    pub service_accounts: Relay<ServiceAccount>,
    pub disruption_budgets: Relay<PodDisruptionBudget>,
    pub network_policies: Relay<NetworkPolicy>,
    pub cron_jobs: Relay<CronJob>,
    /// The workload objects as last seen, so that a reconciliation that finds nothing to
    /// change reads and writes nothing (see `consumer::apply::apply_owned`).
    pub workloads: WorkloadCaches,
    /// The kinds whose watch has not delivered its first complete list yet.
    unsynced: watch::Receiver<BTreeSet<&'static str>>,
}

impl Watches {
    /// The watches of every kind in `namespace` (all when `None`), and the future that runs
    /// them; it never completes.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (streams, stream_writer) = reflector::store::<GuardedStream>();
        let (consumers, consumer_writer) = reflector::store::<GuardedConsumer>();
        let (deployments, deployment_writer) = reflector::store::<Deployment>();
        let (service_accounts, service_account_writer) = reflector::store::<ServiceAccount>();
        let (disruption_budgets, disruption_budget_writer) =
            reflector::store::<PodDisruptionBudget>();
        let (network_policies, network_policy_writer) = reflector::store::<NetworkPolicy>();
        let (cron_jobs, cron_job_writer) = reflector::store::<CronJob>();
        let (progress, unsynced) = watch::channel(BTreeSet::from([
            "AuditStreams",
            "AuditConsumers",
            "Secrets",
            "Deployments",
            "ServiceAccounts",
            "PodDisruptionBudgets",
            "NetworkPolicies",
            "CronJobs",
        ]));
        let progress = Arc::new(progress);
        let watches = Watches {
            streams,
            consumers,
            stream_changes: Relay::default(),
            stream_readiness_changes: Relay::default(),
            consumer_changes: Relay::default(),
            secret_changes: Relay::default(),
            deployments: Relay::default(),
            service_accounts: Relay::default(),
            disruption_budgets: Relay::default(),
            network_policies: Relay::default(),
            cron_jobs: Relay::default(),
            workloads: WorkloadCaches {
                deployments,
                service_accounts,
                disruption_budgets,
                network_policies,
                cron_jobs,
            },
            unsynced,
        };
        let any = || watcher::Config::default().any_semantic();

        let streams = run(
            "AuditStreams",
            watcher(scoped::<GuardedStream>(client, namespace), any())
                .default_backoff()
                .reflect(stream_writer),
            progress.clone(),
            route_streams(
                watches.stream_changes.clone(),
                watches.stream_readiness_changes.clone(),
            ),
        );
        let consumers = run(
            "AuditConsumers",
            watcher(scoped::<GuardedConsumer>(client, namespace), any())
                .default_backoff()
                .reflect(consumer_writer),
            progress.clone(),
            route_consumers(watches.consumer_changes.clone()),
        );
        let watching = futures::future::join_all([
            streams.boxed(),
            consumers.boxed(),
            // An Api of PartialObjectMeta makes metadata-only list and watch requests.
            every_change(
                "Secrets",
                scoped::<PartialObjectMeta<Secret>>(client, namespace),
                watcher::Config::default(),
                watches.secret_changes.clone(),
                None,
                progress.clone(),
            )
            .boxed(),
            every_change(
                "Deployments",
                scoped(client, namespace),
                any(),
                watches.deployments.clone(),
                Some(deployment_writer),
                progress.clone(),
            )
            .boxed(),
            every_change(
                "ServiceAccounts",
                scoped(client, namespace),
                any(),
                watches.service_accounts.clone(),
                Some(service_account_writer),
                progress.clone(),
            )
            .boxed(),
            every_change(
                "PodDisruptionBudgets",
                scoped(client, namespace),
                any(),
                watches.disruption_budgets.clone(),
                Some(disruption_budget_writer),
                progress.clone(),
            )
            .boxed(),
            every_change(
                "NetworkPolicies",
                scoped(client, namespace),
                any(),
                watches.network_policies.clone(),
                Some(network_policy_writer),
                progress.clone(),
            )
            .boxed(),
            every_change(
                "CronJobs",
                scoped(client, namespace),
                any(),
                watches.cron_jobs.clone(),
                Some(cron_job_writer),
                progress,
            )
            .boxed(),
        ]);
        (watches, async move {
            watching.await;
        })
    }

    /// Completes once every watch has delivered its first complete list.
    pub async fn synced(&self) {
        let mut unsynced = self.unsynced.clone();
        if unsynced.wait_for(BTreeSet::is_empty).await.is_err() {
            // The watches are gone: they will never sync.
            std::future::pending::<()>().await;
        }
    }
}

/// The caches of the kinds the AuditConsumer controller makes, without managedFields.
#[derive(Clone)]
pub struct WorkloadCaches {
    pub deployments: Store<Deployment>,
    pub service_accounts: Store<ServiceAccount>,
    pub disruption_budgets: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    /// The archives' scheduled verifications.
    pub cron_jobs: Store<CronJob>,
}

/// What a watch saw happen to an object.
enum Seen<K> {
    Applied(K),
    Deleted(K),
}

/// Where a change of an AuditStream goes: to its controller when a user changed it, to the
/// consumers reading it when its spec or readiness changed (a deletion included).
fn route_streams(
    stream_changes: Relay<GuardedStream>,
    stream_readiness_changes: Relay<GuardedStream>,
) -> impl FnMut(Seen<GuardedStream>) {
    let mut user_changes = ChangeFilter::new(crate::triggers::user_changes());
    let mut readiness_changes = ChangeFilter::new(crate::triggers::stream_generation_and_readiness);
    move |seen| match seen {
        Seen::Applied(stream) => {
            if user_changes.changed(&stream) {
                stream_changes.pass_on(&stream);
            }
            if readiness_changes.changed(&stream) {
                stream_readiness_changes.pass_on(&stream);
            }
        }
        Seen::Deleted(stream) => {
            user_changes.forget(&stream);
            if readiness_changes.changed(&stream) {
                stream_readiness_changes.pass_on(&stream);
            }
            readiness_changes.forget(&stream);
        }
    }
}

/// Where a change of an AuditConsumer goes: to its controller when a user changed it.
fn route_consumers(consumer_changes: Relay<GuardedConsumer>) -> impl FnMut(Seen<GuardedConsumer>) {
    let mut user_changes = ChangeFilter::new(crate::triggers::user_changes());
    move |seen| match seen {
        Seen::Applied(consumer) => {
            if user_changes.changed(&consumer) {
                consumer_changes.pass_on(&consumer);
            }
        }
        Seen::Deleted(consumer) => user_changes.forget(&consumer),
    }
}

/// Runs the watch `name` for as long as the process lives, giving every change to `route`
/// and reporting its first complete list to `progress`. A failed request is retried with
/// kube-runtime's default backoff (exponential up to 30 s, as client-go does).
async fn run<K>(
    name: &'static str,
    events: impl Stream<Item = watcher::Result<Event<K>>> + Send,
    progress: Arc<watch::Sender<BTreeSet<&'static str>>>,
    mut route: impl FnMut(Seen<K>) + Send,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => route(Seen::Applied(object)),
            Ok(Event::Delete(object)) => route(Seen::Deleted(object)),
            Ok(Event::Init) => {}
            Ok(Event::InitDone) => {
                progress.send_if_modified(|unsynced| unsynced.remove(name));
            }
            Err(error) => tracing::warn!(%error, watch = name, "watch failed; retrying"),
        }
    }
}

/// A watch whose every change, deletions included, is passed on; with a `cache`, also kept
/// there, without managedFields (the largest part of an object, and never read here).
async fn every_change<K>(
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    relay: Relay<K>,
    cache: Option<reflector::store::Writer<K>>,
    progress: Arc<watch::Sender<BTreeSet<&'static str>>>,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let events = watcher(api, config).default_backoff();
    let route = move |seen| match seen {
        Seen::Applied(object) | Seen::Deleted(object) => relay.pass_on(&object),
    };
    match cache {
        Some(cache) => {
            let events = events
                .modify(|object: &mut K| object.managed_fields_mut().clear())
                .reflect(cache);
            run(name, events, progress, route).await;
        }
        None => run(name, events, progress, route).await,
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn config_map(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn heard<T>(listener: impl Stream<Item = Result<T, watcher::Error>>) -> Vec<T> {
        let mut listener = std::pin::pin!(listener);
        let mut items = Vec::new();
        while let Some(Some(item)) = listener.next().now_or_never() {
            items.push(item.expect("no errors"));
        }
        items
    }

    #[test]
    fn a_watch_routes_every_change_and_is_synced_only_after_its_first_complete_list() {
        let (progress, unsynced) = watch::channel(BTreeSet::from(["ConfigMaps", "Secrets"]));
        let events = futures::stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply(config_map("listed"))),
            Err(watcher::Error::NoResourceVersion),
            Ok(Event::InitDone),
            Ok(Event::Apply(config_map("changed"))),
            Ok(Event::Delete(config_map("deleted"))),
        ]);
        let mut routed = Vec::new();
        run("ConfigMaps", events, Arc::new(progress), |seen| {
            routed.push(match seen {
                Seen::Applied(object) => format!("applied {}", object.metadata.name.unwrap()),
                Seen::Deleted(object) => format!("deleted {}", object.metadata.name.unwrap()),
            });
        })
        .now_or_never()
        .expect("a finite stream of events ends");
        assert_eq!(
            routed,
            ["applied listed", "applied changed", "deleted deleted"]
        );
        assert_eq!(*unsynced.borrow(), BTreeSet::from(["Secrets"]));
    }

    #[test]
    fn a_watch_that_never_completes_a_list_stays_unsynced() {
        let (progress, unsynced) = watch::channel(BTreeSet::from(["ConfigMaps"]));
        let events = futures::stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply(config_map("listed"))),
            Err(watcher::Error::NoResourceVersion),
        ]);
        run("ConfigMaps", events, Arc::new(progress), |_| {})
            .now_or_never()
            .expect("a finite stream of events ends");
        assert!(!unsynced.borrow().is_empty());
    }

    const STREAM: &str = "
apiVersion: audit.eventsaudit.io/v1alpha1
kind: AuditStream
metadata: {name: orders, namespace: shop, uid: u1, generation: 3, finalizers: [f]}
spec:
  connection: {servers: ['nats://127.0.0.1:4222']}
  subjects: [audit.>]
status:
  observedGeneration: 3
  messages: 1
  conditions:
  - {type: Ready, status: 'True', reason: r, message: m, lastTransitionTime: '2026-11-22T00:00:00Z'}
";

    fn stream(edit: impl Fn(String) -> String) -> GuardedStream {
        DeserializeGuard(Ok(serde_yaml::from_str(&edit(STREAM.to_owned())).unwrap()))
    }

    /// What each of the AuditStream relays hears of `changes`, seen in that order after the
    /// stream above.
    fn routed(changes: Vec<Seen<GuardedStream>>) -> (usize, usize) {
        let (stream_changes, readiness_changes) = (Relay::default(), Relay::default());
        let (to_controller, to_consumers) = (stream_changes.listen(), readiness_changes.listen());
        let mut route = route_streams(stream_changes, readiness_changes);
        route(Seen::Applied(stream(|s| s)));
        for change in changes {
            route(change);
        }
        (
            heard(to_controller).len() - 1,
            heard(to_consumers).len() - 1,
        )
    }

    #[test]
    fn the_operators_status_writes_reach_no_controller() {
        let counters_moved = stream(|s| s.replace("messages: 1", "messages: 500"));
        assert_eq!(routed(vec![Seen::Applied(counters_moved)]), (0, 0));
    }

    #[test]
    fn a_spec_change_reaches_both_controllers() {
        let edited = stream(|s| s.replace("generation: 3", "generation: 4"));
        assert_eq!(routed(vec![Seen::Applied(edited)]), (1, 1));
    }

    #[test]
    fn readiness_reaches_only_the_consumers_and_finalizers_only_the_stream_controller() {
        let unready = stream(|s| s.replace("status: 'True'", "status: 'False'"));
        assert_eq!(routed(vec![Seen::Applied(unready)]), (0, 1));
        let finalizer_gone = stream(|s| s.replace("finalizers: [f]", "finalizers: []"));
        assert_eq!(routed(vec![Seen::Applied(finalizer_gone)]), (1, 0));
    }

    #[test]
    fn a_deletion_is_forgotten_and_a_recreated_stream_is_new() {
        let deleted = stream(|s| s);
        let recreated = stream(|s| s.replace("uid: u1", "uid: u2"));
        assert_eq!(
            routed(vec![Seen::Deleted(deleted), Seen::Applied(recreated)]),
            (1, 1)
        );
    }
}
