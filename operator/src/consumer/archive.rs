//! The archive output (`spec.archive`): the Secrets its pods mount, read and checked before
//! any pod needs them (pipeline step 1, I/O), and the settings checked into what the pods are
//! started with (pure).
//!
//! The store itself is the pods' business: they check the bucket at start-up (reachable,
//! Object Lock on when asked for) and refuse to start with a message that says what to fix,
//! which the workload's condition quotes. The operator holds no store credentials of its own.

use std::{collections::BTreeMap, time::Duration};

use audit_consumer::config::{Compression, LockMode};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::{
    connection::resolve,
    crd::{
        connection::SecretKeyRef,
        consumer::{
            ArchiveCompression, ArchiveCredentialsRef, ArchiveSettings,
            ArchiveVerificationSettings, AuditConsumer, ObjectLockMode,
        },
    },
    duration,
    error::{Error, Result},
};

const DAY: Duration = Duration::from_secs(86_400);

/// The archive settings, checked, in the consumer's own types.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidArchive {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub prefix: String,
    pub credentials: Option<ArchiveCredentialsRef>,
    pub ca: Option<SecretKeyRef>,
    pub segment_lines: u64,
    pub segment_bytes: usize,
    pub segment_age: Duration,
    pub compression: Compression,
    /// The Object Lock mode and period, when set.
    pub lock: Option<(LockMode, Duration)>,
    /// The scheduled verification, when set.
    pub verification: Option<ArchiveVerificationSettings>,
}

impl ValidArchive {
    /// Checks `settings` (pure).
    pub fn new(settings: &ArchiveSettings) -> Result<Self> {
        let invalid = |problem: &str| Error::InvalidSpec(format!("spec.archive.{problem}"));
        let segment = &settings.segment;
        let segment_lines = u64::try_from(segment.max_lines)
            .ok()
            .filter(|lines| *lines > 0)
            .ok_or_else(|| invalid("segment.maxLines must be at least 1"))?;
        let segment_bytes = usize::try_from(segment.max_bytes)
            .ok()
            .filter(|bytes| *bytes >= 1024)
            .ok_or_else(|| invalid("segment.maxBytes must be at least 1024"))?;
        let segment_age = duration::parse(&segment.max_age)
            .map_err(|e| invalid(&format!("segment.maxAge: {e}")))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&segment_age) {
            return Err(invalid("segment.maxAge must be between 1s and 24h"));
        }
        let lock = match &settings.object_lock {
            None => None,
            Some(lock) => {
                let days = u32::try_from(lock.retention_days)
                    .ok()
                    .filter(|days| *days > 0)
                    .ok_or_else(|| invalid("objectLock.retentionDays must be at least 1"))?;
                let mode = match lock.mode {
                    ObjectLockMode::Compliance => LockMode::Compliance,
                    ObjectLockMode::Governance => LockMode::Governance,
                };
                Some((mode, DAY * days))
            }
        };
        Ok(Self {
            bucket: settings.bucket.clone(),
            region: settings.region.clone(),
            endpoint: settings.endpoint.clone(),
            force_path_style: settings.force_path_style,
            prefix: settings.prefix.clone(),
            credentials: settings.credentials_secret_ref.clone(),
            ca: settings.ca_secret_ref.clone(),
            segment_lines,
            segment_bytes,
            segment_age,
            compression: match settings.compression {
                ArchiveCompression::Gzip => Compression::Gzip,
                ArchiveCompression::None => Compression::None,
            },
            lock,
            verification: settings.verification.clone(),
        })
    }

    /// The port the pods reach the store on, for the NetworkPolicy.
    pub fn port(&self) -> i32 {
        let Some(endpoint) = &self.endpoint else {
            return 443;
        };
        let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint));
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let explicit = match authority.strip_prefix('[') {
            Some(bracketed) => bracketed.split_once("]:").and_then(|(_, p)| p.parse().ok()),
            None => authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()),
        };
        explicit.unwrap_or(if scheme == "http" { 80 } else { 443 })
    }
}

/// The names of the Secrets `consumer`'s pods and its verifier's mount for its archive.
pub fn secret_names(consumer: &AuditConsumer) -> impl Iterator<Item = String> {
    consumer
        .spec
        .archive
        .iter()
        .flat_map(|settings| [secret_keys(settings), verifier_keys(settings)])
        .flatten()
        .map(|key| key.name)
}

/// Every Secret key the pods mount for the archive.
fn secret_keys(settings: &ArchiveSettings) -> Vec<SecretKeyRef> {
    let mut keys = credential_keys(settings.credentials_secret_ref.as_ref());
    keys.extend(settings.ca_secret_ref.clone());
    keys
}

/// The Secret keys only the verifier mounts: its read-only credentials. (It mounts the CA
/// too, which the pods' keys include.)
fn verifier_keys(settings: &ArchiveSettings) -> Vec<SecretKeyRef> {
    let credentials = settings.verification.as_ref();
    credential_keys(credentials.and_then(|v| v.credentials_secret_ref.as_ref()))
}

fn credential_keys(credentials: Option<&ArchiveCredentialsRef>) -> Vec<SecretKeyRef> {
    let Some(credentials) = credentials else {
        return Vec::new();
    };
    [
        &credentials.access_key_id_key,
        &credentials.secret_access_key_key,
    ]
    .into_iter()
    .map(|key| SecretKeyRef {
        name: credentials.name.clone(),
        key: key.clone(),
    })
    .collect()
}

/// Reads the Secrets `consumer`'s archive names, and returns the versions of those its pods
/// mount, for the pod template (so that a rotated key rolls the pods; the verifier's are read
/// afresh by each run). A missing Secret or key is reported now, in the consumer's condition,
/// rather than as a pod stuck in `ContainerCreating`.
pub async fn read_secrets(consumer: &AuditConsumer, secrets: &Api<Secret>) -> Result<Vec<String>> {
    let Some(settings) = &consumer.spec.archive else {
        return Ok(Vec::new());
    };
    let mut fetched = BTreeMap::new();
    for key in secret_keys(settings)
        .into_iter()
        .chain(verifier_keys(settings))
    {
        if fetched.contains_key(&key.name) {
            continue;
        }
        let secret = secrets
            .get_opt(&key.name)
            .await
            .map_err(Error::Kube)?
            .ok_or_else(|| Error::SecretNotFound {
                name: key.name.clone(),
            })?;
        fetched.insert(key.name.clone(), secret);
    }
    secret_versions(settings, &fetched)
}

/// Checks that every key the archive names holds text, and returns the Secrets' versions
/// (pure). The values go no further.
pub fn secret_versions(
    settings: &ArchiveSettings,
    fetched: &BTreeMap<String, Secret>,
) -> Result<Vec<String>> {
    for key in secret_keys(settings)
        .into_iter()
        .chain(verifier_keys(settings))
    {
        resolve::text(fetched, &key)?;
    }
    let mounted: Vec<String> = secret_keys(settings).into_iter().map(|k| k.name).collect();
    Ok(fetched
        .values()
        .filter(|secret| mounted.contains(&secret.name_any()))
        .map(|secret| {
            format!(
                "{}/{}@{}",
                secret.namespace().unwrap_or_default(),
                secret.name_any(),
                secret.resource_version().unwrap_or_default()
            )
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn settings(yaml: &str) -> ArchiveSettings {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_suit_a_year_of_retention() {
        let valid = ValidArchive::new(&settings("{bucket: trail, region: eu-central-1}")).unwrap();
        assert_eq!(valid.segment_lines, 100_000);
        assert_eq!(valid.segment_bytes, 64 << 20);
        assert_eq!(valid.segment_age, Duration::from_secs(300));
        assert_eq!(valid.compression, Compression::Gzip);
        assert_eq!(valid.lock, None);
        assert_eq!(valid.credentials, None);
        assert_eq!(valid.port(), 443);
    }

    #[test]
    fn object_lock_retention_is_counted_in_days() {
        let valid = ValidArchive::new(&settings(
            "{bucket: trail, region: r, objectLock: {mode: Compliance, retentionDays: 400}}",
        ))
        .unwrap();
        assert_eq!(
            valid.lock,
            Some((LockMode::Compliance, Duration::from_secs(400 * 86_400)))
        );
    }

    #[test]
    fn what_the_schema_should_have_refused_is_refused_with_the_field() {
        for (yaml, field) in [
            (
                "{bucket: t, region: r, segment: {maxAge: 2d}}",
                "segment.maxAge",
            ),
            (
                "{bucket: t, region: r, segment: {maxAge: 48h}}",
                "segment.maxAge",
            ),
            (
                "{bucket: t, region: r, segment: {maxLines: 0}}",
                "segment.maxLines",
            ),
            (
                "{bucket: t, region: r, objectLock: {mode: Governance, retentionDays: 0}}",
                "objectLock.retentionDays",
            ),
        ] {
            let err = ValidArchive::new(&settings(yaml)).unwrap_err().to_string();
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }

    #[test]
    fn the_store_port_follows_the_endpoint() {
        let port = |endpoint: &str| {
            ValidArchive::new(&settings(&format!(
                "{{bucket: t, region: r, endpoint: '{endpoint}'}}"
            )))
            .unwrap()
            .port()
        };
        assert_eq!(port("https://minio.storage:9000"), 9000);
        assert_eq!(port("http://rgw.ceph"), 80);
        assert_eq!(port("https://s3.example/base"), 443);
        assert_eq!(port("http://[fd00::1]:7070"), 7070);
    }

    #[test]
    fn secrets_must_hold_every_named_key_and_roll_the_pods_when_rotated() {
        let settings = settings(
            "{bucket: t, region: r, credentialsSecretRef: {name: s3}, caSecretRef: {name: ca, key: ca.crt}}",
        );
        let secret = |name: &str, version: &str, keys: &[&str]| -> Secret {
            serde_yaml::from_str(&format!(
                "metadata: {{name: {name}, namespace: ns, resourceVersion: '{version}'}}\ndata: {{{}}}",
                keys.iter()
                    .map(|k| format!("{k}: dmFsdWU="))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .unwrap()
        };
        let complete = BTreeMap::from([
            (
                "s3".to_owned(),
                secret("s3", "7", &["accessKeyId", "secretAccessKey"]),
            ),
            ("ca".to_owned(), secret("ca", "3", &["ca.crt"])),
        ]);
        assert_eq!(
            secret_versions(&settings, &complete).unwrap(),
            ["ns/ca@3", "ns/s3@7"]
        );
        let incomplete = BTreeMap::from([
            ("s3".to_owned(), secret("s3", "7", &["accessKeyId"])),
            ("ca".to_owned(), secret("ca", "3", &["ca.crt"])),
        ]);
        let err = secret_versions(&settings, &incomplete)
            .unwrap_err()
            .to_string();
        assert!(err.contains("secretAccessKey"), "{err}");
    }
}
