//! Pipeline step 3 (pure): the stream configuration NATS should have for an AuditStream, from
//! the [`ValidStream`] alone.
//!
//! Every field the spec governs is set explicitly, unlimited values included, so that an
//! out-of-band change to any of them shows up as drift (see [`super::drift`]).

use std::collections::HashMap;

use async_nats::jetstream::stream::{self, Config};

use super::validate::ValidStream;
use crate::{
    crd::stream::{Compression, Discard, Retention, Storage},
    ownership::OWNER_KEY,
};

pub fn desired_config(valid: &ValidStream) -> Config {
    let mut metadata: HashMap<String, String> = valid
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.insert(OWNER_KEY.to_owned(), valid.mark.clone());
    Config {
        name: valid.name.clone(),
        subjects: valid.subjects.clone(),
        retention: match valid.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        storage: match valid.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: valid.replicas,
        max_age: valid.max_age,
        max_bytes: valid.max_bytes,
        max_messages: valid.max_messages,
        max_messages_per_subject: valid.max_messages_per_subject,
        max_message_size: valid.max_message_size,
        discard: match valid.discard {
            Discard::Old => stream::DiscardPolicy::Old,
            Discard::New => stream::DiscardPolicy::New,
        },
        duplicate_window: valid.duplicate_window,
        compression: Some(match valid.compression {
            Compression::None => stream::Compression::None,
            Compression::S2 => stream::Compression::S2,
        }),
        description: valid.description.clone(),
        placement: valid.placement.as_ref().map(|p| stream::Placement {
            cluster: p.cluster.clone(),
            tags: p.tags.clone(),
        }),
        metadata,
        deny_delete: valid.deny_delete,
        deny_purge: valid.deny_purge,
        sources: (!valid.sources.is_empty()).then(|| valid.sources.clone()),
        mirror: valid.mirror.clone(),
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stream::validate::{tests::stream, validate};

    fn build(spec_yaml: &str) -> Config {
        desired_config(&validate(&stream(spec_yaml)).unwrap())
    }

    #[test]
    fn audit_safe_defaults() {
        let config = build("connection: {servers: [nats://127.0.0.1:4222]}\nsubjects: [audit.>]\n");
        assert_eq!(config.name, "orders_audit");
        assert_eq!(config.storage, stream::StorageType::File);
        assert_eq!(config.retention, stream::RetentionPolicy::Limits);
        assert_eq!(config.num_replicas, 1);
        assert!(config.deny_delete && config.deny_purge);
        assert_eq!(config.max_bytes, -1);
        assert_eq!(config.max_messages, -1);
        assert_eq!(config.max_messages_per_subject, -1);
        assert_eq!(config.max_message_size, -1);
        assert_eq!(config.max_age, Duration::ZERO);
        assert_eq!(config.compression, Some(stream::Compression::None));
        assert_eq!(
            config.metadata.get(OWNER_KEY).map(String::as_str),
            Some("shop/orders.audit")
        );
    }

    #[test]
    fn every_spec_field_reaches_the_config() {
        let config = build(
            r#"
connection: {servers: [nats://127.0.0.1:4222]}
name: ORDERS
subjects: [orders.audit.>, billing.audit.>]
retention: Interest
storage: Memory
replicas: 3
maxAge: 720h
maxBytes: 1073741824
maxMessages: 1000000
maxMessagesPerSubject: 10
maxMessageSize: 65536
discard: New
duplicateWindow: 5m
compression: S2
description: Orders audit trail
placement: {cluster: east, tags: [ssd]}
metadata: {team: payments}
denyDelete: false
denyPurge: false
"#,
        );
        assert_eq!(config.name, "ORDERS");
        assert_eq!(config.subjects, ["orders.audit.>", "billing.audit.>"]);
        assert_eq!(config.retention, stream::RetentionPolicy::Interest);
        assert_eq!(config.storage, stream::StorageType::Memory);
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.max_age, Duration::from_secs(720 * 3600));
        assert_eq!(config.max_bytes, 1_073_741_824);
        assert_eq!(config.max_messages, 1_000_000);
        assert_eq!(config.max_messages_per_subject, 10);
        assert_eq!(config.max_message_size, 65_536);
        assert_eq!(config.discard, stream::DiscardPolicy::New);
        assert_eq!(config.duplicate_window, Duration::from_secs(300));
        assert_eq!(config.compression, Some(stream::Compression::S2));
        assert_eq!(config.description.as_deref(), Some("Orders audit trail"));
        let placement = config.placement.unwrap();
        assert_eq!(placement.cluster.as_deref(), Some("east"));
        assert_eq!(placement.tags, ["ssd"]);
        assert_eq!(
            config.metadata.get("team").map(String::as_str),
            Some("payments")
        );
        assert!(!config.deny_delete && !config.deny_purge);
    }
}
