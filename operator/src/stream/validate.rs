//! Pipeline step 2 (pure): checks the schema cannot express, and the one value the builder
//! reads: the spec's strings turned into typed values, unlimited values and defaults settled.
//! The apiserver already enforced the schema; this step guards against objects written under
//! an older CRD and computes values that depend on several fields.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    crd::stream::{AuditStream, Compression, Discard, Placement, Retention, Storage},
    duration,
    error::{Error, Result},
    ownership::owner_of,
};

/// NATS's default duplicate window when the spec sets none.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// NATS rejects a shorter duplicate window.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);

/// An AuditStream known to be acceptable: everything the builder needs, never the raw spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidStream {
    /// The stream's name on NATS.
    pub name: String,
    /// The AuditStream's mark on the stream.
    pub mark: String,
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub storage: Storage,
    pub replicas: usize,
    /// Zero means unlimited.
    pub max_age: Duration,
    /// `-1` means unlimited, for this and the other limits.
    pub max_bytes: i64,
    pub max_messages: i64,
    pub max_messages_per_subject: i64,
    pub max_message_size: i32,
    pub discard: Discard,
    pub duplicate_window: Duration,
    pub compression: Compression,
    pub description: Option<String>,
    pub placement: Option<Placement>,
    /// The user's metadata, without the mark.
    pub metadata: BTreeMap<String, String>,
    pub deny_delete: bool,
    pub deny_purge: bool,
}

pub fn validate(stream: &AuditStream) -> Result<ValidStream> {
    let spec = &stream.spec;
    let name = stream.stream_name();
    if name.is_empty()
        || name.len() > 255
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::InvalidSpec(format!(
            "stream name {name:?} may hold only letters, digits, '-' and '_' (at most 255): set spec.name"
        )));
    }
    if spec.subjects.is_empty() {
        return Err(Error::InvalidSpec(
            "spec.subjects must list at least one subject".into(),
        ));
    }
    if let Some(key) = spec
        .metadata
        .keys()
        .find(|k| k.starts_with("_nats.") || k.starts_with(crate::crd::GROUP))
    {
        return Err(Error::InvalidSpec(format!(
            "spec.metadata key {key:?} is reserved"
        )));
    }
    let parse = |field: &str, value: &Option<String>| -> Result<Option<Duration>> {
        value
            .as_deref()
            .map(duration::parse)
            .transpose()
            .map_err(|e| Error::InvalidSpec(format!("spec.{field}: {e}")))
    };
    let max_age = parse("maxAge", &spec.max_age)?.unwrap_or_default();
    let duplicate_window = match parse("duplicateWindow", &spec.duplicate_window)? {
        Some(window) => {
            if !max_age.is_zero() && window > max_age {
                return Err(Error::InvalidSpec(
                    "spec.duplicateWindow must not be longer than spec.maxAge".into(),
                ));
            }
            if window < MIN_DUPLICATE_WINDOW {
                return Err(Error::InvalidSpec(
                    "spec.duplicateWindow must be at least 100ms".into(),
                ));
            }
            window
        }
        None if !max_age.is_zero() => DEFAULT_DUPLICATE_WINDOW.min(max_age),
        None => DEFAULT_DUPLICATE_WINDOW,
    };
    let unlimited = |value: Option<i64>| value.unwrap_or(-1);
    Ok(ValidStream {
        name,
        mark: owner_of(stream),
        subjects: spec.subjects.clone(),
        retention: spec.retention,
        storage: spec.storage,
        // The schema bounds replicas to 1..=5.
        replicas: usize::try_from(spec.replicas).unwrap_or(1),
        max_age,
        max_bytes: unlimited(spec.max_bytes),
        max_messages: unlimited(spec.max_messages),
        max_messages_per_subject: unlimited(spec.max_messages_per_subject),
        max_message_size: spec.max_message_size.unwrap_or(-1),
        discard: spec.discard,
        duplicate_window,
        compression: spec.compression,
        description: spec.description.clone(),
        placement: spec.placement.clone(),
        metadata: spec.metadata.clone(),
        deny_delete: spec.deny_delete,
        deny_purge: spec.deny_purge,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An AuditStream from the YAML of its spec, named `orders.audit`.
    pub(crate) fn stream(spec_yaml: &str) -> AuditStream {
        let spec = serde_yaml::from_str(spec_yaml).unwrap();
        let mut stream = AuditStream::new("orders.audit", spec);
        stream.metadata.namespace = Some("shop".into());
        stream.metadata.generation = Some(1);
        stream
    }

    const MINIMAL: &str = "connection: {servers: [nats://127.0.0.1:4222]}\nsubjects: [audit.>]\n";

    #[test]
    fn name_defaults_to_the_resource_name_without_dots() {
        let valid = validate(&stream(MINIMAL)).unwrap();
        assert_eq!(valid.name, "orders_audit");
        assert_eq!(valid.max_age, Duration::ZERO);
        assert_eq!(valid.duplicate_window, Duration::from_secs(120));
    }

    #[test]
    fn duplicate_window_defaults_to_max_age_when_shorter() {
        let valid = validate(&stream(&format!("{MINIMAL}maxAge: 30s\n"))).unwrap();
        assert_eq!(valid.max_age, Duration::from_secs(30));
        assert_eq!(valid.duplicate_window, Duration::from_secs(30));
    }

    #[test]
    fn duplicate_window_longer_than_max_age_is_rejected() {
        let err = validate(&stream(&format!(
            "{MINIMAL}maxAge: 1m\nduplicateWindow: 5m\n"
        )))
        .unwrap_err();
        assert!(err.to_string().contains("duplicateWindow"), "{err}");
    }

    #[test]
    fn malformed_duration_names_the_field() {
        let err = validate(&stream(&format!("{MINIMAL}maxAge: 3d\n"))).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSpec(m) if m.contains("spec.maxAge")),
            "{err}"
        );
    }

    #[test]
    fn reserved_metadata_keys_are_rejected() {
        let err = validate(&stream(&format!(
            "{MINIMAL}metadata: {{_nats.level: '1'}}\n"
        )))
        .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }

    #[test]
    fn invalid_explicit_name_is_rejected() {
        assert!(validate(&stream(&format!("{MINIMAL}name: a.b\n"))).is_err());
    }
}
