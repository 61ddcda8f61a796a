//! Pure comparison of the stream NATS has with the one the spec asks for, limited to the
//! fields the operator owns; fields the spec does not govern (consumer limits, direct get,
//! rollups, ...) are never reported and are kept as they are when the stream is updated.

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::stream::{
    Compression, Config, DiscardPolicy, Placement, RetentionPolicy, Source, StorageType,
};

/// One owned field whose value on the server differs from the spec's, named and written as in
/// the spec (`maxAge`, `48h`), since that is what a user reads and edits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub server: String,
    pub desired: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (server: {}, spec: {})",
            self.field, self.server, self.desired
        )
    }
}

/// Lists owned fields whose values differ, and rewrites only those fields of a configuration.
/// One list drives both, so what is compared is exactly what is written.
macro_rules! owned_fields {
    ($($field:ident => $spec_name:literal),* $(,)?) => {
        /// Owned fields that differ between `server` (as NATS reports it) and `desired`.
        pub fn differences(server: &Config, desired: &Config) -> Vec<Difference> {
            let server = normalized(server);
            // The desired sources too: the spec's order of sources carries no meaning.
            let desired = &normalized(desired);
            let mut differences = Vec::new();
            $(
                if server.$field != desired.$field {
                    differences.push(Difference {
                        field: $spec_name,
                        server: server.$field.shown(),
                        desired: desired.$field.shown(),
                    });
                }
            )*
            if user_metadata(&server.metadata) != user_metadata(&desired.metadata) {
                differences.push(Difference {
                    field: "metadata",
                    server: shown_metadata(&server.metadata),
                    desired: shown_metadata(&desired.metadata),
                });
            }
            differences
        }

        /// `server` with every owned field taken from `desired`: the configuration to send in
        /// an update, preserving what the operator does not own.
        pub fn overlay(server: &Config, desired: &Config) -> Config {
            let mut merged = server.clone();
            $( merged.$field = desired.$field.clone(); )*
            merged.metadata = desired.metadata.clone();
            merged
        }
    };
}

owned_fields!(
    subjects => "subjects",
    retention => "retention",
    storage => "storage",
    num_replicas => "replicas",
    max_age => "maxAge",
    max_bytes => "maxBytes",
    max_messages => "maxMessages",
    max_messages_per_subject => "maxMessagesPerSubject",
    max_message_size => "maxMessageSize",
    discard => "discard",
    duplicate_window => "duplicateWindow",
    compression => "compression",
    description => "description",
    placement => "placement",
    deny_delete => "denyDelete",
    deny_purge => "denyPurge",
    sources => "sources",
    mirror => "mirror",
);

/// A value as the spec writes it.
trait Shown {
    fn shown(&self) -> String;
}

impl Shown for Vec<String> {
    fn shown(&self) -> String {
        format!("[{}]", self.join(", "))
    }
}

impl Shown for RetentionPolicy {
    fn shown(&self) -> String {
        match self {
            RetentionPolicy::Limits => "Limits",
            RetentionPolicy::Interest => "Interest",
            RetentionPolicy::WorkQueue => "WorkQueue",
        }
        .to_owned()
    }
}

impl Shown for StorageType {
    fn shown(&self) -> String {
        match self {
            StorageType::File => "File",
            StorageType::Memory => "Memory",
        }
        .to_owned()
    }
}

impl Shown for DiscardPolicy {
    fn shown(&self) -> String {
        match self {
            DiscardPolicy::Old => "Old",
            DiscardPolicy::New => "New",
        }
        .to_owned()
    }
}

impl Shown for Option<Compression> {
    fn shown(&self) -> String {
        match self {
            Some(Compression::S2) => "S2",
            Some(Compression::None) | None => "None",
        }
        .to_owned()
    }
}

impl Shown for usize {
    fn shown(&self) -> String {
        self.to_string()
    }
}

/// NATS limits: a negative value is no limit.
impl Shown for i64 {
    fn shown(&self) -> String {
        if *self < 0 {
            "unlimited".to_owned()
        } else {
            self.to_string()
        }
    }
}

impl Shown for i32 {
    fn shown(&self) -> String {
        i64::from(*self).shown()
    }
}

impl Shown for Duration {
    fn shown(&self) -> String {
        crate::duration::format(*self)
    }
}

impl Shown for bool {
    fn shown(&self) -> String {
        self.to_string()
    }
}

/// Text in quotes, so that its ends are visible.
impl Shown for Option<String> {
    fn shown(&self) -> String {
        match self {
            Some(text) => format!("\"{text}\""),
            None => "none".to_owned(),
        }
    }
}

impl Shown for Option<Placement> {
    fn shown(&self) -> String {
        let Some(placement) = self else {
            return "none".to_owned();
        };
        let cluster = placement.cluster.as_deref().unwrap_or("any");
        format!("cluster {cluster}, tags {}", placement.tags.shown())
    }
}

/// A source as the spec writes it: `NAME` with where it lives and what it takes.
impl Shown for Source {
    fn shown(&self) -> String {
        let mut text = self.name.clone();
        if let Some(external) = &self.external {
            text.push_str(&format!(" api {}", external.api_prefix));
            if let Some(deliver) = &external.delivery_prefix {
                text.push_str(&format!(" deliver {deliver}"));
            }
        }
        if let Some(filter) = &self.filter_subject {
            text.push_str(&format!(" filter {filter}"));
        }
        for transform in &self.subject_transforms {
            text.push_str(&format!(
                " transform {}->{}",
                transform.source, transform.destination
            ));
        }
        if let Some(sequence) = self.start_sequence {
            text.push_str(&format!(" from sequence {sequence}"));
        }
        if let Some(time) = self.start_time {
            text.push_str(&format!(" from {time}"));
        }
        text
    }
}

impl Shown for Option<Source> {
    fn shown(&self) -> String {
        self.as_ref()
            .map_or_else(|| "none".to_owned(), Shown::shown)
    }
}

impl Shown for Option<Vec<Source>> {
    fn shown(&self) -> String {
        let sources: Vec<String> = self.iter().flatten().map(Shown::shown).collect();
        format!("[{}]", sources.join("; "))
    }
}

/// A source in one form whatever wrote it: empty strings as unset, a filter the server
/// keeps as a transform without destination as the filter, no domain (always an API prefix).
fn normalized_source(source: &Source) -> Source {
    let mut source = source.clone();
    source.domain = None;
    if source.filter_subject.as_deref() == Some("") {
        source.filter_subject = None;
    }
    if let Some(external) = &mut source.external
        && external.delivery_prefix.as_deref() == Some("")
    {
        external.delivery_prefix = None;
    }
    if source.filter_subject.is_none()
        && let [only] = &source.subject_transforms[..]
        && only.destination.is_empty()
    {
        source.filter_subject = Some(only.source.clone());
        source.subject_transforms.clear();
    }
    source
}

/// Sources in a fixed order, none as `None`: their order carries no meaning.
fn normalized_sources(sources: Option<&Vec<Source>>) -> Option<Vec<Source>> {
    let mut sources: Vec<Source> = sources
        .into_iter()
        .flatten()
        .map(normalized_source)
        .collect();
    sources.sort_by_key(|source| {
        (
            source.name.clone(),
            source.external.as_ref().map(|e| e.api_prefix.clone()),
            source.filter_subject.clone(),
        )
    });
    (!sources.is_empty()).then_some(sources)
}

/// User metadata as `key=value` pairs in key order.
fn shown_metadata(metadata: &HashMap<String, String>) -> String {
    let pairs: Vec<String> = sorted(user_metadata(metadata))
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// The server's way of saying "unset" mapped onto the spec's.
fn normalized(server: &Config) -> Config {
    let mut config = server.clone();
    config.sources = normalized_sources(config.sources.as_ref());
    config.mirror = config.mirror.as_ref().map(normalized_source);
    if config.compression.is_none() {
        config.compression = Some(Compression::None);
    }
    if config.description.as_deref() == Some("") {
        config.description = None;
    }
    if config
        .placement
        .as_ref()
        .is_some_and(|p| p.cluster.as_deref().unwrap_or_default().is_empty() && p.tags.is_empty())
    {
        config.placement = None;
    }
    config
}

/// Metadata without the keys the server maintains itself (`_nats.*`).
fn user_metadata(metadata: &HashMap<String, String>) -> HashMap<&str, &str> {
    metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("_nats."))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn sorted<'a>(map: HashMap<&'a str, &'a str>) -> std::collections::BTreeMap<&'a str, &'a str> {
    map.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_nats::jetstream::stream::Placement;

    use super::*;

    fn desired() -> Config {
        Config {
            name: "AUDIT".into(),
            subjects: vec!["audit.>".into()],
            max_bytes: -1,
            max_messages: -1,
            max_messages_per_subject: -1,
            max_message_size: -1,
            duplicate_window: Duration::from_secs(120),
            compression: Some(Compression::None),
            deny_delete: true,
            deny_purge: true,
            metadata: HashMap::from([("audit.eventsaudit.io/owner".into(), "ns/a".into())]),
            ..Config::default()
        }
    }

    /// The same stream as NATS reports it: server-maintained metadata, fields the operator
    /// does not own, and "unset" spelled the server's way.
    fn as_reported_by_server() -> Config {
        let mut config = desired();
        config.metadata.insert("_nats.level".into(), "1".into());
        config.max_consumers = -1;
        config.allow_direct = true;
        config.compression = None;
        config.placement = Some(Placement::default());
        config.description = Some(String::new());
        config
    }

    fn source(name: &str, api: &str) -> Source {
        Source {
            name: name.into(),
            external: Some(async_nats::jetstream::stream::External {
                api_prefix: api.into(),
                delivery_prefix: None,
            }),
            filter_subject: Some("audit.>".into()),
            ..Source::default()
        }
    }

    #[test]
    fn sources_compare_in_one_form_whatever_the_order_and_spelling() {
        let mut wanted = desired();
        wanted.subjects.clear();
        wanted.sources = Some(vec![
            source("EVENTS", "$JS.spoke-a.API"),
            source("EVENTS", "$JS.spoke-b.API"),
        ]);
        // The server's answer: the other order, a delivery prefix as "", the filter as a
        // transform without destination.
        let mut server = wanted.clone();
        let mut b = source("EVENTS", "$JS.spoke-b.API");
        b.external.as_mut().unwrap().delivery_prefix = Some(String::new());
        b.filter_subject = None;
        b.subject_transforms = vec![async_nats::jetstream::stream::SubjectTransform {
            source: "audit.>".into(),
            destination: String::new(),
        }];
        server.sources = Some(vec![b, source("EVENTS", "$JS.spoke-a.API")]);
        assert_eq!(differences(&server, &wanted), []);

        server.sources = Some(vec![source("EVENTS", "$JS.spoke-a.API")]);
        let found = differences(&server, &wanted);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "sources");
        assert_eq!(
            found[0].to_string(),
            "sources (server: [EVENTS api $JS.spoke-a.API filter audit.>], spec: [EVENTS api $JS.spoke-a.API filter audit.>; EVENTS api $JS.spoke-b.API filter audit.>])"
        );
        assert_eq!(differences(&wanted, &desired())[0].field, "subjects");
    }

    #[test]
    fn server_spelling_of_the_same_stream_is_no_drift() {
        assert_eq!(differences(&as_reported_by_server(), &desired()), []);
    }

    #[test]
    fn changed_owned_fields_are_reported_by_name() {
        let mut server = as_reported_by_server();
        server.max_age = Duration::from_secs(1);
        server.deny_delete = false;
        server.metadata.insert("extra".into(), "x".into());
        let fields: Vec<_> = differences(&server, &desired())
            .into_iter()
            .map(|d| d.field)
            .collect();
        assert_eq!(fields, ["maxAge", "denyDelete", "metadata"]);
    }

    #[test]
    fn differences_read_as_the_spec_is_written() {
        let mut server = as_reported_by_server();
        server.max_age = Duration::from_secs(60);
        server.max_bytes = 1024;
        server.description = Some("tampered by hand".into());
        server.retention = RetentionPolicy::Interest;
        server.placement = Some(Placement {
            cluster: Some("east".into()),
            tags: vec!["ssd".into()],
        });
        let shown: Vec<String> = differences(&server, &desired())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "retention (server: Interest, spec: Limits)",
                "maxAge (server: 1m, spec: 0s)",
                "maxBytes (server: 1024, spec: unlimited)",
                "description (server: \"tampered by hand\", spec: none)",
                "placement (server: cluster east, tags [ssd], spec: none)",
            ]
        );
    }

    #[test]
    fn overlay_keeps_fields_the_operator_does_not_own() {
        let mut server = as_reported_by_server();
        server.max_age = Duration::from_secs(1);
        let merged = overlay(&server, &desired());
        assert_eq!(merged.max_age, Duration::ZERO);
        assert!(merged.allow_direct);
        assert_eq!(merged.max_consumers, -1);
        assert_eq!(differences(&merged, &desired()), []);
    }
}
