//! Pipeline step 2 (pure): checks the schema cannot express, and the one value every builder
//! reads (as Stackable's `ValidatedCluster`): the spec's strings turned into typed values,
//! defaults and derived values settled, and what was read from the referenced AuditStream.
//! The apiserver already enforced the schema and the CEL rules; this step guards against
//! objects written under an older CRD and computes values derived from several fields.

use std::time::Duration;

use audit_consumer::format::Format;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::OwnerReference, jiff::Timestamp};
use kube::{Resource, ResourceExt};

use super::{
    archive::ValidArchive,
    autoscale::Policy,
    dereference::Referenced,
    integrity::{self, ValidIntegrity},
};
use crate::{
    crd::{
        connection::NatsConnection,
        consumer::{
            AuditConsumer, AuditConsumerSpec, DEFAULT_REPLICAS, DeliverPolicy, LogFormat,
            NetworkPolicySettings, PodSettings,
        },
    },
    duration,
    error::{Error, Result},
    ownership::owner_of,
};

/// Label values (the resource name is one) are limited to 63 characters.
const MAX_NAME_LENGTH: usize = 63;

/// An AuditConsumer known to be acceptable, with everything the builders need: they read
/// this, never the raw spec.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidConsumer {
    /// The AuditConsumer's name, after which its workload objects are named and labelled.
    pub name: String,
    pub namespace: Option<String>,
    /// The AuditConsumer as the controlling owner of its workload objects.
    pub owner: Option<OwnerReference>,
    /// The mark of the durable consumer on NATS.
    pub mark: String,

    /// The durable consumer on NATS.
    pub durable_name: String,
    pub description: Option<String>,
    pub filter_subjects: Vec<String>,
    pub start: Start,
    pub ack_wait: Duration,
    pub backoff: Vec<Duration>,
    /// `-1` when unlimited.
    pub max_deliver: i64,
    pub max_ack_pending: i64,

    /// The pods: how many, what they run, and how they pull and write. With `autoscaling`,
    /// the pipeline replaces `replicas` by the autoscaler's decision before the workload is
    /// built.
    pub replicas: i32,
    pub autoscaling: Option<Policy>,
    pub image: String,
    pub batch: u32,
    pub max_bytes: Option<usize>,
    pub expires: Duration,
    pub heartbeat: Option<Duration>,
    pub format: Format,
    pub redact_keys: Vec<String>,
    pub pod: PodSettings,
    pub network_policy: Option<NetworkPolicySettings>,

    /// The stream the consumer reads, and how its pods reach NATS.
    pub stream_name: String,
    /// The referenced AuditStream's connection, whose Secrets the pods mount.
    pub connection: NatsConnection,
    /// Whether the client certificate Secret also holds the CA (`ca.crt`) and no CA Secret is
    /// named: the pods then verify the server with it, as the operator does.
    pub client_cert_has_ca: bool,
    /// `namespace/name@resourceVersion` of every Secret the pods mount.
    pub secret_versions: Vec<String>,
    /// The tamper-evident trail, when on.
    pub integrity: Option<ValidIntegrity>,
    /// The archive output, when set (standard output otherwise).
    pub archive: Option<ValidArchive>,
}

/// Where the consumer starts, with the start value parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Policy(DeliverPolicy),
    Sequence(u64),
    /// RFC 3339, as validated.
    Time(String),
}

/// Validates `consumer`, which reads the dereferenced `referenced`; pods without an image of
/// their own run `default_image`.
pub fn validate(
    consumer: &AuditConsumer,
    referenced: &Referenced,
    default_image: &str,
) -> Result<ValidConsumer> {
    let spec = &consumer.spec;
    let durable_name = names(consumer)?;
    let start = start(spec)?;
    let delivery = delivery(spec)?;
    let archive = spec.archive.as_ref().map(ValidArchive::new).transpose()?;
    let autoscaling = spec.autoscaling.as_ref().map(Policy::new).transpose()?;
    let max_ack_pending = spec
        .max_ack_pending
        .unwrap_or_else(|| default_max_ack_pending(spec, archive.as_ref()));
    let batch = u32::try_from(positive("batch", spec.batch.into())?)
        .map_err(|_| Error::InvalidSpec("spec.batch is too large".into()))?;
    let max_bytes = spec
        .max_bytes
        .map(|bytes| positive("maxBytes", bytes))
        .transpose()?;
    let integrity = integrity(spec, referenced, &durable_name)?;
    let secret_versions = secret_versions(referenced, integrity.as_ref());
    Ok(ValidConsumer {
        name: consumer.name_any(),
        namespace: consumer.namespace(),
        owner: consumer.controller_owner_ref(&()),
        mark: owner_of(consumer),
        durable_name,
        description: spec.description.clone(),
        filter_subjects: spec.filter_subjects.clone(),
        start,
        ack_wait: delivery.ack_wait,
        backoff: delivery.backoff,
        max_deliver: delivery.max_deliver,
        max_ack_pending,
        replicas: spec.replicas.unwrap_or(DEFAULT_REPLICAS),
        autoscaling,
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| default_image.to_owned()),
        batch,
        max_bytes,
        expires: delivery.expires,
        heartbeat: delivery.heartbeat,
        format: match spec.format {
            LogFormat::Json => Format::Json,
            LogFormat::Text => Format::Text,
        },
        redact_keys: spec.redact_keys.clone(),
        pod: spec.pod.clone(),
        network_policy: spec.network_policy.clone().filter(|policy| policy.enabled),
        stream_name: referenced.stream_name.clone(),
        connection: referenced.stream.spec.connection.clone(),
        client_cert_has_ca: referenced.client_cert_has_ca(),
        secret_versions,
        integrity,
        archive,
    })
}

/// The durable name, after checking that the names fit where they go (pure).
fn names(consumer: &AuditConsumer) -> Result<String> {
    let name = consumer.metadata.name.as_deref().unwrap_or_default();
    if name.len() > MAX_NAME_LENGTH {
        return Err(Error::InvalidSpec(format!(
            "the AuditConsumer's name is longer than {MAX_NAME_LENGTH} characters, which cannot be a label value of its pods: choose a shorter name"
        )));
    }
    let durable_name = consumer.durable_name();
    if durable_name.is_empty()
        || durable_name.len() > 255
        || !durable_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::InvalidSpec(format!(
            "durable name {durable_name:?} may hold only letters, digits, '-' and '_' (at most 255): set spec.durableName"
        )));
    }
    Ok(durable_name)
}

fn parse(field: &str, value: &str) -> Result<Duration> {
    duration::parse(value).map_err(|e| Error::InvalidSpec(format!("spec.{field}: {e}")))
}

fn positive(field: &str, value: i64) -> Result<usize> {
    usize::try_from(value)
        .ok()
        .filter(|value| *value > 0)
        .ok_or_else(|| Error::InvalidSpec(format!("spec.{field} must be at least 1")))
}

/// Where delivery starts: the policy with exactly the start it needs.
fn start(spec: &AuditConsumerSpec) -> Result<Start> {
    Ok(
        match (spec.deliver_policy, spec.start_sequence, &spec.start_time) {
            (DeliverPolicy::ByStartSequence, Some(sequence), None) if sequence > 0 => {
                Start::Sequence(sequence.unsigned_abs())
            }
            (DeliverPolicy::ByStartTime, None, Some(time)) => {
                let invalid = |e: &dyn std::fmt::Display| {
                    Error::InvalidSpec(format!(
                        "spec.startTime {time:?} is not an RFC 3339 time such as 2026-11-22T00:00:00Z: {e}"
                    ))
                };
                time.parse::<Timestamp>().map_err(|e| invalid(&e))?;
                // What NATS is sent comes from async-nats' own RFC 3339 reader, which is
                // stricter than jiff's in places: a time it refuses is an invalid spec, never
                // a silent fallback to delivering everything.
                serde_json::from_value::<async_nats::jetstream::consumer::DeliverPolicy>(
                    serde_json::json!({ "deliver_policy": "by_start_time", "opt_start_time": time }),
                )
                .map_err(|e| invalid(&e))?;
                Start::Time(time.clone())
            }
            (DeliverPolicy::ByStartSequence | DeliverPolicy::ByStartTime, ..)
            | (_, Some(_), _)
            | (_, _, Some(_)) => {
                return Err(Error::InvalidSpec(
                    "set spec.startSequence exactly with deliverPolicy ByStartSequence, and spec.startTime exactly with ByStartTime".into(),
                ));
            }
            (policy, None, None) => Start::Policy(policy),
        },
    )
}

/// The acknowledgement and pull timings, checked against each other.
struct Delivery {
    ack_wait: Duration,
    backoff: Vec<Duration>,
    max_deliver: i64,
    expires: Duration,
    heartbeat: Option<Duration>,
}

fn delivery(spec: &AuditConsumerSpec) -> Result<Delivery> {
    let backoff = spec
        .backoff
        .iter()
        .map(|delay| parse("backoff", delay))
        .collect::<Result<Vec<_>>>()?;
    let ack_wait = parse("ackWait", &spec.ack_wait)?;
    if ack_wait < Duration::from_secs(1) {
        return Err(Error::InvalidSpec(
            "spec.ackWait must be at least 1s".into(),
        ));
    }
    let max_deliver = spec.max_deliver.unwrap_or(-1);
    if max_deliver != -1 && usize::try_from(max_deliver).unwrap_or(0) < backoff.len() {
        return Err(Error::InvalidSpec(
            "spec.maxDeliver must be at least the number of spec.backoff delays".into(),
        ));
    }
    let expires = parse("expires", &spec.expires)?;
    let heartbeat = spec
        .heartbeat
        .as_deref()
        .map(|h| parse("heartbeat", h))
        .transpose()?;
    if heartbeat.is_some_and(|h| h.is_zero() || h * 2 > expires) {
        return Err(Error::InvalidSpec(
            "spec.heartbeat must be more than zero and at most half of spec.expires".into(),
        ));
    }
    Ok(Delivery {
        // NATS uses the first backoff delay as the ack wait; stating it keeps the desired
        // configuration equal to what the server reports.
        ack_wait: backoff.first().copied().unwrap_or(ack_wait),
        backoff,
        max_deliver,
        expires,
        heartbeat,
    })
}

/// Without a `maxAckPending`: room for what every pod holds at once.
fn default_max_ack_pending(spec: &AuditConsumerSpec, archive: Option<&ValidArchive>) -> i64 {
    let per_pod = match archive {
        // A pod holds a segment's events unacknowledged while it is stored, and fills the
        // next one meanwhile: with room for one segment only, reading would stop at every
        // upload (measured: 15% less throughput, docs/benchmarks.md).
        Some(archive) => i64::try_from(archive.segment_lines)
            .unwrap_or(i64::MAX)
            .saturating_mul(2)
            .saturating_add(2 * i64::from(spec.batch.max(1))),
        None => 2 * i64::from(spec.batch.max(1)),
    };
    // Autoscaled: room for the most pods, so that scaling never changes the durable consumer.
    let most_pods = spec.autoscaling.as_ref().map_or_else(
        || spec.replicas.unwrap_or(DEFAULT_REPLICAS),
        |a| a.max_replicas,
    );
    i64::from(most_pods.max(1)).saturating_mul(per_pod).max(1)
}

/// The integrity settings, when on, with the signing key read.
fn integrity(
    spec: &AuditConsumerSpec,
    referenced: &Referenced,
    durable_name: &str,
) -> Result<Option<ValidIntegrity>> {
    let Some(settings) = spec.integrity.as_ref().filter(|i| i.enabled) else {
        return Ok(None);
    };
    let key = referenced.signing_key.clone().ok_or_else(|| {
        Error::InvalidSpec("spec.integrity.enabled needs spec.integrity.signingKeySecretRef".into())
    })?;
    let checkpoint_interval = parse(
        "integrity.checkpointInterval",
        &settings.checkpoint_interval,
    )?;
    if checkpoint_interval < Duration::from_secs(1) {
        return Err(Error::InvalidSpec(
            "spec.integrity.checkpointInterval must be at least 1s".into(),
        ));
    }
    Ok(Some(ValidIntegrity {
        key,
        witness_stream: settings.witness_stream.clone(),
        subject: integrity::subject(&referenced.stream_name, durable_name),
        checkpoint_lines: positive("integrity.checkpointLines", settings.checkpoint_lines)? as u64,
        checkpoint_interval,
        replicas: usize::try_from(referenced.stream.spec.replicas.max(1)).unwrap_or(1),
    }))
}

/// The versions of every Secret the pods read: a change rolls them.
fn secret_versions(referenced: &Referenced, integrity: Option<&ValidIntegrity>) -> Vec<String> {
    let mut versions = referenced.connection.secret_versions.clone();
    if let Some(integrity) = integrity {
        versions.push(integrity.key.secret_version.clone());
    }
    versions.extend(referenced.archive_secret_versions.iter().cloned());
    versions.sort();
    versions.dedup();
    versions
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An AuditConsumer from the YAML of its spec, named `orders.reader` in namespace `shop`.
    pub(crate) fn consumer(spec_yaml: &str) -> AuditConsumer {
        let spec = serde_yaml::from_str(spec_yaml).unwrap();
        let mut consumer = AuditConsumer::new("orders.reader", spec);
        consumer.metadata.namespace = Some("shop".into());
        consumer.metadata.generation = Some(1);
        consumer.metadata.uid = Some("0b6b1e3c-7d8e-4a34-9b7e-2a1d5c9f0e11".into());
        consumer
    }

    pub(crate) const MINIMAL: &str = "streamRef: {name: orders}\n";

    /// A connection with credentials, a CA, two servers and a JetStream domain.
    pub(crate) const CONNECTION: &str = "servers: [nats://nats-a.nats:4222, tls://nats-b.nats:7422]\nauth: {credsSecretRef: {name: nats-creds, key: user.creds}}\ntls: {caSecretRef: {name: nats-ca, key: ca.pem}}\njsDomain: hub\n";

    /// The image of pods whose spec names none.
    pub(crate) const DEFAULT_IMAGE: &str = "ghcr.io/eventsaudit/audit-consumer:0.1.0";

    /// The AuditStream `orders` (stream `orders_audit` on NATS) with `connection`, as the
    /// dereference step reads it: its Secrets at fixed versions.
    pub(crate) fn referenced(connection: &str) -> Referenced {
        let spec = format!(
            "name: orders_audit\nsubjects: [audit.>]\nconnection:\n{}",
            connection
                .lines()
                .map(|line| format!("  {line}\n"))
                .collect::<String>()
        );
        let mut stream =
            crate::crd::AuditStream::new("orders", serde_yaml::from_str(&spec).unwrap());
        stream.metadata.namespace = Some("shop".into());
        let spec = &stream.spec.connection;
        Referenced {
            stream_name: stream.stream_name(),
            connection: crate::connection::ResolvedConnection {
                servers: spec.servers.clone(),
                credentials: None,
                tls: None,
                js_domain: spec.js_domain.clone(),
                secret_versions: vec!["shop/nats-ca@4".into(), "shop/nats-creds@12".into()],
            },
            stream,
            signing_key: None,
            archive_secret_versions: Vec::new(),
        }
    }

    /// Validates the AuditConsumer with `spec`, reading a stream with `connection`.
    pub(crate) fn valid_with(spec: &str, connection: &str) -> Result<ValidConsumer> {
        validate(&consumer(spec), &referenced(connection), DEFAULT_IMAGE)
    }

    /// The valid AuditConsumer with `spec`, reading a stream with [`CONNECTION`].
    pub(crate) fn validated(spec: &str) -> ValidConsumer {
        valid_with(spec, CONNECTION).unwrap()
    }

    #[test]
    fn defaults_are_safe_for_an_audit_trail() {
        let valid = validated(MINIMAL);
        assert_eq!(valid.durable_name, "orders_reader");
        assert_eq!(valid.start, Start::Policy(DeliverPolicy::All));
        assert_eq!(valid.ack_wait, Duration::from_secs(30));
        assert_eq!(valid.max_deliver, -1, "unlimited redelivery by default");
        // 2 x 1 replica x batch 100
        assert_eq!(valid.max_ack_pending, 200);
        assert_eq!(valid.expires, Duration::from_secs(30));
    }

    #[test]
    fn max_ack_pending_follows_replicas_and_batch() {
        let valid = validated(&format!("{MINIMAL}replicas: 3\nbatch: 50\n"));
        assert_eq!(valid.max_ack_pending, 300);
        let valid = validated(&format!("{MINIMAL}maxAckPending: 7\n"));
        assert_eq!(valid.max_ack_pending, 7);
        // Autoscaled: room for the most pods, whatever the autoscaler decides.
        let valid = validated(&format!(
            "{MINIMAL}batch: 50\nautoscaling: {{minReplicas: 0, maxReplicas: 4}}\n"
        ));
        assert_eq!(valid.max_ack_pending, 400);
        assert_eq!(valid.autoscaling.unwrap().min, 0);
    }

    #[test]
    fn with_an_archive_every_pod_may_hold_two_segments_and_pull_on() {
        let archive = "archive: {bucket: trail, region: r, segment: {maxLines: 1000}}\n";
        let valid = validated(&format!("{MINIMAL}replicas: 3\nbatch: 50\n{archive}"));
        // 3 x (1000 being stored + 1000 filling + 2 x 50 in flight)
        assert_eq!(valid.max_ack_pending, 6300);
        assert_eq!(valid.archive.unwrap().segment_lines, 1000);
    }

    #[test]
    fn backoff_sets_the_ack_wait_and_bounds_max_deliver() {
        let valid = validated(&format!("{MINIMAL}backoff: [5s, 1m]\nmaxDeliver: 4\n"));
        assert_eq!(valid.ack_wait, Duration::from_secs(5));
        assert_eq!(
            valid.backoff,
            [Duration::from_secs(5), Duration::from_secs(60)]
        );
        let err = valid_with(
            &format!("{MINIMAL}backoff: [5s, 1m, 5m]\nmaxDeliver: 2\n"),
            CONNECTION,
        )
        .unwrap_err();
        assert!(err.to_string().contains("maxDeliver"), "{err}");
    }

    #[test]
    fn start_values_go_with_their_policy() {
        let valid = validated(&format!(
            "{MINIMAL}deliverPolicy: ByStartSequence\nstartSequence: 42\n"
        ));
        assert_eq!(valid.start, Start::Sequence(42));
        let valid = validated(&format!(
            "{MINIMAL}deliverPolicy: ByStartTime\nstartTime: '2026-11-22T00:00:00Z'\n"
        ));
        assert_eq!(valid.start, Start::Time("2026-11-22T00:00:00Z".into()));
        assert!(valid_with(&format!("{MINIMAL}startSequence: 3\n"), CONNECTION).is_err());
        assert!(
            valid_with(
                &format!("{MINIMAL}deliverPolicy: ByStartTime\nstartTime: yesterday\n"),
                CONNECTION
            )
            .is_err()
        );
    }

    #[test]
    fn heartbeat_fits_into_the_expiry() {
        // Without a heartbeat, a short expiry is fine: the consumer's default adapts to it.
        let short = validated(&format!("{MINIMAL}expires: 2s\n"));
        assert_eq!(short.heartbeat, None);
        assert!(
            valid_with(
                &format!("{MINIMAL}expires: 2s\nheartbeat: 2s\n"),
                CONNECTION
            )
            .is_err()
        );
    }

    #[test]
    fn integrity_settles_its_subject_defaults_and_rolls_pods_on_a_key_rotation() {
        let spec = format!(
            "{MINIMAL}integrity: {{enabled: true, signingKeySecretRef: {{name: signer, key: seed}}}}\n"
        );
        let mut stream = referenced(CONNECTION);
        stream.signing_key = Some(crate::consumer::integrity::SigningKey {
            secret: crate::crd::connection::SecretKeyRef {
                name: "signer".into(),
                key: "seed".into(),
            },
            public_key: "APUBLIC".into(),
            secret_version: "shop/signer@3".into(),
        });
        let valid = validate(&consumer(&spec), &stream, DEFAULT_IMAGE).unwrap();
        let integrity = valid.integrity.unwrap();
        assert_eq!(
            integrity.subject,
            "audit-integrity.orders_audit.orders_reader"
        );
        assert_eq!(integrity.witness_stream, "AUDIT_INTEGRITY");
        assert_eq!(integrity.checkpoint_lines, 10_000);
        assert_eq!(integrity.checkpoint_interval, Duration::from_secs(10));
        assert_eq!(
            valid.secret_versions,
            ["shop/nats-ca@4", "shop/nats-creds@12", "shop/signer@3"]
        );
        // Off, or on without the key read (never so after the pipeline's read): no trail.
        let off = spec.replace("enabled: true", "enabled: false");
        assert_eq!(validated(&off).integrity, None);
        assert!(valid_with(&spec, CONNECTION).is_err());
    }

    #[test]
    fn a_name_too_long_for_a_label_is_refused() {
        let mut long = consumer(MINIMAL);
        long.metadata.name = Some("x".repeat(64));
        long.spec.durable_name = Some("short".into());
        assert!(
            matches!(validate(&long, &referenced(CONNECTION), DEFAULT_IMAGE), Err(Error::InvalidSpec(m)) if m.contains("shorter name"))
        );
    }
}
