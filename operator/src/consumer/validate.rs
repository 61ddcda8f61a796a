//! Pipeline step 2 (pure): checks the schema cannot express and turns the spec's strings into
//! typed values. The apiserver already enforced the schema and the CEL rules; this step guards
//! against objects written under an older CRD and computes values derived from several fields.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::{
    crd::consumer::{AuditConsumer, DeliverPolicy},
    duration,
    error::{Error, Result},
};

/// Label values (the resource name is one) are limited to 63 characters.
const MAX_NAME_LENGTH: usize = 63;

/// An AuditConsumer spec known to be acceptable, with its derived values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidConsumer {
    pub durable_name: String,
    pub start: Start,
    pub ack_wait: Duration,
    pub backoff: Vec<Duration>,
    /// `-1` when unlimited.
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    pub expires: Duration,
    pub heartbeat: Option<Duration>,
}

/// Where the consumer starts, with the start value parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Policy(DeliverPolicy),
    Sequence(u64),
    /// RFC 3339, as validated.
    Time(String),
}

pub fn validate(consumer: &AuditConsumer) -> Result<ValidConsumer> {
    let spec = &consumer.spec;
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
    let parse = |field: &str, value: &str| -> Result<Duration> {
        duration::parse(value).map_err(|e| Error::InvalidSpec(format!("spec.{field}: {e}")))
    };
    let start = match (spec.deliver_policy, spec.start_sequence, &spec.start_time) {
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
            // What NATS is sent comes from async-nats' own RFC 3339 reader, which is stricter
            // than jiff's in places: a time it refuses is an invalid spec, never a silent
            // fallback to delivering everything.
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
    };
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
    let max_ack_pending = spec.max_ack_pending.unwrap_or_else(|| {
        (2 * i64::from(spec.replicas.max(1)) * i64::from(spec.batch.max(1))).max(1)
    });
    Ok(ValidConsumer {
        durable_name,
        start,
        // NATS uses the first backoff delay as the ack wait; stating it keeps the desired
        // configuration equal to what the server reports.
        ack_wait: backoff.first().copied().unwrap_or(ack_wait),
        backoff,
        max_deliver,
        max_ack_pending,
        expires,
        heartbeat,
    })
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

    #[test]
    fn defaults_are_safe_for_an_audit_trail() {
        let valid = validate(&consumer(MINIMAL)).unwrap();
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
        let valid = validate(&consumer(&format!("{MINIMAL}replicas: 3\nbatch: 50\n"))).unwrap();
        assert_eq!(valid.max_ack_pending, 300);
        let valid = validate(&consumer(&format!("{MINIMAL}maxAckPending: 7\n"))).unwrap();
        assert_eq!(valid.max_ack_pending, 7);
    }

    #[test]
    fn backoff_sets_the_ack_wait_and_bounds_max_deliver() {
        let valid = validate(&consumer(&format!(
            "{MINIMAL}backoff: [5s, 1m]\nmaxDeliver: 4\n"
        )))
        .unwrap();
        assert_eq!(valid.ack_wait, Duration::from_secs(5));
        assert_eq!(
            valid.backoff,
            [Duration::from_secs(5), Duration::from_secs(60)]
        );
        let err = validate(&consumer(&format!(
            "{MINIMAL}backoff: [5s, 1m, 5m]\nmaxDeliver: 2\n"
        )))
        .unwrap_err();
        assert!(err.to_string().contains("maxDeliver"), "{err}");
    }

    #[test]
    fn start_values_go_with_their_policy() {
        let valid = validate(&consumer(&format!(
            "{MINIMAL}deliverPolicy: ByStartSequence\nstartSequence: 42\n"
        )))
        .unwrap();
        assert_eq!(valid.start, Start::Sequence(42));
        let valid = validate(&consumer(&format!(
            "{MINIMAL}deliverPolicy: ByStartTime\nstartTime: '2026-11-22T00:00:00Z'\n"
        )))
        .unwrap();
        assert_eq!(valid.start, Start::Time("2026-11-22T00:00:00Z".into()));
        assert!(validate(&consumer(&format!("{MINIMAL}startSequence: 3\n"))).is_err());
        assert!(
            validate(&consumer(&format!(
                "{MINIMAL}deliverPolicy: ByStartTime\nstartTime: yesterday\n"
            )))
            .is_err()
        );
    }

    #[test]
    fn heartbeat_fits_into_the_expiry() {
        // Without a heartbeat, a short expiry is fine: the consumer's default adapts to it.
        let short = validate(&consumer(&format!("{MINIMAL}expires: 2s\n"))).unwrap();
        assert_eq!(short.heartbeat, None);
        assert!(validate(&consumer(&format!("{MINIMAL}expires: 2s\nheartbeat: 2s\n"))).is_err());
    }

    #[test]
    fn a_name_too_long_for_a_label_is_refused() {
        let mut long = consumer(MINIMAL);
        long.metadata.name = Some("x".repeat(64));
        long.spec.durable_name = Some("short".into());
        assert!(
            matches!(validate(&long), Err(Error::InvalidSpec(m)) if m.contains("shorter name"))
        );
    }
}
