//! Pipeline step 2 (pure): checks the schema cannot express, and the one value the builder
//! reads: the spec's strings turned into typed values, unlimited values and defaults settled.
//! The apiserver already enforced the schema; this step guards against objects written under
//! an older CRD and computes values that depend on several fields.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::stream::{External, Source, SubjectTransform};

use crate::{
    crd::stream::{AuditStream, Compression, Discard, Placement, Retention, Storage, StreamSource},
    duration,
    error::{Error, Result},
    ownership::owner_of,
};

/// NATS's default duplicate window when the spec sets none.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// NATS rejects a shorter duplicate window.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);
/// How long a source may be inactive before it is reported, unless the spec says otherwise.
const DEFAULT_SOURCE_INACTIVE_AFTER: Duration = Duration::from_secs(120);

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
    /// The sources and the mirror in the form NATS stores them: a domain written as the
    /// external API prefix it stands for, so that what the server reports compares equal.
    pub sources: Vec<Source>,
    pub mirror: Option<Source>,
    pub source_inactive_after: Duration,
}

/// A source as NATS stores it (pure). A domain becomes `external.api` `$JS.<domain>.API`,
/// which is what the server keeps (it has no domain field): comparing the spec's domain with
/// the server's form instead would report drift forever.
pub fn nats_source(source: &StreamSource, field: &str) -> Result<Source> {
    let start_time = source
        .start_time
        .as_deref()
        .map(|text| {
            let invalid =
                |e: String| Error::InvalidSpec(format!("{field}.startTime {text:?}: {e}"));
            let at: k8s_openapi::jiff::Timestamp =
                text.parse().map_err(|e| invalid(format!("{e}")))?;
            async_nats::datetime::from_nanos(at.as_nanosecond()).map_err(|e| invalid(e.to_string()))
        })
        .transpose()?;
    let external = match (&source.domain, &source.external) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidSpec(format!(
                "{field}: set domain or external, not both"
            )));
        }
        (Some(domain), None) => Some(External {
            api_prefix: format!("$JS.{domain}.API"),
            delivery_prefix: None,
        }),
        (None, Some(external)) => Some(External {
            api_prefix: external.api_prefix.clone(),
            delivery_prefix: external.deliver_prefix.clone(),
        }),
        (None, None) => None,
    };
    Ok(Source {
        name: source.name.clone(),
        start_sequence: source.start_sequence,
        start_time,
        filter_subject: source.filter_subject.clone(),
        external,
        domain: None,
        subject_transforms: source
            .subject_transforms
            .iter()
            .map(|transform| SubjectTransform {
                source: transform.source.clone(),
                destination: transform.destination.clone(),
            })
            .collect(),
        ..Source::default()
    })
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
    if spec.subjects.is_empty() && spec.sources.is_empty() && spec.mirror.is_none() {
        return Err(Error::InvalidSpec(
            "spec.subjects must list at least one subject (or set sources or a mirror)".into(),
        ));
    }
    if spec.mirror.is_some() && !(spec.subjects.is_empty() && spec.sources.is_empty()) {
        return Err(Error::InvalidSpec(
            "a mirror takes no subjects and no sources: remove them, or use sources".into(),
        ));
    }
    let sources = spec
        .sources
        .iter()
        .enumerate()
        .map(|(index, source)| nats_source(source, &format!("spec.sources[{index}]")))
        .collect::<Result<Vec<_>>>()?;
    let mirror = spec
        .mirror
        .as_ref()
        .map(|mirror| nats_source(mirror, "spec.mirror"))
        .transpose()?;
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
    let source_inactive_after = parse("sourceInactiveAfter", &spec.source_inactive_after)?
        .unwrap_or(DEFAULT_SOURCE_INACTIVE_AFTER);
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
        sources,
        mirror,
        source_inactive_after,
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

    const HUB: &str = "connection: {servers: [nats://127.0.0.1:4222]}
sources:
- {name: EVENTS, domain: spoke-a, filterSubject: audit.>}
- name: EVENTS
  external: {apiPrefix: $JS.spoke-b.API, deliverPrefix: deliver.spoke-b}
  subjectTransforms: [{source: audit.>, destination: spoke-b.audit.>}]
  startTime: 2026-12-01T00:00:00Z
";

    #[test]
    fn a_domain_is_the_api_prefix_nats_stores() {
        let valid = validate(&stream(HUB)).unwrap();
        assert!(valid.subjects.is_empty());
        let [a, b] = &valid.sources[..] else {
            panic!("{:?}", valid.sources)
        };
        assert_eq!(a.domain, None);
        assert_eq!(
            a.external.as_ref().map(|e| e.api_prefix.as_str()),
            Some("$JS.spoke-a.API")
        );
        assert_eq!(a.filter_subject.as_deref(), Some("audit.>"));
        let external = b.external.as_ref().unwrap();
        assert_eq!(
            (
                external.api_prefix.as_str(),
                external.delivery_prefix.as_deref()
            ),
            ("$JS.spoke-b.API", Some("deliver.spoke-b"))
        );
        assert_eq!(b.subject_transforms[0].destination, "spoke-b.audit.>");
        assert_eq!(
            b.start_time.map(|t| t.unix_timestamp()),
            Some(1_796_083_200)
        );
        assert_eq!(valid.source_inactive_after, Duration::from_secs(120));
    }

    #[test]
    fn a_mirror_takes_no_subjects_and_a_stream_needs_something_to_hold() {
        let mirror =
            "connection: {servers: [nats://127.0.0.1:4222]}\nmirror: {name: HUB, domain: hub}\n";
        assert!(validate(&stream(mirror)).unwrap().mirror.is_some());
        let err = validate(&stream(&format!("{mirror}subjects: [a.>]\n"))).unwrap_err();
        assert!(
            err.to_string().contains("mirror takes no subjects"),
            "{err}"
        );
        let empty = "connection: {servers: [nats://127.0.0.1:4222]}\n";
        assert!(validate(&stream(empty)).is_err());
    }

    #[test]
    fn invalid_explicit_name_is_rejected() {
        assert!(validate(&stream(&format!("{MINIMAL}name: a.b\n"))).is_err());
    }
}
