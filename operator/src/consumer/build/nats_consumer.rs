//! The durable pull consumer NATS should have for an AuditConsumer.
//!
//! Every field the spec governs is set explicitly, so that comparing it with what the server
//! reports ([`governed_differences`]) finds a spec change or an out-of-band edit.

use std::collections::{BTreeSet, HashMap};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, ReplayPolicy, pull::Config};

use crate::{
    consumer::validate::{Start, ValidConsumer},
    crd::consumer::DeliverPolicy as SpecDeliverPolicy,
    ownership::OWNER_KEY,
};

pub fn desired_config(valid: &ValidConsumer) -> Config {
    let (filter_subject, filter_subjects) = match valid.filter_subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    Config {
        durable_name: Some(valid.durable_name.clone()),
        description: valid.description.clone(),
        deliver_policy: deliver_policy(&valid.start),
        ack_policy: AckPolicy::Explicit,
        ack_wait: valid.ack_wait,
        max_deliver: valid.max_deliver,
        backoff: valid.backoff.clone(),
        filter_subject,
        filter_subjects,
        replay_policy: ReplayPolicy::Instant,
        max_ack_pending: valid.max_ack_pending,
        metadata: HashMap::from([(OWNER_KEY.to_owned(), valid.mark.clone())]),
        ..Config::default()
    }
}

fn deliver_policy(start: &Start) -> DeliverPolicy {
    match start {
        Start::Policy(SpecDeliverPolicy::Last) => DeliverPolicy::Last,
        Start::Policy(SpecDeliverPolicy::New) => DeliverPolicy::New,
        Start::Policy(SpecDeliverPolicy::LastPerSubject) => DeliverPolicy::LastPerSubject,
        Start::Policy(_) => DeliverPolicy::All,
        Start::Sequence(start_sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: *start_sequence,
        },
        // async-nats's own RFC 3339 reader turns the string into its time type; validation
        // already ran this same conversion, so it cannot fail here.
        Start::Time(time) => serde_json::from_value(serde_json::json!({
            "deliver_policy": "by_start_time",
            "opt_start_time": time,
        }))
        .expect("validate() accepted this start time with the same conversion"),
    }
}

/// Names of the governed fields whose values differ between `current` (as the server reports
/// it) and `desired`. Server-side defaults of fields the spec does not govern are ignored.
pub fn governed_differences(current: &Config, desired: &Config) -> Vec<&'static str> {
    let filters = |c: &Config| -> BTreeSet<String> {
        c.filter_subjects
            .iter()
            .cloned()
            .chain((!c.filter_subject.is_empty()).then(|| c.filter_subject.clone()))
            .collect()
    };
    let owner = |c: &Config| c.metadata.get(OWNER_KEY).cloned();
    let checks = [
        ("description", current.description == desired.description),
        (
            "deliverPolicy",
            current.deliver_policy == desired.deliver_policy,
        ),
        ("ackWait", current.ack_wait == desired.ack_wait),
        ("maxDeliver", current.max_deliver == desired.max_deliver),
        ("backoff", current.backoff == desired.backoff),
        ("filterSubjects", filters(current) == filters(desired)),
        (
            "maxAckPending",
            current.max_ack_pending == desired.max_ack_pending,
        ),
        ("owner", owner(current) == owner(desired)),
    ];
    checks
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::consumer::validate::tests::{MINIMAL, validated};

    fn desired(spec: &str) -> Config {
        desired_config(&validated(spec))
    }

    #[test]
    fn minimal_spec_gives_an_explicit_ack_durable_consumer() {
        let config = desired(MINIMAL);
        assert_eq!(config.durable_name.as_deref(), Some("orders_reader"));
        assert_eq!(config.ack_policy, AckPolicy::Explicit);
        assert_eq!(config.deliver_policy, DeliverPolicy::All);
        assert_eq!(config.ack_wait, Duration::from_secs(30));
        assert_eq!(config.max_deliver, -1);
        assert_eq!(config.max_ack_pending, 200);
        assert_eq!(config.metadata[OWNER_KEY], "shop/orders.reader");
        assert!(config.filter_subject.is_empty() && config.filter_subjects.is_empty());
    }

    #[test]
    fn one_filter_uses_the_single_field_several_the_list() {
        let one = desired(&format!("{MINIMAL}filterSubjects: [audit.orders.>]\n"));
        assert_eq!(one.filter_subject, "audit.orders.>");
        let two = desired(&format!("{MINIMAL}filterSubjects: [audit.a, audit.b]\n"));
        assert_eq!(two.filter_subjects, ["audit.a", "audit.b"]);
        assert!(governed_differences(&one, &two).contains(&"filterSubjects"));
    }

    #[test]
    fn start_time_reaches_the_deliver_policy() {
        let config = desired(&format!(
            "{MINIMAL}deliverPolicy: ByStartTime\nstartTime: '2026-11-22T10:00:00Z'\n"
        ));
        assert!(matches!(
            config.deliver_policy,
            DeliverPolicy::ByStartTime { start_time } if start_time.unix_timestamp() == 1_795_341_600
        ));
    }

    #[test]
    fn server_defaults_of_ungoverned_fields_are_not_differences() {
        let desired = desired(MINIMAL);
        let mut reported = desired.clone();
        reported.max_waiting = 512;
        reported.num_replicas = 0;
        reported.inactive_threshold = Duration::ZERO;
        assert!(governed_differences(&reported, &desired).is_empty());
        reported.max_ack_pending = 1000;
        reported.metadata.insert("_nats.ver".into(), "2.12".into());
        assert_eq!(governed_differences(&reported, &desired), ["maxAckPending"]);
    }
}
