//! The tamper-evident audit trail (`spec.integrity`), the operator's part: the signing key's
//! public half (read from its Secret, the seed itself never kept), the witness stream (made
//! append-only on NATS before any pod publishes to it), and what the witness stream shows of
//! the pods' checkpoints for the status.
//!
//! The pods do the chaining, signing and publishing (`audit-consumer --integrity`); the
//! operator sees to it that the stream they publish to exists and denies delete and purge,
//! and reports whether checkpoints keep up with the events acknowledged.

use std::{collections::BTreeMap, fmt, time::Duration};

use async_nats::jetstream::{
    self, ErrorCode,
    consumer::DeliverPolicy,
    context::{CreateStreamErrorKind, GetStreamErrorKind},
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use audit_consumer::integrity::{
    chain,
    head::{self, StoredHead},
    witness,
};
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{Api, ResourceExt};
use nkeys::KeyPair;

use crate::{
    connection::resolve,
    crd::{
        connection::SecretKeyRef,
        consumer::{AuditConsumer, IntegrityStatus, PodCheckpoint},
    },
    error::{Error, Result},
};

/// The subjects of every witness stream: all AuditConsumers' checkpoints.
pub const WITNESS_SUBJECTS: &str = "audit-integrity.>";
/// How long the witness stream may take to deliver the next stored checkpoint.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How far back the status looks for checkpoints: ten intervals, at least a minute, at most
/// a quarter of an hour (a busy consumer with a long interval checkpoints by line count,
/// and every requeue reads what the period holds). A period shorter than the interval
/// cannot make checkpoints look late: that judgement waits for the interval itself.
const LOOKBACK_INTERVALS: u32 = 10;
const MIN_LOOKBACK: Duration = Duration::from_secs(60);
const MAX_LOOKBACK: Duration = Duration::from_secs(15 * 60);

/// The signing key as the operator keeps it: where it is and its public half.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub secret: SecretKeyRef,
    /// The NKey public key, which verifies the checkpoints.
    pub public_key: String,
    /// `namespace/name@resourceVersion`: a rotation rolls the pods.
    pub secret_version: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("secret", &self.secret.name)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// The integrity settings, checked and with their defaults settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidIntegrity {
    pub key: SigningKey,
    pub witness_stream: String,
    /// `audit-integrity.<stream>.<durable consumer>`.
    pub subject: String,
    pub checkpoint_lines: u64,
    pub checkpoint_interval: Duration,
    /// The replicas of the witness stream, when the operator creates it: the AuditStream's.
    pub replicas: usize,
}

/// Reads the signing key `consumer` names, if integrity is on (pipeline step 1, I/O).
pub async fn read_signing_key(
    consumer: &AuditConsumer,
    secrets: &Api<Secret>,
) -> Result<Option<SigningKey>> {
    let Some(reference) = wanted_key(consumer) else {
        return Ok(None);
    };
    let secret = secrets
        .get_opt(&reference.name)
        .await
        .map_err(Error::Kube)?
        .ok_or_else(|| Error::SecretNotFound {
            name: reference.name.clone(),
        })?;
    signing_key(&secret, reference).map(Some)
}

/// The key reference of an AuditConsumer with integrity on.
pub fn wanted_key(consumer: &AuditConsumer) -> Option<&SecretKeyRef> {
    consumer
        .spec
        .integrity
        .as_ref()
        .filter(|integrity| integrity.enabled)
        .and_then(|integrity| integrity.signing_key_secret_ref.as_ref())
}

/// The public half of the seed under `reference` in `secret` (pure). The seed goes no further.
pub fn signing_key(secret: &Secret, reference: &SecretKeyRef) -> Result<SigningKey> {
    let fetched = BTreeMap::from([(reference.name.clone(), secret.clone())]);
    let seed = resolve::text(&fetched, reference)?;
    let key = KeyPair::from_seed(seed.trim()).map_err(|_| Error::SecretInvalid {
        name: reference.name.clone(),
        key: reference.key.clone(),
        problem:
            "not an NKey seed (`S...`): generate one with `nk -gen account` and store it there"
                .into(),
    })?;
    Ok(SigningKey {
        secret: reference.clone(),
        public_key: key.public_key(),
        secret_version: format!(
            "{}/{}@{}",
            secret.namespace().unwrap_or_default(),
            secret.name_any(),
            secret.resource_version().unwrap_or_default()
        ),
    })
}

/// The witness stream the operator creates when it is missing (pure): append-only, every
/// AuditConsumer's checkpoints, kept until someone with NATS administrator rights removes the
/// stream itself.
pub fn desired_witness_stream(integrity: &ValidIntegrity) -> stream::Config {
    stream::Config {
        name: integrity.witness_stream.clone(),
        description: Some(
            "Signed chain heads of audit-consumer pods (tamper-evident audit trail); created by audit-operator".into(),
        ),
        subjects: vec![WITNESS_SUBJECTS.to_owned()],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::New,
        storage: StorageType::File,
        num_replicas: integrity.replicas,
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        ..stream::Config::default()
    }
}

/// What makes an existing witness stream unfit (pure): a checkpoint that can be deleted or
/// purged witnesses nothing, and one the stream does not capture is never stored.
pub fn unfit(config: &stream::Config, subject: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !config.deny_delete {
        problems.push("it allows deleting messages (set deny_delete)".to_owned());
    }
    if !config.deny_purge {
        problems.push("it allows purging (set deny_purge)".to_owned());
    }
    if config.allow_rollup {
        problems.push("it allows roll-ups, which purge (unset allow_rollup_hdrs)".to_owned());
    }
    if !config
        .subjects
        .iter()
        .any(|pattern| subject_matches(pattern, subject))
    {
        problems.push(format!("its subjects do not capture {subject}"));
    }
    problems
}

/// NATS subject matching: `*` one token, `>` the rest (one token at least).
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in pattern.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// Creates the witness stream if it is missing, and checks it is fit otherwise (I/O). An
/// existing stream is never changed: it may serve others, and loosening or tightening it is
/// its administrator's decision.
pub async fn ensure_witness_stream(
    js: &jetstream::Context,
    integrity: &ValidIntegrity,
) -> Result<()> {
    let name = &integrity.witness_stream;
    let config = match js.get_stream(name).await {
        Ok(stream) => stream.cached_info().config.clone(),
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(server) if server.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            return match js.create_stream(desired_witness_stream(integrity)).await {
                Ok(_) => {
                    tracing::info!(stream = %name, "created the witness stream");
                    Ok(())
                }
                // Another AuditConsumer made it meanwhile: check that one.
                Err(e) if matches!(e.kind(), CreateStreamErrorKind::JetStream(server) if server.error_code() == ErrorCode::STREAM_NAME_EXIST) => {
                    Box::pin(ensure_witness_stream(js, integrity)).await
                }
                Err(e) => Err(Error::WitnessStreamUnfit {
                    stream: name.clone(),
                    problem: format!("NATS refused to create it: {e}"),
                }),
            };
        }
        Err(e) => return Err(Error::JetStreamRequest(e.to_string())),
    };
    let problems = unfit(&config, &integrity.subject);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::WitnessStreamUnfit {
            stream: name.clone(),
            problem: problems.join("; "),
        })
    }
}

/// What the witness stream showed of the pods' checkpoints in the lookback period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoints {
    pub status: IntegrityStatus,
    pub interval: Duration,
    /// When the newest checkpoint that verifies was stored.
    pub newest: Option<Timestamp>,
    /// Where the lookback period began.
    pub since: Timestamp,
    /// Why the witness stream could not be read, if it could not.
    pub unread: Option<String>,
}

/// Reads the checkpoints stored on the consumer's subject in the lookback period (I/O) and
/// sums them up. A failed read is reported, not raised: the consumer works all the same.
pub async fn observe(
    js: &jetstream::Context,
    integrity: &ValidIntegrity,
    now: Timestamp,
) -> Checkpoints {
    let since = lookback_start(integrity.checkpoint_interval, now);
    let start_time = time_of(since);
    let read = async {
        let stream = js
            .get_stream_no_info(&integrity.witness_stream)
            .await
            .map_err(|e| e.to_string())?;
        head::read_stored(
            &stream,
            Some(&integrity.subject),
            DeliverPolicy::ByStartTime { start_time },
            READ_TIMEOUT,
        )
        .await
    };
    match read.await {
        Ok(heads) => summarize(integrity, &heads, since),
        Err(reason) => Checkpoints {
            unread: Some(reason),
            ..summarize(integrity, &[], since)
        },
    }
}

fn lookback_start(interval: Duration, now: Timestamp) -> Timestamp {
    let lookback = (interval * LOOKBACK_INTERVALS).clamp(MIN_LOOKBACK, MAX_LOOKBACK);
    let lookback = k8s_openapi::jiff::SignedDuration::try_from(lookback).unwrap_or_default();
    now.checked_sub(lookback).unwrap_or(now)
}

/// async-nats' instant for a jiff one.
fn time_of(instant: Timestamp) -> async_nats::datetime::DateTime {
    async_nats::datetime::from_nanos(instant.as_nanosecond())
        .unwrap_or_else(|_| async_nats::datetime::now())
}

/// The newest checkpoint of each pod among `heads`, those that verify with the signing key
/// only, and how many did not (pure).
pub fn summarize(
    integrity: &ValidIntegrity,
    heads: &[StoredHead],
    since: Timestamp,
) -> Checkpoints {
    let trusted = KeyPair::from_public_key(&integrity.key.public_key)
        .map(|key| vec![key])
        .unwrap_or_default();
    let mut newest_of_pod: BTreeMap<String, (i128, head::Checkpoint)> = BTreeMap::new();
    let mut rejected = 0;
    for stored in heads {
        let Ok(checkpoint) = head::open(&stored.payload, stored.signature.as_deref(), &trusted)
        else {
            rejected += 1;
            continue;
        };
        let pod = chain::pod_of(&checkpoint.chain)
            .unwrap_or(&checkpoint.chain)
            .to_owned();
        match newest_of_pod.get(&pod) {
            Some((stored_at, _)) if *stored_at > stored.stored_nanos => {}
            _ => {
                newest_of_pod.insert(pod, (stored.stored_nanos, checkpoint));
            }
        }
    }
    let newest = newest_of_pod
        .values()
        .map(|(stored_at, _)| *stored_at)
        .max()
        .and_then(|nanos| Timestamp::from_nanosecond(nanos).ok());
    let checkpoints = newest_of_pod
        .into_iter()
        .map(|(pod, (stored_at, checkpoint))| PodCheckpoint {
            pod,
            chain: checkpoint.chain,
            position: checkpoint.seq,
            time: Timestamp::from_nanosecond(stored_at)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            segment_bytes: checkpoint.segment.as_ref().map(|segment| segment.bytes),
            segment: checkpoint.segment.map(|segment| segment.key),
        })
        .collect();
    Checkpoints {
        status: IntegrityStatus {
            witness_stream: integrity.witness_stream.clone(),
            subject: integrity.subject.clone(),
            public_key: integrity.key.public_key.clone(),
            checkpoints,
            rejected_checkpoints: rejected,
        },
        interval: integrity.checkpoint_interval,
        newest,
        since,
        unread: None,
    }
}

/// The subject a consumer's pods publish their checkpoints on.
pub fn subject(stream_name: &str, durable_name: &str) -> String {
    witness::default_subject(stream_name, durable_name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn key_secret(seed: &str) -> Secret {
        serde_yaml::from_str(&format!(
            "metadata: {{name: signer, namespace: shop, resourceVersion: '7'}}\nstringData: {{}}\ndata: {{seed: {}}}\n",
            base64_of(seed)
        ))
        .unwrap()
    }

    fn base64_of(text: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn reference() -> SecretKeyRef {
        SecretKeyRef {
            name: "signer".into(),
            key: "seed".into(),
        }
    }

    pub(crate) fn valid_integrity(key: &KeyPair) -> ValidIntegrity {
        ValidIntegrity {
            key: SigningKey {
                secret: reference(),
                public_key: key.public_key(),
                secret_version: "shop/signer@7".into(),
            },
            witness_stream: "AUDIT_INTEGRITY".into(),
            subject: "audit-integrity.orders_audit.orders_reader".into(),
            checkpoint_lines: 10_000,
            checkpoint_interval: Duration::from_secs(10),
            replicas: 1,
        }
    }

    #[test]
    fn the_operator_keeps_the_public_half_only() {
        let key = KeyPair::new_account();
        let seed = key.seed().unwrap();
        let signing = signing_key(&key_secret(&format!("{seed}\n")), &reference()).unwrap();
        assert_eq!(signing.public_key, key.public_key());
        assert_eq!(signing.secret_version, "shop/signer@7");
        assert!(
            !format!("{signing:?}").contains(&seed),
            "Debug shows no seed"
        );
    }

    #[test]
    fn a_key_that_is_no_seed_says_what_to_store() {
        let err = signing_key(&key_secret("hunter2"), &reference()).unwrap_err();
        assert_eq!(err.reason(), "SecretInvalid");
        assert!(err.to_string().contains("nk -gen account"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let public = KeyPair::new_account().public_key();
        assert!(signing_key(&key_secret(&public), &reference()).is_err());
        let missing = SecretKeyRef {
            key: "other".into(),
            ..reference()
        };
        assert_eq!(
            signing_key(&key_secret("x"), &missing)
                .unwrap_err()
                .reason(),
            "SecretKeyMissing"
        );
    }

    #[test]
    fn the_witness_stream_is_append_only_and_captures_every_consumer() {
        let integrity = valid_integrity(&KeyPair::new_account());
        let config = desired_witness_stream(&integrity);
        assert!(config.deny_delete && config.deny_purge && !config.allow_rollup);
        assert_eq!(config.storage, StorageType::File);
        assert!(unfit(&config, &integrity.subject).is_empty());
        assert!(unfit(&config, "audit-integrity.other.consumer").is_empty());
    }

    #[test]
    fn an_existing_stream_that_can_lose_checkpoints_is_refused_with_what_to_fix() {
        let subject = "audit-integrity.S.C";
        let loose = stream::Config {
            subjects: vec!["audit-integrity.S.*".into()],
            ..stream::Config::default()
        };
        let problems = unfit(&loose, subject);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("deny_delete") && problems[1].contains("deny_purge"));
        let elsewhere = stream::Config {
            subjects: vec!["other.>".into(), "audit-integrity.T.>".into()],
            deny_delete: true,
            deny_purge: true,
            ..stream::Config::default()
        };
        assert_eq!(
            unfit(&elsewhere, subject),
            ["its subjects do not capture audit-integrity.S.C"]
        );
    }

    #[test]
    fn subjects_match_as_nats_matches_them() {
        assert!(subject_matches("audit-integrity.>", "audit-integrity.S.C"));
        assert!(subject_matches(
            "audit-integrity.*.C",
            "audit-integrity.S.C"
        ));
        assert!(subject_matches(
            "audit-integrity.S.C",
            "audit-integrity.S.C"
        ));
        assert!(!subject_matches("audit-integrity.>", "audit-integrity"));
        assert!(!subject_matches("audit-integrity.*", "audit-integrity.S.C"));
        assert!(!subject_matches(
            "audit-integrity.S.C.>",
            "audit-integrity.S.C"
        ));
    }

    fn stored(key: &KeyPair, chain: &str, seq: u64, stored_second: i64) -> StoredHead {
        let checkpoint = head::Checkpoint {
            chain: chain.to_owned(),
            seq,
            hash: format!("{seq:02x}").repeat(32),
            time: "2026-11-28T10:00:00Z".into(),
            signer: key.public_key(),
            segment: None,
        };
        let (payload, signature) = head::sign(&checkpoint, key).unwrap();
        StoredHead {
            stream_sequence: seq,
            subject: "audit-integrity.orders_audit.orders_reader".into(),
            stored_nanos: i128::from(stored_second) * 1_000_000_000,
            payload,
            signature: Some(signature),
        }
    }

    #[test]
    fn the_lookback_is_ten_intervals_between_a_minute_and_a_quarter_hour() {
        let now = Timestamp::from_second(100_000).unwrap();
        let back = |interval: u64| {
            now.as_second() - lookback_start(Duration::from_secs(interval), now).as_second()
        };
        assert_eq!(back(1), 60);
        assert_eq!(back(10), 100);
        assert_eq!(back(3600), 900);
    }

    #[test]
    fn the_status_names_each_pods_newest_checkpoint_and_counts_forgeries() {
        let key = KeyPair::new_account();
        let forger = KeyPair::new_account();
        let integrity = valid_integrity(&key);
        let a = "orders_reader/pod-a/2026-11-28T10:00:00.000000000Z";
        let b = "orders_reader/pod-b/2026-11-28T10:00:00.000000000Z";
        let heads = [
            stored(&key, a, 100, 1_795_000_000),
            stored(&key, b, 40, 1_795_000_001),
            stored(&key, a, 250, 1_795_000_010),
            stored(&forger, a, 999, 1_795_000_020),
        ];
        let since = Timestamp::from_second(1_794_999_900).unwrap();
        let seen = summarize(&integrity, &heads, since);
        assert_eq!(seen.status.rejected_checkpoints, 1);
        assert_eq!(seen.newest, Timestamp::from_second(1_795_000_010).ok());
        let positions: Vec<(&str, u64)> = seen
            .status
            .checkpoints
            .iter()
            .map(|c| (c.pod.as_str(), c.position))
            .collect();
        assert_eq!(positions, [("pod-a", 250), ("pod-b", 40)]);
        assert_eq!(seen.status.checkpoints[0].time, "2026-11-18T11:06:50Z");
        assert_eq!(seen.status.public_key, key.public_key());
        assert_eq!(seen.status.checkpoints[0].segment, None);
    }

    #[test]
    fn a_segment_end_names_the_pods_newest_stored_object() {
        let key = KeyPair::new_account();
        let chain = "orders_reader/pod-a/2026-11-28T10:00:00.000000000Z";
        let checkpoint = head::Checkpoint {
            chain: chain.into(),
            seq: 300,
            hash: "ab".repeat(32),
            time: "2026-11-28T10:00:00Z".into(),
            signer: key.public_key(),
            segment: Some(head::SegmentEnd {
                key: "audit/S/C/2026/11/28/x_000001.jsonl.gz".into(),
                bytes: 4096,
            }),
        };
        let (payload, signature) = head::sign(&checkpoint, &key).unwrap();
        let heads = [StoredHead {
            stream_sequence: 1,
            subject: "audit-integrity.orders_audit.orders_reader".into(),
            stored_nanos: 1_795_000_000 * 1_000_000_000,
            payload,
            signature: Some(signature),
        }];
        let since = Timestamp::from_second(1_794_999_900).unwrap();
        let seen = summarize(&valid_integrity(&key), &heads, since);
        let newest = &seen.status.checkpoints[0];
        assert_eq!(
            newest.segment.as_deref(),
            Some("audit/S/C/2026/11/28/x_000001.jsonl.gz")
        );
        assert_eq!(newest.segment_bytes, Some(4096));
    }
}
