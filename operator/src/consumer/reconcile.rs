//! Applying an AuditConsumer: the pipeline (dereference -> validate -> build -> apply, for
//! the durable consumer and then the workload), then the optional features in one loop
//! (`features`), then its status and the Events for what changed, what failed, and what the
//! features have to say.

use std::time::Duration;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Secret},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{Api, Resource, ResourceExt, runtime::controller::Action};
use tracing::{info, warn};

use super::{
    Context, apply,
    apply::Change,
    archive,
    autoscale::{self, Direction, Histories, LastScale, Policy},
    build::{self, nats_consumer, workload_name},
    dereference,
    features::{self, Seen, autoscaling::Scaled},
    integrity,
    pods::{self, PodTrouble},
    status::{self, Failure, Report, Stage},
    validate::{self, ValidConsumer},
};
use crate::{
    conditions::held_at_generation,
    connection::PoolUser,
    crd::{consumer::AuditConsumer, stream::AuditStream},
    error::{Error, Result},
    report::{self, Notice},
};

/// Applies `consumer` and reports the outcome: status, Events, log lines.
pub(super) async fn apply(consumer: &AuditConsumer, ctx: &Context) -> Result<Action> {
    let mut seen = Seen::default();
    let result = pipeline(consumer, ctx, &mut seen).await;
    let features = features::observe(consumer, &seen, ctx).await;
    let now = Time(Timestamp::now());
    let previous = consumer.status.clone().unwrap_or_default();
    let mut status = status::desired_status(consumer, &report(&result), &now);
    features.contribute(&previous, &mut status, &now);
    features.record(&ctx.metrics, consumer, &status);
    ctx.metrics.set_ready(
        AuditConsumer::kind(&()),
        &consumer.namespace().unwrap_or_default(),
        &consumer.name_any(),
        &status.conditions,
    );
    // The Events go out even when the status write fails, so that failure cannot hide them.
    let unwritten = waits_for_a_new_stream(consumer, &result, ctx);
    let status_written = if unwritten {
        Ok(())
    } else {
        report::apply_status_if_changed(
            &ctx.client,
            &ctx.statuses,
            consumer,
            consumer.status.as_ref(),
            &status,
        )
        .await
    };
    features.written(ctx, &status);
    for notice in features.notices(&previous, &status) {
        warning(consumer, ctx, notice).await;
    }
    let rolling_out = matches!(&result, Ok(done) if !status::workload_available(&done.deployment));
    conclude(consumer, result, ctx).await?;
    status_written?;
    // A pod's trouble (unschedulable, crash loop) changes nothing the watches see: the
    // Deployment's counts stay as they are. Look again soon while the rollout lasts.
    let recheck = if rolling_out {
        ctx.options.requeue_interval.min(ROLLOUT_RECHECK)
    } else {
        ctx.options.requeue_interval
    };
    let recheck = features.requeue().map_or(recheck, |wish| wish.min(recheck));
    let recheck = if unwritten {
        recheck.min(NEW_STREAM_RECHECK)
    } else {
        recheck
    };
    Ok(Action::requeue(recheck))
}

/// How soon a consumer that wrote no status while its new AuditStream was not reconciled yet
/// is looked at again, should that stream's first status not be Ready (its turning Ready
/// wakes the consumer at once).
const NEW_STREAM_RECHECK: Duration = Duration::from_secs(5);

/// Whether this pass leaves a new consumer's status unwritten: it has none yet, and it
/// waits for an AuditStream that has none either (both applied together, the stream's first
/// reconciliation still to come). The stream turning Ready wakes it a moment later, and its
/// first status is then the outcome instead of a `StreamNotReady` it would replace at once:
/// one write fewer per consumer of a bulk apply. What a health check reads meanwhile is what
/// it reads of the stream: no status.
fn waits_for_a_new_stream(
    consumer: &AuditConsumer,
    result: &Result<Reconciled, Failure>,
    ctx: &Context,
) -> bool {
    let waiting = matches!(
        result,
        Err(Failure {
            error: Error::StreamNotReady { .. },
            ..
        })
    );
    if consumer.status.is_some() || !waiting {
        return false;
    }
    let name = &consumer.spec.stream_ref.name;
    let namespace = consumer.namespace().unwrap_or_default();
    let cached = ctx
        .state
        .streams
        .get(&kube::runtime::reflector::ObjectRef::new(name).within(&namespace));
    matches!(cached.as_deref(), Some(kube::core::DeserializeGuard(Ok(stream))) if stream.status.is_none())
}

/// What the pipeline observed, for the status.
fn report(result: &Result<Reconciled, Failure>) -> Report<'_> {
    match result {
        Ok(done) => Report {
            stream_name: Some(done.stream_name.clone()),
            consumer: Some(&done.info),
            workload: Some(&done.deployment),
            failure: None,
            pods: done.pod_trouble.as_ref(),
        },
        Err(failure) => Report {
            stream_name: failure.stream_name.clone(),
            failure: Some(failure),
            ..Report::default()
        },
    }
}

/// How soon a consumer whose pods are not all ready is looked at again.
const ROLLOUT_RECHECK: Duration = Duration::from_secs(10);

/// Reports what the pipeline did: an Event for a change, or for a failure (which it returns).
/// A stream not ready yet is no failure of this resource: the stream's watch requeues it.
async fn conclude(
    consumer: &AuditConsumer,
    result: Result<Reconciled, Failure>,
    ctx: &Context,
) -> Result<()> {
    let reference = consumer.object_ref(&());
    let durable = consumer.durable_name();
    let namespace = consumer.namespace().unwrap_or_default();
    match result {
        Ok(done) => {
            if let Some(notice) = change_event(consumer, &durable, &done.change) {
                info!(consumer = %durable, %namespace, reason = notice.reason, "{}", notice.note);
                report::publish(&ctx.recorder, &reference, "Apply", notice).await;
            } else if done.change == Change::Created {
                let stream = &done.stream_name;
                info!(consumer = %durable, %namespace, "created durable consumer {durable} on stream {stream}");
            }
            Ok(())
        }
        Err(Failure {
            error: Error::StreamNotReady { name, reason },
            ..
        }) => {
            info!(consumer = %durable, %namespace, stream = %name, %reason, "waiting for the AuditStream");
            Ok(())
        }
        Err(Failure { error, .. }) => {
            warn!(consumer = %durable, %namespace, reason = error.reason(), %error, "consumer not ready");
            let notice = Notice::warning(error.reason(), error.to_string());
            report::publish(&ctx.recorder, &reference, "Apply", notice).await;
            Err(error)
        }
    }
}

/// The Event for a change of the durable consumer, if it deserves one: none for a first
/// creation. An update is drift
/// when this generation's durable consumer had been in place (ConsumerReady at it), and then
/// a Warning; otherwise it is the user's spec change being applied.
fn change_event(consumer: &AuditConsumer, durable: &str, change: &Change) -> Option<Notice> {
    let drift = consumer.status.as_ref().is_some_and(|s| {
        held_at_generation(
            &s.conditions,
            status::CONSUMER_READY,
            s.observed_generation,
            consumer.metadata.generation,
        )
    });
    Some(match change {
        Change::Unchanged => return None,
        // As for an AuditStream: the status says a first creation is done, the log line
        // records it, and a bulk apply writes no Event per object.
        Change::Created => return None,
        Change::Updated(fields) if drift => Notice::warning(
            "DriftCorrected",
            format!(
                "durable consumer {durable} was changed outside the operator; restored {}",
                fields.join(", ")
            ),
        ),
        Change::Updated(fields) => Notice::normal(
            "Updated",
            format!("updated durable consumer {durable}: {}", fields.join(", ")),
        ),
    })
}

/// Logs `notice` as a warning and publishes it about `consumer`.
async fn warning(consumer: &AuditConsumer, ctx: &Context, notice: Notice) {
    warn!(consumer = %consumer.durable_name(), namespace = consumer.namespace().unwrap_or_default(), reason = notice.reason, "{}", notice.note);
    report::publish(&ctx.recorder, &consumer.object_ref(&()), "Apply", notice).await;
}

/// What a successful pass produced.
struct Reconciled {
    stream_name: String,
    change: Change,
    info: async_nats::jetstream::consumer::Info,
    deployment: Deployment,
    /// While the workload is not available, why its pods are not ready, if one says.
    pod_trouble: Option<PodTrouble>,
}

/// The pipeline; a failure says at which stage it stopped, for the detail conditions. What it
/// got to see goes into `seen`, also when it stops, for the features.
async fn pipeline(
    consumer: &AuditConsumer,
    ctx: &Context,
    seen: &mut Seen,
) -> Result<Reconciled, Failure> {
    let namespace = consumer.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut referenced = read_stream(consumer, &secrets, ctx).await?;
    let stream_name = referenced.stream_name.clone();
    seen.stream_name = Some(stream_name.clone());
    let at = |stage: Stage| {
        let stream_name = stream_name.clone();
        move |error: Error| Failure {
            stage,
            stream_name: Some(stream_name),
            error,
        }
    };

    referenced.signing_key = integrity::read_signing_key(consumer, &secrets)
        .await
        .map_err(at(Stage::Consumer))?;
    referenced.archive_secret_versions = archive::read_secrets(consumer, &secrets)
        .await
        .map_err(at(Stage::Consumer))?;
    let valid = validate::validate(consumer, &referenced, &ctx.options.consumer_image)
        .map_err(at(Stage::Consumer))?;
    seen.valid = Some(valid.clone());
    let desired = nats_consumer::desired_config(&valid);
    let nats = ctx
        .pool
        .jetstream(&PoolUser::of(consumer), &referenced.connection)
        .await
        .map_err(at(Stage::Consumer))?;
    // Before any pod publishes a checkpoint, so that none goes to a stream that could lose it.
    if let Some(integrity) = &valid.integrity {
        integrity::ensure_witness_stream(&nats.context, integrity)
            .await
            .map_err(at(Stage::Consumer))?;
    }
    let (change, info) = apply::apply_consumer(&nats.context, &stream_name, &desired)
        .await
        .map_err(at(Stage::Consumer))?;
    seen.client = Some(nats.client.clone());
    seen.jetstream = Some(nats.context.clone());

    let mut valid = valid;
    if let Some(policy) = &valid.autoscaling {
        let scaled = decide_replicas(consumer, policy, &info, &ctx.state.scaling);
        valid.replicas = scaled.decision.replicas;
        seen.scaling = Some(scaled);
    }

    let deployment = apply_workload(consumer, &valid, ctx)
        .await
        .map_err(at(Stage::Workload))?;
    seen.deployment = Some(deployment.clone());
    let pod_trouble = if status::workload_available(&deployment) {
        None
    } else {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        pods::trouble(&pods::list(&api, &consumer.name_any()).await)
    };
    Ok(Reconciled {
        stream_name,
        change,
        info,
        deployment,
        pod_trouble,
    })
}

/// Step 4b, with autoscaling: how many pods, from the lag just read (see `autoscale`). It
/// starts from the last decision in the status, so a restarted operator changes nothing by
/// itself.
fn decide_replicas(
    consumer: &AuditConsumer,
    policy: &Policy,
    info: &async_nats::jetstream::consumer::Info,
    histories: &Histories,
) -> Scaled {
    let now = Timestamp::now();
    let status = consumer.status.as_ref();
    let last = status.and_then(|s| s.autoscaling.as_ref());
    let current = status
        .and_then(|s| s.desired_replicas)
        .unwrap_or(policy.min);
    let lag = info.num_pending + info.num_ack_pending as u64;
    let consumer_created =
        Timestamp::from_nanosecond(info.created.unix_timestamp_nanos()).unwrap_or(now);
    let trusted = last
        .and_then(|s| s.consumer_created.as_deref())
        .and_then(|time| time.parse().ok());
    let hold = autoscale::recreated(policy, consumer_created, trusted, now);
    let last_scale = last.and_then(|s| {
        Some(LastScale {
            direction: Direction::from_reason(s.last_scale_direction.as_deref()?)?,
            at: s.last_scale_time.as_deref()?.parse().ok()?,
        })
    });
    let uid = consumer.uid().unwrap_or_default();
    let decision = histories.with(&uid, now, |history| {
        autoscale::decide(policy, current, lag, hold, history, last_scale, now)
    });
    Scaled {
        decision,
        consumer_created,
    }
}

/// Step 1: the AuditStream and the Secrets it names; a failure is the stream stage's.
async fn read_stream(
    consumer: &AuditConsumer,
    secrets: &Api<Secret>,
    ctx: &Context,
) -> Result<dereference::Referenced, Failure> {
    let streams = &ctx.state.streams;
    let stream_api: Api<AuditStream> = Api::namespaced(
        ctx.client.clone(),
        &consumer.namespace().unwrap_or_default(),
    );
    let grace = ctx.options.missing_stream_grace;
    match dereference::dereference(consumer, streams, &stream_api, secrets, grace).await {
        Ok(referenced) => Ok(referenced),
        Err(error) => {
            let instance = ctx.options.instance.as_deref();
            let error =
                report::unless_namespace_terminating(&ctx.client, consumer, instance, error).await;
            Err(Failure {
                stage: Stage::Stream,
                stream_name: None,
                error,
            })
        }
    }
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
    let cached = &ctx.state.workloads;
    let service_account = build::service_account::build(valid);
    apply::apply_owned(client, &service_account, &uid, &cached.service_accounts).await?;
    let deployment = build::deployment::build(valid);
    let deployment = apply::apply_owned(client, &deployment, &uid, &cached.deployments).await?;
    match build::pdb::build(valid) {
        Some(pdb) => {
            drop(apply::apply_owned(client, &pdb, &uid, &cached.disruption_budgets).await?)
        }
        None => {
            apply::remove_owned(client, &namespace, &name, &uid, &cached.disruption_budgets).await?
        }
    }
    apply_verification(consumer, valid, ctx).await?;
    match build::network_policy::build(valid) {
        Some(policy) => {
            drop(apply::apply_owned(client, &policy, &uid, &cached.network_policies).await?)
        }
        None => {
            apply::remove_owned(client, &namespace, &name, &uid, &cached.network_policies).await?
        }
    }
    Ok(deployment)
}

/// The archive's scheduled verification: its ServiceAccount and CronJob, or neither. The
/// CronJob's next run starts at the `verifiedThrough` of the last written status.
async fn apply_verification(
    consumer: &AuditConsumer,
    valid: &ValidConsumer,
    ctx: &Context,
) -> Result<()> {
    let client = &ctx.client;
    let uid = consumer.uid().unwrap_or_default();
    let namespace = consumer.namespace().unwrap_or_default();
    let name = build::verification::verifier_name(&valid.name);
    let cached = &ctx.state.workloads;
    let since = consumer.status.as_ref().and_then(|s| {
        s.archive
            .as_ref()?
            .verification
            .as_ref()?
            .verified_through
            .as_deref()
    });
    match build::verification::service_account(valid) {
        Some(account) => {
            drop(apply::apply_owned(client, &account, &uid, &cached.service_accounts).await?)
        }
        None => {
            apply::remove_owned(client, &namespace, &name, &uid, &cached.service_accounts).await?
        }
    }
    match build::verification::cron_job(valid, since) {
        Some(job) => drop(apply::apply_owned(client, &job, &uid, &cached.cron_jobs).await?),
        None => apply::remove_owned(client, &namespace, &name, &uid, &cached.cron_jobs).await?,
    }
    Ok(())
}
