//! Pipeline step 5 (pure): the status an AuditStream should have after a reconciliation.
//! The caller writes it only when it differs from the current status.

use async_nats::jetstream::stream::State;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{
    conditions::{self, Outcome, Phase},
    crd::stream::{AuditStream, AuditStreamStatus},
    error::Error,
};

/// Reason of `Ready` when the stream exists as declared.
pub const READY_REASON: &str = "StreamReady";

/// The status for `stream` after a reconciliation that left the stream in `live` state, or
/// failed with `failure`. Live figures from an earlier observation are kept on failure: they
/// are labelled "as last observed".
pub fn desired_status(
    stream: &AuditStream,
    result: Result<&State, &Error>,
    now: &Time,
) -> AuditStreamStatus {
    let previous = stream.status.clone().unwrap_or_default();
    let name = stream.stream_name();
    let outcome = match result {
        Ok(_) => Outcome {
            phase: Phase::Ready,
            reason: READY_REASON.into(),
            message: format!("stream {name} exists on NATS as declared"),
        },
        Err(error) => Outcome::failed(error),
    };
    let generation = stream.metadata.generation;
    let mut status = AuditStreamStatus {
        observed_generation: generation,
        conditions: conditions::kstatus(&previous.conditions, generation, &outcome, now),
        stream_name: Some(name),
        ..previous
    };
    if let Ok(state) = result {
        status.messages = Some(state.messages);
        status.bytes = Some(state.bytes);
        status.first_seq = Some(state.first_sequence);
        status.last_seq = Some(state.last_sequence);
        status.consumer_count = Some(state.consumer_count as u64);
    }
    status
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::{conditions::READY, stream::validate::tests::stream};

    const SPEC: &str = "connection: {servers: [nats://127.0.0.1:4222]}\nsubjects: [audit.>]\n";

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn state(messages: u64) -> State {
        serde_json::from_value(serde_json::json!({
            "messages": messages, "bytes": messages * 10, "first_seq": 1, "first_ts": "2026-11-22T00:00:00Z",
            "last_seq": messages, "last_ts": "2026-11-22T00:00:00Z", "consumer_count": 2,
        }))
        .unwrap()
    }

    fn ready(
        status: &AuditStreamStatus,
    ) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status.conditions.iter().find(|c| c.type_ == READY).unwrap()
    }

    #[test]
    fn success_reports_ready_and_live_state() {
        let status = desired_status(&stream(SPEC), Ok(&state(5)), &at(1));
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.stream_name.as_deref(), Some("orders_audit"));
        assert_eq!((status.messages, status.bytes), (Some(5), Some(50)));
        assert_eq!((status.first_seq, status.last_seq), (Some(1), Some(5)));
        assert_eq!(status.consumer_count, Some(2));
        assert_eq!(ready(&status).status, "True");
    }

    #[test]
    fn unchanged_stream_gives_an_identical_status_later() {
        let mut resource = stream(SPEC);
        resource.status = Some(desired_status(&resource, Ok(&state(5)), &at(1)));
        let again = desired_status(&resource, Ok(&state(5)), &at(500));
        assert_eq!(Some(again), resource.status);
    }

    #[test]
    fn failure_keeps_last_observed_state_and_says_what_to_do() {
        let mut resource = stream(SPEC);
        resource.status = Some(desired_status(&resource, Ok(&state(5)), &at(1)));
        let error = Error::StreamNotAdopted {
            stream: "orders_audit".into(),
        };
        let status = desired_status(&resource, Err(&error), &at(2));
        assert_eq!(status.messages, Some(5));
        assert_eq!(ready(&status).status, "False");
        assert_eq!(ready(&status).reason, "StreamExists");
        assert!(ready(&status).message.contains("spec.adopt"));
        let stalled = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap();
        assert_eq!(stalled.status, "True");
    }
}
