//! Pipeline step 2 (pure): checks the schema cannot express and turns the spec's strings into
//! typed values. The apiserver already enforced the schema; this step guards against objects
//! written under an older CRD and computes values that depend on several fields.

use std::time::Duration;

use crate::{
    crd::stream::AuditStream,
    duration,
    error::{Error, Result},
};

/// NATS's default duplicate window when the spec sets none.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// NATS rejects a shorter duplicate window.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);

/// An AuditStream spec known to be acceptable, with its derived values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidStream {
    pub name: String,
    /// Zero means unlimited.
    pub max_age: Duration,
    pub duplicate_window: Duration,
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
    Ok(ValidStream {
        name,
        max_age,
        duplicate_window,
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
