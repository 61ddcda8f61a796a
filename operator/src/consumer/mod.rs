//! The AuditConsumer controller: reconciles each AuditConsumer through the pipeline
//! dereference (AuditStream, Secrets) -> validate -> build (durable consumer, workload
//! objects) -> apply (NATS, server-side apply) -> status, and deletes the durable consumer
//! per `deletionPolicy` behind a finalizer.
//!
//! Besides AuditConsumers it watches the objects it owns (a deleted or hand-edited Deployment
//! is put back at once), the AuditStreams (a stream turning Ready requeues its consumers) and
//! Secrets (a rotated credential rolls the pods that mount it). An AuditConsumer with a
//! `maxDeliver` is also woken by NATS's advisories about events that reached it, and by the
//! server refusing the operator's subscription to them.

pub mod apply;
pub mod build;
pub mod dereference;
pub mod max_deliveries;
pub mod status;
pub mod validate;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment, core::v1::Secret, networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use tracing::{info, warn};

use self::{
    apply::Change,
    build::{nats_consumer, workload_name},
    max_deliveries::{Listening, MaxDeliveries},
    status::{Advisories, Failure, Report, Stage},
    validate::ValidConsumer,
};
use crate::{
    connection::{self, ForCleanup, PoolUser, ResolvedConnection},
    controller::{self, Reconciler, Shared},
    crd::{
        consumer::{AuditConsumer, ConsumerDeletionPolicy},
        stream::AuditStream,
    },
    error::{Error, Result},
    ownership::{self, Deletion},
    report,
    watches::Watches,
};

/// Finalizer that keeps an AuditConsumer until its durable consumer was deleted or retained.
pub const FINALIZER: &str = "audit.eventsaudit.io/consumer-cleanup";

type Guarded = DeserializeGuard<AuditConsumer>;
type GuardedStream = DeserializeGuard<AuditStream>;

/// What the AuditConsumer controller keeps beyond the shared context.
pub struct Consumers {
    /// The subscriptions to the max-deliveries advisories, and their counts.
    max_deliveries: MaxDeliveries,
}

type Context = controller::Context<Consumers>;

impl Reconciler for Consumers {
    type Resource = AuditConsumer;
    const FINALIZER: &'static str = FINALIZER;

    async fn apply(ctx: &Context, consumer: &AuditConsumer) -> Result<Action> {
        apply_consumer(consumer, ctx).await
    }

    async fn cleanup(ctx: &Context, consumer: &AuditConsumer) -> Result<Action> {
        cleanup(consumer, ctx).await
    }
}

/// Runs the AuditConsumer controller, fed by `watches`, until `shutdown` completes.
pub async fn run(
    shared: Shared,
    watches: &Watches,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let by_stream = watches.consumers.clone();
    let by_secret = watches.consumers.clone();
    let streams = watches.streams.clone();
    let (max_deliveries, advised) = MaxDeliveries::new(shared.pool.subscription_refusals());
    let reconnected = crate::triggers::reconnected::<AuditConsumer>(&shared.pool);
    let ctx = Arc::new(Context::new(shared, Consumers { max_deliveries }));
    let controller =
        Controller::for_stream(watches.consumer_changes.listen(), watches.consumers.clone())
            .owns_stream(watches.deployments.listen())
            .owns_stream(watches.service_accounts.listen())
            .owns_stream(watches.disruption_budgets.listen())
            .owns_stream(watches.network_policies.listen())
            .watches_stream(watches.stream_readiness_changes.listen(), move |stream| {
                consumers_of_stream(&by_stream, &stream.name_any(), stream.namespace())
            })
            .watches_stream(watches.secret_changes.listen(), move |secret| {
                consumers_using_secret(&by_secret, &streams, &secret)
            })
            .watches_stream(advised.map(Ok), |advised| {
                Some(
                    ObjectRef::new(&advised.name_any())
                        .within(&advised.namespace().unwrap_or_default()),
                )
            })
            .watches_stream(reconnected, |consumer| {
                Some(
                    ObjectRef::new(&consumer.name_any())
                        .within(&consumer.namespace().unwrap_or_default()),
                )
            });
    controller::run(controller, ctx, shutdown).await;
}

/// The AuditConsumers in `namespace` that read AuditStream `stream`.
fn consumers_of_stream(
    consumers: &Store<Guarded>,
    stream: &str,
    namespace: Option<String>,
) -> Vec<ObjectRef<Guarded>> {
    consumers
        .state()
        .iter()
        .filter_map(|guarded| guarded.0.as_ref().ok())
        .filter(|c| c.namespace() == namespace && c.spec.stream_ref.name == stream)
        .map(|c| ObjectRef::new(&c.name_any()).within(&c.namespace().unwrap_or_default()))
        .collect()
}

/// The AuditConsumers whose AuditStream's connection reads `secret`: their pods mount it.
fn consumers_using_secret(
    consumers: &Store<Guarded>,
    streams: &Store<GuardedStream>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<Guarded>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    streams
        .state()
        .iter()
        .filter_map(|guarded| guarded.0.as_ref().ok())
        .filter(|s| s.namespace() == namespace)
        .filter(|s| s.spec.connection.secret_names().any(|n| n == name))
        .flat_map(|s| consumers_of_stream(consumers, &s.name_any(), namespace.clone()))
        .collect()
}

/// The controller's reference to `consumer`.
fn object_ref(consumer: &AuditConsumer) -> ObjectRef<Guarded> {
    ObjectRef::new(&consumer.name_any()).within(&consumer.namespace().unwrap_or_default())
}

/// What a successful pass produced.
struct Reconciled {
    stream_name: String,
    change: Change,
    info: async_nats::jetstream::consumer::Info,
    deployment: Deployment,
}

/// The pipeline; a failure says at which stage it stopped, for the detail conditions.
async fn pipeline(consumer: &AuditConsumer, ctx: &Context) -> Result<Reconciled, Failure> {
    let namespace = consumer.namespace().unwrap_or_default();
    let streams: Api<AuditStream> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let referenced = match dereference::dereference(consumer, &streams, &secrets).await {
        Ok(referenced) => referenced,
        Err(error) => {
            let instance = ctx.options.instance.as_deref();
            let error =
                report::unless_namespace_terminating(&ctx.client, consumer, instance, error).await;
            return Err(Failure {
                stage: Stage::Stream,
                stream_name: None,
                error,
            });
        }
    };
    let stream_name = referenced.stream_name.clone();
    let at = |stage: Stage| {
        let stream_name = stream_name.clone();
        move |error: Error| Failure {
            stage,
            stream_name: Some(stream_name),
            error,
        }
    };

    let valid = validate::validate(consumer, &referenced, &ctx.options.consumer_image)
        .map_err(at(Stage::Consumer))?;
    let desired = nats_consumer::desired_config(&valid);
    let nats = ctx
        .pool
        .jetstream(&PoolUser::of(consumer), &referenced.connection)
        .await
        .map_err(at(Stage::Consumer))?;
    let (change, info) = apply::apply_consumer(&nats.context, &stream_name, &desired)
        .await
        .map_err(at(Stage::Consumer))?;
    // Listen once the durable exists: NATS advises only while someone listens.
    if valid.max_deliver > 0 {
        let subject = max_deliveries::advisory_subject(&stream_name, &valid.durable_name);
        ctx.state
            .max_deliveries
            .watch(&object_ref(consumer), &nats.client, subject)
            .await
            .map_err(at(Stage::Consumer))?;
    } else {
        ctx.state.max_deliveries.forget(&object_ref(consumer));
    }

    let deployment = apply_workload(consumer, &valid, ctx)
        .await
        .map_err(at(Stage::Workload))?;
    Ok(Reconciled {
        stream_name,
        change,
        info,
        deployment,
    })
}

/// Applies every workload object the spec asks for and removes the optional ones it no longer
/// asks for; returns the Deployment as the server has it (with its status).
async fn apply_workload(
    consumer: &AuditConsumer,
    valid: &ValidConsumer,
    ctx: &Context,
) -> Result<Deployment> {
    let client = &ctx.client;
    let uid = consumer.uid().unwrap_or_default();
    let namespace = consumer.namespace().unwrap_or_default();
    let name = workload_name(&valid.name);
    apply::apply_owned(client, &build::service_account::build(valid), &uid).await?;
    let deployment = apply::apply_owned(client, &build::deployment::build(valid), &uid).await?;
    match build::pdb::build(valid) {
        Some(pdb) => drop(apply::apply_owned(client, &pdb, &uid).await?),
        None => apply::remove_owned::<PodDisruptionBudget>(client, &namespace, &name, &uid).await?,
    }
    match build::network_policy::build(valid) {
        Some(policy) => drop(apply::apply_owned(client, &policy, &uid).await?),
        None => apply::remove_owned::<NetworkPolicy>(client, &namespace, &name, &uid).await?,
    }
    Ok(deployment)
}

async fn apply_consumer(consumer: &AuditConsumer, ctx: &Context) -> Result<Action> {
    let result = pipeline(consumer, ctx).await;
    let key = object_ref(consumer);
    let advisories = match consumer.spec.max_deliver {
        None => Advisories::NotWanted,
        Some(_) => ctx
            .state
            .max_deliveries
            .listening(&key)
            .map_or(Advisories::Unknown, Advisories::Known),
    };
    let report = match &result {
        Ok(done) => Report {
            stream_name: Some(done.stream_name.clone()),
            consumer: Some(&done.info),
            workload: Some(&done.deployment),
            failure: None,
            advisories: advisories.clone(),
        },
        Err(failure) => Report {
            stream_name: failure.stream_name.clone(),
            failure: Some(failure),
            advisories: advisories.clone(),
            ..Report::default()
        },
    };
    let mut status = status::desired_status(consumer, &report, &Time(Timestamp::now()));
    let unreported = ctx.state.max_deliveries.unreported(&key);
    let recorded = unreported.map(|u| max_deliveries::fold_into(&mut status, &u));
    // The Events go out even when the status write fails, so that failure cannot hide them.
    let status_written = if consumer.status.as_ref() != Some(&status) {
        report::apply_status(&ctx.client, consumer, &status).await
    } else {
        Ok(())
    };
    let reference = consumer.object_ref(&());
    let durable = consumer.durable_name();
    if let Advisories::Known(refused @ Listening::Refused { .. }) = &advisories
        && !max_deliveries::refusal_reported(consumer.status.as_ref())
    {
        let condition = max_deliveries::counting_condition(refused);
        let (reason, note) = (condition.reason.as_str(), condition.message);
        warn!(consumer = %durable, namespace = consumer.namespace().unwrap_or_default(), reason, "{note}");
        report::publish(
            &ctx.recorder,
            &reference,
            EventType::Warning,
            reason,
            "Apply",
            note,
        )
        .await;
    }
    if let (Some(unreported), Some(recorded)) = (unreported, recorded) {
        ctx.state
            .max_deliveries
            .reported(&key, &unreported, recorded);
        if unreported.new.count > 0 {
            ctx.metrics.record_max_deliveries(
                &consumer.namespace().unwrap_or_default(),
                &consumer.name_any(),
                unreported.new.count,
            );
            let stream = status.stream_name.as_deref().unwrap_or_default();
            let max_deliver = consumer.spec.max_deliver.unwrap_or_default();
            let note = max_deliveries::warning(unreported.new.count, recorded, max_deliver, stream);
            warn!(consumer = %durable, namespace = consumer.namespace().unwrap_or_default(), reason = "MaxDeliveriesReached", "{note}");
            report::publish(
                &ctx.recorder,
                &reference,
                EventType::Warning,
                "MaxDeliveriesReached",
                "Apply",
                note,
            )
            .await;
        }
    }
    match result {
        Ok(done) => {
            let note = match &done.change {
                Change::Unchanged => None,
                Change::Created => Some((
                    "Created",
                    format!(
                        "created durable consumer {durable} on stream {}",
                        done.stream_name
                    ),
                )),
                // Drift only when this generation's durable consumer had been in place;
                // otherwise it is the user's spec change being applied.
                Change::Updated(fields)
                    if consumer.status.as_ref().is_some_and(|s| {
                        crate::conditions::held_at_generation(
                            &s.conditions,
                            status::CONSUMER_READY,
                            s.observed_generation,
                            consumer.metadata.generation,
                        )
                    }) =>
                {
                    Some((
                        "DriftCorrected",
                        format!(
                            "durable consumer {durable} was changed outside the operator; restored {}",
                            fields.join(", ")
                        ),
                    ))
                }
                Change::Updated(fields) => Some((
                    "Updated",
                    format!("updated durable consumer {durable}: {}", fields.join(", ")),
                )),
            };
            if let Some((reason, note)) = note {
                info!(consumer = %durable, namespace = consumer.namespace().unwrap_or_default(), reason, "{note}");
                let type_ = if reason == "DriftCorrected" {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                report::publish(&ctx.recorder, &reference, type_, reason, "Apply", note).await;
            }
            status_written?;
            Ok(Action::requeue(ctx.options.requeue_interval))
        }
        Err(Failure {
            error: Error::StreamNotReady { name, reason },
            ..
        }) => {
            // Not a failure of this resource: the stream's watch requeues it once Ready.
            info!(consumer = %durable, namespace = consumer.namespace().unwrap_or_default(), stream = %name, %reason, "waiting for the AuditStream");
            status_written?;
            Ok(Action::requeue(ctx.options.requeue_interval))
        }
        Err(Failure { error, .. }) => {
            warn!(consumer = %durable, namespace = consumer.namespace().unwrap_or_default(), reason = error.reason(), %error, "consumer not ready");
            report::publish(
                &ctx.recorder,
                &reference,
                EventType::Warning,
                error.reason(),
                "Apply",
                error.to_string(),
            )
            .await;
            Err(error)
        }
    }
}

async fn cleanup(consumer: &AuditConsumer, ctx: &Context) -> Result<Action> {
    let reference = consumer.object_ref(&());
    let durable = consumer.durable_name();
    let namespace = consumer.namespace().unwrap_or_default();
    let (reason, note) = match consumer.spec.deletion_policy {
        ConsumerDeletionPolicy::Retain => (
            "Retained",
            format!("deletionPolicy is Retain: durable consumer {durable} stays on NATS"),
        ),
        ConsumerDeletionPolicy::Delete => match delete_durable(consumer, ctx).await {
            Ok(Removal::Done { reason, note }) => (reason, note),
            Ok(Removal::LeftOnNats { stream, why }) => {
                let note = format!(
                    "{why}: durable consumer {durable} on stream {stream} is left on NATS (deletionPolicy Delete not carried out); if the stream still exists there, delete the consumer by hand"
                );
                warn!(consumer = %durable, %namespace, %stream, "{note}");
                ctx.metrics.record_consumer_left_on_nats(
                    &namespace,
                    &consumer.name_any(),
                    &stream,
                    &durable,
                );
                report::publish(
                    &ctx.recorder,
                    &reference,
                    EventType::Warning,
                    "NotDeleted",
                    "Delete",
                    note,
                )
                .await;
                return Ok(release(consumer, ctx));
            }
            Err(error) => {
                warn!(consumer = %durable, %namespace, %error, "cannot delete the durable consumer; set deletionPolicy: Retain to let the resource go without deleting it");
                report::publish(&ctx.recorder, &reference, EventType::Warning, error.reason(), "Delete", format!("{error}; to let the resource go without deleting the durable consumer, set deletionPolicy: Retain")).await;
                return Err(error);
            }
        },
    };
    info!(consumer = %durable, %namespace, reason, "{note}");
    report::publish(
        &ctx.recorder,
        &reference,
        EventType::Normal,
        reason,
        "Delete",
        note,
    )
    .await;
    Ok(release(consumer, ctx))
}

/// Forgets what the operator held for a deleted AuditConsumer.
fn release(consumer: &AuditConsumer, ctx: &Context) -> Action {
    ctx.state.max_deliveries.forget(&object_ref(consumer));
    ctx.pool.release(&PoolUser::of(consumer));
    Action::await_change()
}

/// How the deletion of a durable consumer ended.
enum Removal {
    /// Deleted, already gone, or not this resource's: the Event's reason and note.
    Done { reason: &'static str, note: String },
    /// Nothing can reach the durable consumer any more, and waiting would not change that:
    /// `why`, and the `stream` it is on.
    LeftOnNats { stream: String, why: String },
}

/// Stops the pods, then deletes the durable consumer if it is this resource's.
async fn delete_durable(consumer: &AuditConsumer, ctx: &Context) -> Result<Removal> {
    let durable = consumer.durable_name();
    let namespace = consumer.namespace().unwrap_or_default();
    let uid = consumer.uid().unwrap_or_default();
    // Pods reading a deleted consumer would exit with an error until garbage collection
    // removes them; remove their Deployment first.
    apply::remove_owned::<Deployment>(
        &ctx.client,
        &namespace,
        &workload_name(&consumer.name_any()),
        &uid,
    )
    .await?;
    let (stream_name, connection) = match whereabouts(consumer, ctx).await? {
        Whereabouts::Reachable { stream, connection } => (stream, connection),
        Whereabouts::Unreachable { stream, why } => {
            return Ok(Removal::LeftOnNats { stream, why });
        }
    };
    let js = ctx
        .pool
        .jetstream(&PoolUser::of(consumer), &connection)
        .await?
        .context;
    let owner = ownership::owner_of(consumer);
    let deletion = apply::delete_consumer(&js, &stream_name, &durable, &owner).await?;
    let note = match deletion {
        Deletion::Deleted => {
            format!("deleted durable consumer {durable} from stream {stream_name}")
        }
        Deletion::Absent => {
            format!("durable consumer {durable} was already gone from stream {stream_name}")
        }
        Deletion::NotOurs => format!(
            "durable consumer {durable} on stream {stream_name} is not managed by this resource; left it on NATS"
        ),
    };
    Ok(Removal::Done {
        reason: deletion.reason(),
        note,
    })
}

/// Where a durable consumer to delete is, as far as the operator can tell.
enum Whereabouts {
    /// On `stream`, reachable through `connection`.
    Reachable {
        stream: String,
        connection: ResolvedConnection,
    },
    /// On `stream`, but nothing can reach it any more and waiting would not change that.
    Unreachable { stream: String, why: String },
}

/// The durable consumer's stream and the connection to it: the AuditStream's, with the
/// credentials from its Secrets or, when those are gone or unusable, the ones this resource
/// last connected with. Without either, it is unreachable once the AuditStream or the
/// namespace is being deleted (no Secret can come back into a terminating namespace) or the
/// AuditStream is gone; otherwise the Secret's error stands, and the deletion waits.
async fn whereabouts(consumer: &AuditConsumer, ctx: &Context) -> Result<Whereabouts> {
    let namespace = consumer.namespace().unwrap_or_default();
    let streams: Api<AuditStream> = Api::namespaced(ctx.client.clone(), &namespace);
    let stream = match dereference::referenced_stream(consumer, &streams).await {
        Ok(stream) => stream,
        Err(Error::StreamNotFound { name }) => {
            let last_stream_name = consumer.status.as_ref().and_then(|s| s.stream_name.clone());
            let remembered = ctx.pool.last_connected(&PoolUser::of(consumer));
            return Ok(match (last_stream_name, remembered) {
                (Some(stream), Some(connection)) => Whereabouts::Reachable { stream, connection },
                (stream, _) => Whereabouts::Unreachable {
                    stream: stream.unwrap_or_else(|| name.clone()),
                    why: format!(
                        "AuditStream {name} is gone, so its connection to NATS is unknown"
                    ),
                },
            });
        }
        Err(error) => return Err(error),
    };
    let stream_name = stream.stream_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let user = PoolUser::of(consumer);
    let error = match connection::for_cleanup(&secrets, &stream.spec.connection, &ctx.pool, &user)
        .await?
    {
        ForCleanup::Current(connection) => {
            return Ok(Whereabouts::Reachable {
                stream: stream_name,
                connection,
            });
        }
        ForCleanup::LastUsed { connection, why } => {
            info!(consumer = %consumer.durable_name(), %namespace, error = %why, "deleting with the credentials last connected with");
            return Ok(Whereabouts::Reachable {
                stream: stream_name,
                connection,
            });
        }
        ForCleanup::Unusable(error) => error,
    };
    let why = if stream.metadata.deletion_timestamp.is_some() {
        format!(
            "AuditStream {} is being deleted and its credentials are unusable ({error})",
            stream.name_any()
        )
    } else if report::namespace_is_terminating(
        &ctx.client,
        consumer,
        ctx.options.instance.as_deref(),
    )
    .await?
    {
        "the namespace is being deleted and the credentials for NATS were deleted first".to_owned()
    } else {
        return Err(error);
    };
    Ok(Whereabouts::Unreachable {
        stream: stream_name,
        why,
    })
}
